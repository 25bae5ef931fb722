"""The generator stage on files, one function per Snakemake rule (outputs written atomically).

- `train_generator_model`: train the DCGAN of a `kind: generator` zoo entry on a scenes dataset; its
  folder holds the weights, the arch spec, `metrics.json` (training history, FID-like quality against a
  zoo classifier) and a grid of samples.
- `match_pair`: one generator x one vision model: top-k Pearson partners of the generator's units with
  the model's units on the generator's images, with the rotation, random-init-generator and shuffled-images nulls
  (`matching.match_generator`), as one `.npz`.
- `match_summary`: every model's matches against the nulls (the random-init *model* null comes from the
  pair of its control), Rosetta sets with the generator as anchor across the trained models, tables,
  a JSON summary and the figures.
- `invert_and_edit`: Rosetta-guided inversion of held-out real images and shift/zoom/duplicate edits,
  measured on the images (`inversion`), with tables and a figure.

Pair file keys: `obs_*`, `rot_*`, `rand_*`, `shuf_*` (`TopKPartners.as_dict()` fields of the observed matrix
and of the three nulls: rotation, random-init generator, shuffled images), `mean_a`, `mean_b` (unit means at the inversion resolution), `widths_a`, `widths_b`
(layer widths, units in layer order), `meta` (JSON: generator, model, layers, sizes, timings).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from convergence.rosetta import TopKPartners, compare_to_null, mutual_matches, rosetta_sets
from convergence.utils import atomic_path, package_versions

from . import gan
from .maps import VisionMaps, generator_layers

TOPK_FIELDS = ("a_index", "a_r", "b_index", "b_r", "const_a", "const_b", "max_abs_r", "absolute")
PAIR_KINDS = {"obs": "observed", "rot": "rotation", "rand": "random_generator", "shuf": "shuffled_images"}


# ---------------------------------------------------------------- small IO helpers


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")
    return path


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


@dataclass
class _Threads:
    threads: int | None

    def __enter__(self):
        self.before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(int(self.threads))

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def read_images(samples_path: str | Path, n: int | None = None, where=None) -> tuple[np.ndarray, pd.DataFrame]:
    """uint8 images `[n, H, W, 3]` and their rows from a samples table (the first `n` rows passing `where`)."""
    from PIL import Image

    from convergence.datasets import read_samples

    df, _ = read_samples(samples_path)
    if "image" not in df or df["image"].isna().any():
        raise gan.GeneratorError(f"{samples_path}: the generator stage needs an image dataset (sampler: scenes)")
    if where is not None:
        df = df[where(df)]
    if n is not None:
        df = df.iloc[:n]
    images = []
    for path in df["image"]:
        with Image.open(path) as img:
            images.append(np.asarray(img.convert("RGB")))
    return np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8), df.reset_index(drop=True)


# ---------------------------------------------------------------- training


def train_generator_model(samples_path: str | Path, entry: dict, out_dir: str | Path, *,
                          evaluator_dir: str | Path | None = None, eval_samples: str | Path | None = None,
                          n_quality: int = 512, threads: int | None = None, progress: bool = True) -> dict:
    """Train the DCGAN of a `kind: generator` zoo entry and write its folder (module docstring)."""
    t0, c0 = time.perf_counter(), time.process_time()
    arch = gan.normalize_generator_spec(entry["arch"], where="arch")
    train = dict(entry.get("train") or {})
    with _Threads(threads):
        images, _ = read_images(samples_path)
        if images.shape[1:3] != (arch["image_size"], arch["image_size"]):
            raise gan.GeneratorError(f"{samples_path}: images are {images.shape[1]}x{images.shape[2]} px, the generator "
                                     f"makes {arch['image_size']} px; set arch.image_size to the dataset's image_size")
        generator, history = gan.fit_gan(gan.from_uint8(images), arch, progress=progress, **train)
        seed = int(train.get("seed", 0))
        samples = gan.to_uint8(gan.generate(generator, gan.sample_latents(64, arch["latent_dim"], seed + 7)))
        metrics = {"kind": gan.KIND, "train": train, "history": history, "n_train": int(len(images)),
                   "threads": torch.get_num_threads(), **gan.provenance()}
        if evaluator_dir is not None:
            metrics["quality"] = generator_quality(generator, arch, evaluator_dir, samples_path, eval_samples,
                                                   n=n_quality, seed=seed)
    metrics["wall_time_s"] = time.perf_counter() - t0
    metrics["cpu_time_s"] = time.process_time() - c0
    with atomic_path(out_dir) as tmp:
        gan.save_generator(generator, arch, tmp, metrics, samples)
    return metrics


def generator_quality(generator, arch: dict, evaluator_dir, train_samples, eval_samples, *, n: int, seed: int) -> dict:
    """FID-like numbers of `generator` next to the real floor and the random-init ceiling (`quality`)."""
    from convergence.vision import attributes as A

    from .measure import measure_objects
    from .quality import Evaluator, compare

    evaluator = Evaluator(evaluator_dir)
    held_out, held_df = read_images(eval_samples or train_samples, n)
    train_real, _ = read_images(train_samples, n)
    fake = gan.to_uint8(gan.generate(generator, gan.sample_latents(n, arch["latent_dim"], seed + 11)))
    random_fake = gan.to_uint8(gan.generate(gan.build_generator(arch, seed=seed), gan.sample_latents(n, arch["latent_dim"], seed + 11)))
    reads = {name: evaluator.read(x) for name, x in
             (("held_out", held_out), ("train", train_real), ("generator", fake), ("random_init", random_fake))}
    targets = A.encode_targets(held_df, evaluator.layout).numpy()

    def counts(images):
        found = np.array([measure_objects(img).count for img in images])
        return {str(c): float(np.mean(found == c)) for c in range(0, 5)}

    return {
        "evaluator": str(Path(evaluator_dir).name),
        "evaluator_accuracy_held_out": evaluator.accuracy(reads["held_out"], targets),
        "generator": compare(evaluator, reads["generator"], reads["held_out"]),
        "real_train": compare(evaluator, reads["train"], reads["held_out"]),
        "random_init": compare(evaluator, reads["random_init"], reads["held_out"]),
        "measured_object_count": {"generator": counts(fake), "held_out": counts(held_out),
                                  "random_init": counts(random_fake)},
        "n": n,
    }


# ---------------------------------------------------------------- matching one pair


def _vision_model(spec: dict, name: str, resources_dir, zoo_dir) -> VisionMaps:
    from convergence.models import load_model
    from convergence.rosetta.units import kind_layers_of, unit_kind

    if spec.get("modality") != "vision":
        raise gan.GeneratorError(f"model '{name}' is not a vision model (modality: {spec.get('modality')}); the "
                                 "generator is matched to vision models only")
    loaded = load_model(spec, resources_dir, zoo_dir=zoo_dir)
    kind = unit_kind(spec)  # the model's `units`, else activation: the units after a nonlinearity
    return VisionMaps(loaded, kind_layers_of(loaded, spec, kind, model_name=name), name, kind)


def match_pair(generator_dir: str | Path, spec: dict, model_name: str, out_path: str | Path, *, n_samples: int,
               seed: int, grid: int, res: int, k: int, batch_size: int = 64, resources_dir="resources",
               zoo_dir="results/zoo", threads: int | None = None, progress: bool = True) -> Path:
    """One generator x one vision model -> the pair file (module docstring)."""
    from .matching import match_generator

    t0, c0 = time.perf_counter(), time.process_time()
    with _Threads(threads):
        generator, gspec = gan.load_generator(generator_dir)
        random_generator, _ = gan.load_generator(generator_dir, init="random", seed=seed)
        layers = generator_layers(generator, gspec.get("unit_layers"))
        vision = _vision_model(spec, model_name, resources_dir, zoo_dir)
        arrays = match_generator(generator, random_generator, layers, vision, n_samples=n_samples, seed=seed,
                                 grid=grid, res=res, k=k, rotation_seed=seed, batch_size=batch_size, progress=progress)
    meta = {"generator": Path(generator_dir).name, "model": model_name, "generator_layers": layers,
            "model_layers": vision.layers, "model_units": vision.kind, "n_samples": n_samples, "seed": seed, "grid": grid, "res": res, "k": k,
            "init": spec.get("init", "pretrained"), "time_s": time.perf_counter() - t0,
            "cpu_time_s": time.process_time() - c0, "packages": package_versions()}
    arrays["meta"] = np.asarray(json.dumps(_jsonable(meta)))
    with atomic_path(out_path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append .npz
        np.savez_compressed(f, **arrays)
    return Path(out_path)


@dataclass
class Pair:
    partners: dict[str, TopKPartners]  # observed / rotation / random_generator
    mean_a: np.ndarray
    mean_b: np.ndarray
    widths_a: list[int]
    widths_b: list[int]
    meta: dict

    def label_a(self, unit: int) -> str:
        return _unit_label(self.meta["generator_layers"], self.widths_a, unit)

    def label_b(self, unit: int) -> str:
        return _unit_label(self.meta["model_layers"], self.widths_b, unit)

    def locate_a(self, unit: int) -> tuple[int, int]:
        return _locate(self.widths_a, unit)

    def locate_b(self, unit: int) -> tuple[int, int]:
        return _locate(self.widths_b, unit)


def _locate(widths: Sequence[int], unit: int) -> tuple[int, int]:
    """(layer position, channel) of a flat unit index."""
    offsets = np.cumsum(widths)
    layer = int(np.searchsorted(offsets, unit, side="right"))
    return layer, int(unit - (offsets[layer - 1] if layer else 0))


def _unit_label(layers, widths, unit: int) -> str:
    """`layer:channel`; a vision model's layers are hidden-state indices, written `h<index>`."""
    layer, channel = _locate(widths, unit)
    name = layers[layer]
    return f"{'h' if isinstance(name, int) else ''}{name}:{channel}"


