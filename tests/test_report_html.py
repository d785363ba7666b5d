"""report.html (`flowarena report --html`): one self-contained page, rendered in headless Chromium,
with every table and plot of report.md and no console error; and the published curves drawn under
a sweep's learning curves."""

from __future__ import annotations

import os
import re

import pandas as pd
import pytest
from browser_support import chromium_binary, open_page
from test_analysis import PUZZLE, write_sweep

from analysis.records import load_published
from analysis.report import _published_curves
from analysis.scores import ALL_TASKS
from harness.cli import main

PROBE = """({
  tables: [...document.querySelectorAll('table')].map(t => t.rows.length),
  images: [...document.images].map(i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0,
                                         width: i.naturalWidth, src: i.src.slice(0, 22)})),
  headings: [...document.querySelectorAll('h1, h2, h3')].map(h => h.textContent),
})"""


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but chromium is not installed: .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it and runs this test")
    return binary


def markdown_tables(report_md: str) -> list[int]:
    """Rows (header included) of each table of report.md."""
    tables, rows = [], 0
    for line in [*report_md.splitlines(), ""]:
        if line.startswith("|"):
            rows += not line.startswith("|---")
        elif rows:
            tables.append(rows)
            rows = 0
    return tables


def test_checker_sees_console_errors_and_broken_images(chromium, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><body><table><tr><td>x</td></tr></table>"
        '<img alt="broken" src="data:image/png;base64,AAAA"><img alt="absent" src="absent.png">'
        '<script>console.error("boom")</script></body></html>'
    )
    seen = open_page(chromium, page.as_uri(), tmp_path / "profile", PROBE)
    assert seen.value["tables"] == [1]
    assert [i["loaded"] for i in seen.value["images"]] == [False, False]
    assert any("boom" in e for e in seen.errors) and any("absent.png" in e for e in seen.errors)


def test_html_report_renders_every_table_and_plot(chromium, tmp_path, capsys):
    sweep = tmp_path / "sweeps" / "synth"
    sweep.mkdir(parents=True)
    write_sweep(sweep)
    out = tmp_path / "r"
    argv = ["report", str(sweep), "--out", str(out), "--html", "--reps", "50", "--no-progress"]
    assert main([*argv, "--pair", "qam", "fql"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    page_text = (out / "report.html").read_text()
    assert not re.search(r"<script|<link|(src|href)=\"(https?:)?//", page_text)  # nothing fetched
    report_md = (out / "report.md").read_text()
    seen = open_page(chromium, (out / "report.html").as_uri(), tmp_path / "profile", PROBE)
    assert seen.errors == []
    assert seen.value["tables"] == markdown_tables(report_md) and len(seen.value["tables"]) >= 8
    alts = re.findall(r"!\[([^\]]+)\]\(", report_md)
    assert [i["alt"] for i in seen.value["images"]] == alts and len(alts) == 5
    assert alts[-1] == "Sensitivity"  # qam[inv_temp=3] changes one key of qam: its sensitivity figure
    for image in seen.value["images"]:
        assert image["loaded"] and image["width"] >= 300 and image["src"] == "data:image/png;base64,"
    assert "Paired comparison: qam vs fql" in seen.value["headings"]


def test_published_curves_average_the_sweeps_tasks_up_to_its_last_step():
    steps = [50_000, 100_000]
    rows = [
        {"method": "qam", "variant": "qam", "task": task, "domain": "puzzle-3x3-play", "seed": seed,
         "phase": "offline", "step": step, "success": 0.5}
        for task in PUZZLE for seed in range(2) for step in steps
    ]  # fmt: skip
    own = pd.DataFrame(rows).assign(source="sweep", sweep="s", eval_params="")
    curves, note = _published_curves(own, "offline")
    assert "qam (published)" in note and set(curves["variant"]) == {"qam (published)"}
    assert set(curves["group"]) == {"puzzle-3x3-play", ALL_TASKS} and set(curves["step"]) == set(steps)
    published = load_published(["qam"], PUZZLE)
    for step in steps:
        expected = published[(published["step"] == step) & (published["phase"] == "offline")][
            "success"
        ].mean()
        value = curves[(curves["group"] == ALL_TASKS) & (curves["step"] == step)]["value"].item()
        assert value == pytest.approx(expected)
    short = own.assign(step=own["step"] // 1000)  # a sweep that never reaches a published step
    assert _published_curves(short, "offline")[0] is None
