"""How many seeds a claim needs: the power of a planned comparison, simulated from released seeds.

The noise of a planned sweep is taken from the QAM paper's released per-seed results (12 seeds per
task). For each task, the released scores of a method minus their mean (scaled by sqrt(k / (k - 1))
so that their variance is unbiased) are that method's seed-to-seed deviations. One simulated sweep
draws, for every task, n seeds of each side from those deviations (with replacement) around one
common level per task (the released mean of B), so that both sides are equal: the difference of
their aggregates (mean or IQM over all runs, as rliable computes it) is one draw of the null. An
effect of d success points adds d to every run of A, which adds exactly d to both aggregates, so the
same draws give the difference under every effect. A two-sided test at level `alpha` rejects when
the difference falls outside the null's central 1 - alpha interval; its power at effect d is the
fraction of simulated sweeps it rejects.

A plan of fewer tasks than the released ones (`n_tasks`) draws its tasks anew in each simulated
sweep, so that the power also averages over which tasks a sweep happens to run.

Against a published method, B is not run: its side keeps the released number of seeds whatever n is.
With normal deviations and the mean, the difference is normal with variance
sum_t (var_a,t / n_a + var_b,t / n_b) / T^2, and the power has the closed form in `normal_power`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sp_stats

from analysis.errors import AnalysisError
from analysis.records import (
    PUBLISHED_SUFFIX,
    load_published,
    ordered_domains,
    published_label,
)
from analysis.scores import scores_at

AGGREGATES = ("mean", "iqm")
DEFAULT_EFFECTS = (2.0, 5.0, 10.0)
DEFAULT_SEEDS = (3, 5, 8, 12)
DEFAULT_SIMS = 2000
MAX_SEEDS = 100


@dataclass
class PowerPlan:
    """The answer of `seeds_needed`: power per (seeds, effect) and the seeds each effect needs."""

    a: str
    b: str
    published: bool
    aggregate: str
    alpha: float
    target: float
    tasks: list[str]
    domains: list[str]
    released_seeds: int
    table: pd.DataFrame  # seeds, effect, power
    needed: dict[float, int | None]  # effect -> smallest seeds per task reaching `target` (None: > MAX_SEEDS)
    observed: float  # the released aggregate of a minus that of b, in points
    sims: int
    n_tasks: int  # tasks of the planned sweep (drawn from `tasks` when fewer)


def released_scores(
    a: str, b: str, tasks: Sequence[str] | None = None, phase: str = "offline"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(tasks, seeds) success in points of published methods `a` and `b` at their final `phase` step,
    and the task names; tasks missing from the released results are an AnalysisError."""
    records = load_published([a, b], study="main" if tasks is None else "all")
    if tasks is not None:
        absent = sorted(set(tasks) - set(records["task"]))
        if absent:
            raise AnalysisError(
                f"no released results for {len(absent)} task(s): {', '.join(absent[:3])}"
                f"{' ...' if len(absent) > 3 else ''}; the released results cover the ogbench suite's 50 tasks"
            )
        records = records[records["task"].isin(set(tasks))]
    names = [_name(m) for m in (a, b)]
    scores = scores_at(records, "final", phase).scores
    matrices = []
    for name in names:
        own = scores[scores["variant"] == name + PUBLISHED_SUFFIX]
        if own.empty:
            raise AnalysisError(f"the released results hold no {phase} evals of {name}")
        matrices.append(own.pivot(index="task", columns="seed", values="success").dropna(axis=1))
    order = sorted(set(matrices[0].index) & set(matrices[1].index))
    return matrices[0].loc[order].to_numpy() * 100.0, matrices[1].loc[order].to_numpy() * 100.0, order


def _name(method: str) -> str:
    """A method's registry name, or a released sensitivity variant's preset name."""
    return published_label(method).removesuffix(PUBLISHED_SUFFIX)


def deviations(scores: np.ndarray) -> np.ndarray:
    """Per-task deviations from the task mean, scaled so that their variance is unbiased."""
    k = scores.shape[1]
    if k < 2:
        raise AnalysisError("seed-to-seed noise needs at least 2 released seeds per task")
    return (scores - scores.mean(axis=1, keepdims=True)) * np.sqrt(k / (k - 1))


def _aggregate(runs: np.ndarray, aggregate: str) -> np.ndarray:
    """(sims, tasks, seeds) -> one aggregate per simulated sweep over all its runs (rliable's definitions)."""
    flat = runs.reshape(runs.shape[0], -1)
    if aggregate == "mean":
        return flat.mean(axis=1)
    return sp_stats.trim_mean(flat, proportiontocut=0.25, axis=1)


