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


def test_rows_count_every_parameter_and_mark_engines_that_ran_only_torch(default_session):
    """The default LeNet's layers are all too small for the sparse kernels: that row is marked
    and has no speed-up (it runs torch's code); its bytes include the biases, and a model whose
    weights mostly sit outside Conv/Linear (a recurrent net) is counted whole."""
    import torch

    import workbench
    from workbench.backend.benchmark import other_parameter_bytes
    from workbench.backend.graph import find_sites

    base = default_session.base
    result = benchmark(base, ["torch", "sparse", "lowbit"], batch_sizes=(4,), repeats=2,
                       warmup=0, progress=False)
    sparse, torch_row = result.row("base", "sparse", 4), result.row("base", "torch", 4)
    assert sparse.all_torch and set(sparse.kernels) == {"torch"} and sparse.isa == ""
    assert not torch_row.all_torch
    assert result.speedup("base", "sparse", "torch", 4) is None
    assert "(every layer on torch)" in result.table()
    biases = sum(s.layer.bias.numel() for s in find_sites(base.model) if s.layer.bias is not None)
    assert torch_row.model_bytes - torch_row.weight_bytes >= 4 * biases > 0
    assert result.settings["machine"]["isa"] in ("avx512", "avx2", "neon", "scalar")

    class Recurrent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(8, 32, batch_first=True)
            self.fc = torch.nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(self.lstm(x.reshape(len(x), 8, 8))[0][:, -1])

    model = Recurrent()
    lstm = sum(4 * p.numel() for p in model.lstm.parameters())
    assert other_parameter_bytes(model) == lstm + 4 * 10
    session = workbench.Session(model=model, data=default_session.data)
    row = benchmark(session.base, ["torch"], batch_sizes=(2,), repeats=1, warmup=0,
                    progress=False).rows[0]
    assert row.weight_bytes == 4 * 32 * 10 and row.model_bytes == 4 * 320 + lstm + 40


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


def test_layer_times_cover_every_kernel_layer_also_of_a_chain_run_model():
    import torch

    from workbench.backend import compile_model
    from workbench.backend.layer_timing import REST, layer_times
    from workbench.prune import PRUNERS

    torch.manual_seed(0)
    nn = torch.nn
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512),
                        nn.ReLU(), nn.Linear(512, 128))  # every layer wide enough for a kernel
    pruned = PRUNERS["magnitude"](mlp, 0.9)
    cm = compile_model(pruned.model, "sparse", masks=pruned.masks)
    assert not isinstance(cm._run, torch.nn.Module)  # a chain: one loop of kernel calls
    times = layer_times(cm, torch.randn(8, 1, 16, 16), repeats=3)
    assert [t.name for t in times] == [r.name for r in cm.report.layers] + [REST]
    assert all(t.ms > 0 for t in times[:-1]) and times[-1].ms >= 0
    assert {t.kernel for t in times[:-1]} == set(cm.report.kernels().values())
