"""Seeded generators for the five OOCR tasks.

    data = generate("coins", seed=0)            # TaskData
    data.train  -> list[Doc]   (prompt, completion; loss on the completion only)
    data.eval   -> list[Item]  (question_type, prompt, options, target, chance, metric, check)
    data.latents               the hidden truth, for analysis; never in a training document

Every seed draws fresh latent names (and, where the task has them, fresh latent values).
Size parameters are keyword arguments of each task's `generate` (see `task_params(task)`).
"""

from __future__ import annotations

import inspect

from . import coins, functions, locations, mixture, parity
from .base import EXEC, ONE_MINUS_TVD, P_TARGET, Doc, Item, TaskData

_MODULES = {m.TASK: m for m in (coins, functions, mixture, parity, locations)}
TASKS = tuple(_MODULES)
QUESTION_TYPES = {name: m.QUESTION_TYPES for name, m in _MODULES.items()}

__all__ = [
    "EXEC",
    "ONE_MINUS_TVD",
    "P_TARGET",
    "QUESTION_TYPES",
    "TASKS",
    "Doc",
    "Item",
    "TaskData",
    "generate",
    "task_params",
]


def generate(task: str, seed: int, **size_params) -> TaskData:
    """Training documents and evaluation items of `task` for one run (seed)."""
    try:
        module = _MODULES[task]
    except KeyError:
        raise ValueError(f"unknown OOCR task {task!r}; known: {', '.join(TASKS)}") from None
    return TaskData(seed=seed, **module.generate(seed, **size_params))


def task_params(task: str) -> dict:
    """The size/shape parameters `generate(task, ...)` accepts, with their defaults."""
    signature = inspect.signature(_MODULES[task].generate)
    return {name: p.default for name, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}
