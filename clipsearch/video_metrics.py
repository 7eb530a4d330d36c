"""Temporal grounding metrics: IoU of time spans, R1@IoU and mIoU.

Kept apart from the retrieval code so benchmarks and tests score every method the
same way. A prediction in the wrong video counts as IoU 0: for collection-level
moment retrieval, finding the right span in the wrong file is a miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class Span(NamedTuple):
    """A time span [t_start, t_end] in seconds inside one video."""

    source: str
    t_start: float
    t_end: float


def temporal_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Intersection over union of two closed intervals; 0.0 when either is empty or they are disjoint."""
    a0, a1 = min(a), max(a)
    b0, b1 = min(b), max(b)
    inter = max(0.0, min(a1, b1) - max(a0, b0))
    union = max(a1, b1) - min(a0, b0)
    if union <= 0.0:
        return 0.0
    return inter / union


def span_iou(pred: Span | None, gt: Span) -> float:
    """IoU of a predicted span with the ground truth, 0.0 if it is missing or in another video."""
    if pred is None or pred.source != gt.source:
        return 0.0
    return temporal_iou((pred.t_start, pred.t_end), (gt.t_start, gt.t_end))


def recall_at_iou(
    preds: Sequence[Sequence[Span]], gts: Sequence[Span], threshold: float, k: int = 1
) -> float:
    """R{k}@IoU: fraction of queries whose top-k predictions hold one with IoU >= threshold.

    `preds[i]` is the ranked list for query i (may be empty), `gts[i]` its single ground truth.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} prediction lists for {len(gts)} ground truths")
    if not gts:
        return 0.0
    hits = sum(
        any(span_iou(p, gt) >= threshold for p in ranked[:k]) for ranked, gt in zip(preds, gts, strict=False)
    )
    return hits / len(gts)


def mean_iou(preds: Sequence[Sequence[Span]], gts: Sequence[Span]) -> float:
    """mIoU of the top-1 prediction over all queries (an empty list scores 0)."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} prediction lists for {len(gts)} ground truths")
    if not gts:
        return 0.0
    total = sum(span_iou(ranked[0] if ranked else None, gt) for ranked, gt in zip(preds, gts, strict=False))
    return total / len(gts)


def video_recall_at_k(
    ranked_sources: Sequence[Sequence[str]], gt_sources: Sequence[str], k: int = 1
) -> float:
    """Video-level R@k: fraction of queries whose right video is among the top k."""
    if len(ranked_sources) != len(gt_sources):
        raise ValueError(f"{len(ranked_sources)} rankings for {len(gt_sources)} ground truths")
    if not gt_sources:
        return 0.0
    return sum(gt in list(r)[:k] for r, gt in zip(ranked_sources, gt_sources, strict=False)) / len(gt_sources)
