"""Per-image transforms declared in a suite, applied as each image is read.

A dataset's ``transform`` is a preset name or a list of steps, each a name or a one-key
mapping::

    transform: imagenet                                  # resize 256, center crop 224
    transform: [{resize: 32}, grayscale_to_rgb]
    transform: [{resize: [64, 64]}, {center_crop: 56}]
    transform: [{resize: {size: 256, interpolation: bicubic}}, {center_crop: 224}]

Steps:

``resize: N``
    the shorter side to N pixels, the aspect ratio kept (torchvision's ``Resize(N)``);
    ``resize: [H, W]`` to exactly H x W. Bilinear with antialiasing (``interpolation:
    bilinear | bicubic | nearest``).
``center_crop: N`` or ``[H, W]``
    the central N x N (H x W) pixels; a crop larger than the image is an error.
``grayscale_to_rgb``
    one-channel images repeated to three channels (three-channel images are kept).
``rgb_to_grayscale``
    three-channel images to one (ITU-R 601 luma, as PIL and torchvision).

Presets: ``imagenet`` is what torchvision's ImageNet classification preset does before it
normalizes (resize 256, center crop 224); normalization (``mean``/``std``) belongs to the
model, since the harness feeds every model images in [0, 1].

Images enter as uint8 (from files) or float tensors ``[C, H, W]``; resizing works on the
uint8 values where the image has them (rounding as PIL does), and every image leaves as
float32 in [0, 1]. :func:`output_shape` computes the shape a transform gives images of a
known shape, so a transform that does not fit is reported when the suite is validated.
"""

from __future__ import annotations

from typing import Any, Sequence

from harness import ParamError

PRESETS: dict[str, list[tuple[str, Any]]] = {
    "imagenet": [("resize", {"size": [256], "interpolation": "bilinear"}),
                 ("center_crop", [224, 224])],
}
STEPS = ("resize", "center_crop", "grayscale_to_rgb", "rgb_to_grayscale")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")

Step = tuple[str, Any]


def _size(param: str, step: str, value: Any, *, square: bool) -> list[int]:
    """``N`` -> ``[N]`` (or ``[N, N]`` when ``square``), ``[H, W]`` checked."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, int):
        value = [value] if not square else [value, value]
    if (not isinstance(value, (list, tuple)) or len(value) not in (1, 2)
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
        raise ParamError(param, f"{step} takes a positive size N or [H, W], not {value!r}")
    value = [int(v) for v in value]
    if square and len(value) == 1:
        value = value * 2
    return value


def parse(value: Any, param: str = "transform") -> list[Step]:
    """The suite's ``transform`` as a list of ``(step, argument)``; a :class:`ParamError`
    naming ``param`` for anything else."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    steps: list[Step] = []
    hint = ("a transform is a preset (imagenet) or a list of steps: {resize: N}, "
            "{center_crop: N}, grayscale_to_rgb, rgb_to_grayscale")
    for item in items:
        if isinstance(item, str):
            name = item.strip().lower().replace("-", "_")
            if name in PRESETS:
                steps += PRESETS[name]
            elif name in ("grayscale_to_rgb", "rgb_to_grayscale"):
                steps.append((name, None))
            elif name in STEPS:
                raise ParamError(param, f"{name} needs a size: write {{{name}: N}}", hint=hint)
            else:
                raise ParamError(param, f"unknown transform {item!r}", hint=hint)
            continue
        if not isinstance(item, dict) or len(item) != 1:
            raise ParamError(param, f"transform step {item!r} is not a name or a one-key "
                                    "mapping", hint=hint)
        (name, arg), = item.items()
        name = str(name).strip().lower().replace("-", "_")
        if name == "resize":
            interpolation = "bilinear"
            if isinstance(arg, dict):
                unknown = set(arg) - {"size", "interpolation"}
                if unknown or "size" not in arg:
                    raise ParamError(param, f"resize takes size and interpolation, not "
                                            f"{sorted(arg)}", hint=hint)
                interpolation = str(arg.get("interpolation", "bilinear")).lower()
                if interpolation not in INTERPOLATIONS:
                    raise ParamError(param, f"unknown interpolation {interpolation!r}",
                                     hint=f"use one of {', '.join(INTERPOLATIONS)}")
                arg = arg["size"]
            steps.append(("resize", {"size": _size(param, "resize", arg, square=False),
                                     "interpolation": interpolation}))
        elif name == "center_crop":
            steps.append(("center_crop", _size(param, "center_crop", arg, square=True)))
        elif name in ("grayscale_to_rgb", "rgb_to_grayscale"):
            if arg not in (None, True):
                raise ParamError(param, f"{name} takes no argument", hint=hint)
            steps.append((name, None))
        else:
            raise ParamError(param, f"unknown transform step {name!r}", hint=hint)
    return steps


def _resized(size: list[int], h: int, w: int) -> tuple[int, int]:
    if len(size) == 2:
        return size[0], size[1]
    n = size[0]
    if h <= w:
        return n, max(1, int(n * w / h))
    return max(1, int(n * h / w)), n


