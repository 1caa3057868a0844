"""Name -> plugin class, per kind; building a plugin from a suite's parameters."""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass
from typing import Any, Iterator

import pluggy

from .analysis import Analysis
from .attack import Attack
from .base import Plugin
from .data import DatasetPlugin
from .errors import ParamError, PluginCrash, PluginError
from .metric import Metric
from .model import ModelPlugin
from .plugins import _exc_line, block_hint, package_label
from .reporting import Reporter

#: kind -> (hook name, base class)
KINDS: dict[str, tuple[str, type]] = {
    "model": ("register_models", ModelPlugin),
    "dataset": ("register_datasets", DatasetPlugin),
    "attack": ("register_attacks", Attack),
    "metric": ("register_metrics", Metric),
    "analysis": ("register_analyses", Analysis),
    "reporter": ("register_reporters", Reporter),
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
    """Every plugin class the plugin manager's hooks register, by kind and name.

    Nothing here stops at a broken plugin package: one that failed to load, whose hook
    raised, or that registers a name another package has, is recorded in :attr:`broken`
    (the names two packages claim in :attr:`conflicts`); only a suite that uses what it
    would have provided fails, with the reason."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        #: (kind, name) -> why it cannot be used (two packages register it)
        self.conflicts: dict[tuple[str, str], str] = {}
        #: the plugin packages that could not be used (see harness.plugins.Broken)
        self.broken: list[Any] = list(getattr(pm, "harness_broken", []))
        dists = {id(plugin): f"{dist.project_name} {dist.version}"
                 for plugin, dist in pm.list_plugin_distinfo()}
        from .plugins import Broken

        for kind, (hook_name, base) in KINDS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                source = pm.get_name(impl.plugin) or repr(impl.plugin)
                dist = dists.get(id(impl.plugin), "-")
                who = package_label(pm, impl.plugin)
                try:
                    impl.function(register=self._registrar(kind, base, source, dist, who))
                except (KeyboardInterrupt, GeneratorExit):
                    raise
                except PluginError as exc:
                    self.broken.append(Broken(source, who, exc.message))
                except BaseException as exc:  # SystemExit too: one line naming the package
                    self.broken.append(Broken(source, who, f"failed in its {hook_name} hook: "
                                                           f"{_exc_line(exc)}"))

    def _registrar(self, kind: str, base: type, source: str, dist: str, who: str):
        def register(name: str, cls: type) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"registered a {kind} with a bad name {name!r}")
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise PluginError(f"registered {kind} {name!r} as {cls!r}, which is not "
                                  f"a subclass of harness.{base.__name__}")
            have = self._entries[kind].get(name)
            if have is not None or (kind, name) in self.conflicts:
                first = (f"{have.plugin!r} ({have.distribution})" if have is not None
                         else "another package")
                self.conflicts[(kind, name)] = (
                    f"{kind} {name!r} is registered by two plugin packages: {first} and "
                    f"{who}")
                self._entries[kind].pop(name, None)
                return
            entry = Entry(kind, name, cls, source, dist)
            if "_harness_entry" not in cls.__dict__:   # for labels of the class itself
                cls._harness_entry = entry
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
        conflict = self.conflicts.get((kind, name)) if isinstance(name, str) else None
        if conflict:
            raise PluginError(conflict, hint="uninstall one, or block one with "
                                             "HARNESS_BLOCK_PLUGINS=<entry point> (harness "
                                             "plugins lists them)")
        try:
            return self._entries[kind][name]
        except (KeyError, TypeError):
            known = self.names(kind)
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            hint += f"{kind}s: {', '.join(known) or '(none installed)'}"
            if self.broken:
                hint += ("; not loaded, and so perhaps the one providing it: "
                         + "; ".join(b.line() for b in self.broken))
            raise PluginError(f"unknown {kind} {name!r}", hint=hint) from None

    def build(self, kind: str, name: str, params: dict[str, Any] | None = None) -> Any:
        """An instance of plugin ``name`` with ``params`` checked against its parameters
        (its ``Params``, or its constructor's signature).

        Raises :class:`PluginError` for an unknown name and :class:`ParamError` (naming the
        parameter) for an unknown, missing or ill-typed parameter.
        """
        entry = self.get(kind, name)
        obj = instantiate(entry.cls, params or {}, label=f"{kind} {name!r}")
        obj._harness_entry = entry
        model, _ = entry.cls.params_model()
        if "name" not in model.model_fields:
            obj.name = name
        return obj


def instantiate(cls: type[Plugin], params: dict[str, Any], label: str) -> Any:
    """Build ``cls`` from suite parameters, checked in one path: its declared ``Params``
    (checked by ``Plugin.__init__``) or a model derived from its constructor's signature."""
    from .base import blame
    from .params import BUILDING, validate_params

    token = BUILDING.set(label)
    try:
        model, keys = cls.params_model()
        if cls.declares_params():
            values = dict(params)
        else:
            checked = validate_params(model, params, label, keys)
            to_field = {keys.get(f, f): f for f in model.model_fields}
            values = {to_field[k]: getattr(checked, to_field[k]) for k in params}
        try:
            with blame(cls, "checking its parameters"):
                obj = cls(**values)
        except PluginCrash as exc:
            if isinstance(exc.original, (TypeError, ValueError)):
                raise ParamError("", f"{label}: {exc.original}") from None
            raise
        if not cls.declares_params():
            obj._given = checked.model_dump()
        return obj
    finally:
        BUILDING.reset(token)
