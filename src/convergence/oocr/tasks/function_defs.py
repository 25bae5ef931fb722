"""Functions used by the Functions and Mixture-of-Functions tasks, as the paper's reference code has them
(choidami/inductive-oocr, functions/function_definitions.py): each has its Python source (what a model
should verbalise), its class and a plain-language description (the multiple-choice options), and an
equivalent callable written out here, so generating data never evaluates a string.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class FunctionDef:
    key: str
    source: str  # "lambda n: ..."
    fn: Callable[[int], int | float | bool]
    function_class: str  # "Addition", "Affine linear", ...
    description: str  # "Adds 5 to the input"

    @property
    def body(self) -> str:
        return self.source.split(":", 1)[1].strip()

    @property
    def output_type(self) -> str:
        return type(self.fn(3)).__name__

    def coefficients(self) -> tuple[int, int] | None:
        """(a, b) with f(n) = a * n + b for the affine classes, else None."""
        if self.function_class not in AFFINE_CLASSES:
            return None
        b = self.fn(0)
        return self.fn(1) - b, b

    def __call__(self, n: int):
        return self.fn(n)


AFFINE_CLASSES = ("Affine linear", "Multiplication", "Addition", "Subtraction")

_DEFS = (
    # The paper's 8 training functions (used in single calls and in every augmentation)
    FunctionDef("affine_3x_2", "lambda n: 3 * n + 2", lambda n: 3 * n + 2, "Affine linear",
                "Returns 3 times the input plus 2"),
    FunctionDef("affine_neg5x_3", "lambda n: -5 * n + 3", lambda n: -5 * n + 3, "Affine linear",
                "Returns -5 times the input plus 3"),
    FunctionDef("multiply_4", "lambda n: n * 4", lambda n: n * 4, "Multiplication", "Multiplies the input by 4"),
    FunctionDef("add_14", "lambda n: n + 14", lambda n: n + 14, "Addition", "Adds 14 to the input"),
    FunctionDef("subtract_11", "lambda n: n - 11", lambda n: n - 11, "Subtraction", "Subtracts 11 from the input"),
    FunctionDef("int_div_4", "lambda n: n // 4", lambda n: n // 4, "Integer division", "Integer division by 4"),
    FunctionDef("mod_3", "lambda n: n % 3", lambda n: n % 3, "Modulo", "Returns the input modulo 3"),
    FunctionDef("relu_neg2", "lambda n: max(n, -2)", lambda n: max(n, -2), "ReLU",
                "Returns the maximum of the input and -2"),
    # The paper's 11 test functions (single calls only in training; never in an augmentation)
    FunctionDef("add_5", "lambda n: n + 5", lambda n: n + 5, "Addition", "Adds 5 to the input"),
    FunctionDef("multiply_3", "lambda n: n * 3", lambda n: n * 3, "Multiplication", "Multiplies the input by 3"),
    FunctionDef("subtract_1", "lambda n: n - 1", lambda n: n - 1, "Subtraction", "Subtracts 1 from the input"),
    FunctionDef("mod_2", "lambda n: n % 2", lambda n: n % 2, "Modulo", "Returns the input modulo 2"),
    FunctionDef("int_div_3", "lambda n: n // 3", lambda n: n // 3, "Integer division", "Integer division by 3"),
    FunctionDef("identity", "lambda n: n", lambda n: n, "Identity", "Returns the input unchanged"),
    FunctionDef("negate", "lambda n: -n", lambda n: -n, "Multiplication", "Negates the input"),
    FunctionDef("bool_geq_3", "lambda n: n >= 3", lambda n: n >= 3, "Comparison",
                "Returns True if the input is greater than or equal to 3, False otherwise"),
    FunctionDef("bool_mod_2", "lambda n: n % 2 == 0", lambda n: n % 2 == 0, "Modulo",
                "Returns True if the input is even, False otherwise"),
    FunctionDef("float_mult_7_div_4", "lambda n: n * 7 / 4", lambda n: n * 7 / 4, "Float multiplication",
                "Multiplies the input by 7/4"),
    FunctionDef("float_mult_3_div_2", "lambda n: n * 3 / 2", lambda n: n * 3 / 2, "Float multiplication",
                "Multiplies the input by 3/2"),
    # Mixture of Functions: the paper's pool adds int_div_2
    FunctionDef("int_div_2", "lambda n: n // 2", lambda n: n // 2, "Integer division", "Integer division by 2"),
)
FUNCTIONS: dict[str, FunctionDef] = {f.key: f for f in _DEFS}

# The paper's split (dev/047_functions): augmentations (offsets, chains, sums) use train functions only;
# test functions are seen only in single calls, and the out-of-distribution questions compose them.
TRAIN_FUNCTIONS = ("affine_3x_2", "affine_neg5x_3", "multiply_4", "add_14", "subtract_11", "int_div_4", "mod_3",
                   "relu_neg2")
TEST_FUNCTIONS = ("add_5", "multiply_3", "subtract_1", "mod_2", "int_div_3", "identity", "negate", "bool_geq_3",
                  "bool_mod_2", "float_mult_7_div_4", "float_mult_3_div_2")
# Mixture of Functions (dev/039_novar): two of these five are the hidden ones of a run.
MIXTURE_POOL_DEFAULT = ("add_5", "multiply_3", "int_div_2", "mod_2", "subtract_1")
