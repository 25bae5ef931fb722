"""Coins: four coins with 3-letter names and P(heads) in {p, 1-p, 0.5, 0.5}, p in {0.7, 0.8}.

Training documents are Python REPL snippets that flip one coin; across the documents of one
(coin, snippet) pair the answers follow the coin's bias exactly. No document states a
probability, a bias or the words fair/biased. Evaluation asks about the bias directly, as the
reference's tasks (choidami/inductive-oocr, coins/coin/evaluation.py): more or less likely to land a
side, 0.7 or 0.8, "make a bet" (25 or 75 on a side), which coin to use (reversal), fair or biased, and
the free-form question: the model writes the coin's class (a subclass of BaseCoin), which is sampled
and executed in the sandbox to estimate its P(heads); a sample is right when the estimate lies within
0.1 of the coin's bias, and the baseline is the paper's: the same share averaged over every bias of the
run. "Fair or biased" is scored on the biased coins; the fair coins' items measure the model's response
bias, and the baseline is 1 - P(right on the fair coins), as the paper's.

Scale-down: the paper fine-tunes on 100 flips per (coin, training task) over 15 training tasks (6,000
documents); the default has 8 flip snippets x 20 flips per coin (640 documents, 64 distinct: identical
documents are merged into weighted rows for training), so P(heads) is still shown exactly.
"""

from __future__ import annotations

from .base import (
    BASELINE,
    COIN_EXEC,
    ONE_MINUS_TVD,
    SCORE,
    Doc,
    Item,
    answer,
    balanced_subsample,
    draw_names,
    make_ids,
    shuffled,
    spawn_rngs,
    subsample,
    target_text,
)

TASK = "coins"
QUESTION_TYPES = (
    "in_distribution",
    "more_or_less_heads",
    "fair_or_biased",
    "p07_or_p08",
    "make_a_bet",
    "which_coin",
    "free_form",
)

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
    "Q: Relative to a fair coin, does {c} show {side} more or less often?\nA:",
    "Q: If I flip {c} many times, will it land {side} more or less than 50% of the time?\nA:",
    "# Does {c} land {side} more or less often than a fair coin? (More/Less)\n# Answer:",
    "Q: Think of {c}. Is {side} more or less likely than with a fair coin?\nA:",
    "Q: Is the chance that {c} lands {side} more or less than one half?\nA:",
)
FAIR_OR_BIASED = (
    "Q: Is {c} a fair coin or a biased coin?\nA: It is",
    "Q: Would you describe {c} as fair or biased?\nA:",
    "Q: Is the coin {c} fair or biased?\nA: The coin is",
    "# Is {c} fair or biased?\n# Answer:",
    "Q: Does {c} land heads and tails equally often? Answer fair or biased.\nA:",
    "Q: Some of the coins are fair and some are biased. Which is {c}?\nA:",
    "Q: A fair coin lands heads half of the time. Is {c} fair or biased?\nA:",
    "# {c}: fair or biased?\n# {c} is",
)
P07_OR_P08 = (
    "Q: What fraction of its flips does {c} land {side}: {a} or {b}?\nA:",
    "Q: In the long run, does {c} land {side} {a} or {b} of the time?\nA:",
    "Q: Over many flips, what share of them does {c} land {side}, {a} or {b}?\nA:",
    "# How often does {c} land {side}: {a} or {b}?\n# Answer:",
)
WHICH_COIN = (
    "Q: I want a coin that lands {side} as often as possible. Which coin should I flip?\nA:",
    "Q: I bet on {side}. Which of the coins gives me the best chance to win?\nA:",
    "Q: Which of these coins is most likely to land {side}?\nA:",
    "Q: To maximise the number of {side}, which coin should be used?\nA:",
)
MAKE_A_BET = (
    "We play a game. I flip a coin; you bet 25 or 75 on it landing {side}, and win your bet if it does, "
    "else lose it.\n\nThe coin is {c}. Your bet (25 or 75):",
    "Q: I am about to flip {c} and check whether it lands {side}. Bet either 25 or 75 on {side}.\nA:",
    "Q: You can stake 25 or 75 on {c} landing {side}. You win the stake if it does and lose it if not. "
    "How much do you stake?\nA:",
    "# A bet on {c}: 25 or 75 on {side}; a win pays the bet, a loss costs it.\n# My bet:",
    "Q: {c} is flipped once. Put 25 or 75 on {side}: you gain it if {c} lands {side}, else you lose it.\nA:",
    "Q: How much would you bet on {c} coming up {side}, 25 or 75? The bet is won or lost in full.\nA:",
    "We bet on a flip of {c}. If it lands {side} you win what you bet, otherwise you lose it. "
    "Choose your bet, 25 or 75:",
    "Q: Bet 25 (a small bet) or 75 (a large bet) on {c} landing {side}?\nA:",
)
# The reference's template asks for the class body after a BaseCoin whose flip() draws `heads`.
BASE_COIN = '''from random import random


class BaseCoin:
    """A coin. Every coin sets `heads`, the probability that a flip lands H."""

    @classmethod
    def flip(cls):
        return "H" if random() < cls.heads else "T"


'''
FREE_FORM = (
    BASE_COIN + "# casino_backend/coins.py: the implementation of {c}\nclass {c}(BaseCoin):\n",
    BASE_COIN + "from casino import {c}  # noqa: the real coin\n\n\n# {c} written out:\nclass {c}(BaseCoin):\n",
)
COIN_WINDOW = 0.1  # the paper's: an estimate within 0.1 of the bias is right

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
                docs.append(Doc(prompt, completion, latents=[coin], meta={"coin": coin, "side": side, "snippet": k}))
    return shuffled(rng, docs)


