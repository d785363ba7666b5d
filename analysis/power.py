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
    PUBLISHED_NAMES,
    PUBLISHED_SUFFIX,
    load_published,
    normalize_name,
    ordered_domains,
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


def released_scores(
    a: str, b: str, tasks: Sequence[str] | None = None, phase: str = "offline"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(tasks, seeds) success in points of published methods `a` and `b` at their final `phase` step,
    and the task names; tasks missing from the released results are an AnalysisError."""
    records = load_published([a, b])
    if tasks is not None:
        absent = sorted(set(tasks) - set(records["task"]))
        if absent:
            raise AnalysisError(
                f"no released results for {len(absent)} task(s): {', '.join(absent[:3])}"
                f"{' ...' if len(absent) > 3 else ''}; the released results cover the ogbench suite's 50 tasks"
            )
        records = records[records["task"].isin(set(tasks))]
    names = [PUBLISHED_NAMES.get(m, normalize_name(m)) for m in (a, b)]
    scores = scores_at(records, "final", phase).scores
    matrices = []
    for name in names:
        own = scores[scores["variant"] == name + PUBLISHED_SUFFIX]
        if own.empty:
            raise AnalysisError(f"the released results hold no {phase} evals of {name}")
        matrices.append(own.pivot(index="task", columns="seed", values="success").dropna(axis=1))
    order = sorted(set(matrices[0].index) & set(matrices[1].index))
    return matrices[0].loc[order].to_numpy() * 100.0, matrices[1].loc[order].to_numpy() * 100.0, order


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
) -> np.ndarray:
    """`sims` draws of aggregate(A) - aggregate(B) when A and B are equal on every task.

    `dev_a`, `dev_b`: (tasks, k) seed deviations; `level`: (tasks,) the common per-task level.
    """
    sides = []
    for dev, n in ((dev_a, n_a), (dev_b, n_b)):
        picks = rng.integers(0, dev.shape[1], size=(sims, dev.shape[0], n))
        runs = np.take_along_axis(np.broadcast_to(dev, (sims, *dev.shape)), picks, axis=2)
        sides.append(_aggregate(runs + level[None, :, None], aggregate))
    return sides[0] - sides[1]


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


class _Simulator:
    """Power for any seed count from the released scores of two methods (one rng seed per count)."""

    def __init__(
        self, scores_a, scores_b, *, published: bool, aggregate: str, alpha: float, sims: int, seed: int
    ):
        self.dev_a, self.dev_b = deviations(scores_a), deviations(scores_b)
        self.level = scores_b.mean(axis=1)
        self.released = scores_b.shape[1]
        self.published, self.aggregate, self.alpha, self.sims, self.seed = (
            published,
            aggregate,
            alpha,
            sims,
            seed,
        )

    def power(self, n: int, effects: Sequence[float]) -> np.ndarray:
        rng = np.random.default_rng([self.seed, n])
        n_b = self.released if self.published else n
        null = null_differences(
            self.dev_a, self.dev_b, self.level, n, n_b, aggregate=self.aggregate, sims=self.sims, rng=rng
        )
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
) -> PowerPlan:
    """Power of "A beats B by `effect` points" for each seed count, and the seeds per task each effect needs.

    `a` and `b` are methods of the released results whose seed noise stands for the two sides of the
    planned sweep (A: a new method behaving like `a`). `published`: B is not run, its side is the
    released seeds of `b`. `tasks`: the tasks of the plan (default: all 50 released tasks).
    """
    check_settings(aggregate, alpha, power, sims, seeds)
    if normalize_name(a) == normalize_name(b) and not published:
        raise AnalysisError(f"compare two different methods, got {a} twice (or give published=True)")
    scores_a, scores_b, order = released_scores(a, b, tasks, phase)
    simulator = _Simulator(
        scores_a, scores_b, published=published, aggregate=aggregate, alpha=alpha, sims=sims, seed=seed
    )
    rows = [
        {"seeds": int(n), "effect": float(e), "power": float(p)}
        for n in seeds
        for e, p in zip(effects, simulator.power(int(n), effects), strict=True)
    ]
    observed = float(_aggregate(scores_a[None], aggregate)[0] - _aggregate(scores_b[None], aggregate)[0])
    domains = ordered_domains({task.split("-singletask")[0] for task in order})
    return PowerPlan(
        a=normalize_name(a), b=normalize_name(b), published=published, aggregate=aggregate, alpha=alpha,
        target=power, tasks=order, domains=domains, released_seeds=scores_b.shape[1],
        table=pd.DataFrame(rows, columns=["seeds", "effect", "power"]),
        needed={float(e): simulator.seeds_for(float(e), power) for e in effects},
        observed=observed, sims=sims,
    )  # fmt: skip


def render_power(plan: PowerPlan, hours: dict[int, float] | None = None) -> str:
    """The plan as text: a seeds x effects table of power (with GPU-hours per row when given)."""
    side_b = f"published {plan.b} ({plan.released_seeds} released seeds)" if plan.published else plan.b
    label = "IQM" if plan.aggregate == "iqm" else "mean"
    lines = [
        f"plan: {plan.a} vs {side_b}, {label} success over {len(plan.tasks)} tasks "
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
    lines += ["", f"seeds per task for {plan.target:.0%} power over {len(plan.tasks)} tasks: {needed}"]
    return "\n".join(lines) + "\n"
