"""Read a sweep's records (collected parquet or run directories) and the published reference rows."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError

DEFAULT_PRECISION = "fp32"
PUBLISHED_PRECISION = "as published"
REQUIRED_COLUMNS = ("method", "variant", "task", "seed", "phase", "step", "success")
PHASES = ("offline", "online")
PUBLISHED = "published"
PUBLISHED_SUFFIX = " (published)"
PUBLISHED_FILE = "qam_paper_results.parquet"
# The FQL paper's D4RL table, one row per (method, task): mean and spread in normalized score
# (0-100), with the source of each number (docs/d4rl.md). Only the cells we could check are there.
D4RL_PUBLISHED_FILE = "fql_paper_d4rl.csv"
QAM_REFERENCE, D4RL_REFERENCE = "qam-paper", "fql-paper-d4rl"
REFERENCE_NOTES = {
    QAM_REFERENCE: "(published): the QAM paper's released results (12 seed indices per task), shown as "
    "separate columns and never pooled with the sweep's runs",
    D4RL_REFERENCE: "(published) on D4RL tasks: the FQL paper's D4RL table, its mean as one value per task "
    f"(analysis/data/{D4RL_PUBLISHED_FILE} names each number's source); NOT like for like: it was measured "
    "on D4RL's own files (AntMaze v2, Adroit v1), while Minari's AntMaze data was collected anew and its "
    "Adroit data re-simulated in gymnasium-robotics (docs/d4rl.md)",
}
# The released results of each study of the QAM paper (scripts/released/convert.py made them).
STUDY_FILES = {
    "main": PUBLISHED_FILE,
    "quality": "qam_quality_results.parquet",
    "sensitivity": "qam_sensitivity_results.parquet",
}
# The QAM paper's method names -> flowarena registry names; the others are kept, lowercased.
PUBLISHED_NAMES = {"QAM": "qam", "QAM-E": "qam-edit", "QAM-F": "qam-fql", "FQL": "fql", "FBRAC": "fbrac"}
# The sensitivity study's released names -> the variants of the preset qam-sensitivity.
RELEASED_VARIANTS = {
    **{f"QAM-E ({f}x tau)": f"qam-edit[inv_temp=x{f}]" for f in ("0.1", "0.3", "3", "10")},
    "QAM-E (K=2)": "qam-edit[num_critics=2]",
    **{f"QAM-E (T={t})": f"qam-edit[flow_steps={t}]" for t in (1, 3, 20, 30)},
    "QAM-E-NOCLIP": "qam-edit[clip_grad=False]",
}
# The paper's domain order (rows of its table); domains it does not know come after, sorted.
DOMAIN_ORDER = (
    "antmaze-large-navigate",
    "antmaze-giant-navigate",
    "humanoidmaze-medium-navigate",
    "humanoidmaze-large-navigate",
    "scene-play",
    "puzzle-3x3-play",
    "puzzle-4x4-play",
    "cube-double-play",
    "cube-triple-play",
    "cube-quadruple-play",
)
RUN_COLUMNS = ("variant", "method", "task", "seed", "run_dir", "planned", "state", "status_step", "error")
_TASK_SUFFIX = re.compile(r"-singletask(-task\d+)?-v\d+$")


class RunTable(list):
    """A sweep's runs (one dict per run, `RUN_COLUMNS`), kept in `DataFrame.attrs["runs"]`.

    pandas deep-copies `attrs` on every operation; this list is shared instead of copied, so a
    sweep of thousands of runs does not slow every filter down. It stays JSON-serializable, as
    `DataFrame.to_parquet` stores `attrs` as JSON.
    """

    def __deepcopy__(self, memo: dict) -> RunTable:
        return self

    def frame(self) -> pd.DataFrame:
        if not hasattr(self, "_frame"):
            self._frame = pd.DataFrame(list(self), columns=list(RUN_COLUMNS))
        return self._frame


def run_table(records: pd.DataFrame) -> pd.DataFrame:
    """The runs that `load` found for these records (empty for published rows or a bare DataFrame)."""
    holder = records.attrs.get("runs") or RunTable()
    return holder.frame() if isinstance(holder, RunTable) else RunTable(holder).frame()


def domain_of(task: str) -> str:
    """`cube-double-play-singletask-task1-v0` -> `cube-double-play`."""
    return _TASK_SUFFIX.sub("", task)


def ordered_domains(domains) -> list[str]:
    """Domains in the paper's row order, unknown ones after it, sorted."""
    known = [d for d in DOMAIN_ORDER if d in set(domains)]
    return known + sorted(set(domains) - set(DOMAIN_ORDER))


