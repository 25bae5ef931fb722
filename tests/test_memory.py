"""Memory that does not grow with N (README: Pearson "memory independent of N"; alignment kNN "blocked",
never an N x N matrix), measured, not assumed.

Each measurement runs in a fresh subprocess: the input is made first, the code path runs once on a small
input (imports, JIT compilation, thread and allocator pools), the peak resident size is reset
(/proc/self/clear_refs) and the call under test runs; its cost is the peak (VmHWM) minus the resident size
just before. Bounds, not times:

- `convergence.rosetta.pearson` on inputs generated chunk by chunk: the peak at 4N is the peak at N, up to
  a few MiB, while the inputs at 4N would take 64 MiB;
- `convergence.metrics.score("mutual_knn")` (blocked kNN) on [N, D] arrays: the peak at 4N is at most 4x
  the peak at N (linear: the float64 copies of the inputs), and far below one dense N x N float32 matrix.

A control that reads its whole input shows the measurement sees memory that does grow.
"""

import json
import os
import subprocess
import sys

import pytest

MiB = 2**20
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")

CHILD = r"""
import json, sys
import numpy as np

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)

class Lazy:
    # [n, d] float32 rows made on demand (seeded by position), so the input itself costs no memory.
    def __init__(self, n, d, seed):
        self.shape, self.seed = (n, d), seed
    def __getitem__(self, rows):
        start, stop, _ = rows.indices(self.shape[0])
        rng = np.random.default_rng((self.seed, start))
        return rng.standard_normal((stop - start, self.shape[1]), dtype=np.float32) * 3 + 50

kind, n, d, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if kind == "pearson":
    from convergence.rosetta import pearson
    a, b = Lazy(n, d, 1), Lazy(n, d, 2)
    pearson(Lazy(4 * chunk, d, 1), Lazy(4 * chunk, d, 2), chunk_size=chunk)
    run = lambda: pearson(a, b, chunk_size=chunk)
elif kind == "knn":
    from convergence.metrics import score
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d), dtype=np.float32)
    Y = X + rng.standard_normal((n, d), dtype=np.float32)
    score("mutual_knn", X[:chunk], Y[:chunk], topk=10)
    run = lambda: score("mutual_knn", X, Y, topk=10)
elif kind == "control":  # reads everything at once: memory that grows with N
    a = Lazy(n, d, 1)
    a[0:chunk].sum()
    run = lambda: a[0:n].sum()
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident size to the current one
run()
print(json.dumps({"growth": status("VmHWM") - before}))
"""


def growth(kind: str, n: int, d: int, chunk: int) -> int:
    """Peak resident bytes one call adds, measured in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "NUMBA_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, str(n), str(d), str(chunk)], capture_output=True,
                          text=True, env=env, timeout=600)
    if proc.returncode != 0 and "clear_refs" in proc.stderr:
        pytest.skip(f"cannot reset the peak resident size here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["growth"]


def test_the_measurement_sees_memory_that_grows():
    n, d = 8192, 256
    small, large = growth("control", n, d, 1024), growth("control", 4 * n, d, 1024)
    assert large - small >= 0.9 * 3 * n * d * 4, (small / MiB, large / MiB)


def test_streamed_pearson_memory_is_flat_in_n():
    n, d, chunk = 8192, 256, 1024  # 8 and 32 chunks
    small, large = growth("pearson", n, d, chunk), growth("pearson", 4 * n, d, chunk)
    inputs_at_4n = 2 * 4 * n * d * 4
    assert large - small <= 4 * MiB, (
        f"peak growth {small / MiB:.1f} MiB at N={n}, {large / MiB:.1f} MiB at N={4 * n} "
        f"(the inputs at 4N: {inputs_at_4n / MiB:.0f} MiB)")


def test_blocked_knn_memory_is_linear_in_n_and_never_n_by_n():
    n, d = 8000, 16  # N x N float32: 244 MiB at N, 3.8 GiB at 4N
    small, large = growth("knn", n, d, 500), growth("knn", 4 * n, d, 500)
    dense_at_4n = (4 * n) ** 2 * 4
    assert large <= 4 * small + 16 * MiB, f"{small / MiB:.1f} MiB at N={n}, {large / MiB:.1f} MiB at N={4 * n}"
    assert large <= dense_at_4n / 8, f"{large / MiB:.0f} MiB at N={4 * n}: a dense N x N is {dense_at_4n / MiB:.0f} MiB"
