"""The comparison report from hand-written records (no training): numbers, failures, escaping,
figures, merging, determinism, and the page as a real headless browser shows it."""
import json
import math
import re
import shutil
import statistics
import subprocess
import sys

import pandas as pd
import pytest
import report_fixture as fx
from conftest import ROOT, leitai
from headless import evaluate, find_chromium, inspect, open_page

from suite.cli.app import main
from suite.report import write_report
from suite.report.figures import pareto_front
from suite.report.stats import summarise, t975

FILES = ("results.csv", "results.parquet", "curves.csv", "generations.csv", "summary.md", "report.html")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = fx.write(tmp_path_factory.mktemp("fixture") / "shootout", fx.records())
    write_report([out], out)
    return out


def md_row(text: str, task: str, method: str) -> list[str]:
    """The cells of ``method``'s row in the table of ``task`` in summary.md."""
    section = text.split(f"## {task} ")[1].split("\n## ")[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == method:
            return cells
    raise AssertionError(f"no row for {method} in {task}")


def md_header(text: str, task: str) -> list[str]:
    section = text.split(f"## {task} ")[1]
    line = next(ln for ln in section.splitlines() if ln.startswith("| method"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_t_quantiles_and_summary():
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(30) == 2.042
    assert abs(t975(40) - 2.0211) < 1e-4 and abs(t975(120) - 1.9799) < 1e-4
    s = summarise([0.6, 0.7, None, float("nan")])
    assert s.n == 2 and math.isclose(s.mean, 0.65)
    assert math.isclose(s.std, statistics.stdev([0.6, 0.7]))
    half = 12.706 * statistics.stdev([0.6, 0.7]) / math.sqrt(2)
    assert math.isclose(s.ci_low, 0.65 - half) and math.isclose(s.ci_high, 0.65 + half)
    one = summarise([3.0])
    assert one.n == 1 and one.mean == 3.0 and math.isnan(one.std) and math.isnan(one.ci_low)


def test_table_has_mean_std_ci_and_seed_counts(report):
    md = (report / "summary.md").read_text(encoding="utf-8")
    header = md_header(md, "zh-demo")
    lora = dict(zip(header, md_row(md, "zh-demo", "lora")))
    # seeds 0 and 1 finished (scores 0.6, 0.7), seed 2 failed: n = 2
    assert lora["runs"] == "ok 2, failed 1" and lora["n"] == "2"
    assert lora["accuracy"] == "0.650 ± 0.071"  # mean ± sample std (0.0707)
    assert lora["95% CI"] == "[0.0147, 1.29]"  # 0.65 ± 12.706·0.0707/√2
    assert lora["dev loss"] == "2.10 ± 0.14"
    assert lora["peak memory"] == "55.0 ± 7.1 MB"
    assert lora["trainable params (%)"] == "1,000 (1.00%)"
    full = dict(zip(header, md_row(md, "zh-demo", "full")))
    assert full["runs"] == "ok 1, oom 1" and full["n"] == "1"
    assert full["accuracy"] == "0.900" and full["95% CI"] == "–"  # one seed: no spread, no interval
    assert full["trainable params (%)"] == "100,000 (100%)" and full["peak memory"] == "400 MB"
    # failed and diverged methods keep their row, with nothing to average
    assert dict(zip(header, md_row(md, "zh-demo", "crasher")))["runs"] == "failed 1"
    assert dict(zip(header, md_row(md, "zh-demo", "nanner")))["runs"] == "diverged 1"
    # rows by mean score, methods without a score last
    order = [line.split("|")[1].strip() for line in md.split("## zh-demo ")[1].split("###")[0].splitlines()
             if line.startswith("| ") and not line.startswith("| method")]
    assert order == ["full", "lora", fx.CJK_METHOD, "crasher", "nanner"]
    assert "peak memory: cpu_peak_rss_delta" in md


def test_failed_runs_are_listed_with_errors(report):
    md = (report / "summary.md").read_text(encoding="utf-8")
    failed = md.split("## Runs that did not finish ok")[1].split("\n## ")[0]
    for rid, status in [("zh-demo__lora__s2", "failed"), ("zh-demo__full__s1", "oom"),
                        ("zh-demo__crasher__s0", "failed"), ("zh-demo__nanner__s0", "diverged")]:
        line = next(ln for ln in failed.splitlines() if rid in ln)
        assert f"| {status} " in line
    assert "OutOfMemoryError: CUDA out of memory" in failed
    results = pd.read_csv(report / "results.csv")
    assert len(results) == len(fx.records())  # nothing dropped


def test_overall_table_ranks_methods_across_tasks(report):
    md = (report / "summary.md").read_text(encoding="utf-8")
    overall = md.split("## Overall")[1].split("\n## ")[0]
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip().strip("|").split("|")]
            for ln in overall.splitlines() if ln.startswith("| ") and not ln.startswith("| method")}
    assert list(rows)[:2] == ["full", "lora"]
    assert rows["full"][1:4] == ["2/2", "1.00", "100"]
    # lora: ranks 2 and 2; relative score (0.65/0.9 + 0.4/0.8) / 2
    assert rows["lora"][1:4] == ["2/2", "2.00", f"{100 * (0.65 / 0.9 + 0.4 / 0.8) / 2:.1f}"]
    # the Chinese-named method failed on zh-other: last place there, 0 relative score
    assert rows[fx.CJK_METHOD][1:4] == ["1/2", "3.00", f"{100 * (0.5 / 0.9) / 2:.1f}"]


def test_unknown_metrics_pass_through(report):
    results = pd.read_csv(report / "results.csv")
    assert "forgetting_delta" in results.columns
    assert results.set_index("run_id").loc["zh-other__full__s0", "forgetting_delta"] == 0.5
    md = (report / "summary.md").read_text(encoding="utf-8")
    assert "forgetting_delta" in md.split("## zh-other")[1]


def test_answers_side_by_side(report):
    md = (report / "summary.md").read_text(encoding="utf-8")
    answers = md.split("## zh-demo ")[1].split("### Answers side by side")[1].split("###")[0]
    lines = [ln for ln in answers.splitlines() if re.match(r"\| ex\d", ln)]
    # ex3 is missing from one method's run: the first five ids all methods answered, natural order
    assert [ln.split("|")[1].strip() for ln in lines] == ["ex1", "ex2", "ex4", "ex5", "ex6"]
    # the lowest seed answers, every method that has an ok run has a column
    assert "lora-s0-ex2" in lines[1] and "lora-s1" not in answers
    assert f"{fx.CJK_METHOD}-s0-ex2" in lines[1] and "full-s0-ex2" in lines[1]
    assert "| 负面 " in lines[1]  # the reference


def test_versions_differences_are_warned(report):
    md = (report / "summary.md").read_text(encoding="utf-8")
    assert "**Warning:** runs differ in torch: 2.12.0 (1 run); 2.13.0 (10 runs)" in md
    page = (report / "report.html").read_text(encoding="utf-8")
    assert "runs differ in torch" in page and "5.23.0" in page and "Test CPU" in page


def test_what_each_method_ran_is_listed_and_fallbacks_warned(report):
    md = (report / "summary.md").read_text(encoding="utf-8")
    ran = md.split("## zh-demo ")[1].split("### What ran")[1].split("###")[0]
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in ran.splitlines()
            if ln.startswith("| ") and not ln.startswith("| method")]
    assert rows[0] == ["lora", "0, 1", "peft_type: LORA; target_modules: q_proj, v_proj; targets_from: found by role"]
    assert rows[1] == [fx.CJK_METHOD, "0", "init: prune"]  # its seeds differ: one row each
    assert rows[2][:2] == [fx.CJK_METHOD, "1"] and rows[2][2].startswith("init: random; fallback: init='prune' cannot")
    assert len(rows) == 3  # a method that recorded nothing has no row
    assert f"**Warning:** task zh-demo: {fx.CJK_METHOD} (seed 1): init='prune' cannot read" in md
    results = pd.read_csv(report / "results.csv").set_index("run_id")
    assert json.loads(results.loc["zh-demo__lora__s0", "method_info"]) == fx.LORA_INFO
    assert pd.isna(results.loc["zh-demo__full__s0", "method_info"])
    page = (report / "report.html").read_text(encoding="utf-8")
    assert "<h3>What ran</h3>" in page and "targets_from: found by role" in page
    assert page.count("init=&#x27;prune&#x27; cannot read") == 3  # the table and both warnings


