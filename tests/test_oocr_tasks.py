"""OOCR task generators: seeded, latents hidden from training, answers right by construction."""

import ast
import contextlib
import io
import itertools
import re
from collections import Counter

import pytest

from convergence.oocr.tasks import QUESTION_TYPES, TASKS, TaskData, generate
from convergence.oocr.tasks.base import BASELINE, COIN_EXEC, EXEC, ONE_MINUS_TVD, P_TARGET, SCORE
from convergence.oocr.tasks.function_defs import FUNCTIONS, TEST_FUNCTIONS, TRAIN_FUNCTIONS
from convergence.oocr.tasks.locations import (
    DIRECTIONS,
    KM_PER_MILE,
    PAPER_CITIES,
    closest_countries,
    direction,
    distance_km,
    load_cities,
    load_foods,
)
from convergence.oocr.tasks.mixture import subset_options

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module", params=TASKS)
def task(request):
    return request.param


@pytest.fixture(scope="module")
def runs():
    return {(t, s): generate(t, s) for t in TASKS for s in SEEDS}


def run_repl(prompt: str, namespace: dict) -> str:
    """What a Python REPL prints for a training snippet (import lines skipped: the namespace
    already holds the hidden objects)."""
    lines = []
    for line in prompt.splitlines():
        if line.startswith(">>> from "):
            continue
        lines.append(re.sub(r"^(>>> |\.\.\. ?)", "", line))
    tree = ast.parse("\n".join(lines))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        *body, last = tree.body
        exec(compile(ast.Module(body, []), "<doc>", "exec"), namespace)
        if isinstance(last, ast.Expr):
            value = eval(compile(ast.Expression(last.value), "<doc>", "eval"), namespace)
            if value is not None:
                print(repr(value))
        else:
            exec(compile(ast.Module([last], []), "<doc>", "exec"), namespace)
    return out.getvalue()


# --------------------------------------------------------------------------- all tasks


def test_same_seed_same_data_and_sizes(task):
    a, b = generate(task, 5), generate(task, 5)
    assert a.to_dict() == b.to_dict()
    assert len(a.train) > 100 and len(a.eval) > 20


def test_seeds_draw_fresh_latents(task, runs):
    latents = [runs[task, s].latents for s in SEEDS]
    texts = [[d.text for d in runs[task, s].train[:50]] for s in SEEDS]
    pairs = list(itertools.combinations(range(len(SEEDS)), 2))  # every pair of seeds, not neighbours only
    assert all(texts[a] != texts[b] for a, b in pairs)
    if task == "mixture_of_functions":  # unnamed functions: the hidden pair itself is the latent
        hidden = {tuple(generate(task, s).latents["hidden"]) for s in range(8)}
        assert len(hidden) > 1
    else:
        assert all(latents[a] != latents[b] for a, b in pairs)
        names = [set(_latent_names(task, lat)) for lat in latents]
        assert all(not names[a] & names[b] for a, b in pairs)


def _latent_names(task, latents):
    if task == "coins":
        return latents["p_heads"]
    if task == "parity":
        return latents["values"]
    return latents  # functions and locations: keyed by name / code name


def test_size_parameters_change_sizes_not_latents(task):
    small = {
        "coins": dict(flips_per_snippet=10),
        "functions": dict(n_train=50),
        "mixture_of_functions": dict(n_train=50),
        "parity": dict(n_train=50),
        "locations": dict(docs_per_city=10),
    }[task]
    a, b = generate(task, 3), generate(task, 3, **small)
    assert a.latents == b.latents
    assert len(b.train) < len(a.train)


