"""The QAM paper's data-quality and sensitivity figures, drawn from any records that hold them.

Data quality: on each noisy (manipulation) or stitch (maze) domain in the records, each method's
success beside the same method's published success on the play/navigate domain it stands in for
(the main table's released results). Sensitivity: every variant that changes one config key of a
method (`qam-edit[inv_temp=x0.3]`, `qam-edit[flow_steps=20]`) as success against that key's value,
the method at its defaults marked. Both at the final offline step, mean over tasks and seeds with
stratified-bootstrap CIs; a sweep's variants and published ones are separate series.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.plots import _figure, _save, variant_colors
from analysis.records import PUBLISHED, PUBLISHED_SUFFIX, load_published, ordered_domains
from analysis.scores import ALL_TASKS
from analysis.stats import aggregate

QUALITY_FIGURE = "data_quality.png"
SENSITIVITY_FIGURE = "sensitivity.png"
# The dataset kinds of the quality study and the kind of the main table's domain each stands in for.
DATA_KINDS = {"-noisy": "-play", "-stitch": "-navigate"}
# The knobs' default values in the sensitivity study (QAM-EDIT's config defaults; a relative
# value's default is x1): where the method at its defaults sits on each knob's axis.
KNOB_DEFAULTS = {"num_critics": "10", "flow_steps": "10", "clip_grad": "True"}
_ONE_KEY = re.compile(r"^(?P<method>[^\[\]]+)\[(?P<key>[^=,\[\]]+)=(?P<value>[^,\[\]]+)\]$")


def main_domain(domain: str) -> str | None:
    """`cube-double-noisy` -> `cube-double-play`, `antmaze-large-stitch` -> `antmaze-large-navigate`."""
    for kind, main in DATA_KINDS.items():
        if domain.endswith(kind):
            return domain.removesuffix(kind) + main
    return None


def study_sections(records: pd.DataFrame, out: Path, settings) -> list[str]:
    """The report's sections of the two figures the records hold (none when they hold neither).
    `records` may include published rows; `settings` is the report's ReportSettings."""
    sections = []
    quality = quality_table(records, **settings.bootstrap())
    if not quality.empty:
        sections.append(
            _figure_section(
                quality,
                out,
                "data_quality.csv",
                plot_quality,
                QUALITY_FIGURE,
                "Data quality",
                "Success (%) at the final offline step on each noisy or stitch domain (solid), beside the "
                "same method's published success on the same tasks of the play or navigate domain it "
                "stands in for (hatched: the QAM paper's main released results), mean over tasks and "
                "seeds with bootstrap CIs.",
            )
        )
    knobs = sensitivity_table(records, **settings.bootstrap())
    if not knobs.empty:
        sections.append(
            _figure_section(
                knobs,
                out,
                "sensitivity.csv",
                plot_sensitivity,
                SENSITIVITY_FIGURE,
                "Sensitivity",
                "Success (%) at the final offline step over all tasks of the variants that change one key "
                "of a method, against that key's value, with bootstrap CIs; the star marks the method at "
                "its defaults (its per-domain value; `xF` is F times it), from the records or, for "
                "published series, the main released results on the same tasks.",
            )
        )
    return sections


def _figure_section(
    table: pd.DataFrame, out: Path, csv: str, plot, figure: str, title: str, text: str
) -> str:
    """Writes the table's CSV and figure into `out`; the report's section showing them."""
    table.to_csv(out / csv, index=False)
    plot(table, out / figure)
    return f"### {title}\n\n![{title}]({figure})\n\n{text} Values: {csv}."


def _aggregate(rows: pd.DataFrame, by: str, reps: int, ci: float, seed: int, progress: bool) -> pd.DataFrame:
    table = aggregate(rows, metrics=["mean"], by=by, reps=reps, ci=ci, seed=seed, progress=False)
    return table[table["value"].notna()]


