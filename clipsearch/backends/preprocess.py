"""open_clip's image transform in PIL and numpy, for encoders that run without torch.

open_clip preprocesses with torchvision on PIL images: resize (shortest side, or both sides
for "squash"), centre crop, convert to RGB, scale to [0, 1], normalise. torchvision does the
resize and the crop through PIL itself, so doing the same PIL calls here gives the same pixels;
the numbers of the tail are computed as torchvision does them. The parameters are read from
the model's own transform when it is exported (`ImageTransform.from_open_clip`) and kept in the
export's manifest, so running needs neither torch nor torchvision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image


class UnsupportedTransform(ValueError):
    """The model's transform has a step this module does not reproduce."""


_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class ImageTransform:
    """Resize + centre crop + RGB + normalise, as one picklable callable: PIL image in, float32
    CHW array out (what the image tower's ONNX graph takes, stacked)."""

    resize: tuple[int, ...]  # (short side,) or (height, width)
    crop: tuple[int, int] | None  # (height, width), or None when there is no crop
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_size: int | None = None

    @property
    def image_size(self) -> int:
        """The side the encoder sees (the crop, else the resize target)."""
        return int((self.crop or self.resize)[0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageTransform:
        return cls(resize=tuple(int(x) for x in d["resize"]),
                   crop=tuple(int(x) for x in d["crop"]) if d.get("crop") else None,  # type: ignore[arg-type]
                   interpolation=str(d["interpolation"]),
                   mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
                   std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
                   max_size=d.get("max_size"))

    @classmethod
    def from_open_clip(cls, preprocess: Any) -> ImageTransform:
        """Read the parameters from an open_clip transform (a torchvision Compose); raises
        UnsupportedTransform for a step not reproduced here (then the model stays on torch)."""
        steps = list(getattr(preprocess, "transforms", []))
        names = [type(t).__name__ for t in steps]
        resize = crop = norm = None
        for t in steps:
            name = type(t).__name__
            if name == "Resize":
                resize = t
            elif name == "CenterCrop":
                crop = t
            elif name == "Normalize":
                norm = t
            elif name not in ("MaybeConvertMode", "_convert_to_rgb", "MaybeToTensor", "ToTensor", "function"):
                raise UnsupportedTransform(f"image transform step {name} is not reproduced without torch")
            elif name == "MaybeConvertMode" and getattr(t, "mode", "RGB") != "RGB":
                raise UnsupportedTransform(f"image transform converts to {t.mode}, not RGB")
        if resize is None or norm is None:
            raise UnsupportedTransform(f"image transform {names} lacks a resize or a normalise step")
        size = resize.size
        size = (int(size),) if isinstance(size, int) else tuple(int(s) for s in size)
        interp = getattr(resize.interpolation, "value", str(resize.interpolation))
        if interp not in _RESAMPLING:
            raise UnsupportedTransform(f"interpolation {interp} is not reproduced with PIL")
        crop_size = tuple(int(s) for s in crop.size) if crop is not None else None
        return cls(resize=size, crop=crop_size, interpolation=interp,  # type: ignore[arg-type]
                   mean=tuple(float(m) for m in norm.mean),  # type: ignore[arg-type]
                   std=tuple(float(s) for s in norm.std),  # type: ignore[arg-type]
                   max_size=getattr(resize, "max_size", None))

    # ---- the transform -------------------------------------------------------------------------
    def _resized(self, im: Image.Image) -> Image.Image:
        w, h = im.size
        if len(self.resize) == 1:
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.resize[0], int(self.resize[0] * long / short)
            if self.max_size is not None and new_long > self.max_size:
                new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            new_h, new_w = self.resize[0], self.resize[1]
        if (new_w, new_h) == (w, h):
            return im
        return im.resize((new_w, new_h), _RESAMPLING[self.interpolation])

    def _cropped(self, im: Image.Image) -> Image.Image:
        if self.crop is None:
            return im
        ch, cw = self.crop
        w, h = im.size
        if cw > w or ch > h:  # torchvision pads with black first
            left, top = (cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0
            canvas = Image.new(im.mode, (max(w, cw), max(h, ch)), 0)
            canvas.paste(im, (left, top))
            im = canvas
            w, h = im.size
            if (w, h) == (cw, ch):
                return im
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        return im.crop((left, top, left + cw, top + ch))

    def __call__(self, image: Image.Image) -> np.ndarray:
        im = self._cropped(self._resized(image))
        if im.mode != "RGB":
            im = im.convert("RGB")
        a = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        return np.ascontiguousarray((a - mean) / std)
