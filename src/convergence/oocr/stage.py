"""Pipeline stages of the OOCR part: one function per Snakemake rule, each writing its output atomically.

    make_data(task, seed, out_path, **size)                       -> data.json   (oocr_data)
    run_finetune(data_path, spec, out_dir, steps=..., ...)        -> adapter/    (oocr_finetune)
    run_evaluate(data_path, spec, outputs, adapter_dir=..., ...)  -> {condition}.parquet (oocr_evaluate)
    summarize_runs(item_files, out_csv, fig_dir)                  -> summary.csv + {task}.png (oocr_summary)

`DEFAULTS` holds settings that suit every task; the pipeline's config overrides them per task
(`oocr.per_task`). Small models on a few cores run much faster with one torch thread per job than with
two (thread hand-offs on busy cores cost more than they save), so run two jobs of one thread each.
One evaluation job answers the items under all three conditions: the untuned model, the same model
with the in-context documents, then with the adapter: the model loads once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from convergence.utils import atomic_path, package_versions, read_parquet, save_figure, write_parquet

from . import CONDITIONS
from .tasks import QUESTION_TYPES, TASKS, TaskData, generate

DEFAULTS = {
    # Data: evaluation items per question type (the generators default to 24-32).
    "n_eval_per_type": 12,
    # LoRA: rank 8 on every linear layer, batches of 16 distinct documents, peak lr 2e-3 decaying
    # linearly to 0; bf16 matrix products where the device computes them natively (a LoRA step 1.7x faster on
    # a CPU with AVX512-BF16, 18x slower with the libraries held to AVX2, where auto takes fp32:
    # benchmarks/precision_speed.py).
    "steps": 150,
    "batch_size": 16,
    "lr": 2e-3,
    "lr_schedule": "linear",
    "rank": 8,
    "alpha": 16,
    "target_modules": "all-linear",
    "max_length": 96,
    "precision": "auto",
    # In-context baseline: k documents of the item's own latents, cut to fit max_tokens.
    "icl_k": 10,
    "icl_max_tokens": 1024,
    # Free-form answers: the paper's 5 samples at temperature 1.
    "samples": 5,
    "temperature": 1.0,
    "max_new_tokens": 32,
    # Scoring batch (prompts per forward pass).
    "eval_batch_size": 16,
    "threads": 1,
}
"""Settings that suit every task (measured on SmolLM2-135M, 2 shared CPU cores)."""

SUMMARY_COLUMNS = [
    "task", "question_type", "model", "condition", "score", "ci_low", "ci_high", "chance", "majority", "n", "n_seeds",
    "status", "precision",
]


def task_setting(oocr: dict, task: str, section: str) -> dict:
    """`oocr.<section>` of a config with the task's overrides (`oocr.per_task.<task>.<section>`) on top."""
    merged = dict(oocr.get(section) or {})
    merged.update(((oocr.get("per_task") or {}).get(task) or {}).get(section) or {})
    return merged