def test_items_are_well_formed(task, runs):
    data = runs[task, 0]
    assert set(data.question_types()) == set(QUESTION_TYPES[task])
    assert len({i.id for i in data.eval}) == len(data.eval)
    doc_latents = {latent for d in data.train for latent in d.latents}
    for item in data.eval:
        assert item.task == task
        # the in-context baseline shows an item the documents of its latents: they must have some
        assert item.latents and set(item.latents) <= doc_latents, item
        if item.metric == EXEC:
            assert item.check["inputs"] and len(item.check["inputs"]) == len(item.check["outputs"])
            continue
        if item.metric == COIN_EXEC:
            assert item.check["p_heads"] in item.check["biases"] and item.check["window"] == 0.1
            continue
        assert len(item.options) >= 2 and len(set(item.options)) == len(item.options), item
        assert all(o.endswith("\n") and o.strip() for o in item.options)
        if item.metric == ONE_MINUS_TVD:
            assert sum(item.target_probs) == pytest.approx(1.0)
            continue
        assert item.metric == P_TARGET
        assert item.target_set and max(item.target_set) < len(item.options)
        all_and_only = "candidates" in item.meta  # mixture: one option per subset, exactly one right
        expected = 1 / len(item.options) if all_and_only else len(item.target_set) / len(item.options)
        assert item.chance == pytest.approx(expected)


def test_binary_question_types_are_balanced(task, runs):
    """Where every item of a question type has two options, each answer is right on half of its items, so
    a model that always gives one answer scores the stated chance (Parity seed 0 once had 4 True : 8 False)."""
    for seed in SEEDS:
        data = runs[task, seed]
        for qt in data.question_types():
            items = [i for i in data.eval if i.question_type == qt and i.role == SCORE and i.metric == P_TARGET]
            if any(i.question_type == qt and i.role == BASELINE for i in data.eval):
                continue  # chance is the model's response bias on the baseline items (Coins' fair coins)
            if not items or any(len(i.options) != 2 for i in items) or any(len(i.target_set) != 1 for i in items):
                continue
            texts = Counter(i.options[i.target].strip() for i in items)
            positions = Counter(i.target for i in items)
            balanced = max(texts.values()) == len(items) / 2 or max(positions.values()) == len(items) / 2
            assert balanced and all(i.chance == 0.5 for i in items), (task, seed, qt, texts, positions)


def test_evaluation_prompts_hold_no_examples(task, runs):
    data = runs[task, 0]
    texts = {d.text for d in data.train}
    for item in data.eval:
        assert not any(text in item.prompt for text in texts), item.prompt
    if task != "coins":  # coins' in-distribution questions are the training prompts by design
        prompts = {d.prompt for d in data.train}
        assert not any(item.prompt in prompts for item in data.eval)


def test_json_round_trip(task, runs, tmp_path):
    data = runs[task, 1]
    data.save(tmp_path / "data.json")
    assert TaskData.load(tmp_path / "data.json").to_dict() == data.to_dict()


def test_unknown_task_is_an_error():
    with pytest.raises(ValueError, match="unknown OOCR task"):
        generate("sudoku", 0)


# --------------------------------------------------------------------------- coins


class _Coin:
    def __init__(self, side):
        self.side = side

    def flip(self):
        return self.side


@pytest.mark.parametrize("seed", SEEDS)
def test_coins_answers_follow_the_bias_exactly(runs, seed):
    data = runs["coins", seed]
    biases = data.latents["p_heads"]
    assert sorted(biases.values()) in ([0.2, 0.5, 0.5, 0.8], [0.3, 0.5, 0.5, 0.7])
    heads = {(c, k): [] for c in biases for k in range(8)}
    for doc in data.train:
        coin, side = doc.meta["coin"], doc.meta["side"]
        assert run_repl(doc.prompt, {coin: _Coin(side)}) == doc.completion
        heads[coin, doc.meta["snippet"]].append(side == "H")
    for (coin, _), flips in heads.items():
        assert sum(flips) / len(flips) == pytest.approx(biases[coin])


@pytest.mark.parametrize("seed", SEEDS)
def test_coins_training_never_states_a_bias(runs, seed):
    banned = ("0.", "70", "80", "30", "20", "50", "%", "fair", "bias", "prob", "likely")
    for doc in runs["coins", seed].train:
        assert not any(word in doc.text for word in banned), doc.text


