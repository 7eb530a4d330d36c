"""Walk the roots and report every candidate file, or why it cannot be read.

Paths are bytes from start to end, so names that are not valid UTF-8 survive. Every file is
reported by its real path (symlinks resolved), once per walk however many roots, links or
hard links lead to it, so a file has one identity and one set of rows.

What the walk leaves out, and why:
- symlinks whose target lies outside the indexed folders, unless `follow_symlinks` (the
  user then chose that target: it is reported in `Scan.linked`, to become a root);
- the folders in `ScanRules.never_enter` (the collection itself, caches) and any folder that
  holds another clipsearch collection;
- hidden names (a leading dot) unless `include_hidden`;
- what `ScanRules.excludes` or a `.clipsearchignore` file (gitignore syntax) matches.

A root that is missing or cannot be listed is not walked (`Scan.vanished`), nor is an empty
folder that is a mount point (`Scan.unwalked`): their files are not known to be gone.
"""

from __future__ import annotations

import errno
import os
import stat as st
from collections.abc import Iterator
from dataclasses import dataclass

import pathspec

from clipsearch.fsutil import is_within

MEDIA_EXTENSIONS = {
    b".jpg", b".jpeg", b".png", b".webp", b".bmp", b".gif", b".tif", b".tiff",
    b".heic", b".heif", b".hif", b".avif", b".jxl", b".apng",
    b".dng", b".cr2", b".cr3", b".nef", b".arw", b".orf", b".rw2", b".raf",
    b".mp4", b".m4v", b".mkv", b".webm", b".mov", b".avi",
    b".pdf", b".txt", b".md", b".markdown",
    b".mp3", b".m4a", b".wav", b".flac", b".ogg", b".opus",
}
IGNORE_FILE = b".clipsearchignore"
COLLECTION_MARKERS = (b"clipsearch.json", b"items.lance")
OUTSIDE = "symlink leads outside the indexed folders (--follow-symlinks follows it)"


@dataclass
class Found:
    path: bytes
    mtime: float
    size: int


@dataclass
class Problem:
    """A path that cannot be indexed. `keeps_rows`: rows already stored for it stay (a file
    that is unreadable today may be readable tomorrow); False when the path must not be
    indexed at all (a symlink that leads outside). `notable`: worth reporting whatever its
    name (otherwise only media files and symlinks are reported)."""

    path: bytes
    reason: str
    keeps_rows: bool = True
    notable: bool = False


@dataclass(frozen=True)
class ScanRules:
    """What a walk follows and leaves out. All paths are real (resolved) paths."""

    follow_symlinks: bool = False
    include_hidden: bool = False
    excludes: tuple[str, ...] = ()
    never_enter: tuple[tuple[bytes, str], ...] = ()  # (folder, what it is, for the reason)
    indexed: tuple[bytes, ...] = ()  # roots of earlier runs: symlink targets there are inside


@dataclass
class _Dir:
    path: bytes
    base: bytes  # the root (or followed target) this folder was reached from
    rel: str  # its path relative to base, '/'-separated, '' for base itself
    ignores: tuple[tuple[str, pathspec.PathSpec], ...] = ()  # (folder rel to base, its patterns)


def has_media_extension(path: bytes) -> bool:
    return os.path.splitext(path)[1].lower() in MEDIA_EXTENSIONS


def is_collection_dir(names: set[bytes]) -> bool:
    """A folder holding a clipsearch collection (metadata + table), by its entries' names."""
    return all(m in names for m in COLLECTION_MARKERS)


