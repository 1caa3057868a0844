"""robustness-harness: plugin-based robustness tests for neural networks.

The public API for plugin authors: the hook marker, the base classes, the parameter
declarations and the types they exchange (see docs/plugins.md), at plugin-API version
:data:`__api_version__`. These modules import nothing from the engine (the runner, the
suite, the store, the reports); everything else in the package is the harness's own
machinery.
"""

import os as _os

# onnxruntime (ONNX models, export checks) otherwise writes a device id and a telemetry
# database under ~/.cache/Microsoft/DeveloperTools on every model load, which fails or
# litters where the home folder is read-only (CI); it reads this before it is imported
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from .analysis import Analysis, AnalysisResult  # noqa: E402
from .attack import Attack, AttackResult, check_target, choose_targets
from .base import Plugin
from .context import Context, resolve_device
from .data import Batch, Data, DatasetPlugin, DataSource, StreamedData
from .context import stable_seed
from .errors import DataError, HarnessError, ModelError, ParamError, PluginError, SuiteError
from .hookspecs import hookimpl
from .metric import Evaluation, Metric
from .model import Model, ModelPlugin
from .params import DatasetSpec, Field, ModelSpec, Params
from .reporting import CaseFinished, Reporter, RunFinished, RunStarted, RunView, Table

__version__ = "0.1.0"
#: the plugin API this harness provides: a plugin package may require a version with
#: ``HARNESS_API = "1.0"`` in the module its entry point names (the same major version, and a
#: minor version at most this one, is compatible); a package that needs a newer one is left
#: out with one line saying so
__api_version__ = "1.0"

__all__ = [
    "Analysis", "AnalysisResult", "Attack", "AttackResult", "Batch", "Context", "Data", "DataError",
    "DataSource", "DatasetPlugin", "Evaluation", "StreamedData",
    "HarnessError", "Metric", "Model", "ModelError", "ModelPlugin", "ParamError", "Plugin",
    "PluginError", "SuiteError", "check_target", "choose_targets", "hookimpl",
    "resolve_device", "__version__", "__api_version__", "Params", "Field", "DatasetSpec",
    "ModelSpec", "stable_seed", "Reporter", "RunView", "Table", "RunStarted", "CaseFinished",
    "RunFinished",
]
