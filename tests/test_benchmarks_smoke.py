"""The benchmark suite runs end to end and reports what it promises.

Speed is never asserted here (targets are judged by ``python -m benchmarks``
itself, as ratios): this only runs the envelope and workers benchmarks with tiny
counts and checks the structure of their figures and of the JSON document.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import pytest

from benchmarks import _runner
from benchmarks._core import Figure, Settings

TINY = Settings(scale=0.001, repeats=1, warmup=0, quick=True)


def test_envelope_benchmark_produces_complete_figures() -> None:
    result = _runner.run_benchmark("envelope", TINY)

    assert result.error is None, result.error
    assert result.outcome.notes
    figures = result.outcome.figures
    assert figures
    for figure in figures:
        assert isinstance(figure, Figure)
        assert figure.name and figure.unit
        assert len(figure.samples) >= TINY.repeats
        assert all(math.isfinite(value) and value > 0 for value in figure.samples)
        # Every envelope figure has a raw baseline, hence a ratio: the median of the
        # per-round ratios (each sample over the baseline sample of its round).
        assert figure.baseline is not None and figure.baseline > 0
        assert figure.round_ratios == pytest.approx(
            [c / b for c, b in zip(figure.samples, figure.baseline_samples, strict=True)]
        )
        assert figure.ratio == pytest.approx(statistics.median(figure.round_ratios))
        assert figure.status in ("PASS", "FAIL", "-")


def test_workers_benchmark_runs_the_same_seeds_everywhere() -> None:
    """``workers``: one process, a 2-worker pool and a 2-worker Dask LocalCluster, with
    tiny counts (a few seconds: the workers and the cluster start for real).  The
    benchmark itself fails unless every run gave the same seeds and trace hashes."""
    result = _runner.run_benchmark("workers", TINY)

    assert result.error is None, result.error
    assert not [note for note in result.outcome.notes if note.startswith("ERROR")]
    names = [figure.name for figure in result.outcome.figures]
    assert any("run(workers=2)" in name for name in names)
    assert any("Dask" in name for name in names)
    for figure in result.outcome.figures:
        assert figure.baseline is not None and figure.baseline > 0
        assert all(math.isfinite(value) and value > 0 for value in figure.samples)
        assert figure.status in ("PASS", "FAIL", "-")


def test_command_line_writes_table_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_runner, "QUICK", TINY)
    output = tmp_path / "out" / "results.json"

    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None

    status = _runner.main(["--quick", "--only", "envelope", "--output", str(output)])

    assert status == 0
    table = capsys.readouterr().out
    assert "envelope" in table and "ratio" in table
    assert "rounds min-max" in table and "load average" in table
    document = json.loads(output.read_text())
    assert document["schema"] == _runner.SCHEMA_VERSION
    assert set(document["versions"]) >= {"python", "trio", "anyio", "msgspec"}
    assert set(document["pinning"]) >= {"cpu", "child_cpu", "available", "note"}
    assert set(document["load_average"]) == {"start", "end"}
    # The run pins the process to one CPU, and gives the caller its CPUs back.
    if affinity is not None:
        assert os.sched_getaffinity(0) == affinity
    assert document["settings"]["quick"] is True
    assert document["summary"]["errors"] == []
    assert list(document["benchmarks"]) == ["envelope"]
    entry = document["benchmarks"]["envelope"]
    assert entry["error"] is None
    for figure in entry["figures"]:
        assert set(figure) >= {
            "name",
            "unit",
            "value",
            "samples",
            "baseline",
            "ratio",
            "round_ratios",
            "ratio_min",
            "ratio_max",
            "samples_min",
            "samples_max",
            "target",
            "status",
        }


def test_unknown_benchmark_name_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        _runner.parse_args(["--only", "no_such_benchmark"])


@pytest.mark.real_network
def test_versions_child_measures_the_scenarios_it_is_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``benchmarks.versions``' child: one figure per named scenario, nothing else."""
    from benchmarks import versions

    label = "trio: 64 in flight, 256 KiB"
    versions._child([label])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(result) == [label]
    assert result[label] > 0


def test_versions_needs_a_revision() -> None:
    from benchmarks import versions

    with pytest.raises(SystemExit):
        versions.main([])
