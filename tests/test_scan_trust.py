"""What the scanner lets in (issue #14): symlinks, excludes, roots, one row set per file, --verify.

Real files, the real CLI (subprocess) and the Python API; the bundled clipsearch-tiny model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clipsearch.indexers.scanner import OUTSIDE
from PIL import Image
from support import make_pdf, write_shapes

from clipsearch import Collection

CLI = [sys.executable, "-m", "clipsearch.cli"]
SECRET = "zebracrossingsecret"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "CLIPSEARCH_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=e, timeout=600)


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def new_col(tmp_path: Path, name: str = "db") -> Collection:
    return Collection.create(tmp_path / name, model="clipsearch-tiny", device="cpu")


def sources(col: Collection) -> list[bytes]:
    return col.store.scan(["source_raw"]).column("source_raw").to_pylist()


def source_names(col: Collection) -> set[str]:
    return {os.path.basename(os.fsdecode(r)) for r in sources(col)}


def skip_reasons(db: Path) -> dict[str, str]:
    lines = (db / "skipped.log").read_text().splitlines()[1:]
    return dict(line.split("\t", 1) for line in lines)


def solid_bmp(path: Path, colour: tuple[int, int, int]) -> Path:
    """A 64x64 BMP: every colour gives a file of the same size."""
    Image.new("RGB", (64, 64), colour).save(path, "BMP")
    return path


# ---- symlinks -----------------------------------------------------------------------------------
@pytest.fixture
def linked_tree(tmp_path: Path) -> dict[str, Path]:
    """Item 1 of the issue: a folder symlink to an outside folder holding a secret .txt and a
    PDF, a file symlink to an outside .txt, a symlinked PDF from outside."""
    photos, outside, far = tmp_path / "photos", tmp_path / "outside", tmp_path / "far"
    write_shapes(photos, per_class=1)
    make_pdf(photos / "inside.pdf", pages=1)
    outside.mkdir()
    (outside / "secret.txt").write_text(f"the password is {SECRET} do not index\n" * 3)
    make_pdf(outside / "report.pdf", pages=2)
    far.mkdir()
    (far / "hostname.txt").write_text(f"host {SECRET}-host\n" * 3)
    make_pdf(far / "linked.pdf", pages=1)
    os.symlink(outside, photos / "etc_link")
    os.symlink(far / "hostname.txt", photos / "hostname.txt")
    os.symlink(far / "linked.pdf", photos / "linked.pdf")
    # a link inside the root stays fine: its target is indexed once, where it really is
    os.symlink(photos / "red_star_0.jpg", photos / "alias.jpg")
    return {"photos": photos, "outside": outside, "far": far, "db": tmp_path / "db"}


def _assert_nothing_from(col: Collection, *folders: Path) -> None:
    t = col.store.scan(["source", "source_raw", "text", "thumb"])
    for raw in t.column("source_raw").to_pylist():
        assert not any(os.fsdecode(raw).startswith(str(f)) for f in folders), raw
    for s in t.column("source").to_pylist():
        assert "outside" not in s and "far" not in s and "etc_link" not in s, s
    for text in t.column("text").to_pylist():
        assert text is None or SECRET not in text
    thumbs = {os.path.basename(x) for x in t.column("thumb").to_pylist() if x}
    assert {p.name for p in col.thumb_dir.iterdir()} == thumbs  # every thumbnail is of an inside row


def test_symlinks_out_of_the_roots_are_refused_then_followed_on_request(linked_tree):
    photos, db = linked_tree["photos"], linked_tree["db"]
    p = ok(cli("index", str(photos), "--db", str(db), "--model", "clipsearch-tiny", "-q"))
    reasons = skip_reasons(db)
    for name in ("etc_link", "hostname.txt", "linked.pdf"):
        assert reasons[str(photos / name)] == OUTSIDE, reasons
        assert "leads outside the indexed folders" in reasons[str(photos / name)]
    assert str(photos / "alias.jpg") not in reasons
    col = Collection.open(db, device="cpu")
    _assert_nothing_from(col, linked_tree["outside"], linked_tree["far"])
    texts = [t for t in col.store.scan(["text"]).column("text").to_pylist() if t]
    assert any("marker1x0" in t for t in texts)  # the inside PDF's text is there: the check can fail
    assert sorted(source_names(col)) == sorted([*(f.name for f in photos.glob("*_?.jpg")), "inside.pdf"])
    assert "indexed 13 files" in p.stdout

    # --follow-symlinks: the targets are indexed, by their real paths, and become roots
    ok(cli("index", str(photos), "--db", str(db), "--follow-symlinks", "-q"))
    col = Collection.open(db, device="cpu")
    raws = {os.fsdecode(r) for r in sources(col)}
    assert {str(linked_tree["outside"] / "secret.txt"), str(linked_tree["outside"] / "report.pdf"),
            str(linked_tree["far"] / "hostname.txt"), str(linked_tree["far"] / "linked.pdf")} <= raws
    info = json.loads(ok(cli("info", "--db", str(db), "--json")).stdout)
    far = linked_tree["far"]
    assert set(info["roots"]) == {str(photos), str(linked_tree["outside"]), str(far / "hostname.txt"),
                                  str(far / "linked.pdf")}
    assert info["scan"]["follow_symlinks"] is True
    assert "followed anywhere" in ok(cli("info", "--db", str(db))).stdout

    # the choice is saved: a plain re-run changes nothing and removes nothing
    again = ok(cli("index", str(photos), "--db", str(db), "-q")).stdout
    assert "indexed 0 files" in again and "0 removed" in again
    # the targets are roots now: turning the option off keeps them; `remove` forgets them
    ok(cli("index", str(photos), "--db", str(db), "--no-follow-symlinks", "-q"))
    col = Collection.open(db, device="cpu")
    assert col.scan_options()["follow_symlinks"] is False and len(col.roots) == 4
    ok(cli("remove", str(linked_tree["outside"]), str(linked_tree["far"]), "--db", str(db)))
    after = ok(cli("index", str(photos), "--db", str(db), "-q")).stdout
    assert "indexed 0 files" in after
    col = Collection.open(db, device="cpu")
    assert col.roots == [str(photos)]
    _assert_nothing_from(col, linked_tree["outside"], linked_tree["far"])
    assert skip_reasons(db)[str(photos / "etc_link")] == OUTSIDE


# ---- roots ----------------------------------------------------------------------------------------
def test_a_single_file_root_admits_no_siblings(tmp_path):
    photos = tmp_path / "photos"
    write_shapes(photos, per_class=1)
    col = new_col(tmp_path)
    assert col.add([photos / "red_star_0.jpg"]).indexed == 1
    assert col.roots == [str(photos / "red_star_0.jpg")]
    assert col.info()["roots"] == [str(photos / "red_star_0.jpg")]
    again = col.add()  # every saved root: still that one file
    assert (again.indexed, again.unchanged) == (0, 1)
    assert source_names(col) == {"red_star_0.jpg"}


# ---- excludes -------------------------------------------------------------------------------------
def test_collection_other_collections_and_cache_are_never_entered(tmp_path):
    photos = tmp_path / "photos"
    write_shapes(photos, per_class=1)
    make_pdf(photos / "doc.pdf", pages=2)  # gives the collection thumbnails to (not) index
    cache = photos / "cachehome"
    write_shapes(cache / "clipsearch", per_class=1, seed=3)
    db = photos / "db"
    env = {"XDG_CACHE_HOME": str(cache), "CLIPSEARCH_CACHE": ""}
    first = ok(cli("index", str(photos), "--db", str(db), "--model", "clipsearch-tiny", "-q", env=env))
    assert "indexed 13 files" in first.stdout
    assert any(db.joinpath("thumbs").iterdir())
    other = photos / "albums" / "other_db"
    ok(cli("index", str(photos / "doc.pdf"), "--db", str(other), "--model", "clipsearch-tiny", "-q",
           env=env))
    second = ok(cli("index", str(photos), "--db", str(db), "-q", env=env))
    assert "indexed 0 files" in second.stdout and "13 unchanged" in second.stdout
    col = Collection.open(db, device="cpu")
    for raw in sources(col):
        assert not raw.startswith(os.fsencode(db)) and not raw.startswith(os.fsencode(cache))
        assert not raw.startswith(os.fsencode(other))


def test_hidden_excludes_and_ignore_files(tmp_path):
    photos = tmp_path / "photos"
    write_shapes(photos, per_class=1)
    for sub in (".git", "node_modules", "raw", "keep"):
        write_shapes(photos / sub, per_class=1, seed=len(sub))
    shutil.copy(photos / "red_star_0.jpg", photos / ".hidden.jpg")
    db = tmp_path / "db"
    base = set(os.listdir(photos)) - {".git", "node_modules", "raw", "keep", ".hidden.jpg"}

    ok(cli("index", str(photos), "--db", str(db), "--model", "clipsearch-tiny", "-q",
           "--exclude", "node_modules/", "--exclude", "/raw"))
    col = Collection.open(db, device="cpu")
    got = {os.path.relpath(os.fsdecode(r), photos) for r in sources(col)}
    assert got == base | {f"keep/{n}" for n in os.listdir(photos / "keep")}
    assert col.scan_options() == {"follow_symlinks": False, "include_hidden": False,
                                  "excludes": ["node_modules/", "/raw"]}
    shown = ok(cli("info", "--db", str(db))).stdout
    assert "node_modules/, /raw" in shown and "hidden      skipped" in shown

    # a .clipsearchignore (gitignore syntax, negation included) removes what is already indexed
    kept = {f"keep/{m}" for m in os.listdir(photos / "keep") if m.startswith("red_")}
    n_keep = len(os.listdir(photos / "keep"))
    (photos / "keep" / ".clipsearchignore").write_text("*.jpg\n!red_*\n")
    p = ok(cli("index", str(photos), "--db", str(db), "-q"))  # plain re-run: saved excludes hold
    assert f"{n_keep - len(kept)} removed" in p.stdout
    col = Collection.open(db, device="cpu")
    assert {os.path.relpath(os.fsdecode(r), photos) for r in sources(col)} == base | kept

    # --include-hidden brings in hidden files (not the ignored ones), and is saved
    ok(cli("index", str(photos), "--db", str(db), "--include-hidden", "-q"))
    col = Collection.open(db, device="cpu")
    names = {os.path.relpath(os.fsdecode(r), photos) for r in sources(col)}
    assert ".hidden.jpg" in names and any(n.startswith(".git/") for n in names)
    assert not any(n.startswith(("node_modules/", "raw/")) for n in names)
    assert col.scan_options()["include_hidden"] is True
    again = ok(cli("index", "--db", str(db), "-q")).stdout  # no PATH: every saved root, same options
    assert "indexed 0 files" in again and "0 removed" in again


def test_a_bad_exclude_pattern_is_a_usage_error(tmp_path):
    photos = tmp_path / "photos"
    write_shapes(photos, per_class=1)
    p = cli("index", str(photos), "--db", str(tmp_path / "db"), "--model", "clipsearch-tiny",
            "--exclude", "!", "-q")  # a negation of nothing
    assert p.returncode == 2 and "--exclude" in p.stderr and "hint:" in p.stderr


# ---- vanished roots -------------------------------------------------------------------------------
def test_missing_or_empty_roots_keep_their_rows(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_shapes(a, per_class=1, seed=1)
    write_shapes(b, per_class=1, seed=2)
    db = tmp_path / "db"
    ok(cli("index", str(a), str(b), "--db", str(db), "--model", "clipsearch-tiny", "-q"))
    n = len(os.listdir(b))

    # b unplugged (gone altogether): warned about, rows kept, a still updated, exit 0
    b.rename(tmp_path / "b_away")
    shutil.copy(a / "red_star_0.jpg", a / "new.jpg")
    p = ok(cli("index", str(a), str(b), "--db", str(db), "-q"))
    assert "indexed 1 files" in p.stdout and "0 removed" in p.stdout
    assert f"warning: {b}: no such file or directory" in p.stderr and "--prune-missing" in p.stderr
    assert skip_reasons(db)[str(b)].startswith("not updated: no such file or directory")
    assert cli("index", str(a), str(b), "--db", str(db), "-q", "--strict").returncode == 1
    col = Collection.open(db, device="cpu")
    assert sum(os.fsdecode(r).startswith(str(b) + "/") for r in sources(col)) == n

    # b back as an empty mount folder: a plain re-run of every root keeps its rows too
    b.mkdir()
    p = ok(cli("index", "--db", str(db), "-q"))
    assert "0 removed" in p.stdout and f"warning: {b}: it is empty now" in p.stderr
    assert Collection.open(db, device="cpu").info()["sources"] == 2 * n + 1

    # --prune-missing removes them on purpose, and forgets the root
    p = ok(cli("index", str(b), "--db", str(db), "-q", "--prune-missing"))
    assert f"{n} removed" in p.stdout and f"pruned {b}" in p.stdout
    col = Collection.open(db, device="cpu")
    assert col.roots == [str(a)] and col.info()["sources"] == n + 1


def test_a_typo_alone_is_still_a_usage_error(tmp_path):
    p = cli("index", str(tmp_path / "nope"), "--db", str(tmp_path / "db"), "--model", "clipsearch-tiny")
    assert p.returncode == 2 and "no such file or directory" in p.stderr


# ---- remove ---------------------------------------------------------------------------------------
def test_remove_forgets_files_and_roots_without_the_model(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from clipsearch.cli import main
    from clipsearch.encoders import Encoder

    a, b = tmp_path / "a", tmp_path / "b"
    write_shapes(a, per_class=1, seed=1)
    write_shapes(b / "sub", per_class=1, seed=2)
    col = new_col(tmp_path)
    col.add([a, b / "sub", a / "red_star_0.jpg"])
    assert set(col.roots) == {str(a), str(b / "sub"), str(a / "red_star_0.jpg")}

    def no_model(*args, **kwargs):
        raise AssertionError("remove loaded the model")

    monkeypatch.setattr(Encoder, "load", no_model)
    res = CliRunner().invoke(main, ["remove", str(b), str(a / "red_star_0.jpg"), "--db", str(col.path)])
    assert res.exit_code == 0, res.output
    n = len(os.listdir(a))
    assert f"removed {n + 1} files" in res.output and str(b / "sub") in res.output
    reopened = Collection.open(col.path, device="cpu")
    assert reopened.roots == [str(a)]
    assert reopened.info()["sources"] == n - 1
    # the Python API does the same
    assert reopened.remove([a]) == n - 1
    assert reopened.roots == [] and reopened.info()["sources"] == 0


# ---- one set of rows per file ---------------------------------------------------------------------
def test_one_row_set_per_file_whatever_leads_to_it(tmp_path):
    from support import solid, write_video

    d = tmp_path / "dir"
    d.mkdir()
    write_video(d / "v.mp4", range(0, 3000, 40),
                lambda p: solid((200, 30, 30) if p < 1500 else (30, 30, 200)))
    write_shapes(d / "img", per_class=1)
    os.link(d / "img" / "red_star_0.jpg", d / "hard.jpg")  # a hard link: the same file
    os.symlink(d / "img", d / "img_link")  # a folder link inside the root: walked once
    db = tmp_path / "db"
    p = ok(cli("index", str(d / "v.mp4"), str(d), str(d / "img"), "--db", str(db),
               "--model", "clipsearch-tiny", "-q"))
    n_files = 1 + len(os.listdir(d / "img"))
    assert f"indexed {n_files} files" in p.stdout
    col = Collection.open(db, device="cpu")
    t = col.store.scan(["id", "source_raw"])
    ids = t.column("id").to_pylist()
    assert len(ids) == len(set(ids))
    assert len(set(t.column("source_raw").to_pylist())) == n_files
    again = ok(cli("index", str(d), str(d / "v.mp4"), "--db", str(db), "-q")).stdout
    assert "indexed 0 files" in again and f"{n_files} unchanged" in again
    assert Collection.open(db, device="cpu").store.count() == len(ids)


def test_names_that_display_alike_keep_their_own_rows(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    latin1 = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # not UTF-8: shown as caf\xe9.png
    literal = os.path.join(os.fsencode(folder), b"caf\\xe9.png")  # literally backslash-x-e-9
    Image.new("RGB", (64, 64), (200, 20, 20)).save(os.fsdecode(latin1), "PNG")
    Image.new("RGB", (64, 64), (20, 20, 200)).save(os.fsdecode(literal), "PNG")
    col = new_col(tmp_path)
    assert col.add([folder]).indexed == 2
    for _ in range(2):
        r = col.add([folder])
        assert (r.unchanged, r.indexed, r.removed) == (2, 0, 0)
        assert sorted(sources(col)) == sorted([latin1, literal]) and col.store.count() == 2
    # one changes: only its rows are replaced, the other's survive
    Image.new("RGB", (80, 80), (20, 200, 20)).save(os.fsdecode(literal), "PNG")
    r = col.add([folder])
    assert (r.indexed, r.unchanged) == (1, 1)
    assert sorted(sources(col)) == sorted([latin1, literal]) and col.store.count() == 2
    assert col.info()["sources"] == 2


# ---- --verify -------------------------------------------------------------------------------------
def test_verify_rehashes_behind_unchanged_size_and_mtime(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    target = solid_bmp(photos / "swap.bmp", (220, 20, 20))
    checker = (np.indices((64, 64)).sum(0) // 8 % 2 * 255).astype(np.uint8)
    Image.fromarray(np.stack([checker] * 3, -1)).save(photos / "other.bmp", "BMP")
    db = tmp_path / "db"
    ok(cli("index", str(photos), "--db", str(db), "--model", "clipsearch-tiny", "-q"))
    st = target.stat()
    solid_bmp(tmp_path / "blue.bmp", (20, 220, 20))
    shutil.copyfile(tmp_path / "blue.bmp", target)  # same size, new content...
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and the old mtime (touch -r)
    assert target.stat().st_size == st.st_size

    plain = ok(cli("index", str(photos), "--db", str(db), "-q")).stdout
    assert "indexed 0 files" in plain and "2 unchanged" in plain  # size+mtime cannot see it
    before = swap_vector(Collection.open(db, device="cpu"))
    verified = ok(cli("index", str(photos), "--db", str(db), "-q", "--verify")).stdout
    assert "indexed 1 files" in verified and "1 unchanged" in verified
    col = Collection.open(db, device="cpu")
    hit = col.search(image=tmp_path / "blue.bmp", k=1)[0]
    assert Path(hit.source).name == "swap.bmp" and hit.score > 0.999
    assert not np.allclose(swap_vector(col), before, atol=1e-2)
    r = col.add([photos], verify=True)  # the Python API: nothing changed since
    assert (r.indexed, r.unchanged) == (0, 2)


def swap_vector(col: Collection) -> np.ndarray:
    meta, vecs = col.store.vectors()
    return vecs[[os.path.basename(s) for s in meta.column("source").to_pylist()].index("swap.bmp")]


def test_a_broken_ignore_file_is_reported_not_fatal(tmp_path):
    photos = tmp_path / "photos"
    write_shapes(photos, per_class=1)
    Image.new("RGB", (64, 64), (9, 9, 9)).save(photos / "dark.png")
    (photos / ".clipsearchignore").write_text("!\n*.png\n")
    col = new_col(tmp_path)
    report = col.add([photos])
    assert report.indexed == len(list(photos.glob("*.jpg")))  # line 2 still applies
    reasons = dict(report.skipped)
    assert "invalid pattern on line 1" in reasons[str(photos / ".clipsearchignore")]


def test_unreadable_root_and_empty_mount_point_keep_their_rows(tmp_path, monkeypatch):
    """Root can read anything here, so the permission error and the mount point are injected."""
    a, b = tmp_path / "a", tmp_path / "b"
    write_shapes(a / "usb", per_class=1, seed=1)
    write_shapes(a / "local", per_class=1, seed=2)
    write_shapes(b, per_class=1, seed=3)
    col = new_col(tmp_path)
    col.add([a, b])
    n = len(os.listdir(b))
    for f in (a / "usb").iterdir():  # the drive is unplugged: its mount folder is left, empty
        f.unlink()
    (b / "red_star_0.jpg").unlink()

    real_scandir, real_ismount = os.scandir, os.path.ismount

    def scandir(path="."):
        if isinstance(path, (str, bytes)) and os.fsdecode(path) == str(b):
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os.path, "ismount", lambda p: os.fsdecode(p) == str(a / "usb") or real_ismount(p))
    shutil.copy(a / "local" / "red_star_0.jpg", a / "local" / "new.jpg")
    report = col.add()
    assert (report.indexed, report.removed) == (1, 0)
    assert report.vanished == [(str(b), "cannot list it: permission denied (unreadable)")]
    under = [os.fsdecode(r) for r in sources(col)]
    assert sum(s.startswith(str(a / "usb") + "/") for s in under) == n
    assert sum(s.startswith(str(b) + "/") for s in under) == n  # red_star_0 too: b was not seen

    monkeypatch.setattr(os, "scandir", real_scandir)
    report = col.add()  # b readable again: its deleted file goes, the empty mount still holds
    assert report.removed == 1 and not report.vanished


def test_a_root_named_through_a_symlink_is_stored_and_searched_by_its_real_path(tmp_path):
    photos = tmp_path / "photos"
    write_shapes(photos, per_class=1)
    os.symlink(photos, tmp_path / "link")
    col = new_col(tmp_path)
    col.add([tmp_path / "link"])
    assert col.roots == [str(photos)]
    assert all(os.fsdecode(r).startswith(str(photos) + "/") for r in sources(col))
    assert col.add([photos]).unchanged == len(os.listdir(photos))  # the same files, not new ones
    assert len(col.search(text="a red star", k=3, under=str(tmp_path / "link"))) == 3