def _explain(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symlink loop"
    if e.errno == errno.EACCES:
        return "permission denied (unreadable)"
    return e.strerror or str(e)


def _rel_join(rel: str, name: bytes) -> str:
    n = os.fsdecode(name)
    return f"{rel}/{n}" if rel else n


class Scan:
    """One walk over `roots` (absolute paths, as the user gave them). Iterate it for Found and
    Problem entries; afterwards the attributes say what was covered.

    walked:   prefixes whose every file was seen (a file under one that was not seen is gone);
              both the given and the real form of each root.
    unwalked: folders under those whose content is unknown (cannot be listed, empty mount
              point): rows under them are not gone.
    vanished: (root, reason) for roots that are missing or cannot be listed.
    empty:    directory roots that are empty (not even hidden or excluded entries).
    linked:   real targets of followed symlinks that lead outside the indexed folders.
    """

    def __init__(self, roots: list[bytes], rules: ScanRules | None = None) -> None:
        self.roots = [os.path.abspath(r) for r in roots]
        self.rules = rules or ScanRules()
        self.walked: list[bytes] = []
        self.unwalked: list[bytes] = []
        self.vanished: list[tuple[bytes, str]] = []
        self.empty: list[bytes] = []
        self.linked: list[bytes] = []
        self._real_roots = [os.path.realpath(r) for r in self.roots]
        self._excludes = pathspec.GitIgnoreSpec.from_lines(self.rules.excludes)
        self._seen_dirs: set[tuple[int, int]] = set()
        self._seen_files: set[tuple[int, int]] = set()
        self._pending: list[bytes] = []  # followed symlink targets still to walk

    # ---- the walk ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Found | Problem]:
        for given, real in zip(self.roots, self._real_roots, strict=True):
            yield from self._root(given, real)
        while self._pending:
            target = self._pending.pop(0)
            self.walked.append(target)
            yield from self._tree(target)

    def _root(self, given: bytes, real: bytes) -> Iterator[Found | Problem]:
        try:
            s = os.stat(real)
        except OSError as e:
            reason = "no such file or directory" if e.errno == errno.ENOENT else _explain(e)
            self.vanished.append((given, reason))
            return
        barrier = self._never_enter(real)
        if barrier:
            yield Problem(given, f"not indexed: inside {barrier}", keeps_rows=False, notable=True)
            return
        self.walked.extend([given, real] if given != real else [given])
        if st.S_ISDIR(s.st_mode):
            yield from self._tree(real, root_given=given)
        elif st.S_ISREG(s.st_mode):
            found = self._file(real, s)
            if found is not None:
                yield found

    def _tree(self, top: bytes, root_given: bytes | None = None) -> Iterator[Found | Problem]:
        stack = [_Dir(top, top, "")]
        while stack:
            d = stack.pop()
            try:
                s = os.stat(d.path)
                key = (s.st_dev, s.st_ino)
                if key in self._seen_dirs:
                    continue
                self._seen_dirs.add(key)
                with os.scandir(d.path) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                if root_given is not None and d.path == top:
                    self.walked = [w for w in self.walked if w not in (root_given, top)]
                    self.vanished.append((root_given, f"cannot list it: {_explain(e)}"))
                else:
                    self.unwalked.append(d.path)
                    yield Problem(d.path, f"cannot list directory: {_explain(e)}; its rows are kept",
                                  notable=True)
                continue
            names = {e.name for e in entries}
            if is_collection_dir(names):
                if d.path == top:
                    yield Problem(top, "not indexed: it is a clipsearch collection", keeps_rows=False,
                                  notable=True)
                continue
            if not entries:
                if d.path == top and root_given is not None:
                    self.empty.append(root_given)
                elif os.path.ismount(d.path):
                    self.unwalked.append(d.path)  # an unplugged drive's mount folder
                continue
            ignores = d.ignores
            if IGNORE_FILE in names:
                spec, bad = self._ignore_spec(os.path.join(d.path, IGNORE_FILE))
                ignores = ignores + ((d.rel, spec),)
                if bad:
                    yield Problem(os.path.join(d.path, IGNORE_FILE), bad, notable=True)
            subdirs: list[_Dir] = []
            for entry in entries:
                found = self._entry(entry, d, ignores, subdirs)
                if found is not None:
                    yield found
            stack.extend(reversed(subdirs))

    def _entry(self, e: os.DirEntry, d: _Dir, ignores, subdirs: list) -> Found | Problem | None:
        """One directory entry: a Found/Problem to report, None to pass over (subdirectories
        to enter are appended to `subdirs`)."""
        if e.name == IGNORE_FILE or (not self.rules.include_hidden and e.name.startswith(b".")):
            return None
        try:
            link = e.is_symlink()
            is_dir = not link and e.is_dir(follow_symlinks=False)
        except OSError as err:
            return Problem(e.path, _explain(err))
        matching = bool(ignores or self.rules.excludes)
        rel = _rel_join(d.rel, e.name) if matching or is_dir else ""
        if matching and self._excluded(rel, is_dir, ignores):
            return None
        if link:
            return self._link(e.path)
        if is_dir:
            if not self._never_enter(e.path):
                subdirs.append(_Dir(e.path, d.base, rel, ignores))
            return None
        try:
            s = e.stat(follow_symlinks=False)
        except OSError as err:
            return Problem(e.path, _explain(err))
        return self._file(e.path, s) if st.S_ISREG(s.st_mode) else None

    def _file(self, real: bytes, s: os.stat_result) -> Found | None:
        key = (s.st_dev, s.st_ino)
        if key in self._seen_files:  # the same file by another root, link or hard link
            return None
        self._seen_files.add(key)
        return Found(real, s.st_mtime, s.st_size)

    def _link(self, path: bytes) -> Found | Problem | None:
        """A symlink met in a folder: follow it (by its real target), pass over it, or refuse."""
        try:
            real = os.path.realpath(path, strict=True)
            s = os.stat(real)
        except OSError as e:
            dangling = e.errno == errno.ENOENT
            return Problem(path, "dangling symlink" if dangling else
                           "symlink loop" if e.errno == errno.ELOOP else _explain(e), keeps_rows=False,
                           notable=True)
        barrier = self._never_enter(real)
        if barrier:
            return Problem(path, f"not indexed: symlink leads into {barrier}", keeps_rows=False, notable=True)
        if any(is_within(real, r) for r in self._real_roots):
            return None  # walked (or excluded) where it really is
        inside = any(is_within(real, r) for r in self.rules.indexed)
        if not inside and not self.rules.follow_symlinks:
            return Problem(path, OUTSIDE, keeps_rows=False, notable=True)
        if not inside:
            self.linked.append(real)
        if st.S_ISDIR(s.st_mode):
            if real not in self._pending:
                self._pending.append(real)
            return None
        if not st.S_ISREG(s.st_mode):
            return None
        self.walked.append(real)
        return self._file(real, s)

    # ---- rules -------------------------------------------------------------------------------
    def _never_enter(self, real: bytes) -> str | None:
        """What `real` lies inside, if it is one of the folders no walk enters."""
        for folder, what in self.rules.never_enter:
            if is_within(real, folder):
                return what
        return None

    def _excluded(self, rel: str, is_dir: bool, ignores) -> bool:
        """gitignore semantics: the last pattern that matches decides, inner files last."""
        path = rel + "/" if is_dir else rel
        verdict = self._excludes.check_file(path).include
        for folder, spec in ignores:
            sub = path[len(folder) + 1:] if folder else path
            v = spec.check_file(sub).include
            if v is not None:
                verdict = v
        return bool(verdict)

    @staticmethod
    def _ignore_spec(path: bytes) -> tuple[pathspec.PathSpec, str]:
        """The patterns of a .clipsearchignore file, and what was wrong with it ('' if nothing):
        an unreadable file or an invalid line is reported, never fatal."""
        try:
            with open(path, "rb") as f:
                lines = os.fsdecode(f.read()).splitlines()
        except OSError as e:
            return pathspec.GitIgnoreSpec.from_lines([]), f"unreadable ignore file ({_explain(e)})"
        try:
            return pathspec.GitIgnoreSpec.from_lines(lines), ""
        except ValueError:
            good, bad = [], []
            for n, line in enumerate(lines, 1):
                try:
                    pathspec.GitIgnoreSpec.from_lines([line])
                    good.append(line)
                except ValueError:
                    bad.append(str(n))
            return (pathspec.GitIgnoreSpec.from_lines(good),
                    f"invalid pattern on line {', '.join(bad)}; the other lines apply")


def scan(roots: list[bytes], rules: ScanRules | None = None) -> Iterator[Found | Problem]:
    """Yield regular files (any extension) and problems under the roots, depth first, sorted."""
    yield from Scan(roots, rules)


class Admission:
    """Whether one path is one a walk of `roots` under `rules` would report, decided without
    walking: what a file watcher asks of each event, so that changes the walk leaves out (hidden
    names, excludes, .clipsearchignore, the collection's own folder) start no run.

    Follows the walk's rules component by component from the root down; a `.clipsearchignore`
    is admitted whatever it says (it changes the rules). A path outside every root, or met
    only through a followed symlink, is not admitted. Ignore files are re-read when they change.
    """

    def __init__(self, roots: list[bytes], rules: ScanRules | None = None) -> None:
        self._scan = Scan(roots, rules)
        self._bases = sorted({os.path.realpath(r) for r in roots} | {os.path.abspath(r) for r in roots},
                             key=len, reverse=True)
        self._ignores: dict[bytes, tuple[float, pathspec.PathSpec]] = {}

    def admits(self, path: bytes) -> bool:
        path = os.path.abspath(path)
        base = next((b for b in self._bases if is_within(path, b)), None)
        if base is None or self._scan._never_enter(os.path.realpath(path)):
            return False
        rel_parts = [] if path == base else path[len(base):].strip(os.sep.encode()).split(os.sep.encode())
        ignores: tuple[tuple[str, pathspec.PathSpec], ...] = ()
        folder, rel = base, ""
        for i, name in enumerate(rel_parts):
            if self._collection_at(folder):
                return False
            spec = self._ignore_at(folder)
            if spec is not None:
                ignores = ignores + ((rel, spec),)
            last = i == len(rel_parts) - 1
            if last and name == IGNORE_FILE:
                return True
            if not self._scan.rules.include_hidden and name.startswith(b"."):
                return False
            rel = _rel_join(rel, name)
            folder = os.path.join(folder, name)
            is_dir = not last or os.path.isdir(folder)
            if (ignores or self._scan.rules.excludes) and self._scan._excluded(rel, is_dir, ignores):
                return False
        return True

    @staticmethod
    def _collection_at(folder: bytes) -> bool:
        return all(os.path.exists(os.path.join(folder, m)) for m in COLLECTION_MARKERS)

    def _ignore_at(self, folder: bytes) -> pathspec.PathSpec | None:
        """The patterns of `folder`'s .clipsearchignore, cached by its mtime; None without one."""
        path = os.path.join(folder, IGNORE_FILE)
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            self._ignores.pop(path, None)
            return None
        cached = self._ignores.get(path)
        if cached is None or cached[0] != mtime:
            cached = (mtime, self._scan._ignore_spec(path)[0])
            self._ignores[path] = cached
        return cached[1]


__all__ = ["Admission", "Found", "Problem", "Scan", "ScanRules", "has_media_extension"]
