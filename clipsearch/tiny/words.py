"""A generated world for searching by the words in pictures (`benchmarks/words.py`, tests).

Per medium, files whose words are known: `images/` (a distinct phrase rendered on a picture:
several fonts, sizes, rotations, ink and backgrounds, some on a photo of a shape as its
caption), `screens/` (screenshots: a window of several lines of text, one of them the phrase),
`scans/scan.pdf` (pages that are pictures only, no text layer, one phrase per page) and
`plain/` (shape photos without words, for the visual queries and the no-text cost).
`manifest` maps each phrase to where it is: (path, page or None).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clipsearch.tiny.synth.shapes import ShapeSpec, canonical_query, random_spec, render_shape

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf",
         "DejaVuSerif-Italic.ttf", "DejaVuSansCondensed.ttf")
WORDS = ("amber", "harbour", "lantern", "falcon", "meadow", "copper", "velvet", "glacier", "orchid",
         "summit", "canyon", "pepper", "willow", "marble", "tundra", "saffron", "beacon", "cobalt",
         "juniper", "quartz", "sierra", "walnut", "tango", "ember", "nebula", "pixel", "riverbank",
         "mosaic", "thunder", "coral", "nimbus", "oyster", "prairie", "violet", "zephyr", "bamboo")
FILLER = ("the", "of", "and", "report", "page", "notes", "total", "date", "item", "list")


@dataclass
class WordsWorld:
    root: Path
    # medium -> phrase -> (path, page)
    phrases: dict[str, dict[str, tuple[str, int | None]]] = field(default_factory=dict)
    plain: dict[str, ShapeSpec] = field(default_factory=dict)  # path -> what it shows


def font(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = FONT_DIR / name
    return ImageFont.truetype(str(path), size) if path.is_file() else ImageFont.load_default(size=size)


def phrases(n: int, seed: int) -> list[str]:
    """n distinct three-word phrases (no word repeats inside a phrase)."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen = set()
    while len(out) < n:
        words = tuple(str(w) for w in rng.choice(WORDS, 3, replace=False))
        if frozenset(words) not in seen:
            seen.add(frozenset(words))
            out.append(" ".join(words))
    return out


