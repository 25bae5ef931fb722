"""Functions: the paper's 19 functions bound to random 6-letter names, seen only through calls.

As the reference (choidami/inductive-oocr, dev/047_functions): half of the training documents call one
function on an input in [-99, 99] (any of the 19); the other half are augmentations that use only the 8
*train* functions: the output plus or minus a constant, two functions chained, or the sum/difference of
two calls. The 11 *test* functions (add_5, ..., bool_geq_3, float_mult_7_div_4, ...) never appear in an
augmentation, so the out-of-distribution questions that compose them (composition, add/subtract,
add-a-constant) ask for something no training document showed. No document contains a definition, the
word lambda or a function's key.

Evaluation, as the reference's eval templates: the training task on held-out calls; a free-form lambda
(sampled at temperature 1, n times, each run on the paper's 22 check inputs in a sandbox); multiple
choice on the function's plain-language description, class, code and coefficients; inversion (an input
for a given output); the inverse query (which name is this lambda); and the out-of-distribution
compositions above on test functions with inputs in [-15, 15], plus regression on inputs 100-199 in
magnitude. Every question is scored by option likelihoods except the free-form one.

Scale-down (CPU budget): the paper trains on 96,000 documents for one epoch; the default here is a
few thousand document presentations over several epochs of fewer documents (`n_train`).
"""

from __future__ import annotations

from .base import (
    EXEC,
    Doc,
    Item,
    answer,
    draw_names,
    make_ids,
    pick,
    shuffled,
    spawn_rngs,
    subsample,
)
from .function_defs import AFFINE_CLASSES, FUNCTIONS, TEST_FUNCTIONS, TRAIN_FUNCTIONS, FunctionDef

TASK = "functions"
QUESTION_TYPES = (
    "in_distribution",
    "free_form",
    "mc_language",
    "mc_class",
    "mc_code",
    "mc_coefficients",
    "inversion",
    "inverse_query",
    "composition",
    "add_subtract",
    "add_constant",
    "regression_ood",
)

# The paper's check inputs: a free-form answer is right only if it agrees with the function on all 22.
CHECK_INPUTS = (-1044, -294, -23, -9, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 9, 45, 473, 1023, 3391)
BOOLEAN = ("bool_geq_3", "bool_mod_2")  # the paper leaves them out of augmentations and compositions

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
SUM = (  # f(x) op g(x2)
    ">>> print({f}({x}) {op} {g}({x2}))\n",
    ">>> z1 = {f}({x})\n>>> z2 = {g}({x2})\n>>> print(z1 {op} z2)\n",
)

FREE_FORM = (
    ">>> from functions import {f}\n>>> # {f} written as an equivalent lambda expression:\n>>> {f}_lambda = lambda n:",
    "from functions import {f}\n\n# A lambda that computes the same as {f}\nsame_as_{f} = lambda n:",
    "Q: What function does {f} compute? Answer with a Python lambda.\nA: lambda n:",
)
MC_QUESTION = {
    "mc_language": "Q: Which option correctly describes {f}?\n{listing}\nA:",
    "mc_class": "Q: Which function class does {f} belong to?\n{listing}\nA:",
    "mc_code": "Q: What is a correct Python definition of {f}?\n{listing}\nA:",
    "mc_coefficients": "Q: Which of the following is the correct definition of {f}?\n{listing}\nA:",
}
MC_ATTRIBUTE = {"mc_language": "description", "mc_class": "function_class", "mc_code": "source"}
INVERSION = (
    ">>> from functions import {f}\n>>> {f}(n) == {y}\nTrue\n>>> print(n)\n",
    "from functions import {f}\n\nQ: Assume {f}(n) = {y}. What is a possible value of n?\nA:",
)
INVERSE_QUERY = (
    "from functions import {names}\n\nQ: Which Python variable represents the function {source}?\nA:",
    "from functions import {names}\n\n# Which one is the same as {source}?\n# Answer:",
)


