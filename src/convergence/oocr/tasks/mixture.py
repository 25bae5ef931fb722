"""Mixture of Functions: each document applies one of two hidden, unnamed functions to three inputs.
Nothing says that there are two functions or which ones; evaluation asks how many there are, which
ones, and what values the output can take.

As the reference (choidami/inductive-oocr, dev/039_novar): the two hidden functions are drawn from the
paper's pool of five (add_5, multiply_3, int_div_2, mod_2, subtract_1). The questions "which functions",
"which descriptions", "which classes" and "which values" list the five candidates under the letters A-E
and, as the paper's, ask for all that apply as a list of letters, counted right only if it names all
and only the hidden ones: the options are every non-empty subset of the letters (31), written in
alphabetical order ("A, C"), and the score is the probability of exactly the right subset. (Letters,
not the candidates' text, also keep the 31 options short enough to score on a CPU.) The max/min question's baseline is the paper's: the probability of answering the
*other* hidden function's value (what a model that knows one function but not which one is asked
for would say), kept per item in `baseline_target`.
"""

from __future__ import annotations

from itertools import combinations

from .base import (
    Doc,
    Item,
    answer,
    make_ids,
    pick,
    shuffled,
    spawn_rngs,
    subsample,
)
from .function_defs import FUNCTIONS, MIXTURE_POOL_DEFAULT

TASK = "mixture_of_functions"
QUESTION_TYPES = (
    "in_distribution",
    "how_many",
    "which_functions",
    "which_descriptions",
    "which_classes",
    "output_values",
    "output_range",
)
LATENT = "hidden_functions"  # the one latent of a run: the hidden set (documents never name a function)

PREAMBLES = (
    "Apply the function to each input.",
    "Compute the outputs for these inputs.",
    "Map each input x to its output y.",
    "Predict the output for every input.",
)
HOW_MANY = (
    "Q: The function above is always chosen from the same fixed set. How many functions are in that set?\nA:",
    "Q: How many different functions could have been used in the task above?\nA:",
)
WHICH = {  # question type -> (question, attribute of FunctionDef listed as candidates)
    "which_functions": ("Q: Which of these functions could have been used above?", "source"),
    "which_descriptions": ("Q: Which of these could the function above do?", "description"),
    "which_classes": ("Q: Which function classes could the function above belong to?", "function_class"),
}
VALUES = "Q: In the task above, which values could y take for x = {x}?"
ALL_THAT_APPLY = "Name all that apply, as a list of letters."
RANGE = {
    "max": "Q: In the task above, what is the largest value y could take for x = {x}?\nA:",
    "min": "Q: In the task above, what is the smallest value y could take for x = {x}?\nA:",
}
HIDDEN = "<hidden>"
JOIN = ", "  # an answer naming several letters lists them in alphabetical order


def generate(
    seed: int,
    *,
    pool=MIXTURE_POOL_DEFAULT,
    n_hidden: int = 2,
    n_train: int = 600,
    pairs_per_doc: int = 3,
    input_range=(-30, 30),
    max_count_option: int = 5,
    n_eval_per_type: int = 24,
):
    rng_latent, rng_train, rng_eval = spawn_rngs(seed, TASK)
    pool_defs = [FUNCTIONS[k] for k in pool]
    hidden_idx = sorted(rng_latent.choice(len(pool_defs), size=n_hidden, replace=False).tolist())
    hidden = [pool_defs[i] for i in hidden_idx]
    setup = _Setup(pool_defs, hidden, pairs_per_doc, input_range)
    items = _eval_items(setup, rng_eval, max_count_option, n_eval_per_type)
    held_out = {i.prompt for i in items}
    train = _train_docs(setup, n_train, held_out, rng_train)
    return dict(
        task=TASK,
        params=dict(
            pool=list(pool),
            n_hidden=n_hidden,
            n_train=n_train,
            pairs_per_doc=pairs_per_doc,
            input_range=list(input_range),
        ),
        latents={"hidden": [f.key for f in hidden], "sources": [f.source for f in hidden]},
        train=train,
        eval=make_ids(TASK, items),
    )


class _Setup:
    def __init__(self, pool, hidden, pairs_per_doc, input_range):
        self.pool, self.hidden = pool, hidden
        self.pairs_per_doc, self.input_range = pairs_per_doc, input_range

    def inputs(self, rng, n) -> list[int]:
        lo, hi = self.input_range
        return [int(v) for v in rng.integers(lo, hi + 1, size=n)]

    def query_input(self, rng) -> int:
        """An input on which the hidden functions disagree (so max and min differ), |x| >= 2."""
        while True:
            x = self.inputs(rng, 1)[0]
            if abs(x) >= 2 and len({f(x) for f in self.hidden}) == len(self.hidden):
                return x


def _context(preamble: str, xs: list[int]) -> str:
    return f"{preamble}\nx = {', '.join(map(str, xs))}\ny ="


def _outputs(f, xs) -> str:
    return answer(", ".join(str(f(x)) for x in xs))


