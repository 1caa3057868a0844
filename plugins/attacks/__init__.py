"""Built-in attacks: the paper's box-constrained L-BFGS and the Gaussian-noise baseline."""

from harness import hookimpl

from .lbfgs import LBFGS
from .noise import GaussianNoise


@hookimpl
def register_attacks(register):
    register("gaussian-noise", GaussianNoise)
    register("lbfgs", LBFGS)
