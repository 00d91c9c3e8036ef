"""The live what-if: corruption error and geometry of a candidate, cached, and in the panel."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import numpy as np
import pytest
import torch

import workbench
from workbench.analysis.geometry import feature_geometry
from workbench.analysis.robustness import corruption_errors
from workbench.analysis.whatif import (DEFAULT_CORRUPTIONS, WhatIf, probe_set, sample_indices,
                                       whatif_summary)
from workbench.data import Dataset
from workbench.errors import DataError, ParameterError
from workbench.panels import compress as compress_module
from workbench.panels.compress import CompressPanel
from workbench.panels.state import SessionState
from workbench.preview import cache_clear, cache_info, cached_whatif, whatif
from tests.conftest import hook_count


def direct(model, data, samples=256, severity=3, seed=0) -> dict:
    """The summary's numbers computed with the robustness and geometry modules directly."""
    idx = sample_indices(len(data.y_test), samples, seed)
    x, y = data.x_test[idx], data.y_test[idx]
    r = corruption_errors(model, x, y, list(DEFAULT_CORRUPTIONS), (severity,), seed,
                          progress=False)
    g = feature_geometry(model, x, y)
    return {"errors": dict(zip(r.corruptions, r.error[:, 0].tolist())),
            "clean_error": r.clean_error, "margin": float(np.mean(g.margin)),
            "negative": float((g.margin < 0).mean()), "length": float(np.mean(g.length)),
            "angle": float(np.nanmean(g.angle))}


def assert_matches(w: WhatIf, expected: dict) -> None:
    assert dict(w.errors) == pytest.approx(expected["errors"], abs=1e-12)
    assert w.mean_corruption_error == pytest.approx(np.mean(list(expected["errors"].values())))
    assert w.clean_error == pytest.approx(expected["clean_error"])
    assert w.mean_margin == pytest.approx(expected["margin"])
    assert w.negative_margin_fraction == pytest.approx(expected["negative"])
    assert w.mean_length == pytest.approx(expected["length"])
    assert w.mean_angle == pytest.approx(expected["angle"])


# --- the pure summary ----------------------------------------------------------------------------
def test_summary_equals_the_robustness_and_geometry_modules(fresh_session):
    v = fresh_session.prune("magnitude", sparsity=0.6)
    before, hooks = {k: t.clone() for k, t in v.model.state_dict().items()}, hook_count(v.model)
    w = whatif_summary(v)
    assert_matches(w, direct(v.model, fresh_session.data))
    assert all(torch.equal(t, v.model.state_dict()[k]) for k, t in before.items())
    assert hook_count(v.model) == hooks
    assert w.samples == 256 and w.severity == 3 and w.corruptions == DEFAULT_CORRUPTIONS
    assert 0 < w.mean_corruption_error < 1 and w.mean_length > 0


def test_summary_is_deterministic_and_frozen(default_session):
    a = whatif_summary(default_session.base, seed=1)
    assert whatif_summary(default_session.base, seed=1) == a
    assert whatif_summary(default_session.base, seed=2) != a  # another sample, other numbers
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.mean_margin = 0.0


def test_probe_set_is_made_once_per_dataset(default_session):
    data = default_session.data
    p = probe_set(data, ["rotate", "brightness"], 2, samples=30, seed=4)
    assert probe_set(data, ["rotate", "brightness"], 2, samples=30, seed=4) is p
    assert p.x.shape[0] == 30 and list(p.indices) == sample_indices(len(data.y_test), 30, 4)
    assert torch.equal(p.x, data.x_test[list(p.indices)])
    assert not torch.equal(p.corrupted[0], p.x)


def test_mce_is_relative_to_the_baseline(default_session, fresh_session):
    dense = whatif_summary(default_session.base)
    assert dense.mce(dense) == pytest.approx(1.0)
    pruned = whatif_summary(fresh_session.prune("magnitude", sparsity=0.85))
    ratios = [e / b for (_, e), (_, b) in zip(pruned.errors, dense.errors) if b > 0]
    assert pruned.mce(dense) == pytest.approx(np.mean(ratios)) and pruned.mce(dense) > 1
    with pytest.raises(ParameterError, match="other corruptions"):
        pruned.mce(whatif_summary(default_session.base, samples=100))


def test_bad_settings_are_clear_errors(default_session):
    base = default_session.base
    with pytest.raises(ParameterError, match="severity"):
        whatif_summary(base, severity=7)
    with pytest.raises(ParameterError, match="samples"):
        whatif_summary(base, samples=0)
    with pytest.raises(ParameterError, match="at least one corruption"):
        whatif_summary(base, corruptions=[])
    with pytest.raises(workbench.WorkbenchError, match="no_such"):
        whatif_summary(base, corruptions=["no_such"])
    with pytest.raises(DataError, match="data="):
        whatif_summary(base.model)
    empty = Dataset("empty", base.data.x_train[:10], base.data.y_train[:10],
                    base.data.x_val[:0], base.data.y_val[:0], base.data.x_test[:0],
                    base.data.y_test[:0], base.data.classes)
    with pytest.raises(DataError, match="test split"):
        whatif_summary(base.model, empty)


def test_summary_is_fast_enough_for_a_slider(default_session):
    whatif_summary(default_session.base)  # corrupted images made once
    pruned = default_session.base.model
    t = time.perf_counter()
    whatif_summary(pruned, default_session.data)
    assert time.perf_counter() - t < 2.0  # generous: the machine is shared


