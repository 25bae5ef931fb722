"""Evaluate a model on a task's items under a condition, summarise across runs with hierarchical
bootstrap CIs, flag tasks whose training task was not learned, and plot one task."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from convergence.utils import save_figure

from .scoring import (
    bootstrap_ci,
    check_free_form,
    class_body_end,
    estimate_heads,
    first_line,
    normalise,
    one_minus_tvd,
    option_logprobs,
    p_target,
    picks_target,
    sample_batch,
    within,
)
from .tasks.base import BASELINE, COIN_EXEC, EXEC, ONE_MINUS_TVD, P_TARGET, SCORE, Item, TaskData

RESULT_COLUMNS = [
    "task",
    "run_seed",
    "item_id",
    "question_type",
    "role",
    "model",
    "condition",
    "metric",
    "score",
    "p_target",
    "correct",
    "chance",
    "n_options",
    "icl_k",
    "answer",
    "prediction",
]
SUMMARY_COLUMNS = [
    "task",
    "question_type",
    "model",
    "condition",
    "score",
    "ci_low",
    "ci_high",
    "chance",
    "majority",
    "n",
    "n_seeds",
    "status",
    "precision",  # what the scoring computed in (each result file's metadata; "bf16,fp32" where runs differ)
]
CONDITION_ORDER = ("finetuned", "icl", "untuned")
UNRECORDED = "unrecorded"  # the precision of result files written before it was recorded
IN_DISTRIBUTION = "in_distribution"
# status of a summary row: a finetuned in-distribution score whose CI does not clear both chance and the
# untuned model means the fine-tune never learned the training task, so its out-of-context rows cannot
# show anything.
OK, NOT_LEARNED, UNINTERPRETABLE = "ok", "not_learned", "uninterpretable"
BASELINE_CONDITIONS = ("untuned", "icl")  # what each fine-tuned row is compared with, paired by item
COMPARISON_COLUMNS = [
    "task", "question_type", "model", "condition", "baseline", "score", "baseline_score", "difference", "ci_low",
    "ci_high", "p_value", "q_value", "n", "n_seeds", "verdict", "status",
]


def evaluate_items(
    model,
    tokenizer,
    items: Sequence[Item],
    *,
    model_name: str,
    condition: str,
    run_seed: int = 0,
    contexts: Sequence[str | None] | None = None,
    icl_k: Sequence[int] | None = None,
    batch_size: int = 16,
    samples: int = 5,
    temperature: float = 1.0,
    max_new_tokens: int = 32,
    generation_seed: int = 0,
    timeout: float = 2.0,
    precision: str = "fp32",
) -> pd.DataFrame:
    """One row per item: its score under the item's metric, P(target), whether the model's choice is
    right, and its chance (the model's own baseline where the paper's baseline is one).

    `contexts`: per item a text read before the prompt (the in-context documents), `icl_k` how many
    documents it holds. Free-form items are answered by `samples` samples at `temperature` (the
    paper: 5 at 1.0), each checked by running it in the sandbox; their score is the fraction right."""
    contexts = list(contexts) if contexts is not None else [None] * len(items)
    scored = [k for k, i in enumerate(items) if i.metric in (P_TARGET, ONE_MINUS_TVD)]
    logprobs = dict(
        zip(
            scored,
            option_logprobs(model, tokenizer, [items[k] for k in scored], batch_size,
                            contexts=[contexts[k] for k in scored], precision=precision),
        )
    )
    sampled = [k for k, i in enumerate(items) if i.metric in (EXEC, COIN_EXEC)]
    answers = dict(zip(sampled, sample_batch(
        model,
        tokenizer,
        [items[k].prompt for k in sampled],
        contexts=[contexts[k] for k in sampled],
        n=samples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=generation_seed,
        stops=[first_line if items[k].metric == EXEC else class_body_end for k in sampled],
        precision=precision,
    ))) if sampled else {}
    rows = []
    for k, item in enumerate(items):
        if item.metric == EXEC:
            row = _exec_row(item, answers[k], timeout)
        elif item.metric == COIN_EXEC:
            row = _coin_row(item, answers[k], timeout)
        else:
            row = _likelihood_row(item, logprobs[k])
        rows.append(
            {
                "task": item.task,
                "run_seed": run_seed,
                "item_id": item.id,
                "question_type": item.question_type,
                "role": item.role,
                "model": model_name,
                "condition": condition,
                "metric": item.metric,
                "n_options": len(item.options),
                "icl_k": icl_k[k] if icl_k is not None else 0,
                "answer": _answer(item),
                **row,
            }
        )
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def _answer(item: Item) -> str:
    """The right answer as text (what a constant-answer strategy bets on); '' where there is none."""
    if item.metric != P_TARGET:
        return ""
    return " | ".join(sorted(item.options[t].strip() for t in item.target_set))


def item_score(item: Item, logprobs: np.ndarray) -> float:
    """An item's score from its options' log-likelihoods (P(target) or 1 - TVD), as the table holds it."""
    return _likelihood_row(item, logprobs)["score"]


def _likelihood_row(item: Item, logprobs: np.ndarray) -> dict:
    best = int(np.argmax(logprobs))
    if item.metric == ONE_MINUS_TVD:
        probs = normalise(logprobs)
        return {
            "score": one_minus_tvd(logprobs, item.target_probs),
            "p_target": np.nan,
            "correct": np.nan,  # matching a distribution has no right/wrong
            "chance": item.chance,
            "prediction": " / ".join(f"{o.strip()}={p:.2f}" for o, p in zip(item.options, probs)),
        }
    if item.metric != P_TARGET:
        raise ValueError(f"unknown metric {item.metric!r}")
    p = p_target(logprobs, item.target_set)
    chance = item.chance if item.baseline_target is None else p_target(logprobs, item.baseline_target)
    return {
        "score": p,
        "p_target": p,
        "correct": float(picks_target(logprobs, item.target_set)),
        "chance": chance,
        "prediction": item.options[best].strip(),
    }


_lambda_cache: dict[tuple, bool] = {}


def _exec_row(item: Item, answers: list[str], timeout: float) -> dict:
    right = []
    for a in answers:  # the same text twice runs once
        key = (a, repr(item.check))
        if key not in _lambda_cache:
            _lambda_cache[key] = check_free_form(a, item.check, timeout=timeout)
        right.append(_lambda_cache[key])
    fraction = float(np.mean(right))
    return {"score": fraction, "p_target": np.nan, "correct": fraction, "chance": item.chance,
            "prediction": answers[0]}


def _coin_row(item: Item, answers: list[str], timeout: float) -> dict:
    """The paper's free-form coin score: the share of samples whose estimated P(heads) lies within
    the window of the coin's bias; its baseline: the same share averaged over every bias of the run."""
    check = item.check
    estimates = [estimate_heads(a, check, seed=k, timeout=timeout) for k, a in enumerate(answers)]
    hit = lambda bias: float(np.mean([within(e, bias, check["window"]) for e in estimates]))  # noqa: E731
    return {
        "score": hit(check["p_heads"]),
        "p_target": np.nan,
        "correct": hit(check["p_heads"]),
        "chance": float(np.mean([hit(b) for b in check["biases"]])),
        "prediction": "; ".join("-" if e is None else f"{e:.2f}" for e in estimates),
    }


