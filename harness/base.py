"""The base every plugin class shares: parameters, a repr built from them, a cache key."""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any, ClassVar


class Plugin:
    """Base of model, dataset, attack and metric plugins.

    A plugin class takes its parameters as keyword-only constructor arguments (the suite's
    keys), checks them there (raising :class:`harness.ParamError` for a bad value) and keeps
    each one under an attribute of the same name. Constructors must be cheap: loading data,
    training or reading weights belongs in ``load``/``run``, so that ``harness validate`` can
    build every plugin of a suite without running anything.
    """

    kind: ClassVar[str] = "plugin"
    #: the name the plugin was registered under; set by the registry
    name: ClassVar[str] = ""

    @classmethod
    def parameters(cls) -> dict[str, inspect.Parameter]:
        """The constructor's keyword parameters, by name."""
        sig = inspect.signature(cls.__init__)
        return {
            n: p for n, p in sig.parameters.items()
            if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }

    def params(self) -> dict[str, Any]:
        """The current value of every constructor parameter."""
        out = {}
        for n, p in self.parameters().items():
            default = None if p.default is inspect.Parameter.empty else p.default
            out[n] = getattr(self, n, default)
        return out

    def config_key(self, *extra: Any) -> str:
        """A stable hash of the plugin's name, parameters and anything else given."""
        blob = json.dumps([type(self).__module__, type(self).__qualname__, self.name,
                           self.params(), list(extra)], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{self.name or type(self).__name__}({args})"
