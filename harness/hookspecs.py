"""The four hooks a plugin package may implement, one per kind of plugin.

Each receives a ``register(name, cls)`` callable; call it once per class the package
provides. Classes are registered, not instances: a suite builds only what it names.
"""

import pluggy

hookspec = pluggy.HookspecMarker("harness")
hookimpl = pluggy.HookimplMarker("harness")


@hookspec
def register_models(register):
    """Call register(name, ModelPluginSubclass) for each model plugin provided."""


@hookspec
def register_datasets(register):
    """Call register(name, DatasetPluginSubclass) for each dataset plugin provided."""


@hookspec
def register_attacks(register):
    """Call register(name, AttackSubclass) for each attack provided."""


@hookspec
def register_metrics(register):
    """Call register(name, MetricSubclass) for each metric provided."""


@hookspec
def register_analyses(register):
    """Call register(name, AnalysisSubclass) for each analysis (probe, bound...) provided."""
