"""report.md: what a sweep holds, its leaderboards, a paired comparison and the plots, readable alone."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pandas as pd

from analysis import plots
from analysis.errors import AnalysisError
from analysis.paired import compare, render_comparison, resolve_variant
from analysis.progress import progress_bar
from analysis.records import PUBLISHED, load, ordered_domains, published_for, run_table
from analysis.scores import ALL_TASKS, BEST_PER_DOMAIN, expected_runs, phase_variants
from analysis.stats import aggregate, check_bootstrap, performance_profiles
from analysis.studies import study_sections
from analysis.tables import board_from_aggregate, markdown_table, render_leaderboard
from analysis.versus import has_pairs, render_versus, versus_published

LEARNING_CURVES = "learning_curves.png"
PERFORMANCE_PROFILE = "performance_profile.png"
INTERVAL_ESTIMATES = "interval_estimates.png"
PROBABILITY_OF_IMPROVEMENT = "probability_of_improvement.png"
MAX_POI_PAIRS = 6


@dataclass(frozen=True)
class ReportSettings:
    reps: int
    ci: float
    seed: int
    eval_param_selection: str
    incomplete: str
    progress: bool

    def bootstrap(self) -> dict:
        return dict(reps=self.reps, ci=self.ci, seed=self.seed, progress=self.progress)

    def selection(self) -> dict:
        return dict(eval_param_selection=self.eval_param_selection)


def write_report(
    source: str | Path | pd.DataFrame,
    out_dir: str | Path,
    *,
    published: bool = False,
    pair: tuple[str, str] | None = None,
    reps: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    eval_param_selection: str = BEST_PER_DOMAIN,
    incomplete: str = "refuse",
    progress: bool = True,
    html: bool = False,
) -> Path:
    """Write OUT/report.md with its tables (also as CSV/LaTeX files) and PNG plots; returns its path.

    `html`: also OUT/report.html, the same report in one self-contained page (plots embedded); the
    path returned is then that of report.html.

    `source` is a sweep directory or records from `load`. `published` adds the reference rows of
    the sweep's methods as separate leaderboard columns (plots show the sweep's own runs only).
    `pair` names the two variants to compare; by default the comparison is shown when the sweep
    has exactly two variants.
    """
    check_bootstrap(reps, ci)
    records = source if isinstance(source, pd.DataFrame) else load(source, published=published)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = ReportSettings(reps, ci, seed, eval_param_selection, incomplete, progress)
    own = _own_rows(records)
    sections = [_header(records, settings), _holdings(records)]
    boards, ranking = _leaderboards(records, out, settings)
    comparison, pairs, how = _comparisons(own, pair, ranking, out, settings)
    sections += boards + comparison
    sections += _plots(own, pairs, how, out, settings)
    sections += study_sections(records, out, settings)
    sections.append(_files(out, html))
    text = "\n\n".join(section.strip("\n") for section in sections if section) + "\n"
    path = out / "report.md"
    path.write_text(text)
    if html:
        from analysis.html_report import write_html

        return write_html(
            text, out, f"flowarena report: {Path(records.attrs.get('sweep_dir', 'records')).name}"
        )
    return path


def _own_rows(records: pd.DataFrame) -> pd.DataFrame:
    """The sweep's runs without published rows (unless the records are the published ones alone)."""
    if (records["source"] == PUBLISHED).all():
        return records
    own = records[records["source"] != PUBLISHED]
    own.attrs = dict(records.attrs)
    return own


def _header(records: pd.DataFrame, settings: ReportSettings) -> str:
    name = Path(records.attrs.get("sweep_dir", "records")).name
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    interval = (
        "no confidence intervals (reps=0)"
        if settings.reps == 0
        else f"{settings.ci * 100:g}% stratified-bootstrap confidence intervals over seeds "
        f"({settings.reps} reps, seed {settings.seed})"
    )
    lines = [
        f"# flowarena report: {name}",
        "",
        f"Records: {records.attrs.get('loaded_from', 'a DataFrame')}. Written {when}.",
        "",
        f"Statistics by rliable {_version('rliable')}: {interval}. Success is the mean over each "
        "evaluation's episodes, shown in percent; a score matrix holds one row per seed and one "
        "column per task.",
    ]
    notes = records.attrs.get("notes", [])
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def _holdings(records: pd.DataFrame) -> str:
    variants, _ = phase_variants(records, "all")
    expected = expected_runs(records, variants)
    rows = [_holding(records, expected, v) for v in variants]
    domains = ordered_domains(expected["domain"].unique())
    tasks = sorted(expected["task"].unique())
    lines = [
        "## What the records hold",
        "",
        markdown_table(pd.DataFrame(rows)),
        "",
        f"Domains ({len(domains)}): {', '.join(domains)}.",
        "",
        f"Tasks ({len(tasks)}): "
        + (", ".join(tasks) if len(tasks) <= 12 else _tasks_per_domain(expected))
        + ".",
    ]
    states = run_table(records)
    if not states.empty:
        counts = states["state"].replace("", "no status.json").value_counts()
        lines += ["", "Run states (status.json): " + ", ".join(f"{s} {n}" for s, n in counts.items()) + "."]
    return "\n".join(lines)


