"""``report.html``: one self-contained file, readable offline.

No scripts, no external stylesheets, fonts or images: the CSS is inline and the figures are
inline SVG. Every text that came from a record (task and method names, prompts, answers,
errors, versions) goes through :func:`html.escape`; the only markup not written here is the
figures' SVG, which matplotlib writes with its own XML escaping.
"""
from __future__ import annotations

import hashlib
import html
import re

import pandas as pd

from .content import NOTES, OVERALL_NOTE, RAN_NOTE, TURNS_NOTE, Report
from .figures import CJK_FAMILIES
from .formatting import numeric_column
from .retention import NOTE as RETENTION_NOTE

FONTS = ", ".join(["system-ui", "-apple-system", "'Segoe UI'", "'DejaVu Sans'"] + [f"'{f}'" for f in CJK_FAMILIES]
                  + ["sans-serif"])
# figures: the font matplotlib measured their text with first, then any CJK font the reader has
FIGURE_FONTS = ", ".join(["'DejaVu Sans'", "Verdana"] + [f"'{f}'" for f in CJK_FAMILIES] + ["sans-serif"])
CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#dde1e8;--zebra:#f6f7f9;--warn:#fff4d6;--warnline:#e0b020;--bad:#b42318}
*{box-sizing:border-box}
body{font-family:%(fonts)s;color:var(--fg);margin:0 auto;max-width:1320px;padding:1.5rem 1rem 3rem;line-height:1.45}
h1{font-size:1.6rem;margin:.2rem 0 .6rem}
h2{font-size:1.25rem;margin:2.2rem 0 .6rem;padding-bottom:.25rem;border-bottom:2px solid var(--line)}
h3{font-size:1.02rem;margin:1.4rem 0 .5rem}
.facts{display:flex;flex-wrap:wrap;gap:.4rem 1.6rem;margin:0 0 1rem;padding:0;list-style:none;color:var(--muted)}
.facts b{color:var(--fg);font-weight:600}
.warning{background:var(--warn);border-left:4px solid var(--warnline);padding:.55rem .8rem;margin:.5rem 0;border-radius:3px}
nav{font-size:.92rem;margin:.8rem 0}
nav a{margin-right:1rem}
.scroll{overflow-x:auto;margin:.4rem 0 .6rem}
table{border-collapse:collapse;font-size:.82rem}
th,td{border-bottom:1px solid var(--line);padding:.3rem .4rem;vertical-align:top;text-align:left}
th{background:#eef1f5;font-weight:600;min-width:3.2rem}
tbody tr:nth-child(even){background:var(--zebra)}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.num span{white-space:nowrap}
th.num{text-align:right}
td.text{white-space:pre-wrap;min-width:6rem;max-width:26rem}
td.empty{color:var(--muted);font-style:italic}
td.bad{color:var(--bad);font-weight:600}
td.runs{white-space:nowrap}
tbody th{background:none}
tbody th span{white-space:nowrap}
figure{margin:1rem 0}
figure svg{width:100%%;max-width:860px;height:auto;display:block}
figure svg text{font-family:%(figure_fonts)s !important}
figcaption{color:var(--muted);font-size:.85rem}
.note{color:var(--muted);font-size:.85rem;margin:.3rem 0}
footer{margin-top:2.5rem;border-top:2px solid var(--line);padding-top:.6rem;font-size:.88rem}
code{font-size:.85em}
""" % {"fonts": FONTS, "figure_fonts": FIGURE_FONTS}


def e(value) -> str:
    """Escaped text of ``value`` (empty for missing values)."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return ""
    return html.escape(str(value), quote=True)


def anchor(text: str) -> str:
    """An id for a heading: ASCII letters, digits and dashes, plus a short hash for the rest."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return f"t-{slug}-{hashlib.sha1(str(text).encode()).hexdigest()[:6]}"


def table(df: pd.DataFrame, index: bool = True, text_columns: tuple = (), bad_column: str | None = None,
          left: tuple = ()) -> str:
    """``df`` as an HTML table; cells escaped, numbers right-aligned (except ``left`` columns),
    ``text_columns`` wrapped with empty texts marked as such."""
    frame = df.reset_index() if index else df
    cols = list(frame.columns)
    kinds = {c: "text" if c in text_columns else ("num" if c not in left and numeric_column(frame[c].map(e)) else "")
             for c in cols}
    out = ["<div class='scroll'><table><thead><tr>"]
    out += [f"<th class='{kinds[c]}'>{e(c)}</th>" for c in cols]
    out.append("</tr></thead><tbody>")
    for row in frame.itertuples(index=False):
        out.append("<tr>")
        for i, (c, v) in enumerate(zip(cols, row)):
            cls = kinds[c]
            if c == bad_column:
                cls += " runs" + (" bad" if re.search(r"\b(?!ok\b)[a-z]+ \d", str(v)) else "")
            tag = "th" if index and i == 0 else "td"
            if cls == "text" and e(v).strip() == "":
                out.append("<td class='empty'>empty</td>")  # an empty answer is an answer
                continue
            text = _wrappable(e(v)) if cls == "num" else _words(e(v)) if tag == "th" else e(v)
            out.append(f"<{tag} class='{cls.strip()}'>{text}</{tag}>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _wrappable(text: str) -> str:
    """A number cell that may wrap only between its parts ("0.690 | ± 0.019", "5,120 |
    (0.09%)"), so a wide table narrows to its page before it needs its scroll box."""
    parts = re.split(r" (?=[±(\[])", text)
    return " ".join(f"<span>{part}</span>" for part in parts) if len(parts) > 1 else text


def _words(text: str) -> str:
    """A row's name that may wrap at its spaces only, never inside a method's name at a hyphen
    ("baseline: | majority | label", "prefix-tuning")."""
    words = text.split(" ")
    return " ".join(f"<span>{w}</span>" for w in words) if len(words) > 1 else f"<span>{text}</span>"


def render(report: Report) -> str:
    p = ["<!doctype html>", "<html lang='zh'><head><meta charset='utf-8'>",
         "<meta name='viewport' content='width=device-width, initial-scale=1'>",
         # nothing on this page may load anything from anywhere
         "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'; "
         "img-src data:\">",
         "<title>leitai shootout</title>", f"<style>{CSS}</style></head><body>",
         "<header><h1>leitai 擂台 shootout</h1><ul class='facts'>"]
    p += [f"<li><b>{e(k)}</b> {e(v)}</li>" for k, v in report.facts]
    p.append("</ul>")
    p += [f"<div class='warning' role='alert'><b>Warning:</b> {e(w)}</div>" for w in report.warnings]
    if not report.results.empty:
        links = [("verdict", "Verdict")] if any(s.verdict for s in report.sections) else []
        links += ([("overall", "Overall")] if report.overall is not None else [])
        links += [(anchor(s.task), s.task) for s in report.sections]
        links += [("memory", "Memory")] if report.memory_figure else []
        links += [("failed", "Runs not ok")] if not report.failed.empty else []
        links += [("notes", "How to read"), ("environment", "Environment")]
        p.append("<nav>" + "".join(f"<a href='#{e(a)}'>{e(t)}</a>" for a, t in links) + "</nav>")
    p.append("</header><main>")
    verdicts = [v for section in report.sections if section.verdict for v in section.verdict.sentences]
    if verdicts:
        p += ["<section id='verdict'><h2>Verdict</h2>"] + [f"<p>{e(v)}</p>" for v in verdicts]
        p.append("<p class='note'>How the tests work: see <a href='#notes'>How to read the tables</a>.</p></section>")
    if report.overall is not None:
        p += ["<section id='overall'><h2>Overall</h2>", table(report.overall),
              f"<p class='note'>{e(OVERALL_NOTE)}</p></section>"]
    for s in report.sections:
        p += [f"<section id='{anchor(s.task)}'><h2>{e(s.task)} <small>({e(s.score_name)})</small></h2>",
              table(s.table, bad_column="runs")]
        p += [f"<p class='note'>{e(n)}.</p>" for n in s.notes]
        if s.verdict is not None and len(s.verdict.pairwise) > 1:
            p += ["<details><summary>Pairwise differences</summary>",
                  "<p class='note'>Score of the row minus the column's, mean over the shared test examples; * where a "
                  "paired test says they differ (p &lt; 0.05).</p>", table(s.verdict.pairwise), "</details>"]
        if not s.retention.empty:
            p += ["<h3>Retention</h3>", table(s.retention), f"<p class='note'>{e(RETENTION_NOTE)}</p>"]
        if not s.turns.empty:
            p += ["<h3>Score by turn</h3>", table(s.turns), f"<p class='note'>{e(TURNS_NOTE)}</p>"]
        if not s.ran.empty:
            p += ["<h3>What ran</h3>", f"<p class='note'>{e(RAN_NOTE)}</p>", table(s.ran, index=False, text_columns=("what ran",), left=("seeds",))]
        for caption, svg in s.figures.items():
            p.append(f"<figure>{svg}<figcaption>{e(caption)}, {e(s.task)}</figcaption></figure>")
        if not s.answers.empty:
            p += ["<h3>Answers side by side</h3>",
                  "<p class='note'>The same test prompts for every method; the run with the lowest seed answers.</p>",
                  table(s.answers, index=False, text_columns=tuple(c for c in s.answers.columns if c != "example"))]
        if not s.more.empty:
            p += ["<details><summary>More measurements</summary>", table(s.more), "</details>"]
        p.append("</section>")
    if report.memory_figure:
        p += ["<section id='memory'><h2>Memory</h2>",
              f"<figure>{report.memory_figure}<figcaption>Peak memory per method</figcaption></figure></section>"]
    if not report.failed.empty:
        p += ["<section id='failed'><h2>Runs that did not finish ok</h2>",
              table(report.failed, index=False, text_columns=("error",)), "</section>"]
    p += ["<section id='notes'><h2>How to read the tables</h2><ul>"] + [f"<li>{e(n)}</li>" for n in NOTES]
    p.append("</ul></section></main>")
    p += ["<footer id='environment'><h2>Environment</h2>",
          "<p class='note'>The versions, commit, device and dtype each run recorded; runs that failed before "
          "starting have none.</p>",
          table(report.environments, index=False, left=tuple(c for c in report.environments.columns if c != "runs"))]
    p += [f"<div class='warning'><b>Warning:</b> {e(w)}</div>" for w in report.warnings]
    p.append("<p class='note'>Written by <code>leitai report</code> from runs/*/record.json.</p></footer>")
    p.append("</body></html>\n")
    return "\n".join(p)
