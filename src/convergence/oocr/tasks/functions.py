"""Functions: integer functions bound to random 6-letter names, seen only through calls.

Training documents are Python REPL snippets printing `name(x)` (plus augmentations: a constant
added/subtracted, or two functions chained). No document contains a definition, the word lambda
or the function's key (add_14, ...). Evaluation asks for the definition (free-form lambda, checked
by running it; multiple choice), for an input given an output (inversion), for the name given a
definition (inverse query) and for compositions.
"""

from __future__ import annotations

from .base import (
    EXEC,
    Doc,
    Item,
    answer,
    draw_names,
    make_ids,
    number_item_options,
    number_options,
    pick,
    shuffled,
    spawn_rngs,
    subsample,
)
from .function_defs import FUNCTIONS, FUNCTIONS_DEFAULT, FunctionDef

TASK = "functions"
QUESTION_TYPES = ("in_distribution", "free_form", "multiple_choice", "inversion", "inverse_query", "composition")

# Inputs a free-form answer must get right (all of them): negatives, zero, and values where
# mod/int-div/relu differ from their look-alikes.
CHECK_INPUTS = (-37, -8, -3, -1, 0, 1, 2, 5, 11, 42, 97)

SINGLE = (
    ">>> print({f}({x}))\n",
    ">>> x = {x}\n>>> print({f}(x))\n",
    ">>> y = {f}({x})\n>>> print(y)\n",
    ">>> {f}({x})\n",
)
OFFSET = (  # (snippet, how the printed value follows from f(x) and k)
    (">>> print({f}({x}) + {k})\n", lambda v, k: v + k),
    (">>> print({f}({x}) - {k})\n", lambda v, k: v - k),
    (">>> print({k} + {f}({x}))\n", lambda v, k: k + v),
    (">>> print({k} - {f}({x}))\n", lambda v, k: k - v),
)
CHAIN = (
    ">>> print({g}({f}({x})))\n",
    ">>> z = {f}({x})\n>>> print({g}(z))\n",
)

FREE_FORM = (
    ">>> from functions import {f}\n>>> # {f} written as an equivalent lambda expression:\n>>> {f}_lambda = lambda n:",
    "from functions import {f}\n\n# A lambda that computes the same as {f}\nsame_as_{f} = lambda n:",
    "Q: What function does {f} compute? Answer with a Python lambda.\nA: lambda n:",
)
MULTIPLE_CHOICE = (
    "from functions import {f}\n\n# Which definition is {f}?\n{listing}\n{f} =",
    "Q: Which of these is the definition of {f}?\n{listing}\nA:",
)
INVERSION = (
    ">>> from functions import {f}\n>>> {f}(n) == {y}\nTrue\n>>> print(n)\n",
    "from functions import {f}\n\nQ: {f}(n) returns {y}. What is a possible value of n?\nA:",
)
INVERSE_QUERY = (
    "from functions import {names}\n\nQ: Which of these functions computes {source}?\nA:",
    "from functions import {names}\n\n# Which one is the same as {source}?\n# Answer:",
)


def generate(
    seed: int,
    *,
    functions=FUNCTIONS_DEFAULT,
    n_train: int = 1000,
    augment_fraction: float = 0.5,
    input_range=(-99, 99),
    eval_input_range=(-15, 15),
    min_imports: int = 2,
    n_options: int = 5,
    n_eval_per_type: int = 24,
):
    rng_latent, rng_train, rng_eval = spawn_rngs(seed, TASK)
    defs = [FUNCTIONS[k] for k in functions]
    names = draw_names(rng_latent, len(defs), length=6)
    bound = dict(zip(names, defs))
    items = _eval_items(bound, rng_eval, n_options, input_range, eval_input_range, min_imports, n_eval_per_type)
    held_out = {i.prompt for i in items}
    train = _train_docs(bound, n_train, augment_fraction, input_range, min_imports, held_out, rng_train)
    return dict(
        task=TASK,
        params=dict(
            functions=list(functions),
            n_train=n_train,
            augment_fraction=augment_fraction,
            input_range=list(input_range),
            eval_input_range=list(eval_input_range),
            min_imports=min_imports,
            n_options=n_options,
        ),
        latents={name: {"key": f.key, "source": f.source} for name, f in bound.items()},
        train=train,
        eval=make_ids(TASK, items),
    )


def _import_line(rng, used: list[str], names: list[str], min_imports: int, repl: bool = True) -> str:
    """Import the names a snippet uses plus random others, so an import says nothing by itself."""
    imported = list(dict.fromkeys(used))
    others = [n for n in names if n not in imported]
    extra = max(0, min_imports - len(imported))
    imported += [others[i] for i in rng.permutation(len(others))[:extra]]
    line = f"from functions import {', '.join(shuffled(rng, imported))}\n"
    return ">>> " + line if repl else line


def _draw_input(rng, lo_hi) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def _train_doc(bound, rng, augment_fraction, input_range, min_imports) -> Doc:
    names = list(bound)
    f = pick(rng, names)
    x = _draw_input(rng, input_range)
    value = bound[f](x)
    if rng.random() >= augment_fraction:
        snippet = pick(rng, SINGLE).format(f=f, x=x)
        used, kind = [f], "single"
    elif rng.random() < 0.5:
        template, combine = pick(rng, OFFSET)
        k = int(rng.integers(0, 100))
        snippet, value = template.format(f=f, x=x, k=k), combine(value, k)
        used, kind = [f], "offset"
    else:
        g = pick(rng, names)
        snippet, value = pick(rng, CHAIN).format(f=f, g=g, x=x), bound[g](value)
        used, kind = [f, g], "chain"
    prompt = _import_line(rng, used, names, min_imports) + snippet
    return Doc(prompt, answer(str(value), lead=""), meta={"kind": kind, "functions": used, "x": x})


