"""report.html: the markdown report rendered into one self-contained page (`flowarena report --html`).

The page is report.md rendered by Python-Markdown (its `tables` extension), with every plot embedded
as a base64 PNG and the style sheet inline: no script, no server, no network, so the file alone
opens in a browser after being copied off the machine that wrote it.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

from analysis.errors import AnalysisError

REPORT_HTML = "report.html"
_IMAGE = re.compile(r'<img alt="(?P<alt>[^"]*)" src="(?P<src>[^"]+)"\s*/?>')
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1b1b1b; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #eee; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .88rem; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: .25rem .55rem; text-align: left; white-space: nowrap; }
th { background: #f3f4f6; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
code { background: #f3f4f6; padding: 0 .2rem; border-radius: 3px; }
"""
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
{body}
</body>
</html>
"""


def render_html(report_md: str, out_dir: str | Path, title: str) -> str:
    """The page of `report_md`, its images (files in `out_dir`) embedded."""
    body = markdown.markdown(report_md, extensions=["tables"], output_format="html")
    out = Path(out_dir)
    return PAGE.format(title=html.escape(title), style=STYLE, body=_IMAGE.sub(lambda m: _embed(m, out), body))


def _embed(match: re.Match, out: Path) -> str:
    path = out / html.unescape(match["src"])
    if path.suffix.lower() != ".png" or not path.is_file():
        raise AnalysisError(f"report image {path} is missing; it cannot be embedded in {REPORT_HTML}")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{match["alt"]}" src="data:image/png;base64,{data}">'


def write_html(report_md: str, out_dir: str | Path, title: str) -> Path:
    """Write OUT/report.html and return its path."""
    path = Path(out_dir) / REPORT_HTML
    path.write_text(render_html(report_md, out_dir, title), encoding="utf-8")
    return path