def quality_table(records: pd.DataFrame, **bootstrap) -> pd.DataFrame:
    """One row per (noisy/stitch domain, variant, data): `data` is `noisy`/`stitch` for the variant's
    own value there, `play`/`navigate` for its method's published value on the same tasks of the
    main domain (task k of cube-double-noisy: task k of cube-double-play, the same goal)."""
    studied = records[records["domain"].map(main_domain).notna()]
    plain = studied[studied["variant"].str.removesuffix(PUBLISHED_SUFFIX) == studied["method"]]
    if plain.empty:
        return pd.DataFrame()
    mains = {d: main_domain(d) for d in plain["domain"].unique()}
    same_tasks = {
        task.replace(domain, mains[domain], 1) for task, domain in zip(plain["task"], plain["domain"])
    }
    reference = load_published(study="main")
    reference = reference[reference["method"].isin(set(plain["method"])) & reference["task"].isin(same_tasks)]
    own = _aggregate(plain, "domain", **bootstrap)
    theirs = _aggregate(reference, "domain", **bootstrap) if not reference.empty else own.iloc[:0]
    methods = plain.drop_duplicates("variant").set_index("variant")["method"]
    rows = []
    for cell in own.itertuples():
        rows.append(_quality_row(cell.group, methods[cell.variant], cell.variant, cell.group, cell))
    for domain, main in mains.items():
        for cell in theirs[theirs["group"] == main].itertuples():
            method = cell.variant.removesuffix(PUBLISHED_SUFFIX)
            if method in set(plain.loc[plain["domain"] == domain, "method"]):
                rows.append(_quality_row(domain, method, cell.variant, main, cell))
    return pd.DataFrame(rows)


def _quality_row(domain: str, method: str, variant: str, data_domain: str, cell) -> dict:
    return {
        "domain": domain,
        "method": method,
        "variant": variant,
        "data": data_domain.rsplit("-", 1)[1],
        "value": 100 * cell.value,
        "ci_low": 100 * cell.ci_low,
        "ci_high": 100 * cell.ci_high,
        "n_tasks": cell.n_tasks,
        "n_seeds": cell.n_seeds,
    }


def plot_quality(table: pd.DataFrame, path: Path) -> Path:
    """One panel per noisy/stitch domain; per method a group of bars: a sweep's variants (opaque),
    published ones (pale), the main table's published value on the play/navigate domain (hatched)."""
    from matplotlib.patches import Patch

    domains = ordered_domains(table["domain"].unique())
    colors = variant_colors(sorted(table["method"].unique()))
    kinds = {kind.lstrip("-") for kind in DATA_KINDS}
    columns = 2 if len(domains) > 1 else 1
    rows_n = -(-len(domains) // columns)
    figure = _figure(max(6.0, 0.7 * table["method"].nunique() + 2) * columns, 2.8 * rows_n)
    for index, domain in enumerate(domains):
        axis = figure.add_subplot(rows_n, columns, index + 1)
        cells = table[table["domain"] == domain]
        methods = sorted(cells["method"].unique())
        for x, method in enumerate(methods):
            bars = cells[cells["method"] == method].sort_values(["data", "variant"], key=_quality_order)
            width = 0.8 / len(bars)
            for k, row in enumerate(bars.itertuples()):
                error = (
                    [[row.value - row.ci_low], [row.ci_high - row.value]] if np.isfinite(row.ci_low) else None
                )
                main = row.data not in kinds
                pale = main or row.variant.endswith(PUBLISHED_SUFFIX)
                axis.bar(
                    x - 0.4 + width * (k + 0.5), row.value, width, color=colors[method], alpha=0.55 if pale else 1,
                    hatch="//" if main else None, edgecolor="black", yerr=error,
                )  # fmt: skip
        axis.set_xticks(range(len(methods)), methods, fontsize=8, rotation=30)
        axis.set_ylabel("success (%)")
        axis.set_title(domain)
    legend = [
        Patch(facecolor="0.4", edgecolor="black", label="this sweep, noisy/stitch data"),
        Patch(facecolor="0.4", alpha=0.55, edgecolor="black", label="published, noisy/stitch data"),
        Patch(
            facecolor="0.4", alpha=0.55, hatch="//", edgecolor="black", label="published, play/navigate data"
        ),
    ]
    figure.legend(handles=legend, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.02))
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(figure, path)


def _quality_order(column: pd.Series) -> pd.Series:
    """A method's bars: the sweep's variants, its published value, then the play/navigate one."""
    if column.name == "data":
        return column.map(lambda data: f"-{data}" in DATA_KINDS).map({True: 0, False: 1})
    return column.str.endswith(PUBLISHED_SUFFIX).astype(int)


