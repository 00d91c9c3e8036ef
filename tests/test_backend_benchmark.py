"""workbench.backend.benchmark: side-by-side timing rows, accuracy columns, JSON output."""

from __future__ import annotations

import json

import pytest

from workbench.backend import benchmark
from workbench.errors import ParameterError, UnknownNameError


def test_benchmark_rows_cover_every_configuration(fresh_session, tmp_path):
    pruned = fresh_session.prune("magnitude", 0.9)
    result = benchmark([fresh_session.base, pruned], ["torch", "sparse"], batch_sizes=(1, 8),
                       repeats=4, warmup=1, threads=1, progress=False,
                       engine_options={"sparse": {"max_density": 0.3}})
    assert len(result.rows) == 2 * 2 * 2
    for row in result.rows:
        assert row.error is None and row.repeats == 4
        assert 0 < row.min_ms <= row.median_ms <= row.p90_ms
        assert row.throughput == pytest.approx(row.batch / (row.median_ms / 1e3))
        assert row.agreement == 1.0 and row.max_abs_diff < 1e-3
        assert row.accuracy == pytest.approx(pruned.metrics.accuracy if row.variant == pruned.name
                                             else fresh_session.base.metrics.accuracy)
    sparse = result.row(pruned.name, "sparse", 8)
    dense = result.row(pruned.name, "torch", 8)
    assert sparse.weight_bytes < 0.3 * dense.weight_bytes  # 90 % pruned, ~5 bytes per weight
    assert "csr" in sparse.kernels
    assert result.speedup(pruned.name, "sparse", "torch", 8) > 0
    data = json.loads(result.to_json(tmp_path / "r.json"))
    assert data["settings"]["threads"] == 1 and len(data["rows"]) == 8
    assert json.loads((tmp_path / "r.json").read_text()) == data
    assert "median ms" in result.table()


def test_a_failing_engine_is_reported_not_raised(default_session):
    result = benchmark(default_session.base, ["torch", "sparse"], batch_sizes=(2,), repeats=2,
                       progress=False, engine_options={"sparse": {"max_density": 5}})
    assert result.row("base", "torch", 2).error is None
    assert "max_density" in result.row("base", "sparse", 2).error


def test_time_budget_stops_early(default_session):
    result = benchmark(default_session.base, ["torch"], batch_sizes=(1,), repeats=10_000,
                       warmup=0, time_budget=0.2, progress=False)
    assert 1 <= result.rows[0].repeats < 10_000


def test_bad_benchmark_arguments(default_session):
    with pytest.raises(UnknownNameError):
        benchmark(default_session.base, ["nope"], progress=False)
    with pytest.raises(ParameterError):
        benchmark(default_session.base, ["torch"], batch_sizes=(0,), progress=False)
    with pytest.raises(ParameterError):
        benchmark(default_session.base, ["torch"], repeats=0, progress=False)
