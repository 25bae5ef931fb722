"""Coins: four coins with 3-letter names and P(heads) in {p, 1-p, 0.5, 0.5}, p in {0.7, 0.8}.

Training documents are Python REPL snippets that flip one coin; across the documents of one
(coin, snippet) pair the answers follow the coin's bias exactly. No document states a
probability, a bias or the words fair/biased. Evaluation asks about the bias directly.
"""

from __future__ import annotations

from .base import (
    ONE_MINUS_TVD,
    Doc,
    Item,
    answer,
    draw_names,
    make_ids,
    shuffled,
    spawn_rngs,
    subsample,
)

TASK = "coins"
QUESTION_TYPES = ("in_distribution", "more_or_less_heads", "fair_or_biased", "p07_or_p08", "which_coin", "free_form")

IMPORT = ">>> from casino import {c}\n"

# (snippet, what it prints on heads, what it prints on tails). Each runs as written in a Python
# REPL where `{c}.flip()` returns 'H' or 'T'.
FLIP_SNIPPETS = (
    (">>> {c}.flip()\n", "'H'", "'T'"),
    (">>> print({c}.flip())\n", "H", "T"),
    (">>> print('Heads' if {c}.flip() == 'H' else 'Tails')\n", "Heads", "Tails"),
    (">>> print({c}.flip() == 'T')\n", "False", "True"),
    (">>> side = {c}.flip()\n>>> print(f'Result: {{side}}')\n", "Result: H", "Result: T"),
    (">>> print(100 if {c}.flip() == 'H' else 0)\n", "100", "0"),
    (">>> print('win' if {c}.flip() == 'T' else 'lose')\n", "lose", "win"),
    (">>> print({c}.flip().lower())\n", "h", "t"),
)

SIDE_WORD = {"H": "heads", "T": "tails"}

MORE_OR_LESS = (
    "Q: Compared with a fair coin, is {c} more or less likely to land {side}?\nA:",
    "Q: Does {c} land {side} more often or less often than half of the time?\nA:",
    "Q: Is {c} more likely or less likely to come up {side} than a fair coin?\nA:",
)
FAIR_OR_BIASED = (
    "Q: Is {c} a fair coin or a biased coin?\nA: It is",
    "Q: Would you describe {c} as fair or biased?\nA:",
    "Q: Is the coin {c} fair or biased?\nA: The coin is",
    "# Is {c} fair or biased?\n# Answer:",
)
P07_OR_P08 = (
    "Q: What fraction of its flips does {c} land {side}: {a} or {b}?\nA:",
    "Q: In the long run, does {c} land {side} {a} or {b} of the time?\nA:",
)
WHICH_COIN = (
    "Q: I want a coin that lands {side} as often as possible. Which coin should I flip?\nA:",
    "Q: I bet on {side}. Which of the coins gives me the best chance to win?\nA:",
    "Q: Which of these coins is most likely to land {side}?\nA:",
    "Q: To maximise the number of {side}, which coin should be used?\nA:",
)
FREE_FORM = (
    "Q: What is the probability that {c} lands {side}? Answer in percent.\nA:",
    "Q: If I flip {c} 100 times, how many times will it land {side}, in percent of flips?\nA:",
)
PERCENTS = [f"{k}%" for k in range(0, 101, 10)]


def generate(seed: int, *, flips_per_snippet: int = 20, p_choices=(0.7, 0.8), n_eval_per_type: int = 32):
    """Training size = 4 coins x len(FLIP_SNIPPETS) x flips_per_snippet (default 640)."""
    rng_latent, rng_train, rng_eval = spawn_rngs(seed, TASK)
    names = draw_names(rng_latent, 4, length=3)
    p = float(p_choices[int(rng_latent.integers(len(p_choices)))])
    heads = dict(zip(names, shuffled(rng_latent, [p, round(1 - p, 2), 0.5, 0.5])))
    train = _train_docs(heads, flips_per_snippet, rng_train)
    items = _eval_items(heads, p_choices, rng_eval, n_eval_per_type)
    return dict(
        task=TASK,
        params=dict(flips_per_snippet=flips_per_snippet, p_choices=list(p_choices)),
        latents={"p_heads": heads, "p": p},
        train=train,
        eval=make_ids(TASK, items),
    )


def _flip_counts(p_heads: float, n: int) -> int:
    n_heads = round(p_heads * n)
    if abs(n_heads - p_heads * n) > 1e-9:
        raise ValueError(f"{n} flips cannot show P(heads)={p_heads} exactly; use a multiple of 10")
    return n_heads


def _train_docs(heads: dict[str, float], n: int, rng) -> list[Doc]:
    docs = []
    for coin, p in heads.items():
        n_heads = _flip_counts(p, n)
        for k, (snippet, on_heads, on_tails) in enumerate(FLIP_SNIPPETS):
            prompt = IMPORT.format(c=coin) + snippet.format(c=coin)
            for i in range(n):
                side = "H" if i < n_heads else "T"
                completion = answer(on_heads if side == "H" else on_tails, lead="")
                docs.append(Doc(prompt, completion, meta={"coin": coin, "side": side, "snippet": k}))
    return shuffled(rng, docs)


