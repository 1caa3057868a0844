"""The plugin manager: built-in and third-party plugins both arrive through the entry-point
group ``harness``; any of them can be blocked by name."""

from __future__ import annotations

import os
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

GROUP = "harness"
#: comma-separated entry-point names to skip, e.g. ``HARNESS_BLOCK_PLUGINS=example``
BLOCK_ENV = "HARNESS_BLOCK_PLUGINS"


def make_plugin_manager(*, entry_points: bool = True, blocked: list[str] | None = None,
                        extra: list[object] | None = None) -> pluggy.PluginManager:
    """A fresh plugin manager. ``entry_points``: load the installed plugin packages;
    ``extra``: objects or modules with hook implementations to register as well (tests)."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    names = list(blocked or [])
    names += [n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()]
    for name in names:
        pm.set_blocked(name)
    if entry_points:
        try:
            pm.load_setuptools_entrypoints(GROUP)
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as exc:  # a plugin package that fails to import (or exits)
            ep = _failing_entry_point(pm)
            who = (f"plugin package {ep.name!r} ({ep.value}, from "
                   f"{_dist_label(ep.dist) if ep.dist else 'an unknown distribution'})"
                   if ep is not None else "a plugin package")
            raise PluginError(f"{who} failed to load: {_exc_line(exc)}",
                              hint=block_hint(ep.name if ep is not None else None)) from None
    for obj in extra or []:
        pm.register(obj)
    _check_hook_names(pm)
    return pm


def _exc_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (SystemExit: its status)."""
    if isinstance(exc, SystemExit):
        return f"SystemExit (exit status {exc.code!r})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _dist_label(dist: Any) -> str:
    try:
        return f"{dist.metadata['Name']} {dist.version}"
    except Exception:
        return str(getattr(dist, "name", dist))


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
    """A hook implementation whose name no hook has (``register_attack`` for
    ``register_attacks``) is one line naming the package, with the hooks that exist."""
    import difflib

    known = sorted(n for n in dir(hookspecs) if n.startswith("register_"))
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
        raise PluginError(f"{package_label(pm, plugin)} implements unknown hook(s) "
                          f"{', '.join(map(repr, names))}",
                          hint=f"{hint}the hooks are {', '.join(known)}")


def _failing_entry_point(pm: pluggy.PluginManager) -> Any:
    """The first entry point of the group that is neither blocked nor loadable."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=GROUP):
        if pm.is_blocked(ep.name):
            continue
        try:
            ep.load()
        except Exception:
            return ep
    return None


def default_registry():
    """A registry over a fresh plugin manager with every installed plugin."""
    from .registry import Registry

    return Registry(make_plugin_manager())