def load_pair(path: str | Path) -> Pair:
    try:
        with np.load(path, allow_pickle=False) as data:
            content = {key: data[key] for key in data.files}
        partners = {name: TopKPartners.from_dict({f: content[f"{prefix}_{f}"] for f in TOPK_FIELDS})
                    for prefix, name in PAIR_KINDS.items()}
        return Pair(partners, content["mean_a"], content["mean_b"], content["widths_a"].tolist(),
                    content["widths_b"].tolist(), json.loads(str(content["meta"])))
    except (OSError, KeyError, ValueError) as e:
        raise gan.GeneratorError(f"{path}: not a complete generator pair file ({e}); delete it and rerun") from e


# ---------------------------------------------------------------- matches, nulls, sets


def match_counts(pairs: Mapping[str, Pair], controls: Mapping[str, str | None], k_back: int) -> pd.DataFrame:
    """One row per model: strict best buddies and the reference criterion (best, reciprocated in the
    top `k_back`), observed and under each null, mean r of the matches, excess over each null, and how
    many observed matches have an |r| above the largest |r| anywhere in the null's matrix."""
    rows = []
    for model, pair in pairs.items():
        obs = pair.partners["observed"]
        control = controls.get(model)
        for criterion, kb in (("strict", 1), ("reference", k_back)):
            row = {"model": model, "init": pair.meta.get("init", "pretrained"), "criterion": criterion,
                   "units_generator": len(obs.const_a), "units_model": len(obs.const_b)}
            found = mutual_matches(obs, k=1, k_back=kb)
            row.update(matches=len(found), mean_r=float(found.r.mean()) if len(found) else np.nan)
            for null in ("rotation", "random_generator", "shuffled_images"):
                if null not in pair.partners:
                    continue
                report = compare_to_null(obs, pair.partners[null], k=1, k_back=kb)
                row[f"{null}_matches"] = report.matches_null
                row[f"{null}_mean_r"] = report.mean_r_null
                row[f"excess_over_{null}"] = report.excess_matches
                row[f"above_{null}_max_r"] = report.above_null_max  # matches stronger than any r of that null
            if control is not None and control in pairs:
                ctrl = mutual_matches(pairs[control].partners["observed"], k=1, k_back=kb)
                row.update(random_model=control, random_model_matches=len(ctrl),
                           random_model_mean_r=float(ctrl.r.mean()) if len(ctrl) else np.nan,
                           excess_over_random_model=len(found) - len(ctrl))
            rows.append(row)
    return pd.DataFrame(rows)


