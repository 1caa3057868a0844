"""The paper's MNIST models (Table 1, Table 3) and small MLPs for any dataset, trained by the
harness on first use and cached.

``paper-mnist`` builds the fully connected nets of Szegedy et al. (2013), Table 1, and a
small convolutional net for the unit probes of Section 3 (the paper's MNIST experiment there
uses "a convolutional net" without giving its architecture):

===================  ========================================================================
FC10(lambda)         ``hidden: []``, ``weight_decay: lambda`` (softmax regression)
FC100-100-10         ``hidden: [100, 100]``, ``weight_decay: [1e-5, 1e-5, 1e-6]``
FC200-200-10         ``hidden: [200, 200]``, ``weight_decay: [1e-5, 1e-5, 1e-6]``
FC123-456-10         ``hidden: [123, 456]``, ``train_split: p1`` (Table 3)
AE400-10             ``autoencoder: 400``, ``weight_decay: 1e-6``
Conv16-32-FC128-10   ``conv: [16, 32], hidden: [128]`` (Section 3; the probe suite's net)
===================  ========================================================================

``mlp`` is the same trainer for any dataset plugin (scikit-learn's digits by default), for
suites that must run in seconds and offline.

The returned modules are ``nn.Sequential`` with addressable layers::

    FC100-100-10:        0 Flatten, 1 Linear, 2 Sigmoid, 3 Linear, 4 Sigmoid, 5 Linear
    AE400-10:            0 Flatten, 1 Linear (encoder), 2 Sigmoid (the code), 3 Linear (softmax)
    Conv16-32-FC128-10:  0 Conv2d(1->16, 5x5), 1 ReLU, 2 MaxPool2d (16x14x14),
                         3 Conv2d(16->32, 5x5), 4 ReLU, 5 MaxPool2d (32x7x7),
                         6 Flatten, 7 Linear, 8 ReLU (the hidden layer, 128), 9 Linear

so ``model.features("2", x)`` is the first hidden layer (or the autoencoder's code) of a
fully connected net, and of a conv net ``"2"``/``"5"`` are the pooled feature maps of its
first/second convolution and ``"8"`` its last hidden layer. In general a conv net has
``3 * len(conv)`` conv/ReLU/pool modules, then ``Flatten``, then a Linear/ReLU pair per
hidden width, then the output Linear.

The conv net: each width in ``conv`` is a 5x5 convolution (zero-padded, so the image keeps
its size), a ReLU and a 2x2 max-pooling; the ``hidden`` layers after it are ReLU too (the
paper's fully connected nets are sigmoid; for a conv net ReLU is the usual choice and trains
in a few epochs). Convolutions are initialized He-uniform, linear layers LeCun-uniform.

Calibrated defaults (errors measured on MNIST at seed 0 next to the paper's Table 1):
softmax classifiers (no hidden layer, also the softmax on the autoencoder's code) by 100
iterations of full-batch L-BFGS; sigmoid nets by Adam, lr 1e-2 decayed to 0 along a cosine,
batch 256, 20 epochs; the autoencoder by Adam, lr 2e-2, batch 256, 10 epochs, sparsity 1.5
towards a mean activation of 0.1, weight decay 6e-3. Weight decay enters the loss as
``lambda / 2 * ||W||^2`` per weight matrix, added to the mean cross-entropy (see
:mod:`training`). Conv nets: Adam, lr 3e-3 decayed to 0 along a cosine, batch 256, 3 epochs
(:data:`CONV_EPOCHS`, :data:`CONV_LR`); Conv16-32-FC128-10 then has 0.54% training and
1.05% test error (seed 0), and trains in 30-40 s on 2 idle CPU cores (50 s on one).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Sequence, Union

from pydantic import model_validator

import harness
from harness import (Context, Data, DatasetSpec, Field, Model, ModelError, ModelPlugin,
                     ParamError)

from ..params import Real, Widths, one_or_many
from .schedule import Schedule

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .training import AutoencoderSpec

#: names this module takes from :mod:`.training` (which imports torch) on first use, so that
#: building a plugin imports no torch: ``paper_mnist.fit_classifier`` and the rest
_FROM_TRAINING = ("ACTIVATIONS", "TRAINING_VERSION", "AutoencoderSpec", "WeightCache",
                  "batched", "conv_layers", "fit_autoencoder", "fit_classifier", "make_linear",
                  "mlp_layers", "per_layer")


def __getattr__(name: str) -> Any:
    if name in _FROM_TRAINING:
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _trainer(name: str) -> Any:
    """The training function ``name`` as this module has it: from :mod:`.training`, or
    whatever replaced it here (to count or fake training runs)."""
    return getattr(sys.modules[__name__], name)

#: calibrated autoencoder schedule (Adam, cosine decay) for AE400-10
AE_LR = 2e-2
DEFAULT_AE_EPOCHS = 10

#: calibrated Adam schedule of the conv nets (cosine decay, batch ``batch_size``); on small
#: training sets the default epochs rise to at least ``CONV_MIN_STEPS`` steps
CONV_EPOCHS = 3
CONV_LR = 3e-3
CONV_MIN_STEPS = 500
#: kernel size of the conv nets' convolutions
CONV_KERNEL = 5

# ---------------------------------------------------------------------------------------
# parameters the trained models share

Optimizer = Annotated[Literal["auto", "adam", "lbfgs"],
                      Field(description="auto: L-BFGS when the classifier is convex (no hidden "
                                        "or conv layers), else Adam")]
Epochs = Annotated[Union[int, None],
                   Field(ge=1, description="passes over the training set (L-BFGS: its "
                                           "iterations); default: calibrated")]
LearningRate = Annotated[Union[Real, None], Field(gt=0, description="the learning rate; "
                                                                   "default: calibrated")]
BatchSize = Annotated[int, Field(ge=1, description="images per Adam step")]
WeightDecay = Annotated[one_or_many(Annotated[Real, Field(ge=0)]),
                        Field(description="lambda of the penalty lambda/2 ||W||^2 on the mean "
                                          "cross-entropy: one for every weight layer, or one "
                                          "per layer (convolutions first)")]
ConvWidths = Annotated[Widths, Field(description="channels of 5x5 convolutions in front, "
                                                 "each followed by a ReLU and 2x2 max-pooling")]


def _weight_decay_fits(params: Any) -> Any:
    """A ``model_validator``: a list of lambdas has one per weight layer."""
    layers = len(params.conv) + len(params.hidden) + 1
    if isinstance(params.weight_decay, list) and len(params.weight_decay) != layers:
        raise ParamError("weight_decay", f"weight_decay has {len(params.weight_decay)} values "
                                         f"for {layers} weight layers",
                         hint="give one lambda, or one per weight layer")
    return params



class TrainedClassifier(ModelPlugin):
    """Shared ``load`` of the trained models: build, read the cache or train, wrap.

    Subclasses provide :meth:`training_data`, :meth:`build` and (to change the training)
    :meth:`fit`, and set the attributes ``hidden``, ``weight_decay``, ``optimizer``,
    ``epochs``, ``lr`` and ``batch_size``.
    """

    hidden: list[int]
    weight_decay: float | list[float]
    optimizer: str
    epochs: int | None
    lr: float | None
    batch_size: int

    # --- what subclasses define -------------------------------------------------------

    def training_data(self, ctx: Context) -> Data:
        raise NotImplementedError

    def build(self, data: Data, generator: torch.Generator) -> nn.Sequential:
        """The untrained module (on the CPU), its weights drawn from ``generator``."""
        raise NotImplementedError

    def label(self, data: Data) -> str:
        """A short architecture name, such as ``FC100-100-10``."""
        raise NotImplementedError

    def _conv(self) -> list[int]:
        return list(getattr(self, "conv", None) or [])

    def convex(self) -> bool:
        """Whether the trained part is a convex problem (then ``auto`` means L-BFGS)."""
        return not self.hidden and not self._conv()

    def extra_key(self, data: Data) -> dict[str, Any]:
        """Anything beyond the parameters and the schedule that decides the weights."""
        return {}

    def num_weight_layers(self) -> int:
        """How many layers of the trained classifier carry a weight penalty."""
        return len(self._conv()) + len(self.hidden) + 1

    def fit(self, module: nn.Sequential, x: torch.Tensor, y: torch.Tensor, ctx: Context,
            label: str) -> dict[str, Any]:
        """Train ``module`` (already on ``x``'s device); return metadata for the cache."""
        from .training import per_layer

        schedule = self.schedule(len(x))
        lambdas = per_layer(self.weight_decay, self.num_weight_layers())
        result = _trainer("fit_classifier")(module, x, y, lambdas, schedule,
                                ctx.generator(self.seed_key, "shuffle", self.params_id()),
                                ctx.progress, f"{label}: training")
        return {"loss": result.loss, "seconds": result.seconds}

    # --- shared machinery -------------------------------------------------------------

    #: parameters added after the first models were cached, with their defaults: left out
    #: of :meth:`params` while at the default, so the cache keys and random streams (which
    #: hash the parameters) of the models that do not use them stay what they were
    LATER_PARAMS: ClassVar[dict[str, Any]] = {}

    def params(self) -> dict[str, Any]:
        out = super().params()
        for name, default in self.LATER_PARAMS.items():
            if out.get(name) == default:
                del out[name]
        return out

    def params_id(self) -> str:
        """The parameters as one stable string (keys the random streams)."""
        return json.dumps(self.params(), sort_keys=True, default=str)

    def schedule(self, num_examples: int) -> Schedule:
        if self._conv():   # a conv net: Adam, with the epochs and rate calibrated for it
            return Schedule.resolve(self.optimizer, self.epochs, self.lr, self.batch_size,
                                    convex=False, num_examples=num_examples,
                                    default_epochs={"adam": CONV_EPOCHS},
                                    default_lr={"adam": CONV_LR}, min_steps=CONV_MIN_STEPS)
        return Schedule.resolve(self.optimizer, self.epochs, self.lr, self.batch_size,
                                convex=self.convex(), num_examples=num_examples)

    def cache_key(self, ctx: Context, data: Data) -> str:
        """A hash of everything that decides the trained weights."""
        import torch

        from .training import TRAINING_VERSION

        return self.config_key({
            "seed": ctx.seed,
            "data": data.fingerprint(),
            "training_version": TRAINING_VERSION,
            "device": torch.device(ctx.device).type,
            "schedule": asdict(self.schedule(len(data))),
            **self.extra_key(data),
        })

    def load(self, ctx: Context) -> Model:
        import torch

        from .training import WeightCache

        data = self.training_data(ctx).materialize()   # training reads the whole set
        device = torch.device(ctx.device)
        label = self.label(data)
        module = self.build(data, ctx.generator(self.seed_key, "init", self.params_id()))
        cache = WeightCache(Path(ctx.cache_dir) / "models", self.cache_key(ctx, data))
        meta = cache.load_into(module) if ctx.use_cache else None
        module.to(device)
        if meta is None:
            x, y = data.x.to(device), data.y.to(device)
            meta = self.fit(module, x, y, ctx, label)
            if not all(bool(torch.isfinite(t).all()) for t in module.state_dict().values()):
                raise ModelError(f"training {label} diverged (NaN or infinite weights)",
                                 hint="lower lr, or use more weight_decay")
            cache.save(module, meta)
        return Model(module, input_shape=data.input_shape, num_classes=data.num_classes,
                     device=device, name=label)


class PaperMNIST(TrainedClassifier):
    """The paper's MNIST nets (FC10, FC100-100-10, AE400-10, a small conv net...), trained
    on first use and cached.

    Parameters: ``conv`` channels of 5x5 convolutions, each followed by a ReLU and 2x2
    max-pooling (``[]``, the default: a fully connected net); ``hidden`` layer widths,
    sigmoid (ReLU after convolutions; ``[]`` and no ``conv`` is softmax regression);
    ``autoencoder`` code units of a sparse sigmoid autoencoder trained first on the training
    images and frozen, the classifier then trained on its code; ``weight_decay`` one lambda
    or one per weight layer of the classifier, convolutions first (penalty lambda/2 ||W||^2
    on the mean cross-entropy); ``train_split`` train, p1 or p2; ``limit`` the first N
    training images; ``optimizer`` auto (L-BFGS when the classifier is convex, else Adam),
    adam or lbfgs; ``epochs``, ``lr``, ``batch_size`` (None: calibrated defaults, Adam
    for conv nets); ``ae_epochs``, ``ae_sparsity``, ``ae_target``, ``ae_weight_decay`` for
    the autoencoder.
    """

    name: ClassVar[str] = "paper-mnist"
    seed_name = "paper-mnist"

    LATER_PARAMS: ClassVar[dict[str, Any]] = {"conv": []}

    class Params(harness.Params):
        conv: ConvWidths = []
        hidden: Widths = Field([], description="hidden layer widths, sigmoid (ReLU after "
                                               "convolutions); [] and no conv: softmax "
                                               "regression")
        autoencoder: Union[int, None] = Field(
            None, ge=1, description="code units of a sparse sigmoid autoencoder trained "
                                    "first on the images and frozen; the classifier reads its "
                                    "code")
        weight_decay: WeightDecay = 0.0
        train_split: Literal["train", "p1", "p2"] = Field(
            "train", description="the training images: all 60,000, or the paper's halves p1 "
                                 "and p2")
        limit: Union[int, None] = Field(None, ge=1, description="train on the first N images")
        optimizer: Optimizer = "auto"
        epochs: Epochs = None
        lr: LearningRate = None
        batch_size: BatchSize = 256
        ae_epochs: Union[int, None] = Field(None, ge=1, description="epochs of the "
                                                                    "autoencoder (default: "
                                                                    f"{DEFAULT_AE_EPOCHS})")
        ae_sparsity: Real = Field(1.5, ge=0, description="weight of the autoencoder's "
                                                         "sparsity penalty")
        ae_target: Real = Field(0.1, gt=0, lt=1, description="the mean activation the "
                                                             "sparsity penalty aims each code "
                                                             "unit at")
        ae_weight_decay: Real = Field(6e-3, ge=0, description="lambda of the autoencoder's "
                                                              "weight penalty")

        @model_validator(mode="after")
        def _layers(self) -> "PaperMNIST.Params":
            if self.conv and self.autoencoder is not None:
                raise ParamError("conv", "conv and autoencoder do not combine",
                                 hint="a conv net trains end to end; drop one of them")
            return _weight_decay_fits(self)

    def training_data(self, ctx: Context) -> Data:
        params: dict[str, Any] = {"split": self.train_split}
        if self.limit is not None:
            params["limit"] = self.limit
        return ctx.dataset("mnist", **params)

    def ae_spec(self) -> AutoencoderSpec | None:
        from .training import AutoencoderSpec

        if self.autoencoder is None:
            return None
        return AutoencoderSpec(
            units=self.autoencoder,
            epochs=self.ae_epochs if self.ae_epochs is not None else DEFAULT_AE_EPOCHS,
            lr=AE_LR, batch_size=self.batch_size, sparsity=self.ae_sparsity,
            target=self.ae_target, weight_decay=self.ae_weight_decay)

    def extra_key(self, data: Data) -> dict[str, Any]:
        spec = self.ae_spec()
        return {"autoencoder": asdict(spec) if spec else None}

    def label(self, data: Data) -> str:
        widths = ([self.autoencoder] if self.autoencoder else []) + self.hidden
        prefix = "AE" if self.autoencoder else "FC"
        label = prefix + "-".join(str(w) for w in widths + [data.num_classes])
        if self.conv:
            label = "Conv" + "-".join(str(c) for c in self.conv) + "-" + label
        return label if self.train_split == "train" else f"{label}[{self.train_split}]"

    def build(self, data: Data, generator: torch.Generator) -> nn.Sequential:
        from torch import nn

        from .training import make_linear, mlp_layers

        if self.conv:
            return self.build_conv(data, generator)
        features = math.prod(data.input_shape)
        layers: list[nn.Module] = [nn.Flatten()]
        if self.autoencoder:
            # the encoder's weights come from the autoencoder in fit(); built here so the
            # module's layout is known before training (and for reading the cache)
            layers += [make_linear(features, self.autoencoder, None), nn.Sigmoid()]
            features = self.autoencoder
        layers += mlp_layers(features, self.hidden, data.num_classes, "sigmoid", generator)
        return nn.Sequential(*layers)

    def build_conv(self, data: Data, generator: torch.Generator) -> nn.Sequential:
        """Conv/ReLU/pool blocks, Flatten, the ReLU hidden layers, the output layer."""
        return conv_net(data, self.conv, self.hidden, generator)

    def fit(self, module: nn.Sequential, x: torch.Tensor, y: torch.Tensor, ctx: Context,
            label: str) -> dict[str, Any]:
        import torch
        from torch import nn

        from .training import batched

        spec = self.ae_spec()
        if spec is None:
            return super().fit(module, x, y, ctx, label)
        flat = x.flatten(1)
        encoder, ae_result = _trainer("fit_autoencoder")(
            flat, spec, ctx.generator(self.seed_key, "autoencoder", self.params_id()),
            ctx.progress, f"{label}: autoencoder")
        module[1].load_state_dict(encoder.state_dict())
        # the classifier sees only the frozen code: compute it once
        code = batched(lambda b: torch.sigmoid(encoder(b)), flat)
        head = nn.Sequential(*list(module)[3:])
        meta = super().fit(head, code, y, ctx, label)
        return {**meta, "seconds": meta["seconds"] + ae_result.seconds,
                "autoencoder_loss": ae_result.loss}


def conv_net(data: Data, conv: Sequence[int], hidden: Sequence[int],
             generator: torch.Generator) -> nn.Sequential:
    """Conv/ReLU/pool blocks (5x5, padded, 2x2 max-pooling), Flatten, the ReLU hidden layers,
    the output layer, for the images of ``data``."""
    from torch import nn

    from .training import conv_layers, mlp_layers

    if len(data.input_shape) != 3:
        raise ModelError(f"a conv net needs images [C, H, W], not inputs of shape "
                         f"{list(data.input_shape)}")
    channels, height, width = data.input_shape
    for _ in conv:
        height, width = height // 2, width // 2
    if height < 1 or width < 1:
        raise ModelError(f"{len(conv)} conv layers (each halving the image) are too "
                         f"many for {data.input_shape[1]}x{data.input_shape[2]} images",
                         hint="use fewer conv layers")
    layers = conv_layers(channels, conv, CONV_KERNEL, generator)
    layers.append(nn.Flatten())
    features = conv[-1] * height * width
    layers += mlp_layers(features, hidden, data.num_classes, "relu", generator)
    return nn.Sequential(*layers)


#: the ``mlp`` plugin's training data by default
DEFAULT_TRAIN = {"use": "digits", "split": "train"}


class MLP(TrainedClassifier):
    """A fully connected classifier trained on any dataset plugin (default: scikit-learn's
    digits), on first use and cached; for small offline suites.

    Parameters: ``train`` the training data as a dataset spec (``use`` plus that plugin's
    parameters); ``hidden`` layer widths; ``activation`` relu or sigmoid; ``conv`` channels
    of 5x5 convolutions in front, each with a ReLU and 2x2 max-pooling, as ``paper-mnist``'s
    conv nets (the hidden layers are then ReLU, trained by Adam with the conv nets'
    calibrated schedule); ``weight_decay`` one lambda or one per weight layer, convolutions
    first; ``optimizer``, ``epochs``, ``lr``, ``batch_size`` as for ``paper-mnist``. Input
    shape and class count come from the data.
    """

    name: ClassVar[str] = "mlp"
    seed_name = "mlp"
    LATER_PARAMS: ClassVar[dict[str, Any]] = {"conv": []}

    class Params(harness.Params):
        train: Union[DatasetSpec, None] = Field(
            dict(DEFAULT_TRAIN), description="the training data: a dataset plugin's spec "
                                             "(use: plus its parameters)")
        hidden: Widths = Field([], description="hidden layer widths ([]: softmax regression)")
        conv: ConvWidths = []
        activation: Literal["relu", "sigmoid"] = Field(
            "relu", description="the hidden layers' activation (ReLU after convolutions)")
        weight_decay: WeightDecay = 0.0
        optimizer: Optimizer = "auto"
        epochs: Epochs = None
        lr: LearningRate = None
        batch_size: BatchSize = 256

        @model_validator(mode="after")
        def _train(self) -> "MLP.Params":
            if self.train is None:     # null: the default
                self.train = dict(DEFAULT_TRAIN)
            if not self.train["use"].strip():
                raise ParamError("train", "train must name a dataset plugin under 'use'",
                                 hint="for example {use: digits, split: train}")
            return _weight_decay_fits(self)

    def training_data(self, ctx: Context) -> Data:
        params = dict(self.train)
        return ctx.dataset(params.pop("use"), **params)

    def label(self, data: Data) -> str:
        widths = "-".join(str(w) for w in self.hidden + [data.num_classes])
        if self.conv:
            return "Conv" + "-".join(str(c) for c in self.conv) + f"-FC{widths}"
        return f"MLP{widths}" + (f"({self.activation})" if self.hidden else "")

    def build(self, data: Data, generator: torch.Generator) -> nn.Sequential:
        from torch import nn

        from .training import mlp_layers

        if self.conv:
            return conv_net(data, self.conv, self.hidden, generator)
        features = math.prod(data.input_shape)
        return nn.Sequential(nn.Flatten(), *mlp_layers(features, self.hidden, data.num_classes,
                                                       self.activation, generator))
