"""Helpers the tests share: rendered shape folders, small media files, fake encoders, a server.

The fixtures built from them live in conftest.py. The UI/API sample collection holds ~30 shape
images (each colour+shape pair once, plus a family of near-duplicates), one short video with
three shape segments and a three-page PDF, indexed with clipsearch-tiny, built once per session.
Tests that need it skip when the tiny model is missing; CLIPSEARCH_UI_TEST_MODEL/_CHECKPOINT
substitute another model (plumbing only).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen import canvas

from clipsearch.testpoints import PAUSE_ENV, READY_ENV
from clipsearch.tiny.synth.shapes import COLORS, SHAPES, ShapeSpec, canonical_query, render_page, render_shape

IMAGE_SIZE = 160
VIDEO_SEGMENTS = (ShapeSpec("circle", "red"), ShapeSpec("square", "blue"),
                  ShapeSpec("triangle", "yellow"))
SEGMENT_SECONDS = 2.0
PDF_PAGES = (ShapeSpec("star", "red"), ShapeSpec("diamond", "purple"), ShapeSpec("cross", "black"))
DUP_SPEC = ShapeSpec("star", "orange", "large", "center")
# The images typed-query tests look for: each the only thing of its colour in the collection.
# clipsearch-tiny (64 px) is sure of colours and often unsure of shapes; the UI tests check that
# the UI shows the model's best match first, not how well the tiny model tells shapes apart.
QUERY_TARGETS = (ShapeSpec("star", "white"), ShapeSpec("circle", "green"))


@dataclass
class SampleData:
    root: Path
    images: dict[str, ShapeSpec] = field(default_factory=dict)  # path → spec (unique pairs)
    dups: list[Path] = field(default_factory=list)  # near-duplicates of one picture
    dup_query: bytes = b""  # another near-duplicate, not indexed: the upload
    video: Path | None = None
    pdf: Path | None = None

    def unique_query(self, i: int = 0) -> tuple[str, Path]:
        """(query text, the one image it describes), for QUERY_TARGETS[i]."""
        spec = QUERY_TARGETS[i]
        path = next(p for p, s in self.images.items() if (s.shape, s.color) == (spec.shape, spec.color))
        return canonical_query(spec), Path(path)


def tiny_model_args() -> dict:
    """Model arguments for Collection.create; skips the test when no model is available."""
    model = os.environ.get("CLIPSEARCH_UI_TEST_MODEL")
    if model:
        return {"model": model, "checkpoint": os.environ.get("CLIPSEARCH_UI_TEST_CHECKPOINT")}
    from clipsearch.model_registry import tiny_files

    if not all(p.is_file() for p in tiny_files()):
        pytest.skip("clipsearch-tiny is not installed (clipsearch/models/clipsearch-tiny.*)")
    return {"model": "clipsearch-tiny"}


def _jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_images(root: Path, data: SampleData, n: int = 24, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    taken = {(sp.shape, sp.color) for sp in VIDEO_SEGMENTS + PDF_PAGES + (DUP_SPEC,)}
    # Target and near-duplicate colours are used by nothing else (see QUERY_TARGETS).
    reserved = {sp.color for sp in QUERY_TARGETS + (DUP_SPEC,)}
    pairs = [(s, c) for s in SHAPES for c in COLORS if (s, c) not in taken and c not in reserved]
    pick = [pairs[int(j)] for j in rng.choice(len(pairs), size=n - len(QUERY_TARGETS), replace=False)]
    (root / "photos").mkdir(parents=True, exist_ok=True)
    for pair in [(sp.shape, sp.color) for sp in QUERY_TARGETS] + pick:
        spec = ShapeSpec(*pair, size="large")
        path = root / "photos" / f"{spec.color}_{spec.shape}.png"
        render_shape(spec, rng, size=IMAGE_SIZE, background="plain").save(path)
        data.images[str(path)] = spec
    # One picture and slightly altered copies of it: what an upload should find first.
    base = render_shape(DUP_SPEC, np.random.default_rng(99), size=IMAGE_SIZE, background="gradient")
    (root / "dups").mkdir(exist_ok=True)
    variants = {
        "dup_original.png": base,
        "dup_small.jpg": base.resize((136, 136)),
        "dup_q60.jpg": base,
        "dup_crop.jpg": base.crop((4, 4, IMAGE_SIZE - 4, IMAGE_SIZE - 4)).resize((IMAGE_SIZE,) * 2),
    }
    for name, im in variants.items():
        p = root / "dups" / name
        im.save(p) if name.endswith(".png") else p.write_bytes(_jpeg(im, 60 if "q60" in name else 88))
        data.dups.append(p)
    data.dup_query = _jpeg(base.resize((150, 150)), 75)


def write_segments_video(path: Path, fps: int = 10, size: int = 128) -> Path:
    """Three static shape segments of SEGMENT_SECONDS each, H.264 in MP4."""
    rng = np.random.default_rng(5)
    frames = [np.asarray(render_shape(s, rng, size=size, background="plain")) for s in VIDEO_SEGMENTS]
    out = av.open(str(path), "w")
    stream = out.add_stream("libx264", rate=fps)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.time_base = Fraction(1, fps)
    per = int(SEGMENT_SECONDS * fps)
    for i in range(per * len(frames)):
        f = av.VideoFrame.from_ndarray(frames[i // per], format="rgb24")
        f.pts = i
        f.time_base = Fraction(1, fps)
        for pk in stream.encode(f):
            out.mux(pk)
    for pk in stream.encode():
        out.mux(pk)
    out.close()
    return path


def write_pdf(path: Path) -> Path:
    """One page per PDF_PAGES spec: the rendered page picture plus a text layer naming it."""
    rng = np.random.default_rng(7)
    c = canvas.Canvas(str(path), pagesize=(424, 640))
    for n, spec in enumerate(PDF_PAGES, start=1):
        page = render_page(spec, rng, size=(424, 600), title=f"Section {n}")
        c.drawImage(ImageReader(page), 0, 40, width=424, height=600)
        c.setFont("Helvetica", 9)
        c.drawString(20, 20, f"Page {n}. Figure: {canonical_query(spec)}.")
        c.showPage()
    c.save()
    return path


def make_sample(root: Path) -> SampleData:
    data = SampleData(root)
    write_images(root, data)
    (root / "media").mkdir(exist_ok=True)
    data.video = write_segments_video(root / "media" / "shapes.mp4")
    data.pdf = write_pdf(root / "media" / "report.pdf")
    return data


def build_collection(db: Path, roots: list[Path]):
    from clipsearch.collection import Collection

    col = Collection.create(db, device="cpu", **tiny_model_args())
    col.add(roots, workers=2)
    return col


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving an ASGI app from a thread, on a free loopback port."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


# ---------------------------------------------------------------- labelled shape folders

# A fixed subset of colour+shape classes keeps the folder small but the task non-trivial.
CLASSES = [(c, s) for c in ("red", "green", "blue", "yellow") for s in ("star", "circle", "square")]


def write_shapes(folder: Path, per_class: int = 4, seed: int = 7, size: int = 160) -> dict[str, str]:
    """Render per_class JPEGs of each class into folder; returns {filename: 'color shape'}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = {}
    for color, shape in CLASSES:
        for i in range(per_class):
            im = render_shape(ShapeSpec(shape, color), rng, size=size)
            name = f"{color}_{shape}_{i}.jpg"
            im.save(folder / name, quality=92)
            labels[name] = f"{color} {shape}"
    return labels


