"""JPEG decoding and CLIP preprocessing on the GPU (nvJPEG through torchvision), for CUDA encoders.

Why: a CUDA encoder embeds thousands of images per second, and PIL decoding on a few CPU cores
cannot feed it. With this path the decode threads only read each file and its header (pixel
limit, EXIF orientation); decoding, resizing, cropping and normalising run batched on the GPU.
Whatever is not a plain RGB or greyscale JPEG, or what nvJPEG refuses, takes the PIL path, so a
collection never depends on which path a file took beyond resampling noise (the tests compare
both paths on CPU, where torchvision decodes with libjpeg).

torchvision 0.29 deprecates its image decoders in favour of TorchCodec; that package needs a
system FFmpeg, so this module keeps torchvision's until TorchCodec is as easy to install, and
keeps all of it behind `decode_batch` so the switch is one function.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from clipsearch.indexers.image import check_pixels

log = logging.getLogger(__name__)

_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class RawJpeg:
    """A JPEG file's bytes, read by a worker thread, waiting to be decoded in a batch."""

    data: torch.Tensor  # uint8, 1-D: the whole file
    orientation: int  # EXIF orientation, 1 (upright) to 8


def read_jpeg(path: str | Path, max_pixels: int) -> RawJpeg | None:
    """The file's bytes if the GPU can decode it, else None (the caller takes the PIL path).

    Reads only the header through PIL, so the pixel limit (decompression-bomb guard) holds
    before anything is decoded, as it does on the PIL path.
    """
    with open(path, "rb") as f:
        try:
            with Image.open(f) as im:
                if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                    return None  # CMYK, YCCK, not a JPEG: PIL handles them
                w, h = im.size
                orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except (OSError, SyntaxError, ValueError):
            return None  # let the PIL path produce the precise error
        check_pixels(w, h, max_pixels)
        f.seek(0)
        data = bytearray(f.read())
    if not data:
        return None
    return RawJpeg(torch.frombuffer(data, dtype=torch.uint8), orientation if 1 <= orientation <= 8 else 1)