def output_shape(steps: Sequence[Step], shape: Sequence[int], param: str = "transform",
                 what: str = "the images") -> tuple[int, ...]:
    """The shape ``[C, H, W]`` images of ``shape`` have after ``steps``; a
    :class:`ParamError` when a step does not fit them."""
    shape = tuple(int(s) for s in shape)
    if steps and len(shape) != 3:
        raise ParamError(param, f"image transforms need images [C, H, W]; {what} have shape "
                                f"{list(shape)}")
    for name, arg in steps:
        c, h, w = shape
        if name == "resize":
            shape = (c, *_resized(arg["size"], h, w))
        elif name == "center_crop":
            ch, cw = arg
            if ch > h or cw > w:
                raise ParamError(param, f"center_crop {ch}x{cw} is larger than {what} at that "
                                        f"step ({h}x{w})",
                                 hint="resize first, e.g. [{resize: %d}, {center_crop: %d}]"
                                      % (max(ch, cw), max(ch, cw)))
            shape = (c, ch, cw)
        elif name == "grayscale_to_rgb":
            if c not in (1, 3):
                raise ParamError(param, f"grayscale_to_rgb needs 1- or 3-channel images; "
                                        f"{what} have {c} channels")
            shape = (3, h, w)
        elif name == "rgb_to_grayscale":
            if c not in (1, 3):
                raise ParamError(param, f"rgb_to_grayscale needs 1- or 3-channel images; "
                                        f"{what} have {c} channels")
            shape = (1, h, w)
    return shape


def fixed_size(steps: Sequence[Step]) -> tuple[int, int] | None:
    """The (H, W) every image has after ``steps`` whatever its size, if the steps fix it."""
    size = None
    for name, arg in steps:
        if name == "resize":
            size = tuple(arg["size"]) if len(arg["size"]) == 2 else None
        elif name == "center_crop":
            size = tuple(arg)
    return size  # type: ignore[return-value]


def describe(steps: Sequence[Step]) -> str:
    """A stable text of ``steps`` (for fingerprints and names)."""
    parts = []
    for name, arg in steps:
        if name == "resize":
            parts.append(f"resize{arg['size']}" + (
                f"/{arg['interpolation']}" if arg["interpolation"] != "bilinear" else ""))
        elif name == "center_crop":
            parts.append(f"center_crop{arg}")
        else:
            parts.append(name)
    return ",".join(parts)


class Transform:
    """Applies ``steps`` to one image (a PIL image, a numpy array ``[C, H, W]`` or a tensor
    ``[C, H, W]``, uint8 or float) and returns float32 ``[C, H, W]`` in [0, 1]. Picklable,
    for DataLoader worker processes."""

    def __init__(self, steps: Sequence[Step] = (), what: str = "image"):
        self.steps = list(steps)
        self.what = what

    def __call__(self, image: Any) -> Any:
        import torch

        x = to_tensor(image)
        for name, arg in self.steps:
            x = self._apply(name, arg, x)
        if x.dtype == torch.uint8:
            return x.float().div_(255.0)
        return x.float()

    def _apply(self, name: str, arg: Any, x: Any) -> Any:
        import torch
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        from harness import DataError

        c, h, w = x.shape
        if name == "resize":
            mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                    "nearest": InterpolationMode.NEAREST}[arg["interpolation"]]
            size = list(_resized(arg["size"], h, w))
            if (h, w) == tuple(size):
                return x
            out = F.resize(x, size, interpolation=mode, antialias=mode != InterpolationMode.NEAREST)
            if out.dtype != torch.uint8 and mode == InterpolationMode.BICUBIC:
                out = out.clamp(0, 1)   # bicubic overshoots
            return out
        if name == "center_crop":
            ch, cw = arg
            if ch > h or cw > w:
                raise DataError(f"{self.what}: center_crop {ch}x{cw} is larger than the image "
                                f"({h}x{w})", hint="resize first: [{resize: N}, {center_crop: N}]")
            return F.center_crop(x, [ch, cw])
        if name == "grayscale_to_rgb":
            if c == 3:
                return x
            if c != 1:
                raise DataError(f"{self.what}: grayscale_to_rgb on an image with {c} channels")
            return x.expand(3, h, w).clone()
        if name == "rgb_to_grayscale":
            if c == 1:
                return x
            if c != 3:
                raise DataError(f"{self.what}: rgb_to_grayscale on an image with {c} channels")
            return F.rgb_to_grayscale(x, num_output_channels=1)
        raise AssertionError(name)  # pragma: no cover - parse() admits no other step


def to_tensor(image: Any) -> Any:
    """A PIL image (mode L, RGB, or anything PIL converts to RGB), a numpy array or a tensor
    ``[C, H, W]`` -> a tensor ``[C, H, W]`` (uint8 kept, other types as float32)."""
    import numpy as np
    import torch

    if isinstance(image, torch.Tensor):
        x = image
    elif isinstance(image, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(image))
    else:
        from torchvision.transforms.v2 import functional as F

        mode = getattr(image, "mode", None)
        if mode is None:
            raise TypeError(f"cannot read an image from {type(image).__name__}")
        if mode == "1":
            image = image.convert("L")
        elif mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(image, dtype=np.float32)
            peak = 65535.0 if mode.startswith("I;16") else max(1.0, float(arr.max()))
            return torch.from_numpy(arr / peak)[None]
        elif mode not in ("L", "RGB"):
            image = image.convert("RGB")
        x = F.pil_to_tensor(image)
    if x.dim() == 2:
        x = x[None]
    if x.dtype not in (torch.uint8, torch.float32):
        x = x.float()
    return x