def shapes_collection(root: Path, per_class: int = 2, size: int = 48) -> tuple[Path, Path]:
    """(db, media): a small collection of its own under root, whose rows name its own shape files
    (a test may change them), indexed with clipsearch-tiny and no OCR."""
    from clipsearch.collection import Collection

    media = root / "media"
    write_shapes(media, per_class=per_class, size=size)
    Collection.create(root / "db", model="clipsearch-tiny", device="cpu").add([media], ocr="off")
    return root / "db", media


# ---------------------------------------------------------------- documents


class FakeEncoder:
    """Same interface as clipsearch.encoders.Encoder, without a model.

    Tokens are words and punctuation marks plus two markers; a short context forces chunking.
    Image vectors are the mean colour; text vectors a hash of the text.
    """

    dim = 8
    context_length = 24
    image_size = 64
    model_id = "fake"
    device = "cpu"

    def __init__(self) -> None:
        self.image_sizes: list[tuple[int, int]] = []

    def count_tokens(self, text: str) -> int:
        return len(re.findall(r"\w+|[^\w\s]", text)) + 2

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        out = []
        for im in images:
            self.image_sizes.append(im.size)
            v = np.zeros(self.dim, np.float32)
            v[:3] = np.asarray(im.convert("RGB"), np.float32).mean(axis=(0, 1))
            v[3] = 1.0
            out.append(v / np.linalg.norm(v))
        return np.stack(out) if out else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        out = []
        for t in texts:
            assert self.count_tokens(t) <= self.context_length, "indexer sent an over-long chunk"
            seed = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def page_words(page: int) -> str:
    """The marker words on page ``page`` of a `make_pdf` file."""
    return " ".join(f"marker{page}x{i}" for i in range(30))


