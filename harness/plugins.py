"""The plugin manager: built-in and third-party plugins both arrive through the entry-point
group ``harness``; any of them can be blocked by name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

GROUP = "harness"
#: comma-separated entry-point names to skip, e.g. ``HARNESS_BLOCK_PLUGINS=example,other``
BLOCK_ENV = "HARNESS_BLOCK_PLUGINS"
#: comma-separated entry-point (or distribution) names: load only these third-party plugin
#: packages (the harness's own plugins always load unless blocked); for isolated tests and CI
ONLY_ENV = "HARNESS_ONLY_PLUGINS"
#: the harness's own distribution, whose entry points are the built-in plugins
OWN_DISTRIBUTION = "robustness-harness"


@dataclass(frozen=True)
class Broken:
    """A plugin package that could not be used: its entry point's name (what blocking
    needs), who it is, and what went wrong."""

    entry_point: str
    who: str
    problem: str

    @property
    def hint(self) -> str:
        return block_hint(self.entry_point)

    def line(self) -> str:
        return f"{self.who}: {self.problem}; {self.hint}"


def make_plugin_manager(*, entry_points: bool = True, blocked: list[str] | None = None,
                        extra: list[object] | None = None,
                        only: list[str] | None = None) -> pluggy.PluginManager:
    """A fresh plugin manager. ``entry_points``: load the installed plugin packages (those
    named by ``only``/``$HARNESS_ONLY_PLUGINS`` alone, when given, besides the built-in ones);
    ``extra``: objects or modules with hook implementations to register as well (tests; one
    already loaded through its entry point is not registered twice). A package that fails to
    import, needs a newer plugin API, or implements unknown hooks is left out and listed in
    ``pm.harness_broken`` (see :class:`Broken`); nothing is raised for it here."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    pm.harness_broken = []
    names = list(blocked or [])
    names += _env_list(BLOCK_ENV)
    for name in names:
        pm.set_blocked(name)
    allowed = list(only or []) + _env_list(ONLY_ENV)
    if entry_points:
        _load_entry_points(pm, allowed)
    for obj in extra or []:
        if pm.is_registered(obj) or any(p is obj for p in pm.get_plugins()):
            continue
        pm.register(obj)
    _check_hook_names(pm)
    return pm


def _env_list(name: str) -> list[str]:
    return [n.strip() for n in os.environ.get(name, "").split(",") if n.strip()]


def _load_entry_points(pm: pluggy.PluginManager, allowed: list[str]) -> None:
    """Every entry point of the group, one at a time, as pluggy's loader would (with the
    distribution recorded), leaving out and recording those that cannot be used."""
    from importlib.metadata import distributions

    seen: set[str] = set()
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group != GROUP or ep.name in seen or pm.is_blocked(ep.name):
                continue
            seen.add(ep.name)
            dist_name = _dist_name(dist)
            if allowed and dist_name != OWN_DISTRIBUTION and ep.name not in allowed \
                    and dist_name not in allowed:
                continue
            who = f"plugin package {ep.name!r} ({ep.value}, from {_dist_label(dist)})"
            if pm.get_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except (KeyboardInterrupt, GeneratorExit):
                raise
            except BaseException as exc:  # an import error, a SystemExit...
                pm.harness_broken.append(Broken(ep.name, who, f"failed to load: "
                                                              f"{_exc_line(exc)}"))
                continue
            problem = api_problem(plugin)
            if problem:
                pm.harness_broken.append(Broken(ep.name, who, problem))
                continue
            try:
                pm.register(plugin, name=ep.name)
            except (KeyboardInterrupt, GeneratorExit):
                raise
            except BaseException as exc:
                pm.harness_broken.append(Broken(ep.name, who, f"cannot be registered: "
                                                              f"{_exc_line(exc)}"))
                continue
            if hasattr(pm, "_plugin_distinfo"):   # what pluggy's own loader records
                pm._plugin_distinfo.append((plugin, _DistFacade(dist)))


