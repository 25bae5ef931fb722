"""Image-caption collections that the workflow fetches at run time (never committed): a registry by name.

`tuxpaint-stamps`: Debian's `tuxpaint-stamps-default` 2022.06.04-1 (GPL-2.0-or-later), about 950
"rubber stamps" of Tux Paint, mostly cut-out photographs (animals, food, vehicles, household, ...),
each with a human-written caption in English and up to 76 other languages. Taken, in order, from:

1. an installed copy (`dpkg-query` reports exactly this version; read in place under /usr/share);
2. the .deb file itself placed at `<resources>/datasets/<deb file name>` (for machines without apt);
3. `apt-get download` of exactly this version.

The .deb's sha256 is checked before it is unpacked (`dpkg-deb -x`); only the stamps' images, captions and
the copyright file are kept (the package's sound files are not). The folder gets a `source.json` with the
provenance that every dataset sampled from it records.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from convergence.datasets import DatasetError
from convergence.utils import atomic_path, sha256_file

RECORD = "source.json"
KEEP_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".svg", ".txt", ".dat"}


@dataclass(frozen=True)
class DebianSource:
    name: str
    package: str
    version: str
    sha256: str  # of the .deb
    licence: str
    root: str  # folder inside the package that holds the collection
    copyright: str  # the package's copyright file
    description: str

    @property
    def deb_name(self) -> str:
        return f"{self.package}_{self.version}_all.deb"

    def how_to_get(self, resources_dir: str | Path) -> str:
        return (
            f"On Debian 12 (bookworm) or a derivative: `apt-get update && apt-get download "
            f"{self.package}={self.version}` (or `apt-get install {self.package}={self.version}`). Elsewhere, "
            f"download {self.deb_name} from any Debian mirror (pool/main/t/tuxpaint-stamps/, sha256 "
            f"{self.sha256}) and put it at {Path(resources_dir) / 'datasets' / self.deb_name}."
        )


SOURCES: dict[str, DebianSource] = {
    s.name: s
    for s in [
        DebianSource(
            name="tuxpaint-stamps",
            package="tuxpaint-stamps-default",
            version="2022.06.04-1",
            sha256="6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34",
            licence="GPL-2.0-or-later (Debian copyright: GPL-2, 'or (at your option) any later version')",
            root="usr/share/tuxpaint/stamps",
            copyright="usr/share/doc/tuxpaint-stamps-default/copyright",
            description="Tux Paint rubber stamps: cut-out photographs and drawings with human-written captions",
        )
    ]
}


def get(name: str) -> DebianSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise DatasetError(f"unknown dataset source '{name}'. Sources: {', '.join(sorted(SOURCES))}") from None


def source_folder(name: str, resources_dir: str | Path = "resources") -> Path:
    return Path(resources_dir) / "datasets" / name


def read_record(folder: str | Path) -> dict:
    path = Path(folder) / RECORD
    if not path.exists():
        raise DatasetError(f"{folder} is not a fetched dataset source (no {RECORD}); delete it and rerun")
    return json.loads(path.read_text())


def collection_root(folder: str | Path) -> Path:
    """Where the images and captions of a fetched source are (in place for an installed copy)."""
    record = read_record(folder)
    return Path(record["root"]) if record["obtained"] == "installed" else Path(folder) / "collection"


def _installed_version(package: str) -> str | None:
    try:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}|${Version}", package],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    status, _, version = proc.stdout.partition("|")
    return version if proc.returncode == 0 and status.endswith("installed") else None


def _apt_download(src: DebianSource, workdir: Path) -> tuple[Path | None, str]:
    try:
        proc = subprocess.run(["apt-get", "download", f"{src.package}={src.version}"], cwd=workdir,
                              capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{type(e).__name__}: {e}"
    deb = workdir / src.deb_name
    if proc.returncode != 0 or not deb.exists():
        return None, (proc.stderr or proc.stdout).strip()[-600:]
    return deb, ""


def _unpack(src: DebianSource, deb: Path, dest: Path) -> None:
    got = sha256_file(deb)
    if got != src.sha256:
        raise DatasetError(f"dataset source '{src.name}': sha256 of {deb} is {got}, expected {src.sha256} "
                           f"({src.package} {src.version}). Delete the file and fetch it again.")
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            raise DatasetError(f"dataset source '{src.name}': `dpkg-deb -x {deb}` failed: {proc.stderr.strip()}")
        root = Path(tmp) / src.root
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix.lower() in KEEP_SUFFIXES:
                target = dest / "collection" / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), target)
        shutil.copy(Path(tmp) / src.copyright, dest / "copyright")


def fetch_source(name: str, dest: str | Path, resources_dir: str | Path = "resources") -> Path:
    """Make the folder `dest` for source `name` (atomically): see the module docstring for the order."""
    src = get(name)
    dest = Path(dest)
    record = {"source": src.name, "package": src.package, "version": src.version, "deb_sha256": src.sha256,
              "licence": src.licence, "description": src.description}
    with atomic_path(dest) as tmp:
        tmp.mkdir(parents=True)
        installed = _installed_version(src.package)
        placed = Path(resources_dir) / "datasets" / src.deb_name
        if installed == src.version and (Path("/") / src.root).is_dir():
            record.update(obtained="installed", root=str(Path("/") / src.root))
            shutil.copy(Path("/") / src.copyright, tmp / "copyright")
        elif placed.exists():
            _unpack(src, placed, tmp)
            record.update(obtained=f"deb file {placed}")
        else:
            deb, error = _apt_download(src, tmp)
            if deb is None:
                have = f" (installed: version {installed})" if installed else ""
                raise DatasetError(
                    f"dataset source '{name}' needs the Debian package {src.package}={src.version}: it is not "
                    f"installed{have} and `apt-get download` failed ({error or 'no file'}). {src.how_to_get(resources_dir)}"
                )
            _unpack(src, deb, tmp)
            deb.unlink()
            record.update(obtained="apt-get download")
        (tmp / RECORD).write_text(json.dumps(record, indent=2))
    return dest


def provenance(folder: str | Path) -> dict:
    """What a dataset sampled from this source records in its metadata."""
    record = read_record(folder)
    return {k: record[k] for k in ("source", "package", "version", "deb_sha256", "licence", "obtained")}


def as_dict(src: DebianSource) -> dict:
    return asdict(src)