def make_pdf(path: Path, pages: int, pagesize=(612, 792), encrypt=None, text=True, image=False) -> Path:
    """A reportlab PDF whose page ``p`` carries `page_words(p)` (and a red square with ``image``)."""
    c = canvas.Canvas(str(path), pagesize=pagesize, encrypt=encrypt)
    for p in range(1, pages + 1):
        if text:
            y = pagesize[1] - 72
            words = page_words(p).split()
            for i in range(0, len(words), 6):
                c.drawString(72, y, " ".join(words[i : i + 6]))
                y -= 14
        if image:
            img = Image.new("RGB", (200, 200), (255, 0, 0))
            c.drawImage(ImageReader(img), 100, 100, 300, 300)
        c.showPage()
    c.save()
    return path


# ---------------------------------------------------------------- videos


def write_video(path: Path, pts_ms, frame_fn, size=(64, 48), codec="libx264", rotation=None) -> Path:
    """Frames at explicit PTS (milliseconds), so start offsets and variable frame rate are exact."""
    out = av.open(str(path), "w")
    s = out.add_stream(codec, rate=25)
    s.width, s.height = size
    s.pix_fmt = "yuv420p"
    s.time_base = Fraction(1, 1000)
    s.codec_context.time_base = Fraction(1, 1000)
    if rotation:
        s.set_display_rotation(rotation)
    for p in pts_ms:
        f = av.VideoFrame.from_ndarray(frame_fn(p), format="rgb24")
        f.pts = p
        f.time_base = Fraction(1, 1000)
        for pk in s.encode(f):
            out.mux(pk)
    for pk in s.encode():
        out.mux(pk)
    out.close()
    return path


def solid(colour, size=(64, 48), seed=0):
    """An RGB frame of one colour with a little noise (so the encoder sees texture)."""
    rng = np.random.default_rng(seed)
    a = np.empty((size[1], size[0], 3), np.uint8)
    a[:] = colour
    noise = rng.integers(-6, 7, a.shape)
    return np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)