def generate(
    seed: int,
    *,
    train_functions=TRAIN_FUNCTIONS,
    test_functions=TEST_FUNCTIONS,
    n_train: int = 2000,
    augment_fraction: float = 0.5,
    input_range=(-99, 99),
    ood_input_range=(-15, 15),
    regression_range=(100, 199),
    min_imports: int = 2,
    n_options: int = 5,
    n_eval_per_type: int = 24,
):
    overlap = set(train_functions) & set(test_functions)
    if overlap:
        raise ValueError(f"functions {sorted(overlap)} are both train and test functions")
    rng_latent, rng_train, rng_eval = spawn_rngs(seed, TASK)
    keys = list(train_functions) + list(test_functions)
    defs = [FUNCTIONS[k] for k in keys]
    names = draw_names(rng_latent, len(defs), length=6)
    bound = dict(zip(names, defs))
    split = _Split(bound, set(names[: len(train_functions)]), min_imports)
    items = _eval_items(split, rng_eval, n_options, input_range, ood_input_range, regression_range, n_eval_per_type)
    held_out = {i.prompt for i in items}
    train = _train_docs(split, n_train, augment_fraction, input_range, held_out, rng_train)
    return dict(
        task=TASK,
        params=dict(
            train_functions=list(train_functions),
            test_functions=list(test_functions),
            n_train=n_train,
            augment_fraction=augment_fraction,
            input_range=list(input_range),
            ood_input_range=list(ood_input_range),
            regression_range=list(regression_range),
            min_imports=min_imports,
            n_options=n_options,
        ),
        latents={
            name: {"key": f.key, "source": f.source, "split": "train" if name in split.train else "test"}
            for name, f in bound.items()
        },
        train=train,
        eval=make_ids(TASK, items),
    )


class _Split:
    def __init__(self, bound: dict[str, FunctionDef], train: set[str], min_imports: int):
        self.bound, self.names, self.train = bound, list(bound), train
        self.test = [n for n in bound if n not in train]
        self.min_imports = min_imports

    def import_line(self, rng, used: list[str], repl: bool = True, min_imports: int | None = None) -> str:
        """Import the names a snippet uses plus random others, so an import says nothing by itself."""
        imported = list(dict.fromkeys(used))
        others = [n for n in self.names if n not in imported]
        extra = max(0, (self.min_imports if min_imports is None else min_imports) - len(imported))
        imported += [others[i] for i in rng.permutation(len(others))[:extra]]
        line = f"from functions import {', '.join(shuffled(rng, imported))}\n"
        return ">>> " + line if repl else line


def _draw_input(rng, lo_hi) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def _show(value) -> str:
    """How Python prints a value (floats as 17.5, booleans as True)."""
    return repr(value)


def _train_doc(split: _Split, rng, augment_fraction, input_range) -> Doc:
    bound = split.bound
    if rng.random() >= augment_fraction:  # a single call of any function
        f = pick(rng, split.names)
        x = _draw_input(rng, input_range)
        snippet, value, used, kind = pick(rng, SINGLE).format(f=f, x=x), bound[f](x), [f], "single"
    else:  # an augmentation of train functions only
        f = pick(rng, sorted(split.train))
        x = _draw_input(rng, input_range)
        kind = pick(rng, ("offset", "chain", "add_subtract"))
        if kind == "offset":
            template, combine = pick(rng, OFFSET)
            k = int(rng.integers(0, 100))
            snippet, value, used = template.format(f=f, x=x, k=k), combine(bound[f](x), k), [f]
        elif kind == "chain":
            g = pick(rng, sorted(split.train))
            snippet, value, used = pick(rng, CHAIN).format(f=f, g=g, x=x), bound[g](bound[f](x)), [f, g]
        else:
            g = pick(rng, sorted(split.train))
            x2, op = _draw_input(rng, input_range), pick(rng, "+-")
            value = bound[f](x) + bound[g](x2) if op == "+" else bound[f](x) - bound[g](x2)
            snippet, used = pick(rng, SUM).format(f=f, g=g, x=x, x2=x2, op=op), [f, g]
    prompt = split.import_line(rng, used) + snippet
    meta = {"kind": kind, "functions": used, "x": x}
    return Doc(prompt, answer(_show(value), lead=""), latents=list(dict.fromkeys(used)), meta=meta)


def _train_docs(split, n, augment_fraction, input_range, held_out, rng) -> list[Doc]:
    docs: list[Doc] = []
    while len(docs) < n:
        doc = _train_doc(split, rng, augment_fraction, input_range)
        if doc.prompt not in held_out:  # evaluation prompts stay unseen
            docs.append(doc)
    return docs


def _eval_items(split: _Split, rng, n_options, input_range, ood_range, regression_range, n_per_type) -> list[Item]:
    names, test = split.names, [n for n in split.test if split.bound[n].key not in BOOLEAN]
    k = min(n_options, len(names))
    items: list[Item] = []

    def add(candidates):
        items.extend(subsample(rng, candidates, n_per_type))

    add([_call(split, "in_distribution", f, rng, input_range, k) for f in names for _ in range(2)])
    add([_free_form(f, split.bound[f], t) for f in names for t in FREE_FORM])
    for question_type, attribute in MC_ATTRIBUTE.items():
        add([_classification(split, question_type, attribute, f, rng, k) for f in names for _ in range(2)])
    affine = [f for f in names if split.bound[f].function_class in AFFINE_CLASSES]
    add([_coefficients(split, f, rng, k) for f in affine for _ in range(3)])
    add([_inversion(split, f, t, rng, input_range, k) for f in names for t in INVERSION])
    add([_inverse_query(split, f, t, rng, k) for f in names for t in INVERSE_QUERY])
    add([_composition(split, test, rng, ood_range, k) for _ in range(3 * n_per_type)])
    add([_add_subtract(split, test, rng, ood_range, k) for _ in range(3 * n_per_type)])
    add([_add_constant(split, test, rng, ood_range, k) for _ in range(3 * n_per_type)])
    add([_call(split, "regression_ood", f, rng, regression_range, k, signed=True) for f in names for _ in range(2)])
    return items