# --------------------------------------------------------------------------- in-context learning


def icl_contexts(data: TaskData, items: Sequence[Item], k: int, max_tokens: int | None, tokenizer=None,
                 seed: int = 0) -> tuple[list[str], list[int]]:
    """The in-context documents of each item: up to `k` training documents *of the item's own
    latents* (any document where the item names none), drawn once per set of latents, so that items
    about the same latents share one context (scored once). With `max_tokens` (and a tokenizer), the
    context plus the item's longest prompt and option fits in it: k is cut to the largest that
    fits. Returns the contexts and the k each holds."""
    doc_tokens = None
    if max_tokens is not None:
        if tokenizer is None:
            raise ValueError("max_tokens needs the tokenizer that counts the tokens")
        doc_tokens = [len(tokenizer(d.text + "\n", add_special_tokens=False)["input_ids"]) for d in data.train]
    groups: dict[tuple, list[int]] = {}
    for j, item in enumerate(items):
        groups.setdefault(tuple(sorted(item.latents)), []).append(j)
    contexts: list[str] = [""] * len(items)
    ks = [0] * len(items)
    for key, members in groups.items():
        eligible = [i for i, d in enumerate(data.train) if set(d.latents) & set(key)] or list(range(len(data.train)))
        rng = np.random.default_rng([seed, zlib.crc32("|".join(key).encode())])
        order = [eligible[i] for i in rng.permutation(len(eligible))]
        budget = None
        if max_tokens is not None:
            longest = max(_item_tokens(tokenizer, items[j]) for j in members)
            budget = max_tokens - longest
        chosen, used = [], 0
        for i in order[:k]:
            if budget is not None:
                if used + doc_tokens[i] > budget:
                    break
                used += doc_tokens[i]
            chosen.append(i)
        text = "".join(data.train[i].text + "\n" for i in chosen)
        for j in members:
            contexts[j], ks[j] = text, len(chosen)
    return contexts, ks


