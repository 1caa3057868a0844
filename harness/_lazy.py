"""``torch`` and ``numpy``, imported on first use: the modules plugin packages import (``harness``'s public
API) stay free of torch's import cost, so that ``harness validate`` and ``harness plugins``
start in a fraction of a second."""

from __future__ import annotations

import importlib
import types
from typing import Any


class LazyModule(types.ModuleType):
    """A module that imports the real one the first time an attribute is read."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_real"] = None

    def _load(self) -> Any:
        real = self.__dict__["_real"]
        if real is None:
            real = importlib.import_module(self.__name__)
            self.__dict__["_real"] = real
        return real

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)


torch = LazyModule("torch")
numpy = LazyModule("numpy")
