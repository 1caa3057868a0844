"""Export a harness model to ONNX, checked against the original through onnxruntime.

:func:`export_model` writes ``model.module`` as an ONNX graph that takes the harness's
inputs (images in [0, 1], any batch size; normalization stays inside the graph) and gives
logits; the file is compared with the module on a batch through onnxruntime and only then
moved into place, so a failed export never leaves a partial file. :func:`export_suite_model`
loads a suite's model the way ``harness run`` does and exports it (what ``harness export``
calls). The ``onnx`` model plugin reads the files back.

torch offers two exporters: ``dynamo=True`` (``torch.export``, opset 18 and later; needs the
``onnxscript`` package) and the legacy TorchScript-based one (``dynamo=False``, opset 17 by
default here).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .context import Context, default_cache_dir, resolve_device
from .errors import HarnessError, ModelError
from .model import Model

#: opset of the legacy exporter when none is given
LEGACY_OPSET = 17
#: the exported logits may differ from the module's by this much, relative to
#: max(1, largest |logit|)
EXPORT_TOLERANCE = 1e-4
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class _Logits(nn.Module):
    """The module under export: the harness's input (images in [0, 1]) to logits."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (the graph's name)
        return self.module(input)


def _reason(exc: BaseException) -> str:
    """One line for an exporter's exception (their messages run over many lines; the cause
    often says more than the wrapper)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    cause = exc.__cause__
    if cause is not None:
        more = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
        if more:
            text += f" ({type(cause).__name__}: {more[0]})"
    return text[:400]


def _onnx_logits(path: Path, xs: list[torch.Tensor], batch: int = 256) -> list[torch.Tensor]:
    """onnxruntime's logits (CPU provider) for each batch in ``xs``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outs = []
    for x in xs:
        x = x.detach().to("cpu", torch.float32)
        parts = [session.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + batch].numpy()})[0]
                 for i in range(0, len(x), batch)]
        outs.append(torch.from_numpy(np.concatenate(parts)).float())
    return outs


def _opset_of(program: Any, path: Path, asked: int | None) -> int | None:
    """The default-domain opset of the export (from the dynamo exporter's program, else
    the file)."""
    try:
        return int(program.model.opset_imports[""])
    except Exception:
        pass
    try:
        import onnx
    except ImportError:
        return asked
    proto = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), asked)


def export_model(model: Model, out: Path, *, opset: int | None = None, dynamo: bool = True,
                 check_batch: torch.Tensor, tolerance: float = EXPORT_TOLERANCE) -> dict[str, Any]:
    """Export ``model.module`` to the ONNX file ``out`` and check it.

    The graph has one input ``input`` (``[batch, *model.input_shape]``, images in [0, 1],
    batch size free) and one output ``logits``. ``dynamo`` picks torch's exporter
    (``torch.export``-based, or the legacy TorchScript one), ``opset`` the ONNX opset (None:
    the exporter's default; 17 for the legacy one). The file is run by onnxruntime on
    ``check_batch`` (inputs in [0, 1]; also on its first image alone, which checks the free
    batch size) and compared with the module; only if the largest logit difference is at
    most ``tolerance * max(1, largest |logit|)`` is it moved to ``out`` (written beside it
    first, then renamed). Raises :class:`ModelError` otherwise, or when the export fails.

    Returns: path, exporter, opset, input/output names, input_shape, num_classes,
    checked (images compared), max_abs_diff, allowed_diff, bytes, seconds.
    """
    if model.module is None:
        raise ModelError(f"model {model.name!r} has no torch module to export")
    if check_batch.dim() != len(model.input_shape) + 1 or \
            tuple(check_batch.shape[1:]) != tuple(model.input_shape) or len(check_batch) == 0:
        raise ModelError(f"the check batch has shape {list(check_batch.shape)}; model "
                         f"{model.name!r} takes [N, {', '.join(map(str, model.input_shape))}]")
    out = Path(out)
    if out.is_dir():
        raise ModelError(f"{str(out)!r} is a folder", hint="give the path of an .onnx file")
    if not out.parent.is_dir():
        raise ModelError(f"folder {str(out.parent)!r} does not exist")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    module = _Logits(model.module).eval()
    x = check_batch.detach().to(model.device, torch.float32)
    example = x[:2] if len(x) >= 2 else x[:1].repeat(2, *([1] * (x.dim() - 1)))
    exporter = "dynamo" if dynamo else "legacy"
    t0 = time.perf_counter()
    try:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                program = None
                if dynamo:
                    program = torch.onnx.export(
                        module, (example,), str(tmp), dynamo=True, opset_version=opset,
                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                        dynamic_shapes=({0: torch.export.Dim("batch")},),
                        external_data=False, verbose=False)
                else:
                    torch.onnx.export(
                        module, (example,), str(tmp), dynamo=False,
                        opset_version=opset or LEGACY_OPSET,
                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                        do_constant_folding=True)
        except ImportError as exc:
            raise ModelError(f"the {exporter} ONNX exporter needs {exc.name or 'a package'}",
                             hint="pip install 'robustness-harness[onnx]'") from None
        except Exception as exc:
            raise ModelError(f"exporting model {model.name!r} with the {exporter} exporter "
                             f"failed: {_reason(exc)}",
                             hint="try the other exporter (dynamo on/off) or another opset"
                             ) from None
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            ref = torch.cat([module(x[i:i + 256]) for i in range(0, len(x), 256)]).float().cpu()
        try:
            got, one = _onnx_logits(tmp, [x, x[:1]])
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot run the exported {model.name!r}: "
                             f"{_reason(exc)}") from None
        if got.shape != ref.shape or one.shape != ref[:1].shape:
            raise ModelError(f"the exported {model.name!r} gives logits of shape "
                             f"{list(got.shape)} (and {list(one.shape)} for one image), "
                             f"the module {list(ref.shape)}")
        diff = max(float((got - ref).abs().max()), float((one - ref[:1]).abs().max()))
        allowed = tolerance * max(1.0, float(ref.abs().max()))
        if not diff <= allowed:
            raise ModelError(f"the exported {model.name!r} differs from the module by {diff:.3g} "
                             f"in its logits (allowed {allowed:.3g})",
                             hint="try the other exporter (dynamo on/off) or another opset")
        opset_used = _opset_of(program, tmp, opset or (None if dynamo else LEGACY_OPSET))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {
        "path": str(out), "exporter": exporter, "opset": opset_used,
        "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "input_shape": list(model.input_shape), "num_classes": model.num_classes,
        "checked": len(x), "max_abs_diff": diff, "allowed_diff": allowed,
        "bytes": out.stat().st_size, "seconds": round(seconds, 3),
    }


