"""Renames, moves and copies, recognised by content: rows that follow a file instead of the
encoder running again.

After the walk, a file to index whose (size, content hash) is that of a source the table
already holds takes that source's rows, vectors, thumbnails and text included, under its own
path (`Carry`). When the donor has left its path (it is gone, or holds other content now), that
is a move, counted in `IndexReport.moved`, and the donor's rows go in the same commit as the
new ones arrive; otherwise it is a copy, indexed without embedding. Only files whose size is
that of some stored file are hashed, so a run without such candidates pays nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from clipsearch import thumbs
from clipsearch.file_states import FileState, FileStates
from clipsearch.records import Record
from clipsearch.store import SourceRows, Store

if TYPE_CHECKING:
    from clipsearch.pipeline import IndexReport, Job


@dataclass
class Carry:
    """A file whose rows are taken from `donor`, a stored source of the same content."""

    path: bytes
    mtime: float
    size: int
    content_hash: str
    donor: bytes
    moved: bool  # the donor's content left its path: a move, not a copy
    donor_gone: bool  # the donor's rows go in the commit that carries them
    replaces: bool  # the file had rows of its own (of other content)


def find(jobs: list[Job], gone: list[bytes], states: Mapping[bytes, FileState],
         hash_file: Callable[[bytes, int], str]) -> tuple[list[Job], list[bytes], list[Carry]]:
    """Split planned `jobs` into those to embed and those to carry; `gone` less the donors
    whose rows the carries remove. A file that cannot be read now stays a job (its indexer
    reports why)."""
    if not jobs:
        return jobs, gone, []
    sizes = {j.size for j in jobs}
    by_content: dict[tuple[int, str], list[bytes]] = {}
    same_size = (states.with_sizes(sizes) if isinstance(states, FileStates)  # Arrow: no loop over all
                 else ((raw, st) for raw, st in states.items() if st.size in sizes))
    for raw, st in same_size:
        if st.content_hash:  # a partial file's size (-1) is no job's
            by_content.setdefault((st.size, st.content_hash), []).append(raw)
    sizes = {size for size, _ in by_content}
    gone_set = set(gone)
    leaving = gone_set | {j.path for j in jobs}  # sources whose stored content leaves their path
    claimed: set[bytes] = set()
    kept: list[Job] = []
    carries: list[Carry] = []
    for job in jobs:
        if job.size not in sizes:
            kept.append(job)
            continue
        if job.content_hash is None:
            try:
                job.content_hash = hash_file(job.path, job.size)
            except OSError:
                kept.append(job)
                continue
        donors = [d for d in by_content.get((job.size, job.content_hash), []) if d != job.path]
        if not donors:
            kept.append(job)
            continue
        donor = _pick(job.path, donors, leaving, claimed)
        moved = donor in leaving and donor not in claimed
        claimed.add(donor)
        carries.append(Carry(job.path, job.mtime, job.size, job.content_hash, donor, moved,
                             donor in gone_set, job.replaces))
    taken = {c.donor for c in carries if c.donor_gone}
    return kept, [g for g in gone if g not in taken], carries


def _pick(path: bytes, donors: list[bytes], leaving: set[bytes], claimed: set[bytes]) -> bytes:
    """The donor a file most likely came from: one whose content left its path and that no
    other file took yet, of the same name first (a folder renamed); else any (a copy)."""
    name = os.path.basename(path)

    def rank(d: bytes) -> tuple[bool, bool, bytes]:
        return (not (d in leaving and d not in claimed), os.path.basename(d) != name, d)

    return min(donors, key=rank)


def apply(store: Store, carries: list[Carry], thumb_dir: str | os.PathLike[str],
          report: IndexReport, max_files: int = 256) -> None:
    """Write the carried rows, one commit per batch of files: each file's rows from its
    donor's, read from the table as it was before the first batch (so a swap of two names
    reads both old contents), under the file's own path, ids and thumbnail names. A donor that
    is gone leaves in the commit of its last carry. Thumbnails of rows that left are deleted
    once every batch is in."""
    if not carries:
        return
    base = os.path.dirname(os.path.abspath(thumb_dir))
    snapshot = store.snapshot()
    groups: dict[bytes, list[Carry]] = {}
    for c in carries:
        groups.setdefault(c.donor, []).append(c)
    leaving = [d for d, g in groups.items() if g[0].donor_gone] + [c.path for c in carries if c.replaces]
    old_thumbs = set(store.thumbs_at(snapshot, leaving))
    new_thumbs: set[str] = set()
    batch: list[bytes] = []
    files = 0
    for i, donor in enumerate(groups):
        batch.append(donor)
        files += len(groups[donor])
        if files >= max_files or i == len(groups) - 1:
            records = store.records_at(snapshot, batch)
            new_thumbs |= _commit(store, base, [(d, groups[d], records[d]) for d in batch], report)
            batch, files = [], 0
    thumbs.remove(thumb_dir, old_thumbs - new_thumbs)


def _commit(store: Store, base: str, groups: list[tuple[bytes, list[Carry], list[Record]]],
            report: IndexReport) -> set[str]:
    """One batch of carries (donor, its carries, its rows) in one commit; returns the
    thumbnail names its rows record."""
    items: list[SourceRows] = []
    named: set[str] = set()
    for _, group, donor_rows in groups:
        for c in group:
            recs = [replace(r, thumb=thumbs.carry(base, r.thumb, c.path)) for r in donor_rows]
            named |= {r.thumb for r in recs if r.thumb}
            items.append(SourceRows(c.path, c.mtime, c.size, c.content_hash, recs))
            if c.moved:
                report.moved += 1
            else:
                report.indexed += 1
                report.items += len(recs)
    store.replace_sources(items, delete=[d for d, g, _ in groups if g[0].donor_gone])
    return named