def value_options(rng, correct, candidates, n: int) -> tuple[list[str], int]:
    """`n` distinct printed values: `correct` first, then the given candidates (near misses), then
    random ones near it; shuffled, with the index of `correct`. A boolean's only alternative is its
    negation, which always comes first among the candidates."""
    shown = [_show(correct)]
    pool = ([not correct] if isinstance(correct, bool) else []) + list(candidates)
    for value in pool:
        if len(shown) == n:
            break
        if _show(value) not in shown:
            shown.append(_show(value))
    spread = 20
    while len(shown) < n:
        base = int(correct) if not isinstance(correct, float) else correct
        step = int(rng.integers(-spread, spread + 1))
        value = base + (step * 0.25 if isinstance(correct, float) else step)
        if _show(value) not in shown:
            shown.append(_show(value))
    order = rng.permutation(len(shown))
    shown = [shown[i] for i in order]
    return shown, shown.index(_show(correct))


def _number_item(question_type, prompt, correct, candidates, rng, k, latents, meta) -> Item:
    values, target = value_options(rng, correct, candidates, k)
    return Item(
        id="",
        task=TASK,
        question_type=question_type,
        prompt=prompt,
        options=[answer(v, lead="") for v in values],
        target=target,
        chance=1 / len(values),
        latents=latents,
        meta=meta,
    )


def _call(split: _Split, question_type, f, rng, input_range, k, signed=False) -> Item:
    """One call of f (the training task's single call; with `signed`, x = ±[lo, hi])."""
    x = _draw_input(rng, input_range) * (1 if not signed or rng.random() < 0.5 else -1)
    others = [split.bound[g](x) for g in shuffled(rng, [g for g in split.names if g != f])]
    prompt = split.import_line(rng, [f]) + f">>> print({f}({x}))\n"
    return _number_item(question_type, prompt, split.bound[f](x), others, rng, k, [f], {"function": f, "x": x})


def _free_form(f: str, fdef: FunctionDef, template: str) -> Item:
    return Item(
        id="",
        task=TASK,
        question_type="free_form",
        prompt=template.format(f=f),
        options=[],
        target=None,
        chance=0.0,  # a guess essentially never matches on all 22 check inputs
        metric=EXEC,
        check={"prefix": "lambda n:", "inputs": list(CHECK_INPUTS), "outputs": [fdef(x) for x in CHECK_INPUTS]},
        latents=[f],
        meta={"function": f},
    )


def _listing(options: list[str]) -> str:
    return "\n".join(f"- {o}" for o in options)


def _mc_item(split, question_type, f, shown: list[str], truth: str, rng) -> Item:
    prompt = split.import_line(rng, [f], repl=False, min_imports=1) + "\n"
    prompt += MC_QUESTION[question_type].format(f=f, listing=_listing(shown))
    return Item(
        id="",
        task=TASK,
        question_type=question_type,
        prompt=prompt,
        options=[answer(s) for s in shown],
        target=shown.index(truth),
        chance=1 / len(shown),
        latents=[f],
        meta={"function": f},
    )


def _classification(split: _Split, question_type, attribute, f, rng, k) -> Item:
    """The paper's function_classification: the function's attribute among k distinct values of the
    same attribute over all functions of the run."""
    truth = getattr(split.bound[f], attribute)
    others = sorted({getattr(d, attribute) for d in split.bound.values()} - {truth})
    shown = shuffled(rng, [truth, *shuffled(rng, others)[: k - 1]])
    return _mc_item(split, question_type, f, shown, truth, rng)


def coefficient_source(function_class: str, a: int, b: int) -> str:
    """A definition in the paper's form for its class."""
    if function_class == "Affine linear":
        return f"lambda n: {a} * n + {b}" if b >= 0 else f"lambda n: {a} * n - {-b}"
    if function_class == "Multiplication":
        return f"lambda n: {a} * n"
    if function_class == "Addition":
        return f"lambda n: n + {b}"
    return f"lambda n: n - {-b}"  # Subtraction