def normalize_name(name: str) -> str:
    """Registry-style name: case-insensitive, `_` equal to `-`."""
    return name.strip().lower().replace("_", "-")


def load(sweep_dir: str | Path, *, published: bool = False) -> pd.DataFrame:
    """One DataFrame of a sweep's eval records (schema of docs/methods/qam.md plus `source` = "sweep").

    Reads `SWEEP/evals.parquet` when `flowarena collect` wrote it, else every run directory's
    `evals.parquet`; `df.attrs["loaded_from"]` says which. `run_table(df)` lists the runs the
    sweep planned (`sweep.json`) or has directories for, with their `status.json` state, so that
    missing runs can be named. `published=True` adds the reference rows of the sweep's methods on
    the sweep's tasks, labelled `<method> (published)`, never merged into a sweep variant.
    """
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise AnalysisError(f"{sweep}: no such sweep directory")
    records, loaded_from, notes = _read_sweep_evals(sweep)
    runs = sweep_runs(sweep)
    records = _standardize(records, source="sweep", default_sweep=sweep.name)
    if published:
        records, published_note = _with_published(records, runs)
        notes.append(published_note)
    records.attrs.update(
        sweep_dir=str(sweep), loaded_from=loaded_from, notes=notes, runs=RunTable(runs.to_dict("records"))
    )
    return records


def load_published(
    methods: list[str] | None = None,
    tasks: list[str] | None = None,
    study: str = "main",
    *,
    d4rl: bool = False,
) -> pd.DataFrame:
    """The QAM paper's released success rates in the records schema, labelled as published (with
    `d4rl`, or study "all", also the FQL paper's D4RL table: `load_d4rl_reference`). Column
    `reference` says which paper a row comes from.

    `study`: main (its tables, the default), quality (noisy/stitch data), sensitivity, or all.
    `method` is the registry name (QAM -> qam, QAM-E -> qam-edit, QAM-F -> qam-fql, FQL -> fql,
    FBRAC -> fbrac, others lowercased), `variant` is `<method> (published)` (a sensitivity run:
    `<preset variant> (published)`, RELEASED_VARIANTS), `source` and `sweep` are "published".
    Seeds 0-11 are indices, not seed values. `methods` (registry, paper or variant names) and
    `tasks` restrict the rows.
    """
    if study not in (*STUDY_FILES, "all"):
        raise AnalysisError(f"unknown study {study!r}; studies: {', '.join(STUDY_FILES)}, all")
    files = list(STUDY_FILES.values()) if study == "all" else [STUDY_FILES[study]]
    raw = pd.concat([_read_released(name) for name in files], ignore_index=True)
    raw = raw.assign(reference=QAM_REFERENCE)
    if d4rl or study == "all":
        raw = pd.concat([raw, load_d4rl_reference()], ignore_index=True)
    method = raw["method"].map(lambda name: PUBLISHED_NAMES.get(name, name.lower()))
    method = method.where(~raw["method"].isin(set(RELEASED_VARIANTS)), PUBLISHED_NAMES["QAM-E"])
    variant = raw["method"].map(RELEASED_VARIANTS).fillna(method)
    rows = raw.assign(method=method, variant=variant + PUBLISHED_SUFFIX, sweep=PUBLISHED, eval_params="")
    if methods is not None:
        wanted = {published_label(m) for m in methods}
        have = set(rows["variant"]) | set(rows["method"] + PUBLISHED_SUFFIX)
        unknown = wanted - have
        if unknown:
            known = ", ".join(sorted(rows["method"].unique()))
            shown = ", ".join(sorted(u.removesuffix(PUBLISHED_SUFFIX) for u in unknown))
            raise AnalysisError(f"not in the published reference: {shown}; it has {known}")
        rows = rows[rows["variant"].isin(wanted) | (rows["method"] + PUBLISHED_SUFFIX).isin(wanted)]
    if tasks is not None:
        rows = rows[rows["task"].isin(set(tasks))]
    published = _standardize(rows.reset_index(drop=True), source=PUBLISHED, default_sweep=PUBLISHED)
    published.attrs.update(
        sweep_dir=PUBLISHED,
        loaded_from=f"published reference ({', '.join(files)}, shipped with flowarena)",
        notes=[],
        runs=RunTable(),
    )
    return published


