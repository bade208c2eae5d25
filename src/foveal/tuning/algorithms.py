"""AutoML algorithms: a registry of names -> an Optuna sampler and pruner.

- ``bayesian``: Gaussian-process Bayesian optimisation (Snoek et al., 2012, "Practical Bayesian
  Optimization of Machine Learning Algorithms") with Optuna's ``GPSampler`` when its
  dependencies (scipy, torch) are installed, else the Tree-structured Parzen Estimator
  (Bergstra et al., 2011, "Algorithms for Hyper-Parameter Optimization"). No pruning.
- ``hyperband``: random configurations, stopped early by Hyperband (Li et al., 2018,
  "Hyperband: A Novel Bandit-Based Approach to Hyperparameter Optimization").
- ``asha``: random configurations with asynchronous successive halving (Li et al., 2020, "A
  System for Massively Parallel Hyperparameter Tuning").
- ``bohb``: TPE configurations with Hyperband budgets (Falkner et al., 2018, "BOHB: Robust and
  Efficient Hyperparameter Optimization at Scale").
- ``random``: random search (Bergstra & Bengio, 2012).

Multi-fidelity algorithms need a metric per epoch: the controller reports each epoch's value
from the trial's ``status.json``; the resource is the epoch.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from foveal.errors import UsageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Algorithm:
    """A named search strategy.

    Attributes:
        name: what ``--algorithm`` takes.
        description: one line for listings.
        make_sampler: ``seed -> optuna sampler``.
        make_pruner: ``max_epochs -> optuna pruner``.
        multi_fidelity: whether trials are stopped early from per-epoch reports.
    """

    name: str
    description: str
    make_sampler: Callable[[int | None], Any]
    make_pruner: Callable[[int], Any]
    multi_fidelity: bool = False


_ALGORITHMS: dict[str, Algorithm] = {}


def register_algorithm(algorithm: Algorithm) -> Algorithm:
    """Add an algorithm; a second one under the same name replaces it with a warning."""
    if algorithm.name in _ALGORITHMS and _ALGORITHMS[algorithm.name] is not algorithm:
        logger.warning("AutoML algorithm %r registered twice; the later one wins", algorithm.name)
    _ALGORITHMS[algorithm.name] = algorithm
    return algorithm


def list_algorithms() -> list[Algorithm]:
    return [_ALGORITHMS[name] for name in sorted(_ALGORITHMS)]


def get_algorithm(name: str) -> Algorithm:
    """The algorithm ``name``; a UsageError naming the known ones otherwise."""
    if name not in _ALGORITHMS:
        near = difflib.get_close_matches(name, list(_ALGORITHMS), n=1)
        hint = f"did you mean {near[0]}?" if near else f"choose one of {', '.join(sorted(_ALGORITHMS))}"
        raise UsageError(f"--algorithm {name}: unknown AutoML algorithm ({hint})")
    return _ALGORITHMS[name]


def gp_available() -> bool:
    """Whether Optuna's GPSampler can run here (it needs scipy and torch)."""
    return all(importlib.util.find_spec(m) is not None for m in ("scipy", "torch"))


def _bayesian_sampler(seed: int | None) -> Any:
    import optuna

    if gp_available():
        return optuna.samplers.GPSampler(seed=seed)
    logger.info("bayesian: scipy is not installed, so the TPE sampler stands in for the Gaussian process")
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def _tpe(seed: int | None) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def _random(seed: int | None) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _no_pruner(max_epochs: int) -> Any:
    import optuna

    return optuna.pruners.NopPruner()


def _hyperband(max_epochs: int) -> Any:
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_epochs), reduction_factor=3)


def _asha(max_epochs: int) -> Any:
    import optuna

    # Rungs at epochs 1, 2, 4, ...: the top half of the trials that reached a rung go on.
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=1, reduction_factor=2, min_early_stopping_rate=0
    )


register_algorithm(
    Algorithm("bayesian", "Gaussian-process (or TPE) Bayesian optimisation", _bayesian_sampler, _no_pruner)
)
register_algorithm(
    Algorithm("hyperband", "random search with Hyperband early stopping", _random, _hyperband, True)
)
register_algorithm(
    Algorithm("asha", "random search with asynchronous successive halving", _random, _asha, True)
)
register_algorithm(Algorithm("bohb", "TPE with Hyperband early stopping (BOHB)", _tpe, _hyperband, True))
register_algorithm(Algorithm("random", "random search", _random, _no_pruner))