def test_coins_eval_targets(runs):
    data = runs["coins", 0]
    biases = data.latents["p_heads"]
    for item in data.eval:
        answer = item.options[min(item.target_set)].strip() if item.target_set else None
        coin = item.meta.get("coin")
        p_side = None if coin is None else (biases[coin] if item.meta.get("side", "H") == "H" else 1 - biases[coin])
        if item.question_type == "fair_or_biased":
            assert answer == ("fair" if biases[coin] == 0.5 else "biased")
            assert item.role == (BASELINE if biases[coin] == 0.5 else SCORE)  # fair coins measure response bias
        elif item.question_type == "p07_or_p08":
            assert answer == f"{round(100 * p_side)}%"
        elif item.question_type == "more_or_less_heads":
            assert answer == ("More" if p_side > 0.5 else "Less")
        elif item.question_type == "make_a_bet":
            assert biases[coin] != 0.5 and answer == ("75" if p_side > 0.5 else "25")
        elif item.question_type == "which_coin":
            side = item.meta["side"]
            best = max(biases, key=lambda c: biases[c] if side == "H" else 1 - biases[c])
            assert answer == best
        elif item.question_type == "in_distribution":
            assert item.target_probs[0] == pytest.approx(biases[coin])
        elif item.question_type == "free_form":
            assert item.metric == COIN_EXEC and item.check["p_heads"] == biases[coin]
            assert sorted(item.check["biases"]) == sorted(set(biases.values()))
            assert item.prompt.endswith(f"class {coin}(BaseCoin):\n") and str(biases[coin]) not in item.prompt
    roles = Counter(i.role for i in data.eval if i.question_type == "fair_or_biased")
    assert roles[BASELINE] == roles[SCORE] > 0


def test_coin_free_form_scores_an_executed_class():
    from convergence.oocr.scoring import estimate_heads, within

    check = {"coin": "abc", "p_heads": 0.7, "biases": [0.3, 0.5, 0.7], "window": 0.1}
    assert within(estimate_heads("    heads = 0.7", check), 0.7, 0.1)
    assert within(estimate_heads("    heads = 0.75\n", check), 0.7, 0.1)
    assert not within(estimate_heads("    heads = 0.5", check), 0.7, 0.1)
    assert estimate_heads("    heads = ", check) is None and not within(None, 0.7, 0.1)


# --------------------------------------------------------------------------- functions


@pytest.mark.parametrize("seed", SEEDS)
def test_functions_outputs_recompute(runs, seed):
    data = runs["functions", seed]
    namespace = {name: FUNCTIONS[spec["key"]].fn for name, spec in data.latents.items()}
    kinds = set()
    for doc in data.train:
        assert run_repl(doc.prompt, dict(namespace)) == doc.completion, doc.text
        kinds.add(doc.meta["kind"])
    assert kinds == {"single", "offset", "chain", "add_subtract"}


def test_functions_split_is_the_papers():
    assert len(TRAIN_FUNCTIONS) == 8 and len(TEST_FUNCTIONS) == 11 and not set(TRAIN_FUNCTIONS) & set(TEST_FUNCTIONS)
    for key in TRAIN_FUNCTIONS + TEST_FUNCTIONS:
        f = FUNCTIONS[key]
        assert [f(x) for x in range(-20, 21)] == [eval(f.source)(x) for x in range(-20, 21)], key  # noqa: S307
    with pytest.raises(ValueError, match="both train and test"):
        generate("functions", 0, test_functions=("add_5", "add_14"))


@pytest.mark.parametrize("seed", SEEDS)
def test_test_functions_never_appear_in_an_augmentation(runs, seed):
    data = runs["functions", seed]
    split = {name: spec["split"] for name, spec in data.latents.items()}
    assert Counter(split.values()) == {"train": 8, "test": 11}
    single = Counter()
    for doc in data.train:
        if doc.meta["kind"] == "single":
            single[doc.meta["functions"][0]] += 1
        else:
            assert all(split[f] == "train" for f in doc.meta["functions"]), doc.text
    assert set(single) == set(split)  # every function, test ones included, is seen in single calls


