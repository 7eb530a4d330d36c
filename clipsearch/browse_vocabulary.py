"""The built-in words topics are labelled with (`clipsearch.browse_topics`): common nouns,
adjectives, colours and shapes a picture collection is likely to show, plus the words a
collection's own text (OCR, document text, file names) brings.

Kept apart from the clustering so that the list can grow without touching the algorithm; its
hash is part of the cache key, so a changed list is embedded again.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "brown",
           "grey", "gold", "silver", "beige", "turquoise", "violet", "dark", "bright", "colourful", "pale")
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "rectangle", "line", "stripes",
          "dots", "grid", "spiral", "heart", "arrow", "ring", "curve", "pattern", "texture")
ADJECTIVES = ("small", "large", "big", "tiny", "round", "flat", "tall", "long", "old", "new", "modern",
              "ancient", "empty", "crowded", "quiet", "busy", "sunny", "cloudy", "rainy", "snowy", "foggy",
              "wet", "dry", "warm", "cold", "night", "day", "indoor", "outdoor", "blurry", "sharp",
              "wooden", "metal", "glass", "stone", "plastic", "paper", "soft", "shiny", "vintage",
              "abstract", "plain", "textured", "striped", "handwritten", "printed", "cute", "happy")
POSITIONS = ("left", "right", "center", "top", "bottom", "background", "closeup", "aerial")
NOUNS = (
    # people and body
    "person", "people", "man", "woman", "child", "baby", "family", "friends", "crowd", "face",
    "portrait", "selfie", "hands", "smile", "wedding", "party", "concert", "team",
    # animals
    "animal", "dog", "cat", "bird", "horse", "cow", "sheep", "fish", "insect", "butterfly", "duck",
    "chicken", "lion", "elephant", "bear", "rabbit", "deer", "monkey", "pet",
    # nature and places
    "landscape", "mountain", "hill", "forest", "tree", "flower", "garden", "park", "grass", "field",
    "beach", "sea", "ocean", "lake", "river", "waterfall", "island", "desert", "snow", "ice", "sky",
    "sunset", "sunrise", "cloud", "rain", "moon", "sun", "rock", "sand", "leaf", "plant", "farm",
    "city", "street", "road", "bridge", "building", "house", "tower", "church", "castle", "skyline",
    "village", "market", "shop", "restaurant", "cafe", "kitchen", "bedroom", "bathroom", "office",
    "classroom", "museum", "stadium", "airport", "station", "harbour", "playground", "room", "window",
    "door", "wall", "floor", "roof", "stairs",
    # things
    "car", "bus", "truck", "train", "bicycle", "motorcycle", "boat", "ship", "airplane", "vehicle",
    "food", "meal", "cake", "bread", "fruit", "apple", "pizza", "coffee", "drink", "bottle", "cup",
    "plate", "table", "chair", "sofa", "bed", "lamp", "clock", "book", "phone", "computer", "laptop",
    "screen", "keyboard", "camera", "television", "toy", "ball", "bag", "shoe", "hat", "dress",
    "shirt", "clothes", "jewellery", "painting", "drawing", "sculpture", "statue", "poster", "sign",
    "flag", "map", "ticket", "receipt", "letter", "card", "money", "tool", "instrument", "guitar",
    "piano", "light", "fire", "smoke", "water", "box", "basket", "umbrella", "balloon", "candle",
    "gift", "christmas", "birthday",
    # documents and screens
    "document", "page", "text", "words", "letters", "numbers", "table", "chart", "graph", "diagram",
    "form", "invoice", "report", "slide", "presentation", "screenshot", "website", "menu", "code",
    "spreadsheet", "scan", "photo", "picture", "illustration", "logo", "icon", "cartoon", "comic",
    # activities
    "sport", "football", "tennis", "swimming", "running", "cycling", "skiing", "hiking", "travel",
    "holiday", "vacation", "camping", "cooking", "dancing", "reading", "music", "game", "work",
    "school", "shopping", "festival", "fireworks", "parade", "show",
)
_EXCLUDED = {"new"}  # too vague to say anything about a cluster
VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(
    w for w in COLOURS + SHAPES + ADJECTIVES + POSITIONS + NOUNS if w not in _EXCLUDED))

# words a collection's text brings that say nothing about what it shows
STOPWORDS = frozenset("""
a an and are as at be by for from has have in is it its of on or that the this to was were will with
not but all any can our your you we they he she his her them their there here which who what when
where how also than then into over under about more most some such only other page pages img image
images dsc jpg jpeg png heic pdf mp4 mov file files copy final draft scan photo photos picture
""".split())
_WORD = re.compile(r"[^\W\d_]{3,24}")
COLLECTION_WORDS = 200  # at most this many words of the collection's own text are label candidates


def vocabulary_hash(words: Iterable[str]) -> str:
    """A short hash of a word list: part of the cache key of its embeddings."""
    return hashlib.sha1("\n".join(words).encode()).hexdigest()[:16]


def words_of(text: str) -> list[str]:
    """The label-worthy words of a text (letters only, 3 to 24 of them, no stopwords), lowercased.
    File names split on '_', '-', '.', digits and camelCase humps."""
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)
    return [w for w in (m.group(0).lower() for m in _WORD.finditer(text)) if w not in STOPWORDS]


def collection_words(word_sets: Iterable[Iterable[str]], limit: int = COLLECTION_WORDS,
                     min_count: int = 2) -> list[str]:
    """The most frequent words of a collection's files (each file's words, `words_of`, count
    once per file), at least `min_count` times, not already in the built-in vocabulary."""
    counts: Counter[str] = Counter()
    for words in word_sets:
        counts.update(set(words))
    known = set(VOCABULARY)
    ranked = sorted((w for w, n in counts.items() if n >= min_count and w not in known),
                    key=lambda w: (-counts[w], w))
    return ranked[:limit]
