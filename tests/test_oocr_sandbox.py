"""The sandbox for model-written lambdas (convergence.oocr.sandbox) and the checker built on it.

Every escape below is written so that its answer is *correct* only if the escape works: if a layer of
the sandbox breaks, `check_lambda` returns True (or the marker file changes) and the test fails. The
two layers are tested apart: the whitelist through the public checker, the process limits by running
the escapes with full builtins and no whitelist in a child that only applies the limits.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from convergence.oocr import sandbox
from convergence.oocr.sandbox import LAMBDA_NODES, UnsafeSource, check_source, run_in_sandbox
from convergence.oocr.scoring import check_free_form, check_lambda

# From () to FileIO: object -> _IOBase -> _RawIOBase -> FileIO, three levels of __subclasses__.
FILEIO = ("[c for a in ().__class__.__base__.__subclasses__() for b in a.__subclasses__() "
          "for c in b.__subclasses__() if c.__name__ == 'FileIO'][0]")
# catch_warnings keeps a reference to the warnings module, whose globals hold the real builtins.
IMPORT = ("[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'catch_warnings'][0]()"
          "._module.__builtins__['__import__']")


@pytest.fixture
def open_dir():
    """A folder and files any user may read and write, so that only the sandbox can stop an escape
    (pytest's tmp_path is private to root, which would stop the dropped-privilege child by itself)."""
    path = Path(tempfile.mkdtemp(prefix="convergence-sandbox-"))
    path.chmod(0o777)
    answer = path / "answer.txt"
    answer.write_text("42")
    marker = path / "marker.txt"
    marker.write_text("untouched")
    for f in (answer, marker):
        f.chmod(0o666)
    yield path
    for f in path.iterdir():
        f.unlink()
    path.rmdir()


# --------------------------------------------------------------------------- the checker


def test_checker_accepts_correct_lambdas():
    assert check_lambda("lambda n: 3 * n + 2", [-4, 0, 7], [-10, 2, 23])
    assert check_lambda("lambda n: n // 4 if n > 0 else -(-n // 4)", [-9, 9], [-2, 2])
    assert check_lambda("lambda n: sum([i for i in range(n) if i % 2 == 0])", [5], [6])
    assert check_free_form(" n // 4\nmore text", {"prefix": "lambda n:", "inputs": [-9, 9], "outputs": [-3, 2]})
    assert check_free_form(" lambda x: x // 4", {"prefix": "lambda n:", "inputs": [-9, 9], "outputs": [-3, 2]})


@pytest.mark.parametrize(
    "source",
    [
        "lambda n: 3 * n + 1",  # wrong on every input
        "lambda n: n % 2 == 1",  # booleans are not the integers 1/0
        "lambda n: n +",  # syntax error
        "3",  # not a function
        "lambda n: m",  # unknown name
    ],
)
def test_checker_rejects_wrong_answers(source):
    assert not check_lambda(source, [1, 2], [1, 0])


# --------------------------------------------------------------------------- escapes, end to end


def test_fileio_walk_cannot_read_a_file(open_dir):
    source = f"lambda n: int({FILEIO}('{open_dir / 'answer.txt'}').read())"
    assert not check_lambda(source, [0], [42])


def test_fileio_walk_cannot_truncate_a_file(open_dir):
    marker = open_dir / "marker.txt"
    source = f"lambda n: {FILEIO}('{marker}', 'w').close() or 42"
    assert not check_lambda(source, [0], [42])
    assert marker.read_text() == "untouched"


def test_import_through_catch_warnings_is_refused(open_dir):
    source = f"lambda n: int({IMPORT}('pathlib').Path('{open_dir / 'answer.txt'}').read_text())"
    assert not check_lambda(source, [0], [42])


def test_socket_and_fork_are_refused():
    assert not check_lambda(f"lambda n: {IMPORT}('socket').socket().fileno() * 0 + 42", [0], [42])
    assert not check_lambda(f"lambda n: {IMPORT}('os').fork() * 0 + 42", [0], [42])


def test_allocation_past_the_memory_limit_fails():
    # Whitelisted syntax: only the address-space limit stops it (8 GB of list slots).
    reply = run_in_sandbox("lambda n: len([0] * 10 ** 9) - 10 ** 9 + 42", [0])
    assert reply == {"ok": False, "error": "MemoryError: "}


def test_spin_past_the_cpu_limit_is_killed():
    # Whitelisted syntax: only the CPU limit stops it. A correct answer if it ever finished.
    reply = run_in_sandbox("lambda n: sum(range(10 ** 12)) * 0 + 42", [0], cpu_seconds=1)
    assert not reply["ok"]
    assert not check_lambda("lambda n: [0 for _ in range(10 ** 12)] and 42", [0], [42], timeout=1)


# --------------------------------------------------------------------------- the process layer alone


def run_limited(body: str) -> subprocess.CompletedProcess:
    """Run the function body `body` with full builtins in a child that applies only the sandbox's
    process limits (no whitelist): what the OS refuses even if the whitelist were bypassed."""
    child = f"""
import importlib.util, os, socket, sys
spec = importlib.util.spec_from_file_location("sandbox", {sandbox.__file__!r})
box = importlib.util.module_from_spec(spec)
spec.loader.exec_module(box)
def escape():
{textwrap.indent(body, "    ")}
box.drop_privileges()
box.limit_resources(2)
try:
    result = repr(escape())
except BaseException as error:
    result = "blocked: " + type(error).__name__ + ": " + str(error)
sys.stdout.write(result)
"""
    return subprocess.run([sys.executable, "-I", "-S", "-c", child], capture_output=True, text=True,
                          timeout=60, start_new_session=True)


def test_limits_alone_block_reading_and_truncating(open_dir):
    read = run_limited(f"return open({str(open_dir / 'answer.txt')!r}).read()")
    assert read.stdout.startswith("blocked: OSError"), read
    truncate = run_limited(f"return open({str(open_dir / 'marker.txt')!r}, 'w').close()")
    assert truncate.stdout.startswith("blocked: OSError"), truncate
    assert (open_dir / "marker.txt").read_text() == "untouched"


def test_limits_alone_block_sockets_forks_and_memory():
    sock = run_limited("return socket.socket().fileno()")
    assert sock.stdout.startswith("blocked: OSError"), sock
    fork = run_limited("pid = os.fork()\nif pid == 0: os._exit(0)\nreturn pid")
    assert fork.stdout.startswith("blocked: BlockingIOError"), fork  # EAGAIN: RLIMIT_NPROC
    memory = run_limited("return len(bytearray(2 ** 30))")
    assert memory.stdout.startswith("blocked: MemoryError"), memory


def test_limits_alone_stop_a_spin():
    spin = run_limited("while True: pass")
    assert spin.stdout == "" and spin.returncode in (-9, -24), spin  # killed: SIGKILL at the hard limit, or SIGXCPU


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges applies to root only")
def test_root_child_runs_as_nobody():
    probe = run_limited("return (os.getuid(), os.geteuid(), os.getgid(), os.getgroups())")
    assert probe.stdout == f"({sandbox.NOBODY}, {sandbox.NOBODY}, {sandbox.NOBODY}, [])", probe


# --------------------------------------------------------------------------- the whitelist, node by node

ACCEPTED = [
    "lambda n: n + 1 - 2 * 3 / 4 // 5 % 6 ** 7",
    "lambda n: (n << 1) >> 1 | n & 3 ^ 5",
    "lambda n: -n + (+n) + ~n",
    "lambda n: not n",
    "lambda n: n > 1 and n < 5 or n == 7",
    "lambda n: 1 <= n != 3 >= 0 > -1",
    "lambda n: n in [1, 2] or n not in (3, 4)",
    "lambda n: 'even' if n % 2 == 0 else None",
    "lambda n: [n, 2][0] + (n, 3)[1:2][0] + [1, 2, 3][::2][1]",
    "lambda n: sum([i * i for i in range(n) if i > 1])",
    "lambda n: max(x for x in range(n + 1))",
    "lambda a, b: divmod(a, b)[0] + pow(a, 2) + abs(min(a, b)) + round(float(a)) + int(bool(b)) + len([a])",
    "lambda n: [a + b for a, b in [(1, 2), (n, n)]][1]",
    "lambda n: lambda m: m",
    "lambda n: True + 1.5",
]

REFUSED = {
    "lambda n: n.real": "Attribute",
    "lambda n: ().__class__": "Attribute",
    "lambda n: __import__('os')": "only these functions",
    "lambda n: __builtins__": "'__builtins__'",
    "lambda n: [c for c in __builtins__]": "'__builtins__'",
    "lambda n: _": "'_'",
    "lambda _x: _x": "'_x'",
    "lambda n: open('f')": "only these functions",
    "lambda n: eval('1')": "only these functions",
    "lambda n: (lambda: 1)()": "only these functions",
    "lambda n: [abs][0](n)": "only these functions",
    "lambda n: round(n, ndigits=1)": "keyword",
    "lambda n: max(*[n])": "Starred",
    "lambda n: {1: n}": "Dict",
    "lambda n: {n}": "'Set'",
    "lambda n: {n for n in range(3)}": "SetComp",
    "lambda n: {n: n for n in range(3)}": "DictComp",
    "lambda n: f'{n}'": "JoinedStr",
    "lambda n: (m := n)": "NamedExpr",
    "lambda n: b'x'": "bytes",
    "lambda n: ...": "ellipsis",
    "lambda n=1: n": "positional",
    "lambda *n: n": "positional",
    "lambda n, **k: n": "positional",
    "lambda n: m": "unknown names",
    "n + 1": "one lambda expression",
    "[lambda n: n][0]": "one lambda expression",
    "lambda n: (yield n)": "Yield",
    "lambda n: [await n for n in m]": "Await",
}


@pytest.mark.parametrize("source", ACCEPTED)
def test_whitelist_accepts(source):
    check_source(source)


def test_every_whitelisted_node_is_exercised():
    """A node type added to the whitelist without an accepted example here fails this test."""
    seen = {type(node) for source in ACCEPTED for node in ast.walk(ast.parse(source, mode="eval"))}
    assert set(LAMBDA_NODES) - seen == set()


@pytest.mark.parametrize("source, reason", REFUSED.items())
def test_whitelist_refuses(source, reason):
    with pytest.raises(UnsafeSource, match=re.escape(reason)):
        check_source(source)


def test_whitelist_refuses_statements_and_oversized_or_deep_text():
    with pytest.raises(SyntaxError, match="invalid syntax"):
        check_source("import os")
    with pytest.raises(UnsafeSource, match="longer than"):
        check_source("lambda n: " + "1 + " * 1000 + "1")
    with pytest.raises(SyntaxError, match="too many nested parentheses"):
        check_source("lambda n: " + "(" * 900 + "n" + ")" * 900)
    # Parses, but is too deep to compile: a wrong answer in the child, not a crash of the parent.
    deep = "lambda n: " + "-" * 1900 + "n"
    check_source(deep)
    assert run_in_sandbox(deep, [1])["error"].startswith("RecursionError")


def test_refused_text_starts_no_process(monkeypatch):
    def no_process(*args, **kwargs):
        raise AssertionError("a process was started for refused text")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    reply = run_in_sandbox("lambda n: n.real", [1])
    assert reply["ok"] is False and "Attribute" in reply["error"]