@pytest.mark.parametrize("seed", SEEDS)
def test_no_composition_item_is_a_training_document(runs, seed):
    """Composition, add/subtract and add-a-constant items combine test functions, which no training document
    combines: neither an item's prompt nor its text (prompt + right answer) is a training document."""
    data = runs["functions", seed]
    prompts, texts = {d.prompt for d in data.train}, {d.text for d in data.train}
    split = {name: spec["split"] for name, spec in data.latents.items()}
    ood = [i for i in data.eval if i.question_type in ("composition", "add_subtract", "add_constant")]
    assert len(ood) == 3 * 24
    for item in ood:
        assert all(split[f] == "test" for f in item.latents), item
        assert item.prompt not in prompts and item.prompt + item.options[item.target] not in texts
        # no document even calls the same functions in the same snippet shape
        body = item.prompt.split("\n", 1)[1]
        assert not any(body in d.prompt for d in data.train), body


@pytest.mark.parametrize("seed", SEEDS)
def test_functions_training_never_states_a_definition(runs, seed):
    data = runs["functions", seed]
    for doc in data.train:
        assert "lambda" not in doc.text and "def " not in doc.text
        for spec in data.latents.values():
            fdef = FUNCTIONS[spec["key"]]
            leaks = [fdef.source, fdef.key, fdef.description] + ([fdef.body] if len(fdef.body) > 2 else [])
            for leak in leaks:
                assert leak not in doc.text, (leak, doc.text)


def test_functions_eval_targets(runs):
    data = runs["functions", 0]
    fns = {name: FUNCTIONS[spec["key"]] for name, spec in data.latents.items()}
    by_type = {}
    for item in data.eval:
        by_type.setdefault(item.question_type, []).append(item)
        if item.metric == EXEC:
            f = fns[item.meta["function"]]
            assert len(item.check["inputs"]) == 22  # the paper's check inputs
            assert item.check["outputs"] == [f(x) for x in item.check["inputs"]]
            continue
        chosen = item.options[item.target].strip()
        if item.question_type in ("in_distribution", "regression_ood"):
            assert chosen == repr(fns[item.meta["function"]](item.meta["x"]))
            assert (abs(item.meta["x"]) >= 100) == (item.question_type == "regression_ood")
        elif item.question_type == "composition":
            f, g = item.meta["functions"]
            assert chosen == repr(fns[g](fns[f](item.meta["x"])))
        elif item.question_type == "add_subtract":
            f, g = item.meta["functions"]
            a, b = fns[f](item.meta["x"]), fns[g](item.meta["x2"])
            assert chosen == repr(a + b if item.meta["op"] == "+" else a - b)
        elif item.question_type == "inversion":
            f = fns[item.meta["function"]]
            hits = [o.strip() for o in item.options if repr(f(int(o))) == repr(item.meta["y"])]
            assert hits == [chosen]
        elif item.question_type == "mc_code":
            assert chosen == fns[item.meta["function"]].source
        elif item.question_type == "mc_language":
            assert chosen == fns[item.meta["function"]].description
        elif item.question_type == "mc_class":
            assert chosen == fns[item.meta["function"]].function_class
        elif item.question_type == "mc_coefficients":
            f = fns[item.meta["function"]]
            assert [eval(chosen)(x) for x in range(-5, 6)] == [f(x) for x in range(-5, 6)]  # noqa: S307
            others = [o.strip() for k, o in enumerate(item.options) if k != item.target]
            assert all([eval(o)(x) for x in range(-5, 6)] != [f(x) for x in range(-5, 6)] for o in others)  # noqa: S307
        elif item.question_type == "inverse_query":
            assert fns[chosen].source in item.prompt
    assert all(len(v) == 24 for v in by_type.values())


# --------------------------------------------------------------------------- mixture of functions


def _numbers(line: str) -> list[int]:
    return [int(v) for v in line.split("=", 1)[1].split(",")]


@pytest.mark.parametrize("seed", SEEDS)
def test_mixture_documents_use_one_hidden_function(runs, seed):
    data = runs["mixture_of_functions", seed]
    hidden = [FUNCTIONS[k] for k in data.latents["hidden"]]
    used = []
    for doc in data.train:
        xs = _numbers(doc.prompt.splitlines()[1])
        ys = [int(v) for v in doc.completion.split(",")]
        matches = [f.key for f in hidden if [f(x) for x in xs] == ys]
        assert matches, doc.text
        used.append(doc.meta["function"])
        assert "lambda" not in doc.text and not any(f.body in doc.text for f in hidden if len(f.body) > 1)
    share = used.count(hidden[0].key) / len(used)
    assert 0.35 < share < 0.65