def export_suite_model(suite_path: str | Path, model_id: str, out: Path, *,
                       device: str | None = None, data_dir: Path | None = None,
                       cache_dir: Path | None = None, seed: int | None = None,
                       opset: int | None = None, dynamo: bool = True,
                       check_size: int = 16, no_code: bool = False) -> dict[str, Any]:
    """Load model ``model_id`` of the suite at ``suite_path`` as ``harness run`` would
    (device, seed, data and weight cache), and :func:`export_model` it.

    The check batch is ``check_size`` random inputs in [0, 1] drawn from the run's seed,
    plus the first ``check_size`` images of the suite's default data when it has some of the
    model's input shape. The returned dict also holds ``suite``, ``model`` and ``check``
    (what the check batch was made of).
    """
    from .plugins import default_registry
    from .suite import load_suite

    registry = default_registry()
    suite = load_suite(suite_path, registry, no_code=no_code)
    if model_id not in suite.models:
        raise HarnessError(f"suite {suite.name!r} has no model {model_id!r}",
                           hint=f"its models: {', '.join(suite.models)}")
    spec = suite.models[model_id]
    plugin = registry.build("model", spec.use, spec.params)
    ctx = Context(device=resolve_device(device or suite.device),
                  seed=suite.seed if seed is None else seed, data_dir=data_dir,
                  cache_dir=cache_dir or default_cache_dir(), registry=registry)
    from .base import blame

    data = None
    if suite.data is not None:
        try:
            data = ctx.dataset(suite.data.use, **suite.data.params)
        except HarnessError:
            data = None
    if data is not None:   # a model may take its input shape from the data
        ctx = replace(ctx, input_shape=tuple(data.input_shape), num_classes=data.num_classes)
    with blame(plugin, f"loading model {model_id!r}"):
        model = plugin.load(ctx)
    model.name = model_id
    gen = ctx.generator("export", model_id)
    parts = [torch.rand(check_size, *model.input_shape, generator=gen, device="cpu")]
    check = f"{check_size} random inputs"
    if data is not None and tuple(data.input_shape) == tuple(model.input_shape):
        parts.insert(0, data.head(check_size).materialize().x)
        check = f"{min(check_size, len(data))} images of {data.name} and {check}"
    info = export_model(model, Path(out), opset=opset, dynamo=dynamo,
                        check_batch=torch.cat(parts))
    return {"suite": suite.name, "model": model_id, "check": check, **info}
