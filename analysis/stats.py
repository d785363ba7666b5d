"""Aggregates with stratified-bootstrap confidence intervals, all computed by rliable.

rliable draws its bootstrap indices from numpy's global random state; every bootstrap here runs
under `seeded(seed)`, which seeds that state and restores it afterwards, so one cell's interval
does not depend on which other cells were computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
from rliable import library as rly
from rliable import metrics as rly_metrics

from analysis.errors import AnalysisError
from analysis.progress import progress_bar
from analysis.records import ordered_domains
from analysis.scores import (
    ALL_TASKS,
    BEST_PER_DOMAIN,
    INCOMPLETE_RULES,
    cell_from_table,
    check_choice,
    curve_scores,
    expected_in,
    scores_at,
)

METRICS: dict[str, Callable[[np.ndarray], float]] = {
    "iqm": rly_metrics.aggregate_iqm,
    "mean": rly_metrics.aggregate_mean,
    "median": rly_metrics.aggregate_median,
    "optimality_gap": rly_metrics.aggregate_optimality_gap,
}
METRIC_LABELS = {"iqm": "IQM", "mean": "Mean", "median": "Median", "optimality_gap": "Optimality gap"}
LOWER_IS_BETTER = frozenset({"optimality_gap"})
GROUPINGS = ("both", "domain", "all")
AGGREGATE_COLUMNS = [
    "variant", "source", "group", "metric", "step", "value", "ci_low", "ci_high",
    "n_tasks", "n_seeds", "status", "detail",
]  # fmt: skip


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed numpy's global random state (rliable's bootstrap uses it) and restore it afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def check_bootstrap(reps: int, ci: float) -> None:
    if not isinstance(reps, (int, np.integer)) or reps < 0:
        raise AnalysisError(f"bad reps {reps!r}: a whole number >= 0 (0: point estimates, no intervals)")
    if not 0.0 < ci < 1.0:
        raise AnalysisError(f"bad ci {ci!r}: a coverage between 0 and 1, e.g. 0.95")


def metric_function(names: Sequence[str]) -> Callable[[np.ndarray], np.ndarray]:
    """rliable-style aggregate: (seeds, tasks) -> one value per metric, in `names` order."""
    funcs = [METRICS[name] for name in names]
    return lambda scores: np.array([func(scores) for func in funcs])


def curve_function(names: Sequence[str]) -> Callable[[np.ndarray], np.ndarray]:
    """(seeds, tasks, steps) -> values ordered step by step, metric by metric (rliable's curve recipe)."""
    per_step = metric_function(names)
    return lambda scores: np.concatenate([per_step(scores[..., i]) for i in range(scores.shape[-1])])


def interval_estimates(
    scores: np.ndarray | list[np.ndarray],
    func: Callable[..., np.ndarray],
    *,
    reps: int,
    ci: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """rly.get_interval_estimates on one score array (or a list, for multi-array functions).

    Returns (point estimates (k,), intervals (2, k)); with reps=0 the intervals are NaN.
    """
    if reps == 0:
        points = func(*scores) if isinstance(scores, list) else func(scores)
        return np.asarray(points, dtype=float), np.full((2, len(points)), np.nan)
    with seeded(seed):
        points, intervals = rly.get_interval_estimates(
            {"x": scores}, func, reps=reps, confidence_interval_size=ci
        )
    return np.asarray(points["x"], dtype=float), np.asarray(intervals["x"], dtype=float)


def probability_of_improvement(
    scores_x: np.ndarray, scores_y: np.ndarray, *, reps: int, ci: float, seed: int
) -> tuple[float, float, float]:
    """rliable's P(X > Y) averaged over tasks, with its stratified independent bootstrap CI."""

    def func(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.array([rly_metrics.probability_of_improvement(x, y)])

    point, interval = interval_estimates([scores_x, scores_y], func, reps=reps, ci=ci, seed=seed)
    return float(point[0]), float(interval[0, 0]), float(interval[1, 0])


def aggregate(
    records: pd.DataFrame,
    *,
    metrics: Sequence[str] = ("iqm", "mean", "median", "optimality_gap"),
    step: int | str = "final",
    phase: str = "offline",
    by: str = "both",
    reps: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    eval_param_selection: str = BEST_PER_DOMAIN,
    incomplete: str = "refuse",
    progress: bool = True,
) -> pd.DataFrame:
    """Aggregate success (0..1) per variant, per domain and over all tasks, with bootstrap CIs.

    `step`: "final" (each variant's last step in `phase`), an integer step, or "all" (every step:
    learning curves; `phase` may then also be "all"). `by`: "both", "domain" or "all". One row per
    (variant, group, metric[, step]) with value, ci_low, ci_high, n_tasks, n_seeds and status
    (complete | fewer seeds | common seeds | incomplete | no runs); incomplete cells have NaN values.
    `attrs`: notes, missing (the runs without a usable value), param_choice, settings.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise AnalysisError(f"bad metric(s) {unknown or '[]'}: use {', '.join(METRICS)}")
    check_bootstrap(reps, ci)
    check_choice("grouping", by, GROUPINGS)
    check_choice("incomplete rule", incomplete, INCOMPLETE_RULES)
    settings = dict(reps=reps, ci=ci, seed=seed, incomplete=incomplete, progress=progress)
    if step == "all":
        return _aggregate_curves(records, list(metrics), phase, by, eval_param_selection, settings)
    return _aggregate_step(records, list(metrics), step, phase, by, eval_param_selection, settings)


def _groups(domains: list[str], by: str) -> list[str]:
    return {"both": [*domains, ALL_TASKS], "domain": domains, "all": [ALL_TASKS]}[by]


def _aggregate_step(records, metrics, step, phase, by, params, settings) -> pd.DataFrame:
    step_scores = scores_at(records, step, phase, params)
    func = metric_function(metrics)
    source = dict(zip(records["variant"], records["source"], strict=True))
    cells = [(v, g) for v in step_scores.variants for g in _groups(step_scores.domains(), by)]
    rows = []
    for variant, group in progress_bar(cells, desc="bootstrap", enabled=settings["progress"], leave=False):
        cell = step_scores.cell(variant, group, settings["incomplete"])
        values, intervals = _estimate(cell.matrix, func, len(metrics), settings)
        base = _cell_fields(variant, source.get(variant, "sweep"), group, step_scores.steps[variant], cell)
        rows += [
            {**base, "metric": m, "value": values[i], "ci_low": intervals[0, i], "ci_high": intervals[1, i]}
            for i, m in enumerate(metrics)
        ]
    table = pd.DataFrame(rows, columns=AGGREGATE_COLUMNS)
    table.attrs.update(
        notes=list(records.attrs.get("notes", [])) + step_scores.notes,
        coverage=_coverage(step_scores),
        missing=step_scores.missing.to_dict("records"),
        param_choice=step_scores.param_choice.to_dict("records"),
        settings={**settings, "step": step, "phase": phase, "metrics": metrics, "params": params},
    )
    return table


def _coverage(step_scores) -> list[dict]:
    """Per variant: expected runs, runs with a usable value at the step, seeds per task."""
    expected = step_scores.expected.groupby("variant").size()
    usable = step_scores.scores.groupby("variant").size()
    seeds = step_scores.scores.groupby(["variant", "task"]).size().groupby("variant").agg(["min", "max"])
    return [
        {
            "variant": v,
            "expected": int(expected.get(v, 0)),
            "usable": int(usable.get(v, 0)),
            "seeds_min": int(seeds["min"].get(v, 0)),
            "seeds_max": int(seeds["max"].get(v, 0)),
        }
        for v in step_scores.variants
    ]


def _estimate(matrix, func, n_metrics: int, settings: dict) -> tuple[np.ndarray, np.ndarray]:
    if matrix is None:
        return np.full(n_metrics, np.nan), np.full((2, n_metrics), np.nan)
    return interval_estimates(matrix, func, reps=settings["reps"], ci=settings["ci"], seed=settings["seed"])


def _cell_fields(variant: str, source: str, group: str, step, cell) -> dict:
    return {
        "variant": variant,
        "source": source,
        "group": group,
        "step": step,
        "n_tasks": len(cell.tasks),
        "n_seeds": len(cell.seeds),
        "status": cell.status,
        "detail": cell.detail,
    }


def _aggregate_curves(records, metrics, phase, by, params, settings) -> pd.DataFrame:
    scores, expected, choice, variants = curve_scores(records, phase, params)
    source = dict(zip(records["variant"], records["source"], strict=True))
    cells = [(v, g) for v in variants for g in _groups(ordered_domains(expected["domain"].unique()), by)]
    by_variant = {v: rows for v, rows in scores.groupby("variant")}
    rows = []
    for variant, group in progress_bar(
        cells, desc="bootstrap curves", enabled=settings["progress"], leave=False
    ):
        own = by_variant.get(variant, scores.iloc[0:0])
        rows += _curve_rows(own, expected, variant, source.get(variant, "sweep"), group, metrics, settings)
    table = pd.DataFrame(rows, columns=AGGREGATE_COLUMNS).sort_values(["variant", "group", "metric", "step"])
    table = table.reset_index(drop=True)
    table.attrs.update(
        notes=list(records.attrs.get("notes", [])),
        param_choice=choice.to_dict("records"),
        settings={**settings, "step": "all", "phase": phase, "metrics": metrics, "params": params},
    )
    return table


def _curve_rows(own, expected, variant, source, group, metrics, settings) -> list[dict]:
    """One bootstrap per block of steps whose cells share tasks and seeds: a (seeds, tasks, steps) array."""
    wanted = expected_in(expected, variant, group)
    if own.empty:
        return []
    table = own[own["task"].isin(set(wanted["task"]))].pivot(
        index=["step", "seed"], columns="task", values="success"
    )
    steps_present = table.index.get_level_values("step").unique()
    cells = {
        int(step): cell_from_table(table.xs(step, level="step"), wanted, settings["incomplete"])
        for step in steps_present
    }
    blocks: dict[tuple, list[int]] = {}
    for step, cell in cells.items():
        blocks.setdefault((cell.tasks, cell.seeds) if cell.usable else ("unusable", step), []).append(step)
    rows = []
    for steps in blocks.values():
        stacked = [cells[s].matrix for s in steps]
        array = np.stack(stacked, axis=-1) if stacked[0] is not None else None
        values, intervals = _estimate(array, curve_function(metrics), len(metrics) * len(steps), settings)
        for j, step in enumerate(steps):
            base = _cell_fields(variant, source, group, step, cells[step])
            for i, metric in enumerate(metrics):
                k = j * len(metrics) + i
                bounds = {"ci_low": intervals[0, k], "ci_high": intervals[1, k]}
                rows.append({**base, "metric": metric, "value": values[k], **bounds})
    return rows


def performance_profiles(
    records: pd.DataFrame,
    *,
    step: int | str = "final",
    phase: str = "offline",
    taus: Sequence[float] | None = None,
    reps: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    eval_param_selection: str = BEST_PER_DOMAIN,
    incomplete: str = "refuse",
) -> pd.DataFrame:
    """Score distributions over all tasks (fraction of runs with success > tau), rliable's profile.

    One row per (variant, tau): fraction, ci_low, ci_high. Variants without a usable all-tasks
    matrix are left out and named in `attrs["notes"]`.
    """
    check_bootstrap(reps, ci)
    tau_list = np.linspace(0.0, 1.0, 101) if taus is None else np.asarray(taus, dtype=float)
    step_scores = scores_at(records, step, phase, eval_param_selection)
    rows, notes = [], []
    for variant in step_scores.variants:
        cell = step_scores.cell(variant, ALL_TASKS, incomplete)
        if not cell.usable:
            notes.append(f"{variant}: left out of the performance profile ({cell.status}: {cell.detail})")
            continue
        profile, interval = _profile(cell.matrix, tau_list, reps, ci, seed)
        rows += [
            {"variant": variant, "tau": t, "fraction": p, "ci_low": lo, "ci_high": hi}
            for t, p, lo, hi in zip(tau_list, profile, interval[0], interval[1], strict=True)
        ]
    table = pd.DataFrame(rows, columns=["variant", "tau", "fraction", "ci_low", "ci_high"])
    table.attrs["notes"] = notes
    return table


def _profile(matrix: np.ndarray, taus: np.ndarray, reps: int, ci: float, seed: int):
    if reps == 0:
        return rly.score_distributions(matrix, taus), np.full((2, len(taus)), np.nan)
    with seeded(seed):
        profiles, intervals = rly.create_performance_profile(
            {"x": matrix}, taus, reps=reps, confidence_interval_size=ci
        )
    return profiles["x"], intervals["x"]