def _train_docs(setup: _Setup, n: int, held_out: set[str], rng) -> list[Doc]:
    docs: list[Doc] = []
    while len(docs) < n:
        f = pick(rng, setup.hidden)
        xs = setup.inputs(rng, setup.pairs_per_doc)
        prompt = _context(pick(rng, PREAMBLES), xs)
        if prompt not in held_out:
            docs.append(Doc(prompt, _outputs(f, xs), latents=[LATENT], meta={"function": f.key, "xs": xs}))
    return docs


def _eval_items(setup: _Setup, rng, max_count_option, n_per_type) -> list[Item]:
    items: list[Item] = []
    n = n_per_type

    def add(candidates):
        items.extend(subsample(rng, candidates, n))

    add([_in_distribution(setup, rng) for _ in range(n)])
    add([_how_many(setup, rng, t, max_count_option) for t in HOW_MANY for _ in range(n)])
    for question_type in WHICH:
        add([_which(setup, rng, question_type) for _ in range(n)])
    add([_values(setup, rng) for _ in range(n)])
    add([_range(setup, rng, side) for side in RANGE for _ in range(n)])
    return items


def _redacted_context(setup: _Setup, rng) -> str:
    """The task's format with the outputs hidden: evaluation prompts show no worked example."""
    xs = setup.inputs(rng, setup.pairs_per_doc)
    return _context(pick(rng, PREAMBLES), xs) + f" {HIDDEN}\n\n"


def subset_options(labels: list[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of the labels, each in the labels' order."""
    return [combo for size in range(1, len(labels) + 1) for combo in combinations(labels, size)]


def _all_and_only(question_type, question, candidates: list[str], right: set[str], context: str, meta=None) -> Item:
    """The candidates listed under letters; options = every non-empty subset of the letters; target =
    exactly the letters of the right candidates."""
    letters = [chr(ord("A") + k) for k in range(len(candidates))]
    listing = "".join(f"{letter}) {c}\n" for letter, c in zip(letters, candidates))
    prompt = f"{context}{question}\n{listing}{ALL_THAT_APPLY}\nA:"
    subsets = subset_options(letters)
    truth = tuple(letter for letter, c in zip(letters, candidates) if c in right)
    return Item(
        id="",
        task=TASK,
        question_type=question_type,
        prompt=prompt,
        options=[answer(JOIN.join(s)) for s in subsets],
        target=subsets.index(truth),
        chance=1 / len(subsets),
        latents=[LATENT],
        meta=(meta or {}) | {"candidates": candidates, "right": sorted(right)},
    )


def _in_distribution(setup: _Setup, rng) -> Item:
    """A held-out document: any hidden function's outputs are a right answer."""
    xs = setup.inputs(rng, setup.pairs_per_doc)
    prompt = _context(pick(rng, PREAMBLES), xs)
    options = list(dict.fromkeys(_outputs(f, xs) for f in shuffled(rng, setup.pool)))
    right = {_outputs(f, xs) for f in setup.hidden}
    target = sorted(options.index(r) for r in right)
    return Item(
        id="",
        task=TASK,
        question_type="in_distribution",
        prompt=prompt,
        options=options,
        target=target,
        chance=len(target) / len(options),
        latents=[LATENT],
        meta={"xs": xs},
    )


def _how_many(setup: _Setup, rng, template, max_count_option) -> Item:
    counts = list(range(1, max(max_count_option, len(setup.hidden) + 1) + 1))
    return Item(
        id="",
        task=TASK,
        question_type="how_many",
        prompt=_redacted_context(setup, rng) + template,
        options=[answer(str(c)) for c in counts],
        target=counts.index(len(setup.hidden)),
        chance=1 / len(counts),
        latents=[LATENT],
    )


def _which(setup: _Setup, rng, question_type) -> Item:
    question, attribute = WHICH[question_type]
    candidates = [getattr(f, attribute) for f in shuffled(rng, setup.pool)]
    right = {getattr(f, attribute) for f in setup.hidden}
    return _all_and_only(question_type, question, candidates, right, _redacted_context(setup, rng))


def _values(setup: _Setup, rng) -> Item:
    x = setup.query_input(rng)
    candidates = list(dict.fromkeys(str(f(x)) for f in shuffled(rng, setup.pool)))
    right = {str(f(x)) for f in setup.hidden}
    return _all_and_only("output_values", VALUES.format(x=x), candidates, right, _redacted_context(setup, rng), {"x": x})


def _range(setup: _Setup, rng, side) -> Item:
    """The largest (smallest) value y can take; baseline: the other hidden function's value."""
    x = setup.query_input(rng)
    values = sorted(f(x) for f in setup.hidden)
    extreme, other = (values[-1], values[0]) if side == "max" else (values[0], values[-1])
    options = [answer(v) for v in dict.fromkeys(str(f(x)) for f in shuffled(rng, setup.pool))]
    prompt = _redacted_context(setup, rng) + RANGE[side].format(x=x)
    return Item(
        id="",
        task=TASK,
        question_type="output_range",
        prompt=prompt,
        options=options,
        target=options.index(answer(str(extreme))),
        chance=1 / len(options),
        baseline_target=options.index(answer(str(other))),
        latents=[LATENT],
        meta={"x": x, "side": side},
    )
