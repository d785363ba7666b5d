"""Paired comparison of two variants (two methods, or one method with one switch flipped).

Runs are paired by (task, seed). Per domain and over all tasks: the mean and IQM of each side,
their deltas with a paired stratified bootstrap (one resampled seed index serves both sides), and
rliable's probability of improvement P(A > B) with its stratified bootstrap CI.
"""

from __future__ import annotations

import difflib

import numpy as np
import pandas as pd
from rliable import metrics as rly_metrics

from analysis.errors import AnalysisError
from analysis.progress import progress_bar
from analysis.records import (
    PUBLISHED,
    normalize_name,
    ordered_domains,
    published_label,
    run_table,
)
from analysis.scores import ALL_TASKS, BEST_PER_DOMAIN, check_choice, phase_variants, scores_at
from analysis.stats import check_bootstrap, interval_estimates, probability_of_improvement
from analysis.tables import markdown_table

COMPARE_COLUMNS = [
    "group", "n_tasks", "n_seeds", "n_pairs", "mean_a", "mean_b", "delta_mean", "delta_mean_ci_low",
    "delta_mean_ci_high", "iqm_a", "iqm_b", "delta_iqm", "delta_iqm_ci_low", "delta_iqm_ci_high",
    "poi", "poi_ci_low", "poi_ci_high",
]  # fmt: skip


def resolve_variant(records: pd.DataFrame, name: str) -> str:
    """The variant `name` refers to: exact, registry-normalized, or its published label."""
    runs = run_table(records)
    variants = sorted(set(records["variant"]) | set(runs["variant"]))
    if name in variants:
        return name
    normalized = {normalize_name(v): v for v in variants}
    for candidate in (name, published_label(name)):
        if normalize_name(candidate) in normalized:
            return normalized[normalize_name(candidate)]
    close = difflib.get_close_matches(name, variants, n=1)
    hint = f" (closest: {close[0]})" if close else ""
    raise AnalysisError(f"unknown variant {name!r}{hint}; the records have: {', '.join(variants)}")


def compare(
    records: pd.DataFrame,
    a: str,
    b: str,
    *,
    step: int | str = "final",
    phase: str = "offline",
    reps: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    eval_param_selection: str = BEST_PER_DOMAIN,
    by: str = "both",
    progress: bool = True,
) -> pd.DataFrame:
    """Paired comparison of variants `a` and `b`, per domain and over all tasks (success in percent).

    Columns: group, n_tasks, n_seeds, n_pairs, mean_a, mean_b, delta_mean (a - b) with CI, iqm_a,
    iqm_b, delta_iqm with CI, poi = P(a > b) with CI. Each group keeps the seeds paired on all of
    its tasks (the others are listed as dropped). `by`: "both" (domains and all tasks) or "all".
    `attrs`: a, b, unpaired (runs not used, and why), steps, notes.
    """
    check_bootstrap(reps, ci)
    check_choice("grouping", by, ("both", "all"))
    a, b = resolve_variant(records, a), resolve_variant(records, b)
    sources = _check_pair(records, a, b, phase)
    step_scores = scores_at(records, step, phase, eval_param_selection)
    pairs, unpaired = _pairs(step_scores, a, b)
    if pairs.empty:
        raise AnalysisError(f"{a} and {b} share no (task, seed) with a value at the compared step")
    settings = dict(reps=reps, ci=ci, seed=seed)
    groups = ([*ordered_domains(pairs["domain"].unique())] if by == "both" else []) + [ALL_TASKS]
    rows, dropped = [], []
    for group in progress_bar(groups, desc=f"compare {a} vs {b}", enabled=progress, leave=False):
        row, left_out = _compare_group(pairs, group, settings, f"{a} & {b}")
        rows.append(row)
        dropped += left_out if group == ALL_TASKS else []
    table = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    unpaired_all = unpaired + dropped
    table.attrs.update(
        a=a,
        b=b,
        unpaired=unpaired_all,
        steps={a: step_scores.steps[a], b: step_scores.steps[b]},
        notes=_notes(a, b, table, unpaired_all, settings, sources, step_scores.steps, phase),
    )
    return table


