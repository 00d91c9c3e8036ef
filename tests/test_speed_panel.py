"""The Speed panel, its plots (Pareto front) and the ``workbench bench`` command."""

from __future__ import annotations

import itertools
import json

import numpy as np
import panel as pn
import pytest

from workbench.backend import BenchmarkResult
from workbench.backend.benchmark import BenchmarkRow
from workbench.cli import main
from workbench.panels.speed import SpeedPanel
from workbench.panels.state import SessionState
from workbench.plots.speed import pareto_figure, pareto_front


def brute_force_front(points):
    keep = []
    for i, (li, ai) in enumerate(points):
        dominated = any(lj <= li and aj >= ai and (lj < li or aj > ai)
                        for j, (lj, aj) in enumerate(points) if j != i)
        if not dominated:
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(30))
def test_pareto_front_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 25))
    # few distinct values so that ties (equal latency, equal accuracy, duplicates) occur
    points = [(float(a), float(b)) for a, b in zip(rng.integers(0, 6, n), rng.integers(0, 6, n))]
    front = pareto_front(points)
    assert sorted(front) == brute_force_front(points)
    assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)


def test_pareto_front_small_cases():
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.5)]) == [0]
    assert pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0, 1]
    assert pareto_front([(2.0, 0.9), (1.0, 0.9)]) == [1]
    for p in itertools.permutations([(1.0, 0.1), (2.0, 0.2), (3.0, 0.3)]):
        assert len(pareto_front(list(p))) == 3


@pytest.fixture
def state(fresh_session):
    return SessionState(session=fresh_session)


def test_panel_runs_and_scatter_shows_the_benchmark_numbers(state):
    pruned = state.add("prune", "magnitude", sparsity=0.9)
    quantized = state.add("quantize", "uniform", bits=8)
    panel = SpeedPanel(state=state, repeats=2, batch_size=1)
    panel.param.update(variants=[pruned.name, quantized.name],
                       engines=["torch", "sparse", "lowbit"])
    result = panel.run_now()
    assert panel.error == ""
    assert [(r.variant, r.engine) for r in result.rows] == [
        (v.name, e) for v in (pruned, quantized) for e in ("torch", "sparse", "lowbit")]
    for r in result.rows:
        assert r.error is None and r.repeats == 2 and r.batch == 1 and r.median_ms > 0
    fig = pareto_figure(panel.result)
    for trace in fig.data[:-1]:
        mine = [r for r in result.rows if r.engine == trace.name]
        assert list(trace.x) == [r.median_ms for r in mine]
        assert list(trace.y) == pytest.approx([100 * r.accuracy for r in mine])
        assert [c[0] for c in trace.customdata] == [r.variant for r in mine]
        assert [c[3] for c in trace.customdata] == [r.weight_bytes for r in mine]
    assert fig.data[-1].name == "Pareto front"
    # LeNet's layers are too small for the sparse kernels: the engine keeps them on torch
    assert result.row(pruned.name, "sparse", 1).kernels == {"torch": 5}
    assert result.row(pruned.name, "sparse", 1).accuracy == pytest.approx(pruned.metrics.accuracy)
    # int8 codes on the low-bit kernels: about a quarter of the fp32 bytes
    assert result.row(quantized.name, "lowbit", 1).weight_bytes < \
        0.3 * result.row(quantized.name, "torch", 1).weight_bytes
    assert result.row(quantized.name, "lowbit", 1).agreement >= 0.99
    # the per-layer breakdown of the last variant on the first engine that ran a kernel of ours
    assert (panel.detail_variant, panel.detail_engine) == (quantized.name, "lowbit")
    names = [t.name for t in panel.layer_report]
    assert names[-1] == "(rest)" and len(names) == 6
    assert {t.kernel for t in panel.layer_report[:-1]} == {"int8-fp32"}
    assert "| classifier.2 |" in panel.detail_note
    table = panel._table()
    assert len(table) == 6 and table["median_ms"].tolist() == [r.median_ms for r in result.rows]
    assert panel._csv().getvalue().startswith("variant,engine,batch")
    # cached: a second run measures nothing new and returns the same rows
    again = panel.run_now()
    assert [r.median_ms for r in again.rows] == [r.median_ms for r in result.rows]
    view = panel.__panel__()
    assert view.select(pn.widgets.Tabulator)


def test_new_variant_appears_in_the_selector(state):
    panel = SpeedPanel(state=state)
    assert panel.param.variants.objects == ["base"]
    v = state.add("quantize", "uniform", bits=4)
    assert v.name in panel.param.variants.objects
    panel.variants = ["base", v.name]  # selectable without a restart


def test_engine_error_shows_an_alert(state):
    panel = SpeedPanel(state=state, repeats=2, engines=["torch", "sparse"],
                       engine_options={"sparse": {"max_density": 5}})
    result = panel.run_now()
    assert result.row("base", "torch", 1).error is None
    assert "max_density" in panel.error and "sparse" in panel.error
    alerts = [a for a in panel.__panel__().select(pn.pane.Alert) if a.visible and a.object]
    assert any("max_density" in str(a.object) for a in alerts)


def test_bench_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--recipes", "--engines", "--batch-sizes", "--repeats", "--threads",
                 "--time-budget", "--json"):
        assert flag in out


def test_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert main(["bench", "--engines", "torch", "--repeats", "2", "--batch-sizes", "1",
                 "--warmup", "0", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"settings", "rows"}
    assert data["settings"]["engines"] == ["torch"] and data["settings"]["repeats"] == 2
    assert [r["variant"] for r in data["rows"]] == ["base", "magnitude-90", "uniform-8b",
                                                     "uniform-4b"]
    for r in data["rows"]:
        assert r["engine"] == "torch" and r["batch"] == 1 and r["repeats"] == 2
        assert r["median_ms"] > 0 and 0 <= r["accuracy"] <= 1 and r["error"] is None
    printed = capsys.readouterr().out
    assert "magnitude-90" in printed and "b=1 med/p90 ms" in printed
    result = BenchmarkResult([BenchmarkRow(**r) for r in data["rows"]], data["settings"])
    assert result.row("base", "torch", 1).median_ms == data["rows"][0]["median_ms"]