def load_d4rl_reference() -> pd.DataFrame:
    """D4RL_PUBLISHED_FILE as raw published rows: each task's mean as one row (seed 0) at its step,
    success = mean / 100 (the records' success x 100 is D4RL's normalized score)."""
    table = pd.read_csv(resources.files("analysis").joinpath("data", D4RL_PUBLISHED_FILE))
    return pd.DataFrame(
        {
            "method": table["method"].astype(str),
            "task": table["task"].astype(str),
            "domain": table["domain"].astype(str),
            "seed": 0,
            "phase": "offline",
            "step": table["step"].astype(np.int64),
            "success": table["mean"].astype(float) / 100.0,
            "reference": D4RL_REFERENCE,
        }
    )


def published_label(name: str) -> str:
    """The published variant a name stands for: `QAM-E`, `qam-edit` -> `qam-edit (published)`;
    `QAM-E (K=2)`, `qam-edit[num_critics=2]` -> `qam-edit[num_critics=2] (published)`."""
    name = name.strip().removesuffix(PUBLISHED_SUFFIX)
    if name in RELEASED_VARIANTS:
        return RELEASED_VARIANTS[name] + PUBLISHED_SUFFIX
    by_case = {v.lower(): v for v in RELEASED_VARIANTS.values()}
    return by_case.get(name.lower(), PUBLISHED_NAMES.get(name, normalize_name(name))) + PUBLISHED_SUFFIX


def published_for(names: set[str], tasks: set[str]) -> pd.DataFrame:
    """Every study's published rows of these sweep methods or variants on these tasks: a method's
    own rows (main table, quality study) and a sensitivity variant's rows by its variant name."""
    reference = load_published(study="all")
    base = reference["variant"].str.removesuffix(PUBLISHED_SUFFIX)
    return reference[base.isin(names) & reference["task"].isin(tasks)]


def _read_released(name: str) -> pd.DataFrame:
    return pd.read_parquet(resources.files("analysis").joinpath("data", name))


def load_source(spec: str | Path, *, published: bool = False) -> pd.DataFrame:
    """What the CLI's SWEEP argument names: a sweep directory, or `published` for the main
    reference alone (`published:quality`, `published:sensitivity`: that study's)."""
    text = str(spec)
    if text.split(":")[0] == PUBLISHED and not Path(spec).is_dir():
        return load_published(study=text.partition(":")[2] or "main")
    return load(spec, published=published)


def sweep_runs(sweep_dir: str | Path) -> pd.DataFrame:
    """The runs a sweep planned (`sweep.json`) or has directories for, with their status.

    Columns: variant, method, task, seed, run_dir, planned (listed in sweep.json), state
    (status.json state, "" when the file is absent), status_step, error.
    """
    sweep = Path(sweep_dir)
    planned = _planned_runs(sweep)
    found = _run_dirs(sweep)
    runs = {(run["variant"], run["task"], run["seed"]): run for run in found}
    for run in planned:
        key = (run["variant"], run["task"], run["seed"])
        runs[key] = {
            **runs.get(key, run),
            "method": run["method"],
            "run_dir": run["run_dir"],
            "planned": True,
        }
    rows = [{**run, **_read_status(Path(run["run_dir"]))} for run in runs.values()]
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def _read_sweep_evals(sweep: Path) -> tuple[pd.DataFrame, str, list[str]]:
    collected = sweep / "evals.parquet"
    run_files = sorted(sweep.glob("*/*/seed*/evals.parquet"))
    if collected.is_file():
        newer = [f for f in run_files if f.stat().st_mtime > collected.stat().st_mtime]
        notes = []
        if newer:
            notes.append(
                f"{len(newer)} run(s) wrote evals after {collected} was collected; "
                "rerun `flowarena collect` to include them"
            )
        return _read_parquet(collected), f"collected records {collected}", notes
    if not run_files:
        raise AnalysisError(
            f"{sweep}: no records: neither {collected} nor any "
            f"{sweep}/<variant>/<task>/seed<k>/evals.parquet (run `flowarena collect` or check the path)"
        )
    frames = [_read_parquet(f) for f in run_files]
    return pd.concat(frames, ignore_index=True), f"{len(run_files)} run directories under {sweep}", []


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a corrupt or foreign file
        raise AnalysisError(f"{path}: cannot read as parquet ({error})") from error


