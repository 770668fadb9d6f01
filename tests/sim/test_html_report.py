"""The HTML report: one self-contained page, checked by parsing it and in a real browser."""

from __future__ import annotations

import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from moonpool.sim import FixedCount, SimulationReport
from tests.examples import load_example

ROOT = Path(__file__).resolve().parents[2]
CLI = (sys.executable, "-m", "moonpool", "run", "--no-database")


def _report() -> SimulationReport:
    """A real run with failures: the lost-update example fails on some of these seeds."""
    example = load_example("lost_update")
    builder = example.simulation().set_base_seed(5).set_iteration_control(FixedCount(30))
    report: SimulationReport = builder.set_database(None).run()
    assert report.failures, "base seed 5 has failing seeds"
    return report


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.rows: dict[str, int] = {}
        self._table: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if attributes.get("id"):
            self.ids[str(attributes["id"])] = tag
        if tag == "table":
            self._table = attributes.get("id")
        if tag == "tr" and self._table:
            self.rows[self._table] = self.rows.get(self._table, 0) + 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_page_has_the_tables_the_chart_and_each_failure() -> None:
    report = _report()
    page = _Page()
    page.feed(report.to_html())
    text = "".join(page.text)
    assert page.ids == {
        "summary": "table", "assertions": "table", "faults": "table", "chart": "svg",
        "failures": "div",
    }  # fmt: skip
    assert page.rows["assertions"] == 1 + len(report.assertions)
    assert page.rows["faults"] == 1 + len(report.fault_totals)
    bars = [attrs for tag, attrs in page.tags if tag == "rect"]
    assert len(bars) == 2 * len(report.runs)  # simulated and wall time, per seed
    failed = sum(1 for attrs in bars if attrs.get("fill") == "#cf222e")
    assert failed == 2 * len(report.failures)
    for failure in report.failures:
        assert f"seed {failure.seed} [{failure.kind}]" in text
        assert failure.replay in text
    # Self-contained: nothing to fetch (the SVG namespace is a name, not a request).
    assert not [attrs for _, attrs in page.tags if attrs.get("src") or attrs.get("href")]
    assert not [tag for tag, _ in page.tags if tag in ("script", "link", "img", "iframe")]


def test_text_is_escaped() -> None:
    from moonpool.sim import AssertionSummary

    report = SimulationReport(
        runs=[],
        failures=[],
        assertions=[AssertionSummary("always", "a < b && <script>", 1, 1, 0)],
        fault_totals={},
        wall_time=0.0,
    )
    html = report.to_html()
    assert "<script>" not in html and "a &lt; b &amp;&amp; &lt;script&gt;" in html


def test_the_cli_writes_it(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    completed = subprocess.run(
        [*CLI, "tests/sim/worker_targets.py:chatty", "--seed", "1", "--quiet", "--html", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert out.read_text().startswith("<!DOCTYPE html>") and "SUCCESS" in out.read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (nox -s html installs it)")
def test_a_real_browser_renders_the_table_and_the_chart(tmp_path: Path) -> None:
    assert CHROMIUM is not None
    report = _report()
    page = tmp_path / "report.html"
    page.write_text(report.to_html(), encoding="utf-8")
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    dom = subprocess.run(
        [*browser, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    # The DOM the browser built (not our text): the table's rows and the chart's bars.
    assert dom.count('<tr><td class="PASS">') + dom.count('<tr><td class="FAIL">') + dom.count(
        '<tr><td class="MISS">'
    ) == len(report.assertions)
    assert dom.count('class="bar"') == 2 * len(report.runs)
    shot = tmp_path / "report.png"
    subprocess.run(
        [*browser, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 10_000  # a page was painted, not a blank