def _item_tokens(tokenizer, item: Item) -> int:
    prompt = len(tokenizer(item.prompt, add_special_tokens=True)["input_ids"])
    option = max((len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in item.options), default=48)
    return prompt + option


def evaluate_task(
    model,
    tokenizer,
    data: TaskData,
    *,
    model_name: str,
    condition: str,
    icl_k: int = 10,
    icl_seed: int = 0,
    icl_max_tokens: int | None = None,
    question_types: Sequence[str] | None = None,
    **options,
) -> pd.DataFrame:
    """All items of one task for one model and condition (finetuned | icl | untuned): every condition
    answers the same items. `options` go to `evaluate_items` (batch size, sampling, precision)."""
    items = list(data.eval)
    if question_types is not None:
        items = [i for i in items if i.question_type in set(question_types)]
    contexts = ks = None
    if condition == "icl":
        contexts, ks = icl_contexts(data, items, icl_k, icl_max_tokens, tokenizer, seed=icl_seed)
    return evaluate_items(
        model, tokenizer, items, model_name=model_name, condition=condition, run_seed=data.seed,
        contexts=contexts, icl_k=ks, **options,
    )


# --------------------------------------------------------------------------- summary


def summarize(results: pd.DataFrame, value: str = "score", n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per task x question type x model x condition over the scored items: the mean of
    `value` ("score" or "correct") with a 95% bootstrap CI, hierarchical when results hold several
    run seeds (seeds resampled, then items within each: the paper's error bars are across
    fine-tunes); `chance`: the items' chance, or where the question type has baseline items (Coins'
    fair coins) 1 - their mean P(target), the model's own response bias; `majority`: the score of
    always giving the most common right answer (equal to chance for a balanced binary item set);
    `n`, `n_seeds`; `status`: see `flag_unlearned`."""
    rows = []
    keys = ["task", "question_type", "model", "condition"]
    results = results.reset_index(drop=True)
    if "role" not in results:
        results = results.assign(role=SCORE)
    for key, group in results.groupby(keys, sort=False):
        baseline = group[group["role"] == BASELINE]
        group = group[group["role"] != BASELINE].dropna(subset=[value])
        if group.empty:
            continue
        several_runs = group["run_seed"].nunique() > 1
        mean, low, high = bootstrap_ci(
            group[value].to_numpy(dtype=float),
            groups=group["run_seed"].to_numpy() if several_runs else None,
            n_boot=n_boot,
            seed=seed,
        )
        chance = 1 - baseline["p_target"].mean() if len(baseline) else group["chance"].mean()
        stats = {
            "score": mean,
            "ci_low": min(low, mean),  # bootstrap means of equal values can differ in the last bit
            "ci_high": max(high, mean),
            "chance": chance,
            "majority": _majority(group),
            "n": len(group),
            "n_seeds": group["run_seed"].nunique(),
            "status": OK,
            "precision": ",".join(sorted(set(group["precision"]))) if "precision" in group else UNRECORDED,
        }
        rows.append(dict(zip(keys, key)) | stats)
    return flag_unlearned(pd.DataFrame(rows, columns=SUMMARY_COLUMNS))


def _majority(group: pd.DataFrame) -> float:
    answers = group["answer"] if "answer" in group else pd.Series("", index=group.index)
    answers = answers[answers.fillna("") != ""]
    if answers.empty:
        return np.nan
    return float(answers.value_counts().iloc[0] / len(answers))


def learning_bar(summary: pd.DataFrame, task: str, model: str) -> float:
    """What the fine-tuned in-distribution CI must clear for `task` to count as learned: the higher of
    chance and the untuned model's in-distribution score (chance alone where no untuned row exists)."""
    rows = summary[(summary["task"] == task) & (summary["model"] == model)
                   & (summary["question_type"] == IN_DISTRIBUTION)]
    chance = rows.loc[rows["condition"] == "finetuned", "chance"]
    untuned = rows.loc[rows["condition"] == "untuned", "score"]
    return float(max([*chance, *untuned]))


