"""benchmarks/default_run_profile.py: job time per rule from the `benchmark:` files every rule writes."""

import importlib.util
import os
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "default_run_profile.py"
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _module():
    spec = importlib.util.spec_from_file_location("default_run_profile", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(results, rel, seconds, end, cpu="-", rss="120.5"):
    path = results / "benchmarks" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t90\t{cpu}\n")
    os.utime(path, (end, end))


def test_profile_sums_per_rule_and_takes_the_wall_time_from_the_files(tmp_path):
    _bench(tmp_path, "extract_activations/photos/a.tsv", 60, 1160, cpu=55, rss=900)
    _bench(tmp_path, "extract_activations/photos/b.tsv", 30, 1130, cpu=28)
    _bench(tmp_path, "align_pair/photos/mutual_knn/a__b.tsv", 60, 1220, cpu="-")  # "-": not measured
    (tmp_path / "benchmarks" / "align_pair" / "empty.tsv").write_text("")  # a job still running
    text, wall = _module().profile(tmp_path)
    rows = {line.split()[0]: line.split() for line in text.splitlines()[1:4]}
    assert rows["extract_activations"][1:4] == ["2", "1.50", "1.38"]
    assert rows["extract_activations"][5:] == ["60.0", "900"]
    assert rows["align_pair"][1:4] == ["1", "1.00", "0.00"]
    assert rows["total"][1:3] == ["3", "2.50"]
    assert wall == pytest.approx(120)  # first start 1100 (1160 - 60), last end 1220
    assert "wall time (first job start to last job end): 2.00 min" in text
    assert "on average: 1.25" in text


def test_no_benchmarks_is_a_clear_message(tmp_path):
    with pytest.raises(SystemExit, match="run snakemake first"):
        _module().profile(tmp_path)
    (tmp_path / "benchmarks").mkdir()
    assert _module().profile(tmp_path) == (f"no benchmark files under {tmp_path / 'benchmarks'}", None)


def test_machine_block_scales_the_wall_time_by_the_matmul_ratio(monkeypatch):
    module = _module()
    monkeypatch.setattr(module, "matmul_ms", lambda: 4.25)
    text = module.machine(600.0)  # 10 min here, 4x faster than the reference's 17 ms
    assert "4.25 ms here, 17 ms on the reference" in text and "ratio 4.00" in text
    assert "wall time scaled by that ratio: 40.0 min (budgets on 2 cores: the default 30 min" in text
    assert text.startswith("machine: ") and "precision auto here: " in text


def test_every_rule_writes_its_benchmark_under_its_own_name():
    import re

    rules = Path(__file__).resolve().parents[1] / "rules"
    for smk in sorted(rules.glob("*.smk")):
        for name, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", smk.read_text(), flags=re.M):
            path = re.search(r"^\s+benchmark:\n\s+f\"\{RESULTS\}/benchmarks/([^\"]+)\"", body, flags=re.M)
            assert path, f"{smk.name}: rule {name} has no benchmark: directive under results/benchmarks/"
            assert path.group(1).startswith(f"{name}/") and path.group(1).endswith(".tsv"), (name, path.group(1))