def generator_sets(pairs: Mapping[str, Pair], models: Sequence[str], generator: str, k_back: int,
                   kind: str = "observed"):
    """Rosetta sets with the generator as anchor across `models` (>= 2), from the `kind` partners."""
    partners = {(generator, m): pairs[m].partners[kind] for m in models}
    return rosetta_sets(partners, [generator, *models], anchor=generator, k=1, k_back=k_back)


def sets_frame(sets, pairs: Mapping[str, Pair], models: Sequence[str], generator: str) -> pd.DataFrame:
    """One row per set: the generator unit (`generator_unit`, label layer:channel) and per model its unit and r."""
    frame = sets.to_frame()
    first = pairs[models[0]]
    out = pd.DataFrame({"generator_unit": frame[generator].astype(int),
                        "generator_label": [first.label_a(int(u)) for u in frame[generator]]})
    for m in models:
        out[f"{m}_unit"] = frame[m].astype(int)
        out[f"{m}_label"] = [pairs[m].label_b(int(u)) for u in frame[m]]
        out[f"{m}_r"] = frame[f"r_{m}"]
    out["mean_r"] = frame["mean_r"]
    return out


def match_summary(pair_files: Mapping[str, str | Path], generator_name: str, trained: Sequence[str],
                  controls: Mapping[str, str | None], out: Mapping[str, str | Path], *, k_back: int = 5,
                  generator_dir: str | Path | None = None, specs: Mapping[str, dict] | None = None,
                  resources_dir="resources", zoo_dir="results/zoo", n_figure_sets: int = 6,
                  threads: int | None = None) -> dict:
    """Tables, summary and figures of one generator's matches (module docstring).

    `out`: paths `matches` (csv), `sets` (csv), `summary` (json), `nulls_png`, `sets_png`.
    """
    from . import figures

    pairs = {m: load_pair(p) for m, p in pair_files.items()}
    table = match_counts(pairs, controls, k_back)
    trained = [m for m in trained if m in pairs]
    summary = {"generator": generator_name, "k_back": k_back, "models": list(pairs), "trained_models": trained,
               "matches": table.to_dict(orient="records")}
    frame = pd.DataFrame(columns=["generator_unit", "generator_label", "mean_r"])
    if len(trained) >= 2:
        observed = generator_sets(pairs, trained, generator_name, k_back)
        frame = sets_frame(observed, pairs, trained, generator_name)
        summary["sets"] = {"observed": len(observed),
                           "rotation": len(generator_sets(pairs, trained, generator_name, k_back, "rotation")),
                           "random_generator": len(generator_sets(pairs, trained, generator_name, k_back,
                                                                  "random_generator"))}
    else:
        summary["sets"] = None
        summary["sets_note"] = (f"Rosetta sets need the generator and >= 2 trained vision models; this config "
                                f"has {len(trained)}")
    write_csv(table, out["matches"])
    write_csv(frame, out["sets"])
    figures.null_figure(table, out["nulls_png"], generator_name)
    with _Threads(threads):
        figures.sets_figure(frame, pairs, trained, generator_name, generator_dir, specs or {}, out["sets_png"],
                            resources_dir=resources_dir, zoo_dir=zoo_dir, n_sets=n_figure_sets)
    write_json(summary, out["summary"])
    return summary


