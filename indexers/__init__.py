"""Per-medium indexers. Each turns one file into Records; none of them touches storage."""
