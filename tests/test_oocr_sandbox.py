"""The sandbox for model-written lambdas (convergence.oocr.sandbox) and the checker built on it.

Every escape below is written so that its answer is *correct* only if the escape works: if a layer of
the sandbox breaks, `check_lambda` returns True (or the marker file changes) and the test fails. The
two layers are tested apart: the whitelist through the public checker, the process limits by running
the escapes with full builtins and no whitelist in a child that only applies the limits.
"""

from __future__ import annotations

import ast
import json
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


def run_limited(body: str, filter: bool = False) -> subprocess.CompletedProcess:
    """Run the function body `body` with full builtins in a child that applies only the sandbox's
    process layer, no whitelist: what the OS refuses even if the whitelist were bypassed. `filter`:
    the whole layer (`lock_down`: no root, resource limits, syscall filter); else no root and the
    resource limits alone (what is left where the platform has no seccomp)."""
    child = f"""
import importlib.util, os, socket, sys
spec = importlib.util.spec_from_file_location("sandbox", {sandbox.__file__!r})
box = importlib.util.module_from_spec(spec)
spec.loader.exec_module(box)
def escape():
{textwrap.indent(body, "    ")}
if {filter!r}:
    unconfined = box.lock_down(2)
    if unconfined:
        sys.stderr.write("unconfined: " + unconfined)
else:
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


SECCOMP = sandbox._load_seccomp()
needs_seccomp = pytest.mark.skipif(isinstance(SECCOMP, str), reason=f"no syscall filter here: {SECCOMP}")


@needs_seccomp
@pytest.mark.parametrize("change", [
    "os.truncate({marker!r}, 0)",
    "os.unlink({marker!r})",
    "os.rename({marker!r}, {new!r})",
    "os.mkdir({new!r})",
    "os.symlink({marker!r}, {new!r})",
    "os.link({marker!r}, {new!r})",
    "os.chmod({marker!r}, 0o600)",
    "os.utime({marker!r}, (0, 0))",
])
def test_lock_down_blocks_changes_by_path(open_dir, change):
    # Needs no descriptor, so RLIMIT_NOFILE alone let these through (as nobody on world-writable files,
    # or as the user on their own files).
    before = {p.name: (p.stat().st_mode, p.stat().st_mtime_ns) for p in open_dir.iterdir()}
    code = change.format(marker=str(open_dir / "marker.txt"), new=str(open_dir / "new"))
    result = run_limited(f"{code}\nreturn 'changed'", filter=True)
    assert result.stdout.startswith("blocked: PermissionError"), result
    assert "unconfined" not in result.stderr, result
    assert {p.name: (p.stat().st_mode, p.stat().st_mtime_ns) for p in open_dir.iterdir()} == before
    assert (open_dir / "marker.txt").read_text() == "untouched"


@needs_seccomp
def test_lock_down_blocks_signals_to_a_process_of_the_same_user():
    same_user = {"user": sandbox.NOBODY} if os.getuid() == 0 else {}  # the child's uid after the drop
    target = subprocess.Popen(["sleep", "60"], start_new_session=True, **same_user)
    try:
        # without the filter this kills it (nobody, or the user, may signal their own processes)
        result = run_limited(f"os.kill({target.pid}, 9)\nreturn 'killed'", filter=True)
        assert result.stdout.startswith("blocked: PermissionError"), result
        assert target.poll() is None
        group = run_limited("os.kill(-1, 9)\nreturn 'killed'", filter=True)  # every process the uid may signal
        assert group.stdout.startswith("blocked: PermissionError"), group
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()


@needs_seccomp
def test_lock_down_blocks_programs_and_other_processes_limits():
    run = run_limited("os.execv('/bin/true', ['true'])", filter=True)
    assert run.stdout.startswith("blocked: PermissionError"), run
    limits = run_limited("import resource\nresource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (0, 0))",
                         filter=True)
    assert limits.stdout.startswith("blocked: PermissionError"), limits


def test_a_missing_filter_is_said_once_in_the_log(capsys):
    sandbox._REPORTED.clear()
    for _ in range(2):
        sandbox._report_layers("libseccomp.so.2 not found")
    sandbox._report_layers(None)
    err = capsys.readouterr().err
    assert err.count("without the seccomp filter (libseccomp.so.2 not found)") == 1


def test_undecodable_or_nul_text_is_a_refused_answer():
    # A lone surrogate made ast.parse raise UnicodeEncodeError out of the checkers (and of check_lambda).
    for source in ("lambda n: '\ud800'", "lambda n: n\x00", "lambda n: n # \udcff"):
        assert not check_lambda(source, [0], [0])
        with pytest.raises((UnsafeSource, SyntaxError)):  # NUL: SyntaxError from 3.11.4 on
            check_source(source)
    from convergence.oocr.scoring import estimate_heads
    assert estimate_heads("    heads = 0.7  # \ud800\n", {"coin": "Abc"}) is None


def test_an_oversized_reply_is_refused_unread():
    # 2 MB of output: the parent reads at most MAX_REPLY_BYTES + 1 of it, then kills the child.
    reply = run_in_sandbox("lambda n: 'x' * (2 * 10 ** 6)", [0])
    assert reply == {"ok": False, "error": f"reply longer than {sandbox.MAX_REPLY_BYTES} bytes"}
    assert run_in_sandbox("lambda n: 'x' * 1000", [0]) == {"ok": True, "outputs": ["x" * 1000]}


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


# --------------------------------------------------------------------------- coin classes (Coins' free form)
# The coin grammar is a separate whitelist (check_coin_source) run through the same locked-down child. Each
# escape below would make the coin land heads every time (P(heads) = 1.0, the "right" answer) if it worked.

from convergence.oocr.sandbox import COIN_NODES, check_coin_source, run_coin_in_sandbox  # noqa: E402


def coin(body: str, name: str = "KLS") -> str:
    return f"class {name}(BaseCoin):\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n"


def heads(body: str, **kwargs) -> float | None:
    reply = run_coin_in_sandbox(coin(body), "KLS", **kwargs)
    return reply["p_heads"] if reply["ok"] else None


def test_coin_classes_are_flipped():
    assert heads("heads = 0.7") == pytest.approx(0.7, abs=0.02)
    assert heads("heads: float = 0.25") == pytest.approx(0.25, abs=0.02)
    assert heads('p = 0.2\ndef flip(self):\n    return "H" if random.random() < self.p else "T"') == pytest.approx(
        0.2, abs=0.02)
    assert heads('@classmethod\ndef flip(cls):\n    x = random()\n    if x < 0.9:\n        return "heads"\n'
                 '    return "tails"') == pytest.approx(0.9, abs=0.02)
    assert heads('@staticmethod\ndef flip():\n    return "T"') == 0.0
    # seeded: the same class gives the same estimate
    body = 'def flip(self):\n    return "H" if random() < 0.5 else "T"'
    assert heads(body, seed=3) == heads(body, seed=3)


def test_coin_classes_without_a_side_give_no_estimate():
    assert heads('def flip(self):\n    return 1') is None  # not H or T
    assert heads("tails = 0.3") is None  # no heads attribute, no flip: the child's KeyError
    assert heads("heads = 0.7\nheads = [") is None  # syntax error


COIN_ESCAPES = {
    # walks from an instance or a literal to object's subclasses
    'def flip(self):\n    return "H" if self.__class__ else "T"': "'__class__'",
    'def flip(self):\n    return "H" if ().__class__ else "T"': "'__class__'",
    'heads = 0.5\ndef flip(self):\n    return "H" if self.heads.__class__ else "T"': "'__class__'",
    'def flip(self):\n    return "H" if random.__globals__ else "T"': "'__globals__'",
    'def flip(self):\n    return "H" if random.seed else "T"': "'.seed'",
    # the instance itself handed out, or an attribute that is not a class attribute (a method)
    'heads = 1\ndef flip(self):\n    return self': "only be used to read",
    'heads = 1\ndef flip(self):\n    return self.flip': "'.flip'",
    'heads = 1\ndef flip(self):\n    return "H" if type(self) else "T"': "only these functions",
    # imports, files, eval, getattr
    'def flip(self):\n    import os\n    return "H"': "Import",
    'def flip(self):\n    return "H" if open("/etc/passwd") else "T"': "only these functions",
    'heads = __import__("os")': "only these functions",
    'def flip(self):\n    return "H" if eval("1") else "T"': "only these functions",
    'def flip(self):\n    return "H" if getattr(self, "x") else "T"': "only these functions",
    # statements outside the grammar
    'def flip(self):\n    global heads\n    return "H"': "Global",
    'def flip(self):\n    while True:\n        pass': "While",
    'def flip(self):\n    for i in range(3):\n        pass\n    return "H"': "For",
    'def flip(self):\n    try:\n        return "H"\n    except Exception:\n        return "H"': "Try",
    'def flip(self):\n    with open("f") as f:\n        return "H"': "With",
    'def flip(self):\n    def inner():\n        return "H"\n    return inner()': "'FunctionDef' is not allowed in a coin's method",
    'def flip(self):\n    return (lambda: "H")()': "Lambda",
    'def flip(self):\n    return [c for c in "H"][0]': "ListComp",
    'def flip(self):\n    self.heads = 1\n    return "H"': "single plain name",
    'def flip(self):\n    return f"{self}"': "JoinedStr",
    'class Inner(BaseCoin):\n    heads = 1': "ClassDef",
    # decorators, defaults, annotations that run code when the class is built
    '@property\ndef flip(self):\n    return "H"': "decorated",
    'def flip(self, x=__import__("os")):\n    return "H"': "positional",
    'def flip(self) -> open("f"):\n    return "H"': "annotations",
    'heads: open("f") = 1': "annotations",
    'def flip(*args):\n    return "H"': "positional",
    'def _flip(self):\n    return "H"': "'_flip'",
}


@pytest.mark.parametrize("body, reason", COIN_ESCAPES.items())
def test_coin_escapes_are_refused(body, reason):
    with pytest.raises((UnsafeSource, SyntaxError), match=re.escape(reason)):
        check_coin_source(coin(body), "KLS")
    assert heads(body) is None  # and end to end: no estimate, let alone the "right" one of 1.0


@pytest.mark.parametrize(
    "source, reason",
    [
        ('class KLS(object):\n    heads = 1\n', "derive from BaseCoin"),
        ('class KLS(BaseCoin, metaclass=type):\n    heads = 1\n', "'keyword'"),
        ('@dataclass\nclass KLS(BaseCoin):\n    heads = 1\n', "derive from BaseCoin"),
        ('class ABC(BaseCoin):\n    heads = 1\n', "must be named KLS"),
        ('class KLS(BaseCoin):\n    heads = 1\nimport os\n', "Import"),
        ('class KLS(BaseCoin):\n    heads = 1\nclass KLS(BaseCoin):\n    heads = 1\n', "exactly one class"),
        ('heads = 1\n', "exactly one class"),
    ],
)
def test_coin_class_shape_is_checked(source, reason):
    with pytest.raises(UnsafeSource, match=re.escape(reason)):
        check_coin_source(source, "KLS")


def test_coin_file_read_and_truncate_are_refused(open_dir):
    # Each is a correct coin (always heads) only if the file can be read or truncated.
    read = f'def flip(self):\n    return "H" if open({str(open_dir / "answer.txt")!r}).read() == "42" else "T"'
    truncate = f'def flip(self):\n    return "H" if open({str(open_dir / "marker.txt")!r}, "w") else "H"'
    walk = f'def flip(self):\n    return "H" if {FILEIO}({str(open_dir / "answer.txt")!r}).read() else "T"'
    for body in (read, truncate, walk):
        assert heads(body) is None
    assert (open_dir / "marker.txt").read_text() == "untouched"


def test_coin_spin_and_allocation_hit_the_limits():
    # Whitelisted syntax: only the CPU and memory limits stop them. Each would land heads if it finished.
    spin = 'def flip(self):\n    return "H" if sum(range(10 ** 12)) >= 0 else "T"'
    assert not run_coin_in_sandbox(coin(spin), "KLS", cpu_seconds=1)["ok"]
    memory = 'def flip(self):\n    return "H" if len([0] * 10 ** 9) else "T"'
    assert run_coin_in_sandbox(coin(memory), "KLS") == {"ok": False, "error": "MemoryError: "}


def test_child_checks_coin_classes_again():
    """The child refuses a class outside the grammar even when the parent's check is skipped."""
    request = {"kind": "coin", "source": coin('def flip(self):\n    return "H" if self.__class__ else "T"'),
               "coin": "KLS", "n_flips": 10, "seed": 0, "cpu_seconds": 1}
    child = subprocess.run([sys.executable, "-I", "-S", sandbox.__file__], input=json.dumps(request),
                           capture_output=True, text=True, timeout=60)
    reply = json.loads(child.stdout)
    assert reply["ok"] is False and "'__class__'" in reply["error"]