# ---------------------------------------------------------------- inversion and editing


def matched_pairs(pairs: Mapping[str, Pair], models: Sequence[str]):
    """Every trained model's strict G-D best buddies as inversion terms."""
    from .inversion import MatchedPair

    found = []
    for m in models:
        pair = pairs[m]
        matches = mutual_matches(pair.partners["observed"], k=1)
        for a, b, r in zip(matches.a.tolist(), matches.b.tolist(), matches.r.tolist()):
            (gl, gc), (dl, dc) = pair.locate_a(a), pair.locate_b(b)
            found.append(MatchedPair(gl, gc, m, dl, dc, float(r)))
    return found


def invert_and_edit(generator_dir: str | Path, pair_files: Mapping[str, str | Path], specs: Mapping[str, dict],
                    evaluator_dir: str | Path | None, samples_path: str | Path, out: Mapping[str, str | Path], *,
                    invert: dict, edit: dict, seed: int = 0, resources_dir="resources", zoo_dir="results/zoo",
                    threads: int | None = None, progress: bool = True) -> dict:
    """Invert held-out real images, edit them, measure (module docstring of `inversion`).

    `out`: `inversion` (csv), `edits` (csv), `edit_summary` (csv), `summary` (json), `figure` (png).
    `invert`: n_images, steps, lr, restarts, pixel_weight, min_cosine, res. `edit`: shift [[dx, dy], ...],
    zoom [s, ...], duplicate [[dx, dy], ...], steps, lr, restarts, z_reg {kind: weight}, success
    {shift_error, zoom_factor}.
    """
    from . import figures
    from .inversion import edit as run_edits
    from .inversion import invert as run_inversion
    from .inversion import EditRequest, measure_edit, plan_edits

    t0, c0 = time.perf_counter(), time.process_time()
    with _Threads(threads):
        generator, gspec = gan.load_generator(generator_dir)
        layers = generator_layers(generator, gspec.get("unit_layers"))
        pairs = {m: load_pair(p) for m, p in pair_files.items()}
        models = list(pairs)
        if not models:
            raise gan.GeneratorError("inversion needs at least one trained vision model matched to the generator "
                                     "(generator.models)")
        first = pairs[models[0]]
        res = int(invert["res"])
        for m, pair in pairs.items():
            if pair.meta["res"] != res or pair.meta["generator_layers"] != layers:
                raise gan.GeneratorError(f"pair file of '{m}' was made with res {pair.meta['res']} and layers "
                                         f"{pair.meta['generator_layers']}, not {res} and {layers}: rerun it")
        vision = {m: _vision_model(specs[m], m, resources_dir, zoo_dir) for m in models}
        real, rows = read_images(samples_path, int(invert["n_images"]),
                                 where=(lambda df: df["count"] == 1) if "count" in _columns(samples_path) else None)
        terms = matched_pairs(pairs, models)
        inversion = run_inversion(
            generator, layers, terms, first.mean_a, first.widths_a, real, vision,
            {m: p.mean_b for m, p in pairs.items()}, {m: p.widths_b for m, p in pairs.items()}, res=res,
            steps=int(invert["steps"]), lr=float(invert["lr"]), restarts=int(invert["restarts"]), seed=seed,
            pixel_weight=float(invert.get("pixel_weight", 0.0)), min_cosine=float(invert.get("min_cosine", 0.5)),
            progress=progress)
        inv_rows = _inversion_rows(rows, real, inversion, evaluator_dir)
        g_units = sorted({(t.g_layer, t.g_channel) for t in terms})
        image_size = real.shape[1]
        requests = plan_edits(inversion.images, edit.get("shift", []), edit.get("zoom", []),
                              edit.get("duplicate", []), image_size, fit=bool(edit.get("fit", True)))
        accepted, result, edited = run_edits(
            generator, layers, g_units, first.mean_a, first.widths_a, inversion.z, requests, res=res,
            steps=int(edit["steps"]), lr=float(edit["lr"]), restarts=int(edit["restarts"]),
            z_reg=dict(edit.get("z_reg") or {}), seed=seed + 1, progress=progress)
        # The no-edit baseline: per edited image, the same optimisation towards its unedited maps. Each
        # edit's success test applied to that image says how often "success" comes without the edit.
        baseline = [EditRequest(i, "none") for i in sorted({r.image for r in accepted})]
        _, _, unedited = run_edits(
            generator, layers, g_units, first.mean_a, first.widths_a, inversion.z, baseline, res=res,
            steps=int(edit["steps"]), lr=float(edit["lr"]), restarts=int(edit["restarts"]), z_reg={},
            seed=seed + 1, progress=progress)
        unedited_of = {r.image: unedited[j] for j, r in enumerate(baseline)}
    success = {"shift_error": 0.25, "zoom_factor": 1.5, **(edit.get("success") or {})}
    edit_rows = []
    done = {id(r): i for i, r in enumerate(accepted)}
    for req in requests:
        row = {"sample_id": rows["sample_id"][req.image], "image": req.image, "edit": req.kind, "label": req.label,
               "dx": req.dx, "dy": req.dy, "scale": req.scale, "refused": req.refused}
        row["requested"], row["fitted"] = req.extra.get("requested"), req.extra.get("fitted")
        if req.refused is None:
            i = done[id(req)]
            row.update(measure_edit(req, inversion.images[req.image], edited[i], success))
            row.update(loss=float(result.loss[i]), cosine=float(result.cosine[i]))
            row["baseline_success"] = measure_edit(req, inversion.images[req.image], unedited_of[req.image],
                                                   success)["success"]
        else:
            row["success"] = row["baseline_success"] = np.nan
        edit_rows.append(row)
    edits = pd.DataFrame(edit_rows)
    edit_table = edit_summary(edits)
    inv_table = pd.DataFrame(inv_rows)
    summary = {
        "generator": Path(generator_dir).name, "models": models, "n_terms": len(terms),
        "generator_units": len(g_units), "res": res, "invert": invert, "edit": edit, "success": success,
        "inversion": {"n": len(inv_table), "converged": int(inv_table["converged"].sum()),
                      "mean_cosine": float(inv_table["cosine"].mean()),
                      "pixel_mae": float(inv_table["pixel_mae"].mean())},
        "edits": edit_table.to_dict(orient="records"), "time_s": time.perf_counter() - t0,
        "cpu_time_s": time.process_time() - c0,
    }
    for key in ("attr_acc_inverted", "attr_acc_real", "attr_agree"):
        if key in inv_table:
            summary["inversion"][key] = float(inv_table[key].mean())
    not_converged = inv_table.loc[~inv_table["converged"].astype(bool)]
    for _, r in not_converged.iterrows():
        print(f"WARNING: inversion of {r['sample_id']} did not converge: loss {r['loss']:.4f}, mean cosine "
              f"{r['cosine']:.3f} < min_cosine {invert.get('min_cosine', 0.5)}", flush=True)
    write_csv(inv_table, out["inversion"])
    write_csv(edits, out["edits"])
    write_csv(edit_table, out["edit_summary"])
    figures.edits_figure(real, inversion.images, inv_table, requests, accepted, edited, edits, out["figure"])
    write_json(summary, out["summary"])
    return summary


