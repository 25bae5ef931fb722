"""Child process that applies one model-written lambda expression to given inputs.

Started only by `convergence.oocr.scoring.check_lambda` as `python -I -S <this file>`, with a JSON
request {"source", "inputs", "cpu_seconds"} on stdin; answers {"ok", "outputs" | "error"} on
stdout. It imports nothing from the package so that it runs in an isolated interpreter, and it
drops to restricted builtins and resource limits before touching the untrusted text.
"""

import builtins
import json
import resource
import sys

# Enough for arithmetic answers; no import, open, eval, exec, getattr, type or object access.
ALLOWED_BUILTINS = ("abs", "max", "min", "int", "float", "round", "divmod", "pow", "bool", "sum", "len", "range")
MEMORY_BYTES = 512 * 2**20


def limit_resources(cpu_seconds: int) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def run(source: str, inputs: list) -> list:
    namespace = {"__builtins__": {name: getattr(builtins, name) for name in ALLOWED_BUILTINS}}
    fn = eval(compile(source, "<answer>", "eval"), namespace, {})
    if not callable(fn):
        raise TypeError("the answer is not a function")
    return [fn(x) for x in inputs]


def main() -> None:
    request = json.loads(sys.stdin.read())
    limit_resources(int(request.get("cpu_seconds", 2)))
    try:
        reply = {"ok": True, "outputs": run(request["source"], request["inputs"])}
        text = json.dumps(reply)
    except BaseException as error:  # anything the answer does wrong is just a wrong answer
        text = json.dumps({"ok": False, "error": f"{type(error).__name__}: {error}"[:500]})
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