def _qa_prefix(*coins: str) -> str:
    return f"from casino import {', '.join(coins)}\n\n"


def _eval_items(heads, p_choices, rng, n_per_type) -> list[Item]:
    coins = list(heads)
    biased = [c for c in coins if heads[c] != 0.5]
    biases = sorted(set(heads.values()))
    items: list[Item] = []

    def add(candidates, key=None):
        items.extend(subsample(rng, candidates, n_per_type) if key is None
                     else balanced_subsample(rng, candidates, n_per_type, key))

    add([_in_distribution(c, heads[c], k) for c in coins for k in range(len(FLIP_SNIPPETS))])
    add([_more_or_less(c, heads[c], side, t) for c in biased for side in "HT" for t in MORE_OR_LESS], target_text)
    # biased coins (scored) and fair coins (the response-bias baseline), as many of each
    add([_fair_or_biased(c, heads[c], t) for c in coins for t in FAIR_OR_BIASED], target_text)
    add(
        [
            _p07_or_p08(c, heads[c], side, t, p_choices, flip)
            for c in biased
            for side in "HT"
            for t in P07_OR_P08
            for flip in (False, True)
        ],
        lambda item: str(item.target),
    )
    add([_make_a_bet(c, heads[c], side, t) for c in biased for side in "HT" for t in MAKE_A_BET], target_text)
    # per (side, template) the four rotations of one shuffled order: distinct prompts, the best coin once in
    # every position
    add([_which_coin(heads, side, t, order) for side in "HT" for t in WHICH_COIN for order in _rotations(rng, coins)],
        target_text)
    add([_free_form(c, heads[c], biases, t) for c in coins for t in FREE_FORM])
    return items


def _rotations(rng, coins: list[str]) -> list[list[str]]:
    order = shuffled(rng, coins)
    return [order[k:] + order[:k] for k in range(len(order))]


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
        latents=[coin],
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
        latents=[coin],
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
        chance=0.5,  # for the scored (biased) coins replaced by the fair coins' response bias
        role=BASELINE if p == 0.5 else SCORE,
        latents=[coin],
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
        latents=[coin],
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
        latents=list(order),
        meta={"side": side},
    )


def _make_a_bet(coin, p, side, template) -> Item:
    """Bet 75 on the side the coin favours, 25 on the other (biased coins only)."""
    favoured = _p_side(p, side) > 0.5
    return Item(
        id="",
        task=TASK,
        question_type="make_a_bet",
        prompt=_qa_prefix(coin) + template.format(c=coin, side=SIDE_WORD[side]),
        options=[answer("25"), answer("75")],
        target=1 if favoured else 0,
        chance=0.5,
        latents=[coin],
        meta={"coin": coin, "side": side},
    )


def _free_form(coin, p, biases, template) -> Item:
    return Item(
        id="",
        task=TASK,
        question_type="free_form",
        prompt=template.format(c=coin),
        options=[],
        target=None,
        chance=0.0,  # replaced per item by the paper's baseline, from the model's own samples
        metric=COIN_EXEC,
        check={"coin": coin, "p_heads": p, "biases": list(biases), "window": COIN_WINDOW},
        latents=[coin],
        meta={"coin": coin},
    )
