"""The learning comparison's figure: each method's success curve in fp32 and in bf16, side by side,
mean over seeds with 95% stratified-bootstrap CIs (rliable, through flowarena's analysis), and one
line per method and step with the paired difference.

usage (from the repository root, after scripts/precision/learning.sh):
  python scripts/precision/curves.py results/precision docs/precision_curves.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from analysis.records import load  # noqa: E402
from analysis.stats import aggregate  # noqa: E402

PRECISION_SUFFIX = "@"


def main() -> int:
    sweep, out = Path(sys.argv[1]), Path(sys.argv[2])
    records = load(sweep)
    curves = aggregate(records, metrics=["mean"], step="all", by="all", progress=False)
    curves["precision"] = curves["variant"].map(lambda v: v.partition(PRECISION_SUFFIX)[2] or "fp32")
    methods = sorted(records["method"].unique())
    figure, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        own = curves[curves["variant"].str.partition(PRECISION_SUFFIX)[0].str.split("[").str[0] == method]
        for precision, rows in sorted(own.groupby("precision"), key=lambda group: group[0] != "fp32"):
            rows = rows.sort_values("step")
            seeds = int(rows["n_seeds"].max())
            ax.plot(rows["step"], 100 * rows["value"], marker="o", label=f"{precision} ({seeds} seeds)")
            ax.fill_between(rows["step"], 100 * rows["ci_low"], 100 * rows["ci_high"], alpha=0.2)
            for step, value, low, high in rows[["step", "value", "ci_low", "ci_high"]].itertuples(
                index=False
            ):
                print(
                    f"{method} {precision} step {step}: {100 * value:.1f} [{100 * low:.1f}, {100 * high:.1f}]"
                )
        ax.set_title(f"{method}: cube-single task1, 3 x 256, 2 critics")
        ax.set_xlabel("update")
        ax.set_ylabel("success (%), mean over seeds, 95% CI")
        ax.set_ylim(0, 60)
        ax.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
