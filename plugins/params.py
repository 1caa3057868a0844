"""Parameter types the built-in plugins share in their ``Params`` models (see
:mod:`harness.params`): finite numbers, layer widths and shapes, "one value or a list",
``auto`` or a value, file pins, normalization statistics, attack targets, and the
parameters every streamed dataset takes.

Each is an annotated type: the constraints (and, for the shared parameters, the
description) travel with it, so a plugin declares ``offset: Offset = 0`` and the check, the
error message and ``harness plugins NAME`` all come from here. Nothing here imports torch:
``harness validate`` builds every plugin of a suite.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BeforeValidator, Discriminator, FiniteFloat, Tag,
                      ValidationError, WrapValidator)

from harness import Field, check_target

__all__ = ["Real", "Widths", "Shape", "one_or_many", "auto_or", "NonBlank", "Sha256",
           "InputShape", "NumClasses", "Mean", "Std", "mean_std", "Target", "Offset", "Limit",
           "Workers", "Transform", "Classes"]

_NUMBER = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


def _number_text(value: Any) -> Any:
    """A number written as text (``"1e-4"``, as YAML 1.1 readers return it) as the number."""
    if isinstance(value, str) and _NUMBER.match(value):
        return float(value)
    return value


def _as_list(value: Any) -> Any:
    """A tuple (from Python) as the list a suite would give."""
    return list(value) if isinstance(value, tuple) else value


#: a finite number (an integer is taken as a float; ``true`` is not a number)
Real = Annotated[FiniteFloat, BeforeValidator(_number_text)]
#: layer widths: a list of positive integers (``[]``: no layers)
Widths = Annotated[list[Annotated[int, Field(ge=1)]], BeforeValidator(_as_list)]
#: the shape of one input without the batch dimension, e.g. ``[3, 224, 224]``
Shape = Annotated[list[Annotated[int, Field(ge=1)]], BeforeValidator(_as_list),
                  Field(min_length=1)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


#: a non-empty string
NonBlank = Annotated[str, AfterValidator(_not_blank)]


def one_or_many(item: Any) -> Any:
    """``item`` or a non-empty list of them (a sweep: one row of results per value). Errors
    name the branch the value took: ``stddev: [0.1, -1]`` fails on its second item."""
    many = Annotated[list[item], BeforeValidator(_as_list), Field(min_length=1)]
    return Annotated[Union[Annotated[item, Tag("one")], Annotated[many, Tag("many")]],
                     Discriminator(lambda v: "many" if isinstance(v, (list, tuple)) else "one")]


def _auto(value: Any, handler: Any) -> Any:
    try:
        return handler(value)
    except ValidationError:
        raise ValueError("must be auto or a number") from None


def auto_or(item: Any) -> Any:
    """``auto`` or ``item``: text other than ``auto`` is an error saying so, anything else
    is checked as ``item``."""
    def which(value: Any) -> str:
        return "auto" if isinstance(value, str) and not _NUMBER.match(value) else "value"

    return Annotated[Union[Annotated[Literal["auto"], WrapValidator(_auto), Tag("auto")],
                           Annotated[item, Tag("value")]],
                     Discriminator(which)]


# ---------------------------------------------------------------------------- model files

def _sha256(value: str | None) -> str | None:
    from .models.files import check_sha256

    return check_sha256(value)


#: a file's SHA-256 pin, as 64 lower-case hex digits (``sha256:`` prefix and upper case
#: accepted)
Sha256 = Annotated[Union[str, None], AfterValidator(_sha256),
                   Field(description="the file's SHA-256 digest (64 hex digits), checked "
                                     "against the file before anything runs")]
InputShape = Annotated[Union[Shape, None],
                       Field(description="the shape of one input, without the batch "
                                         "dimension, e.g. [3, 224, 224] (default: the data's)")]
NumClasses = Annotated[Union[int, None],
                       Field(ge=1, description="the number of classes the model outputs "
                                               "(checked; default: read from the model)")]
_STATS = "one value per channel, or one for all; imagenet: torchvision's ImageNet statistics"
Mean = Annotated[Union[Real, list[Real], str, None],
                 Field(description="subtracted from the [0, 1] inputs before the network, "
                                   f"with std ({_STATS})")]
Std = Annotated[Union[Real, list[Real], str, None],
                Field(description=f"the inputs are divided by it after the mean ({_STATS})")]


def mean_std(params: Any) -> Any:
    """A ``model_validator(mode="after")`` for models taking ``mean`` and ``std``: both or
    neither, ``imagenet`` expanded, one number made a list (see
    :func:`harness_plugins.models.files.check_mean_std`)."""
    from .models.files import check_mean_std

    params.mean, params.std = check_mean_std(params.mean, params.std)
    return params


# ---------------------------------------------------------------------------- attacks

def _no_bool_target(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("true/false is not a target: use next, random, least-likely or a "
                         "class label")
    return value


def _target(value: str | int) -> str | int:
    return check_target(value)


#: an attack's target: ``next``, ``random``, ``least-likely`` or a class label
Target = Annotated[Union[str, int], BeforeValidator(_no_bool_target), AfterValidator(_target),
                   Field(description="next (y + 1 mod K), random (uniform over the other "
                                     "labels), least-likely, or a class label")]


# ---------------------------------------------------------------------------- datasets

def _transform(value: Any) -> Any:
    from .datasets import transforms

    transforms.parse(value)
    return value


Offset = Annotated[int, Field(ge=0, description="the first image used (the ones before it "
                                                "are skipped)")]
Limit = Annotated[Union[int, None], Field(ge=1, description="at most this many images "
                                                            "(default: all)")]
Workers = Annotated[int, Field(ge=0, description="DataLoader worker processes reading the "
                                                 "images (0: read in the main process)")]
Transform = Annotated[Any, AfterValidator(_transform),
                      Field(description="applied to each image as it is read: a preset "
                                        "(imagenet) or a list of steps such as "
                                        "[{resize: 32}, grayscale_to_rgb]")]
#: a class-index mapping: a list of names (index = position), ``{name: index}``, or a file
Classes = Union[list[str], dict[str, int], str, None]