def flag_unlearned(summary: pd.DataFrame) -> pd.DataFrame:
    """Mark each (task, model) whose fine-tuned in-distribution CI does not lie above both chance and
    the untuned model's score (`learning_bar`): that row `not_learned`, and every other fine-tuned row
    of the task `uninterpretable` (the model never learned the training task, so its answers about
    the latent cannot show inference). A fine-tune scoring below its untuned model is not learned,
    however far above chance."""
    summary = summary.copy()
    finetuned = summary["condition"] == "finetuned"
    for (task, model), group in summary[finetuned].groupby(["task", "model"], sort=False):
        in_dist = group[group["question_type"] == IN_DISTRIBUTION]
        if in_dist.empty:
            continue
        row = in_dist.iloc[0]
        if row["ci_low"] > learning_bar(summary, task, model):
            continue
        summary.loc[in_dist.index, "status"] = NOT_LEARNED
        summary.loc[group.index.difference(in_dist.index), "status"] = UNINTERPRETABLE
    return summary


def compare_conditions(results: pd.DataFrame, summary: pd.DataFrame, n_boot: int = 2000, seed: int = 0,
                       n_resamples: int = 9999) -> pd.DataFrame:
    """Each fine-tuned row against each baseline condition (untuned, icl), paired by item: the mean
    difference of scores with a 95% bootstrap CI (seeds, then items, as `summarize`), a two-sided
    paired sign-flip permutation p-value (`scipy.stats.permutation_test`; exact up to 13 items) and
    BH q-values over every row of the table (`scipy.stats.false_discovery_control`). `verdict`:
    finetuned_higher / finetuned_lower at q < 0.05, else no_difference; `status` is the fine-tuned
    row's from `summary` (uninterpretable where the training task was not learned)."""
    from scipy.stats import false_discovery_control, permutation_test

    results = results.reset_index(drop=True)
    if "role" not in results:
        results = results.assign(role=SCORE)
    scored = results[results["role"] != BASELINE].dropna(subset=["score"])
    keys = ["task", "question_type", "model"]
    status = summary.loc[summary["condition"] == "finetuned"].set_index(keys)["status"]
    rows = []
    for key, group in scored.groupby(keys, sort=False):
        by_condition = {c: g.set_index(["run_seed", "item_id"])["score"] for c, g in group.groupby("condition")}
        if "finetuned" not in by_condition:
            continue
        tuned = by_condition["finetuned"]
        for baseline in BASELINE_CONDITIONS:
            if baseline not in by_condition:
                continue
            paired = pd.concat({"tuned": tuned, "base": by_condition[baseline]}, axis=1, join="inner")
            if paired.empty:
                continue
            diff = (paired["tuned"] - paired["base"]).to_numpy(dtype=float)
            runs = paired.index.get_level_values("run_seed").to_numpy()
            several = len(set(runs)) > 1
            mean, low, high = bootstrap_ci(diff, groups=runs if several else None, n_boot=n_boot, seed=seed)
            if np.allclose(diff, 0.0, atol=1e-12):
                p = 1.0  # nothing to permute: every pair is equal
            else:
                test = permutation_test(
                    (paired["tuned"].to_numpy(dtype=float), paired["base"].to_numpy(dtype=float)),
                    lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples", vectorized=True,
                    n_resamples=n_resamples, alternative="two-sided", random_state=seed,
                )
                p = float(min(1.0, test.pvalue))
            rows.append(dict(zip(keys, key)) | {
                "condition": "finetuned", "baseline": baseline, "score": float(paired["tuned"].mean()),
                "baseline_score": float(paired["base"].mean()), "difference": mean,
                "ci_low": min(low, mean), "ci_high": max(high, mean), "p_value": p, "n": len(paired),
                "n_seeds": len(set(runs)), "status": status.get(key, OK),
            })
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    if len(table):
        table["q_value"] = false_discovery_control(table["p_value"].to_numpy(), method="bh")
        table["verdict"] = np.where(table["q_value"] >= 0.05, "no_difference",
                                    np.where(table["difference"] > 0, "finetuned_higher", "finetuned_lower"))
    return table


