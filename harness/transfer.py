"""Adversarial examples made for one model and fed to others: amplification, and the
portable file format they are saved in.

Each transfer test saves, per source model and chunk of images,
``artifacts/<test>/<model>/<start>-<stop>.npz`` (NumPy's format, readable by any tool with
``numpy.load``; :func:`load_examples` joins a model's chunks) holding

==============  ========================  ==============================================
``x_adv``       float32 [N, C, H, W]      the adversarial images, pixels in [0, 1]
``x``           float32 [N, C, H, W]      the original images
``y``           int64 [N]                 true labels
``target``      int64 [N]                 target labels (absent for untargeted attacks)
``success``     bool [N]                  whether the source model outputs the goal
``distortion``  float32 [N]               sqrt(sum r^2 / n) per image
==============  ========================  ==============================================

and beside it ``<model>.json``: the format name, the suite, the test, the source model's
spec, the attack's spec, the data's spec and fingerprint, and the seed. ``harness run
--reuse RUN_DIR`` loads examples whose JSON matches instead of making them again.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from ._lazy import numpy as np
from ._lazy import torch

FORMAT = "harness-adversarial-examples/1"


def amplify(x: torch.Tensor, x_adv: torch.Tensor, distortion: float) -> torch.Tensor:
    """The same perturbation directions, each scaled so that its distortion
    sqrt(sum r^2 / n) is ``distortion``, then clipped to [0, 1] (which can only shrink it).
    Images with no perturbation stay as they are."""
    r = (x_adv - x).flatten(1)
    current = r.norm(dim=1) / r.shape[1] ** 0.5
    scale = torch.where(current > 0, distortion / current.clamp_min(1e-12),
                        torch.zeros_like(current))
    return (x + (r * scale[:, None]).view_as(x)).clamp(0.0, 1.0)


def distortion_of(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    r = (x_adv - x).flatten(1)
    return r.norm(dim=1) / r.shape[1] ** 0.5


def pack(x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, success: torch.Tensor,
         target: torch.Tensor | None) -> bytes:
    """The ``.npz`` bytes of a set of examples."""
    arrays = {
        "x_adv": x_adv.detach().float().cpu().numpy(),
        "x": x.detach().float().cpu().numpy(),
        "y": y.detach().long().cpu().numpy(),
        "success": success.detach().bool().cpu().numpy(),
        "distortion": distortion_of(x, x_adv).float().cpu().numpy(),
    }
    if target is not None:
        arrays["target"] = target.detach().long().cpu().numpy()
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def metadata(**fields: Any) -> dict[str, Any]:
    return {"format": FORMAT, **fields}


def matches(meta: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether saved examples were made the way ``wanted`` says (everything but the time)."""
    keys = ("format", "test", "model_spec", "attack_spec", "data_spec", "data_fingerprint",
            "seed", "n")
    return all(json.dumps(meta.get(k), sort_keys=True) == json.dumps(wanted.get(k), sort_keys=True)
               for k in keys)


def load(npz: Path) -> dict[str, np.ndarray]:
    with np.load(npz, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def parts(run_dir: Path, test: str, model: str) -> list[tuple[int, int, Path]]:
    """The chunk files of the examples saved for (test, model): ``(start, stop, path)`` in
    order of position (``artifacts/<test>/<model>/<start>-<stop>.npz``)."""
    from .store import RunStore

    store = RunStore(run_dir)
    folder = store.file(f"artifacts/{test}/{model}", must_exist=False)
    out = []
    if folder.is_dir():
        for path in folder.glob("*-*.npz"):
            a, _, b = path.stem.partition("-")
            if a.isdigit() and b.isdigit():
                store.file(path.relative_to(store.path).as_posix())  # inside, no links out
                out.append((int(a), int(b), path))
    return sorted(out)


def load_examples(run_dir: Path, test: str, model: str) -> dict[str, np.ndarray]:
    """Every example saved for (test, model) in a run folder, joined in order of position
    (either layout: chunk files, or one ``<model>.npz`` as runs before chunks wrote)."""
    found = parts(Path(run_dir), test, model)
    if not found:
        return load(Path(run_dir) / "artifacts" / test / f"{model}.npz")
    pieces = [load(p) for _, _, p in found]
    return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}


def find_reusable(run_dir: Path, test: str, model: str, wanted: dict[str, Any],
                  start: int = 0, stop: int | None = None) -> dict[str, np.ndarray] | None:
    """The examples saved in ``run_dir`` for (test, model) and images ``start`` to ``stop``,
    if made the way ``wanted`` says (a chunk file of that range, or the range of a whole
    file). Their paths must stay inside the run folder; files that cannot be read, or hold
    arrays of the wrong kind, are a :class:`HarnessError` naming the file."""
    from .errors import HarnessError
    from .store import RunStore

    store = RunStore(run_dir)
    n = wanted.get("n")
    stop = n if stop is None else stop
    meta_path = store.file(f"artifacts/{test}/{model}.json", must_exist=False)
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(meta, dict) or not matches(meta, wanted):
        return None
    chunk = [p for a, b, p in parts(Path(run_dir), test, model) if (a, b) == (start, stop)]
    if chunk:
        npz_path, first, size = chunk[0], 0, stop - start
    else:
        npz_path = store.file(f"artifacts/{test}/{model}.npz", must_exist=False)
        first, size = start, n
        if not npz_path.is_file():
            return None
    try:
        arrays = load(npz_path)
    except Exception as exc:  # a damaged zip, a pickled object...
        raise HarnessError(f"{npz_path} cannot be read: {type(exc).__name__}: "
                           f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                           hint="run without --reuse, or reuse another run") from None
    expect = {"x_adv": np.floating, "success": np.bool_}
    for key, kind in expect.items():
        arr = arrays.get(key)
        if arr is None or not np.issubdtype(arr.dtype, kind) or len(arr) != size:
            raise HarnessError(f"{npz_path}: {key} is missing or is not {size} "
                               f"{'images' if key == 'x_adv' else 'flags'}",
                               hint="run without --reuse, or reuse another run")
    if "target" in arrays and (not np.issubdtype(arrays["target"].dtype, np.integer)
                               or len(arrays["target"]) != size):
        raise HarnessError(f"{npz_path}: target is not {size} labels",
                           hint="run without --reuse, or reuse another run")
    if first or stop - start != size:
        arrays = {k: v[first:first + stop - start] for k, v in arrays.items()}
    return arrays
