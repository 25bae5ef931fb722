import numpy as np
import pandas as pd
import pytest
from PIL import Image

from convergence.datasets import DatasetError, read_samples, sample_dataset
from convergence.datasets.scenes import (BACKGROUND_WORDS, COLOR_WORDS, COLORS, COUNT_WORDS, SHAPE_WORDS, SHAPES,
                                         SIZE_WORDS, position_phrases, render_scene)


def test_scenes_deterministic_and_prefix_stable(tmp_path):
    spec = {"sampler": "scenes", "n": 12, "seed": 7, "image_size": 32}
    a, meta_a = read_samples(sample_dataset("s", spec, tmp_path / "a"))
    b, meta_b = read_samples(sample_dataset("s", spec, tmp_path / "b"))
    assert meta_a["content_sha256"] == meta_b["content_sha256"]
    assert a["sample_id"].tolist() == b["sample_id"].tolist()
    # Growing n keeps the first samples (ids and content): stable ids.
    c, meta_c = read_samples(sample_dataset("s", dict(spec, n=20), tmp_path / "c"))
    assert c["sample_id"].tolist()[:12] == a["sample_id"].tolist()
    assert c["text"].tolist()[:12] == a["text"].tolist()
    assert meta_c["content_sha256"] != meta_a["content_sha256"]
    # Another seed: other scenes.
    d, meta_d = read_samples(sample_dataset("s", dict(spec, seed=8), tmp_path / "d"))
    assert meta_d["content_sha256"] != meta_a["content_sha256"]
    assert d["text"].tolist() != a["text"].tolist()
    assert meta_a["seed"] == 7 and meta_a["n"] == 12 and meta_a["sampler"] == "scenes"


def test_scene_caption_states_every_attribute(scenes_small):
    df, _ = read_samples(scenes_small[0])
    assert len(df) == 40 and df["sample_id"].is_unique
    def states(text, forms):
        return any(f in text for f in forms)

    for row in df.itertuples():
        text = row.text.lower()
        assert states(text, COLOR_WORDS[row.color]) and states(text, SIZE_WORDS[row.size])
        assert states(text, BACKGROUND_WORDS[row.background])
        assert states(text, [w for pair in SHAPE_WORDS[row.shape] for w in pair])
        if row.count == 1:
            assert states(text, position_phrases(row.position))
        else:
            assert states(text, COUNT_WORDS[row.count])
        img = Image.open(row.image)
        assert img.size == (32, 32)
    # Wording varies: the same attribute value appears under several surface forms.
    reds = df[df["color"] == "red"]["text"].str.lower()
    assert len({w for t in reds for w in COLOR_WORDS["red"] if w in t}) >= 2


def test_scene_pixels_show_the_stated_colour_and_background():
    s = render_scene(seed=1, index=5, image_size=64)
    pixels = np.asarray(s["image"]).reshape(-1, 3).astype(int)
    from convergence.datasets.scenes import BACKGROUNDS

    def share(rgb):
        return (np.abs(pixels - np.array(rgb)).sum(1) < 30).mean()

    assert share(BACKGROUNDS[s["background"]]) > 0.5
    assert share(COLORS[s["color"]]) > 0.01
    assert s["shape"] in SHAPES


def _write_hf_dataset(folder, n=6, with_images=True):
    import datasets

    data = {"text": [[f"caption {i} first", f"caption {i} second"] for i in range(n)]}
    features = {"text": datasets.Sequence(datasets.Value("string"))}
    if with_images:
        data["image"] = [Image.new("RGB", (8, 8), (i * 30, 0, 0)) for i in range(n)]
        features["image"] = datasets.Image()
    ds = datasets.Dataset.from_dict(data, features=datasets.Features(features))
    folder.mkdir(parents=True)
    ds.to_parquet(str(folder / "train.parquet"))
    return folder


def test_hf_sampler_reads_a_local_dataset_with_the_real_loader(tmp_path):
    folder = _write_hf_dataset(tmp_path / "hfdata")
    spec = {"sampler": "hf", "path": str(folder), "split": "train", "text_column": "text", "caption_index": 1,
            "image_column": "image", "n": 4, "seed": 0}
    df, meta = read_samples(sample_dataset("wit", spec, tmp_path / "out"))
    assert df["text"].tolist() == [f"caption {i} second" for i in range(4)]
    assert df["sample_id"].tolist() == [f"row-{i:07d}" for i in range(4)]
    assert np.asarray(Image.open(df["image"][2]))[0, 0, 0] == 60
    shuffled, _ = read_samples(sample_dataset("wit", dict(spec, shuffle=True, seed=1), tmp_path / "out2"))
    assert set(shuffled["sample_id"]) <= {f"row-{i:07d}" for i in range(6)}


def test_hf_sampler_errors_name_the_key(tmp_path):
    folder = _write_hf_dataset(tmp_path / "hfdata", with_images=False)
    base = {"sampler": "hf", "path": str(folder), "split": "train", "text_column": "text", "caption_index": 0}
    with pytest.raises(DatasetError, match="n = 50"):
        sample_dataset("d", dict(base, n=50), tmp_path / "o1")
    with pytest.raises(DatasetError, match="no column 'caption'"):
        sample_dataset("d", dict(base, n=2, text_column="caption"), tmp_path / "o2")
    with pytest.raises(DatasetError, match="cannot load Hugging Face dataset"):
        sample_dataset("d", dict(base, n=2, path=str(tmp_path / "missing")), tmp_path / "o3")


def test_text_file_sampler_and_empty_dataset(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("first line\n\nsecond line\nthird line\n")
    df, _ = read_samples(sample_dataset("t", {"sampler": "text_file", "file": str(f), "n": 3}, tmp_path / "o"))
    assert df["text"].tolist() == ["first line", "second line", "third line"]
    assert df["sample_id"].tolist() == ["line-0000000", "line-0000002", "line-0000003"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DatasetError, match="empty"):
        sample_dataset("t", {"sampler": "text_file", "file": str(empty), "n": 3}, tmp_path / "o2")
    # A parquet with no rows is refused by readers too.
    pd.DataFrame({"sample_id": [], "text": []}).to_parquet(tmp_path / "none.parquet")
    with pytest.raises(DatasetError, match="no samples"):
        read_samples(tmp_path / "none.parquet")


def test_unknown_sampler(tmp_path):
    with pytest.raises(DatasetError, match="unknown sampler 'nope'"):
        sample_dataset("x", {"sampler": "nope"}, tmp_path)
