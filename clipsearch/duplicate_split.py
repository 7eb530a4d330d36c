"""Splitting chained duplicate groups: every two files of a group must look alike.

Pairs confirmed one by one are joined into groups by connected components, so one false link
between two different pictures (or between a picture and someone else's copy) chains their
groups together, and every pair of the joined group is then wrong. A copy looks like its
original and like the original's other copies, so a true group is tight: each two of its files
are within the cut of each other. `split_component` therefore splits a component by complete
linkage at the cut (scipy's hierarchical clustering): two sub-groups merge only when *every*
pair across them is within the cut, so a single weak bridge never joins two groups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# a component larger than this is left whole: m² distances would cost too much, and a copy
# group this large is a burst or a static scene, where chaining is what the user wants
MAX_SPLIT = 400


def split_component(members: Sequence[int], distance: Callable[[int, int], float],
                    cut: float) -> list[list[int]]:
    """The groups (two or more files) of one connected component `members` in which every two
    files are within `cut` by `distance(a, b)` (inf: not alike). Components of two, or over
    MAX_SPLIT, come back whole."""
    from scipy.cluster.hierarchy import fcluster, linkage

    m = list(members)
    if len(m) <= 2 or len(m) > MAX_SPLIT:
        return [m]
    big = 4.0 * max(cut, 1e-9) + 1.0  # stands for "not alike": above any cut
    condensed = np.array([min(distance(m[x], m[y]), big) for x in range(len(m))
                          for y in range(x + 1, len(m))], np.float64)
    labels = fcluster(linkage(condensed, method="complete"), t=cut, criterion="distance")
    out: dict[int, list[int]] = {}
    for node, label in zip(m, labels.tolist(), strict=True):
        out.setdefault(label, []).append(node)
    return [g for g in out.values() if len(g) > 1]