def _check_pair(records: pd.DataFrame, a: str, b: str, phase: str) -> set[str]:
    """Two different variants of one source, both with evals in `phase`; returns their source."""
    if a == b:
        raise AnalysisError(f"compare needs two different variants, got {a} twice")
    has_rows = [v for v in (a, b) if (records["variant"] == v).any()]
    sources = {records.loc[records["variant"] == v, "source"].iloc[0] for v in has_rows}
    if len(sources) > 1:
        raise AnalysisError(f"{a} and {b} come from different sources: published rows do not pair with runs")
    shown, _ = phase_variants(records, phase)
    for variant in (a, b):
        if variant not in shown:
            raise AnalysisError(f"{variant} has no {phase} evals")
    return sources


def _pairs(step_scores, a: str, b: str) -> tuple[pd.DataFrame, list[dict]]:
    scores = step_scores.scores
    side_a = scores[scores["variant"] == a][["task", "domain", "seed", "success"]]
    side_b = scores[scores["variant"] == b][["task", "seed", "success"]]
    merged = side_a.merge(side_b, on=["task", "seed"], how="outer", suffixes=("_a", "_b"), indicator=True)
    pairs = merged[merged["_merge"] == "both"].drop(columns="_merge").reset_index(drop=True)
    unpaired = []
    for side, partner, flag in ((a, b, "left_only"), (b, a, "right_only")):
        for run in merged[merged["_merge"] == flag].itertuples():
            unpaired.append(
                {"variant": side, "task": run.task, "seed": run.seed, "reason": f"{partner} has no value"}
            )
    missing = step_scores.missing
    for run in missing[missing["variant"].isin([a, b])].itertuples():
        unpaired.append({"variant": run.variant, "task": run.task, "seed": run.seed, "reason": run.reason})
    return pairs, unpaired


def _compare_group(pairs: pd.DataFrame, group: str, settings: dict, label: str) -> tuple[dict, list[dict]]:
    rows = pairs if group == ALL_TASKS else pairs[pairs["domain"] == group]
    seeds_by_task = rows.groupby("task")["seed"].apply(set)
    common = sorted(set.intersection(*seeds_by_task))
    tasks = sorted(seeds_by_task.index)
    kept = rows[rows["seed"].isin(common)]
    left_out = [
        {
            "variant": label,
            "task": r.task,
            "seed": r.seed,
            "reason": f"pair dropped from the {group} matrix: this seed is not paired on every task",
        }
        for r in rows[~rows["seed"].isin(common)].itertuples()
    ]
    base = {"group": group, "n_tasks": len(tasks), "n_seeds": len(common), "n_pairs": len(kept)}
    if not common:
        return {**base, **dict.fromkeys(COMPARE_COLUMNS[4:], np.nan)}, left_out
    x = kept.pivot(index="seed", columns="task", values="success_a").loc[common, tasks].to_numpy(dtype=float)
    y = kept.pivot(index="seed", columns="task", values="success_b").loc[common, tasks].to_numpy(dtype=float)
    return {**base, **_paired_stats(x, y, settings)}, left_out


