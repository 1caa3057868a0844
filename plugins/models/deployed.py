"""Models saved by deployment pipelines: TorchScript files and ``torch.export`` programs.

``torchscript``
    A module saved with ``torch.jit.save`` (``.pt``/``.ts``), read with ``torch.jit.load``
    onto the harness's device.
``torch-export``
    A program saved with ``torch.export.save`` (``.pt2``), read with ``torch.export.load``
    and moved to the harness's device. Its input shape is read from the program; a program
    exported with a fixed batch size is fed that many images at a time (export it with a
    dynamic batch, ``dynamic_shapes={"x": {0: torch.export.Dim("batch")}}``, to feed whole
    batches at once).

Both give exact gradients through autograd (the file's weights are frozen), so every attack
runs on them. Their layers are not addressable: the analyses that need a torch module
(``unit-probe``, ``spectral-bounds``) take the ``torch`` or ``timm`` formats. Both accept
``mean``/``std`` (applied before the network, so inputs stay in [0, 1]), ``input_shape``
(default: the program's, else the data's), ``num_classes`` (checked against the output) and
a ``sha256`` pin of the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import model_validator

import harness
from harness import Context, Field, Model, ModelError, ModelPlugin

from ..params import InputShape, Mean, NumClasses, Sha256, Std, mean_std
from .files import check_file, normalizer, one_line, verify_pin


class DeployedModel(ModelPlugin):
    """Shared parameters and checks of the file formats (see the module docstring)."""

    #: how the file is described in messages
    what: ClassVar[str] = "model file"

    class Params(harness.Params):
        path: str = Field(description="the model file")
        sha256: Sha256 = None
        input_shape: InputShape = None
        num_classes: NumClasses = None
        mean: Mean = None
        std: Std = None

        _mean_std = model_validator(mode="after")(mean_std)

    def __init__(self, **values: Any):
        super().__init__(**values)
        check_file("path", self.path, self.what)

    def preflight(self, ctx: Context) -> None:
        verify_pin(self.path, self.sha256)

    def open(self, path: Path, ctx: Context) -> tuple[Callable, list[int | None] | None,
                                                        int | None]:
        """``(forward, image dims or None, fixed batch or None)`` for the file at ``path``,
        on ``ctx.device``; dims the format leaves open are None."""
        raise NotImplementedError

    def load(self, ctx: Context) -> Model:
        import torch

        path = Path(self.path).expanduser()
        if not path.is_file():
            raise ModelError(f"{self.what} {str(path)!r} not found")
        device = torch.device(ctx.device)
        net, dims, batch = self.open(path, ctx)
        input_shape = self._input_shape(dims, ctx, path)
        normalize = normalizer(self.mean, self.std, input_shape, path.name)
        if normalize is not None:
            normalize = normalize.to(device)

        def forward(x: torch.Tensor) -> torch.Tensor:
            if normalize is not None:
                x = normalize(x)
            if batch is None or len(x) == batch:
                return _logits(net(x))
            parts = []
            for i in range(0, len(x), batch):
                chunk = x[i:i + batch]
                n = len(chunk)
                if n < batch:
                    chunk = torch.cat([chunk, chunk.new_zeros((batch - n, *chunk.shape[1:]))])
                parts.append(_logits(net(chunk))[:n])
            return torch.cat(parts)

        with torch.no_grad():
            probe = torch.zeros(2, *input_shape, device=device)
            try:
                out = forward(probe)
            except Exception as exc:
                raise ModelError(f"{path.name} fails on 2 images of shape {input_shape}: "
                                 f"{type(exc).__name__}: {one_line(exc)}",
                                 hint="check input_shape (and that the file was saved for "
                                      "this device)") from None
        if out.dim() != 2 or len(out) != 2:
            raise ModelError(f"{path.name} returns outputs of shape {list(out.shape)} for 2 "
                             "images; classifier logits are [batch, classes]")
        found = int(out.shape[1])
        if self.num_classes is not None and self.num_classes != found:
            raise ModelError(f"num_classes is {self.num_classes} but {path.name} outputs "
                             f"{found} logits per image")
        model = Model(forward=forward, input_shape=input_shape, num_classes=found,
                      device=device, name=path.stem)
        model.gradient_source = "autograd"
        note = f"{self.name} file {path.name}"
        if batch is not None:
            note += f" (fixed batch of {batch}: fed {batch} image(s) at a time)"
        model.gradient_note = note
        return model

    def _input_shape(self, dims: list[int | None] | None, ctx: Context,
                     path: Path) -> list[int]:
        given = self.input_shape
        if given is not None:
            if dims is not None and (len(dims) != len(given) or any(
                    d is not None and d != s for d, s in zip(dims, given))):
                shown = ["?" if d is None else d for d in dims]
                raise ModelError(f"input_shape {given} does not fit {path.name}, which takes "
                                 f"images of shape {shown}")
            return list(given)
        if dims is not None and all(d is not None for d in dims):
            return [int(d) for d in dims]  # type: ignore[arg-type]
        data = list(ctx.input_shape) if ctx.input_shape else None
        if data is not None and (dims is None or (len(dims) == len(data) and all(
                d is None or d == s for d, s in zip(dims, data)))):
            return data
        raise ModelError(f"{path.name}: the input shape is not known",
                         hint="give input_shape, e.g. [3, 224, 224]")


def _logits(out: Any) -> Any:
    """The logits of a module's output: the tensor itself, or the first of a tuple/list."""
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if isinstance(out, dict):
        for key in ("logits", "output", "out"):
            if key in out:
                return out[key]
        raise ModelError(f"the model returns a dict with keys {sorted(out)}; expected "
                         "logits (a tensor, or a dict with 'logits')")
    return out


