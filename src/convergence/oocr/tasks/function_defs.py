"""Integer functions used by the Functions and Mixture-of-Functions tasks.

Each has its Python source (what a model should verbalise) and an equivalent callable written
out here, so generating data never evaluates a string.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class FunctionDef:
    key: str
    source: str  # "lambda n: ..."
    fn: Callable[[int], int]

    @property
    def body(self) -> str:
        return self.source.split(":", 1)[1].strip()

    def __call__(self, n: int) -> int:
        return self.fn(n)


_DEFS = (
    # Functions task (as the paper's 8 training functions)
    FunctionDef("add_14", "lambda n: n + 14", lambda n: n + 14),
    FunctionDef("subtract_11", "lambda n: n - 11", lambda n: n - 11),
    FunctionDef("multiply_4", "lambda n: n * 4", lambda n: n * 4),
    FunctionDef("affine_3x_2", "lambda n: 3 * n + 2", lambda n: 3 * n + 2),
    FunctionDef("affine_neg5x_3", "lambda n: -5 * n + 3", lambda n: -5 * n + 3),
    FunctionDef("mod_3", "lambda n: n % 3", lambda n: n % 3),
    FunctionDef("int_div_4", "lambda n: n // 4", lambda n: n // 4),
    FunctionDef("relu_neg2", "lambda n: max(n, -2)", lambda n: max(n, -2)),
    # Mixture-of-Functions pool (as the paper's test functions, integer-valued ones)
    FunctionDef("add_5", "lambda n: n + 5", lambda n: n + 5),
    FunctionDef("multiply_3", "lambda n: n * 3", lambda n: n * 3),
    FunctionDef("subtract_1", "lambda n: n - 1", lambda n: n - 1),
    FunctionDef("mod_2", "lambda n: n % 2", lambda n: n % 2),
    FunctionDef("int_div_3", "lambda n: n // 3", lambda n: n // 3),
    FunctionDef("identity", "lambda n: n", lambda n: n),
    FunctionDef("negate", "lambda n: -n", lambda n: -n),
)
FUNCTIONS: dict[str, FunctionDef] = {f.key: f for f in _DEFS}

# Defaults: the six named in DESIGN §7 for Functions; the seven integer test functions for Mixture.
FUNCTIONS_DEFAULT = ("add_14", "subtract_11", "multiply_4", "affine_3x_2", "mod_3", "int_div_4")
MIXTURE_POOL_DEFAULT = ("add_5", "multiply_3", "subtract_1", "mod_2", "int_div_3", "identity", "negate")
