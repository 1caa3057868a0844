"""Built-in models: the paper's MNIST nets (trained on first use, cached), any torch module,
and the files deployment pipelines produce (ONNX, TorchScript, torch.export, timm)."""

from harness import hookimpl

from .deployed import TorchExportModel, TorchScriptModel
from .onnx_model import OnnxModel
from .paper_mnist import MLP, PaperMNIST
from .timm_model import TimmModel
from .torch_factory import TorchModel


@hookimpl
def register_models(register):
    register("torch", TorchModel)
    register("paper-mnist", PaperMNIST)
    register("mlp", MLP)
    register("onnx", OnnxModel)
    register("torchscript", TorchScriptModel)
    register("torch-export", TorchExportModel)
    register("timm", TimmModel)