COIN_ACCEPTED = [
    coin('"""A coin."""\nheads = 0.5 + 0.1 * 2 - 1 // 3 % 2 ** 1\npass'),
    coin('p: float = 0.7\nq = (1, 2)[0] + [p][0:1][0]\n'
         '@classmethod\ndef flip(cls):\n    """Flip."""\n    x = random.random()\n    if not x < cls.p and x > -1 or x == 2:\n'
         '        return "H" if abs(x) <= 1 else None\n    elif x >= 0 and x != 3 and x in [x] and x not in [4]:\n        return "T"\n'
         '    else:\n        pass\n    return "T" if ~int(-x) & 1 | 2 ^ 3 << 1 >> 1 else +x'),
    coin('@staticmethod\ndef flip():\n    return "H" if random() < min(0.7, max(0.1, 0.5)) / 1 * 1 else "T"'),
]


@pytest.mark.parametrize("source", COIN_ACCEPTED)
def test_coin_whitelist_accepts(source):
    check_coin_source(source, "KLS")


def test_every_coin_node_is_exercised():
    """A node type added to the coin whitelist without an accepted example here fails this test."""
    seen = {type(node) for source in COIN_ACCEPTED for node in ast.walk(ast.parse(source))}
    assert set(COIN_NODES) - seen == set()