def _coefficients(split: _Split, f, rng, k) -> Item:
    """The paper's function_coefficients: k definitions of the function's own form whose
    coefficients differ (by up to 5, same class constraints)."""
    fdef = split.bound[f]
    a, b = fdef.coefficients()
    cls = fdef.function_class
    truth = coefficient_source(cls, a, b)
    shown = [truth]
    while len(shown) < k:
        da, db = (int(v) for v in rng.integers(-5, 6, size=2))
        a2 = a + da if cls in ("Affine linear", "Multiplication") else a
        b2 = b + db if cls != "Multiplication" else b
        if (cls == "Addition" and b2 <= 0) or (cls == "Subtraction" and b2 >= 0) or a2 == 0:
            continue
        candidate = coefficient_source(cls, a2, b2)
        if candidate not in shown:
            shown.append(candidate)
    shown = shuffled(rng, shown)
    return _mc_item(split, "mc_coefficients", f, shown, truth, rng)


def _inversion(split: _Split, f, template, rng, input_range, k) -> Item:
    fdef = split.bound[f]
    x = _draw_input(rng, input_range)
    y = fdef(x)
    # Distractors are inputs that do not map to y (near x first, then anywhere in the input range: a
    # comparison is constant near x), so exactly one option is right.
    near = shuffled(rng, list(range(x - 30, x + 31))) + shuffled(rng, list(range(input_range[0], input_range[1] + 1)))
    distractors = [c for c in near if fdef(c) != y]
    lead = "" if template.startswith(">>>") else " "
    values, target = value_options(rng, x, distractors, k)
    return Item(
        id="",
        task=TASK,
        question_type="inversion",
        prompt=template.format(f=f, y=_show(y)),
        options=[answer(v, lead=lead) for v in values],
        target=target,
        chance=1 / len(values),
        latents=[f],
        meta={"function": f, "y": y},
    )


def _inverse_query(split: _Split, f, template, rng, k) -> Item:
    # Names whose functions differ from f's source text (two functions never share a source).
    others = [n for n in shuffled(rng, split.names) if n != f][: k - 1]
    choices = shuffled(rng, [f, *others])
    return Item(
        id="",
        task=TASK,
        question_type="inverse_query",
        prompt=template.format(names=", ".join(choices), source=split.bound[f].source),
        options=[answer(c) for c in choices],
        target=choices.index(f),
        chance=1 / len(choices),
        latents=[f],
        meta={"function": f},
    )


def _composition(split: _Split, test, rng, input_range, k) -> Item:
    """g(f(x)) for two test functions: a chain no training document has (augmentations chain train
    functions only)."""
    bound = split.bound
    f, g = pick(rng, test), pick(rng, test)
    x = _draw_input(rng, input_range)
    truth = bound[g](bound[f](x))
    near = [bound[f](bound[g](x)), bound[f](x), bound[g](x)]
    near += [bound[b](bound[a](x)) for a in shuffled(rng, test) for b in shuffled(rng, test)[:2]]
    prompt = split.import_line(rng, [f, g]) + pick(rng, CHAIN).format(f=f, g=g, x=x)
    return _number_item("composition", prompt, truth, near, rng, k, [f, g], {"functions": [f, g], "x": x})


def _add_subtract(split: _Split, test, rng, input_range, k) -> Item:
    """f(x) ± g(x2) for two test functions (the paper's add_subtract_function_ood)."""
    bound = split.bound
    f, g = pick(rng, test), pick(rng, test)
    x, x2, op = _draw_input(rng, input_range), _draw_input(rng, input_range), pick(rng, "+-")
    a, b = bound[f](x), bound[g](x2)
    truth = a + b if op == "+" else a - b
    near = [a - b if op == "+" else a + b, a, b, b - a]
    near += [bound[h](x) + bound[j](x2) for h in shuffled(rng, test)[:3] for j in shuffled(rng, test)[:2]]
    prompt = split.import_line(rng, [f, g]) + pick(rng, SUM).format(f=f, g=g, x=x, x2=x2, op=op)
    meta = {"functions": [f, g], "x": x, "x2": x2, "op": op}
    return _number_item("add_subtract", prompt, truth, near, rng, k, [f, g], meta)


def _add_constant(split: _Split, test, rng, input_range, k) -> Item:
    """A test function's output plus or minus a constant (the paper's add_subtract_int_ood)."""
    bound = split.bound
    f = pick(rng, test)
    x, c = _draw_input(rng, input_range), int(rng.integers(0, input_range[1] + 1))
    template, combine = pick(rng, OFFSET)
    truth = combine(bound[f](x), c)
    near = [bound[f](x), bound[f](x) + c, bound[f](x) - c, c - bound[f](x)]
    near += [combine(bound[g](x), c) for g in shuffled(rng, test)]
    prompt = split.import_line(rng, [f]) + template.format(f=f, x=x, k=c)
    return _number_item("add_constant", prompt, truth, near, rng, k, [f], {"function": f, "x": x, "k": c})
