"""The image contract every image sampler keeps (convergence.datasets.images), and the checks that need
the data failing at sampling or at config time, never mid-run."""

import csv

import numpy as np
import pytest
from PIL import Image

from convergence.config import ConfigError, check_config, dataset_needs, validate_schema
from convergence.datasets import DatasetError, read_samples, sample_dataset
from convergence.datasets.images import ImageFault, decode, fit

RED, CLEAR = (200, 0, 0, 255), (0, 0, 0, 0)
# Odd sizes and aspects, like a user's drawings: (width, height)
SIZES = [(30, 10), (7, 21), (16, 16), (50, 3)]


def _half_transparent(w, h):
    """Red left half, transparent right half (RGBA)."""
    a = np.zeros((h, w, 4), np.uint8)
    a[:, : (w + 1) // 2] = RED
    a[:, (w + 1) // 2:] = CLEAR
    return Image.fromarray(a, "RGBA")


def _imagefolder(root, sizes=SIZES, extra_column=False):
    """A Hugging Face `imagefolder`: PNGs + metadata.csv (file_name, title[, notes])."""
    train = root / "train"
    train.mkdir(parents=True)
    with open(train / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "title"] + (["notes"] if extra_column else []))
        for i, (width, height) in enumerate(sizes):
            _half_transparent(width, height).save(train / f"d{i}.png")
            w.writerow([f"d{i}.png", f"drawing {i}"] + ([f"note {i}"] if extra_column else []))
    return root


def _hf(tmp_path, name, folder, **spec):
    spec = {"sampler": "hf", "path": str(folder), "n": len(SIZES), **spec}
    return read_samples(sample_dataset(name, spec, tmp_path / name, needs={"vision": ["v"], "language": ["l"]}))


def test_hf_imagefolder_of_odd_rgba_pngs_is_letterboxed_on_background(tmp_path):
    folder = _imagefolder(tmp_path / "drawings")
    df, meta = _hf(tmp_path, "pad", folder, image_size=32, background=[0, 0, 255])
    # the columns of an imagefolder are inferred: its one Image column and its one string column
    assert meta["image_column"] == "image" and meta["text_column"] == "title"
    assert df["text"].tolist() == [f"drawing {i}" for i in range(len(SIZES))]
    assert list(zip(df["orig_width"], df["orig_height"])) == SIZES
    for path, (w, h) in zip(df["image"], SIZES):
        im = np.asarray(Image.open(path))
        assert im.shape == (32, 32, 3)
        # corners: the letterbox (or, for the square, the transparent half) shows the background
        assert tuple(im[-1, -1]) == (0, 0, 255) and (w == h or tuple(im[0, 0]) == (0, 0, 255))
        # 30x10 -> 32x11 centred: its left half red, right half transparent = background, never black
        if (w, h) == (30, 10):
            assert tuple(im[16, 4]) == (200, 0, 0) and tuple(im[16, 28]) == (0, 0, 255)
            assert tuple(im[8, 16]) == (0, 0, 255)  # above the letterboxed image
    # crop: the shorter side fills the square, the centre is kept (30x10 -> 96x32, columns 32..63)
    crop, meta = _hf(tmp_path, "crop", folder, image_size=32, background=[0, 0, 255], resize="crop")
    im = np.asarray(Image.open(crop["image"][0]))
    assert im.shape == (32, 32, 3) and meta["resize"] == "crop"
    assert tuple(im[0, 0]) == (200, 0, 0) and tuple(im[-1, -1]) == (0, 0, 255)


def test_fit_against_hand_worked_geometry():
    img = _half_transparent(40, 20)  # 40x20 -> 32x16 centred at rows 8..23
    out = np.asarray(fit(img, 32, (10, 20, 30), "pad"))
    assert (out[:8] == (10, 20, 30)).all() and (out[24:] == (10, 20, 30)).all()
    assert tuple(out[16, 2]) == (200, 0, 0) and tuple(out[16, 30]) == (10, 20, 30)
    with pytest.raises(DatasetError, match="resize"):
        fit(img, 32, (0, 0, 0), "stretch")


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_image_fails_naming_file_and_row_or_is_skipped(tmp_path):
    folder = _imagefolder(tmp_path / "drawings", sizes=[(64, 64)] * 4)
    arr = np.random.default_rng(0).integers(0, 255, (64, 64, 4), dtype=np.uint8)  # incompressible: truncation bites
    Image.fromarray(arr, "RGBA").save(folder / "train" / "d2.png")
    _truncate(folder / "train" / "d2.png")
    with pytest.raises(DatasetError, match=r"dataset 'e': image of 'row-0000002' \(row 2, .*d2.png\) cannot be "
                                           r"decoded.*truncated.*on_corrupt: skip"):
        _hf(tmp_path, "e", folder)
    assert not (tmp_path / "e" / "samples.parquet").exists()
    df, meta = _hf(tmp_path, "s", folder, on_corrupt="skip")
    assert df["sample_id"].tolist() == ["row-0000000", "row-0000001", "row-0000003"]
    assert meta["n_corrupt_skipped"] == 1 and meta["corrupt_skipped"][0].startswith("row 2")
    assert meta["n"] == 3


def test_truncated_png_in_an_image_caption_folder(tmp_path):
    root = tmp_path / "stamps"
    root.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(f"Picture {name}.\n")
    _truncate(root / "b.png", 0.6)
    spec = {"sampler": "image_captions", "folder": str(root), "n": 3, "image_size": 32}
    with pytest.raises(DatasetError, match=r"image of 'b' \(b.png\) cannot be decoded.*truncated"):
        sample_dataset("mine", spec, tmp_path / "x")
    df, meta = read_samples(sample_dataset("mine", dict(spec, on_corrupt="skip"), tmp_path / "y"))
    assert df["sample_id"].tolist() == ["a", "c"] and meta["corrupt_skipped"] == ["b.png"]
    assert df["orig_width"].tolist() == [40, 40]


def test_oversized_and_bomb_images_are_corrupt_not_decoded(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    with pytest.raises(ImageFault, match=r"300x200 .* exceeds max_image_pixels = 50,000"):
        decode(path, max_pixels=50_000)
    assert decode(path, max_pixels=60_000).size == (300, 200)
    # beyond PIL's own hard limit it raises DecompressionBombError at open: the same fault, not a crash
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageFault, match="exceeds max_image_pixels"):
        decode(path, max_pixels=10**9)
    monkeypatch.undo()
    folder = _imagefolder(tmp_path / "drawings", sizes=[(16, 16), (400, 400), (16, 16), (16, 16)])
    df, meta = _hf(tmp_path, "bomb", folder, on_corrupt="skip", max_image_pixels=10_000, image_size=16)
    assert meta["n_corrupt_skipped"] == 1 and "row-0000001" not in df["sample_id"].tolist()


def test_columns_the_models_need_and_the_dataset_lacks(tmp_path):
    folder = _imagefolder(tmp_path / "drawings", extra_column=True)
    spec = {"sampler": "hf", "path": str(folder), "n": 2}
    # two string columns, neither called text: ambiguous for the language models planned on it
    with pytest.raises(DatasetError, match=r"text_column: the dataset has several candidate columns \['title', 'notes'\]"):
        sample_dataset("d", spec, tmp_path / "a", needs={"language": ["lm"]})
    df, meta = read_samples(sample_dataset("d", dict(spec, text_column="notes"), tmp_path / "b",
                                           needs={"language": ["lm"], "vision": ["v"]}))
    assert df["text"].tolist() == ["note 0", "note 1"]
    # no images for the vision models planned on it: an error naming the key and the models, not a silent drop
    with pytest.raises(DatasetError, match=r"vision models \['lite0'\] are planned.*no images column.*image_column"):
        sample_dataset("d", dict(spec, text_column="title", image_column=None), tmp_path / "c",
                       needs={"vision": ["lite0"]})
    with pytest.raises(DatasetError, match="config key image_column: no column 'picture'"):
        sample_dataset("d", dict(spec, image_column="picture"), tmp_path / "e", needs={})


def _config(models, datasets):
    return {"models": models, "datasets": datasets}


def test_config_refuses_what_a_sampler_would_ignore_and_names_column_mismatches():
    lm = {"source": "hf:x"}
    with pytest.raises(ConfigError, match=r"datasets.s.background': sampler 'scenes' does not read background"):
        check_config(validate_schema(_config({"m": lm}, {"s": {"sampler": "scenes", "background": [0, 0, 0]}})))
    with pytest.raises(ConfigError, match=r"datasets.t.image_size': sampler 'text_file' does not read"):
        check_config(validate_schema(_config({"m": lm}, {"t": {"sampler": "text_file", "file": "x", "image_size": 64}})))
    ok = check_config(validate_schema(_config({"m": lm}, {"h": {"sampler": "hf", "path": "p", "background": [0, 0, 0],
                                                               "resize": "crop", "on_corrupt": "skip"}})))
    assert ok["datasets"]["h"]["image_size"] == 224  # the hf default, filled for every job to see
    vision = {"source": "hf:v", "modality": "vision", "datasets": ["h"]}
    text_only = {"h": {"sampler": "hf", "path": "p", "image_column": None}}
    with pytest.raises(ConfigError, match=r"models.v.datasets': 'h' has no images.*image_column: null"):
        check_config(validate_schema(_config({"v": vision}, text_only)))
    # the columns left out may exist: both modalities are planned, and the sampler is told who needs what
    cfg = check_config(validate_schema(_config({"v": dict(vision, datasets=None), "m": lm},
                                               {"h": {"sampler": "hf", "path": "p"}})))
    assert dataset_needs(cfg, "h") == {"vision": ["v"], "language": ["m"]}


def test_pixel_baseline_scale_is_checked_against_the_image_size_at_config_time():
    px = {"source": "baseline:pixels", "modality": "vision", "baseline": {"scales": [2, 8, 48]}}
    with pytest.raises(ConfigError, match=r"models.px.baseline.scales': scale 48 px exceeds the 32 px images of "
                                          r"dataset 'd' \(datasets.d.image_size\)"):
        check_config(validate_schema(_config({"px": px}, {"d": {"sampler": "scenes", "image_size": 32}})))
    check_config(validate_schema(_config({"px": px}, {"d": {"sampler": "scenes", "image_size": 48}})))


def _text_only_parquet(folder, n=8):
    import datasets

    folder.mkdir(parents=True)
    datasets.Dataset.from_dict({"text": [f"a caption {i}" for i in range(n)]}).to_parquet(str(folder / "train.parquet"))
    return folder


@pytest.mark.slow
def test_a_workflow_on_your_own_imagefolder_and_a_missing_image_column_failing_at_sampling(tmp_path, tiny_models):
    """A real Snakemake run: an imagefolder read through `hf` with nothing but its path (columns inferred)
    feeds a language model and the pixel baseline; the same models on a text-only dataset fail in the
    sampling job, naming the key and the vision model, before any extraction."""
    from workflow import snakemake

    config = {
        "datasets": {"mine": {"sampler": "hf", "path": str(_imagefolder(tmp_path / "drawings", sizes=SIZES * 4)),
                              "n": 16, "image_size": 32}},
        "models": {"llama": {"source": f"local:{tiny_models['llama']}"},
                   "px": {"source": "baseline:pixels", "modality": "vision"}},
        "run": {"stages": ["extract"]},
    }
    snakemake(tmp_path / "ok", config)
    df, meta = read_samples(tmp_path / "ok" / "results" / "datasets" / "mine" / "samples.parquet")
    assert meta["image_column"] == "image" and meta["text_column"] == "title" and len(df) == 16
    assert (tmp_path / "ok" / "results" / "activations" / "mine" / "px.zarr").is_dir()
    config["datasets"]["mine"] = {"sampler": "hf", "path": str(_text_only_parquet(tmp_path / "texts")), "n": 8}
    proc = snakemake(tmp_path / "bad", config, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "vision models ['px'] are planned on this dataset, but it has no images column" in out, out[-3000:]
    assert not (tmp_path / "bad" / "results" / "activations").exists()
