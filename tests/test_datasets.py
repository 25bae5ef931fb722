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
    # shuffle draws a seeded subset: not the first n, the same for the same seed, another for another seed.
    # (Checked over seeds 1..3: a draw of 4 of 6 equals the first 4 with probability 1/15 per seed.)
    draws = {seed: read_samples(sample_dataset("wit", dict(spec, shuffle=True, seed=seed), tmp_path / f"s{seed}"))[0]
             for seed in (1, 2, 3)}
    first_n = df["sample_id"].tolist()
    assert any(d["sample_id"].tolist() != first_n for d in draws.values())
    assert len({tuple(d["sample_id"]) for d in draws.values()}) >= 2
    again, _ = read_samples(sample_dataset("wit", dict(spec, shuffle=True, seed=1), tmp_path / "again"))
    assert again["sample_id"].tolist() == draws[1]["sample_id"].tolist()
    for d in draws.values():  # texts stay with their rows
        assert all(t == f"caption {int(i[4:])} second" for i, t in zip(d["sample_id"], d["text"]))


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


# ---------------------------------------------------------------- image_captions and fetched sources

from convergence.datasets import image_captions as ic  # noqa: E402
from convergence.datasets import sources  # noqa: E402

FROG = """A frog.
de.utf8=Ein Frosch.
fr.utf8=Une grenouille.
pt_BR.utf8=Um sapo.
ca@valencia.utf8=Una granota.
"""


def test_caption_files_in_tux_paint_format():
    path_text = FROG
    import tempfile, pathlib  # noqa: E401

    with tempfile.TemporaryDirectory() as d:
        f = pathlib.Path(d) / "frog.txt"
        f.write_text(path_text + "xx.utf8=\n", encoding="utf-8")
        caps = ic.parse_caption_file(f)
    assert caps == {"en": "A frog.", "de": "Ein Frosch.", "fr": "Une grenouille.", "pt_BR": "Um sapo.",
                    "ca@valencia": "Una granota."}  # an empty translation is no caption


def _stamp_folder(root, svg=True):
    """Stamps as Tux Paint ships them: RGBA, palette with transparency, grey+alpha, a JPEG, an SVG-only one."""
    from pathlib import Path

    root = Path(root)
    (root / "animals").mkdir(parents=True)
    rgba = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    rgba.paste((200, 0, 0, 255), (0, 0, 20, 20))  # left half opaque red, right half transparent
    rgba.save(root / "animals" / "frog.png")
    (root / "animals" / "frog.txt").write_text(FROG, encoding="utf-8")
    pal = Image.new("P", (10, 30), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (0, 0, 10, 10))
    pal.save(root / "animals" / "leaf.png", transparency=0)
    (root / "animals" / "leaf.txt").write_text("A leaf.\nde.utf8=Ein Blatt.\n", encoding="utf-8")
    Image.new("LA", (16, 16), (90, 255)).save(root / "grey.png")
    (root / "grey.txt").write_text("A grey square.\n")
    Image.new("RGB", (24, 24), (0, 0, 255)).save(root / "sky.jpg")
    (root / "sky.txt").write_text("The sky.\nfr.utf8=Le ciel.\n")
    (root / "orphan_mirror.png").write_bytes((root / "grey.png").read_bytes())  # no caption: not a sample
    if svg:
        (root / "sun.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="20" height="10">'
                                      '<rect width="10" height="10" fill="#ffff00"/></svg>')
        (root / "sun.txt").write_text("The sun.\n")
    return root


def _captions(tmp_path, name="p", **spec):
    spec = {"sampler": "image_captions", "folder": str(tmp_path / "stamps"), "image_size": 32, "n": 4, **spec}
    return read_samples(sample_dataset(name, spec, tmp_path / name))


