"""From records to score matrices: step and eval-parameter selection, expected runs, missing runs.

A score matrix is rliable's (num_runs, num_tasks) array: one row per seed, one column per task.
A cell (a variant on a group of tasks) gets a matrix only when the runs form one: every task has
runs and the same seeds. What is missing is always listed, never averaged away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.records import PHASES, PUBLISHED, domain_of, ordered_domains, run_table

ALL_TASKS = "all tasks"
BEST_PER_DOMAIN = "best-per-domain"
INCOMPLETE_RULES = ("refuse", "common-seeds")
MISSING_COLUMNS = ["variant", "task", "domain", "seed", "step", "reason"]


@dataclass(frozen=True)
class ParamRule:
    """How to pick one eval-parameter setting of a test-time method (several eval_params per step)."""

    mode: str  # "best-per-domain" or "fixed"
    key: str = ""
    value: str = ""

    def describe(self) -> str:
        if self.mode == "fixed":
            return f"fixed at {self.key}={self.value}"
        return (
            "chosen per domain: the value with the best mean success over the domain's tasks and seeds "
            "at the reported step (optimistic; the QGF reference's logged success is more so: each run's "
            "max over the values at every evaluation)"
        )


@dataclass(frozen=True)
class Cell:
    """A variant on a group of tasks: its score matrix, or why there is none."""

    status: str  # complete | fewer seeds | common seeds | incomplete | no runs
    matrix: np.ndarray | None = None  # (seeds, tasks) success in 0..1
    tasks: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    detail: str = ""

    @property
    def usable(self) -> bool:
        return self.matrix is not None


@dataclass
class StepScores:
    """One success value per (variant, task, seed) at one step per variant, and what is missing."""

    scores: pd.DataFrame  # variant, source, task, domain, seed, step, success (finite)
    expected: pd.DataFrame  # variant, source, task, domain, seed
    missing: pd.DataFrame  # MISSING_COLUMNS
    steps: dict[str, int | None]  # variant -> step used (None: no evals in the phase)
    param_choice: pd.DataFrame  # variant, domain, eval_params (test-time variants only)
    variants: list[str]
    phase: str
    notes: list[str] = field(default_factory=list)
    _by_variant: tuple | None = field(default=None, repr=False)

    def domains(self) -> list[str]:
        return ordered_domains(self.expected["domain"].unique())

    def cell(self, variant: str, group: str, incomplete: str = "refuse") -> Cell:
        if self._by_variant is None:
            self._by_variant = (_split(self.scores), _split(self.expected))
        scores, expected = self._by_variant
        empty_scores, empty_expected = self.scores.iloc[0:0], self.expected.iloc[0:0]
        return build_cell(
            scores.get(variant, empty_scores),
            expected.get(variant, empty_expected),
            variant,
            group,
            incomplete,
        )


def _split(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {variant: rows for variant, rows in frame.groupby("variant", sort=False)}


def parse_param_rule(text: str) -> ParamRule:
    """`best-per-domain` or `fixed:KEY=VALUE`."""
    text = text.strip()
    if text == BEST_PER_DOMAIN:
        return ParamRule(BEST_PER_DOMAIN)
    if text.startswith("fixed:") and "=" in text:
        key, value = text.removeprefix("fixed:").split("=", 1)
        if key.strip() and value.strip():
            return ParamRule("fixed", key.strip(), value.strip())
    raise AnalysisError(f"bad eval-param selection {text!r}: use best-per-domain or fixed:KEY=VALUE")


def parse_params(text: str) -> dict[str, str]:
    """`guidance_weight=0.02,steps=10` -> {"guidance_weight": "0.02", "steps": "10"}."""
    pairs = [item.split("=", 1) for item in text.split(",") if "=" in item]
    return {key.strip(): value.strip() for key, value in pairs}


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise AnalysisError(f"bad {name} {value!r}: use one of {', '.join(choices)}")
    return value


def scores_at(
    records: pd.DataFrame,
    step: int | str = "final",
    phase: str = "offline",
    params: str | ParamRule = BEST_PER_DOMAIN,
) -> StepScores:
    """Success per (variant, task, seed) at `step` ("final": each variant's last step in `phase`)."""
    check_choice("phase", phase, PHASES)
    rule = params if isinstance(params, ParamRule) else parse_param_rule(params)
    in_phase = records[records["phase"] == phase]
    variants, skipped = phase_variants(records, phase)
    steps = _steps_for(in_phase, variants, step, phase)
    at_step = _rows_at_steps(in_phase, steps)
    choice = choose_params(at_step, rule)
    selected = apply_params(at_step, choice)
    expected = expected_runs(records, variants)
    scores = selected[np.isfinite(selected["success"])]
    scores = scores[["variant", "source", "task", "domain", "seed", "step", "success"]].reset_index(drop=True)
    missing = _missing(records, expected, scores, steps, phase, choice, rule)
    notes = [f"{v}: no {phase} evals (left out of the {phase} tables)" for v in skipped]
    return StepScores(scores, expected, missing, steps, choice, variants, phase, notes)


def curve_scores(records: pd.DataFrame, phase: str = "offline", params: str | ParamRule = BEST_PER_DOMAIN):
    """Success per (variant, task, seed, step) over every step; eval parameters chosen at the final step.

    `phase` is offline, online or all (the online steps continue after the offline ones).
    Returns (scores, expected, param_choice, variants).
    """
    check_choice("phase", phase, (*PHASES, "all"))
    rule = params if isinstance(params, ParamRule) else parse_param_rule(params)
    has_online = (records["phase"] == "online").any()
    final_phase = phase if phase != "all" else ("online" if has_online else "offline")
    final = scores_at(records, "final", final_phase, rule)
    in_phase = records if phase == "all" else records[records["phase"] == phase]
    variants, _ = phase_variants(records, phase)
    selected = apply_params(in_phase[in_phase["variant"].isin(variants)], final.param_choice)
    scores = selected[np.isfinite(selected["success"])]
    scores = scores[["variant", "source", "task", "domain", "seed", "step", "success"]]
    return scores.reset_index(drop=True), expected_runs(records, variants), final.param_choice, variants


def phase_variants(records: pd.DataFrame, phase: str) -> tuple[list[str], list[str]]:
    """Variants shown for a phase: those with evals in it, and planned ones with no evals at all.

    Returns (shown, left out because they have evals only in the other phase).
    """
    runs = run_table(records)
    everything = set(records["variant"]) | set(runs["variant"])
    in_phase = records if phase == "all" else records[records["phase"] == phase]
    with_rows = set(in_phase["variant"])
    without_any = everything - set(records["variant"])
    shown = with_rows | without_any
    return ordered_variants(records, shown), sorted(everything - shown)


def ordered_variants(records: pd.DataFrame, variants) -> list[str]:
    """Sweep variants first (sorted), published ones after (sorted)."""
    published = set(records.loc[records["source"] == PUBLISHED, "variant"])
    return sorted(set(variants) - published) + sorted(set(variants) & published)


def _steps_for(in_phase: pd.DataFrame, variants: list[str], step: int | str, phase: str) -> dict:
    last = in_phase.groupby("variant")["step"].max()
    if step == "final":
        return {v: int(last[v]) if v in last.index else None for v in variants}
    try:
        wanted = int(step)
    except (TypeError, ValueError) as error:
        raise AnalysisError(f"bad step {step!r}: use final or an integer step") from error
    if not (in_phase["step"] == wanted).any():
        available = sorted(in_phase["step"].unique())
        shown = ", ".join(str(s) for s in available[:12]) + (" ..." if len(available) > 12 else "")
        raise AnalysisError(f"no {phase} evals at step {wanted}; steps in the records: {shown or 'none'}")
    return dict.fromkeys(variants, wanted)


def _rows_at_steps(in_phase: pd.DataFrame, steps: dict) -> pd.DataFrame:
    wanted = pd.Series({v: s for v, s in steps.items() if s is not None}, dtype="float64")
    at = in_phase["variant"].map(wanted)
    return in_phase[in_phase["step"] == at]


def choose_params(at_step: pd.DataFrame, rule: ParamRule) -> pd.DataFrame:
    """One eval_params value per (variant, domain) for variants evaluated with several values."""
    counts = at_step.groupby("variant")["eval_params"].nunique()
    test_time = counts[counts > 1].index
    rows = []
    for variant in test_time:
        rows_v = at_step[at_step["variant"] == variant]
        for domain, rows_d in rows_v.groupby("domain"):
            rows.append({"variant": variant, "domain": domain, "eval_params": _pick(rows_d, rule, variant)})
    return pd.DataFrame(rows, columns=["variant", "domain", "eval_params"])


def _pick(rows: pd.DataFrame, rule: ParamRule, variant: str) -> str:
    values = sorted(rows["eval_params"].unique())
    if rule.mode == "fixed":
        matching = [v for v in values if _same_value(parse_params(v).get(rule.key), rule.value)]
        if len(matching) != 1:
            what = "no" if not matching else "several"
            raise AnalysisError(
                f"{variant}: {what} eval_params with {rule.key}={rule.value}; it has {', '.join(values)}"
            )
        return matching[0]
    means = rows[np.isfinite(rows["success"])].groupby("eval_params")["success"].mean()
    return str(means.idxmax()) if not means.empty else values[0]


def _same_value(found: str | None, wanted: str) -> bool:
    if found is None:
        return False
    try:
        return float(found) == float(wanted)
    except ValueError:
        return found == wanted


def apply_params(rows: pd.DataFrame, choice: pd.DataFrame) -> pd.DataFrame:
    """Keep only the chosen eval_params rows of test-time variants; others pass through."""
    if choice.empty:
        return rows
    chosen = choice.set_index(["variant", "domain"])["eval_params"]
    key = pd.MultiIndex.from_frame(rows[["variant", "domain"]])
    wanted = pd.Series(chosen.reindex(key).to_numpy(), index=rows.index)
    return rows[wanted.isna() | (rows["eval_params"] == wanted)]


def expected_runs(records: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    """The (variant, task, seed) runs each variant should have.

    Per source: the runs sweep.json planned or that have a run directory, and every task and seed
    that any variant of the same source has (a variant with fewer seeds or tasks shows up as missing).
    """
    runs = run_table(records)[["variant", "task", "seed"]]
    task_domain = dict(zip(records["task"], records["domain"], strict=True))
    source_of = dict(zip(records["variant"], records["source"], strict=True))
    frames = []
    for source in sorted(set(source_of.get(v, "sweep") for v in variants)):
        members = [v for v in variants if source_of.get(v, "sweep") == source]
        rows = records[records["source"] == source]
        known = runs if source == "sweep" else runs.iloc[0:0]
        tasks = sorted(set(rows["task"]) | set(known["task"]))
        seeds = sorted(set(rows["seed"]) | set(known["seed"]))
        grid = pd.MultiIndex.from_product([members, tasks, seeds], names=["variant", "task", "seed"])
        listed = known[known["variant"].isin(members)]
        frame = pd.concat([grid.to_frame(index=False), listed], ignore_index=True).drop_duplicates()
        frames.append(frame.assign(source=source))
    expected = (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["variant", "task", "seed"])
    )
    expected["seed"] = expected["seed"].astype(np.int64)
    expected["domain"] = expected["task"].map(lambda t: task_domain.get(t) or domain_of(t))
    return expected.sort_values(["variant", "task", "seed"]).reset_index(drop=True)


def build_cell(
    scores: pd.DataFrame, expected: pd.DataFrame, variant: str, group: str, incomplete: str = "refuse"
) -> Cell:
    """The (seeds, tasks) matrix of `variant` on `group` (a domain or ALL_TASKS), or why there is none.

    A task without runs makes the cell incomplete. Seeds that only some tasks have make it
    incomplete too, unless `incomplete="common-seeds"`: then the matrix keeps the seeds every task
    has. A variant with the same smaller seed set on every task gets a matrix, marked "fewer seeds".
    """
    wanted = expected_in(expected, variant, group)
    have = scores[(scores["variant"] == variant) & scores["task"].isin(set(wanted["task"]))]
    return cell_from_table(have.pivot(index="seed", columns="task", values="success"), wanted, incomplete)


def expected_in(expected: pd.DataFrame, variant: str, group: str) -> pd.DataFrame:
    """The expected runs of `variant` on `group`."""
    return expected[(expected["variant"] == variant) & _in_group(expected, group)]


def cell_from_table(table: pd.DataFrame, wanted: pd.DataFrame, incomplete: str = "refuse") -> Cell:
    """`build_cell` from a (seed x task) table of success values, NaN where a run has none."""
    check_choice("incomplete rule", incomplete, INCOMPLETE_RULES)
    if wanted.empty:
        return Cell("no runs", detail="no runs expected")
    tasks = tuple(sorted(wanted["task"].unique()))
    table = table.reindex(columns=list(tasks))
    present = table.notna().to_numpy()
    empty = int((~present.any(axis=0)).sum())
    if empty:
        return Cell("incomplete", tasks=tasks, detail=f"no runs on {empty} of {len(tasks)} task(s)")
    in_common = present.all(axis=1)
    common = tuple(int(seed) for seed in table.index[in_common])
    dropped = int(present.sum()) - len(common) * len(tasks)
    if not common or (dropped and incomplete == "refuse"):
        return Cell("incomplete", tasks=tasks, detail=f"{dropped} run(s) have seeds that other tasks lack")
    matrix = table.to_numpy(dtype=float)[in_common]
    status = "common seeds" if dropped else ("complete" if present.sum() == len(wanted) else "fewer seeds")
    detail = f"{dropped} run(s) dropped to keep seeds common to all tasks" if dropped else ""
    return Cell(status, matrix, tasks, common, detail)


def _in_group(frame: pd.DataFrame, group: str) -> pd.Series:
    return pd.Series(True, index=frame.index) if group == ALL_TASKS else frame["domain"] == group


def _missing(
    records: pd.DataFrame,
    expected: pd.DataFrame,
    scores: pd.DataFrame,
    steps: dict,
    phase: str,
    choice: pd.DataFrame,
    rule: ParamRule,
) -> pd.DataFrame:
    key = ["variant", "task", "seed"]
    present = expected.merge(scores[key], on=key, how="left", indicator=True)
    absent = present[present["_merge"] == "left_only"]
    if absent.empty:
        return pd.DataFrame(columns=MISSING_COLUMNS)
    runs = run_table(records)
    run_info = runs.set_index(key).to_dict("index") if not runs.empty else {}
    run_rows = records.groupby(key)
    rows = []
    for run in absent.itertuples(index=False):
        run_key = (run.variant, run.task, run.seed)
        own = run_rows.get_group(run_key) if run_key in run_rows.groups else records.iloc[0:0]
        step = steps.get(run.variant)
        reason = _reason(own, step, phase, choice, rule, run.domain)
        reason += _state(run_info.get(run_key), planned_note=reason == "no records")
        run_fields = {"variant": run.variant, "task": run.task, "seed": run.seed, "domain": run.domain}
        rows.append({**run_fields, "step": step, "reason": reason})
    return pd.DataFrame(rows, columns=MISSING_COLUMNS)


def _reason(own: pd.DataFrame, step, phase: str, choice: pd.DataFrame, rule: ParamRule, domain: str) -> str:
    if own.empty:
        return "no records"
    in_phase = own[own["phase"] == phase]
    if in_phase.empty:
        return f"no {phase} evals"
    at_step = in_phase[in_phase["step"] == step]
    if at_step.empty:
        return f"no eval at step {step} (last {phase} eval at step {int(in_phase['step'].max())})"
    chosen = choice[(choice["variant"] == own["variant"].iloc[0]) & (choice["domain"] == domain)]
    if not chosen.empty:
        param = chosen["eval_params"].iloc[0]
        at_step = at_step[at_step["eval_params"] == param]
        if at_step.empty:
            return f"no eval with {param} at step {step} ({rule.mode})"
    if not np.isfinite(at_step["success"]).all():
        return f"success is NaN at step {step}"
    return "unusable"


def _state(info: dict | None, planned_note: bool) -> str:
    if not info:
        return ""
    planned = "; planned in sweep.json" if planned_note and info.get("planned") else ""
    state = info.get("state") or ""
    if not state or state == "done":
        return planned
    at = info.get("status_step")
    where = f" at step {int(at)}" if at is not None and np.isfinite(at) else ""
    error = f": {info['error']}" if info.get("error") else ""
    return f"; run {state}{where}{error}{planned}"


def missing_runs(
    records: pd.DataFrame,
    step: int | str = "final",
    phase: str = "offline",
    eval_param_selection: str = BEST_PER_DOMAIN,
) -> pd.DataFrame:
    """Which expected runs have no usable success value at `step`, and why.

    Columns: variant, task, domain, seed, step, reason. Expected runs are those sweep.json planned,
    those with a run directory, and every task and seed that other variants of the same source have.
    """
    return scores_at(records, step, phase, eval_param_selection).missing