def _standardize(records: pd.DataFrame, *, source: str, default_sweep: str) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in records.columns]
    if missing:
        raise AnalysisError(
            f"records lack column(s) {', '.join(missing)}; is this a flowarena evals.parquet?"
        )
    if records.empty:
        raise AnalysisError("the records hold no rows")
    out = records.copy()
    out["sweep"] = out["sweep"].astype(str) if "sweep" in out else default_sweep
    out["domain"] = out["domain"].astype(str) if "domain" in out else out["task"].map(domain_of)
    out["eval_params"] = out["eval_params"].fillna("").astype(str) if "eval_params" in out else ""
    out["precision"] = _precision(out, source)
    out["seed"] = out["seed"].astype(np.int64)
    out["step"] = out["step"].astype(np.int64)
    out["success"] = out["success"].astype(float)
    out["source"] = source
    bad_phase = sorted(set(out["phase"]) - set(PHASES))
    if bad_phase:
        raise AnalysisError(f"unknown phase(s) {bad_phase} in the records; expected offline or online")
    _check_unique(out)
    return out


def _precision(records: pd.DataFrame, source: str) -> pd.Series | str:
    """Each row's precision of products: records from before the setting are fp32 (the variant
    names any other, `fql@bf16`); published results are what their authors' hardware computed."""
    default = PUBLISHED_PRECISION if source == PUBLISHED else DEFAULT_PRECISION
    if "precision" not in records:
        return default
    return records["precision"].fillna(default).astype(str)


def _check_unique(records: pd.DataFrame) -> None:
    key = ["variant", "task", "seed", "phase", "step", "eval_params"]
    duplicated = records[records.duplicated(key, keep=False)]
    if not duplicated.empty:
        first = duplicated.iloc[0]
        where = ", ".join(f"{k}={first[k]!r}" for k in key)
        raise AnalysisError(
            f"{len(duplicated)} duplicated eval rows (first: {where}), never counted twice: records of "
            "two sweeps merged, or a run written by two processes at once; `flowarena collect` keeps "
            "one row of each and lists the duplicates"
        )


def _with_published(records: pd.DataFrame, runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    methods = set(records["method"]) | set(runs["method"])
    tasks = set(records["task"]) | set(runs["task"])
    chosen = published_for(methods | set(records["variant"]) | set(runs["variant"]), tasks)
    if chosen.empty:
        note = (
            "published reference: none of the sweep's (method, task) pairs are in it "
            f"(methods {', '.join(sorted(methods))}); no published rows added"
        )
        return records, note
    note = (
        f"published reference rows added for {', '.join(sorted(chosen['variant'].unique()))} "
        f"on the sweep's {chosen['task'].nunique()} task(s); they are separate variants, never merged"
    )
    return pd.concat([records, chosen], ignore_index=True), note


def _planned_runs(sweep: Path) -> list[dict]:
    spec_file = sweep / "sweep.json"
    if not spec_file.is_file():
        return []
    try:
        spec = json.loads(spec_file.read_text())
        runs = spec.get("runs", [])
        return [_planned_run(sweep, run) for run in runs]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise AnalysisError(
            f"{spec_file}: unreadable ({error}); expected {{'runs': [{{method, variant, ...}}]}}"
        ) from error


def _planned_run(sweep: Path, run: dict) -> dict:
    run_dir = Path(run.get("run_dir") or sweep / run["variant"] / run["task"] / f"seed{run['seed']}")
    if not run_dir.is_absolute() and not run_dir.exists() and (sweep / run_dir).exists():
        run_dir = sweep / run_dir
    return {
        "variant": str(run.get("variant") or run["method"]),
        "method": str(run["method"]),
        "task": str(run["task"]),
        "seed": int(run["seed"]),
        "run_dir": str(run_dir),
        "planned": True,
    }


def _run_dirs(sweep: Path) -> list[dict]:
    runs = []
    for run_dir in sorted(p for p in sweep.glob("*/*/seed*") if p.is_dir()):
        seed = run_dir.name.removeprefix("seed")
        if not seed.isdigit():
            continue
        variant = run_dir.parent.parent.name
        method = _read_json(run_dir / "spec.json").get("method", variant.split("[")[0])
        runs.append(
            {
                "variant": variant,
                "method": str(method),
                "task": run_dir.parent.name,
                "seed": int(seed),
                "run_dir": str(run_dir),
                "planned": False,
            }
        )
    return runs


def _read_status(run_dir: Path) -> dict:
    status = _read_json(run_dir / "status.json")
    step = status.get("step")
    return {
        "state": str(status.get("state") or ""),
        "status_step": float(step) if isinstance(step, (int, float)) else float("nan"),
        "error": str(status.get("error") or ""),
    }


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}