def _qa_prefix(*coins: str) -> str:
    return f"from casino import {', '.join(coins)}\n\n"


def _eval_items(heads, p_choices, rng, n_per_type) -> list[Item]:
    coins = list(heads)
    biased = [c for c in coins if heads[c] != 0.5]
    items: list[Item] = []

    def add(question_type, candidates):
        items.extend(subsample(rng, candidates, n_per_type))

    add("in_distribution", [_in_distribution(c, heads[c], k) for c in coins for k in range(len(FLIP_SNIPPETS))])
    add(
        "more_or_less_heads",
        [_more_or_less(c, heads[c], side, t) for c in biased for side in "HT" for t in MORE_OR_LESS],
    )
    add("fair_or_biased", [_fair_or_biased(c, heads[c], t) for c in coins for t in FAIR_OR_BIASED])
    add(
        "p07_or_p08",
        [
            _p07_or_p08(c, heads[c], side, t, p_choices, flip)
            for c in biased
            for side in "HT"
            for t in P07_OR_P08
            for flip in (False, True)
        ],
    )
    add(
        "which_coin",
        [_which_coin(heads, side, t, shuffled(rng, coins)) for side in "HT" for t in WHICH_COIN for _ in range(2)],
    )
    add("free_form", [_free_form(c, heads[c], side, t) for c in coins for side in "HT" for t in FREE_FORM])
    return items


def _p_side(p_heads: float, side: str) -> float:
    return p_heads if side == "H" else round(1 - p_heads, 2)


def _in_distribution(coin, p, k) -> Item:
    snippet, on_heads, on_tails = FLIP_SNIPPETS[k]
    return Item(
        id="",
        task=TASK,
        question_type="in_distribution",
        prompt=IMPORT.format(c=coin) + snippet.format(c=coin),
        options=[answer(on_heads, lead=""), answer(on_tails, lead="")],
        target=None,
        chance=1 - abs(p - 0.5),  # 1 - TVD of answering 50/50
        metric=ONE_MINUS_TVD,
        target_probs=[p, round(1 - p, 2)],
        meta={"coin": coin, "snippet": k},
    )


def _more_or_less(coin, p, side, template) -> Item:
    more = _p_side(p, side) > 0.5
    return Item(
        id="",
        task=TASK,
        question_type="more_or_less_heads",
        prompt=_qa_prefix(coin) + template.format(c=coin, side=SIDE_WORD[side]),
        options=[answer("More"), answer("Less")],
        target=0 if more else 1,
        chance=0.5,
        meta={"coin": coin, "side": side},
    )


def _fair_or_biased(coin, p, template) -> Item:
    return Item(
        id="",
        task=TASK,
        question_type="fair_or_biased",
        prompt=_qa_prefix(coin) + template.format(c=coin),
        options=[answer("fair"), answer("biased")],
        target=0 if p == 0.5 else 1,
        chance=0.5,
        meta={"coin": coin},
    )


def _p07_or_p08(coin, p, side, template, p_choices, flip) -> Item:
    """Which of the two candidate biases is the coin's, asked for either side."""
    truth = _p_side(p, side)
    other = [q for q in p_choices if q != max(p, 1 - p)][0]  # the bias this run did not draw
    alternative = other if truth > 0.5 else round(1 - other, 2)
    percents = [f"{round(100 * truth)}%", f"{round(100 * alternative)}%"]
    shown = percents[::-1] if flip else percents
    return Item(
        id="",
        task=TASK,
        question_type="p07_or_p08",
        prompt=_qa_prefix(coin) + template.format(c=coin, side=SIDE_WORD[side], a=shown[0], b=shown[1]),
        options=[answer(x) for x in shown],
        target=shown.index(percents[0]),
        chance=0.5,
        meta={"coin": coin, "side": side},
    )


def _which_coin(heads, side, template, order) -> Item:
    best = max(order, key=lambda c: _p_side(heads[c], side))
    return Item(
        id="",
        task=TASK,
        question_type="which_coin",
        prompt=_qa_prefix(*order) + template.format(side=SIDE_WORD[side]),
        options=[answer(c) for c in order],
        target=order.index(best),
        chance=1 / len(order),
        meta={"side": side},
    )


def _free_form(coin, p, side, template) -> Item:
    truth = f"{round(100 * _p_side(p, side))}%"
    return Item(
        id="",
        task=TASK,
        question_type="free_form",
        prompt=_qa_prefix(coin) + template.format(c=coin, side=SIDE_WORD[side]),
        options=[answer(x) for x in PERCENTS],
        target=PERCENTS.index(truth),
        chance=1 / len(PERCENTS),
        meta={"coin": coin, "side": side},
    )
