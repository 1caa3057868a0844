"""Built-in models: the paper's MNIST nets (trained on first use, cached) and any torch module."""

from harness import hookimpl

from .onnx_model import OnnxModel
from .paper_mnist import MLP, PaperMNIST
from .torch_factory import TorchModel


@hookimpl
def register_models(register):
    register("torch", TorchModel)
    register("paper-mnist", PaperMNIST)
    register("mlp", MLP)
    register("onnx", OnnxModel)
