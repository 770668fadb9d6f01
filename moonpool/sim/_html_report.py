"""A simulation report as one self-contained HTML page (``--html PATH``, ``to_html()``).

Everything is inline -- styles and an SVG chart, no script, no font, nothing
fetched -- so the file can be attached to a CI run, mailed, or opened offline.
The page shows what the text report does, laid out for reading: the result,
the assertion table, the faults injected per family, each seed's simulated and
wall time (a bar each; a failed seed's bars are red), and every failing seed
with its replay command and the tail of its timeline.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moonpool.sim._report import SimulationReport

__all__ = ["render_html"]

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
.ok { color: #1a7f37; } .bad { color: #cf222e; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font: 12px/1.4 ui-monospace, monospace; } pre { background: #f6f8fa;
  padding: .6em; overflow-x: auto; }
.PASS { color: #1a7f37; } .FAIL, .MISS { color: #cf222e; font-weight: bold; }
svg text { font: 11px system-ui, sans-serif; fill: #555; }
"""

_BAR_WIDTH = 6
_CHART_HEIGHT = 90
_MIN_WIDTH = 420  # room for the panels' labels
_MAX_BARS = 400  # beyond, seeds are sampled evenly: a chart of 10,000 bars is a grey wall


def render_html(report: SimulationReport) -> str:
    """The whole page, as a string."""
    passed = report.iterations - len(report.failures)
    result = '<span class="ok">SUCCESS</span>' if report.ok else '<span class="bad">FAILURE</span>'
    rate = report.iterations / report.wall_time if report.wall_time > 0 else 0.0
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>moonpool simulation report</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>moonpool simulation report: {result}</h1>",
        '<table id="summary">',
        _row("iterations", f"{report.iterations} ({passed} passed, {len(report.failures)} failed)"),
        _row("wall time", f"{report.wall_time:.2f}s ({rate:.1f} seeds/s)"),
        _row("simulated", f"{report.total_sim_time:.2f}s, {report.total_events} task steps"),
        _row("stopped", report.stopped_because or "-"),
        _row("base seed", "-" if report.base_seed is None else str(report.base_seed)),
        _row("buggify", "on" if report.buggify else "off"),
        "</table>",
        _assertions(report),
        _faults(report),
        _chart(report),
        _failures(report),
        "</body></html>",
    ]
    return "\n".join(parts)


def _row(name: str, value: str) -> str:
    return f"<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>"


def _assertions(report: SimulationReport) -> str:
    rows = [
        "<h2>Assertions</h2>",
        '<table id="assertions"><tr><th>status</th><th>kind</th><th>hits</th><th>true</th>'
        "<th>false</th><th>message</th></tr>",
    ]
    for summary in report.assertions:
        rows.append(
            f'<tr><td class="{summary.status}">{summary.status}</td>'
            f"<td>{escape(summary.kind)}</td><td class=n>{summary.hits}</td>"
            f"<td class=n>{summary.true_count}</td><td class=n>{summary.false_count}</td>"
            f"<td>{escape(summary.message)}</td></tr>"
        )
    if not report.assertions:
        rows.append('<tr><td colspan="6">no assertions</td></tr>')
    rows.append("</table>")
    return "\n".join(rows)


def _faults(report: SimulationReport) -> str:
    rows = ["<h2>Faults injected</h2>", '<table id="faults"><tr><th>family</th><th>count</th></tr>']
    for family, count in sorted(report.fault_totals.items()):
        rows.append(f"<tr><td>{escape(family)}</td><td class=n>{count}</td></tr>")
    if not report.fault_totals:
        rows.append('<tr><td colspan="2">none</td></tr>')
    rows.append("</table>")
    return "\n".join(rows)


def _chart(report: SimulationReport) -> str:
    runs = list(report.runs)
    if len(runs) > _MAX_BARS:
        step = len(runs) / _MAX_BARS
        runs = [runs[int(i * step)] for i in range(_MAX_BARS)]
    width = max(_MIN_WIDTH, len(runs) * _BAR_WIDTH)
    panels = []
    for row, (label, unit, value) in enumerate(
        (("simulated time per seed", "s sim", "sim_time"), ("wall time per seed", "s", "wall_time"))
    ):
        values = [float(getattr(run, value)) for run in runs]
        top = max(values, default=0.0) or 1.0
        y0 = row * (_CHART_HEIGHT + 30) + 16
        panels.append(f'<text x="0" y="{y0 - 4}">{label} (max {top:.3g} {unit})</text>')
        for i, (run, amount) in enumerate(zip(runs, values, strict=True)):
            height = max(1.0, amount / top * _CHART_HEIGHT)
            colour = "#2f81f7" if run.ok else "#cf222e"
            panels.append(
                f'<rect class="bar" x="{i * _BAR_WIDTH}" y="{y0 + _CHART_HEIGHT - height:.1f}" '
                f'width="{_BAR_WIDTH - 1}" height="{height:.1f}" fill="{colour}">'
                f"<title>seed {run.seed}: {amount:.4g} {unit}</title></rect>"
            )
    total_height = 2 * (_CHART_HEIGHT + 30)
    sampled = (
        f" ({len(runs)} of {len(report.runs)} seeds, evenly spaced)"
        if (len(runs) < len(report.runs))
        else ""
    )
    return (
        f"<h2>Seeds{escape(sampled)}</h2>"
        f'<svg id="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{total_height}" role="img" aria-label="simulated and wall time per seed">'
        + "".join(panels)
        + "</svg>"
    )


def _failures(report: SimulationReport) -> str:
    if not report.failures:
        return '<h2>Failing seeds</h2><p id="failures">none</p>'
    parts = [f'<h2>Failing seeds ({len(report.failures)})</h2><div id="failures">']
    for failure in report.failures:
        tail = "\n".join(str(event) for event in failure.timeline_tail)
        parts.append(
            f'<section class="failure"><h3>seed {failure.seed} '
            f"[{escape(failure.kind)}]</h3><p>{escape(failure.error)}</p>"
            f"<p>replay: <code>{escape(failure.replay)}</code></p>"
            + (f"<pre>{escape(tail)}</pre>" if tail else "")
            + "</section>"
        )
    parts.append("</div>")
    return "\n".join(parts)