class TorchScriptModel(DeployedModel):
    """A TorchScript module (``torch.jit.save``) from ``path``, with exact gradients;
    ``mean``/``std`` normalization, ``sha256`` pin, ``input_shape`` (default: the data's)."""

    name: ClassVar[str] = "torchscript"
    what: ClassVar[str] = "TorchScript file"

    def open(self, path: Path, ctx: Context) -> tuple[Callable, None, None]:
        import torch

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)   # torch.jit's deprecation
                module = torch.jit.load(str(path), map_location=torch.device(ctx.device))
        except Exception as exc:
            raise ModelError(f"cannot load {str(path)!r} with torch.jit.load: "
                             f"{one_line(exc)}",
                             hint="is it a TorchScript file (torch.jit.save)? a torch.export "
                                  "program (.pt2) is 'use: torch-export'") from None
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return module, None, None


class TorchExportModel(DeployedModel):
    """A ``torch.export`` program (``.pt2``, ``torch.export.save``) from ``path``, with exact
    gradients; input shape read from the program; ``mean``/``std``, ``sha256`` pin."""

    name: ClassVar[str] = "torch-export"
    what: ClassVar[str] = "torch.export program"

    def open(self, path: Path, ctx: Context) -> tuple[Callable, list[int | None], int | None]:
        import torch

        device = torch.device(ctx.device)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.export.load(str(path))
        except Exception as exc:
            raise ModelError(f"cannot load {str(path)!r} with torch.export.load: "
                             f"{one_line(exc)}",
                             hint="is it a program saved with torch.export.save? a TorchScript "
                                  "file is 'use: torchscript'") from None
        if device.type != "cpu":
            try:
                from torch.export.passes import move_to_device_pass
            except ImportError:  # pragma: no cover - older torch
                raise ModelError("moving a torch.export program to "
                                 f"{device} needs torch>=2.6") from None
            program = move_to_device_pass(program, device)
        names = list(program.graph_signature.user_inputs)
        if len(names) != 1:
            raise ModelError(f"{path.name} takes {len(names)} inputs ({', '.join(names)}); "
                             "only programs with one image input can be used")
        node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == names[0])
        val = node.meta.get("val")
        shape = list(getattr(val, "shape", []) or [])
        if len(shape) < 2:
            raise ModelError(f"{path.name}: its input has shape {shape}; expected "
                             "[batch, *image shape]")
        fixed = [int(d) if isinstance(d, int) else None for d in shape]
        module = program.module()
        for p in module.parameters():
            p.requires_grad_(False)
        # an exported program keeps the mode it was exported in (module.eval() is refused)
        return module, fixed[1:], fixed[0]