def test_image_captions_composites_and_records(tmp_path):
    _stamp_folder(tmp_path / "stamps")
    df, meta = _captions(tmp_path)
    assert df["sample_id"].tolist() == ["animals.frog", "animals.leaf", "grey", "sky"]
    assert df["text"].tolist() == ["A frog.", "A leaf.", "A grey square.", "The sky."]
    frog = np.asarray(Image.open(df["image"][0]))
    assert frog.shape == (32, 32, 3)
    # 40x20 scaled to 32x16, centred: rows 0-7 and 24-31 are background; red left, white (transparent) right
    assert (frog[:8] == 255).all() and (frog[24:] == 255).all()
    assert tuple(frog[16, 4]) == (200, 0, 0) and tuple(frog[16, 28]) == (255, 255, 255)
    leaf = np.asarray(Image.open(df["image"][1]))
    assert tuple(leaf[3, 16]) == (0, 255, 0) and tuple(leaf[28, 16]) == (255, 255, 255)  # palette transparency
    assert tuple(np.asarray(Image.open(df["image"][2]))[16, 16]) == (90, 90, 90)
    assert meta["n_raster"] == 4 and meta["n_svg_only"] == 1 and meta["n_svg_skipped"] == 1
    assert meta["caption_lang"] == "en" and meta["caption_languages"]["fr"] == 2
    assert meta["n_corrupt_skipped"] == 0 and meta["image_size"] == 32
    # another background, another image; the same spec, the same bytes
    df2, meta2 = _captions(tmp_path, "q", background=[0, 0, 0])
    assert tuple(np.asarray(Image.open(df2["image"][0]))[16, 28]) == (0, 0, 0)
    assert meta2["content_sha256"] != meta["content_sha256"]
    assert _captions(tmp_path, "r")[1]["content_sha256"] == meta["content_sha256"]


def test_image_captions_languages_svg_and_subsets(tmp_path):
    _stamp_folder(tmp_path / "stamps")
    fr, meta = _captions(tmp_path, "fr", caption_lang="fr", n=2)
    assert fr["text"].tolist() == ["Une grenouille.", "Le ciel."] and meta["n_missing_caption_lang"] == 3
    with pytest.raises(DatasetError, match=r"no caption in 'xx'.*ca@valencia \(1\).*de \(2\).*en \(5\)"):
        _captions(tmp_path, "xx", caption_lang="xx")
    with pytest.raises(DatasetError, match=r"n = 5 but .* only 4 usable images"):
        _captions(tmp_path, "big", n=5)
    svg, meta = _captions(tmp_path, "svg", svg="render", n=5)
    assert meta["n_svg_rendered"] == 1 and "sun" in svg["sample_id"].tolist()
    sun = np.asarray(Image.open(svg["image"][svg["sample_id"].tolist().index("sun")]))
    assert tuple(sun[16, 4]) == (255, 255, 0) and tuple(sun[16, 28]) == (255, 255, 255)
    # subsets: seeded, nested as n grows, in sample_id order
    two, _ = _captions(tmp_path, "two", n=2, seed=5)
    three, _ = _captions(tmp_path, "three", n=3, seed=5)
    assert set(two["sample_id"]) < set(three["sample_id"])
    assert three["sample_id"].tolist() == sorted(three["sample_id"])
    others = [set(_captions(tmp_path, f"s{seed}", n=2, seed=seed)[0]["sample_id"]) for seed in range(6)]
    assert len({frozenset(o) for o in others}) > 1


def test_image_captions_corrupt_image_fails_or_is_skipped(tmp_path):
    root = _stamp_folder(tmp_path / "stamps", svg=False)
    data = (root / "sky.jpg").read_bytes()
    (root / "sky.jpg").write_bytes(data[:40])  # truncated inside the header
    with pytest.raises(DatasetError, match=r"dataset 'a': image of 'sky' \(sky.jpg\) cannot be decoded.*on_corrupt: skip"):
        _captions(tmp_path, "a", n=4)
    assert not (tmp_path / "a").exists() or not (tmp_path / "a" / "samples.parquet").exists()
    df, meta = _captions(tmp_path, "b", n=4, on_corrupt="skip")
    assert df["sample_id"].tolist() == ["animals.frog", "animals.leaf", "grey"]
    assert meta["corrupt_skipped"] == ["sky.jpg"] and meta["n"] == 3


def test_image_captions_caption_not_utf8_fails_or_is_skipped(tmp_path):
    # It was decoded with errors="replace": a Latin-1 caption became "Le ciel bleu \ufffd..." silently.
    root = _stamp_folder(tmp_path / "stamps", svg=False)
    (root / "sky.txt").write_bytes(b"The sky.\nfr.utf8=Le ciel \xe9toil\xe9\n")
    with pytest.raises(DatasetError, match=r"caption file .*sky.txt: line 2 is not valid UTF-8.*on_corrupt: skip"):
        _captions(tmp_path, "a", n=4)
    df, meta = _captions(tmp_path, "b", n=3, on_corrupt="skip")
    assert df["sample_id"].tolist() == ["animals.frog", "animals.leaf", "grey"]
    assert meta["captions_not_utf8"] == ["sky.txt"] and meta["n_captions_not_utf8"] == 1


@pytest.mark.parametrize("keep", [0.5, 3])
def test_truncated_samples_parquet_names_the_file_and_the_fix(tmp_path, keep):
    from convergence.utils import CorruptFileError

    f = tmp_path / "corpus.txt"
    f.write_text("first line\nsecond line\n")
    path = sample_dataset("t", {"sampler": "text_file", "file": str(f), "n": 2}, tmp_path / "o")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(CorruptFileError, match=r"samples.parquet is not a readable parquet file.*delete it and rerun"):
        read_samples(path)


