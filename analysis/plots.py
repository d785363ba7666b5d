"""PNG plots drawn with rliable's plot_utils: learning curves, profiles, intervals, P(improvement).

Figures are plain `matplotlib.figure.Figure` objects rendered by the Agg canvas, so plotting never
touches pyplot's global backend (safe in notebooks and headless jobs); the one rliable helper
that makes its own pyplot figure (interval estimates) has it closed after saving.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rliable import plot_utils

from analysis.records import PUBLISHED_SUFFIX, ordered_domains
from analysis.scores import ALL_TASKS
from analysis.stats import METRIC_LABELS

DPI = 110
POI_SEPARATOR = " ;; "


def variant_colors(variants: list[str]) -> dict[str, tuple]:
    """One color per variant (colorblind-safe up to 10), the same in every plot of a report."""
    palette = sns.color_palette(
        "colorblind" if len(variants) <= 10 else "tab20", n_colors=max(len(variants), 1)
    )
    return dict(zip(variants, palette, strict=False))


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def plot_learning_curves(
    curves: pd.DataFrame,
    path: str | Path,
    *,
    metric: str = "mean",
    colors: dict | None = None,
    online_from: int | None = None,
    reference: pd.DataFrame | None = None,
) -> Path:
    """One panel per domain and one for all tasks: `metric` of success (%) per step with CI bands.

    `curves` is `aggregate(..., step="all")`; `online_from` draws a line where online steps begin.
    `reference`: published curves (same layout, variants `<method> (published)`), drawn dashed in
    the color of the sweep's variant of that method, without a band.
    """
    rows = curves[curves["metric"] == metric]
    groups = set(rows["group"])
    groups = ordered_domains(groups - {ALL_TASKS}) + ([ALL_TASKS] if ALL_TASKS in groups else [])
    variants = list(dict.fromkeys(rows["variant"]))
    colors = colors or variant_colors(variants)
    ncols = min(3, max(len(groups), 1))
    nrows = max(math.ceil(len(groups) / ncols), 1)
    figure = _figure(5.0 * ncols, 3.6 * nrows)
    axes = np.atleast_1d(figure.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, group in zip(axes, groups, strict=False):
        _curve_panel(ax, rows[rows["group"] == group], group, metric, colors, online_from)
        if reference is not None:
            _reference_lines(ax, reference[reference["group"] == group], colors)
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    handles = [ax.get_legend_handles_labels() for ax in axes[: len(groups)]]
    labels = dict(pair for h, l in handles for pair in zip(l, h, strict=False))
    figure.legend(list(labels.values()), list(labels.keys()), loc="upper center", ncol=min(len(labels), 4))
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    return _save(figure, path)


def _curve_panel(ax, rows: pd.DataFrame, group: str, metric: str, colors: dict, online_from) -> None:
    for variant, own in rows.groupby("variant", sort=False):
        own = own.sort_values("step")
        if own["value"].isna().all():
            continue
        plot_utils.plot_sample_efficiency_curve(
            own["step"].to_numpy(),
            {variant: own["value"].to_numpy() * 100.0},
            {variant: own[["ci_low", "ci_high"]].to_numpy().T * 100.0},
            algorithms=[variant],
            colors=colors,
            ax=ax,
            xlabel="step",
            ylabel=f"{METRIC_LABELS[metric]} success (%)",
            labelsize="medium",
            ticklabelsize="small",
            marker=".",
        )
    if online_from is not None:
        ax.axvline(online_from, color="grey", linestyle="--", linewidth=1)
    ax.set_title(group, fontsize="medium")
    ax.set_ylim(-2, 102)


def _reference_lines(ax, rows: pd.DataFrame, colors: dict) -> None:
    for variant, own in rows.groupby("variant", sort=False):
        method = variant.removesuffix(PUBLISHED_SUFFIX)
        color = next((c for v, c in colors.items() if v.split("[")[0] == method), "grey")
        own = own.sort_values("step")
        ax.plot(own["step"], own["value"] * 100.0, linestyle="--", color=color, linewidth=1.2, label=variant)


def plot_performance_profile(profiles: pd.DataFrame, path: str | Path, *, colors: dict | None = None) -> Path:
    """rliable's score distribution over all tasks: fraction of runs with success above tau."""
    variants = list(dict.fromkeys(profiles["variant"]))
    colors = colors or variant_colors(variants)
    figure = _figure(7.0, 4.5)
    ax = figure.subplots()
    by_variant = {v: rows.sort_values("tau") for v, rows in profiles.groupby("variant", sort=False)}
    taus = next(iter(by_variant.values()))["tau"].to_numpy() if by_variant else np.linspace(0, 1, 11)
    plot_utils.plot_performance_profiles(
        {v: rows["fraction"].to_numpy() for v, rows in by_variant.items()},
        taus,
        performance_profile_cis={
            v: rows[["ci_low", "ci_high"]].to_numpy().T for v, rows in by_variant.items()
        },
        colors=colors,
        ax=ax,
        xlabel=r"success threshold $\tau$",
        ylabel=r"fraction of runs with success $> \tau$",
        labelsize="medium",
        ticklabelsize="small",
        legend=bool(by_variant),
        legendsize="small",
    )
    return _save(figure, path)


def plot_interval_estimates(table: pd.DataFrame, path: str | Path, *, colors: dict | None = None) -> Path:
    """IQM, mean, median and optimality gap over all tasks with their CIs (rliable's layout).

    `table` is `aggregate(..., by="all")`; variants without a value are left out.
    """
    rows = table[(table["group"] == ALL_TASKS) & table["value"].notna()]
    metrics = list(dict.fromkeys(rows["metric"]))
    variants = list(dict.fromkeys(rows["variant"]))
    colors = colors or variant_colors(variants)
    points, intervals = {}, {}
    for variant in variants:
        own = rows[rows["variant"] == variant].set_index("metric").loc[metrics]
        points[variant] = own["value"].to_numpy() * 100.0
        intervals[variant] = own[["ci_low", "ci_high"]].to_numpy().T * 100.0
    row_height = max(0.6, 2.0 / max(len(variants), 1))
    figure, _ = plot_utils.plot_interval_estimates(
        points,
        intervals,
        metric_names=[METRIC_LABELS[m] for m in metrics],
        algorithms=variants,
        colors=colors,
        xlabel="success (%)",
        row_height=row_height,
        subfigure_width=3.6,
        xlabel_y_coordinate=-0.55 / (row_height * len(variants)),
    )
    try:
        return _save(figure, path)
    finally:
        plt.close(figure)


def plot_probability_of_improvement(pairs: pd.DataFrame, path: str | Path) -> Path:
    """P(X > Y) with CIs for each compared pair; `pairs` has columns a, b, poi, poi_ci_low, poi_ci_high."""
    figure = _figure(6.0, 0.9 + 0.55 * len(pairs))
    ax = figure.subplots()
    keys = [f"{r.a}{POI_SEPARATOR}{r.b}" for r in pairs.itertuples()]
    plot_utils.plot_probability_of_improvement(
        dict(zip(keys, pairs["poi"].to_numpy(), strict=True)),
        dict(zip(keys, pairs[["poi_ci_low", "poi_ci_high"]].to_numpy(), strict=True)),
        pair_separator=POI_SEPARATOR,
        ax=ax,
        xlabel="P(X > Y)",
        left_ylabel="X",
        right_ylabel="Y",
        ticklabelsize="small",
        labelsize="medium",
    )
    ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
    return _save(figure, path)
