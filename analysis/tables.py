"""The paper-style leaderboard: rows are domains and "all tasks", columns are variants."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.records import PUBLISHED, QAM_REFERENCE, REFERENCE_NOTES
from analysis.scores import ALL_TASKS, BEST_PER_DOMAIN, check_choice, parse_param_rule
from analysis.stats import LOWER_IS_BETTER, METRIC_LABELS, aggregate

FORMATS = ("md", "latex", "csv")
TEST_TIME_MARK = "§"
STATUS_MARKS = {"fewer seeds": "†", "common seeds": "‡"}
NO_VALUE = {"incomplete": "incomplete", "no runs": "n/a"}
LEADERBOARD_COLUMNS = [
    "row", "variant", "source", "metric", "value", "ci_low", "ci_high", "step", "n_tasks", "n_seeds",
    "status", "best", "eval_params", "detail",
]  # fmt: skip


def leaderboard(
    records: pd.DataFrame,
    *,
    metric: str = "mean",
    step: int | str = "final",
    phase: str = "offline",
    reps: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    eval_param_selection: str = BEST_PER_DOMAIN,
    incomplete: str = "refuse",
    progress: bool = True,
) -> pd.DataFrame:
    """The paper's table in long form: one row per (row, variant), success in percent.

    `row` is a domain or "all tasks"; `best` marks the best value of each row (lowest for the
    optimality gap) at the displayed precision; `eval_params` is the setting used for test-time
    variants. `attrs`: title, notes (step, CI settings, eval-parameter choice, missing runs),
    missing (the runs without a usable value), metric. Render with `render_leaderboard`.
    """
    if step == "all":
        raise AnalysisError("a leaderboard is at one step: use final or an integer step")
    table = aggregate(
        records,
        metrics=[metric],
        step=step,
        phase=phase,
        by="both",
        reps=reps,
        ci=ci,
        seed=seed,
        eval_param_selection=eval_param_selection,
        incomplete=incomplete,
        progress=progress,
    )
    return board_from_aggregate(records, table, metric)


def board_from_aggregate(records: pd.DataFrame, table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The leaderboard of `metric` from an `aggregate(..., by="both")` table of `records`."""
    settings = table.attrs["settings"]
    board = table[table["metric"] == metric].rename(columns={"group": "row"})
    for column in ("value", "ci_low", "ci_high"):
        board[column] = board[column] * 100.0
    board["best"] = _best_in_row(board, metric)
    board["eval_params"] = _params_used(board, table.attrs["param_choice"], settings["params"])
    board = board[LEADERBOARD_COLUMNS].reset_index(drop=True)
    step, phase = settings["step"], settings["phase"]
    step_text = "final" if step == "final" else f"step {step}"
    board.attrs.update(
        title=f"{METRIC_LABELS[metric]} success (%) at the {step_text} {phase} step",
        metric=metric,
        missing=table.attrs["missing"],
        notes=_notes(records, table, board, metric, phase, settings["params"]),
    )
    return board


def _best_in_row(board: pd.DataFrame, metric: str) -> pd.Series:
    shown = board["value"].round(1)
    pick = "min" if metric in LOWER_IS_BETTER else "max"
    target = shown.groupby(board["row"]).transform(pick)
    return (shown == target) & shown.notna()


def _params_used(board: pd.DataFrame, choice: list[dict], selection: str) -> pd.Series:
    chosen = {(c["variant"], c["domain"]): c["eval_params"] for c in choice}
    test_time = {c["variant"] for c in choice}
    rule = parse_param_rule(selection)
    all_tasks = f"{rule.key}={rule.value}" if rule.mode == "fixed" else "best per domain"

    def used(row) -> str:
        if row.variant not in test_time:
            return ""
        return all_tasks if row.row == ALL_TASKS else chosen.get((row.variant, row.row), "")

    return pd.Series([used(r) for r in board.itertuples()], index=board.index, dtype=object)


