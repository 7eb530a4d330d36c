"""Metadata filters of a search (date, place, camera, distance, format, size, SQL), as a prefilter.

A `Filters` turns into one SQL predicate over the table's file columns, which Lance evaluates
to find the matching rows before any vector is compared (`matching_ids`); `--near` adds an
exact great-circle test to its bounding box. The searcher then ranks only those rows, so a
filtered search returns k hits whenever k rows match, however rare they are.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.errors import UsageError
from clipsearch.store import FILE_COLUMNS, read_table, sql_in, sql_str

if TYPE_CHECKING:
    from clipsearch.store import Store

EARTH_KM = 6371.0088
DEFAULT_NEAR_KM = 10.0
SORTS = ("score", "date", "-date")
# The columns `--where` may name (README, "Filters"): the file columns and the row locators.
WHERE_COLUMNS = ("source", "kind", "t_start", "t_end", "page", "mtime", "size", *FILE_COLUMNS)


def parse_date(text: str, what: str, end: bool = False) -> datetime:
    """'2024', '2024-08', '2024-08-03' or a full ISO time -> UTC. With `end`, a partial date
    means the end of its year/month/day, so `--before 2024-08` includes all of August."""
    raw = text.strip()
    m = re.fullmatch(r"(\d{4})(?:-(\d{1,2}))?(?:-(\d{1,2}))?", raw)
    try:
        if m:
            y, mo, d = int(m[1]), int(m[2] or 1), int(m[3] or 1)
            start = datetime(y, mo, d, tzinfo=UTC)
            if not end:
                return start
            if m[3]:
                nxt = start + timedelta(days=1)
            elif m[2]:
                nxt = datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=UTC)
            else:
                nxt = datetime(y + 1, 1, 1, tzinfo=UTC)
            return nxt
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{what} {text!r}: not a date",
                         hint="use an ISO date: 2024, 2024-08, 2024-08-03 or 2024-08-03T18:00") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_near(text: str) -> tuple[float, float, float]:
    """'LAT,LON[,KM]' -> (lat, lon, km)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        lat, lon = float(parts[0]), float(parts[1])
        km = float(parts[2]) if len(parts) == 3 else DEFAULT_NEAR_KM
    except ValueError:
        raise UsageError(f"--near {text!r}: not LAT,LON[,KM]", hint="e.g. --near 38.72,-9.14,25") from None
    if not (abs(lat) <= 90 and abs(lon) <= 180 and km > 0 and math.isfinite(km)):
        raise UsageError(f"--near {text!r}: latitude must be within ±90, longitude ±180, KM above 0",
                         hint="e.g. --near 38.72,-9.14,25")
    return lat, lon, km


