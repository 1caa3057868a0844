"""The hooks a plugin package may implement.

Registration hooks, one per kind of plugin: each receives a ``register(name, cls)`` callable;
call it once per class the package provides. Classes are registered, not instances: a suite
builds only what it names.

Lifecycle hooks follow a run as it goes, with typed arguments
(:mod:`harness.reporting`): ``harness_run_started``, ``harness_case_finished``,
``harness_run_finished``. An exception a lifecycle hook raises is reported with the package's
name and does not stop the run.
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


@hookspec
def register_reporters(register):
    """Call register(name, ReporterSubclass) for each reporter (report format, tracker)."""


@hookspec
def harness_run_started(run):
    """A run began; ``run`` is a :class:`harness.reporting.RunStarted`."""


@hookspec
def harness_case_finished(run, case):
    """A case finished; ``case`` is a :class:`harness.reporting.CaseFinished`."""


@hookspec
def harness_run_finished(run, outcome):
    """The run ended (saved); ``outcome`` is a :class:`harness.reporting.RunFinished`."""
