"""Evaluate a model on a task's items, summarise with bootstrap CIs, and plot one task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .finetune import icl_prompt
from .scoring import (
    bootstrap_ci,
    check_free_form,
    generate_completions,
    normalise,
    one_minus_tvd,
    option_logprobs,
    p_target,
    picks_target,
)
from .tasks.base import EXEC, ONE_MINUS_TVD, P_TARGET, Item, TaskData

RESULT_COLUMNS = [
    "task",
    "run_seed",
    "item_id",
    "question_type",
    "model",
    "condition",
    "metric",
    "score",
    "p_target",
    "correct",
    "chance",
    "n_options",
    "prediction",
]
SUMMARY_COLUMNS = ["task", "question_type", "model", "condition", "score", "ci_low", "ci_high", "chance", "n"]
CONDITION_ORDER = ("finetuned", "icl", "untuned")


def evaluate_items(
    model,
    tokenizer,
    items: Sequence[Item],
    *,
    model_name: str,
    condition: str,
    run_seed: int = 0,
    batch_size: int = 16,
    free_form_samples: int = 1,
    sample: bool = False,
    temperature: float = 1.0,
    max_new_tokens: int = 24,
    generation_seed: int = 0,
    timeout: float = 2.0,
) -> pd.DataFrame:
    """One row per item: its score under the item's metric, P(target) and whether the model's
    choice is right. Free-form items are answered by generation (greedy unless `sample`) and
    checked by running the answer in a subprocess; their score is the fraction of samples right."""
    scored = [k for k, i in enumerate(items) if i.metric != EXEC]
    logprobs = dict(zip(scored, option_logprobs(model, tokenizer, [items[k] for k in scored], batch_size)))
    rows = []
    for k, item in enumerate(items):
        if item.metric == EXEC:
            answers = generate_completions(
                model,
                tokenizer,
                item.prompt,
                n=free_form_samples,
                sample=sample,
                temperature=temperature,
                max_new_tokens=max_new_tokens,
                seed=generation_seed,
            )
            row = _exec_row(item, answers, timeout)
        else:
            row = _likelihood_row(item, logprobs[k])
        rows.append(
            {
                "task": item.task,
                "run_seed": run_seed,
                "item_id": item.id,
                "question_type": item.question_type,
                "model": model_name,
                "condition": condition,
                "metric": item.metric,
                "chance": item.chance,
                "n_options": len(item.options),
                **row,
            }
        )
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def _likelihood_row(item: Item, logprobs: np.ndarray) -> dict:
    best = int(np.argmax(logprobs))
    prediction = item.options[best].strip()
    if item.metric == ONE_MINUS_TVD:
        probs = normalise(logprobs)
        return {
            "score": one_minus_tvd(logprobs, item.target_probs),
            "p_target": np.nan,
            "correct": np.nan,  # matching a distribution has no right/wrong
            "prediction": " / ".join(f"{o.strip()}={p:.2f}" for o, p in zip(item.options, probs)),
        }
    if item.metric != P_TARGET:
        raise ValueError(f"unknown metric {item.metric!r}")
    p = p_target(logprobs, item.target_set)
    correct = float(picks_target(logprobs, item.target_set))
    return {"score": p, "p_target": p, "correct": correct, "prediction": prediction}


def _exec_row(item: Item, answers: list[str], timeout: float) -> dict:
    right = [check_free_form(a, item.check, timeout=timeout) for a in answers]
    fraction = float(np.mean(right))
    return {"score": fraction, "p_target": np.nan, "correct": fraction, "prediction": answers[0]}


def condition_items(data: TaskData, condition: str, icl_k: int = 10, icl_seed: int = 0) -> list[Item]:
    """The task's items as asked under `condition`: for "icl", each prompt is preceded by
    `icl_k` training documents; otherwise unchanged."""
    if condition != "icl":
        return list(data.eval)
    return [replace(item, prompt=icl_prompt(data.train, icl_k, item, icl_seed)) for item in data.eval]


def evaluate_task(
    model,
    tokenizer,
    data: TaskData,
    *,
    model_name: str,
    condition: str,
    icl_k: int = 10,
    icl_seed: int = 0,
    question_types: Sequence[str] | None = None,
    **options,
) -> pd.DataFrame:
    """All items of one task for one model and condition (finetuned | icl | untuned).
    `options` go to `evaluate_items` (batch size, free-form sampling, ...)."""
    items = condition_items(data, condition, icl_k, icl_seed)
    if question_types is not None:
        items = [i for i in items if i.question_type in set(question_types)]
    return evaluate_items(
        model, tokenizer, items, model_name=model_name, condition=condition, run_seed=data.seed, **options
    )


def summarize(results: pd.DataFrame, value: str = "score", n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per task x question type x model x condition: the mean of `value` ("score" or
    "correct") with a 95% bootstrap CI over items, and over runs too when results hold several
    run seeds; `chance` is the mean chance level of the items."""
    rows = []
    keys = ["task", "question_type", "model", "condition"]
    for key, group in results.groupby(keys, sort=False):
        group = group.dropna(subset=[value])
        if group.empty:
            continue
        several_runs = group["run_seed"].nunique() > 1
        mean, low, high = bootstrap_ci(
            group[value].to_numpy(dtype=float),
            groups=group["run_seed"].to_numpy() if several_runs else None,
            n_boot=n_boot,
            seed=seed,
        )
        stats = {"score": mean, "ci_low": low, "ci_high": high, "chance": group["chance"].mean(), "n": len(group)}
        rows.append(dict(zip(keys, key)) | stats)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def plot_task(summary: pd.DataFrame, task: str, path: str | Path, title: str | None = None) -> Path:
    """Bars per question type (groups) and model x condition (colours) with CIs; chance as a
    dashed line over each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = summary[summary["task"] == task]
    if data.empty:
        raise ValueError(f"no summary rows for task {task!r}")
    question_types = list(dict.fromkeys(data["question_type"]))
    series = _series_order(data)
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(question_types) * max(1, len(series) / 3)), 4.0))
    for s, (model, condition) in enumerate(series):
        rows = data[(data["model"] == model) & (data["condition"] == condition)].set_index("question_type")
        xs = [q + (s - (len(series) - 1) / 2) * width for q, qt in enumerate(question_types) if qt in rows.index]
        present = [qt for qt in question_types if qt in rows.index]
        scores = rows.loc[present, "score"].to_numpy()
        # clip: with identical values a bootstrap bound can sit 1e-17 inside the mean
        errors = np.clip(np.vstack([scores - rows.loc[present, "ci_low"], rows.loc[present, "ci_high"] - scores]),
                         0, None)
        label = condition if data["model"].nunique() == 1 else f"{model} · {condition}"
        ax.bar(xs, scores, width, yerr=errors, capsize=3, label=label)
    for q, qt in enumerate(question_types):
        chance = data.loc[data["question_type"] == qt, "chance"].mean()
        ax.hlines(chance, q - 0.45, q + 0.45, colors="black", linestyles="dashed", linewidth=1)
    ax.plot([], [], "k--", linewidth=1, label="chance")
    ax.set_xticks(range(len(question_types)), [qt.replace("_", " ") for qt in question_types], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (P(target), 1 − TVD or accuracy)")
    ax.set_title(title or task.replace("_", " "))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars reach 1
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _series_order(data: pd.DataFrame) -> list[tuple[str, str]]:
    rank = {c: i for i, c in enumerate(CONDITION_ORDER)}
    pairs = data[["model", "condition"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted(pairs, key=lambda mc: (mc[0], rank.get(mc[1], len(rank)), mc[1]))