def _timestamp(when: datetime) -> str:
    return f"TIMESTAMP '{when.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def _like(text: str) -> str:
    """A case-insensitive substring pattern, LIKE's wildcards in `text` taken literally."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return sql_str(f"%{escaped}%")


def _within_km(lat: float, lon: float, km: float) -> str:
    """Haversine in SQL: the point (gps_lat, gps_lon) lies within `km` of (lat, lon). Compares
    the haversine term with its value at `km`, so no asin/sqrt can see a rounding past 1."""
    half = km / (2 * EARTH_KM)
    if half >= math.pi / 2:  # farther than the antipode: every located point
        return "gps_lat IS NOT NULL"
    la0 = math.radians(lat)
    return (f"(power(sin((radians(gps_lat) - {la0!r}) / 2), 2) + {math.cos(la0)!r} * cos(radians(gps_lat))"
            f" * power(sin((radians(gps_lon) - {math.radians(lon)!r}) / 2), 2) <= {math.sin(half) ** 2!r})")


@dataclass
class Filters:
    """What a search keeps: each set field narrows it (all must hold). Dates are UTC; `before`
    is exclusive; `near` is (lat, lon, km); `where` is a SQL predicate over WHERE_COLUMNS."""

    after: datetime | None = None
    before: datetime | None = None
    camera: str | None = None
    place: str | None = None
    near: tuple[float, float, float] | None = None
    format: str | None = None
    min_pixels: int | None = None
    where: str | None = None

    @classmethod
    def parse(cls, *, after: str | datetime | None = None, before: str | datetime | None = None,
              camera: str | None = None, place: str | None = None,
              near: str | tuple[float, ...] | None = None, format: str | None = None,
              min_pixels: int | None = None, where: str | None = None) -> Filters:
        """From the user's forms (CLI/HTTP strings or Python values); bad input -> UsageError."""
        def date(value: str | datetime | None, what: str, end: bool) -> datetime | None:
            if value is None or value == "":
                return None
            if isinstance(value, datetime):
                return value if value.tzinfo else value.replace(tzinfo=UTC)
            return parse_date(value, what, end=end)

        spot: tuple[float, float, float] | None = None
        if isinstance(near, str) and near.strip():
            spot = parse_near(near)
        elif isinstance(near, tuple | list) and near:
            spot = parse_near(",".join(str(x) for x in near))
        if min_pixels is not None and int(min_pixels) < 0:
            raise UsageError(f"--min-pixels {min_pixels}: must be 0 or more",
                             hint="e.g. --min-pixels 2000000")
        f = cls(after=date(after, "--after", False), before=date(before, "--before", True),
                camera=(camera or "").strip() or None, place=(place or "").strip() or None, near=spot,
                format=(format or "").strip().lower().lstrip(".") or None,
                min_pixels=int(min_pixels) if min_pixels else None, where=(where or "").strip() or None)
        if f.after and f.before and f.after >= f.before:
            raise UsageError("--after is not before --before: nothing can match",
                             hint="e.g. --after 2024-08 --before 2024-09")
        return f

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.after, self.before, self.camera, self.place, self.near,
                                           self.format, self.min_pixels, self.where))

    def sql(self) -> str | None:
        """The predicate Lance evaluates (None when nothing is filtered). `near` contributes
        its bounding box (which lets Lance skip most rows) and the great-circle test itself, so
        the predicate alone is exact wherever it is used (a full-text prefilter too)."""
        parts: list[str] = []
        if self.after is not None:
            parts.append(f"taken_at >= {_timestamp(self.after)}")
        if self.before is not None:
            parts.append(f"taken_at < {_timestamp(self.before)}")
        if self.camera:
            parts.append(f"lower(camera) LIKE {_like(self.camera)}")
        if self.place:
            parts.append(f"lower(place) LIKE {_like(self.place)}")
        if self.format:
            same = {"jpeg": ("jpg", "jpeg"), "jpg": ("jpg", "jpeg"), "tiff": ("tif", "tiff"),
                    "tif": ("tif", "tiff")}.get(self.format, (self.format,))
            parts.append(sql_in("format", same))
        if self.min_pixels:
            parts.append(f"CAST(width AS BIGINT) * CAST(height AS BIGINT) >= {int(self.min_pixels)}")
        if self.near is not None:
            lat, lon, km = self.near
            dlat = math.degrees(km / EARTH_KM)
            parts.append(f"gps_lat BETWEEN {lat - dlat!r} AND {lat + dlat!r}")
            coslat = math.cos(math.radians(min(89.9, abs(lat) + dlat)))
            dlon = math.degrees(km / EARTH_KM) / max(coslat, 1e-6)
            if dlon < 180:
                lo, hi = lon - dlon, lon + dlon
                if lo < -180:
                    parts.append(f"(gps_lon >= {lo + 360!r} OR gps_lon <= {hi!r})")
                elif hi > 180:
                    parts.append(f"(gps_lon >= {lo!r} OR gps_lon <= {hi - 360!r})")
                else:
                    parts.append(f"gps_lon BETWEEN {lo!r} AND {hi!r}")
            else:
                parts.append("gps_lon IS NOT NULL")
            parts.append(_within_km(lat, lon, km))
        if self.where:
            parts.append(f"({self.where})")
        return " AND ".join(parts) if parts else None

    def keep_near(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Which of these points lie within `near`'s distance (haversine), as a boolean mask."""
        if self.near is None:
            return np.ones(len(lat), bool)
        la0, lo0, km = (math.radians(self.near[0]), math.radians(self.near[1]), self.near[2])
        la, lo = np.radians(lat.astype(np.float64)), np.radians(lon.astype(np.float64))
        h = np.sin((la - la0) / 2) ** 2 + math.cos(la0) * np.cos(la) * np.sin((lo - lo0) / 2) ** 2
        return np.asarray(2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(h, 0, 1))) <= km)

    def describe(self) -> dict[str, Any]:
        """The filters as JSON-able values (what a result page says it filtered by)."""
        out: dict[str, Any] = {}
        for key in ("after", "before"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value.isoformat()
        for key in ("camera", "place", "format", "min_pixels", "where"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.near is not None:
            out["near"] = list(self.near)
        return out


def matching_ids(store: Store, filters: Filters, kinds: tuple[str, ...],
                 under: str | None = None) -> np.ndarray:
    """The ids (sorted, as fixed-width strings) of the rows of `kinds` inside folder `under`
    that every filter keeps. A table without the file columns (not yet migrated: the next
    `index` adds them) can only be filtered by `where` over its own columns; a bad `where`
    is a UsageError naming it."""
    t = _scan(store, filters, kinds, under, ["id"])
    return np.unique(t.column("id").to_numpy(zero_copy_only=False).astype("U"))


def matching_vectors(store: Store, filters: Filters, kinds: tuple[str, ...],
                     under: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float32 vectors) of the rows `matching_ids` names: what an exact filtered search ranks."""
    from clipsearch.store import float32_vectors

    t = _scan(store, filters, kinds, under, ["id", "vector"])
    return t.column("id").to_numpy(zero_copy_only=False).astype("U"), float32_vectors(t.column("vector"))


def _scan(store: Store, filters: Filters, kinds: tuple[str, ...], under: str | None,
          columns: list[str]) -> Any:
    from clipsearch.docsearch import under_clause

    if not store.file_columns() and any(v is not None for v in (
            filters.after, filters.before, filters.camera, filters.place, filters.near, filters.format,
            filters.min_pixels)):
        raise UsageError(f"{store.db_dir}: this collection has no date, place or camera columns yet",
                         hint="run `clipsearch index` once: it adds them without embedding again")
    where = sql_in("kind", kinds)
    if under:
        where += f" AND {under_clause(under)}"
    predicate = filters.sql()
    if predicate:
        where += f" AND ({predicate})"
    near = filters.near is not None
    try:
        t = read_table(store.dataset, columns + (["gps_lat", "gps_lon"] if near else []), where)
    except Exception as e:  # lance's parse/plan errors are ValueError, OSError or its own
        if filters.where:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"--where {filters.where!r}: Lance cannot evaluate it ({first[:300]})",
                             hint="a SQL predicate over: " + ", ".join(WHERE_COLUMNS)
                                  + ", e.g. --where \"camera LIKE 'Canon%' AND width >= 4000\"") from None
        raise
    if near:
        lat = t.column("gps_lat").to_numpy(zero_copy_only=False)
        lon = t.column("gps_lon").to_numpy(zero_copy_only=False)
        t = t.filter(filters.keep_near(lat, lon)).select(columns)
    return t


def sort_key(sort: str) -> str:
    """A `--sort` value checked: score, date (oldest first) or -date (newest first)."""
    if sort not in SORTS:
        raise UsageError(f"unknown sort {sort!r}", hint="one of: " + ", ".join(SORTS))
    return sort
