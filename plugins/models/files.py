"""What every model format shares: the file it reads, its ``sha256`` pin, its normalization.

A suite may pin any weights or model file by its SHA-256 digest::

    models:
      mine: {use: torchscript, path: model.ts, sha256: 9f86d081884c7d65...}

The constructor checks that the file exists and that the pin is 64 hex digits (cheap, so
``harness validate`` reports it on its line); ``preflight`` hashes the file (in chunks) and
compares, before any case runs; a mismatch is one line, exit code 2. Nothing is cached: the
file is hashed again on every run, so an edited file is always caught.

Normalization belongs to the model: the harness feeds every model images in [0, 1], and
``mean``/``std`` (one value per channel, or one for all) turn them into what the network was
trained on, inside the model, so attacks and distortions stay in pixel space.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from harness import ModelError, ParamError

if TYPE_CHECKING:
    import torch
    from torch import nn

#: bytes read at a time when hashing a file
HASH_CHUNK = 1 << 20

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

#: torchvision's ImageNet statistics, for ``mean: imagenet`` / ``std: imagenet``
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def check_file(param: str, path: Any, what: str = "file") -> str:
    """``path`` as a string, checked to name an existing file (``~`` expanded); a
    :class:`ParamError` on ``param`` otherwise. Cheap: a ``stat``, nothing is read."""
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise ParamError(param, f"{param} must name a {what}, not {path!r}")
    p = Path(str(path)).expanduser()
    if p.is_dir():
        raise ParamError(param, f"{str(p)!r} is a folder, not a {what}")
    if not p.is_file():
        where = "" if p.is_absolute() else f" (relative to {Path.cwd()})"
        raise ParamError(param, f"{what} {str(p)!r} not found{where}",
                         hint=f"check the path given as {param}")
    return str(path)


def check_sha256(value: Any, param: str = "sha256") -> str | None:
    """A pin as 64 lower-case hex digits (``sha256:`` prefix and upper case accepted)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:"):]
    if not _HEX64.match(text):
        raise ParamError(param, f"{param} must be the file's SHA-256 digest (64 hex digits), "
                                f"not {value!r}",
                         hint="compute it with: sha256sum FILE")
    return text


def sha256_of(path: str | Path) -> str:
    """The SHA-256 digest of a file, read in chunks (any size, bounded memory)."""
    h = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as f:
        while True:
            chunk = f.read(HASH_CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def verify_pin(path: str | Path, expected: str | None, path_param: str = "path") -> None:
    """Check that the file at ``path`` (the parameter ``path_param``) exists and that its
    digest is ``expected`` (when pinned); a :class:`ParamError` on the parameter to blame
    otherwise."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ParamError(path_param, f"{str(p)!r} not found",
                         hint=f"check the path given as {path_param}")
    if expected is None:
        return
    actual = sha256_of(p)
    if actual != expected:
        raise ParamError("sha256", f"{str(p)!r} does not match its sha256 pin: the file's "
                                   f"digest is {actual}, the suite pins {expected}",
                         hint="the file changed since it was pinned: restore it, or pin the "
                              "new digest if the change is meant")


def check_mean_std(mean: Any, std: Any) -> tuple[list[float] | None, list[float] | None]:
    """``mean``/``std`` checked: both or neither, same length, finite, std positive;
    ``imagenet`` stands for torchvision's ImageNet statistics."""
    if isinstance(mean, str) and mean.lower() == "imagenet":
        mean = list(IMAGENET_MEAN)
    if isinstance(std, str) and std.lower() == "imagenet":
        std = list(IMAGENET_STD)
    if (mean is None) != (std is None):
        raise ParamError("mean" if mean is None else "std", "give both mean and std, or neither")
    if mean is None:
        return None, None
    values = {}
    for name, v in (("mean", mean), ("std", std)):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, (list, tuple)) or not v or any(
                isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s)
                for s in v):
            raise ParamError(name, f"{name} must be a number or a list of numbers (one per "
                                   f"channel), not {v!r}")
        values[name] = [float(s) for s in v]
    if len(values["mean"]) != len(values["std"]):
        raise ParamError("std", f"mean and std need the same number of values (one per "
                                f"channel), not {len(values['mean'])} and {len(values['std'])}")
    if any(s <= 0 for s in values["std"]):
        raise ParamError("std", "std values must be positive")
    return values["mean"], values["std"]


def normalizer(mean: Sequence[float] | None, std: Sequence[float] | None,
               input_shape: Sequence[int], what: str) -> "nn.Module | None":
    """A module computing ``(x - mean) / std`` per channel (dimension 1) for inputs of
    ``input_shape``, or None without ``mean``/``std``; a :class:`ModelError` when the
    number of values fits neither 1 nor the channel count."""
    if mean is None or std is None:
        return None
    channels = int(input_shape[0]) if len(input_shape) else 1
    if len(mean) not in (1, channels):
        raise ModelError(f"{len(mean)} mean/std values for {what}, whose inputs have "
                         f"{channels} channels (shape {list(input_shape)})",
                         hint="give one value per channel, or one for all")
    from .normalize import Normalize

    return Normalize(mean, std, len(input_shape) + 1)


def load_state_dict_file(path: str | Path) -> dict[str, "torch.Tensor"]:
    """A state dict from ``.safetensors`` (safetensors) or a torch file (``torch.load`` with
    ``weights_only=True``), unwrapping the usual checkpoint containers (``state_dict``,
    ``model``, ``state_dict_ema``...)."""
    import torch

    p = Path(path).expanduser()
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - a core dependency
            raise ModelError("reading .safetensors needs the safetensors package",
                             hint="pip install safetensors") from None
        try:
            return load_file(str(p), device="cpu")
        except Exception as exc:
            raise ModelError(f"cannot read {str(p)!r} as safetensors: {one_line(exc)}") from None
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read weights {str(p)!r}: {one_line(exc)}",
                         hint="the file must be a state dict saved with torch.save, or a "
                              ".safetensors file") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema"):
            inner = state.get(key)
            if isinstance(inner, dict) and inner and all(
                    isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ModelError(f"{str(p)!r} holds {type(state).__name__}, not a state dict "
                         "(parameter name -> tensor)",
                         hint="save model.state_dict(), not the model object")
    return state


def load_into(module: "nn.Module", state: dict[str, "torch.Tensor"], path: str | Path,
              what: str) -> None:
    """Load ``state`` into ``module`` strictly; DataParallel's ``module.`` prefix is dropped
    when the module has none; a mismatch names the first missing and unexpected keys."""
    own = set(module.state_dict())
    if state and not (set(state) & own):
        for prefix in ("module.", "model.", "_orig_mod."):
            if all(k.startswith(prefix) for k in state):
                stripped = {k[len(prefix):]: v for k, v in state.items()}
                if set(stripped) & own:
                    state = stripped
                    break
    missing = sorted(own - set(state))
    unexpected = sorted(set(state) - own)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        raise ModelError(f"weights {str(path)!r} do not fit {what}: keys " + "; ".join(parts),
                         hint="check that the file was saved from the same architecture")
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"weights {str(path)!r} do not fit {what}: {one_line(exc)}") from None


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return text or type(exc).__name__
