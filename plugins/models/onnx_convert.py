"""ONNX graph -> torch module, so that ONNX models get exact gradients through autograd.

The conversion itself is onnx2torch's (one torch module per ONNX node, wired in a
``torch.fx.GraphModule``). Two gaps of onnx2torch 1.5 are closed here:

**Graph rewrites** (:func:`prepare`, with the ``onnx`` package, before conversion):

- *Identity nodes are bypassed*: their consumers read the Identity's input directly.
  torch's legacy exporter deduplicates equal initializers and routes the copies through
  Identity nodes (an untrained ResNet's zero biases, for instance); onnx2torch's Conv,
  BatchNormalization and similar converters look their weights up among the graph's
  initializers and fail on a name that an Identity node produces.
- *Constant nodes become initializers*, for the same reason (weights stored as Constant
  nodes by other tools) and so that constant inputs such as Reshape's shape are visible.
- *Reshape with ``allowzero=1``* (what the dynamo exporter writes) is rewritten to
  ``allowzero=0`` where its shape is a constant without zeros: the two mean the same there,
  and onnx2torch's Reshape-14 converter refuses ``allowzero=1``.
- The graph is *pruned to the one output* the model uses.
- *Shapes are inferred here*, on a copy of the graph without its large weights (they become
  typed graph inputs for the inference), and onnx2torch is told to take them as given: its
  own inference serializes the whole model (about 6 of the 9 seconds alexnet took to
  convert).

**Converters for newer operator versions** (:func:`register_converters`, added to
onnx2torch's registry; never replacing one it already has), so that opset 18+ graphs from
the dynamo exporter convert:

- Reshape 19+ (with ``allowzero`` honoured);
- the Reduce operators of opset 18 (and ReduceMax/ReduceMin 20), whose ``axes`` became an
  input: ReduceMean, ReduceMax, ReduceMin, ReduceProd, ReduceL1, ReduceL2, ReduceLogSum,
  ReduceLogSumExp, ReduceSumSquare;
- revisions that only widened the accepted types (Identity 19, Conv 22, ...), or added an
  attribute checked to be at its neutral value (AveragePool 19 ``dilations``, Pad 18
  ``axes``), handled by onnx2torch's converter of the previous version (:data:`ALIASES`).

A conversion is only trusted after its logits have been compared with onnxruntime's (the
``onnx`` model plugin does that); this module only converts.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

__all__ = ["ConversionError", "convert", "prepare", "register_converters", "ALIASES"]


class ConversionError(Exception):
    """The graph cannot be converted (an unsupported operator or attribute); one line."""


# ------------------------------------------------------------------------ graph rewrites

def _subgraphs(graph: Any) -> Iterable[Any]:
    """The graph and, recursively, every subgraph held in node attributes (If, Loop...)."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _subgraphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _subgraphs(g)


def _bypass_identities(graph: Any) -> int:
    """Remove Identity nodes whose output is not a graph output, pointing their consumers
    (in this graph and in subgraphs) at the Identity's input. Returns how many went."""
    outputs = {o.name for o in graph.output}
    source: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") \
                and node.output[0] not in outputs:
            src = node.input[0]
            source[node.output[0]] = source.get(src, src)
        else:
            keep.append(node)
    if not source:
        return 0
    for g in _subgraphs(graph):
        for node in g.node:
            for i, name in enumerate(node.input):
                if name in source:
                    node.input[i] = source[name]
    del graph.node[:]
    graph.node.extend(keep)
    infos = [vi for vi in graph.value_info if vi.name not in source]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return len(source)


def _constant_tensor(node: Any) -> Any | None:
    """The TensorProto a Constant node produces, or None for a sparse constant."""
    from onnx import helper, numpy_helper

    attr = node.attribute[0] if len(node.attribute) == 1 else None
    if attr is None:
        return None
    if attr.name == "value":
        tensor = copy.deepcopy(attr.t)
    else:
        value = helper.get_attribute_value(attr)
        arrays = {
            "value_float": lambda v: np.array(v, dtype=np.float32),
            "value_floats": lambda v: np.array(list(v), dtype=np.float32),
            "value_int": lambda v: np.array(v, dtype=np.int64),
            "value_ints": lambda v: np.array(list(v), dtype=np.int64),
        }
        if attr.name not in arrays:
            return None
        tensor = numpy_helper.from_array(arrays[attr.name](value))
    tensor.name = node.output[0]
    return tensor


