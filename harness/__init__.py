"""robustness-harness: plugin-based robustness tests for neural networks.

The public API for plugin authors: the hook marker, the base classes and the types they
exchange. Everything else in the package is the harness's own machinery.
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
from .errors import DataError, HarnessError, ModelError, ParamError, PluginError, SuiteError
from .hookspecs import hookimpl
from .metric import Evaluation, Metric
from .model import Model, ModelPlugin

__version__ = "0.1.0"

__all__ = [
    "Analysis", "AnalysisResult", "Attack", "AttackResult", "Batch", "Context", "Data", "DataError",
    "DataSource", "DatasetPlugin", "Evaluation", "StreamedData",
    "HarnessError", "Metric", "Model", "ModelError", "ModelPlugin", "ParamError", "Plugin",
    "PluginError", "SuiteError", "check_target", "choose_targets", "hookimpl",
    "resolve_device", "__version__",
]
