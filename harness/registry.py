"""Name -> plugin class, per kind; building a plugin from a suite's parameters."""

from __future__ import annotations

import difflib
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any, Iterator

import pluggy
import pydantic

from .analysis import Analysis
from .attack import Attack
from .base import Plugin
from .data import DatasetPlugin
from .errors import ParamError, PluginCrash, PluginError
from .metric import Metric
from .model import ModelPlugin
from .plugins import _exc_line, block_hint, package_label

#: kind -> (hook name, base class)
KINDS: dict[str, tuple[str, type]] = {
    "model": ("register_models", ModelPlugin),
    "dataset": ("register_datasets", DatasetPlugin),
    "attack": ("register_attacks", Attack),
    "metric": ("register_metrics", Metric),
    "analysis": ("register_analyses", Analysis),
}


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    cls: type[Plugin]
    plugin: str         # the entry point (or registered object) that provided it
    distribution: str   # "name version", or "-" when not installed from a distribution

    @property
    def summary(self) -> str:
        """The first sentence of the class docstring, on one line."""
        doc = (inspect.getdoc(self.cls) or "").strip()
        para = " ".join(doc.split("\n\n")[0].split()).replace("``", "")
        end = re.search(r"(?<!\bal)\.\s+(?=[A-Z])", para)
        return para[:end.start() + 1] if end else para


class Registry:
    """Every plugin class the plugin manager's hooks register, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        dists = {id(plugin): f"{dist.project_name} {dist.version}"
                 for plugin, dist in pm.list_plugin_distinfo()}
        for kind, (hook_name, base) in KINDS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                source = pm.get_name(impl.plugin) or repr(impl.plugin)
                dist = dists.get(id(impl.plugin), "-")
                who = package_label(pm, impl.plugin)
                try:
                    impl.function(register=self._registrar(kind, base, source, dist, who))
                except (PluginError, KeyboardInterrupt, GeneratorExit):
                    raise
                except BaseException as exc:  # SystemExit too: one line naming the package
                    raise PluginError(f"{who} failed in its {hook_name} hook: {_exc_line(exc)}",
                                      hint=block_hint(source)) from None

    def _registrar(self, kind: str, base: type, source: str, dist: str, who: str):
        def register(name: str, cls: type) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"{who} registered a {kind} with a bad name {name!r}",
                                  hint=block_hint(source))
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise PluginError(f"{who} registered {kind} {name!r} as {cls!r}, which is not "
                                  f"a subclass of harness.{base.__name__}",
                                  hint=block_hint(source))
            have = self._entries[kind].get(name)
            if have is not None:
                raise PluginError(
                    f"{kind} {name!r} is registered twice: by {who}, and before it by "
                    f"{have.plugin!r} ({have.distribution})",
                    hint=f"uninstall one, or block one with HARNESS_BLOCK_PLUGINS=<entry point>")
            entry = Entry(kind, name, cls, source, dist)
            cls.name = name
            cls._harness_entry = entry  # for plugin_label: the name and package in errors
            self._entries[kind][name] = entry

        return register

    def entries(self, kind: str | None = None) -> Iterator[Entry]:
        for k in ([kind] if kind else KINDS):
            yield from sorted(self._entries[k].values(), key=lambda e: e.name)

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def get(self, kind: str, name: str) -> Entry:
        if kind not in KINDS:
            raise PluginError(f"unknown plugin kind {kind!r}", hint=f"kinds: {', '.join(KINDS)}")
        try:
            return self._entries[kind][name]
        except (KeyError, TypeError):
            known = self.names(kind)
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            hint += f"{kind}s: {', '.join(known) or '(none installed)'}"
            raise PluginError(f"unknown {kind} {name!r}", hint=hint) from None

    def build(self, kind: str, name: str, params: dict[str, Any] | None = None) -> Any:
        """An instance of plugin ``name`` with ``params`` checked against its constructor.

        Raises :class:`PluginError` for an unknown name and :class:`ParamError` (naming the
        parameter) for an unknown, missing or ill-typed parameter.
        """
        entry = self.get(kind, name)
        return instantiate(entry.cls, params or {}, label=f"{kind} {name!r}")


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:
        return {}


def instantiate(cls: type[Plugin], params: dict[str, Any], label: str) -> Any:
    sig = cls.parameters()
    for key in params:
        if key not in sig:
            close = difflib.get_close_matches(key, list(sig), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            hint += f"{label} takes: {', '.join(sig) or 'no parameters'}"
            raise ParamError(key, f"unknown parameter {key!r} for {label}", hint=hint)
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for key, p in sig.items():
        if key not in params:
            if p.default is inspect.Parameter.empty:
                raise ParamError(key, f"{label} needs parameter {key!r}")
            continue
        value = params[key]
        ann = hints.get(p.name)
        if ann is not None:
            try:
                value = pydantic.TypeAdapter(ann).validate_python(value)
            except pydantic.ValidationError as exc:
                err = exc.errors()[0]
                raise ParamError(key, f"{key}={value!r} is invalid for {label}: "
                                      f"{err['msg'].lower()}") from None
            except pydantic.PydanticSchemaGenerationError:
                pass
        values[p.name] = value
    from .base import blame

    try:
        with blame(cls, "checking its parameters"):
            return cls(**values)
    except PluginCrash as exc:
        if isinstance(exc.original, (TypeError, ValueError)):
            raise ParamError("", f"{label}: {exc.original}") from None
        raise