def _holding(records: pd.DataFrame, expected: pd.DataFrame, variant: str) -> dict:
    own = records[records["variant"] == variant]
    wanted = expected[expected["variant"] == variant]
    with_rows = own[["task", "seed"]].drop_duplicates()
    params = sorted(set(own["eval_params"]) - {""})
    return {
        "variant": variant,
        "source": own["source"].iloc[0] if not own.empty else "sweep",
        "method": own["method"].iloc[0] if not own.empty else "",
        "tasks": wanted["task"].nunique(),
        "seeds": _seed_list(sorted(wanted["seed"].unique())),
        "runs with records": f"{len(with_rows)} of {len(wanted)}",
        "offline steps": _steps(own, "offline"),
        "online steps": _steps(own, "online"),
        "eval params": f"{len(params)} values" if len(params) > 1 else (params[0] if params else ""),
    }


def _seed_list(seeds: list[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def _steps(rows: pd.DataFrame, phase: str) -> str:
    steps = sorted(rows.loc[rows["phase"] == phase, "step"].unique())
    if not steps:
        return "none"
    return f"{steps[0]}..{steps[-1]} ({len(steps)} evals)" if len(steps) > 1 else str(steps[0])


def _tasks_per_domain(expected: pd.DataFrame) -> str:
    counts = expected.groupby("domain")["task"].nunique()
    return "; ".join(f"{d}: {counts[d]}" for d in ordered_domains(counts.index))


def _leaderboards(records: pd.DataFrame, out: Path, settings: ReportSettings) -> tuple[list[str], pd.Series]:
    """The mean and IQM leaderboards of each phase; also the offline all-tasks means (for ranking)."""
    sections, ranking = [], pd.Series(dtype=float)
    for phase in ("offline", "online"):
        if not (records["phase"] == phase).any():
            continue
        table = aggregate(
            records, metrics=["mean", "iqm"], phase=phase, incomplete=settings.incomplete,
            **settings.bootstrap(), **settings.selection(),
        )  # fmt: skip
        for metric in ("mean", "iqm"):
            board = board_from_aggregate(records, table, metric)
            stem = f"leaderboard_{phase}_{metric}"
            (out / f"{stem}.csv").write_text(render_leaderboard(board, "csv"))
            (out / f"{stem}.tex").write_text(render_leaderboard(board, "latex"))
            title = f"## Leaderboard: {board.attrs['title']}"
            body = render_leaderboard(board, "md", with_missing=metric == "mean")
            sections.append(f"{title}\n\n{body}")
            if metric == "mean" and has_pairs(board):
                sections.append(render_versus(versus_published(board, records), settings.ci))
            if metric == "mean":
                _write_missing(board, out / f"missing_runs_{phase}.csv")
            if metric == "mean" and phase == "offline":
                totals = board[(board["row"] == ALL_TASKS) & board["value"].notna()]
                ranking = totals.set_index("variant")["value"]
    return sections, ranking


def _write_missing(board: pd.DataFrame, path: Path) -> None:
    missing = pd.DataFrame(
        board.attrs["missing"], columns=["variant", "task", "domain", "seed", "step", "reason"]
    )
    missing.to_csv(path, index=False)


def _pairs_to_compare(own: pd.DataFrame, pair, ranking: pd.Series) -> tuple[list[tuple[str, str]], str]:
    """Pairs for the P(improvement) plot and a sentence on how they were chosen.

    A named pair; else the two variants when there are two; else the leader (best all-tasks mean,
    final offline step) against each other variant with a value, at most MAX_POI_PAIRS.
    """
    if pair is not None:
        return [(resolve_variant(own, pair[0]), resolve_variant(own, pair[1]))], "the named pair"
    variants = [v for v in phase_variants(own, "offline")[0] if (own["variant"] == v).any()]
    if len(variants) < 2:
        return [], "the records hold fewer than two variants"
    if len(variants) == 2:
        return [(variants[0], variants[1])], "the sweep's two variants"
    ranked = [v for v in ranking.sort_values(ascending=False).index if v in variants]
    if len(ranked) < 2:
        return [], "fewer than two variants have an all-tasks value"
    leader, others = ranked[0], ranked[1 : MAX_POI_PAIRS + 1]
    skipped = [v for v in variants if v != leader and v not in others]
    how = f"the leader by all-tasks mean ({leader}) against each other variant with an all-tasks value"
    if skipped:
        how += f"; not drawn: {', '.join(skipped)}"
    return [(leader, other) for other in others], how


def _comparisons(
    own, pair, ranking, out: Path, settings: ReportSettings
) -> tuple[list[str], pd.DataFrame, str]:
    pairs, how = _pairs_to_compare(own, pair, ranking)
    with_table = pair is not None or how == "the sweep's two variants"
    rows, sections = [], []
    for a, b in progress_bar(
        pairs, desc="probability of improvement", enabled=settings.progress, leave=False
    ):
        try:
            table = compare(
                own, a, b, by="both" if with_table else "all", **settings.bootstrap(), **settings.selection()
            )
        except AnalysisError as error:
            sections.append(f"## Paired comparison: {a} vs {b}\n\nNot computed: {error}.")
            continue
        total = table[table["group"] == ALL_TASKS].iloc[0]
        rows.append({"a": a, "b": b, **total[["poi", "poi_ci_low", "poi_ci_high", "n_pairs"]].to_dict()})
        if with_table:
            table.to_csv(out / "comparison.csv", index=False)
            sections.append(f"## Paired comparison: {a} vs {b}\n\n{render_comparison(table)}")
    if not pairs:
        sections.append(f"## Paired comparison\n\nNot computed: {how}.")
    elif not with_table:
        sections.append(
            "## Paired comparison\n\nNo pair was named (`--pair A B`) and the sweep does not have exactly "
            "two variants: no comparison table. The probability-of-improvement plot below shows " + how + "."
        )
    columns = ["a", "b", "poi", "poi_ci_low", "poi_ci_high", "n_pairs"]
    return sections, pd.DataFrame(rows, columns=columns), how


def _plots(
    own: pd.DataFrame, pairs: pd.DataFrame, how: str, out: Path, settings: ReportSettings
) -> list[str]:
    variants, _ = phase_variants(own, "all")
    colors = plots.variant_colors(variants)
    sections = ["## Plots", _curves_section(own, out, colors, settings)]
    sections.append(_profile_section(own, out, colors, settings))
    sections.append(_intervals_section(own, out, colors, settings))
    sections.append(_poi_section(pairs, how, out))
    return sections


def _curves_section(own: pd.DataFrame, out: Path, colors: dict, settings: ReportSettings) -> str:
    has_online = (own["phase"] == "online").any()
    curves = aggregate(
        own, metrics=["mean"], step="all", phase="all" if has_online else "offline",
        incomplete=settings.incomplete, **settings.bootstrap(), **settings.selection(),
    )  # fmt: skip
    curves.to_csv(out / "learning_curves.csv", index=False)
    online_from = int(own.loc[own["phase"] == "online", "step"].min()) if has_online else None
    reference, reference_note = _published_curves(own, "all" if has_online else "offline")
    plots.plot_learning_curves(
        curves, out / LEARNING_CURVES, colors=colors, online_from=online_from, reference=reference
    )
    gaps = curves[curves["value"].isna()]
    gap_note = (
        f" {gaps.groupby(['variant', 'group']).ngroups} curve(s) have steps without a value "
        "(runs missing at those steps; see the missing runs)."
        if not gaps.empty
        else ""
    )
    online = " The dashed line marks the start of the online phase." if has_online else ""
    return (
        f"### Learning curves\n\n![Learning curves]({LEARNING_CURVES})\n\n"
        "Mean success (%) per evaluation step, per domain and over all tasks, with bootstrap CI bands; "
        f"test-time variants use the eval parameter chosen at the final step.{online}{gap_note} "
        f"{reference_note}"
    )


def _published_curves(own: pd.DataFrame, phase: str) -> tuple[pd.DataFrame | None, str]:
    """Mean curves of the published rows of the sweep's methods on its tasks, up to its last step.

    A panel gets a method's published curve only where the published rows cover all the sweep's
    tasks of that panel (a domain, or all tasks), so that both curves average the same tasks.
    """
    if (own["source"] == PUBLISHED).all():
        return None, ""
    chosen = published_for(set(own["method"]) | set(own["variant"]), set(own["task"]))
    chosen = chosen[chosen["step"] <= own["step"].max()]
    if phase == "offline":
        chosen = chosen[chosen["phase"] == "offline"]
    if chosen.empty:
        return None, "No published curve of these methods covers these tasks and steps."
    curves = aggregate(chosen, metrics=["mean"], step="all", phase=phase, reps=0, progress=False)
    covered = {d: set(g) for d, g in chosen.groupby("domain")["task"]}
    wanted = {d: set(g) for d, g in own.groupby("domain")["task"]}
    keep = [d for d in wanted if covered.get(d) == wanted[d]]
    if set(chosen["task"]) == set(own["task"]):
        keep.append(ALL_TASKS)
    curves = curves[curves["group"].isin(keep) & curves["value"].notna()]
    names = ", ".join(sorted(curves["variant"].unique()))
    return curves, (
        f"Dashed lines: the published mean curves of the same methods on the same tasks ({names}; "
        "12 released seeds, no band), drawn up to this sweep's last step."
    )


def _profile_section(own: pd.DataFrame, out: Path, colors: dict, settings: ReportSettings) -> str:
    profiles = performance_profiles(
        own, reps=settings.reps, ci=settings.ci, seed=settings.seed, incomplete=settings.incomplete,
        **settings.selection(),
    )  # fmt: skip
    left_out = "".join(f" {note}." for note in profiles.attrs["notes"])
    header = "### Performance profile\n\n"
    if profiles.empty:
        return header + f"Not drawn: no variant has a usable all-tasks score matrix.{left_out}"
    plots.plot_performance_profile(profiles, out / PERFORMANCE_PROFILE, colors=colors)
    return (
        f"{header}![Performance profile]({PERFORMANCE_PROFILE})\n\n"
        "Fraction of runs (seeds x tasks) whose final offline success exceeds each threshold, with "
        f"bootstrap CI bands.{left_out}"
    )


def _intervals_section(own: pd.DataFrame, out: Path, colors: dict, settings: ReportSettings) -> str:
    table = aggregate(
        own, by="all", incomplete=settings.incomplete, **settings.bootstrap(), **settings.selection()
    )
    usable = table[table["value"].notna()]
    header = "### Interval estimates\n\n"
    if usable.empty:
        return header + "Not drawn: no variant has a usable all-tasks score matrix (see the missing runs)."
    plots.plot_interval_estimates(table, out / INTERVAL_ESTIMATES, colors=colors)
    left_out = sorted(set(table["variant"]) - set(usable["variant"]))
    note = f" Left out (no usable all-tasks matrix): {', '.join(left_out)}." if left_out else ""
    return (
        f"{header}![Interval estimates]({INTERVAL_ESTIMATES})\n\n"
        "IQM, mean, median and optimality gap of final offline success (%) over all tasks; bars are "
        f"confidence intervals, ticks the point estimates.{note}"
    )


def _poi_section(pairs: pd.DataFrame, how: str, out: Path) -> str:
    header = "### Probability of improvement\n\n"
    if pairs.empty:
        return header + f"Not drawn: no pair could be compared ({how})."
    plots.plot_probability_of_improvement(pairs, out / PROBABILITY_OF_IMPROVEMENT)
    shown = pairs.assign(
        poi=pairs["poi"].map("{:.2f}".format),
        poi_ci=[
            f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(pairs["poi_ci_low"], pairs["poi_ci_high"], strict=True)
        ],
    )[["a", "b", "poi", "poi_ci", "n_pairs"]]
    return (
        f"{header}![Probability of improvement]({PROBABILITY_OF_IMPROVEMENT})\n\n"
        "P(X > Y): the probability that a run of X on a task beats a run of Y on the same task, "
        f"averaged over tasks (rliable), at the final offline step, with bootstrap CIs. Pairs: {how}.\n\n"
        + markdown_table(shown)
    )


def _files(out: Path, html: bool) -> str:
    files = sorted(
        p.name for p in out.iterdir() if p.is_file() and p.name not in ("report.md", "report.html")
    )
    where = " (next to this report; report.html holds the tables and plots by itself)" if html else ""
    return f"## Files{where}\n\n" + "\n".join(f"- [{name}]({name})" for name in files)