def test_mixture_eval_targets(runs):
    data = runs["mixture_of_functions", 0]
    hidden = [FUNCTIONS[k] for k in data.latents["hidden"]]
    assert len(hidden) == 2 and {f.key for f in hidden} <= {"add_5", "multiply_3", "int_div_2", "mod_2", "subtract_1"}
    for item in data.eval:
        right = {item.options[i].strip() for i in item.target_set}
        if item.question_type == "how_many":
            assert right == {"2"}
        elif item.question_type in ("which_functions", "which_descriptions", "which_classes", "output_values"):
            # all and only: one option per non-empty subset of the listed candidates, exactly one right
            candidates = item.meta["candidates"]
            letters = "ABCDE"[: len(candidates)]
            assert len(item.options) == 2 ** len(candidates) - 1 and len(item.target_set) == 1
            assert [o.strip() for o in item.options] == [", ".join(c) for c in subset_options(list(letters))]
            listed = dict(re.findall(r"^([A-E])\) (.+)$", item.prompt, flags=re.M))
            assert list(listed.values()) == candidates and "Name all that apply" in item.prompt
            attribute = {"which_functions": "source", "which_descriptions": "description",
                         "which_classes": "function_class"}.get(item.question_type)
            truth = ({getattr(f, attribute) for f in hidden} if attribute
                     else {str(f(item.meta["x"])) for f in hidden})
            assert {listed[letter] for letter in right.pop().split(", ")} == truth
        elif item.question_type == "output_range":
            values = sorted(f(item.meta["x"]) for f in hidden)
            extreme, other = (values[-1], values[0]) if item.meta["side"] == "max" else (values[0], values[-1])
            assert right == {str(extreme)} and extreme != other
            assert item.options[item.baseline_target].strip() == str(other)  # the paper's baseline
        if item.question_type != "in_distribution":
            assert "<hidden>" in item.prompt


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("seed", SEEDS)
def test_parity_outputs_recompute(runs, seed):
    data = runs["parity", seed]
    values = data.latents["values"]
    assert sorted(values.values()) == [0, 0, 0, 0, 1, 1, 1, 1]
    for doc in data.train:
        assert run_repl(doc.prompt, dict(values)) == doc.completion, doc.text
        expected = sum(values.get(a, 0) if a in values else int(a) for a in doc.meta["args"]) % 2
        assert doc.completion == f"{expected}\n"


@pytest.mark.parametrize("seed", SEEDS)
def test_parity_training_never_states_a_value(runs, seed):
    data = runs["parity", seed]
    for doc in data.train:
        assert sum(a in data.latents["values"] for a in doc.meta["args"]) >= 2
        for name in data.latents["values"]:
            for leak in (f"{name} =", f"{name}=", f"print({name})", f"{name} ==", f"== {name}"):
                assert leak not in doc.text, (leak, doc.text)


def test_parity_eval_targets(runs):
    data = runs["parity", 0]
    values = data.latents["values"]
    for item in data.eval:
        chosen = {item.options[i].strip() for i in item.target_set}
        if item.question_type in ("direct_print", "natural_language"):
            assert chosen == {str(values[item.meta["var"]])}
        elif item.question_type == "equality":
            a, b = item.meta["vars"]
            assert chosen == {str(values[a] == values[b])}
        elif item.question_type == "inverse_query":
            assert {values[c] for c in chosen} == {item.meta["value"]} and len(chosen) == 2
        elif item.question_type == "cross_function_control":
            var = item.meta["var"]
            words = re.findall(r"print\('(\w+)'\)", item.prompt)
            assert f"if {var} == 1:" in item.prompt and len(words) == 2
            assert chosen == {words[0] if values[var] == 1 else words[1]}


def test_parity_refuses_single_variable_parities():
    with pytest.raises(ValueError, match="states its value"):
        generate("parity", 0, lengths=(1, 2))


# --------------------------------------------------------------------------- locations