def upright(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a CHW tensor, as PIL's ImageOps.exif_transpose does.

    torchvision's ``decode_jpeg(apply_exif_orientation=True)`` ignores the flag on CUDA, and
    the orientation is already known from the header read in ``read_jpeg``."""
    h, w = 1, 2
    if orientation == 2:
        return img.flip(w)
    if orientation == 3:
        return img.flip(h).flip(w)
    if orientation == 4:
        return img.flip(h)
    if orientation == 5:
        return img.transpose(h, w)
    if orientation == 6:
        return torch.rot90(img, -1, dims=(h, w))
    if orientation == 7:
        return img.transpose(h, w).flip(h).flip(w)
    if orientation == 8:
        return torch.rot90(img, 1, dims=(h, w))
    return img


def _decode(data: torch.Tensor | list[torch.Tensor], device: str):
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 deprecation notice; see module docstring
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def decode_batch(raws: list[RawJpeg], device: str) -> list[torch.Tensor | None]:
    """Upright uint8 CHW tensors on `device`; None where a file could not be decoded.

    One batched call first (nvJPEG decodes a list far faster than one file at a time); if it
    fails, file by file, so one corrupt JPEG costs only itself.
    """
    if not raws:
        return []
    try:
        imgs = list(_decode([r.data for r in raws], device))
    except RuntimeError:
        imgs = []
        for r in raws:
            try:
                imgs.append(_decode(r.data, device))
            except RuntimeError:
                imgs.append(None)
    return [None if im is None else upright(im, r.orientation) for im, r in zip(imgs, raws, strict=True)]


@dataclass(frozen=True)
class TensorPreprocess:
    """open_clip's standard image transform (resize, centre crop, normalise) on tensors."""

    resize: int | tuple[int, int]  # int: the shorter side; a pair: (h, w), aspect not kept
    crop: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: object  # torchvision InterpolationMode

    @classmethod
    def from_transforms(cls, transforms: list) -> TensorPreprocess | None:
        """Parse an open_clip Compose's transforms; None for any pipeline this cannot match."""
        from torchvision.transforms import CenterCrop, Normalize, Resize

        names = [type(t).__name__ for t in transforms]
        passive = ("MaybeConvertMode", "MaybeToTensor", "ToTensor")  # RGB + to-tensor: decode does both
        core = [t for t, n in zip(transforms, names, strict=True)
                if n not in passive and getattr(t, "__name__", "") != "_convert_to_rgb"]
        if ("ToTensor" not in names and "MaybeToTensor" not in names) or len(core) != 3:
            return None
        resize, crop, norm = core
        if not (isinstance(resize, Resize) and isinstance(crop, CenterCrop)
                and isinstance(norm, Normalize)) or resize.max_size is not None:
            return None
        size = resize.size
        if isinstance(size, int) or len(size) == 1:
            size = int(size if isinstance(size, int) else size[0])
        else:
            size = (int(size[0]), int(size[1]))
        return cls(size, (int(crop.size[0]), int(crop.size[1])), tuple(norm.mean), tuple(norm.std),
                   resize.interpolation)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 CHW (any device) -> normalised float32 CHW on the same device."""
        import torchvision.transforms.v2.functional as F

        x = img.float().div_(255.0)
        size = [self.resize] if isinstance(self.resize, int) else list(self.resize)  # [n]: shorter side
        x = F.resize(x, size, interpolation=self.interpolation, antialias=True).clamp_(0.0, 1.0)
        x = F.center_crop(x, list(self.crop))
        return F.normalize(x, list(self.mean), list(self.std))


def check_mode(mode: str, device: str) -> None:
    """Raise a UsageError for a --decode mode that cannot work on `device` (checked before any work)."""
    from clipsearch.errors import UsageError

    if mode not in ("auto", "cpu", "gpu"):
        raise UsageError(f"--decode {mode}: unknown mode", hint="use auto, cpu or gpu")
    if mode == "gpu" and not device.startswith("cuda"):
        raise UsageError("--decode gpu needs the encoder on a CUDA device",
                         hint="use --device cuda on a machine with an NVIDIA GPU, or --decode cpu")


class JpegDecoder:
    """Decodes RawJpeg batches on the encoder's device and preprocesses them there."""

    def __init__(self, preprocess: TensorPreprocess, device: str) -> None:
        self.preprocess, self.device = preprocess, device

    @classmethod
    def for_encoder(cls, encoder, mode: str = "auto") -> JpegDecoder | None:
        """The decoder to use for `mode` (auto, cpu or gpu), or None for the PIL path.

        auto uses the GPU when the encoder runs on CUDA and the transform is open_clip's standard
        one; gpu insists (a clear error if it cannot); cpu never uses it.
        """
        from clipsearch.errors import UsageError

        check_mode(mode, str(encoder.device))
        if mode == "cpu":
            return None
        on_cuda = str(encoder.device).startswith("cuda")
        tp = TensorPreprocess.from_transforms(list(getattr(encoder.preprocess, "transforms", [])))
        if mode == "gpu" and tp is None:
            raise UsageError("--decode gpu: this model's image transform is not the standard "
                             "resize + centre crop + normalise", hint="use --decode cpu")
        if not on_cuda or tp is None:
            return None
        return cls(tp, str(encoder.device))

    def __call__(self, raws: list[RawJpeg]) -> list[torch.Tensor | None]:
        """Preprocessed float CHW tensors on the device; None where decoding or resizing failed
        (the caller sends those files through PIL), e.g. a huge image on a GPU short of memory."""
        imgs = decode_batch(raws, self.device)
        out: list[torch.Tensor | None] = []
        for i, im in enumerate(imgs):
            try:
                out.append(None if im is None else self.preprocess(im))
            except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
                log.info("GPU preprocessing failed (%s); that file goes through PIL", e)
                out.append(None)
            imgs[i] = None  # release the full-size decode as soon as it is resized
        return out