def plot_task(summary: pd.DataFrame, task: str, path: str | Path, title: str | None = None) -> Path:
    """Bars per question type (groups) and model x condition (colours) with CIs; chance as a dashed
    line over each group; bars of rows that cannot be read (training task not learned) hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = summary[summary["task"] == task]
    if data.empty:
        raise ValueError(f"no summary rows for task {task!r}")
    question_types = list(dict.fromkeys(data["question_type"]))
    series = _series_order(data)
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(question_types) * max(1, len(series) / 3)), 4.0))
    for s, (model, condition) in enumerate(series):
        rows = data[(data["model"] == model) & (data["condition"] == condition)].set_index("question_type")
        present = [qt for qt in question_types if qt in rows.index]
        xs = [question_types.index(qt) + (s - (len(series) - 1) / 2) * width for qt in present]
        scores = rows.loc[present, "score"].to_numpy()
        errors = np.clip(np.vstack([scores - rows.loc[present, "ci_low"], rows.loc[present, "ci_high"] - scores]),
                         0, None)
        label = condition if data["model"].nunique() == 1 else f"{model} · {condition}"
        bars = ax.bar(xs, scores, width, yerr=errors, capsize=3, label=label)
        for bar, status in zip(bars, rows.loc[present, "status"]):
            if status != OK:
                bar.set_hatch("//")
                bar.set_alpha(0.5)
    for q, qt in enumerate(question_types):
        chance = data.loc[data["question_type"] == qt, "chance"].mean()
        ax.hlines(chance, q - 0.45, q + 0.45, colors="black", linestyles="dashed", linewidth=1)
    ax.plot([], [], "k--", linewidth=1, label="chance")
    if (data["status"] != OK).any():
        ax.bar([], [], color="white", edgecolor="black", hatch="//", label="training task not learned")
    ax.set_xticks(range(len(question_types)), [qt.replace("_", " ") for qt in question_types], rotation=25, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (P(target), 1 − TVD or share right)")
    ax.set_title(title or task.replace("_", " "))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars reach 1
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def _series_order(data: pd.DataFrame) -> list[tuple[str, str]]:
    rank = {c: i for i, c in enumerate(CONDITION_ORDER)}
    pairs = data[["model", "condition"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted(pairs, key=lambda mc: (mc[0], rank.get(mc[1], len(rank)), mc[1]))
