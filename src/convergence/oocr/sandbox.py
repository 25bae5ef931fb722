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
   enforces for non-root users only, hence the drop to ``nobody``), then installs a seccomp filter
   (libseccomp, ``DENIED_SYSCALLS``) under which every call that changes a path (truncate, unlink,
   rename, mkdir, symlink, chmod, ...: none needs a descriptor, so the limits alone let them through),
   signals, traces or re-limits another process (``kill`` reaches every process of the same uid),
   executes a program or opens a socket fails with EPERM. Where the platform has none, the job's log
   says so once and the other layers remain. The parent reads at most ``MAX_REPLY_BYTES`` of the reply
   and kills the child's whole process group past it or at a wall-clock backstop.

The Coins task's free-form answer is a coin *class* (``class KLS(BaseCoin): heads = 0.7``, or a
``flip`` method returning ``"H" if random() < 0.7 else "T"``), which is sampled and executed to
estimate its P(heads). ``check_coin_source`` is its own, separate whitelist: one class deriving from
``BaseCoin`` whose body holds only plain assignments of class attributes and methods made of
``return``, ``if`` and local assignments over the lambda grammar's expressions, plus exactly two forms
of attribute access: ``random.random`` and ``self.<a class attribute>`` (read only, never a name
starting with ``_``). It runs in the same locked-down child (``run_coin_in_sandbox``), which checks it
again and never builds the class: it evaluates the attributes, compiles the ``flip`` method alone as a
function with the allowed builtins and a seeded ``random``, and calls it on a plain namespace holding
the attributes.