def _notes(records, table, board, metric: str, phase: str, selection: str) -> list[str]:
    settings = table.attrs["settings"]
    notes = [_ci_note(settings, metric), _step_note(board), _coverage_note(table.attrs["coverage"])]
    notes += _param_notes(records, table.attrs["param_choice"], phase, selection)
    if (board["source"] == PUBLISHED).any():
        notes += _reference_notes(records)
    notes.append(_missing_note(board, table.attrs["missing"]))
    return notes + list(table.attrs["notes"])


def _reference_notes(records: pd.DataFrame) -> list[str]:
    """The note of each published reference the records hold (QAM's when they do not say)."""
    published = records[records["source"] == PUBLISHED]
    names = published["reference"].dropna().unique() if "reference" in published else []
    return [REFERENCE_NOTES[name] for name in sorted(names)] or [REFERENCE_NOTES[QAM_REFERENCE]]


def _ci_note(settings: dict, metric: str) -> str:
    best = "lowest" if metric in LOWER_IS_BETTER else "highest"
    if settings["reps"] == 0:
        interval = "no confidence intervals (reps=0)"
    else:
        interval = (
            f"[low, high]: {settings['ci'] * 100:g}% stratified-bootstrap CI over seeds "
            f"(rliable, {settings['reps']} reps, seed {settings['seed']})"
        )
    return f"{METRIC_LABELS[metric]} over seeds x tasks; {interval}; bold: {best} value in the row"


def _step_note(board: pd.DataFrame) -> str:
    steps = board.groupby("variant", sort=False)["step"].first()
    known = steps.dropna()
    if known.nunique() == 1 and len(known) == len(steps):
        return f"step {int(known.iloc[0])} for every variant"
    return "step per variant: " + ", ".join(
        f"{v} {int(s)}" if pd.notna(s) else f"{v} none" for v, s in steps.items()
    )


def _coverage_note(coverage: list[dict]) -> str:
    parts = []
    for c in coverage:
        seeds = (
            str(c["seeds_max"]) if c["seeds_min"] == c["seeds_max"] else f"{c['seeds_min']}-{c['seeds_max']}"
        )
        parts.append(f"{c['variant']} {c['usable']} of {c['expected']} ({seeds} seeds per task)")
    return "runs with a usable value: " + "; ".join(parts)


def _param_notes(records: pd.DataFrame, choice: list[dict], phase: str, selection: str) -> list[str]:
    notes = []
    rule = parse_param_rule(selection)
    for variant in sorted({c["variant"] for c in choice}):
        picks = "; ".join(f"{c['domain']}: {c['eval_params']}" for c in choice if c["variant"] == variant)
        notes.append(f"{TEST_TIME_MARK} {variant}: test-time eval parameter {rule.describe()} ({picks})")
    in_phase = records[records["phase"] == phase]
    single = in_phase.groupby("variant")["eval_params"].agg(["nunique", "first"])
    for variant, row in single[(single["nunique"] == 1) & (single["first"] != "")].iterrows():
        notes.append(f"{variant}: evaluated with {row['first']} only")
    return notes


def _missing_note(board: pd.DataFrame, missing: list[dict]) -> str:
    if not missing:
        return "missing runs: none (every expected run has a value at the reported step)"
    marks = [f"{mark} {status}" for status, mark in STATUS_MARKS.items() if (board["status"] == status).any()]
    refused = (board["status"] == "incomplete").any()
    text = f"missing runs: {len(missing)} (listed under the table)"
    if marks:
        text += "; " + ", ".join(marks) + ": the cell is computed without them"
    if refused:
        text += (
            "; incomplete: no value, tasks lack runs or seeds differ between tasks "
            "(--incomplete common-seeds computes on the seeds every task has)"
        )
    return text


