"""Fault injection for tests/test_faults.py: imported as `sitecustomize` by every Python process of a
Snakemake run started with this folder on PYTHONPATH and CONVERGENCE_FAULTS set to a folder of the test's.
Without CONVERGENCE_FAULTS it does nothing.

In a Snakemake job (a script whose `__main__` holds Snakemake's `snakemake` object) it watches renames
through Python's audit hook (`os.rename` is raised by os.rename, os.replace and Path.rename/replace) and

- records, at exit, which of the job's outputs exist and which of them were put in place by a rename:
  one JSON line per job in $CONVERGENCE_FAULTS/jobs.jsonl. An output that exists but was never the target
  of a rename was written in place, where a kill leaves it half-written;
- holds an armed job (its first output listed in $CONVERGENCE_FAULTS/armed.json) at the rename that would
  complete its outputs (every other output already in place): it writes one JSON line to the FIFO
  $CONVERGENCE_FAULTS/events and sleeps until the test has looked at the files and SIGKILLed it. That is
  the last moment a kill can hit, and the one a non-atomic write would fail: everything is written, one
  rename is missing.
"""

import atexit
import json
import os
import sys
import time

_DIR = os.environ.get("CONVERGENCE_FAULTS")
# A held job nobody kills (the test died) gives up after this long, with a distinct exit status.
_HOLD_S = float(os.environ.get("CONVERGENCE_FAULTS_HOLD_S", "900"))


def _job():
    """Snakemake's object of the job this process runs, or None (Snakemake itself, other processes)."""
    main = sys.modules.get("__main__")
    sm = getattr(main, "snakemake", None)
    return sm if type(sm).__name__ == "Snakemake" else None


def _install(root: str) -> None:
    renamed: set[str] = set()
    armed_file = os.path.join(root, "armed.json")
    state = {"armed": None, "held": False}

    def outputs(sm) -> list[str]:
        return [os.path.abspath(str(o)) for o in sm.output]

    def is_armed(outs) -> bool:
        if state["armed"] is None:
            try:
                with open(armed_file) as f:
                    state["armed"] = {os.path.abspath(p) for p in json.load(f)}
            except FileNotFoundError:
                state["armed"] = set()
        return bool(outs) and outs[0] in state["armed"]

    def hook(event, args):
        if event != "os.rename" or state["held"]:
            return
        sm = _job()
        if sm is None:
            return
        src, dst = os.path.abspath(os.fsdecode(args[0])), os.path.abspath(os.fsdecode(args[1]))
        outs = outputs(sm)
        if dst not in outs:
            return
        others = [o for o in outs if o != dst]
        if is_armed(outs) and all(os.path.exists(o) for o in others):
            state["held"] = True
            event_line = json.dumps({
                "pid": os.getpid(), "rule": sm.rule, "outputs": outs, "src": src, "dst": dst,
                "not_renamed": [o for o in others if o not in renamed],
            })
            fd = os.open(os.path.join(root, "events"), os.O_WRONLY)  # a FIFO the test keeps open
            os.write(fd, (event_line + "\n").encode())
            os.close(fd)
            time.sleep(_HOLD_S)
            os._exit(70)
        renamed.add(dst)

    def report():
        sm = _job()
        if sm is None:
            return
        outs = outputs(sm)
        line = json.dumps({"pid": os.getpid(), "rule": sm.rule, "outputs": outs,
                           "exists": [o for o in outs if os.path.exists(o)],
                           "renamed": sorted(renamed & set(outs))})
        with open(os.path.join(root, "jobs.jsonl"), "a") as f:
            f.write(line + "\n")

    sys.addaudithook(hook)
    atexit.register(report)


if _DIR:
    _install(_DIR)
