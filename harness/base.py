"""The base every plugin class shares: parameters, a repr built from them, a cache key."""

from __future__ import annotations

import hashlib
import inspect
import json
import keyword
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from .errors import HarnessError, PluginCrash
from .params import Params as _Params

if TYPE_CHECKING:
    from .context import Context


class Plugin:
    """Base of every plugin (models, datasets, attacks, metrics, analyses, reporters).

    Parameters are declared once, as a nested ``class Params(harness.Params)`` (a pydantic
    model; see :mod:`harness.params`): ``Plugin.__init__`` checks the keyword arguments it is
    given (from a suite or from Python) against it, keeps the result (:meth:`params`) and sets
    each parameter as an attribute (``self.eps``). A plugin written with keyword-only
    constructor arguments instead (the style before ``Params``) keeps working: its
    parameters are checked through a model derived from the constructor's signature.

    Constructors must be cheap: loading data, training or reading weights belongs in
    ``load``/``run``, so that ``harness validate`` can build every plugin of a suite without
    running anything. A parameter whose suite key is a Python keyword (``class``) is a field
    (or constructor argument) with a trailing underscore (``class_``).
    """

    kind: ClassVar[str] = "plugin"
    #: the name the plugin was registered under: set on each instance the registry builds
    #: (unless a parameter is called ``name``); "" for a plugin built directly in Python
    name: ClassVar[str] = ""
    #: what keys the plugin's random streams (``ctx.generator(self.seed_key, ...)``) and cache
    #: keys: stable whatever name the class is registered under (default: the class's
    #: module and name)
    seed_name: ClassVar[str | None] = None
    #: parameters whose values name code the plugin imports and calls when it runs
    #: (``package.module:callable``, such as the ``torch`` model plugin's ``factory``): listed
    #: by ``harness validate`` and checked against ``--no-code`` / ``HARNESS_ALLOW_FACTORIES``
    #: before anything is imported
    code_params: ClassVar[tuple[str, ...]] = ()

    class Params(_Params):
        """No parameters."""

    def __init__(self, **values: Any):
        from .params import BUILDING, validate_params

        model, keys = type(self).params_model()
        label = BUILDING.get() or f"{self.kind} {type(self).__name__}"
        checked = validate_params(model, values, label, keys)
        self._params = checked
        for field in type(checked).model_fields:
            setattr(self, field, getattr(checked, field))

    # ------------------------------------------------------------------ parameters

    @classmethod
    def declares_params(cls) -> bool:
        """Whether the class declares ``Params`` (else its constructor's signature is used)."""
        return cls.__init__ is Plugin.__init__ or bool(cls.Params.model_fields)

    @classmethod
    def params_model(cls) -> tuple[type[_Params], dict[str, str]]:
        """The parameters model and the map of field names to suite keys where they differ
        (``class_`` -> ``class``)."""
        cached = cls.__dict__.get("_params_model")
        if cached is not None:
            return cached
        if cls.declares_params():
            model = cls.Params
            keys = {name: info.alias for name, info in model.model_fields.items()
                    if info.alias and info.alias != name}
            for name in model.model_fields:
                if name.endswith("_") and keyword.iskeyword(name[:-1]):
                    keys.setdefault(name, name[:-1])
            found = (model, keys)
        else:
            from .params import signature_model

            found = signature_model(cls)
        cls._params_model = found
        return found

    @classmethod
    def parameters(cls) -> dict[str, inspect.Parameter]:
        """The parameters, by suite key, as ``inspect.Parameter`` (``p.name`` is the field's or
        the constructor's name: ``class_`` for the key ``class``)."""
        model, keys = cls.params_model()
        out = {}
        for name, info in model.model_fields.items():
            default = inspect.Parameter.empty if info.is_required() else info.default
            out[keys.get(name, name)] = inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default,
                annotation=info.annotation)
        return out

    def params(self) -> dict[str, Any]:
        """Every parameter's value, by field (constructor) name: the checked values."""
        checked = self.__dict__.get("_params")
        if checked is not None:
            return {f: getattr(checked, f) for f in type(checked).model_fields}
        # the constructor style: the attribute of the same name where the plugin keeps one
        # (as it may have normalized the value), else the value it was given (a parameter
        # kept under another name still counts), else the default
        given = self.__dict__.get("_given") or {}
        out = {}
        for p in self.parameters().values():
            default = None if p.default is inspect.Parameter.empty else p.default
            out[p.name] = getattr(self, p.name, given.get(p.name, default))
        return out

    @property
    def seed_key(self) -> str:
        """The key of this plugin's random streams and cache keys: :attr:`seed_name`, else
        the name the class declares, else the name it was registered under, else the class's
        module and name. Declare ``seed_name`` to keep numbers the same whatever name the
        class is registered under."""
        cls = type(self)
        if cls.seed_name:
            return cls.seed_name
        if cls.__dict__.get("name") or getattr(cls, "name", ""):
            return cls.name
        entry = self.__dict__.get("_harness_entry")
        if entry is not None:
            return entry.name
        return f"{cls.__module__}.{cls.__qualname__}"

    def _swept(self, sweep: str | None, label: Any = str) -> list[tuple[str, "Plugin"]]:
        """``[(label, plugin)]``: one plugin per value of the list parameter ``sweep`` (each
        under this one's registry entry), labelled ``sweep=label(value)``; else
        ``[("", self)]``."""
        values = getattr(self, sweep) if sweep is not None else None
        if not isinstance(values, (list, tuple)):
            return [("", self)]
        out = []
        for v in values:
            params = self.params()
            params[sweep] = v
            out.append((f"{sweep}={label(v)}", self._rebuilt(params)))
        return out

    def _rebuilt(self, params: dict[str, Any]) -> "Plugin":
        """A plugin of the same class with ``params``, under the same registry entry (so its
        labels and :attr:`seed_key`, and so its random streams, are this one's)."""
        clone = type(self)(**params)
        entry = self.__dict__.get("_harness_entry")
        if entry is not None:
            clone._harness_entry = entry
        if "name" in self.__dict__ and "name" not in type(self).params_model()[0].model_fields:
            clone.name = self.name
        return clone

    def check_data(self, num_classes: int) -> None:
        """Check parameters against the data the plugin will see, when its dataset plugin
        knows how many classes it has without reading it (see
        :meth:`harness.DatasetPlugin.num_classes_hint`): ``harness validate`` then reports a
        ``target: 12`` for 10 classes on its line. Raise :class:`harness.ParamError` naming
        the parameter. The default checks nothing."""

    def preflight(self, ctx: "Context") -> None:
        """Cheap checks of the files this plugin will read (that they exist, that they match
        their ``sha256`` pins), run for every plugin of a suite before its first case, so
        that a wrong file stops the run before anything runs. Raise a
        :class:`harness.HarnessError` (a :class:`harness.ParamError` naming the parameter
        where one is to blame). The default checks nothing."""

    def code(self) -> list[tuple[str, str]]:
        """``[(parameter, "package.module:callable")]``: the code this plugin will import and
        call, as its parameters name it (see :attr:`code_params`). Override it when a
        parameter holds code in another form."""
        out = []
        for param in self.code_params:
            value = getattr(self, param, None)
            for target in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(target, str) and target:
                    out.append((param, target))
        return out

    def config_key(self, *extra: Any) -> str:
        """A stable hash of the plugin's class, :attr:`seed_key`, parameters and anything
        else given."""
        blob = json.dumps([type(self).__module__, type(self).__qualname__, self.seed_key,
                           self.params(), list(extra)], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        entry = self.__dict__.get("_harness_entry")
        shown = entry.name if entry is not None else (self.__dict__.get("name")
                                                     or type(self).__name__)
        return f"{shown}({args})"


def _suite_key(name: str) -> str:
    """The suite key of a constructor parameter: ``class_`` -> ``class``."""
    if name.endswith("_") and keyword.iskeyword(name[:-1]):
        return name[:-1]
    return name


def registered_name(plugin: Any) -> str:
    """The name ``plugin`` (an instance) was registered under, else its own ``name``, else
    its class's name."""
    entry = plugin.__dict__.get("_harness_entry") if not isinstance(plugin, type) else None
    if entry is not None:
        return entry.name
    return getattr(plugin, "name", "") or type(plugin).__name__


def plugin_label(plugin: Any) -> str:
    """``attack plugin 'lbfgs' (package robustness-harness 0.1.0)``: the plugin's kind and
    registered name, and the distribution it came from as the registry recorded it (else its
    module)."""
    cls = plugin if isinstance(plugin, type) else type(plugin)
    entry = (None if isinstance(plugin, type) else plugin.__dict__.get("_harness_entry")) \
        or cls.__dict__.get("_harness_entry")
    kind = entry.kind if entry is not None else getattr(cls, "kind", "plugin")
    name = entry.name if entry is not None else (getattr(cls, "name", "") or cls.__name__)
    if entry is not None and entry.distribution not in ("", "-"):
        where = f"package {entry.distribution}"
    else:
        where = f"module {cls.__module__}"
    return f"{kind} plugin {name!r} ({where})"


@contextmanager
def blame(plugin: Any, doing: str = "") -> Iterator[None]:
    """Inside, any exception but a :class:`HarnessError` or an interrupt (``SystemExit``
    included) becomes a :class:`PluginCrash` naming ``plugin`` (a plugin, or a label) and
    what it was ``doing``."""
    try:
        yield
    except (HarnessError, KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:
        label = plugin if isinstance(plugin, str) else plugin_label(plugin)
        what = f" while {doing}" if doing else ""
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if isinstance(exc, SystemExit):
            detail = f"exit status {exc.code!r}" if exc.code is not None else "no status"
        raise PluginCrash(f"{label} raised {type(exc).__name__}{what}"
                          + (f": {detail}" if detail else ""), exc,
                          hint="a bug in that plugin or in the code it calls") from exc