class _DistFacade:
    """What pluggy's ``list_plugin_distinfo`` gives for a distribution."""

    def __init__(self, dist: Any):
        self._dist = dist

    @property
    def project_name(self) -> str:
        return _dist_name(self._dist)

    @property
    def version(self) -> str:
        return _dist_info(self._dist)[1]

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._dist, attr)


#: (name, version) per distribution: reading a distribution's metadata parses its whole
#: METADATA file (the long description included), so it is read once per process
_DIST_INFO: dict[str, tuple[str, str]] = {}


def _dist_info(dist: Any) -> tuple[str, str]:
    key = str(getattr(dist, "_path", "")) or f"id:{id(dist)}"
    found = _DIST_INFO.get(key)
    if found is None:
        try:
            meta = dist.metadata
            found = (meta["Name"] or "", meta["Version"] or "")
        except Exception:
            found = (str(getattr(dist, "name", "") or dist), "")
        _DIST_INFO[key] = found
    return found


def _dist_name(dist: Any) -> str:
    return _dist_info(dist)[0]


def api_problem(plugin: object) -> str | None:
    """Why a plugin package cannot be used by this harness's plugin API, if it says which it
    needs (``HARNESS_API = "1.1"`` in the module its entry point names: at least that
    version, of the same major version), else None."""
    from . import __api_version__

    wanted = getattr(plugin, "HARNESS_API", None)
    if wanted is None:
        return None
    try:
        need = tuple(int(p) for p in str(wanted).strip().lstrip(">=").split("."))[:2]
        have = tuple(int(p) for p in __api_version__.split("."))[:2]
    except ValueError:
        return f"declares HARNESS_API = {wanted!r}, which is not a version such as '1.0'"
    if need[0] != have[0] or need > have:
        return (f"needs plugin API {wanted}; this harness has {__api_version__} "
                f"(upgrade robustness-harness, or install a version of the package made for "
                f"API {__api_version__})")
    return None


def _exc_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (SystemExit: its status)."""
    if isinstance(exc, SystemExit):
        return f"SystemExit (exit status {exc.code!r})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _dist_label(dist: Any) -> str:
    name, version = _dist_info(dist)
    return f"{name} {version}".strip()


def block_hint(name: str | None) -> str:
    return f"fix or uninstall it, or block it with {BLOCK_ENV}={name or '<entry point>'}"


def package_label(pm: pluggy.PluginManager, plugin: object) -> str:
    """``plugin package 'example' (harness_example, from harness-example-plugin 0.1.0)``:
    the entry point's name, the module, and the distribution, as far as they are known."""
    module = getattr(plugin, "__name__", None) or type(plugin).__module__
    name = pm.get_name(plugin)
    if not name or name == str(id(plugin)):  # registered without a name (tests)
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
    dists = {id(p): d for p, d in pm.list_plugin_distinfo()}
    dist = dists.get(id(plugin))
    where = module if dist is None else f"{module}, from {_dist_label(dist)}"
    return f"plugin package {name!r} ({where})"


def _check_hook_names(pm: pluggy.PluginManager) -> None:
    """A package implementing a hook whose name no hook has (``register_attack`` for
    ``register_attacks``) is left out and recorded, naming the package and the hooks that
    exist."""
    import difflib

    known = sorted(n for n in dir(hookspecs) if n.startswith(("register_", "harness_")))
    unknown: dict[int, tuple[object, list[str]]] = {}
    for name in dir(pm.hook):
        caller = getattr(pm.hook, name)
        if name.startswith("_") or not hasattr(caller, "get_hookimpls") or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if not impl.optionalhook:
                unknown.setdefault(id(impl.plugin), (impl.plugin, []))[1].append(name)
    for plugin, names in unknown.values():
        close = difflib.get_close_matches(names[0], known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        entry = pm.get_name(plugin)
        pm.harness_broken.append(Broken(
            entry or "<entry point>", package_label(pm, plugin),
            f"implements unknown hook(s) {', '.join(map(repr, names))} ({hint}the hooks "
            f"are {', '.join(known)})"))
        pm.unregister(plugin)


def default_registry():
    """A registry over a fresh plugin manager with every installed plugin."""
    from .registry import Registry

    return Registry(make_plugin_manager())
