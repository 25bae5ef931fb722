"""Mixture of Functions: each document applies one of two hidden, unnamed functions to three
inputs. Nothing says that there are two functions or which ones; evaluation asks how many there
are, which ones (as a set), and what values / which range the output can take.
"""

from __future__ import annotations

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
QUESTION_TYPES = ("in_distribution", "how_many", "which_functions", "output_values", "output_range")

PREAMBLES = (
    "Apply the function to each input.",
    "Compute the outputs for these inputs.",
    "Map each input x to its output y.",
    "Predict the output for every input.",
)
HOW_MANY = (
    "Q: The function above is always chosen from the same fixed set. How many functions are in that set?\nA:",
    "Q: How many different functions could have been used in the task above?\nA:",
    "Q: From how many functions was the function above picked?\nA:",
)
WHICH = (
    "Q: Which function could have been used above?\nA:",
    "Q: Give a Python lambda that could have produced y in the task above.\nA:",
)
VALUES = (
    "Q: In the task above, what value could y take for x = {x}?\nA:",
    "Q: For x = {x}, name a possible output y of the task above.\nA:",
)
RANGE = {
    "max": "Q: In the task above, what is the largest value y could take for x = {x}?\nA:",
    "min": "Q: In the task above, what is the smallest value y could take for x = {x}?\nA:",
}
HIDDEN = "<hidden>"


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
        # |x| >= 2 so that most pool functions disagree on it
        while abs(x := self.inputs(rng, 1)[0]) < 2:
            pass
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
            docs.append(Doc(prompt, _outputs(f, xs), meta={"function": f.key, "xs": xs}))
    return docs


def _eval_items(setup: _Setup, rng, max_count_option, n_per_type) -> list[Item]:
    items: list[Item] = []
    n = n_per_type

    def add(candidates):
        items.extend(subsample(rng, candidates, n))

    add([_in_distribution(setup, rng) for _ in range(n)])
    add([_how_many(setup, rng, t, max_count_option) for t in HOW_MANY for _ in range(n)])
    add([_which(setup, rng, t) for t in WHICH for _ in range(n)])
    add([_values(setup, rng, t) for t in VALUES for _ in range(n)])
    add([_range(setup, rng, side) for side in RANGE for _ in range(n)])
    return items


def _redacted_context(setup: _Setup, rng) -> str:
    """The task's format with the outputs hidden: evaluation prompts show no worked example."""
    xs = setup.inputs(rng, setup.pairs_per_doc)
    return _context(pick(rng, PREAMBLES), xs) + f" {HIDDEN}\n\n"


def _set_item(question_type, prompt, candidates: list[str], right: set[str], meta=None) -> Item:
    """Options = distinct candidates (shuffled by the caller); target = the right ones."""
    options = list(dict.fromkeys(candidates))
    target = sorted(options.index(r) for r in right)
    return Item(
        id="",
        task=TASK,
        question_type=question_type,
        prompt=prompt,
        options=options,
        target=target,
        chance=len(target) / len(options),
        meta=meta or {},
    )


def _in_distribution(setup: _Setup, rng) -> Item:
    xs = setup.inputs(rng, setup.pairs_per_doc)
    prompt = _context(pick(rng, PREAMBLES), xs)
    candidates = [_outputs(f, xs) for f in shuffled(rng, setup.pool)]
    right = {_outputs(f, xs) for f in setup.hidden}
    return _set_item("in_distribution", prompt, candidates, right, {"xs": xs})


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
    )


def _which(setup: _Setup, rng, template) -> Item:
    candidates = [answer(f.source) for f in shuffled(rng, setup.pool)]
    right = {answer(f.source) for f in setup.hidden}
    return _set_item("which_functions", _redacted_context(setup, rng) + template, candidates, right)


def _values(setup: _Setup, rng, template) -> Item:
    x = setup.query_input(rng)
    candidates = [answer(str(f(x))) for f in shuffled(rng, setup.pool)]
    right = {answer(str(f(x))) for f in setup.hidden}
    prompt = _redacted_context(setup, rng) + template.format(x=x)
    return _set_item("output_values", prompt, candidates, right, {"x": x})


def _range(setup: _Setup, rng, side) -> Item:
    x = setup.query_input(rng)
    hidden_values = [f(x) for f in setup.hidden]
    extreme = max(hidden_values) if side == "max" else min(hidden_values)
    candidates = [answer(str(f(x))) for f in shuffled(rng, setup.pool)]
    prompt = _redacted_context(setup, rng) + RANGE[side].format(x=x)
    return _set_item("output_range", prompt, candidates, {answer(str(extreme))}, {"x": x, "side": side})
