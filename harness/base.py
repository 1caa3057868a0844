"""The base every plugin class shares: parameters, a repr built from them, a cache key."""

from __future__ import annotations

import hashlib
import inspect
import json
import keyword
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from .errors import HarnessError, PluginCrash

if TYPE_CHECKING:
    from .context import Context


class Plugin:
    """Base of model, dataset, attack and metric plugins.

    A plugin class takes its parameters as keyword-only constructor arguments (the suite's
    keys), checks them there (raising :class:`harness.ParamError` for a bad value) and keeps
    each one under an attribute of the same name. Constructors must be cheap: loading data,
    training or reading weights belongs in ``load``/``run``, so that ``harness validate`` can
    build every plugin of a suite without running anything.

    A parameter whose suite key is a Python keyword (``class``) is written with a trailing
    underscore in the constructor (``class_``) and kept under that attribute.
    """

    kind: ClassVar[str] = "plugin"
    #: the name the plugin was registered under; set by the registry
    name: ClassVar[str] = ""
    #: parameters whose values name code the plugin imports and calls when it runs
    #: (``package.module:callable``, such as the ``torch`` model plugin's ``factory``): listed
    #: by ``harness validate`` and checked against ``--no-code`` / ``HARNESS_ALLOW_FACTORIES``
    #: before anything is imported
    code_params: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def parameters(cls) -> dict[str, inspect.Parameter]:
        """The constructor's keyword parameters, by their suite key (``p.name`` is the
        constructor's name: ``class_`` for the key ``class``)."""
        sig = inspect.signature(cls.__init__)
        return {
            _suite_key(n): p for n, p in sig.parameters.items()
            if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }

    def params(self) -> dict[str, Any]:
        """The current value of every constructor parameter, by constructor name."""
        out = {}
        for p in self.parameters().values():
            default = None if p.default is inspect.Parameter.empty else p.default
            out[p.name] = getattr(self, p.name, default)
        return out

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
        """A stable hash of the plugin's name, parameters and anything else given."""
        blob = json.dumps([type(self).__module__, type(self).__qualname__, self.name,
                           self.params(), list(extra)], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{self.name or type(self).__name__}({args})"


def _suite_key(name: str) -> str:
    """The suite key of a constructor parameter: ``class_`` -> ``class``."""
    if name.endswith("_") and keyword.iskeyword(name[:-1]):
        return name[:-1]
    return name


def plugin_label(plugin: Any) -> str:
    """``attack plugin 'lbfgs' (package robustness-harness 0.1.0)``: the plugin's kind and
    registered name, and the distribution it came from as the registry recorded it (else its
    module)."""
    cls = plugin if isinstance(plugin, type) else type(plugin)
    entry = cls.__dict__.get("_harness_entry")
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