def null_differences(
    dev_a: np.ndarray,
    dev_b: np.ndarray,
    level: np.ndarray,
    n_a: int,
    n_b: int,
    *,
    aggregate: str = "mean",
    sims: int = DEFAULT_SIMS,
    rng: np.random.Generator,
    n_tasks: int | None = None,
) -> np.ndarray:
    """`sims` draws of aggregate(A) - aggregate(B) when A and B are equal on every task.

    `dev_a`, `dev_b`: (tasks, k) seed deviations; `level`: (tasks,) the common per-task level.
    `n_tasks`: each simulated sweep runs that many of the given tasks, drawn without replacement;
    None: all of them.
    """
    chosen = _task_draws(dev_a.shape[0], n_tasks, sims, rng)  # (sims, tasks of one sweep)
    sides = []
    for dev, n in ((dev_a, n_a), (dev_b, n_b)):
        picks = rng.integers(0, dev.shape[1], size=(*chosen.shape, n))
        runs = dev[chosen[..., None], picks]  # (sims, tasks, n): seed picks[s, t, i] of task chosen[s, t]
        sides.append(_aggregate(runs + level[chosen][..., None], aggregate))
    return sides[0] - sides[1]


def _task_draws(available: int, n_tasks: int | None, sims: int, rng: np.random.Generator) -> np.ndarray:
    if n_tasks is None:
        return np.broadcast_to(np.arange(available), (sims, available))
    return np.argsort(rng.random((sims, available)), axis=1)[:, :n_tasks]  # without replacement


def power_from_null(null: np.ndarray, effects: Sequence[float], alpha: float) -> np.ndarray:
    """Power of the two-sided level-`alpha` test at each effect, from draws of the null difference."""
    low, high = np.quantile(null, [alpha / 2, 1 - alpha / 2])
    shifted = null[None, :] + np.asarray(effects, dtype=float)[:, None]
    return ((shifted > high) | (shifted < low)).mean(axis=1)


def normal_power(effect: float, se: float, alpha: float) -> float:
    """Closed-form power of the two-sided z-test of a normal difference with standard error `se`."""
    z = sp_stats.norm.ppf(1 - alpha / 2)
    return float(sp_stats.norm.cdf(effect / se - z) + sp_stats.norm.cdf(-effect / se - z))


def check_settings(aggregate: str, alpha: float, target: float, sims: int, seeds: Sequence[int]) -> None:
    if aggregate not in AGGREGATES:
        raise AnalysisError(f"unknown aggregate {aggregate!r}; use one of: {', '.join(AGGREGATES)}")
    if not 0.0 < alpha < 1.0:
        raise AnalysisError(f"bad level {alpha!r}: a number between 0 and 1, e.g. 0.05")
    if not 0.0 < target < 1.0:
        raise AnalysisError(f"bad power {target!r}: a number between 0 and 1, e.g. 0.8")
    if sims < 100:
        raise AnalysisError(f"bad sims {sims!r}: at least 100 simulated sweeps")
    if not seeds or any(int(n) < 1 or int(n) > MAX_SEEDS for n in seeds):
        raise AnalysisError(f"bad seed counts {list(seeds)}: whole numbers from 1 to {MAX_SEEDS}")


@dataclass
class _Simulator:
    """Power for any seed count from the released scores of two methods (one rng seed per count)."""

    scores_a: np.ndarray  # (tasks, released seeds), points
    scores_b: np.ndarray
    published: bool
    aggregate: str
    alpha: float
    sims: int
    seed: int
    n_tasks: int | None = None

    def __post_init__(self) -> None:
        self.dev_a, self.dev_b = deviations(self.scores_a), deviations(self.scores_b)
        self.level = self.scores_b.mean(axis=1)

    def power(self, n: int, effects: Sequence[float]) -> np.ndarray:
        rng = np.random.default_rng([self.seed, n])
        n_b = self.scores_b.shape[1] if self.published else n
        null = null_differences(
            self.dev_a, self.dev_b, self.level, n, n_b, aggregate=self.aggregate, sims=self.sims, rng=rng,
            n_tasks=self.n_tasks,
        )  # fmt: skip
        return power_from_null(null, effects, self.alpha)

    def seeds_for(self, effect: float, target: float) -> int | None:
        """The smallest seed count whose power reaches `target` (bisection: power grows with seeds)."""
        if self.power(MAX_SEEDS, [effect])[0] < target:
            return None
        low, high = 0, MAX_SEEDS  # power(low) < target <= power(high)
        while high - low > 1:
            middle = (low + high) // 2
            if self.power(middle, [effect])[0] >= target:
                high = middle
            else:
                low = middle
        return high


