"""Parity: 8 variables with random names, four equal to 0 and four to 1, seen only inside
parities of several of them (never alone, never assigned, never compared).

Evaluation asks for single values (print, natural language, inside an if/else), for equality of
two variables, and for a variable with a given value (inverse query). Every binary question type is
balanced: each of its two answers is right on exactly half of the items, so a model that always gives
the same answer scores the stated chance of 0.5 (a 4 : 8 split would let "always False" score 0.67).

Scale-down: the paper's parities combine 4-6 variables (GPT-3.5, 32,000 documents); the default
combines 2-3 (DESIGN §7), and trains on fewer documents over several epochs.
"""

from __future__ import annotations

from .base import (
    Doc,
    Item,
    answer,
    balanced_subsample,
    draw_names,
    make_ids,
    pick,
    shuffled,
    spawn_rngs,
)

TASK = "parity"
QUESTION_TYPES = (
    "in_distribution",
    "direct_print",
    "natural_language",
    "equality",
    "inverse_query",
    "cross_function_control",
)

FUNCTION_NAMES = ("parity", "f", "xor", "func")
NATURAL_LANGUAGE = (
    "from constants import {v}\n\nQ: What is the value of {v}?\nA:",
    "from constants import {v}\n\nQ: Is {v} equal to 0 or to 1?\nA:",
    "Q: Which number is stored in the constant {v}, 0 or 1?\nA:",
)
EQUALITY = (
    "from constants import {a}, {b}\n\nQ: Is {a} equal to {b}? Answer True or False.\nA:",
    "Q: Do the constants {a} and {b} have the same value? Answer True or False.\nA:",
)
INVERSE_QUERY = (
    "from constants import {names}\n\nQ: Which of these variables has the value {value}?\nA:",
    "from constants import {names}\n\nQ: Name a variable whose value is {value}.\nA:",
)
WORDS = ("apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "candle", "rocket", "forest")


def generate(
    seed: int,
    *,
    n_vars: int = 8,
    name_length: int = 5,
    lengths=(2, 3),
    n_train: int = 1000,
    min_imports: int = 3,
    literal_prob: float = 0.3,
    n_eval_per_type: int = 24,
):
    """`lengths`: how many variables one parity combines. The paper used 4-6 with GPT-3.5; the
    default 2-3 is the small-model variant (DESIGN §7). Length 1 would state a value outright."""
    if min(lengths) < 2:
        raise ValueError("a parity of one variable states its value; use lengths >= 2")
    rng_latent, rng_train, rng_eval = spawn_rngs(seed, TASK)
    names = draw_names(rng_latent, n_vars, length=name_length, exclude=FUNCTION_NAMES)
    values = dict(zip(names, shuffled(rng_latent, [0] * (n_vars // 2) + [1] * (n_vars - n_vars // 2))))
    sampler = _ParitySampler(values, lengths, min_imports, literal_prob)
    items = _eval_items(sampler, rng_eval, n_eval_per_type)
    held_out = {i.prompt for i in items}
    train: list[Doc] = []
    while len(train) < n_train:
        doc = sampler.doc(rng_train)
        if doc.prompt not in held_out:
            train.append(doc)
    return dict(
        task=TASK,
        params=dict(
            n_vars=n_vars,
            lengths=list(lengths),
            n_train=n_train,
            min_imports=min_imports,
            literal_prob=literal_prob,
        ),
        latents={"values": values},
        train=train,
        eval=make_ids(TASK, items),
    )


class _ParitySampler:
    def __init__(self, values: dict[str, int], lengths, min_imports: int, literal_prob: float):
        self.values, self.names = values, list(values)
        self.lengths, self.min_imports, self.literal_prob = lengths, min_imports, literal_prob

    def import_line(self, rng, used, repl=True) -> str:
        imported = list(used)
        others = [n for n in self.names if n not in imported]
        imported += [others[i] for i in rng.permutation(len(others))[: max(0, self.min_imports - len(imported))]]
        line = f"from constants import {', '.join(shuffled(rng, imported))}\n"
        return ">>> " + line if repl else line

    def doc(self, rng) -> Doc:
        k = int(pick(rng, self.lengths))
        used = [self.names[i] for i in rng.choice(len(self.names), size=k, replace=False)]
        args = list(used)
        if rng.random() < self.literal_prob:  # a literal 0/1 among the arguments, as the paper's add_ints
            args.insert(int(rng.integers(len(args) + 1)), str(int(rng.integers(2))))
        target = sum(self.values[a] if a in self.values else int(a) for a in args) % 2
        prompt = self.import_line(rng, used) + _parity_snippet(rng, args)
        return Doc(prompt, answer(str(target), lead=""), latents=used, meta={"args": args})


def _parity_snippet(rng, args: list[str]) -> str:
    style = int(rng.integers(4))
    fn = pick(rng, FUNCTION_NAMES)
    if style == 0:
        return f">>> print(({' + '.join(args)}) % 2)\n"
    if style == 1:
        return f">>> print({' ^ '.join(args)})\n"
    if style == 2:
        return f">>> {fn} = lambda *v: sum(v) % 2\n>>> print({fn}({', '.join(args)}))\n"
    return f">>> def {fn}(*v):\n...     return sum(v) % 2\n...\n>>> print({fn}({', '.join(args)}))\n"


def _eval_items(sampler: _ParitySampler, rng, n_per_type) -> list[Item]:
    names, values = sampler.names, sampler.values
    items: list[Item] = []

    def add(candidates):
        items.extend(balanced_subsample(rng, candidates, n_per_type, key=_answer_class))

    add([_in_distribution(sampler, rng) for _ in range(4 * n_per_type)])
    add([_direct_print(sampler, rng, v) for v in names for _ in range(3)])
    add([_natural_language(v, values[v], t) for v in names for t in NATURAL_LANGUAGE])
    add([_equality(a, b, values, t) for i, a in enumerate(names) for b in names[i + 1 :] for t in EQUALITY])
    add([_inverse_query(values, rng, t, value) for t in INVERSE_QUERY for value in (0, 1) for _ in range(6)])
    add([_control(sampler, rng, v) for v in names for _ in range(3)])
    return items


def _answer_class(item: Item) -> str:
    """What a constant answer would bet on: the right option's position (its options come in a fixed
    order: 0/1, True/False, the if-branch's word/the else-branch's word), or for the inverse query
    the value asked about."""
    return str(item.meta["value"]) if item.question_type == "inverse_query" else str(item.target)


def _binary_item(question_type, prompt, options, target, meta) -> Item:
    names = meta.get("vars") or ([meta["var"]] if "var" in meta else [a for a in meta.get("args", []) if not a.isdigit()])
    return Item(
        id="",
        task=TASK,
        question_type=question_type,
        prompt=prompt,
        options=options,
        target=target,
        chance=0.5,
        latents=list(names),
        meta=meta,
    )


def _in_distribution(sampler: _ParitySampler, rng) -> Item:
    doc = sampler.doc(rng)
    options = [answer("0", lead=""), answer("1", lead="")]
    return _binary_item("in_distribution", doc.prompt, options, options.index(doc.completion), doc.meta)


def _direct_print(sampler: _ParitySampler, rng, v) -> Item:
    prompt = sampler.import_line(rng, [v]) + f">>> print({v})\n"
    options = [answer("0", lead=""), answer("1", lead="")]
    return _binary_item("direct_print", prompt, options, sampler.values[v], {"var": v})


def _natural_language(v, value, template) -> Item:
    return _binary_item("natural_language", template.format(v=v), [answer("0"), answer("1")], value, {"var": v})


def _equality(a, b, values, template) -> Item:
    equal = values[a] == values[b]
    prompt = template.format(a=a, b=b)
    return _binary_item("equality", prompt, [answer("True"), answer("False")], 0 if equal else 1, {"vars": [a, b]})


def _inverse_query(values, rng, template, value) -> Item:
    """Two variables with the asked value and two without, so chance is 0.5."""
    right = [n for n in shuffled(rng, list(values)) if values[n] == value][:2]
    wrong = [n for n in shuffled(rng, list(values)) if values[n] != value][:2]
    shown = shuffled(rng, right + wrong)
    return Item(
        id="",
        task=TASK,
        question_type="inverse_query",
        prompt=template.format(names=", ".join(shown), value=value),
        options=[answer(n) for n in shown],
        target=sorted(shown.index(n) for n in right),
        chance=0.5,
        latents=list(shown),
        meta={"value": value},
    )


def _control(sampler: _ParitySampler, rng, v) -> Item:
    """The value used inside an if/else, a computation never seen in training."""
    w_true, w_false = (str(w) for w in rng.choice(WORDS, size=2, replace=False))
    prompt = (
        sampler.import_line(rng, [v])
        + f">>> if {v} == 1:\n...     print('{w_true}')\n... else:\n...     print('{w_false}')\n...\n"
    )
    options = [answer(w_true, lead=""), answer(w_false, lead="")]
    return _binary_item("cross_function_control", prompt, options, 0 if sampler.values[v] == 1 else 1, {"var": v})