def test_text_from_records_is_escaped(report):
    page = (report / "report.html").read_text(encoding="utf-8")
    assert fx.PWNED not in page and fx.ERROR_HTML not in page
    assert "&lt;script&gt;window.leitaiPwned = 1&lt;/script&gt;" in page
    assert "<script" not in page.lower()  # the page has no scripts of its own either
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched
    md = (report / "summary.md").read_text(encoding="utf-8")
    assert fx.PWNED not in md and "&lt;script&gt;" in md


def test_figures_keep_chinese_as_text_without_any_cjk_font(tmp_path, monkeypatch):
    """A fresh machine: matplotlib knows no CJK font. The SVG still holds the characters as text."""
    import warnings

    from suite.report import figures

    monkeypatch.setattr(figures, "_families", lambda: ["DejaVu Sans"])
    out = fx.write(tmp_path / "s", fx.records())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Glyph missing" noise either
        write_report([out], out)
    page = (out / "report.html").read_text(encoding="utf-8")
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert len(svgs) == 2 * 2 + 1  # loss and Pareto per task, memory
    texts = [t for svg in svgs for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]
    assert any(fx.CJK_METHOD in t for t in texts)
    assert not any("<path" in svg and "glyph" in svg.lower() for svg in svgs)  # not drawn as glyph paths
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # figures share one document