def test_text_file_line_not_utf8_fails_or_is_skipped(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_bytes(b"first line\ncaf\xe9 au lait\nsecond line\n\xff\xfe\nthird line\n")
    spec = {"sampler": "text_file", "file": str(f), "n": 3}
    with pytest.raises(DatasetError, match=r"corpus.txt: line 2 \(and 1 more lines\) is not valid UTF-8.*on_corrupt: skip"):
        sample_dataset("t", spec, tmp_path / "o")
    assert not (tmp_path / "o" / "samples.parquet").exists()
    df, meta = read_samples(sample_dataset("t", dict(spec, on_corrupt="skip"), tmp_path / "o"))
    assert df["text"].tolist() == ["first line", "second line", "third line"]
    assert df["sample_id"].tolist() == ["line-0000000", "line-0000002", "line-0000004"]  # 0-based, as before
    assert meta["lines_not_utf8"] == [2, 4] and meta["n_lines_not_utf8"] == 2


def _fake_deb(tmp_path, src):
    """A real .deb (dpkg-deb -b) laid out like the package: stamps under the source root, a copyright file."""
    import shutil
    import subprocess

    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not available (Debian tools)")
    pkg = tmp_path / "pkg"
    _stamp_folder(pkg / src.root, svg=False)
    (pkg / src.root / "animals" / "frog.ogg").write_bytes(b"sound")  # not kept
    (pkg / src.copyright).parent.mkdir(parents=True)
    (pkg / src.copyright).write_text("License: GPL-2\n")
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN" / "control").write_text(f"Package: {src.package}\nVersion: {src.version}\nArchitecture: all\n"
                                            "Maintainer: test <t@example.org>\nDescription: test\n")
    deb = tmp_path / src.deb_name
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(deb)], check=True, capture_output=True)
    return deb


def test_source_fetch_checks_the_deb_and_keeps_only_stamps(tmp_path, monkeypatch):
    import dataclasses

    real = sources.SOURCES["tuxpaint-stamps"]
    deb = _fake_deb(tmp_path, real)
    monkeypatch.setattr(sources, "_installed_version", lambda package: None)
    monkeypatch.setattr(sources, "_apt_download", lambda src, workdir: (_ for _ in ()).throw(AssertionError("no network")))
    resources = tmp_path / "resources"
    (resources / "datasets").mkdir(parents=True)
    placed = resources / "datasets" / real.deb_name
    placed.write_bytes(deb.read_bytes())
    # the real source's hash: a different .deb is refused, naming the file and the expected hash
    with pytest.raises(DatasetError, match=rf"sha256 of .*{real.deb_name} is [0-9a-f]{{64}}, expected {real.sha256}"):
        sources.fetch_source("tuxpaint-stamps", sources.source_folder("tuxpaint-stamps", resources), resources)
    assert not sources.source_folder("tuxpaint-stamps", resources).exists()
    from convergence.utils import sha256_file

    fake = dataclasses.replace(real, sha256=sha256_file(deb))
    monkeypatch.setitem(sources.SOURCES, "tuxpaint-stamps", fake)
    folder = sources.fetch_source("tuxpaint-stamps", sources.source_folder("tuxpaint-stamps", resources), resources)
    kept = sorted(p.name for p in (folder / "collection").rglob("*") if p.is_file())
    assert "frog.ogg" not in kept and "frog.png" in kept and (folder / "copyright").exists()
    spec = {"sampler": "image_captions", "source": "tuxpaint-stamps", "n": 4, "image_size": 32}
    df, meta = read_samples(sample_dataset("photos", spec, tmp_path / "photos", resources_dir=resources))
    assert len(df) == 4 and meta["provenance"]["version"] == real.version
    assert meta["provenance"]["obtained"].startswith("deb file") and "GPL-2" in meta["provenance"]["licence"]


def test_source_without_package_or_apt_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_installed_version", lambda package: None)
    monkeypatch.setattr(sources, "_apt_download", lambda src, workdir: (None, "E: Unable to locate package"))
    with pytest.raises(DatasetError, match=r"tuxpaint-stamps-default=2022\.06\.04-1.*apt-get download "
                                           r"tuxpaint-stamps-default=2022\.06\.04-1.*put it at"):
        sources.fetch_source("tuxpaint-stamps", tmp_path / "d", tmp_path)
    assert list(tmp_path.iterdir()) == []