# --- cached like the preview --------------------------------------------------------------------
def test_whatif_equals_the_applied_variant_and_changes_with_the_setting(fresh_session):
    a = whatif(fresh_session, "prune", "magnitude", sparsity=0.4)
    b = whatif(fresh_session, "prune", "magnitude", sparsity=0.9)
    assert list(fresh_session.variants) == ["base"]
    assert b.mean_corruption_error > a.mean_corruption_error and b.mean_margin < a.mean_margin
    v = fresh_session.prune("magnitude", sparsity=0.9)
    assert whatif_summary(v) == b
    assert_matches(b, direct(v.model, fresh_session.data))


def test_whatif_is_cached_when_going_back(fresh_session):
    cache_clear()
    assert cached_whatif(fresh_session, "prune", "magnitude", sparsity=0.35) is None
    first = whatif(fresh_session, "prune", "magnitude", sparsity=0.35)
    whatif(fresh_session, "prune", "magnitude", sparsity=0.65)
    info = cache_info("whatif")
    assert (info.hits, info.misses, info.size) == (0, 2, 2)
    assert cached_whatif(fresh_session, "prune", "magnitude", sparsity=0.35) is first
    assert whatif(fresh_session, "prune", "magnitude", sparsity=0.35) is first
    assert (cache_info("whatif").hits, cache_info("whatif").misses) == (2, 2)
    assert cache_info("preview").misses == 0  # the two caches count separately
    with pytest.raises(ParameterError, match="what"):
        cache_info("nonsense")


# --- in the Compress panel ----------------------------------------------------------------------
@pytest.fixture
def panel(fresh_session):
    return CompressPanel(state=SessionState(session=fresh_session))


def test_panel_shows_the_summary_of_the_previewed_variant(panel):
    session = panel.state.session
    panel.param.update(method="magnitude", sparsity=0.8)
    assert panel.whatif is not None and not panel.whatif_pending  # no event loop: at once
    assert panel.reference_whatif == whatif_summary(session.base)
    shown = panel.whatif
    v = panel.apply_now()
    assert whatif_summary(v) == shown
    assert_matches(shown, direct(v.model, session.data))
    text = panel._whatif_text()
    assert f"{100 * shown.mean_corruption_error:.1f}%" in text
    assert f"{shown.mce(panel.reference_whatif):.2f}" in text
    panel.sparsity = 0.3
    assert panel.whatif != shown


def test_training_methods_and_errors_have_no_summary(panel):
    panel.method = "gradual"
    assert panel.whatif is None and panel.reference_whatif is None
    panel.method = "magnitude"
    assert panel.whatif is not None
    panel.extra = "bogus: 1"
    assert panel.whatif is None and "bogus" in panel.preview_note


class SlowFirst:
    """Stands in for :func:`workbench.preview.whatif`: the first call blocks until released."""

    def __init__(self):
        self.calls: list[float] = []
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, session, kind, method, **params):
        self.calls.append(params["sparsity"])
        if len(self.calls) == 1:
            self.started.set()
            assert self.release.wait(30)
        return whatif(session, kind, method, **params)


def test_a_newer_setting_supersedes_a_pending_one(panel, monkeypatch):
    slow = SlowFirst()
    monkeypatch.setattr(compress_module, "whatif", slow)
    shown: list = []
    panel.param.watch(lambda e: shown.append(e.new), "whatif")
    session = panel.state.session

    async def scenario():
        panel.sparsity = 0.33
        assert panel.whatif_pending and panel.whatif is None  # accuracy now, the rest later
        assert panel.preview_metrics.sparsity == pytest.approx(0.33, abs=0.01)
        await asyncio.get_running_loop().run_in_executor(None, slow.started.wait, 30)
        panel.sparsity = 0.77  # while 0.33 is being computed
        panel.sparsity = 0.55  # 0.77 is superseded before it starts
        slow.release.set()
        await panel.whatif_settled()

    asyncio.run(scenario())
    assert slow.calls == [0.33, 0.55]  # 0.77 was skipped in the queue
    expected = whatif(session, "prune", "magnitude", sparsity=0.55)
    stale = whatif(session, "prune", "magnitude", sparsity=0.33)
    assert panel.whatif == expected and not panel.whatif_pending
    assert stale != expected and all(w is None or w == expected for w in shown)


def test_going_back_in_the_panel_is_a_cache_hit(panel):
    async def scenario():
        panel.sparsity = 0.42
        await panel.whatif_settled()
        first = panel.whatif
        panel.sparsity = 0.62
        await panel.whatif_settled()
        before = cache_info("whatif")
        panel.sparsity = 0.42
        # shown at once, without the worker: the candidate's and the parent's summary are hits
        assert panel.whatif is first and not panel.whatif_pending and not panel._whatif_tasks
        after = cache_info("whatif")
        assert (after.hits, after.misses) == (before.hits + 2, before.misses)

    asyncio.run(scenario())


def test_the_base_model_is_never_touched(panel):
    base = panel.state.session.base.model
    before, hooks = {k: t.clone() for k, t in base.state_dict().items()}, hook_count(base)

    async def scenario():
        for s in (0.2, 0.5, 0.8):
            panel.sparsity = s
        await panel.whatif_settled()

    asyncio.run(scenario())
    assert all(torch.equal(t, base.state_dict()[k]) for k, t in before.items())
    assert hook_count(base) == hooks
