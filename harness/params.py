"""Plugin parameters, declared once: a nested ``Params`` class (a pydantic model) per plugin.

::

    from harness import Attack, Field, Params

    class FGSM(Attack):
        class Params(Params):
            eps: float | list[float] = Field(0.1, ge=0, le=1, description="step size")
            batch_size: int = Field(1024, gt=0, description="images attacked together")

        sweep = "eps"

        def run(self, model, x, y, ctx):
            ... self.eps ...

The same model checks a suite's parameters (with file:line:field in errors) and a plugin
built in Python (``FGSM(eps=0.2)``); ``repr``, cache keys (``config_key``), sweeps and
``harness plugins NAME`` come from it. Types are strict: ``eps: [0.01, true]`` is an error,
not 1.0 (integers are accepted for floats). A field typed :data:`DatasetSpec` or
:data:`ModelSpec` holds another plugin's spec (``train: {use: mnist, split: train}``), which
``harness validate`` checks like any plugin of the suite.

Plugins written before ``Params`` (parameters as keyword-only constructor arguments) keep
working: their parameters are checked through a model derived from the constructor's
signature, in the same path.
"""

from __future__ import annotations

import contextvars
import difflib
import inspect
import typing
from dataclasses import dataclass
from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from .errors import ParamError

__all__ = ["Params", "Field", "DatasetSpec", "ModelSpec", "PluginSpec", "validate_params"]


class Params(BaseModel):
    """Base of a plugin's declared parameters (subclass it as a nested class ``Params``)."""

    model_config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True,
                              protected_namespaces=())


@dataclass(frozen=True)
class PluginSpec:
    """Marks a parameter whose value is a plugin spec of ``kind`` (checked by the engine)."""

    kind: str


def _coerce_spec(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"use": value}
    if isinstance(value, dict):
        if "use" not in value:
            raise ValueError("needs a 'use' key naming the plugin")
        if not isinstance(value["use"], str):
            raise ValueError("'use' must name a plugin")
        return dict(value)
    raise ValueError("must be a plugin name or a mapping with 'use'")


#: a parameter holding a dataset plugin's spec (``{use: mnist, split: train}``)
DatasetSpec = Annotated[dict[str, Any], BeforeValidator(_coerce_spec), PluginSpec("dataset")]
#: a parameter holding a model plugin's spec
ModelSpec = Annotated[dict[str, Any], BeforeValidator(_coerce_spec), PluginSpec("model")]


def spec_fields(model: type[BaseModel]) -> dict[str, str]:
    """The fields of ``model`` that hold plugin specs: field name -> plugin kind."""
    out = {}
    for name, info in model.model_fields.items():
        for meta in info.metadata:
            if isinstance(meta, PluginSpec):
                out[name] = meta.kind
        ann = info.annotation
        for arg in typing.get_args(ann):   # Optional[DatasetSpec] and the like
            for meta in getattr(arg, "__metadata__", ()):
                if isinstance(meta, PluginSpec):
                    out[name] = meta.kind
    return out


#: the label of the plugin being built ("attack 'fgsm'"), set by the registry
BUILDING: contextvars.ContextVar[str | None] = contextvars.ContextVar("harness_building",
                                                                     default=None)


def validate_params(model: type[BaseModel], values: dict[str, Any], label: str,
                    keys: dict[str, str] | None = None) -> BaseModel:
    """``values`` checked against ``model``: one :class:`ParamError` naming the parameter
    (an unknown one with a "did you mean"). ``keys`` maps field names to suite keys where they
    differ (``class_`` -> ``class``)."""
    keys = keys or {}
    to_field = {keys.get(f, f): f for f in model.model_fields}
    for key in values:
        if key not in to_field and key not in model.model_fields:   # class, or class_
            close = difflib.get_close_matches(str(key), list(to_field), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            hint += f"{label} takes: {', '.join(to_field) or 'no parameters'}"
            raise ParamError(str(key), f"unknown parameter {key!r} for {label}", hint=hint)
    # pydantic takes a field by its alias where it has one (``Field(alias="lambda")``)
    by_alias = {f: info.alias or f for f, info in model.model_fields.items()}
    data = {by_alias.get(f, f): v for f, v in
            ((to_field.get(k, k), v) for k, v in values.items())}
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        key = keys.get(field, field)
        if err["type"] == "missing":
            raise ParamError(key, f"{label} needs parameter {key!r}") from None
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        where = "".join(f"[{p}]" for p in err["loc"][1:] if isinstance(p, int))
        shown = values.get(key, err.get("input"))
        raise ParamError(key, f"{key}{where}={shown!r} is invalid for {label}: "
                              f"{msg[0].lower()}{msg[1:]}") from None


# ---------------------------------------------------------------------------- from a signature

def _no_bools(annotation: Any, value: Any) -> None:
    """A bool where the annotation takes no bool (pydantic's lax mode would turn ``true``
    into 1 or 1.0): refused, as a declared ``Params`` would."""
    def takes_bool(ann: Any) -> bool:
        if ann is bool or ann is Any or ann is object:
            return True
        return any(takes_bool(a) for a in typing.get_args(ann))

    items = value if isinstance(value, list) else [value]
    if any(isinstance(v, bool) for v in items) and not takes_bool(annotation):
        raise ValueError("a true/false value where a number or a name is expected")


def signature_model(cls: type) -> tuple[type[BaseModel], dict[str, str]]:
    """A parameters model derived from ``cls.__init__``'s keyword parameters (for plugins
    written before ``Params``), and the map from constructor names to suite keys."""
    import keyword

    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:
        hints = {}
    fields: dict[str, Any] = {}
    keys: dict[str, str] = {}
    sig = inspect.signature(cls.__init__)
    for name, p in sig.parameters.items():
        if name == "self" or p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            continue
        ann = hints.get(name, Any)
        try:
            pydantic.TypeAdapter(ann)
        except Exception:   # a type pydantic cannot check: taken as it is
            ann = Any
        checked = Annotated[ann, BeforeValidator(_bool_guard(ann))]
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[name] = (checked, default)
        if name.endswith("_") and keyword.iskeyword(name[:-1]):
            keys[name] = name[:-1]
    model = pydantic.create_model(f"{cls.__name__}Params", __base__=_SignatureParams,
                                  **fields)
    return model, keys


def _bool_guard(annotation: Any):
    def check(value: Any) -> Any:
        _no_bools(annotation, value)
        return value
    return check


class _SignatureParams(BaseModel):
    # lax, as constructor annotations were always checked
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True,
                              protected_namespaces=())