def test_pareto_front():
    points = [("a", 1, 0.5), ("b", 10, 0.7), ("c", 100, 0.6), ("d", 1, 0.4), ("e", 100, 0.9)]
    assert pareto_front(points) == ["a", "b", "e"]
    assert pareto_front([("x", 1, 1.0), ("y", 1, 1.0)]) == ["x", "y"]  # ties dominate nobody


def test_a_tie_at_the_same_score_is_not_given_a_p_value(tmp_path):
    """Every answer wrong: the methods tie at 0 and the sign-flip test's p is 1 by construction,
    so the verdict says why they tie instead of printing "p ≥ 1"; a tie with different scores
    still gives its p-value."""
    def scored(method, per_example):
        r = fx.record("zh-demo", method, 0, score=sum(per_example) / len(per_example), dev=2.0)
        for g, value in zip(r["generations"], per_example):
            g["example_score"] = value
        return r

    zero = fx.write(tmp_path / "zero", [scored("lora", [0] * 10), scored("full", [0] * 10)])
    write_report([zero], zero)
    md = (zero / "summary.md").read_text(encoding="utf-8")
    assert "are tied for best (accuracy 0, 0; the same mean score on the same test examples" in md
    assert "p ≥ 1" not in md
    for name, full, says in (("two", [1] * 4 + [1, 0] * 3, r"0\.700, 0\.500; no difference at 95% confidence, paired test p ≥ 0\.\d+\)"),
                             ("one", [1, 1] + [1, 0] * 4, r"0\.600, 0\.500; no difference at 95% confidence, paired test p = 1\)")):
        out = fx.write(tmp_path / name, [scored("lora", [1, 0] * 5), scored("full", full)])
        write_report([out], out)
        assert re.search(r"full and lora are tied for best \(accuracy " + says, (out / "summary.md").read_text(encoding="utf-8"))


def test_rebuilding_gives_identical_files(report, tmp_path):
    before = {f: (report / f).read_bytes() for f in FILES}
    write_report([report], report)
    assert {f: (report / f).read_bytes() for f in FILES} == before
    # and a copy of the records elsewhere gives the same report
    copy = tmp_path / "copy"
    shutil.copytree(report / "runs", copy / "runs")
    write_report([copy], copy)
    assert {f: (copy / f).read_bytes() for f in FILES} == before