def _columns(samples_path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_schema(samples_path).names


def _inversion_rows(rows: pd.DataFrame, real: np.ndarray, inversion, evaluator_dir) -> list[dict]:
    out = []
    mae = np.abs(real.astype(np.float64) - inversion.images.astype(np.float64)).mean((1, 2, 3)) / 255.0
    reads = None
    if evaluator_dir is not None:
        from convergence.vision import attributes as A

        from .quality import Evaluator

        evaluator = Evaluator(evaluator_dir)
        targets = A.encode_targets(rows, evaluator.layout).numpy()
        reads = (evaluator.read(real)["pred"], evaluator.read(inversion.images)["pred"], targets, evaluator.layout)
    for i in range(len(real)):
        row = {"sample_id": rows["sample_id"][i], "loss": float(inversion.result.loss[i]),
               "cosine": float(inversion.result.cosine[i]), "n_terms": int(inversion.n_terms[i]),
               "converged": bool(inversion.converged[i]), "pixel_mae": float(mae[i])}
        for attr in ("shape", "color", "size", "count", "background", "position"):
            if attr in rows:
                row[f"true_{attr}"] = rows[attr][i]
        if reads is not None:
            pred_real, pred_inv, targets, layout = reads
            row["attr_acc_real"] = float((pred_real[i] == targets[i]).mean())
            row["attr_acc_inverted"] = float((pred_inv[i] == targets[i]).mean())
            row["attr_agree"] = float((pred_inv[i] == pred_real[i]).mean())
            for j, attr in enumerate(layout):
                row[f"inverted_{attr}"] = layout[attr][pred_inv[i, j]]
        out.append(row)
    return out


def edit_summary(edits: pd.DataFrame) -> pd.DataFrame:
    """Per edit kind: requested, refused, fitted (run as the same-size variant that fits, `plan_edits`), run,
    success rate, the no-edit baseline's success rate on the same tests, and the mean error of the run ones."""
    rows = []
    for kind in ("shift", "zoom", "duplicate"):
        part = edits[edits["edit"] == kind] if len(edits) else edits
        run = part[part["refused"].isna()] if len(part) else part
        row = {"edit": kind, "requested": len(part), "refused": int(part["refused"].notna().sum()) if len(part) else 0,
               "fitted": int(run["fitted"].notna().sum()) if len(run) and "fitted" in run else 0,
               "run": len(run), "success_rate": float(run["success"].astype(float).mean()) if len(run) else np.nan,
               "no_edit_success_rate": (float(run["baseline_success"].astype(float).mean())
                                        if len(run) and "baseline_success" in run else np.nan)}
        if kind == "shift" and len(run):
            row.update(mean_error_px=float(run["error_px"].mean()),
                       mean_requested_px=float(np.hypot(run["dx"], run["dy"]).mean()))
        elif kind == "zoom" and len(run):
            row.update(mean_area_ratio=float(run["area_ratio"].mean()),
                       wanted_area_ratio=float(run["wanted_area_ratio"].mean()),
                       mean_abs_log2_error=float(run["log2_ratio_error"].abs().mean()))
        elif kind == "duplicate" and len(run):
            row.update(mean_count_after=float(run["count_after"].mean()),
                       mean_count_error=float((run["count_after"] - run["wanted_count"]).abs().mean()))
        rows.append(row)
    return pd.DataFrame(rows)
