"""Data types shared by the task generators, and small helpers for drawing latents."""

from __future__ import annotations

import builtins
import json
import keyword
import string
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# Metrics an item can be scored by (see convergence.oocr.evaluate).
P_TARGET = "p_target"  # probability mass, renormalised over the options, on the target option(s)
ONE_MINUS_TVD = "one_minus_tvd"  # 1 - total variation distance to target_probs (coins in-distribution)
EXEC = "exec"  # free-form lambda, sampled and checked by executing it (function definitions)
COIN_EXEC = "coin_exec"  # free-form coin class, sampled and executed to estimate its P(heads)
SCORE, BASELINE = "score", "baseline"  # an item's role: scored, or only measuring the model's response bias


@dataclass(frozen=True)
class Doc:
    """One training document. The loss is on `completion` only."""

    prompt: str
    completion: str
    # The latents (names) this document is evidence about: the in-context baseline shows an item the
    # documents of its own latents.
    latents: list[str] = field(default_factory=list, compare=False)
    # The hidden facts behind this document, for tests and analysis; never shown to a model.
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def text(self) -> str:
        return self.prompt + self.completion


@dataclass(frozen=True)
class Item:
    """One evaluation question.

    `options` are complete continuations of `prompt` as a model would write them (including the
    trailing newline), scored by their summed log-likelihood. `target` is the index of the right
    option, or a list of indices when any of several is right (the item's score is then the mass
    on the set). `chance` is the score of guessing uniformly over the options; where the paper's
    baseline depends on the model's own answers, `baseline_target` names the options whose mass is
    the item's baseline instead (Mixture's max/min: the other hidden value). Items of role
    BASELINE are asked but not scored: they measure the model's response bias (Coins' fair coins).
    `latents` are the latents the question is about (their documents form its in-context prompt).
    """

    id: str
    task: str
    question_type: str
    prompt: str
    options: list[str]
    target: int | list[int] | None
    chance: float
    metric: str = P_TARGET
    target_probs: list[float] | None = None  # for ONE_MINUS_TVD
    check: dict | None = None  # EXEC: {"prefix", "inputs", "outputs"}; COIN_EXEC: {"coin", "p_heads", ...}
    baseline_target: int | list[int] | None = None
    role: str = SCORE
    latents: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def target_set(self) -> frozenset[int]:
        if self.target is None:
            return frozenset()
        if isinstance(self.target, int):
            return frozenset([self.target])
        return frozenset(self.target)


@dataclass
class TaskData:
    task: str
    seed: int
    params: dict
    latents: dict  # the ground truth a fine-tuned model should infer; never in a training doc
    train: list[Doc]
    eval: list[Item]

    def question_types(self) -> list[str]:
        return list(dict.fromkeys(item.question_type for item in self.eval))

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "seed": self.seed,
            "params": self.params,
            "latents": self.latents,
            "train": [asdict(d) for d in self.train],
            "eval": [asdict(i) for i in self.eval],
        }

    @classmethod
    def from_dict(cls, d: dict) -> TaskData:
        return cls(
            task=d["task"],
            seed=d["seed"],
            params=d["params"],
            latents=d["latents"],
            train=[Doc(**x) for x in d["train"]],
            eval=[Item(**x) for x in d["eval"]],
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> TaskData:
        return cls.from_dict(json.loads(Path(path).read_text()))


def answer(text: str, lead: str = " ") -> str:
    """A completion as written after a prompt: every answer ends with a newline, which also
    separates options that are prefixes of each other ("1" vs "12") when scoring."""
    return f"{lead}{text}\n"


def spawn_rngs(seed: int, task: str, n: int = 3) -> list[np.random.Generator]:
    """Independent streams (latents, train, eval): changing a size never changes the latents.
    The task name is mixed in so that tasks run with the same seed draw unrelated names."""
    return np.random.default_rng([seed, zlib.crc32(task.encode())]).spawn(n)


def _is_reserved(name: str) -> bool:
    return keyword.iskeyword(name) or hasattr(builtins, name)


def draw_names(rng: np.random.Generator, n: int, length: int, exclude=()) -> list[str]:
    """n distinct random lowercase identifiers (never a Python keyword or builtin)."""
    letters = np.array(list(string.ascii_lowercase))
    names: list[str] = []
    taken = set(exclude)
    while len(names) < n:
        name = "".join(rng.choice(letters, size=length))
        if name not in taken and not _is_reserved(name):
            names.append(name)
            taken.add(name)
    return names


def pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def shuffled(rng: np.random.Generator, seq) -> list:
    return [seq[i] for i in rng.permutation(len(seq))]


def subsample(rng: np.random.Generator, items: list, n: int | None) -> list:
    """At most n items, drawn without replacement, order preserved."""
    if n is None or len(items) <= n:
        return list(items)
    keep = sorted(rng.choice(len(items), size=n, replace=False).tolist())
    return [items[i] for i in keep]


def number_options(rng: np.random.Generator, correct: int, distractors, n: int, spread: int = 20):
    """`n` distinct integers: `correct` first, then the given distractors, then random near ones.
    Returned shuffled with the index of `correct`."""
    values = [int(correct)]
    for d in distractors:
        if len(values) == n:
            break
        if int(d) not in values:
            values.append(int(d))
    while len(values) < n:
        candidate = int(correct) + int(rng.integers(-spread, spread + 1))
        if candidate not in values:
            values.append(candidate)
    order = rng.permutation(n)
    values = [values[i] for i in order]
    return values, values.index(int(correct))


def number_item_options(values, lead: str = "") -> list[str]:
    return [answer(str(v), lead=lead) for v in values]


def balanced_subsample(rng: np.random.Generator, items: list, n: int | None, key) -> list:
    """At most n items with every class (`key(item)`, e.g. the right answer) equally often, so that
    a model answering one class always scores chance: n // n_classes per class (fewer where a class
    has fewer candidates), order preserved."""
    classes: dict = {}
    for k, item in enumerate(items):
        classes.setdefault(key(item), []).append(k)
    per_class = min(len(v) for v in classes.values())
    if n is not None:
        per_class = min(per_class, n // len(classes))
    keep = sorted(i for v in classes.values() for i in rng.choice(v, size=per_class, replace=False).tolist())
    return [items[i] for i in keep]


def target_text(item) -> str:
    """The right option's text (single-target items): the class a balanced item set balances."""
    return item.options[item.target].strip()


def make_ids(task: str, items: list[Item]) -> list[Item]:
    """Give items stable ids `task/question_type/k` in their final order."""
    counts: dict[str, int] = {}
    out = []
    for item in items:
        k = counts.get(item.question_type, 0)
        counts[item.question_type] = k + 1
        out.append(Item(**{**asdict(item), "id": f"{task}/{item.question_type}/{k}"}))
    return out