def set_threads(threads: int | None) -> None:
    """Torch intra-op threads for this process (None: leave torch's default)."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))


# --------------------------------------------------------------------------- data


def make_data(task: str, seed: int, out_path: str | Path, **size) -> Path:
    """Training documents and evaluation items of one run of `task`, as TaskData JSON at `out_path`."""
    if task not in TASKS:
        raise ValueError(f"unknown OOCR task {task!r}; known: {', '.join(TASKS)}")
    data = generate(task, int(seed), **size)
    with atomic_path(out_path) as tmp:
        data.save(tmp)
    return Path(out_path)


def load_data(path: str | Path) -> TaskData:
    return TaskData.load(path)


# --------------------------------------------------------------------------- fine-tuning


def _load(model_spec: dict, resources_dir):
    from convergence.models import load_model

    loaded = load_model(model_spec, resources_dir)
    if loaded.kind != "causal_lm":
        raise ValueError(f"OOCR needs a causal language model; {model_spec['source']} is a {loaded.kind} model")
    return loaded


def run_finetune(
    data_path: str | Path,
    model_spec: dict,
    out_dir: str | Path,
    *,
    resources_dir: str | Path = "resources",
    steps: int = DEFAULTS["steps"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    rank: int = DEFAULTS["rank"],
    alpha: int = DEFAULTS["alpha"],
    seed: int = 0,
    threads: int | None = DEFAULTS["threads"],
    target_modules: str | list[str] = DEFAULTS["target_modules"],
    max_length: int = DEFAULTS["max_length"],
    warmup_steps: int = 0,
    lr_schedule: str | None = None,
    precision: str = DEFAULTS["precision"],
    layers: int | None = None,
    eval_every: int | None = None,
    progress: bool = False,
) -> Path:
    """LoRA-fine-tune the model on the run's training documents; `out_dir` (written atomically) holds
    the adapter (adapter_model.safetensors, adapter_config.json), loss_curve.csv, loss.png,
    finetune_config.json and provenance.json (model fingerprint, data, wall time), and
    learning_curve.csv: the run's in-distribution items scored before training and every
    `eval_every` steps (None: five points), the held-out half of the learning curve.

    `lr_schedule` is passed on to FinetuneConfig when given (None: its default), for a version of
    `finetune` that has one."""
    from .evaluate import IN_DISTRIBUTION, item_score
    from .finetune import FinetuneConfig, finetune
    from .tasks.base import SCORE

    set_threads(threads)
    data = load_data(data_path)
    loaded = _load(model_spec, resources_dir)
    config = FinetuneConfig(
        steps=int(steps),
        batch_size=int(batch_size),
        lr=float(lr),
        rank=int(rank),
        alpha=int(alpha),
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        max_length=int(max_length),
        warmup_steps=int(warmup_steps),
        precision=precision,
        layers=None if layers is None else int(layers),
        seed=int(seed),
        eval_every=None if eval_every is None else int(eval_every),
        **({} if lr_schedule is None else {"lr_schedule": lr_schedule}),
    )
    heldout = [i for i in data.eval if i.question_type == IN_DISTRIBUTION and i.role == SCORE]
    with atomic_path(out_dir) as tmp:
        start, start_cpu = time.perf_counter(), time.process_time()
        result = finetune(data.train, loaded.model, loaded.processor, config=config, out_dir=tmp, progress=progress,
                          heldout=heldout, score=item_score)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        plot_loss(result.losses, tmp / "loss.png", title=f"{data.task} (run {data.seed}) · {model_spec['source']}",
                  curve=result.curve)
        provenance = {
            "task": data.task,
            "run_seed": data.seed,
            "data": str(data_path),
            "n_train_docs": len(data.train),
            "n_rows": result.n_rows,
            "epochs": round(config.steps * config.batch_size / max(1, result.n_rows), 2),
            "source": model_spec["source"],
            "params_sha256": loaded.params_sha256,
            "weights_sha256": loaded.weights_sha256,
            "threads": threads,
            "train_seconds": round(seconds, 2),
            "train_cpu_seconds": round(cpu_seconds, 2),
            "seconds_per_step": round(seconds / max(1, config.steps), 4),
            "precision": result.precision.provenance(),
            "first_loss": result.losses[0] if result.losses else None,
            "last_loss": result.losses[-1] if result.losses else None,
            "n_heldout": len(heldout),
            "heldout_first": result.curve[0]["heldout_score"] if result.curve else None,
            "heldout_last": result.curve[-1]["heldout_score"] if result.curve else None,
            "packages": package_versions(("convergence", "torch", "transformers", "peft")),
        }
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=1))
    print(
        f"{data.task} run {data.seed}: {config.steps} LoRA steps in {seconds:.0f} s ({result.precision.precision}); "
        f"loss {provenance['first_loss']:.3f} -> {provenance['last_loss']:.3f}"
        + (f"; in-distribution score {provenance['heldout_first']:.3f} -> {provenance['heldout_last']:.3f} "
           f"({len(heldout)} items)" if result.curve else "")
    )
    return Path(out_dir)


def plot_loss(losses, path: str | Path, title: str = "", smooth: int = 10, curve: list[dict] | None = None) -> Path:
    """Per-step training loss with a running mean over `smooth` steps; with `curve`, the held-out
    in-distribution score against step on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    losses = np.asarray(losses, dtype=float)
    steps = np.arange(1, losses.size + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(steps, losses, color="C0", alpha=0.35, linewidth=1, label="step")
    if losses.size >= smooth > 1:
        running = np.convolve(losses, np.ones(smooth) / smooth, mode="valid")
        ax.plot(steps[smooth - 1 :], running, color="C0", linewidth=2, label=f"mean of {smooth}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (completion tokens)")
    ax.set_title(title, fontsize=9)
    handles = ax.get_legend_handles_labels()
    if curve:
        right = ax.twinx()
        right.plot([p["step"] for p in curve], [p["heldout_score"] for p in curve], "o-", color="C3",
                   label="in-distribution score")
        right.set_ylabel("in-distribution score", color="C3")
        right.set_ylim(0, 1.02)
        extra = right.get_legend_handles_labels()
        handles = (handles[0] + extra[0], handles[1] + extra[1])
    ax.legend(*handles, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


# --------------------------------------------------------------------------- evaluation


def run_evaluate(
    data_path: str | Path,
    model_spec: dict,
    outputs: dict[str, str | Path],
    *,
    adapter_dir: str | Path | None = None,
    icl_k: int = DEFAULTS["icl_k"],
    icl_max_tokens: int | None = DEFAULTS["icl_max_tokens"],
    icl_seed: int | None = None,
    resources_dir: str | Path = "resources",
    threads: int | None = DEFAULTS["threads"],
    batch_size: int = DEFAULTS["eval_batch_size"],
    samples: int = DEFAULTS["samples"],
    temperature: float = DEFAULTS["temperature"],
    max_new_tokens: int = DEFAULTS["max_new_tokens"],
    precision: str = DEFAULTS["precision"],
    model_name: str | None = None,
) -> dict[str, Path]:
    """Score one model on one run's evaluation items under each condition of `outputs` (condition ->
    parquet path; one row per item, every condition the same items).

    untuned: the base model; icl: the base model with up to `icl_k` training documents of the item's
    own latents before each prompt (cut to fit `icl_max_tokens`, None: the model's context); finetuned:
    the base model with the LoRA adapter in `adapter_dir`. The model loads once: untuned and icl run
    first, then the adapter is applied. `model_name` (default: the source's name) fills the table's
    model column. `precision` "auto" is resolved for the model's device; each parquet's metadata records
    the choice (`utils.read_parquet`; `read_items` reads it into the summary's precision column).
    """
    from convergence.precision import resolve_precision

    from .evaluate import evaluate_task
    from .scoring import model_device

    unknown = set(outputs) - set(CONDITIONS)
    if unknown or not outputs:
        raise ValueError(f"unknown condition(s) {sorted(unknown)}; use some of {', '.join(CONDITIONS)}")
    if ("finetuned" in outputs) != (adapter_dir is not None):
        raise ValueError("the finetuned condition needs adapter_dir, and only it takes one")
    set_threads(threads)
    data = load_data(data_path)
    loaded = _load(model_spec, resources_dir)
    model = loaded.model
    choice = resolve_precision(precision, model_device(model).type)
    precision = choice.precision
    if precision == "bf16":  # weights cast once (the adapter keeps float32 weights of its own)
        import torch

        model = model.to(torch.bfloat16)
    limit = getattr(model.config, "max_position_embeddings", None)
    if icl_max_tokens is None or (limit and icl_max_tokens > limit):
        icl_max_tokens = limit
    name = model_name or model_spec["source"].split(":", 1)[-1].rstrip("/").split("/")[-1]
    written = {}
    for condition in sorted(outputs, key=("untuned", "icl", "finetuned").index):
        if condition == "finetuned":
            from .finetune import load_adapter

            model = load_adapter(model, adapter_dir)
        start, start_cpu = time.perf_counter(), time.process_time()
        results = evaluate_task(
            model,
            loaded.processor,
            data,
            model_name=name,
            condition=condition,
            icl_k=int(icl_k),
            icl_seed=data.seed if icl_seed is None else int(icl_seed),
            icl_max_tokens=icl_max_tokens,
            batch_size=int(batch_size),
            samples=int(samples),
            temperature=float(temperature),
            max_new_tokens=int(max_new_tokens),
            generation_seed=data.seed,
            precision=precision,
        )
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        provenance = {"condition": condition, "source": model_spec["source"], "seconds": round(seconds, 2),
                      "cpu_seconds": round(cpu_seconds, 2), "precision": choice.provenance()}
        written[condition] = write_parquet(results, outputs[condition], provenance)
        means = results.groupby("question_type", sort=False)["score"].mean().round(3).to_dict()
        k = f" (k = {sorted(set(results['icl_k']))})" if condition == "icl" else ""
        print(f"{data.task} run {data.seed} {name} {condition}{k}: {len(results)} items in {seconds:.0f} s "
              f"({cpu_seconds:.0f} s CPU); {means}")
    return written


# --------------------------------------------------------------------------- summary


def read_items(item_files: Iterable[str | Path]) -> pd.DataFrame:
    """Every per-item result file in one table, with the precision each file's job computed in."""
    from .evaluate import UNRECORDED

    frames = []
    for path in item_files:
        frame, meta = read_parquet(path)
        frames.append(frame.assign(precision=((meta or {}).get("precision") or {}).get("precision", UNRECORDED)))
    if not frames:
        raise ValueError("no per-item result files to summarise")
    results = pd.concat(frames, ignore_index=True)
    unknown_tasks = set(results["task"]) - set(TASKS)
    unknown_conditions = set(results["condition"]) - set(CONDITIONS)
    if unknown_tasks or unknown_conditions:
        raise ValueError(f"unknown tasks {sorted(unknown_tasks)} or conditions {sorted(unknown_conditions)}")
    dup = results.duplicated(["task", "run_seed", "item_id", "model", "condition"])
    if dup.any():
        first = results[dup].iloc[0]
        raise ValueError(
            f"item {first.item_id} of {first.task} run {first.run_seed} ({first.model}, {first.condition}) "
            "appears in more than one result file"
        )
    return results


def check_same_items(results: pd.DataFrame) -> None:
    """Every condition of a (task, model, run) answered exactly the same items."""
    for (task, model, run), group in results.groupby(["task", "model", "run_seed"], sort=False):
        sets = {c: frozenset(g["item_id"]) for c, g in group.groupby("condition")}
        first = next(iter(sets.values()))
        differ = [c for c, ids in sets.items() if ids != first]
        if differ:
            raise ValueError(
                f"{task} run {run} ({model}): conditions {sorted(sets)} answered different items; every "
                "condition must answer the same items (rerun the evaluation of all conditions)"
            )


def summarize_runs(
    item_files: Iterable[str | Path],
    out_csv: str | Path,
    fig_dir: str | Path,
    *,
    comparisons_csv: str | Path | None = None,
    adapter_dirs: Iterable[str | Path] = (),
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per task x question type x model x condition: mean score with a 95% bootstrap CI,
    hierarchical over runs (run seeds, each a fine-tune with fresh latent names) and items when
    there are several runs, next to chance, the constant-answer score (`majority`), `n`, `n_seeds`
    and `status` (`not_learned`: the fine-tuned in-distribution CI does not clear both chance and the
    untuned model; `uninterpretable`: the other fine-tuned rows of such a task); one figure per task,
    `fig_dir/{task}.png`. Conditions must have answered the same items (checked). With
    `comparisons_csv`, every fine-tuned row against the untuned and in-context rows, paired by item
    (`evaluate.compare_conditions`: difference, CI, p, BH q). With `adapter_dirs` (the fine-tunes'
    output folders), their learning curves in one figure, `fig_dir/learning_curves.png`. Returns the
    summary table."""
    from .evaluate import compare_conditions, plot_task, summarize

    results = read_items(item_files)
    check_same_items(results)
    summary = summarize(results, value="score", n_boot=n_boot, seed=seed)
    summary = _ordered(summary)[SUMMARY_COLUMNS]
    with atomic_path(out_csv) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.6g")
    if comparisons_csv is not None:
        comparisons = compare_conditions(results, summary, n_boot=n_boot, seed=seed)
        with atomic_path(comparisons_csv) as tmp:
            comparisons.to_csv(tmp, index=False, float_format="%.6g")
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    for task in dict.fromkeys(summary["task"]):
        plot_task(summary, task, fig_dir / f"{task}.png", title=_title(task, results))
    adapter_dirs = [Path(d) for d in adapter_dirs]
    if adapter_dirs:
        plot_learning_curves(read_curves(adapter_dirs), fig_dir / "learning_curves.png", summary)
    return summary


def read_curves(adapter_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """The fine-tunes' learning curves (learning_curve.csv beside each adapter) in one table, with the
    task, model source and run seed of each from its provenance.json."""
    frames = []
    for folder in map(Path, adapter_dirs):
        curve = folder / "learning_curve.csv"
        if not curve.exists():
            raise FileNotFoundError(f"{curve} is missing: the fine-tune in {folder} predates learning curves; "
                                    "delete the folder and rerun the pipeline")
        provenance = json.loads((folder / "provenance.json").read_text())
        frames.append(pd.read_csv(curve).assign(task=provenance["task"], run_seed=provenance["run_seed"],
                                                source=provenance["source"], folder=str(folder)))
    return pd.concat(frames, ignore_index=True)


def plot_learning_curves(curves: pd.DataFrame, path: str | Path, summary: pd.DataFrame | None = None) -> Path:
    """One panel per task: training loss (left axis, mean over the steps since the previous point) and
    the in-distribution score (right axis) against step, one line per fine-tune (model source and run
    seed); the bar a learned task must clear (chance or the untuned score, the higher) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .evaluate import learning_bar

    tasks = list(dict.fromkeys(curves["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        right = ax.twinx()
        runs = curves[curves["task"] == task].groupby(["source", "run_seed", "folder"], sort=True)
        for k, ((source, run, _), run_curve) in enumerate(runs):
            name = source.split(":", 1)[-1].rstrip("/").split("/")[-1]
            ax.plot(run_curve["step"], run_curve["train_loss"], "--", color=f"C{k}", alpha=0.7)
            right.plot(run_curve["step"], run_curve["heldout_score"], "o-", color=f"C{k}", label=f"{name} run {run}")
        if summary is not None:
            for model in summary.loc[summary["task"] == task, "model"].unique():
                if ((summary["task"] == task) & (summary["model"] == model)
                        & (summary["question_type"] == "in_distribution")).any():
                    right.axhline(learning_bar(summary, task, model), color="black", linestyle=":", linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (dashed)")
        right.set_ylabel("in-distribution score (solid)")
        right.set_ylim(0, 1.02)
        ax.set_title(task.replace("_", " "), fontsize=10)
        right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def _ordered(summary: pd.DataFrame) -> pd.DataFrame:
    task_rank = {t: i for i, t in enumerate(TASKS)}
    condition_rank = {c: i for i, c in enumerate(CONDITIONS)}

    def qt_rank(row):
        order = QUESTION_TYPES.get(row["task"], ())
        return order.index(row["question_type"]) if row["question_type"] in order else len(order)

    key = summary.assign(
        _t=summary["task"].map(task_rank),
        _q=summary.apply(qt_rank, axis=1) if len(summary) else [],
        _c=summary["condition"].map(condition_rank),
    )
    return key.sort_values(["_t", "_q", "model", "_c"], kind="stable").drop(columns=["_t", "_q", "_c"]).reset_index(
        drop=True
    )


def _title(task: str, results: pd.DataFrame) -> str:
    runs = results.loc[results["task"] == task, "run_seed"].nunique()
    return f"{task.replace('_', ' ')} ({runs} run{'s' if runs != 1 else ''})"