def _constants_to_initializers(graph: Any, ir_version: int) -> int:
    """Turn Constant nodes of the main graph into initializers (IR 4+, where initializers
    need not be graph inputs). Returns how many."""
    if ir_version < 4:
        return 0
    outputs = {o.name for o in graph.output}
    keep, made = [], []
    for node in graph.node:
        tensor = None
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") \
                and node.output[0] not in outputs:
            tensor = _constant_tensor(node)
        if tensor is None:
            keep.append(node)
        else:
            made.append(tensor)
    if made:
        del graph.node[:]
        graph.node.extend(keep)
        graph.initializer.extend(made)
    return len(made)


def _relax_reshapes(graph: Any) -> int:
    """``allowzero=1`` -> 0 on Reshape nodes whose shape is a constant without zeros."""
    from onnx import numpy_helper

    consts = {t.name: t for t in graph.initializer}
    changed = 0
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in consts:
            continue
        for attr in node.attribute:
            if attr.name == "allowzero" and attr.i == 1:
                if not (numpy_helper.to_array(consts[node.input[1]]) == 0).any():
                    attr.i = 0
                    changed += 1
    return changed


def _prune(graph: Any, output: str) -> None:
    """Keep only ``output`` among the graph outputs, and the nodes it depends on (all nodes
    when some hold subgraphs, which may read outer names implicitly)."""
    chosen = [o for o in graph.output if o.name == output]
    if not chosen:
        raise ConversionError(f"the graph has no output {output!r}")
    del graph.output[:]
    graph.output.extend(chosen)
    if len(list(_subgraphs(graph))) > 1:
        return
    needed = {output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


#: initializers larger than this (bytes) are left out of the copy shape inference sees
LIGHT_BYTES = 4096


def _infer_shapes(model: Any) -> None:
    """Fill ``model.graph.value_info`` by ONNX shape inference, run on a copy of the graph
    in which the large initializers are graph inputs of the same type and shape: the
    weights are not serialized for it (several seconds for a model of a few hundred MB)."""
    from onnx import TensorProto, helper, shape_inference

    graph = model.graph
    big = [t for t in graph.initializer
           if t.ByteSize() > LIGHT_BYTES or t.data_location == TensorProto.EXTERNAL]
    big_names = {t.name for t in big}
    small = [t for t in graph.initializer if t.name not in big_names]
    inputs = list(graph.input) + [helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                                  for t in big]
    light = helper.make_model(
        helper.make_graph(list(graph.node), graph.name or "graph", inputs, list(graph.output),
                          initializer=small, value_info=list(graph.value_info)),
        opset_imports=list(model.opset_import), ir_version=model.ir_version)
    light.functions.extend(model.functions)
    inferred = shape_inference.infer_shapes(light)
    known = {v.name for v in graph.input} | {v.name for v in graph.output} | big_names
    infos = [v for v in inferred.graph.value_info if v.name not in known]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def prepare(model: Any, output: str | None = None) -> tuple[Any, dict[str, int]]:
    """A rewritten copy of the ModelProto ``model`` ready for onnx2torch (see the module's
    docstring), with its shapes inferred, and counts of what was rewritten."""
    model = copy.deepcopy(model)
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    del graph.input[:]
    graph.input.extend(inputs)
    if output is not None:
        _prune(graph, output)
    stats = {
        "identity_bypassed": _bypass_identities(graph),
        "constants_to_initializers": _constants_to_initializers(graph, model.ir_version),
    }
    stats["reshape_allowzero_relaxed"] = _relax_reshapes(graph)
    _infer_shapes(model)
    return model, stats


@contextmanager
def _shapes_inferred() -> Iterator[None]:
    """Within: onnx2torch takes the graph's shapes as given (:func:`prepare` inferred them
    without serializing the weights) instead of running shape inference on the whole model."""
    import onnx2torch.converter as converter

    original = getattr(converter, "safe_shape_inference", None)
    if original is None:
        yield
        return
    converter.safe_shape_inference = lambda model, **kwargs: model
    try:
        yield
    finally:
        converter.safe_shape_inference = original


# ------------------------------------------------------------------------ converters

def _reduce_mean(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    return x.mean(dim=dims, keepdim=keep)


def _reduce_prod(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    for d in sorted((d % x.dim() for d in dims), reverse=True):
        x = x.prod(dim=d, keepdim=keep)
    return x


#: ONNX Reduce* -> f(x, dims, keepdim)
REDUCTIONS: dict[str, Callable[[torch.Tensor, list[int], bool], torch.Tensor]] = {
    "ReduceMean": _reduce_mean,
    "ReduceMax": lambda x, d, k: x.amax(dim=d, keepdim=k),
    "ReduceMin": lambda x, d, k: x.amin(dim=d, keepdim=k),
    "ReduceProd": _reduce_prod,
    "ReduceL1": lambda x, d, k: x.abs().sum(dim=d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.linalg.vector_norm(x, 2, dim=d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: x.sum(dim=d, keepdim=k).log(),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
    "ReduceSumSquare": lambda x, d, k: x.square().sum(dim=d, keepdim=k),
}


class Reduce(nn.Module):
    """An ONNX Reduce* of opset 18+: ``axes`` fixed at conversion when constant, else read
    from the second input; no axes reduces everything (or nothing, with
    ``noop_with_empty_axes``)."""

    def __init__(self, op: str, axes: list[int] | None, keepdims: bool, noop: bool):
        super().__init__()
        self.op = op
        self.axes = axes
        self.keepdims = keepdims
        self.noop = noop

    def forward(self, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        dims = self.axes
        if dims is None and axes is not None:
            dims = [int(a) for a in axes.tolist()]
        if not dims:
            if self.noop:
                return x
            dims = list(range(x.dim()))
        return REDUCTIONS[self.op](x, dims, self.keepdims)

    def extra_repr(self) -> str:
        return f"{self.op}, axes={self.axes}, keepdims={self.keepdims}"


class Reshape(nn.Module):
    """ONNX Reshape: ``0`` in the shape copies the input's size there unless ``allowzero``
    (then it is a literal 0); ``-1`` is inferred."""

    def __init__(self, allowzero: bool, shape: list[int] | None = None):
        super().__init__()
        self.allowzero = allowzero
        self.shape = shape

    def forward(self, x: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
        dims = self.shape if self.shape is not None else [int(s) for s in shape.tolist()]
        if not self.allowzero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return x.reshape(dims)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, allowzero={self.allowzero}"


def _const_ints(name: str, graph: Any) -> list[int] | None:
    """The integer values of a constant input (initializer or Constant node), else None."""
    from onnx2torch.utils.common import get_const_value

    if not name:
        return None
    try:
        value = get_const_value(name, graph)
    except KeyError:
        return None
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def _convert_reduce(node: Any, graph: Any) -> Any:
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    attrs = node.attributes
    inputs = node.input_values
    axes_name = inputs[1] if len(inputs) > 1 else ""
    axes = _const_ints(axes_name, graph)
    module = Reduce(node.operation_type, axes, bool(attrs.get("keepdims", 1)),
                    bool(attrs.get("noop_with_empty_axes", 0)))
    used = (inputs[0],) if axes is not None or not axes_name else (inputs[0], axes_name)
    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=OnnxMapping(inputs=used,
                                                             outputs=node.output_values))


def _convert_reshape(node: Any, graph: Any) -> Any:
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    shape = _const_ints(node.input_values[1], graph)
    module = Reshape(bool(node.attributes.get("allowzero", 0)), shape)
    used = node.input_values[:1] if shape is not None else node.input_values[:2]
    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=OnnxMapping(inputs=tuple(used),
                                                             outputs=node.output_values))


def _no_dilation(node: Any) -> None:
    if any(d != 1 for d in node.attributes.get("dilations", [])):
        raise NotImplementedError(f"{node.operation_type} with dilations "
                                  f"{node.attributes['dilations']}")


def _pad_without_axes(node: Any) -> None:
    if len(node.input_values) > 3 and node.input_values[3]:
        raise NotImplementedError("Pad with an axes input")
    if node.attributes.get("mode", "constant") == "wrap":
        raise NotImplementedError("Pad with mode 'wrap'")


def _split_without_num_outputs(node: Any) -> None:
    if "num_outputs" in node.attributes and not (len(node.input_values) > 1
                                                 and node.input_values[1]):
        n = node.attributes["num_outputs"]
        if n != len(node.output_values):
            raise NotImplementedError("Split with num_outputs unlike its outputs")


#: (operator, version onnx2torch converts, newer versions, check of the node or None):
#: the newer versions only widened the accepted element types (bfloat16, float8, int4...)
#: or added an attribute / optional input the check requires to be absent or neutral
ALIASES: list[tuple[str, int, tuple[int, ...], Callable[[Any], None] | None]] = [
    ("Identity", 16, (19, 21, 23, 24, 25), None),
    ("Cast", 13, (19, 21, 23, 24, 25), None),           # saturate/round_mode: float8 only
    ("Constant", 13, (19, 21, 23, 24, 25), None),
    ("ConstantOfShape", 9, (20, 21, 23, 24, 25), None),
    ("Flatten", 13, (21, 23, 24, 25), None),
    ("Transpose", 13, (21, 23, 24, 25), None),
    ("Unsqueeze", 13, (21, 23, 24, 25), None),
    ("Squeeze", 21, (23, 24, 25), None),
    ("Shape", 15, (19, 21, 23, 24, 25), None),
    ("Equal", 13, (19,), None),
    ("IsInf", 10, (20,), None),
    ("IsNaN", 13, (20,), None),
    ("GreaterOrEqual", 12, (16,), None),
    ("LessOrEqual", 12, (16,), None),
    ("AveragePool", 11, (19, 22), _no_dilation),
    ("Pad", 13, (18, 19, 21, 23, 24, 25), _pad_without_axes),
    ("Split", 13, (18,), _split_without_num_outputs),
    ("Conv", 11, (22,), None),
    ("ConvTranspose", 11, (22,), None),
    ("MaxPool", 12, (22,), None),
    ("GlobalAveragePool", 1, (22,), None),
    ("Dropout", 13, (22,), None),
    ("InstanceNormalization", 6, (22,), None),
    ("Elu", 6, (22,), None),
    ("Selu", 6, (22,), None),
    ("HardSigmoid", 6, (22,), None),
    ("HardSwish", 14, (22,), None),
    ("Softplus", 1, (22,), None),
    ("Softsign", 1, (22,), None),
    ("Round", 11, (22,), None),
    ("EyeLike", 9, (22,), None),
    ("RoiAlign", 16, (22,), None),
    ("Acos", 7, (22,), None), ("Asin", 7, (22,), None), ("Atan", 7, (22,), None),
    ("Cos", 7, (22,), None), ("Sin", 7, (22,), None), ("Tan", 7, (22,), None),
]

_registered = False


def _alias(op: str, base: int, check: Callable[[Any], None] | None) -> Callable:
    from onnx2torch.node_converters.registry import get_converter

    convert_base = get_converter(op, base)

    def converter(node: Any, graph: Any) -> Any:
        if check is not None:
            check(node)
        return convert_base(node, graph)

    converter.__name__ = f"convert_{op}_as_{base}"
    return converter


def register_converters() -> None:
    """Add this module's converters to onnx2torch's registry (once; versions onnx2torch
    converts itself are left to it)."""
    global _registered
    if _registered:
        return
    from onnx2torch.node_converters.registry import add_converter

    def add(op: str, version: int, fn: Callable) -> None:
        try:
            add_converter(operation_type=op, version=version)(fn)
        except ValueError:  # onnx2torch has its own for this version
            pass

    for version in (19, 21, 23, 24, 25):
        add("Reshape", version, _convert_reshape)
    for op in REDUCTIONS:
        add(op, 18, _convert_reduce)
    for op in ("ReduceMax", "ReduceMin"):
        add(op, 20, _convert_reduce)
    for op, base, versions, check in ALIASES:
        try:
            fn = _alias(op, base, check)
        except NotImplementedError:  # this onnx2torch lacks the base converter too
            continue
        for version in versions:
            add(op, version, fn)
    _registered = True


# ------------------------------------------------------------------------ conversion

def convert(model: Any, output: str | None = None) -> tuple[nn.Module, dict[str, int]]:
    """Convert the ModelProto ``model`` (one input; ``output`` the output to keep, default
    the first) to a torch module. Returns the module (on the CPU, in eval mode) and the
    counts of graph rewrites. Raises :class:`ConversionError` with one line on failure."""
    try:
        import onnx2torch
    except ImportError as exc:
        raise ConversionError(f"onnx2torch is not installed ({exc})") from None
    register_converters()
    prepared, stats = prepare(model, output or model.graph.output[0].name)
    try:
        with _shapes_inferred():
            module = onnx2torch.convert(prepared)
    except NotImplementedError as exc:
        raise ConversionError(f"unsupported by the converter: {_first_line(exc)}") from None
    except Exception as exc:  # onnx2torch signals many problems with KeyError, ValueError...
        raise ConversionError(f"conversion failed: {type(exc).__name__}: "
                              f"{_first_line(exc)}") from None
    return module.eval(), stats


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().strip("'\"")
    return text.splitlines()[0] if text else type(exc).__name__