def _paired_stats(x: np.ndarray, y: np.ndarray, settings: dict) -> dict:
    """Means, IQMs, their paired-bootstrap deltas and P(x > y); matrices are (seeds, tasks)."""
    columns = np.arange(x.shape[1])

    def deltas(seed_index: np.ndarray) -> np.ndarray:
        xs, ys = x[seed_index, columns], y[seed_index, columns]
        return np.array(
            [
                rly_metrics.aggregate_mean(xs) - rly_metrics.aggregate_mean(ys),
                rly_metrics.aggregate_iqm(xs) - rly_metrics.aggregate_iqm(ys),
            ]
        )

    # Bootstrapping the seed-index matrix resamples seeds per task, the same seed for both sides.
    seed_index = np.repeat(np.arange(x.shape[0])[:, None], x.shape[1], axis=1)
    delta, interval = interval_estimates(seed_index, deltas, **settings)
    poi, poi_low, poi_high = probability_of_improvement(x, y, **settings)
    percent = 100.0
    return {
        "mean_a": rly_metrics.aggregate_mean(x) * percent,
        "mean_b": rly_metrics.aggregate_mean(y) * percent,
        "delta_mean": delta[0] * percent,
        "delta_mean_ci_low": interval[0, 0] * percent,
        "delta_mean_ci_high": interval[1, 0] * percent,
        "iqm_a": rly_metrics.aggregate_iqm(x) * percent,
        "iqm_b": rly_metrics.aggregate_iqm(y) * percent,
        "delta_iqm": delta[1] * percent,
        "delta_iqm_ci_low": interval[0, 1] * percent,
        "delta_iqm_ci_high": interval[1, 1] * percent,
        "poi": poi,
        "poi_ci_low": poi_low,
        "poi_ci_high": poi_high,
    }


def _notes(a, b, table, unpaired, settings, sources, steps, phase) -> list[str]:
    total = table[table["group"] == ALL_TASKS].iloc[0]
    interval = (
        "no confidence intervals (reps=0)"
        if settings["reps"] == 0
        else f"{settings['ci'] * 100:g}% stratified-bootstrap CIs (rliable, {settings['reps']} reps, "
        f"seed {settings['seed']}); deltas resample seeds jointly for both sides"
    )
    notes = [
        f"A = {a} (step {steps[a]}), B = {b} (step {steps[b]}), {phase}; success in percent; {interval}",
        f"{int(total['n_pairs'])} (task, seed) pairs used over {int(total['n_tasks'])} task(s) "
        f"and {int(total['n_seeds'])} seed(s); {len(unpaired)} run(s) unpaired or dropped"
        + (" (listed below)" if unpaired else ""),
        "P(A > B): rliable's probability of improvement, averaged over tasks",
    ]
    if PUBLISHED in sources:
        notes.append("published seeds are indices, not seed values: the pairing of published rows is nominal")
    return notes


def render_comparison(table: pd.DataFrame, fmt: str = "md") -> str:
    """The comparison as markdown (table, notes, unpaired runs) or CSV."""
    if fmt == "csv":
        return table.to_csv(index=False, float_format="%.4f")
    if fmt != "md":
        raise AnalysisError(f"bad format {fmt!r}: use md or csv")
    a, b = table.attrs.get("a", "A"), table.attrs.get("b", "B")
    shown = pd.DataFrame(
        {
            "group": table["group"],
            "pairs": table["n_pairs"],
            f"mean {a}": table["mean_a"].map(_fmt),
            f"mean {b}": table["mean_b"].map(_fmt),
            "delta mean [CI]": [_with_ci(r, "delta_mean") for r in table.itertuples()],
            "delta IQM [CI]": [_with_ci(r, "delta_iqm") for r in table.itertuples()],
            "P(A > B) [CI]": [_with_ci(r, "poi", digits=2) for r in table.itertuples()],
        }
    )
    lines = [f"**{a} (A) vs {b} (B), paired by (task, seed)**", "", markdown_table(shown), ""]
    lines += [f"- {note}" for note in table.attrs.get("notes", [])]
    unpaired = pd.DataFrame(table.attrs.get("unpaired", []))
    if not unpaired.empty:
        lines += ["", "Unpaired or dropped runs:", "", markdown_table(unpaired)]
    return "\n".join(lines) + "\n"


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if pd.isna(value) else f"{value:.{digits}f}"


def _with_ci(row, name: str, digits: int = 1) -> str:
    value, low, high = (getattr(row, name), getattr(row, f"{name}_ci_low"), getattr(row, f"{name}_ci_high"))
    if pd.isna(value):
        return "n/a"
    interval = "" if pd.isna(low) else f" [{low:.{digits}f}, {high:.{digits}f}]"
    return f"{value:+.{digits}f}{interval}" if name.startswith("delta") else f"{value:.{digits}f}{interval}"