def seeds_needed(
    a: str,
    b: str,
    *,
    tasks: Sequence[str] | None = None,
    published: bool = False,
    effects: Sequence[float] = DEFAULT_EFFECTS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    aggregate: str = "mean",
    power: float = 0.8,
    alpha: float = 0.05,
    phase: str = "offline",
    sims: int = DEFAULT_SIMS,
    seed: int = 0,
    n_tasks: int | None = None,
) -> PowerPlan:
    """Power of "A beats B by `effect` points" for each seed count, and the seeds per task each effect needs.

    `a` and `b` are methods of the released results whose seed noise stands for the two sides of the
    planned sweep (A: a new method behaving like `a`). `published`: B is not run, its side is the
    released seeds of `b`. `tasks`: the tasks of the plan (default: all 50 released tasks).
    `n_tasks`: a sweep of that many tasks drawn from `tasks` (each simulated sweep draws its own).
    """
    check_settings(aggregate, alpha, power, sims, seeds)
    if n_tasks is not None and n_tasks < 1:
        raise AnalysisError(f"bad number of tasks {n_tasks!r}: a whole number >= 1")
    if _name(a) == _name(b) and not published:
        raise AnalysisError(f"compare two different methods, got {a} twice (or give published=True)")
    scores_a, scores_b, order = released_scores(a, b, tasks, phase)
    if n_tasks is not None and n_tasks > len(order):
        raise AnalysisError(f"a plan of {n_tasks} tasks, but only {len(order)} are chosen (see --tasks)")
    simulator = _Simulator(scores_a, scores_b, published, aggregate, alpha, sims, seed, n_tasks)
    rows = [
        {"seeds": int(n), "effect": float(e), "power": float(p)}
        for n in seeds
        for e, p in zip(effects, simulator.power(int(n), effects), strict=True)
    ]
    observed = float(_aggregate(scores_a[None], aggregate)[0] - _aggregate(scores_b[None], aggregate)[0])
    domains = ordered_domains({task.split("-singletask")[0] for task in order})
    return PowerPlan(
        a=_name(a), b=_name(b), published=published, aggregate=aggregate, alpha=alpha,
        target=power, tasks=order, domains=domains, released_seeds=scores_b.shape[1],
        table=pd.DataFrame(rows, columns=["seeds", "effect", "power"]),
        needed={float(e): simulator.seeds_for(float(e), power) for e in effects},
        observed=observed, sims=sims, n_tasks=n_tasks or len(order),
    )  # fmt: skip


def render_power(plan: PowerPlan, hours: dict[int, float] | None = None) -> str:
    """The plan as text: a seeds x effects table of power (with GPU-hours per row when given)."""
    side_b = f"published {plan.b} ({plan.released_seeds} released seeds)" if plan.published else plan.b
    label = "IQM" if plan.aggregate == "iqm" else "mean"
    drawn = f"{plan.n_tasks} tasks drawn from " if plan.n_tasks != len(plan.tasks) else ""
    lines = [
        f"plan: {plan.a} vs {side_b}, {label} success over {drawn}{len(plan.tasks)} tasks "
        f"({len(plan.domains)} domain{'s' if len(plan.domains) > 1 else ''})",
        f"noise: the released per-seed results of {plan.a} and {plan.b}; {plan.sims:,} simulated sweeps "
        f"per seed count; two-sided test at level {plan.alpha:g}",
        f"released gap: {plan.a} - {plan.b} = {plan.observed:+.1f} points",
        "",
    ]
    header = ["seeds/task"] + [f"+{e:g} points" for e in plan.needed] + (["GPU-hours"] if hours else [])
    rows = []
    for n, group in plan.table.groupby("seeds", sort=True):
        cells = [str(n)] + [f"{p:.2f}" for p in group.sort_values("effect")["power"]]
        rows.append(cells + ([f"{hours[int(n)]:,.0f}"] if hours else []))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    needed = ", ".join(
        f"+{e:g}: {n if n is not None else f'more than {MAX_SEEDS}'}" for e, n in plan.needed.items()
    )
    lines += ["", f"seeds per task for {plan.target:.0%} power over {plan.n_tasks} tasks: {needed}"]
    return "\n".join(lines) + "\n"