def sensitivity_table(records: pd.DataFrame, **bootstrap) -> pd.DataFrame:
    """One row per (method, key, series, value): the one-key variants of each method and, marked
    `default`, the method at its defaults on the same tasks (series: sweep or published)."""
    parsed = records["variant"].str.removesuffix(PUBLISHED_SUFFIX).str.extract(_ONE_KEY)
    varied = records[parsed["method"].notna() & (parsed["method"] == records["method"])]
    if varied.empty:
        return pd.DataFrame()
    tasks = set(varied["task"])
    defaults = records[(records["variant"].str.removesuffix(PUBLISHED_SUFFIX) == records["method"])]
    defaults = defaults[defaults["task"].isin(tasks) & defaults["method"].isin(set(varied["method"]))]
    if (varied["source"] == PUBLISHED).any() and not (defaults["source"] == PUBLISHED).any():
        defaults = pd.concat([defaults, load_published(sorted(set(varied["method"])), sorted(tasks))])
    cells = _aggregate(pd.concat([varied, defaults], ignore_index=True), "all", **bootstrap)
    cells = cells[cells["group"] == ALL_TASKS]
    keys = parsed.loc[varied.index].groupby("method")["key"].unique().to_dict()
    relative = set(parsed.loc[varied.index].query("value.str.startswith('x')", engine="python")["key"])
    rows = []
    for cell in cells.itertuples():
        name = cell.variant.removesuffix(PUBLISHED_SUFFIX)
        series = "published" if cell.variant.endswith(PUBLISHED_SUFFIX) else "sweep"
        match = _ONE_KEY.match(name)
        if match:
            rows.append(_knob_row(match["method"], match["key"], series, match["value"], False, cell))
            continue
        for key in keys.get(name, []):  # the defaults: where each knob's axis has them
            value = "x1" if key in relative else KNOB_DEFAULTS.get(key)
            if value is not None:
                rows.append(_knob_row(name, key, series, value, True, cell))
    table = pd.DataFrame(rows)
    return table.sort_values(["method", "key", "series", "order"]).reset_index(drop=True)


def _knob_row(method: str, key: str, series: str, value: str, default: bool, cell) -> dict:
    return {
        "method": method,
        "key": key,
        "series": series,
        "value": value,
        "order": _order(value),
        "default": default,
        "success": 100 * cell.value,
        "ci_low": 100 * cell.ci_low,
        "ci_high": 100 * cell.ci_high,
        "n_tasks": cell.n_tasks,
        "n_seeds": cell.n_seeds,
    }


def _order(value: str) -> float:
    """Where a value sits on its axis: numbers (and xF factors) by size, true/false as 1/0."""
    text = value.lower().removeprefix("x")
    if text in ("true", "false"):
        return float(text == "true")
    try:
        return float(text)
    except ValueError:
        return float("inf")


def plot_sensitivity(table: pd.DataFrame, path: Path) -> Path:
    panels = list(table.groupby(["method", "key"], sort=False))
    figure = _figure(3.6 * len(panels), 3.2)
    styles = {"sweep": ("o", "-"), "published": ("s", "--")}
    for index, ((method, key), rows) in enumerate(panels):
        axis = figure.add_subplot(1, len(panels), index + 1)
        values = sorted(set(rows["value"]), key=_order)
        for series, own in rows.groupby("series"):
            own = own.set_index("value").reindex([v for v in values if v in set(own["value"])])
            x = [values.index(v) for v in own.index]
            error = np.vstack([own["success"] - own["ci_low"], own["ci_high"] - own["success"]])
            marker, line = styles[series]
            axis.errorbar(
                x, own["success"], yerr=np.nan_to_num(error), marker=marker, linestyle=line, label=series
            )
            marked = own[own["default"]]
            axis.scatter(
                [values.index(v) for v in marked.index], marked["success"], marker="*", s=200, zorder=3
            )
        axis.set_xticks(range(len(values)), values)
        axis.set_xlabel(key)
        axis.set_ylabel("success (%)")
        axis.set_title(method)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, path)
