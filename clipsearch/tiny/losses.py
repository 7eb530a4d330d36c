"""Losses of clipsearch-tiny training: multi-positive CLIP loss, image-image term, position probe."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipsearch.tiny.synth import POSITIONS


def positives(attrs: torch.Tensor, mentioned: torch.Tensor) -> torch.Tensor:
    """pos[i, j]: caption j is true of image i (every attribute it mentions matches).

    Identical or less specific captions in a batch thus count as positives of each other,
    which keeps short captions like "a red star" from being pushed away from other red stars.
    """
    ok = (mentioned[None, :, :] == -1) | (mentioned[None, :, :] == attrs[:, None, :])
    return ok.all(dim=-1).float()


def _multi_positive_ce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row against a uniform target over its positives."""
    keep = pos.sum(1) > 0
    target = pos[keep] / pos[keep].sum(1, keepdim=True)
    return -(target * F.log_softmax(logits[keep], dim=1)).sum(1).mean()


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, attrs: torch.Tensor,
              mentioned: torch.Tensor, i2i_weight: float = 0.5, i2i_temp: float = 0.1,
              i2i_keep_position: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """Multi-positive image<->text loss plus a supervised image<->image term.

    ``txt``/``mentioned`` may hold more captions than there are images: the hard negatives.
    They join both softmaxes; which caption is true of which image is decided by attributes
    alone, so a negative that fits another image in the batch is that image's positive. The
    image term (same colour+shape = positive) makes image-to-image search group by object
    rather than by background. With ``i2i_keep_position`` a same-object pair at two different
    known positions is left out of that term (neither pulled together nor pushed apart), so
    it does not teach the image tower to forget where the shape is.
    """
    pos = positives(attrs, mentioned)
    logits = scale * img @ txt.t()
    l_i2t = _multi_positive_ce(logits, pos)
    l_t2i = _multi_positive_ce(logits.t(), pos.t())
    same = (attrs[:, None, :2] == attrs[None, :, :2]).all(-1).float()
    eye = torch.eye(len(img), dtype=torch.bool)
    same = same.masked_fill(eye, 0)
    drop = eye
    if i2i_keep_position:
        pos_i, pos_j = attrs[:, None, 3], attrs[None, :, 3]
        moved = (same > 0) & (pos_i >= 0) & (pos_j >= 0) & (pos_i != pos_j)
        same = same.masked_fill(moved, 0)
        drop = eye | moved
    sim = (img @ img.t() / i2i_temp).masked_fill(drop, -1e4)
    l_i2i = _multi_positive_ce(sim, same) if same.sum() > 0 else sim.new_zeros(())
    loss = (l_i2t + l_t2i) / 2 + i2i_weight * l_i2i
    parts = {"i2t": l_i2t.item(), "t2i": l_t2i.item(), "i2i": l_i2i.item()}
    return loss, parts



class PositionProbe(torch.nn.Module):
    """One linear classifier of position, shared by both towers and dropped after training.

    Applied to image embeddings (the true position) and to text embeddings (the position the
    caption names), it makes both towers put position on the same directions of the joint
    space. Without it, neither tower starts to encode position (the text embeddings of "on the
    left" and "on the right" had cosine 1.000): while one tower ignores it, the contrastive
    loss gives the other no gradient to learn it either.
    """

    def __init__(self, embed_dim: int, smoothing: float = 0.0) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(embed_dim, len(POSITIONS))
        self.smoothing = smoothing

    def loss(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        known = labels >= 0
        if not known.any():
            return emb.new_zeros(())
        return F.cross_entropy(self.linear(emb[known]), labels[known], label_smoothing=self.smoothing)