def render_leaderboard(board: pd.DataFrame, fmt: str = "md", *, with_missing: bool = True) -> str:
    """The leaderboard as a markdown table, a LaTeX table, or CSV (long form, one line per cell)."""
    check_choice("format", fmt, FORMATS)
    if fmt == "csv":
        return board.to_csv(index=False, float_format="%.4f")
    wide, headers = _wide(board, fmt)
    missing = pd.DataFrame(board.attrs.get("missing", []))
    if fmt == "latex":
        return _latex(board, wide, headers, missing if with_missing else None)
    return _markdown(board, wide, headers, missing if with_missing else None)


def _wide(board: pd.DataFrame, fmt: str) -> tuple[pd.DataFrame, list[str]]:
    variants = list(dict.fromkeys(board["variant"]))
    rows = list(dict.fromkeys(board["row"]))
    cells = board.assign(text=[_cell_text(r, fmt) for r in board.itertuples()])
    wide = cells.pivot(index="row", columns="variant", values="text").loc[rows, variants]
    test_time = set(board.loc[board["eval_params"] != "", "variant"])
    headers = [f"{v} {TEST_TIME_MARK}" if v in test_time else v for v in variants]
    return wide, headers


def _cell_text(row, fmt: str) -> str:
    if np.isnan(row.value):
        return NO_VALUE.get(row.status, "n/a")
    value = f"{row.value:.1f}"
    if row.best:
        value = f"**{value}**" if fmt == "md" else f"\\textbf{{{value}}}"
    mark = STATUS_MARKS.get(row.status, "")
    if fmt == "latex" and mark:
        mark = {"†": "$^\\dagger$", "‡": "$^\\ddagger$"}[mark]
    interval = "" if np.isnan(row.ci_low) else f"[{row.ci_low:.1f}, {row.ci_high:.1f}]"
    if fmt == "latex" and interval:
        interval = f"{{\\scriptsize {interval}}}"
    return " ".join(part for part in (value + mark, interval) if part)


def _markdown(board, wide: pd.DataFrame, headers: list[str], missing: pd.DataFrame | None) -> str:
    lines = [f"**{board.attrs.get('title', 'Leaderboard')}**", ""]
    lines.append("| domain | " + " | ".join(headers) + " |")
    lines.append("|---|" + "---|" * len(headers))
    for row, cells in wide.iterrows():
        label = f"**{row}**" if row == ALL_TASKS else row
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {note}" for note in board.attrs.get("notes", [])]
    if missing is not None and not missing.empty:
        lines += ["", "Missing runs:", "", markdown_table(missing)]
    return "\n".join(lines) + "\n"


def _latex(board, wide: pd.DataFrame, headers: list[str], missing: pd.DataFrame | None) -> str:
    caption = board.attrs.get("title", "Leaderboard") + ". " + ". ".join(board.attrs.get("notes", [])) + "."
    lines = [
        "% needs \\usepackage{booktabs}",
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{latex_escape(caption)}}}",
        "\\begin{tabular}{l" + "c" * len(headers) + "}",
        "\\toprule",
        "Domain & " + " & ".join(latex_escape(h) for h in headers) + " \\\\",
        "\\midrule",
    ]
    for row, cells in wide.iterrows():
        if row == ALL_TASKS:
            lines.append("\\midrule")
        lines.append(latex_escape(row) + " & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    if missing is not None and not missing.empty:
        lines += ["% missing runs (variant, task, seed, step: reason):"]
        lines += [
            f"% {m.variant}, {m.task}, seed {m.seed}, step {m.step}: {m.reason}" for m in missing.itertuples()
        ]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    replacements = {
        "\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
        "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}",
        "§": "\\S{}", "†": "$^\\dagger$", "‡": "$^\\ddagger$",
    }  # fmt: skip
    return "".join(replacements.get(ch, ch) for ch in str(text))


def markdown_table(frame: pd.DataFrame) -> str:
    """A plain markdown table (no extra dependency); `|` in cells is escaped."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _md_cell(value) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:g}"
    return str(value).replace("|", "\\|")