def test_merging_directories(report, tmp_path, capsys):
    records = fx.records()
    a = fx.write(tmp_path / "a", [r for r in records if r["seed"] == 0])
    b = fx.write(tmp_path / "b", [r for r in records if r["seed"] != 0])
    merged = tmp_path / "merged"
    proc = leitai("report", a, b, "--out", merged)  # as a user runs it
    assert proc.returncode == 0, proc.stderr
    assert f"report of {len(records)} runs" in proc.stdout
    for f in ("summary.md", "results.csv", "report.html"):
        assert (merged / f).read_bytes() == (report / f).read_bytes(), f
    assert sorted(p.parent.name for p in merged.glob("runs/*/record.json")) == sorted(r["run_id"] for r in records)
    assert not (a / "summary.md").exists()  # the inputs are left as they were
    checker = ROOT.parent / "shared" / "tools" / "check_output.py"
    if checker.exists():
        check = subprocess.run([sys.executable, str(checker), str(merged)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout

    # the same command line in this process from here on (starting leitai costs seconds)
    def cli(*args):
        code = main([str(x) for x in args])
        out, err = capsys.readouterr()
        return code, out, err

    code, _, _ = cli("report", merged)  # the merged directory stands on its own
    assert code == 0 and (merged / "summary.md").read_bytes() == (report / "summary.md").read_bytes()
    # the same cell in two directories is an error naming both files
    dup = fx.write(tmp_path / "dup", [records[0]])
    code, _, err = cli("report", a, dup, "--out", tmp_path / "clash")
    assert code == 2 and err.count("\n") == 1
    assert records[0]["run_id"] in err and str(a) in err and str(dup) in err
    # several directories need --out; an --out holding other runs is refused
    code, _, err = cli("report", a, b)
    assert code == 2 and "needs --out" in err
    code, _, err = cli("report", a, "--out", b)
    assert code == 2 and "not in the directories being reported" in err


BROWSER_CHECK = r"""
const cjk = /[\u3400-\u9fff\uf900-\ufaff]/;
const out = {scripts: document.scripts.length, pwned: window.leitaiPwned ?? null};
// every <img> (none today) and every figure decodes; an inline SVG is decoded as a standalone image
out.images = await Promise.all([...document.images].map(async img => {
  try { await img.decode(); return img.naturalWidth > 0; } catch (e) { return false; }
}));
out.figures = await Promise.all([...document.querySelectorAll("figure svg")].map(async svg => {
  const box = svg.getBoundingClientRect();
  const img = new Image();
  img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(new XMLSerializer().serializeToString(svg));
  let decoded = true;
  try { await img.decode(); } catch (e) { decoded = false; }
  return {width: box.width, height: box.height, decoded, naturalWidth: img.naturalWidth,
          marks: svg.querySelectorAll("path, use").length};
}));
// Chinese characters drawn in the font each element uses: a missing glyph is drawn as the same
// box (.notdef) for every character, so two different characters, or a character and an
// unassigned code point, rendering to the same pixels means tofu.
const pixels = (ch, font) => {
  const c = document.createElement("canvas"); c.width = c.height = 64;
  const ctx = c.getContext("2d"); ctx.font = font; ctx.textBaseline = "top"; ctx.fillText(ch, 4, 4);
  return ctx.getImageData(0, 0, 64, 64).data.join(",");
};
const fonts = new Map();
const elements = [...document.querySelectorAll("svg text, td, th, h1, li")];
out.svgCjkTexts = elements.filter(el => el.closest("svg") && cjk.test(el.textContent)).length;
for (const el of elements) {
  if (!cjk.test(el.textContent)) continue;
  const font = "40px " + getComputedStyle(el).fontFamily;
  if (!fonts.has(font)) fonts.set(font, new Set());
  for (const ch of el.textContent) if (cjk.test(ch)) fonts.get(font).add(ch);
}
out.tofu = [];
out.checked = 0;
for (const [font, chars] of fonts) {
  const box = pixels("\u0378", font);
  const seen = new Map();
  for (const ch of chars) {
    const p = pixels(ch, font);
    out.checked += 1;
    if (p === box || seen.has(p)) out.tofu.push(ch + " in " + font);
    seen.set(p, ch);
  }
}
// the check can see tofu: two unassigned code points draw the same box
out.controlSeesTofu = pixels("\u0378", "40px sans-serif") === pixels("\u0379", "40px sans-serif");
return out;
"""


def test_report_in_a_headless_browser(report):
    """Chromium loads report.html: no console errors, nothing fetched, no script ran, figures
    decoded, Chinese drawn as characters (by the browser's fonts) in figures and tables."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it: apt-get install chromium fonts-wqy-zenhei)")
    seen = inspect(chromium, report / "report.html", BROWSER_CHECK)
    assert seen["console_errors"] == [] and seen["exceptions"] == [] and seen["log_errors"] == [], seen
    assert [u for u in seen["requests"] if not u.startswith(("file:", "data:"))] == []
    v = seen["value"]
    assert v["scripts"] == 0 and v["pwned"] is None  # the <script> and onerror in the records stayed text
    assert all(v["images"])
    assert len(v["figures"]) == 5
    for fig in v["figures"]:
        assert fig["decoded"] and fig["naturalWidth"] > 0 and fig["width"] > 300 and fig["height"] > 100, fig
        assert fig["marks"] > 10
    assert v["controlSeesTofu"], "the glyph check cannot tell a missing glyph"
    assert v["svgCjkTexts"] > 0 and v["checked"] > 10
    assert v["tofu"] == [], (
        "Chinese drawn as boxes: the browser has no CJK font (install fonts-wqy-zenhei or fonts-noto-cjk)"
    )


FITS_CHECK = r"""
const page = document.documentElement.clientWidth;
const scrolls = el => { for (let p = el.parentElement; p; p = p.parentElement) {
  const o = getComputedStyle(p).overflowX; if (o === "auto" || o === "scroll") return true; } return false; };
const out = {page, scrollWidth: document.documentElement.scrollWidth, wide: [], cut: [], texts: 0, scrolling: 0};
for (const el of document.body.querySelectorAll("*")) {
  if (el.closest("svg")) continue;
  const r = el.getBoundingClientRect();
  if (r.width && (r.right > page + 1 || r.left < -1) && !scrolls(el))
    out.wide.push(`${el.tagName}.${el.className} ${Math.round(r.left)}..${Math.round(r.right)}`);
}
for (const box of document.querySelectorAll(".scroll")) out.scrolling += box.scrollWidth > box.clientWidth;
for (const svg of document.querySelectorAll("figure svg")) {
  const s = svg.getBoundingClientRect();
  for (const t of svg.querySelectorAll("text")) {
    const r = t.getBoundingClientRect();
    if (!r.width) continue;
    out.texts++;
    if (r.left < s.left - 1 || r.right > s.right + 1 || r.top < s.top - 1 || r.bottom > s.bottom + 1)
      out.cut.push(`${svg.getAttribute("aria-label")}: ${t.textContent}`);
  }
}
return out;
"""


def test_the_report_fits_its_page_at_two_widths(report, tmp_path):
    """At 1,000 and 1,400 px nothing is wider than the page outside a scroll box (a wide table
    scrolls in its own), and no text of a figure (a legend entry, a label) reaches past the
    figure's edge, also with long method names that fill a legend."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it: apt-get install chromium fonts-wqy-zenhei)")
    names = [f"{kind}-with-a-rather-long-name" for kind in ("lora", "prefix-tuning", "prompt-tuning", "p-tuning",
                                                            "bottleneck", "full")]
    long = fx.write(tmp_path / "long", [fx.record("zh-demo", m, 0, score=0.1 * i, dev=2.0, params=1000 * (i + 1),
                                                   memory=(i + 1) * 40e6) for i, m in enumerate(names)])
    write_report([long], long)
    for page in (report / "report.html", long / "report.html"):
        for width in (1000, 1400):
            with open_page(chromium, page, width, 900) as (b, s):
                v = evaluate(b, s, FITS_CHECK)
            assert v["page"] == width and v["scrollWidth"] == width, v
            assert v["wide"] == [] and v["cut"] == [], (page, width, v)
            assert v["texts"] > 50, v  # the check saw the figures' text
            if width == 1000 and page.parent == report:
                assert v["scrolling"] >= 1, v  # the main table is wider than the page: its box scrolls