# ---- hostile input and raw HTTP, for the security tests ---------------------------------------
def write_png_bomb(path: Path, side: int = 20000) -> Path:
    """A black 1-bit PNG of side x side pixels, a few hundred KB on disk, written row by row so
    making it costs no memory (decoding it would cost side*side bytes at least)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def add_rows(col, source: Path, kind: str, vector, **fields) -> str:
    """Write one row for `source` straight into the table, as an older clipsearch (or a laxer
    scanner) would have indexed it; returns its id. The caller refreshes the ANN index."""
    from clipsearch.records import Record, item_id, path_bytes
    from clipsearch.store import SourceRows

    raw = path_bytes(source)
    rec = Record(kind=kind, vector=np.asarray(vector, np.float32), **fields)
    st = os.lstat(source) if os.path.lexists(source) else None
    col.store.replace_sources([SourceRows(raw, st.st_mtime if st else 0.0, st.st_size if st else 0,
                                          "test", [rec])])
    return item_id(raw, rec.locator())


class CountingApp:
    """ASGI wrapper counting the request-body bytes the app below it actually read."""

    def __init__(self, app) -> None:
        self.app = app
        self.received = 0

    async def __call__(self, scope, receive, send):
        async def counted():
            message = await receive()
            if message.get("type") == "http.request":
                self.received += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


def raw_request(base: str, method: str, target: str, headers: dict | None = None,
                body: bytes | None = None, timeout: float = 60) -> tuple[int, dict, bytes]:
    """One request sent verbatim (no normalisation of the target, any Host header)."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        hdrs = {"Host": u.netloc, **(headers or {})}
        if body is not None:
            hdrs.setdefault("Content-Length", str(len(body)))
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def chunked_upload(base: str, target: str, total: int, headers: dict | None = None,
                   chunk: int = 256 * 1024, field: str = "file") -> tuple[int | None, bytes, int]:
    """POST a multipart upload of `total` bytes with chunked encoding, stopping as soon as the
    server answers or hangs up. Returns (status or None, response bytes, bytes sent)."""
    import select
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(base)
    sock = socket.create_connection((u.hostname, u.port), timeout=15)
    boundary = "clipsearchtestboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    lines = [f"POST {target} HTTP/1.1", f"Host: {u.netloc}", "Transfer-Encoding: chunked",
             f"Content-Type: multipart/form-data; boundary={boundary}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sent = 0
    reply = b""
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        piece = b"\x89PNG" + b"\0" * (chunk - 4)
        first = True
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered before the body was done
            data = head + piece if first else piece
            first = False
            sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            sent += len(data)
        else:
            tail = f"\r\n--{boundary}--\r\n".encode()
            sock.sendall(f"{len(tail):x}\r\n".encode() + tail + b"\r\n0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    try:
        while True:
            got = sock.recv(65536)
            if not got:
                break
            reply += got
            if b"\r\n\r\n" in reply:
                head_part, body = reply.split(b"\r\n\r\n", 1)
                lengths = [ln.split(b":", 1)[1] for ln in head_part.lower().split(b"\r\n")
                           if ln.startswith(b"content-length:")]
                if lengths and len(body) >= int(lengths[0]):
                    break
    except (ConnectionResetError, TimeoutError):
        pass
    finally:
        sock.close()
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else None
    return status, reply, sent


# ---- waiting on a background process or thread ------------------------------------------------
def wait_until(predicate, timeout: float = 90, what: str = "the condition", step: float = 0.1):
    """Poll `predicate` until it returns something truthy (returned), failing after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(step)


def save_solid(path: Path, colour, seed: int = 0, size=(64, 64)) -> Path:
    """A small PNG of one colour (with `solid`'s noise); distinct colours embed far apart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(solid(colour, size=size, seed=seed)).save(path)
    return path


# ---- one CLI command in a fresh interpreter, and which modules it imported ---------------------
_CLI_PROBE = """
import json, sys
watch = sys.argv[1].split(",")
from clipsearch.cli import main
try:
    main(sys.argv[2:], prog_name="clipsearch")
except SystemExit as e:
    code = e.code
else:
    code = 0
print("\\n" + json.dumps({"code": code, "loaded": [m for m in watch if m in sys.modules]}))
"""


@dataclass
class CliProbe:
    code: int
    loaded: list[str]  # the watched modules the command imported
    stdout: str
    stderr: str


def run_cli_fresh(args: list[str], watch: tuple[str, ...], env: dict[str, str] | None = None) -> CliProbe:
    """Run `clipsearch ARGS` in a fresh interpreter; which of `watch` it imported (start-up tests)."""
    import json
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", _CLI_PROBE, ",".join(watch), *args], capture_output=True,
                       text=True, timeout=300, env=env)
    last = json.loads(p.stdout.strip().splitlines()[-1])  # the probe's line comes last
    return CliProbe(last["code"], last["loaded"], p.stdout, p.stderr)


def kill_9_at_pause(cmd: list[str], step: str, ready: Path, env: dict[str, str] | None = None,
                    timeout: float = 120) -> None:
    """Run `cmd` in a child process until it reaches `step`'s pause point
    (clipsearch.testpoints), then kill -9 it: the crash the healing tests recover from."""
    env = {**os.environ, PAUSE_ENV: step, READY_ENV: str(ready), "OMP_NUM_THREADS": "1", **(env or {})}
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not ready.exists():
        child.kill()
        _, err = child.communicate()
        pytest.fail(f"the run never reached the {step!r} pause point (exit {child.returncode}): "
                    f"{err[-2000:]}")
    os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
