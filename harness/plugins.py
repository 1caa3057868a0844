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
        except Exception as exc:  # a plugin package that fails to import
            ep = _failing_entry_point(pm)
            who = (f"plugin package {ep.name!r} ({ep.value}, from "
                   f"{ep.dist.name if ep.dist else 'an unknown distribution'})"
                   if ep is not None else "a plugin package")
            raise PluginError(f"{who} failed to load: {type(exc).__name__}: {exc}",
                              hint=f"fix or uninstall it, or block it with "
                                   f"{BLOCK_ENV}={ep.name if ep is not None else '<name>'}"
                              ) from None
    for obj in extra or []:
        pm.register(obj)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from None
    return pm


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