def _text_image(text: str, fnt: ImageFont.FreeTypeFont | ImageFont.ImageFont, ink: tuple[int, ...]
                ) -> Image.Image:
    box = fnt.getbbox(text)
    im = Image.new("RGBA", (box[2] - box[0] + 8, box[3] - box[1] + 8), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((4 - box[0], 4 - box[1]), text, font=fnt, fill=(*ink, 255))
    return im


def phrase_image(text: str, rng: np.random.Generator, size: int = 480) -> Image.Image:
    """A phrase on a picture: a plain or gradient backdrop, or a shape photo with it as caption."""
    kind = int(rng.integers(3))
    if kind == 2:
        im = render_shape(random_spec(rng), rng, size=size, background="plain").convert("RGB")
    else:
        top = rng.integers(150, 256, 3) if rng.random() < 0.7 else rng.integers(0, 80, 3)
        arr = np.empty((size, size, 3), np.uint8)
        arr[:] = top
        if kind == 1:
            arr = (arr.astype(np.float32) * np.linspace(0.85, 1.0, size)[:, None, None]).astype(np.uint8)
        im = Image.fromarray(arr)
    bg = np.asarray(im, np.float32).mean()
    ink = (0, 0, 0) if bg > 110 else (255, 255, 255)
    fnt = font(FONTS[int(rng.integers(len(FONTS)))], int(rng.integers(size // 16, size // 9)))
    line = _text_image(text, fnt, ink)
    angle = float(rng.choice([0, 0, 0, 5, -8, 90, 180]))
    line = line.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
    if line.width > size - 8:
        line = line.resize((size - 8, max(1, line.height * (size - 8) // line.width)))
    if line.height > size - 8:
        line = line.resize((max(1, line.width * (size - 8) // line.height), size - 8))
    x = int(rng.integers(4, max(5, size - line.width - 4)))
    low = min(size * 3 // 4, size - line.height - 4) if kind == 2 else 4  # a caption: low in the picture
    y = int(rng.integers(max(4, low), max(max(4, low) + 1, size - line.height - 4)))
    im.paste(line, (x, y), line)
    return im


def screenshot(text: str, rng: np.random.Generator, size: tuple[int, int] = (800, 500)) -> Image.Image:
    """A window of lines of text, the phrase among them, as a desktop screenshot looks."""
    im = Image.new("RGB", size, (245, 245, 245))
    d = ImageDraw.Draw(im)
    d.rectangle((0, 0, size[0], 28), fill=(60, 64, 72))
    fnt = font(FONTS[int(rng.integers(3))], 20)
    lines = [" ".join(str(w) for w in rng.choice(FILLER, 5)) for _ in range(8)]
    lines[int(rng.integers(len(lines)))] = text
    for i, line in enumerate(lines):
        d.text((24, 48 + 52 * i), line, fill=(20, 20, 20), font=fnt)
    return im


def scanned_pdf(path: Path, texts: list[str], rng: np.random.Generator) -> None:
    """A PDF whose pages are pictures of printed pages only (no text layer), one phrase a page."""
    pages = []
    for text in texts:
        page = Image.new("RGB", (850, 1100), (250, 248, 240))
        d = ImageDraw.Draw(page)
        fnt = font(FONTS[int(rng.integers(2))], 30)
        d.text((80, 120), text, fill=(25, 25, 25), font=fnt)
        small = font(FONTS[0], 22)
        for i in range(6):
            d.text((80, 260 + 60 * i), " ".join(str(w) for w in rng.choice(FILLER, 6)), fill=(60, 60, 60),
                   font=small)
        noise = rng.normal(0, 6, (1100, 850, 1))
        page = Image.fromarray(np.clip(np.asarray(page, np.float32) + noise, 0, 255).astype(np.uint8))
        pages.append(page.rotate(float(rng.uniform(-1.5, 1.5)), fillcolor=(250, 248, 240)))
    buf = io.BytesIO()
    pages[0].save(buf, "PDF", save_all=True, append_images=pages[1:], resolution=100)
    path.write_bytes(buf.getvalue())


def make_world(root: Path, images: int = 20, screens: int = 5, pages: int = 5, plain: int = 20,
               seed: int = 0) -> WordsWorld:
    """Write the files (deterministic for a seed) and return where each phrase is."""
    rng = np.random.default_rng(seed)
    world = WordsWorld(root)
    texts = phrases(images + screens + pages, seed)
    for sub in ("images", "screens", "scans", "plain"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    world.phrases = {"images": {}, "screens": {}, "scans": {}}
    for i, text in enumerate(texts[:images]):
        p = root / "images" / f"words_{i:03d}.png"
        phrase_image(text, rng).save(p)
        world.phrases["images"][text] = (str(p), None)
    for i, text in enumerate(texts[images:images + screens]):
        p = root / "screens" / f"screen_{i:03d}.png"
        screenshot(text, rng).save(p)
        world.phrases["screens"][text] = (str(p), None)
    scan = root / "scans" / "scan.pdf"
    scan_texts = texts[images + screens:]
    if scan_texts:
        scanned_pdf(scan, scan_texts, rng)
        for page, text in enumerate(scan_texts, start=1):
            world.phrases["scans"][text] = (str(scan), page)
    for i in range(plain):
        spec = random_spec(rng)
        p = root / "plain" / f"plain_{i:03d}.png"
        background = str(rng.choice(["plain", "gradient", "textured"]))
        render_shape(spec, rng, size=256, background=background).save(p)
        world.plain[str(p)] = spec
    return world


def visual_queries(world: WordsWorld) -> list[tuple[str, str]]:
    """(query, path) for the plain shapes whose full description is unique in the world."""
    by_query: dict[str, list[str]] = {}
    for path, spec in world.plain.items():
        by_query.setdefault(canonical_query(spec, full=True), []).append(path)
    return [(q, ps[0]) for q, ps in by_query.items() if len(ps) == 1]
