"""The sandbox for model-written code: a syntax whitelist, then a locked-down child process.

A model's free-form answer (``lambda n: 3 * n + 2``) is code we did not write. Restricted builtins in
``eval`` are no boundary: attribute access alone walks from ``()`` to every class in the interpreter
(``().__class__.__base__.__subclasses__()`` reaches ``FileIO``, ``catch_warnings`` and through it
``__import__``). So an answer passes two independent layers before it runs:

1. ``check_source``: the text is parsed with ``ast`` (parsing runs nothing) and every node must be on a
   whitelist: one ``lambda``, arithmetic, comparisons, boolean and conditional expressions, literals,
   subscripts, comprehensions, calls of the allowed builtins by name, and names that are the lambda's
   own arguments or those builtins. No attribute access and no dunder name, anywhere.
2. The child (``python -I -S sandbox.py``, started by ``run_in_sandbox``) checks the text again, drops
   root to ``nobody`` where it runs as root, and sets resource limits before it compiles the text:
   CPU seconds, address space, no file growth, no new file descriptors (no open, no socket: every new
   descriptor would exceed ``RLIMIT_NOFILE``), no new processes (``RLIMIT_NPROC`` = 0, which the kernel
   enforces for non-root users only, hence the drop to ``nobody``). The parent kills its whole process
   group at a wall-clock backstop.

This file imports nothing from the package: the child runs it in an isolated interpreter, and the
parent imports the same ``check_source``, so both layers read one whitelist.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import math
import resource
import signal
import subprocess
import sys

# Enough for arithmetic answers; no import, open, eval, exec, getattr, type or object access.
ALLOWED_BUILTINS = ("abs", "max", "min", "int", "float", "round", "divmod", "pow", "bool", "sum", "len",
                    "range")
MEMORY_BYTES = 512 * 2**20
NOBODY = 65534  # uid and gid of `nobody` on Debian and most Linux systems

# Node types an answer may contain. Anything else (Attribute, Import, Lambda bodies that define
# classes, f-strings, starred calls, walrus, await, ...) is refused by name.
_OPERATORS = (
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.RShift,
    ast.BitOr, ast.BitXor, ast.BitAnd, ast.UAdd, ast.USub, ast.Not, ast.Invert, ast.And, ast.Or,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn,
)
LAMBDA_NODES = (
    ast.Expression, ast.Lambda, ast.arguments, ast.arg,
    ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp,
    ast.Constant, ast.Name, ast.Load, ast.Store,
    ast.Tuple, ast.List, ast.Subscript, ast.Slice,
    ast.ListComp, ast.GeneratorExp, ast.comprehension,
    ast.Call,
) + _OPERATORS
CONSTANT_TYPES = (int, float, bool, str, type(None))
MAX_SOURCE_CHARS = 2000


class UnsafeSource(ValueError):
    """The answer uses syntax outside the whitelist (the message names the node)."""


def check_source(source: str) -> ast.Expression:
    """Parse ``source`` as one lambda expression and check every node against the whitelist.

    Returns the parsed tree; raises ``UnsafeSource`` (or ``SyntaxError``) naming what is refused.
    """
    if not isinstance(source, str):
        raise UnsafeSource(f"the answer must be text, got {type(source).__name__}")
    if len(source) > MAX_SOURCE_CHARS:
        raise UnsafeSource(f"the answer is longer than {MAX_SOURCE_CHARS} characters")
    try:
        tree = ast.parse(source, mode="eval")
    except (MemoryError, RecursionError) as error:  # deeply nested text: refuse, do not crash
        raise UnsafeSource(f"the answer is nested too deeply to parse ({type(error).__name__})") from None
    if not isinstance(tree.body, ast.Lambda):
        raise UnsafeSource(f"the answer must be one lambda expression, not {type(tree.body).__name__}")
    lam = tree.body.args
    if lam.vararg or lam.kwarg or lam.kwonlyargs or lam.posonlyargs or lam.defaults or lam.kw_defaults:
        raise UnsafeSource("the lambda may take plain positional arguments only")
    bound = set(ALLOWED_BUILTINS)
    for node in ast.walk(tree):
        if not isinstance(node, LAMBDA_NODES):
            raise UnsafeSource(f"'{type(node).__name__}' is not allowed in an answer")
        if isinstance(node, ast.arg | ast.Name):
            name = node.arg if isinstance(node, ast.arg) else node.id
            if name.startswith("_"):
                raise UnsafeSource(f"the name '{name}' is not allowed (no names starting with '_')")
            if isinstance(node, ast.arg) or isinstance(node.ctx, ast.Store):
                bound.add(name)
        elif isinstance(node, ast.Constant) and not isinstance(node.value, CONSTANT_TYPES):
            raise UnsafeSource(f"a constant of type {type(node.value).__name__} is not allowed")
        elif isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in ALLOWED_BUILTINS):
                raise UnsafeSource(f"only these functions may be called: {', '.join(ALLOWED_BUILTINS)}")
            if node.keywords:
                raise UnsafeSource("calls may not take keyword arguments")
        elif isinstance(node, ast.comprehension) and node.is_async:
            raise UnsafeSource("async comprehensions are not allowed")
    free = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - bound
    if free:
        raise UnsafeSource(f"unknown names {sorted(free)}: only the lambda's arguments and "
                           f"{', '.join(ALLOWED_BUILTINS)} may be used")
    return tree


# --------------------------------------------------------------------------- the parent's side

STARTUP_GRACE = 10.0  # wall seconds for the child's interpreter start, on top of the CPU budget


def run_in_sandbox(source: str, inputs: list, cpu_seconds: float = 2.0) -> dict:
    """Apply the lambda ``source`` to each input in a locked-down child process.

    Returns the child's reply: ``{"ok": True, "outputs": [...]}`` or ``{"ok": False, "error": ...}``.
    Text outside the whitelist is refused here without starting a process. ``cpu_seconds`` bounds the
    evaluation's CPU time (``RLIMIT_CPU``, whole seconds, rounded up); interpreter start is not
    counted against it. A wall-clock backstop of ``cpu_seconds + STARTUP_GRACE`` kills the child's
    whole process group.
    """
    try:
        check_source(source)
    except (UnsafeSource, SyntaxError) as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
    budget = max(1, math.ceil(cpu_seconds))
    request = json.dumps({"source": source, "inputs": list(inputs), "cpu_seconds": budget})
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.abspath(__file__)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group, so a kill reaches all of it
    )
    try:
        stdout, _ = process.communicate(request, timeout=budget + STARTUP_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {"ok": False, "error": "timeout"}
    try:
        reply = json.loads(stdout)
    except json.JSONDecodeError:
        return {"ok": False, "error": f"no reply (exit status {process.returncode})"}
    return reply if isinstance(reply, dict) else {"ok": False, "error": "malformed reply"}


# --------------------------------------------------------------------------- the child process


def drop_privileges() -> None:
    """As root, become `nobody` (no supplementary groups): root ignores RLIMIT_NPROC and file modes."""
    if os.getuid() == 0 or os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        if os.geteuid() == 0 or os.getuid() == 0:  # pragma: no cover - setuid succeeded or raised
            raise PermissionError("could not drop root privileges")


def limit_resources(cpu_seconds: int) -> None:
    """Limits that hold for the untrusted evaluation. The descriptors already open (stdin, stdout,
    stderr) stay usable; any new one (a file, a socket, a pipe) is refused with EMFILE."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def apply(source: str, inputs: list) -> list:
    """Evaluate the (already checked) lambda on each input, with the allowed builtins only."""
    namespace = {"__builtins__": {name: getattr(builtins, name) for name in ALLOWED_BUILTINS}}
    fn = eval(compile(check_source(source), "<answer>", "eval"), namespace, {})
    return [fn(x) for x in inputs]


def main() -> None:
    request = json.loads(sys.stdin.read())
    try:
        check_source(request["source"])  # again, in the process that runs it
        drop_privileges()
        limit_resources(int(request.get("cpu_seconds", 2)))
        outputs = apply(request["source"], request["inputs"])
        text = json.dumps({"ok": True, "outputs": outputs})
    except BaseException as error:  # anything the answer does wrong is just a wrong answer
        text = json.dumps({"ok": False, "error": f"{type(error).__name__}: {error}"[:500]})
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
