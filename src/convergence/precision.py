"""Which precision a job computes in: bf16 only where the device computes it natively.

A CPU without bf16 instructions (AVX2-only x86, most laptops, many cluster nodes) runs a bfloat16 matrix
product through a slow fallback: a 512 x 512 product took 861 ms in bf16 and 17 ms in fp32 on a 2-core
AVX2 EPYC (50x). On a CPU with AVX512_BF16 or AMX, and on a CUDA GPU of compute capability 8.0 or more, bf16
is 2-3x faster than fp32. So `precision: auto` resolves, once per job, to

- bf16 on CUDA where `torch.cuda.is_bf16_supported()` holds;
- bf16 on a CPU whose flags name native bf16 (x86: avx512_bf16 or amx_bf16; arm64: bf16) *and* whose
  oneDNN reports bf16 support (oneDNN's own check, which also honours ONEDNN_MAX_CPU_ISA);
- fp32 everywhere else, with the reason.

The decision reads capabilities only, never a timing, so one machine always makes the same choice.
`measure_bf16_slowdown` times the two (for the warning an explicit bf16 without native support gets, and
for `benchmarks/precision_speed.py`).
"""

from __future__ import annotations

import platform
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

PRECISIONS = ("auto", "bf16", "fp32")
COMPUTED = ("bf16", "fp32")  # what `auto` resolves to
NATIVE_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 (AVX512-BF16, AMX), arm64 (FEAT_BF16)
CPUINFO = Path("/proc/cpuinfo")
PROBE_SIZE = 256  # the timed matmul: ~0.1 s in bf16 where it is emulated, under a millisecond in fp32


class PrecisionWarning(UserWarning):
    """bf16 asked for on a device that does not compute it natively."""


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # what the job computes in: "bf16" or "fp32"
    requested: str  # what the config asked for: "auto", "bf16" or "fp32"
    device: str  # "cpu", "cuda", ...
    native_bf16: bool
    reason: str
    bf16_slowdown: float | None = None  # measured bf16 / fp32 time of a matmul (None: not measured)

    def provenance(self) -> dict:
        """What an output records of the choice (all JSON types)."""
        return asdict(self)

    def line(self) -> str:
        measured = "" if self.bf16_slowdown is None else f"; bf16 measured {self.bf16_slowdown:.1f}x the fp32 time"
        return f"precision {self.precision} (asked: {self.requested}; {self.device}): {self.reason}{measured}"


def cpu_flags(cpuinfo: str | Path | None = None) -> frozenset[str] | None:
    """The CPU's feature flags as Linux lists them in `cpuinfo` (default CPUINFO; x86 `flags`, arm64
    `Features`); None where unknown."""
    try:
        text = Path(cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def onednn_bf16() -> bool:
    """oneDNN's bf16 check (torch's private hook; False where torch lacks it)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def native_bf16(device: str = "cpu") -> tuple[bool, str]:
    """Whether `device` computes bf16 natively, and why (one sentence)."""
    import torch

    kind = str(device).split(":")[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported():
            return True, f"{name} computes bf16"
        return False, f"{name} has no native bf16 (compute capability below 8.0)"
    if kind != "cpu":
        return False, f"no bf16 check for device {kind!r}: fp32 is the safe choice"
    flags = cpu_flags()
    capability = torch.backends.cpu.get_cpu_capability()
    if flags is None:
        return False, f"the CPU's flags are unknown on {platform.system()} (torch capability {capability})"
    named = sorted(f for f in NATIVE_CPU_FLAGS if f in flags)
    if not named:
        return False, (f"the CPU has no native bf16 (no {' / '.join(NATIVE_CPU_FLAGS)} flag; torch capability "
                       f"{capability})")
    if not onednn_bf16():
        return False, (f"the CPU lists {', '.join(named)} but oneDNN does not use it (ONEDNN_MAX_CPU_ISA or an "
                       f"old oneDNN; torch capability {capability})")
    return True, f"the CPU computes bf16 natively ({', '.join(named)}; torch capability {capability})"


def measure_bf16_slowdown(device: str = "cpu", size: int = PROBE_SIZE, repeats: int = 3) -> float:
    """bf16 / fp32 time of a `size` x `size` matmul on `device`, best of `repeats` each after a warm-up. On a
    CPU it runs on one thread (restored after): a per-core rate, which a busy second core does not disturb."""
    import torch

    def best(dtype) -> float:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            a @ b
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return min(times[1:])

    from convergence.utils import torch_threads

    with torch_threads(1 if str(device).startswith("cpu") else None):
        return best(torch.bfloat16) / max(best(torch.float32), 1e-9)


def resolve_precision(requested: str, device: str = "cpu", *, log=print) -> PrecisionChoice:
    """The precision a job computes in for the config's `requested` ("auto", "bf16" or "fp32").

    auto: bf16 where `device` computes it natively, else fp32. An explicit bf16 runs as asked; without native
    support it warns (PrecisionWarning) with the slowdown measured here. The choice and its reason go to
    `log` (one line) and to the caller's provenance (`PrecisionChoice.provenance`)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    kind = str(device).split(":")[0]
    native, why = native_bf16(kind)
    slowdown = None
    if requested == "auto":
        chosen, reason = ("bf16" if native else "fp32"), f"auto: {why}"
    elif requested == "bf16":
        chosen, reason = "bf16", f"asked for bf16: {why}"
        if not native:
            slowdown = round(measure_bf16_slowdown(kind), 2)
            warnings.warn(
                f"precision bf16 on {kind} without native bf16 ({why}): a matmul here takes {slowdown:.1f}x "
                "its fp32 time; set precision: auto (or fp32) unless bf16 numerics are the point",
                PrecisionWarning,
                stacklevel=2,
            )
    else:
        chosen, reason = "fp32", f"asked for fp32 ({why})"
    choice = PrecisionChoice(chosen, requested, kind, native, reason, slowdown)
    if log is not None:
        log(choice.line())
    return choice