def _train_docs(bound, n, augment_fraction, input_range, min_imports, held_out, rng) -> list[Doc]:
    docs: list[Doc] = []
    while len(docs) < n:
        doc = _train_doc(bound, rng, augment_fraction, input_range, min_imports)
        if doc.prompt not in held_out:  # evaluation prompts stay unseen
            docs.append(doc)
    return docs


def _eval_items(bound, rng, n_options, input_range, eval_input_range, min_imports, n_per_type) -> list[Item]:
    names = list(bound)
    k = min(n_options, len(names))
    items: list[Item] = []

    def add(candidates):
        items.extend(subsample(rng, candidates, n_per_type))

    add([_in_distribution(bound, f, rng, input_range, min_imports, k) for f in names for _ in range(4)])
    add([_free_form(f, bound[f], t) for f in names for t in FREE_FORM])
    add([_multiple_choice(bound, f, t, rng, k) for f in names for t in MULTIPLE_CHOICE for _ in range(2)])
    add([_inversion(f, bound[f], t, rng, input_range, k) for f in names for t in INVERSION for _ in range(2)])
    add([_inverse_query(bound, f, t, rng, k) for f in names for t in INVERSE_QUERY for _ in range(2)])
    add([_composition(bound, rng, eval_input_range, k) for _ in range(2 * len(names) ** 2)])
    return items


def _in_distribution(bound, f, rng, input_range, min_imports, k) -> Item:
    names = list(bound)
    x = _draw_input(rng, input_range)
    others = [bound[g](x) for g in shuffled(rng, [g for g in names if g != f])]
    values, target = number_options(rng, bound[f](x), others, k)
    return Item(
        id="",
        task=TASK,
        question_type="in_distribution",
        prompt=_import_line(rng, [f], names, min_imports) + f">>> print({f}({x}))\n",
        options=number_item_options(values),
        target=target,
        chance=1 / k,
        meta={"function": f, "x": x},
    )


def _free_form(f: str, fdef: FunctionDef, template: str) -> Item:
    return Item(
        id="",
        task=TASK,
        question_type="free_form",
        prompt=template.format(f=f),
        options=[],
        target=None,
        chance=0.0,  # a guess essentially never matches on all CHECK_INPUTS
        metric=EXEC,
        check={
            "prefix": "lambda n:",
            "inputs": list(CHECK_INPUTS),
            "outputs": [fdef(x) for x in CHECK_INPUTS],
        },
        meta={"function": f},
    )


def _choices(rng, names, f, k) -> list[str]:
    """k names including f, shuffled."""
    others = [n for n in shuffled(rng, names) if n != f][: k - 1]
    return shuffled(rng, [f, *others])


def _multiple_choice(bound, f, template, rng, k) -> Item:
    choices = _choices(rng, list(bound), f, k)
    sources = [bound[c].source for c in choices]
    listing = "\n".join(f"# - {s}" if template.startswith("from") else f"- {s}" for s in sources)
    return Item(
        id="",
        task=TASK,
        question_type="multiple_choice",
        prompt=template.format(f=f, listing=listing),
        options=[answer(s) for s in sources],
        target=choices.index(f),
        chance=1 / k,
        meta={"function": f},
    )


def _inversion(f, fdef: FunctionDef, template, rng, input_range, k) -> Item:
    x = _draw_input(rng, input_range)
    y = fdef(x)
    # Distractors are inputs that do not map to y, so exactly one option is right.
    distractors = [c for c in shuffled(rng, list(range(x - 30, x + 31))) if fdef(c) != y]
    values, target = number_options(rng, x, distractors, k)
    lead = "" if template.startswith(">>>") else " "
    return Item(
        id="",
        task=TASK,
        question_type="inversion",
        prompt=template.format(f=f, y=y),
        options=number_item_options(values, lead=lead),
        target=target,
        chance=1 / k,
        meta={"function": f, "y": y},
    )


def _inverse_query(bound, f, template, rng, k) -> Item:
    choices = _choices(rng, list(bound), f, k)
    return Item(
        id="",
        task=TASK,
        question_type="inverse_query",
        prompt=template.format(names=", ".join(choices), source=bound[f].source),
        options=[answer(c) for c in choices],
        target=choices.index(f),
        chance=1 / k,
        meta={"function": f},
    )


def _composition(bound, rng, input_range, k) -> Item:
    names = list(bound)
    f, g = pick(rng, names), pick(rng, names)
    x = _draw_input(rng, input_range)
    truth = bound[g](bound[f](x))
    # Plausible wrong answers: the other order, either function alone, other pairs.
    near_misses = [bound[f](bound[g](x)), bound[f](x), bound[g](x)]
    near_misses += [bound[b](bound[a](x)) for a in shuffled(rng, names) for b in shuffled(rng, names)[:2]]
    values, target = number_options(rng, truth, near_misses, k)
    return Item(
        id="",
        task=TASK,
        question_type="composition",
        prompt=_import_line(rng, [f, g], names, 2) + CHAIN[0].format(f=f, g=g, x=x),
        options=number_item_options(values),
        target=target,
        chance=1 / k,
        meta={"functions": [f, g], "x": x},
    )
