"""The metric registry: one entry per name, input validation, parameter routing.

A metric is written as two halves so that work on one representation is done once:

* ``prepare(X, **p) -> state``: everything that depends on one representation only
  (kNN indices, a centred Gram matrix, an SVD basis). Its keyword parameters are the
  metric's per-representation parameters.
* ``compare(state_x, state_y, **p) -> float | per-sample array``: the pairwise part.

``score`` is exactly ``compare(prepare(X), prepare(Y))``; ``layer_scores`` calls ``prepare``
once per layer and ``compare`` per layer pair, so both paths agree by construction.
Optional hooks let resampling reuse that work: ``permute(state, perm)`` gives the state of
``X[perm]`` (permutation tests); ``subsampler(X, **p)`` returns ``idx -> state of X[idx]``
(bootstrap), by default ``prepare(X[idx])``; ``from_state(state)`` returns such a function
that needs the state only, where that is exact (else None); ``grid(states_x, states_y, **p)`` returns
``perm -> [Lx, Ly]`` scores of every layer pair with Y's samples relabelled by ``perm`` (the
null of a layer search), by default ``permute`` and ``compare`` per layer pair.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

_REGISTRY: dict[str, "Metric"] = {}


@dataclass(frozen=True)
class Metric:
    name: str
    prepare: Callable[..., Any]
    compare: Callable[..., Any]
    per_sample: bool
    permute: Callable[[Any, np.ndarray], Any] | None
    subsampler: Callable[..., Callable[[np.ndarray], Any]] | None
    state_refers_to_input: bool  # False: prepare's state holds no reference to X (its buffer may be reused)
    from_state: Callable[[Any], Callable[[np.ndarray], Any] | None] | None
    grid: Callable[..., Callable[[np.ndarray], np.ndarray]] | None
    defaults: dict[str, Any]
    prepare_params: tuple[str, ...]
    compare_params: tuple[str, ...]
    doc: str = field(repr=False)

    def split_params(self, params: dict[str, Any]) -> tuple[dict, dict]:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"metric {self.name!r} got unknown parameter(s) {', '.join(unknown)}; "
                f"its parameters are: {describe_params(self.defaults)}"
            )
        full = {**self.defaults, **params}
        return (
            {k: full[k] for k in self.prepare_params},
            {k: full[k] for k in self.compare_params},
        )

    def prepare_one(self, X: np.ndarray, prepare_params: dict):
        with self._named_errors():
            return self.prepare(X, **prepare_params)

    def subsample_states(self, X: np.ndarray, prepare_params: dict) -> Callable[[np.ndarray], Any]:
        """``idx -> state of X[idx]``, reusing work on all of X where the metric allows."""
        if self.subsampler is None:
            return lambda idx: self.prepare_one(X[idx], prepare_params)
        with self._named_errors():
            make = self.subsampler(X, **prepare_params)

        def state_of(idx):
            with self._named_errors():
                return make(idx)

        return state_of

    def state_subsampler(self, state, X_of: Callable[[], np.ndarray], prepare_params: dict):
        """``idx -> state of X[idx]``: from ``state`` alone where the metric can (``from_state``),
        else from the layer (``X_of()``, called once)."""
        make = self.from_state(state) if self.from_state is not None else None
        if make is None:
            return self.subsample_states(X_of(), prepare_params)

        def state_of(idx):
            with self._named_errors():
                return make(idx)

        return state_of

    def null_grid(self, states_x: list, states_y: list, compare_params: dict) -> Callable[[np.ndarray], np.ndarray]:
        """``perm -> [Lx, Ly]``: ``compare(states_x[i], state of Y_j[perm])`` for every layer pair.

        The metric's own ``grid`` where it has one; else ``permute`` and ``compare`` per pair,
        relabelling the side with fewer layers (a score does not depend on the order of the
        samples, so relabelling X by the inverse permutation gives the same value)."""
        if self.grid is not None:
            with self._named_errors():
                fast = self.grid(states_x, states_y, **compare_params)

            def grid(perm):
                with self._named_errors():
                    return fast(perm)

            return grid
        if self.permute is None:
            raise ValueError(f"metric {self.name!r} has no permute hook: its null cannot reuse prepared states")

        def generic(perm):
            out = np.empty((len(states_x), len(states_y)))
            if len(states_x) < len(states_y):
                inverse = np.empty_like(perm)
                inverse[perm] = np.arange(len(perm))
                xs = [self.permute(s, inverse) for s in states_x]
                for i, x in enumerate(xs):
                    for j, y in enumerate(states_y):
                        out[i, j] = self.compare_pair(x, y, compare_params)
            else:
                for j, y in enumerate(states_y):
                    y = self.permute(y, perm)
                    for i, x in enumerate(states_x):
                        out[i, j] = self.compare_pair(x, y, compare_params)
            return out

        return generic

    def compare_pair(self, state_x, state_y, compare_params: dict) -> float:
        with self._named_errors():
            return self.finish(self.compare(state_x, state_y, **compare_params))

    def compare_samples(self, state_x, state_y, compare_params: dict) -> np.ndarray:
        """Per-sample scores (only for ``per_sample`` metrics); their mean is the score."""
        with self._named_errors():
            return np.asarray(self.compare(state_x, state_y, **compare_params), dtype=np.float64)

    @contextlib.contextmanager
    def _named_errors(self):
        # Shared helpers (e.g. one kNN routine for five metrics) cannot know which metric
        # called them; prefix the name here so every error says which metric failed.
        try:
            yield
        except ValueError as err:
            if str(err).startswith(f"metric {self.name!r}"):
                raise
            raise ValueError(f"metric {self.name!r}: {err}") from err

    def finish(self, value) -> float:
        """Reduce a compare result to one float; never let NaN through silently."""
        value = float(np.mean(value)) if self.per_sample else float(value)
        if not np.isfinite(value):
            raise ValueError(f"metric {self.name!r} produced a non-finite value ({value})")
        return value


def describe_params(defaults: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "(none)"


def _keyword_params(fn: Callable, n_positional: int) -> dict[str, Any]:
    params = list(inspect.signature(fn).parameters.values())[n_positional:]
    return {p.name: p.default for p in params}


def as_is(X: np.ndarray) -> np.ndarray:
    """Default ``prepare``: the validated float64 matrix itself."""
    return X


def permute_rows(state, perm: np.ndarray):
    """``permute`` for states that are row-aligned arrays (or tuples of them)."""
    if isinstance(state, tuple):
        return type(state)(*(s[perm] if isinstance(s, np.ndarray) else s for s in state))
    return state[perm]


def register(
    name: str,
    *,
    prepare: Callable[..., Any] = as_is,
    per_sample: bool = False,
    permute: Callable[[Any, np.ndarray], Any] | None = None,
    subsampler: Callable[..., Callable[[np.ndarray], Any]] | None = None,
    state_refers_to_input: bool = True,
    from_state: Callable[[Any], Callable[[np.ndarray], Any] | None] | None = None,
    grid: Callable[..., Callable[[np.ndarray], np.ndarray]] | None = None,
):
    """Register ``compare`` under ``name``; returns the public ``fn(X, Y, **params) -> float``.
    ``state_refers_to_input=False`` promises that the state ``prepare`` returns holds no
    reference to its input (so ``layer_scores`` may preprocess the next layer into the same
    buffer)."""

    def decorate(compare: Callable[..., Any]):
        if name in _REGISTRY:
            raise ValueError(f"metric {name!r} is registered twice")
        prepare_defaults = _keyword_params(prepare, 1)
        compare_defaults = _keyword_params(compare, 2)
        for shared in set(prepare_defaults) & set(compare_defaults):
            if prepare_defaults[shared] != compare_defaults[shared]:
                raise ValueError(f"metric {name!r}: parameter {shared!r} has two defaults")
        defaults = {**prepare_defaults, **compare_defaults}
        doc = inspect.cleandoc(compare.__doc__ or "")
        _REGISTRY[name] = Metric(
            name=name,
            prepare=prepare,
            compare=compare,
            per_sample=per_sample,
            permute=permute,
            subsampler=subsampler,
            state_refers_to_input=state_refers_to_input,
            from_state=from_state,
            grid=grid,
            defaults=defaults,
            prepare_params=tuple(prepare_defaults),
            compare_params=tuple(compare_defaults),
            doc=doc,
        )

        @functools.wraps(compare)
        def public(X, Y, **params) -> float:
            return score(name, X, Y, **params)

        public.__doc__ = f"{doc}\n\nParameters (defaults): {describe_params(defaults)}"
        return public

    return decorate


def get(name: str) -> Metric:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown metric {name!r}; available: {', '.join(available())}"
        ) from None


def available() -> list[str]:
    """Names of all registered metrics, sorted."""
    return sorted(_REGISTRY)


def defaults(name: str) -> dict[str, Any]:
    """The parameters of metric ``name`` with their defaults (to record what was run)."""
    return dict(get(name).defaults)


def real_matrix(X, label: str = "X") -> np.ndarray:
    """Validate the shape and dtype of one representation ``[N, D]`` (numpy or torch):
    float32 and float64 arrays are returned as they are (any strides), other real dtypes
    as float64. Values are not checked."""
    X = to_numpy(X)
    if X.ndim != 2:
        raise ValueError(f"{label} must be 2-D [N, D], got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{label} is empty (shape {X.shape})")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"{label} must be real numeric, got dtype {X.dtype}")
    return X if X.dtype in (np.float32, np.float64) else X.astype(np.float64)


def as_matrix(X, label: str = "X") -> np.ndarray:
    """Validate one representation ``[N, D]`` (numpy or torch) and return it as float64."""
    X = np.asarray(real_matrix(X, label), dtype=np.float64)
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).sum())
        raise ValueError(f"{label} has {bad} non-finite value(s) (NaN or inf)")
    return X


def to_numpy(X) -> np.ndarray:
    """numpy view/copy of a numpy array or torch tensor (bf16/fp16 tensors widened first)."""
    if hasattr(X, "detach") and hasattr(X, "cpu"):  # torch.Tensor, without importing torch
        X = X.detach().cpu()
        if X.dtype.is_floating_point and X.element_size() < 4:
            X = X.float()  # numpy has no bfloat16
        return X.numpy()
    return np.asarray(X)


def check_pair(X: np.ndarray, Y: np.ndarray) -> None:
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"X and Y must have the same number of rows (samples): {X.shape[0]} != {Y.shape[0]}"
        )


def score(name: str, X, Y, **params) -> float:
    """Similarity of representations X and Y ``[N, D]`` (rows = the same samples) by metric
    ``name``. No preprocessing is applied: normalise or clip before calling if wanted."""
    metric = get(name)
    prepare_params, compare_params = metric.split_params(params)
    X, Y = as_matrix(X, "X"), as_matrix(Y, "Y")
    check_pair(X, Y)
    state_x = metric.prepare_one(X, prepare_params)
    state_y = metric.prepare_one(Y, prepare_params)
    return metric.compare_pair(state_x, state_y, compare_params)


# ---- parameter checks shared by metrics (the registry prefixes the metric's name) -----


def check_int(name: str, value, low: int, high: int) -> int:
    """An integer parameter in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name}={value} must be in [{low}, {high}] here")
    return int(value)


def check_choice(name: str, value, choices: tuple):
    if value not in choices:
        raise ValueError(f"{name}={value!r} must be one of {choices}")
    return value


def check_not_constant(X: np.ndarray, consequence: str) -> None:
    if np.all(X == X[0]):
        raise ValueError(f"representation is constant across samples: {consequence}")


def check_min_samples(X: np.ndarray, n_min: int, why: str) -> None:
    if X.shape[0] < n_min:
        raise ValueError(f"needs at least {n_min} samples ({why}), got N={X.shape[0]}")