This file imports nothing from the package: the child runs it in an isolated interpreter, and the
parent imports the same ``check_source`` and ``check_coin_source``, so both layers read one whitelist.
"""

from __future__ import annotations

import ast
import builtins
import ctypes
import errno
import json
import math
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import types

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


def _parse(source, mode: str):
    """``ast.parse`` of model-written text, every way it can fail a refusal (or a SyntaxError): text that
    is not a str, too long, not encodable (a lone surrogate), with a NUL byte, or nested too deeply."""
    if not isinstance(source, str):
        raise UnsafeSource(f"the answer must be text, got {type(source).__name__}")
    if len(source) > MAX_SOURCE_CHARS:
        raise UnsafeSource(f"the answer is longer than {MAX_SOURCE_CHARS} characters")
    try:
        source.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UnsafeSource(f"the answer is not valid Unicode text ({error.reason} at {error.start})") from None
    try:
        return ast.parse(source, mode=mode)
    except (MemoryError, RecursionError) as error:  # deeply nested text: refuse, do not crash
        raise UnsafeSource(f"the answer is nested too deeply to parse ({type(error).__name__})") from None
    except ValueError as error:  # e.g. a NUL byte (a SyntaxError from Python 3.12 on)
        raise UnsafeSource(f"the answer cannot be parsed ({error})") from None


def check_source(source: str) -> ast.Expression:
    """Parse ``source`` as one lambda expression and check every node against the whitelist.

    Returns the parsed tree; raises ``UnsafeSource`` (or ``SyntaxError``) naming what is refused.
    """
    tree = _parse(source, "eval")
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


# --------------------------------------------------------------------------- coin classes

COIN_BASE = "BaseCoin"
COIN_DECORATORS = ("classmethod", "staticmethod")
COIN_ANNOTATIONS = ("float", "int")
COIN_RANDOM = "random"  # the one extra callable: a seeded random() in [0, 1)
# Expressions of a coin class: the lambda grammar without lambdas and comprehensions, plus Attribute
# (only random.random and self.<class attribute>, checked below).
COIN_EXPRESSION_NODES = (
    ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp,
    ast.Constant, ast.Name, ast.Load, ast.Store,
    ast.Tuple, ast.List, ast.Subscript, ast.Slice,
    ast.Call, ast.Attribute,
) + _OPERATORS
COIN_STATEMENT_NODES = (
    ast.Module, ast.ClassDef, ast.FunctionDef, ast.arguments, ast.arg,
    ast.Return, ast.If, ast.Assign, ast.AnnAssign, ast.Expr, ast.Pass,
)
COIN_NODES = COIN_STATEMENT_NODES + COIN_EXPRESSION_NODES


def _refuse_private(name: str) -> None:
    if name.startswith("_"):
        raise UnsafeSource(f"the name '{name}' is not allowed (no names starting with '_')")


def _is_docstring(stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _check_coin_expression(node, names: set[str], self_name: str | None, attributes: set[str]) -> None:
    """An expression of the coin grammar: known names only, calls of the allowed builtins and of
    random(), attribute access only as random.random or <self>.<class attribute>."""
    for sub in ast.walk(node):
        if not isinstance(sub, COIN_EXPRESSION_NODES):
            raise UnsafeSource(f"'{type(sub).__name__}' is not allowed in a coin class")
        if isinstance(sub, ast.Name):
            _refuse_private(sub.id)
        elif isinstance(sub, ast.Constant) and not isinstance(sub.value, CONSTANT_TYPES):
            raise UnsafeSource(f"a constant of type {type(sub.value).__name__} is not allowed")
        elif isinstance(sub, ast.Attribute):
            _refuse_private(sub.attr)
            owner = sub.value.id if isinstance(sub.value, ast.Name) else None
            if not isinstance(sub.ctx, ast.Load):
                raise UnsafeSource("attributes may be read, never assigned")
            random_random = owner == COIN_RANDOM and sub.attr == "random"
            own = self_name is not None and owner == self_name and sub.attr in attributes
            if not (random_random or own):
                raise UnsafeSource(f"attribute access is allowed only as random.random or "
                                   f"{self_name or 'self'}.<class attribute>, not '.{sub.attr}'")
        elif isinstance(sub, ast.Call):
            if sub.keywords:
                raise UnsafeSource("calls may not take keyword arguments")
            func = sub.func
            is_random = (isinstance(func, ast.Name) and func.id == COIN_RANDOM) or (
                isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and func.value.id == COIN_RANDOM and func.attr == "random")
            if is_random:
                if sub.args:
                    raise UnsafeSource("random() takes no arguments")
            elif not (isinstance(func, ast.Name) and func.id in ALLOWED_BUILTINS):
                raise UnsafeSource(f"only these functions may be called: random, {', '.join(ALLOWED_BUILTINS)}")
    loads = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    # <self> may appear only as the owner of an attribute (never passed on, returned or compared)
    bare_self = self_name is not None and any(
        isinstance(n, ast.Name) and n.id == self_name for n in _names_outside_attributes(node))
    unknown = loads - names - ({self_name} if self_name and not bare_self else set())
    if bare_self:
        raise UnsafeSource(f"'{self_name}' may only be used to read a class attribute")
    if unknown:
        raise UnsafeSource(f"unknown names {sorted(unknown)} in a coin class")


def _names_outside_attributes(node):
    """Name nodes that are not the owner of an Attribute."""
    owners = {id(n.value) for n in ast.walk(node) if isinstance(n, ast.Attribute)}
    return [n for n in ast.walk(node) if isinstance(n, ast.Name) and id(n) not in owners]


def _assigned_name(stmt) -> str:
    if isinstance(stmt, ast.Assign):
        if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
            raise UnsafeSource("only a single plain name may be assigned")
        return stmt.targets[0].id
    if not (isinstance(stmt.target, ast.Name) and stmt.simple and stmt.value is not None):
        raise UnsafeSource("only a single plain name may be assigned")
    if not (isinstance(stmt.annotation, ast.Name) and stmt.annotation.id in COIN_ANNOTATIONS):
        raise UnsafeSource(f"annotations may only be {', '.join(COIN_ANNOTATIONS)}")
    return stmt.target.id


def _check_method(fn: ast.FunctionDef, attributes: set[str]) -> None:
    _refuse_private(fn.name)
    decorators = [d.id if isinstance(d, ast.Name) else None for d in fn.decorator_list]
    if len(decorators) > 1 or any(d not in COIN_DECORATORS for d in decorators):
        raise UnsafeSource(f"a method may only be decorated with one of {', '.join(COIN_DECORATORS)}")
    a = fn.args
    if a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs or a.defaults or a.kw_defaults:
        raise UnsafeSource("a method may take plain positional arguments only")
    if fn.returns is not None or getattr(fn, "type_params", None):
        raise UnsafeSource("a method may not carry annotations or type parameters")
    static = decorators == ["staticmethod"]
    if len(a.args) != (0 if static else 1):
        raise UnsafeSource("a method takes exactly its instance or class (a staticmethod: nothing)")
    self_name = None if static else a.args[0].arg
    if self_name is not None:
        _refuse_private(self_name)
        if a.args[0].annotation is not None:
            raise UnsafeSource("a method may not carry annotations")
    local = set(ALLOWED_BUILTINS) | {COIN_RANDOM}
    for stmt in ast.walk(ast.Module(fn.body, [])):
        if isinstance(stmt, ast.Assign | ast.AnnAssign):
            name = _assigned_name(stmt)
            _refuse_private(name)
            local.add(name)
    if self_name in local:
        raise UnsafeSource(f"'{self_name}' may not be reassigned")
    _check_block(fn.body, local, self_name, attributes)


def _check_block(body: list, names: set[str], self_name, attributes) -> None:
    if not body:
        raise UnsafeSource("an empty block")
    for stmt in body:
        if isinstance(stmt, ast.Pass) or _is_docstring(stmt):
            continue
        if isinstance(stmt, ast.Return):
            if stmt.value is None:
                raise UnsafeSource("a return needs a value")
            _check_coin_expression(stmt.value, names, self_name, attributes)
        elif isinstance(stmt, ast.Assign | ast.AnnAssign):
            _assigned_name(stmt)
            _check_coin_expression(stmt.value, names, self_name, attributes)
        elif isinstance(stmt, ast.If):
            _check_coin_expression(stmt.test, names, self_name, attributes)
            _check_block(stmt.body, names, self_name, attributes)
            if stmt.orelse:
                _check_block(stmt.orelse, names, self_name, attributes)
        else:
            raise UnsafeSource(f"'{type(stmt).__name__}' is not allowed in a coin's method")


def check_coin_source(source: str, coin: str | None = None) -> ast.Module:
    """Parse ``source`` as one coin class (``class <coin>(BaseCoin): ...``) and check it against the
    coin whitelist. Returns the parsed module; raises ``UnsafeSource`` (or ``SyntaxError``)."""
    tree = _parse(source, "exec")
    for node in ast.walk(tree):  # nothing outside the grammar, anywhere
        if not isinstance(node, COIN_NODES):
            raise UnsafeSource(f"'{type(node).__name__}' is not allowed in a coin class")
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.ClassDef):
        raise UnsafeSource("the answer must be exactly one class definition")
    cls = tree.body[0]
    if coin is not None and cls.name != coin:
        raise UnsafeSource(f"the class must be named {coin}, not {cls.name}")
    _refuse_private(cls.name)
    bases = [b.id if isinstance(b, ast.Name) else None for b in cls.bases]
    if bases != [COIN_BASE] or cls.keywords or cls.decorator_list or getattr(cls, "type_params", None):
        raise UnsafeSource(f"the class must derive from {COIN_BASE} alone, with no keywords or decorators")
    attributes: set[str] = set()
    for stmt in cls.body:  # class attributes first: methods may read any of them
        if isinstance(stmt, ast.Assign | ast.AnnAssign):
            name = _assigned_name(stmt)
            _refuse_private(name)
            _check_coin_expression(stmt.value, set(ALLOWED_BUILTINS) | attributes, None, set())
            attributes.add(name)
    for stmt in cls.body:
        if isinstance(stmt, ast.FunctionDef):
            if stmt.name in attributes:
                raise UnsafeSource(f"'{stmt.name}' is both an attribute and a method")
            _check_method(stmt, attributes)
        elif not (isinstance(stmt, ast.Assign | ast.AnnAssign | ast.Pass) or _is_docstring(stmt)):
            raise UnsafeSource(f"'{type(stmt).__name__}' is not allowed in a class body")
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
    return _run_child({"source": source, "inputs": list(inputs), "cpu_seconds": budget}, budget)


def run_coin_in_sandbox(source: str, coin: str, n_flips: int = 10_000, seed: int = 0,
                        cpu_seconds: float = 2.0) -> dict:
    """Flip the coin class ``source`` (named ``coin``) ``n_flips`` times in the locked-down child.

    Returns ``{"ok": True, "p_heads": p}`` (the share of heads among the flips, rounded to 2 decimals
    as the paper's estimate; None when fewer than 90% of the flips return H or T) or
    ``{"ok": False, "error": ...}``. Text outside the coin whitelist starts no process.
    """
    try:
        check_coin_source(source, coin)
    except (UnsafeSource, SyntaxError) as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
    budget = max(1, math.ceil(cpu_seconds))
    request = {"kind": "coin", "source": source, "coin": coin, "n_flips": int(n_flips), "seed": int(seed),
               "cpu_seconds": budget}
    return _run_child(request, budget)


MAX_REPLY_BYTES = 1 << 20  # a reply is a few numbers or outputs; anything longer is refused unread


def _run_child(request: dict, budget: int) -> dict:
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.abspath(__file__)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, so a kill reaches all of it
    )
    reply = bytearray()

    def read() -> None:  # at most one byte past the cap, so that an oversized reply is seen, never held
        while len(reply) <= MAX_REPLY_BYTES and (chunk := process.stdout.read1(1 << 16)):
            reply.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        process.stdin.write(json.dumps(request).encode())
        process.stdin.close()
    except BrokenPipeError:  # the child died before reading: its exit status says why
        pass
    reader.join(timeout=budget + STARTUP_GRACE)
    timed_out = reader.is_alive()
    if timed_out or len(reply) > MAX_REPLY_BYTES:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    reader.join()
    process.stdout.close()
    if timed_out:
        return {"ok": False, "error": "timeout"}
    if len(reply) > MAX_REPLY_BYTES:
        return {"ok": False, "error": f"reply longer than {MAX_REPLY_BYTES} bytes"}
    try:
        parsed = json.loads(reply.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"ok": False, "error": f"no reply (exit status {process.returncode})"}
    if not isinstance(parsed, dict):
        return {"ok": False, "error": "malformed reply"}
    _report_layers(parsed.pop("unconfined", None))
    return parsed


_REPORTED: set[str] = set()


def _report_layers(why: str | None) -> None:
    """Say once per process, in the job's log, that the child ran without its syscall filter, and why."""
    if why and why not in _REPORTED:
        _REPORTED.add(why)
        print(f"sandbox: model-written code runs without the seccomp filter ({why}); the whitelist, "
              "the resource limits and (as root) the drop to nobody still apply", file=sys.stderr)


# --------------------------------------------------------------------------- the child process


def lock_down(cpu_seconds: int) -> str | None:
    """Everything the child does before it runs an answer: drop root, set the resource limits, install
    the syscall filter. Returns None when every layer is in place, else why the filter is not."""
    library = _load_seccomp()  # before RLIMIT_NOFILE: loading a library opens its file
    drop_privileges()
    limit_resources(cpu_seconds)
    return library if isinstance(library, str) else deny_syscalls(library)


# What an answer could use to change files, signal or inspect other processes, start programs or reach
# the network. None of it is needed once the request is read; a seccomp filter makes each fail with EPERM.
# The filesystem calls act on paths, which RLIMIT_NOFILE (descriptors) does not stop, and `kill` reaches
# every process of the child's uid, which the resource limits do not stop either.
DENIED_SYSCALLS = (
    "open", "openat", "openat2", "creat", "truncate", "ftruncate", "fallocate",
    "unlink", "unlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "mknod", "mknodat",
    "link", "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "chown", "fchown", "lchown",
    "fchownat", "utime", "utimes", "utimensat", "futimesat", "setxattr", "lsetxattr", "fsetxattr",
    "removexattr", "lremovexattr", "fremovexattr", "mount", "umount2", "pivot_root", "chroot", "swapon",
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal",
    "pidfd_getfd", "ptrace", "process_vm_readv", "process_vm_writev", "prlimit64", "setrlimit", "setpriority",
    "fork", "vfork", "clone", "clone3", "execve", "execveat", "unshare", "setns",
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "sendto", "sendmsg", "sendmmsg",
    "io_uring_setup", "bpf", "perf_event_open", "userfaultfd", "memfd_create",
)
SCMP_ACT_ALLOW = 0x7FFF0000


def _scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def _load_seccomp():
    """libseccomp (the library behind systemd's and Docker's filters) through ctypes; why not, as text.
    (Its Python bindings live in site-packages, which the isolated child does not import.)"""
    if not sys.platform.startswith("linux"):
        return f"no seccomp on {sys.platform}"
    try:
        library = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as error:
        return f"libseccomp.so.2 not found: {error}; install libseccomp2 (Debian) / libseccomp (Fedora)"
    library.seccomp_init.restype = ctypes.c_void_p
    library.seccomp_init.argtypes = [ctypes.c_uint32]
    library.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    library.seccomp_load.argtypes = [ctypes.c_void_p]
    library.seccomp_release.argtypes = [ctypes.c_void_p]
    return library


def deny_syscalls(library) -> str | None:
    """Install a filter that allows every syscall but DENIED_SYSCALLS (EPERM). None when installed."""
    context = library.seccomp_init(SCMP_ACT_ALLOW)
    if not context:
        return "seccomp_init failed"
    try:
        for name in DENIED_SYSCALLS:
            number = library.seccomp_syscall_resolve_name(name.encode())
            if number < 0:  # not a syscall of this architecture
                continue
            code = library.seccomp_rule_add(ctypes.c_void_p(context), ctypes.c_uint32(_scmp_act_errno(errno.EPERM)),
                                            ctypes.c_int(number), ctypes.c_uint(0))
            if code < 0:
                return f"seccomp_rule_add({name}): {os.strerror(-code)}"
        code = library.seccomp_load(context)
        return None if code >= 0 else f"seccomp_load: {os.strerror(-code)}"
    finally:
        library.seccomp_release(context)


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


def flip_coin(source: str, coin: str, n_flips: int, seed: int) -> float | None:
    """P(heads) of the (already checked) coin class over ``n_flips`` seeded flips, rounded to 2
    decimals; None if fewer than 90% of the flips return a text starting with H or T.

    The class statement itself never runs: its attributes are evaluated one by one with the allowed
    builtins only, and ``flip`` (the BaseCoin one when the class does not define its own:
    ``"H" if random() < heads else "T"``) is compiled alone and called on a plain namespace."""
    cls = check_coin_source(source, coin).body[0]
    rng = random.Random(seed)

    def draw():
        return rng.random()

    draw.random = draw  # `random.random()` and `random()` are the same seeded draw
    allowed = {name: getattr(builtins, name) for name in ALLOWED_BUILTINS}
    attributes: dict = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.Assign | ast.AnnAssign):
            value = ast.fix_missing_locations(ast.Expression(stmt.value))
            attributes[_assigned_name(stmt)] = eval(compile(value, "<coin>", "eval"), {"__builtins__": allowed},
                                                    dict(attributes))
    methods = {stmt.name: stmt for stmt in cls.body if isinstance(stmt, ast.FunctionDef)}
    if "flip" in methods:
        method = methods["flip"]
        static = [d.id for d in method.decorator_list] == ["staticmethod"]
        plain = ast.FunctionDef(name="flip", args=method.args, body=method.body, decorator_list=[],
                                returns=None, type_comment=None, type_params=[])
        namespace = {"__builtins__": allowed, COIN_RANDOM: draw}
        exec(compile(ast.fix_missing_locations(ast.Module([plain], [])), "<coin>", "exec"), namespace)
        function, instance = namespace["flip"], types.SimpleNamespace(**attributes)
        flip = function if static else (lambda: function(instance))
    else:
        heads = attributes["heads"]

        def flip():
            return "H" if draw() < heads else "T"

    counts = {"H": 0, "T": 0}
    for _ in range(n_flips):
        side = flip()
        if type(side) is str and side.strip()[:1].upper() in counts:
            counts[side.strip()[:1].upper()] += 1
    valid = counts["H"] + counts["T"]
    return round(counts["H"] / valid, 2) if valid > 0.9 * n_flips else None


def main() -> None:
    request = json.loads(sys.stdin.read())
    unconfined = None
    try:
        coin = request.get("kind") == "coin"
        # again, in the process that runs it
        check_coin_source(request["source"], request["coin"]) if coin else check_source(request["source"])
        unconfined = lock_down(int(request.get("cpu_seconds", 2)))
        if coin:
            p_heads = flip_coin(request["source"], request["coin"], int(request["n_flips"]), int(request["seed"]))
            reply = {"ok": True, "p_heads": p_heads}
        else:
            reply = {"ok": True, "outputs": apply(request["source"], request["inputs"])}
    except BaseException as error:  # anything the answer does wrong is just a wrong answer
        reply = {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
    try:
        text = json.dumps(reply | {"unconfined": unconfined})
    except BaseException as error:  # outputs json cannot write (e.g. a cyclic or huge structure)
        text = json.dumps({"ok": False, "error": f"{type(error).__name__}: {error}"[:500]})
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