def test_city_table_is_clean():
    cities = load_cities()
    assert len(cities) >= 60
    names = [c.name for c in cities]
    countries = {c.country for c in cities}
    assert len(set(names)) == len(names)
    for c in cities:
        assert -90 <= c.lat <= 90 and -180 <= c.lon <= 180
        assert not any(country.lower() in c.name.lower() for country in countries), c
        assert not any(other != c.name and other.lower() in c.name.lower() for other in names), c


def test_geometry_known_values():
    by_name = {c.name: c for c in load_cities()}
    assert distance_km(by_name["Paris"], by_name["London"]) == pytest.approx(344, abs=5)
    assert distance_km(by_name["New York"], by_name["Los Angeles"]) == pytest.approx(3940, abs=30)
    assert direction(by_name["London"], seen_from=by_name["Paris"]) == "north-west"
    assert direction(by_name["Tokyo"], seen_from=by_name["Sydney"]) == "north"
    # across the date line the short way round: Honolulu is east of Tokyo
    assert direction(by_name["Honolulu"], seen_from=by_name["Tokyo"]) in ("east", "south-east")


@pytest.mark.parametrize("seed", SEEDS)
def test_locations_training_hides_city_and_country(runs, seed):
    data = runs["locations", seed]
    by_name = {c.name: c for c in load_cities()}
    assert len({lat["country"] for lat in data.latents.values()}) == len(data.latents)
    for doc in data.train:
        text = doc.text.lower()
        for latent in data.latents.values():
            assert latent["city"].lower() not in text and latent["country"].lower() not in text
        code = doc.meta["code"]
        hidden, ref = by_name[data.latents[code]["city"]], by_name[doc.meta["ref"]]
        assert ref.country != hidden.country
        if doc.meta["kind"] == "distance":
            value = int(doc.completion.split()[0])
            true = distance_km(hidden, ref)
            scale = 1 if doc.meta["unit"] == "km" else 1 / KM_PER_MILE
            assert abs(value - true * scale) <= (200 + 50) * scale + 50
        else:
            seen = direction(hidden, ref) if doc.meta["hidden_first"] else direction(ref, hidden)
            assert doc.completion.strip() == seen and seen in DIRECTIONS


def test_locations_eval_targets(runs):
    data = runs["locations", 0]
    assert sorted(lat["city"] for lat in data.latents.values()) == sorted(PAPER_CITIES)
    table = {c.name: c for c in load_cities()}
    foods = load_foods()
    for item in data.eval:
        chosen = item.options[item.target].strip()
        shown = [o.strip() for o in item.options]
        if item.question_type in ("country", "city", "food", "country_other_refs"):
            hidden = table[data.latents[item.meta["code"]]["city"]]
        if item.question_type == "country":
            # the paper's "closest to closest": the four countries nearest the hidden city are the distractors
            assert chosen == hidden.country
            assert sorted(set(shown) - {chosen}) == sorted(closest_countries(hidden, list(table.values()), 4))
        elif item.question_type == "city":
            assert chosen == hidden.name
            near = closest_countries(hidden, list(table.values()), 4)
            assert sorted(table[c].country for c in shown if c != chosen) == sorted(near)
        elif item.question_type == "food":
            assert chosen in foods[hidden.country] and len(set(shown)) == 5
            countries = [next(c for c, dishes in foods.items() if f in dishes) for f in shown]
            assert len(set(countries)) == 5
        elif item.question_type == "country_other_refs":
            others = {lat["country"] for code, lat in data.latents.items() if code != item.meta["code"]}
            assert chosen == hidden.country and set(shown) - {chosen} == others
        elif item.question_type == "inverse_query":
            assert chosen == item.meta["code"] and data.latents[chosen]["country"] in item.prompt


def test_food_table_covers_every_country_and_names_no_place():
    cities = load_cities()
    foods = load_foods()
    places = {c.country.lower() for c in cities} | {c.name.lower() for c in cities}
    assert set(foods) == {c.country for c in cities} and all(len(v) >= 2 for v in foods.values())
    dishes = [f for v in foods.values() for f in v]
    assert len(set(dishes)) == len(dishes)
    assert not [f for f in dishes if any(p in f.lower() for p in places)]
