"""Cancelling long work: the token and stoppable progress bars, the panels' Cancel buttons, and
Ctrl-C (KeyboardInterrupt) in a notebook leaving the session usable."""

from __future__ import annotations

import asyncio
import copy
import threading
import time

import numpy as np
import panel as pn
import pytest
import torch

from workbench.analysis import landscape_2d
from workbench.cancel import Cancelled, CancelToken, on_step, tqdm
from workbench.panels.analysis_base import CANCELLED, INTERRUPTED
from workbench.panels.compare import ComparePanel
from workbench.panels.hessian import HessianPanel
from workbench.panels.landscape import LandscapePanel
from workbench.panels.speed import SpeedPanel
from workbench.panels.state import SessionState
from workbench.sweep import sweep

from conftest import state_equal

WAIT = 300  # seconds: a generous bound for a loaded machine, never a timing assertion


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def start_held(run):
    """Start ``run()`` in a thread whose first progress step waits until ``release`` is set.

    Returns ``(thread, reached, release)``: ``reached`` is set once the work is at its first step,
    so the test can press Cancel while it is certainly running.
    """
    reached, release = threading.Event(), threading.Event()

    def hold(_units):
        if not reached.is_set():
            reached.set()
            release.wait(WAIT)

    def work():
        with on_step(hold):
            run()

    thread = threading.Thread(target=work)
    thread.start()
    assert reached.wait(WAIT), "the work never reached its first step"
    return thread, release


def interrupt_after(n: int):
    """A step hook that raises KeyboardInterrupt at step ``n`` (Ctrl-C in a notebook)."""
    count = [0]

    def hook(_units):
        count[0] += 1
        if count[0] >= n:
            raise KeyboardInterrupt

    return hook


# --- the mechanism ---------------------------------------------------------------------------
def test_tqdm_steps_run_the_hooks_of_this_thread_only():
    seen, other = [], []
    with on_step(seen.append):
        bar = tqdm(total=10, disable=True)
        bar.update(3)
        bar.update(2)
        list(tqdm(range(4), disable=True))

        def elsewhere():
            list(tqdm(range(5), disable=True))
            other.append("done")

        t = threading.Thread(target=elsewhere)
        t.start()
        t.join()
    list(tqdm(range(3), disable=True))  # outside the block: no hook
    assert seen == [3, 2, 1, 1, 1, 1]
    assert other == ["done"]


def test_a_cancelled_token_stops_an_analysis_at_its_next_step(default_session):
    v = default_session.base
    x, y = v.data.x_test[:32], v.data.y_test[:32]
    token, units = CancelToken(), []

    def hook(n):
        units.append(n)
        if len(units) == 2:
            token.cancel()

    before = copy.deepcopy(v.model)
    with pytest.raises(Cancelled), on_step(hook), on_step(token.check):
        landscape_2d(v.model, x, y, steps=15, chunk=5, progress=False)
    assert sum(units) == 10 < 15 * 15  # two chunks of five points, then stopped
    assert state_equal(before, v.model)


def test_a_sweep_callback_can_cancel_and_the_session_stays_as_it_was(fresh_session):
    token, seen = CancelToken(), []

    def progress(done, total):
        seen.append(done)
        if done == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        sweep(fresh_session, ["magnitude", "random"], [0.1, 0.3, 0.5],
              callback=token.callback(progress))
    assert seen == [1, 2]
    assert list(fresh_session.variants) == ["base"]


def test_keyboard_interrupt_in_a_sweep_leaves_the_session_usable(fresh_session):
    def progress(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(fresh_session, ["magnitude"], [0.2, 0.4, 0.6], callback=progress)
    assert list(fresh_session.variants) == ["base"]
    result = sweep(fresh_session, ["magnitude"], [0.0, 0.4])
    assert result.accuracy["magnitude"][0] == fresh_session.base.metrics.accuracy
    assert fresh_session.prune("magnitude", sparsity=0.4).metrics.sparsity == pytest.approx(0.4)


# --- analysis panels ---------------------------------------------------------------------------
@pytest.fixture
def landscape(fresh_session):
    panel = LandscapePanel.from_session(fresh_session, steps=3, samples=64)
    first = panel.run_now()
    assert set(first) == {("plane", "base")}
    return panel


def test_landscape_cancel_stops_early_keeps_the_previous_result_and_runs_again(landscape):
    panel = landscape
    previous = panel.results
    panel.param.update(steps=31, seed=1)  # 961 points, in chunks of 64
    runner, release = start_held(panel.run_now)
    assert panel.busy
    view = panel.__panel__()
    cancel = [b for b in view.select(pn.widgets.Button) if "wb-cancel" in b.css_classes]
    assert len(cancel) == 1 and cancel[0].visible
    cancel[0]._process_event(None)  # what a click in the browser does
    assert panel.status == "Cancelling…"
    release.set()
    runner.join(WAIT)
    assert not runner.is_alive()
    assert panel.steps_run == 64  # the first chunk, then stopped
    assert not panel.busy and panel.status == CANCELLED and panel.error == ""
    assert panel.results is previous
    assert not cancel[0].visible
    panel.steps = 5  # running again works (and computes the new grid)
    again = panel.run_now()
    assert again[("plane", "base")].loss.shape == (5, 5)
    assert panel.steps_run >= 25 and panel.status.startswith("1 computed")


def test_cancel_when_idle_does_nothing(landscape):
    assert landscape.cancel_run() is False
    landscape.param.trigger("cancel")
    assert landscape.status != CANCELLED and landscape.results


def test_keyboard_interrupt_from_the_progress_leaves_panel_and_session_usable(landscape):
    panel = landscape
    previous = panel.results
    model = copy.deepcopy(panel.state.session.base.model)
    panel.param.update(steps=21, seed=2)
    with pytest.raises(KeyboardInterrupt), on_step(interrupt_after(2)):
        panel.run_now()
    assert not panel.busy and panel.status == INTERRUPTED
    assert panel.results is previous
    assert state_equal(model, panel.state.session.base.model)
    assert list(panel.state.session.variants) == ["base"]
    result = panel.run_now()[("plane", "base")]
    assert result.loss.shape == (21, 21) and np.isfinite(result.loss).all()


def test_hessian_cancel_between_eigenvalues(fresh_session):
    panel = HessianPanel.from_session(fresh_session, k=2, trace_samples=0, density=False,
                                      samples=64)
    previous = panel.run_now()
    assert previous
    panel.param.update(k=40, seed=3)
    runner, release = start_held(panel.run_now)
    assert panel.cancel_run()
    release.set()
    runner.join(WAIT)
    assert panel.steps_run == 1  # one of the 40 eigenvalues
    assert panel.results is previous and panel.status == CANCELLED and not panel.busy


# --- compare sweep and speed ---------------------------------------------------------------
def test_compare_sweep_cancel_keeps_the_previous_curve(fresh_session, monkeypatch):
    from workbench.panels import compare

    panel = ComparePanel(state=SessionState(session=fresh_session))
    panel.param.update(sweep_methods=["magnitude"], sweep_points=2)
    first = asyncio.run(panel.sweep_async())
    reached, release = threading.Event(), threading.Event()

    def held_sweep(*args, callback, **kwargs):  # the first point waits for the test's Cancel
        def hold(done, total):
            if not reached.is_set():
                reached.set()
                release.wait(WAIT)
            callback(done, total)

        return sweep(*args, callback=hold, **kwargs)

    monkeypatch.setattr(compare, "sweep", held_sweep)
    panel.param.update(sweep_methods=["magnitude", "random"], sweep_points=20)
    runner = threading.Thread(target=lambda: asyncio.run(panel.sweep_async()))
    runner.start()
    assert reached.wait(WAIT)
    panel.param.trigger("cancel_sweep")
    assert panel.message == "Cancelling…"
    release.set()
    runner.join(WAIT)
    assert panel.points_run == 0  # the first point's report raised: nothing more was pruned
    assert panel.sweep_result is first and not panel.sweeping
    assert panel.message.startswith("Sweep cancelled") and panel.error == ""
    assert list(fresh_session.variants) == ["base"]
    panel.sweep_points = 3
    again = asyncio.run(panel.sweep_async())
    assert again is panel.sweep_result and again.accuracy["random"].shape == (3,)
    assert panel.message == ""


def test_speed_cancel_stops_before_the_next_variant(fresh_session):
    state = SessionState(session=fresh_session)
    for s in (0.3, 0.5, 0.7):
        state.add("prune", "magnitude", sparsity=s)
    panel = SpeedPanel(state=state, engines=["torch"], repeats=2, variants=["base"])
    previous = panel.run_now()
    assert [r.variant for r in previous.rows] == ["base"]
    panel.variants = list(state.variants)
    measured = []
    original = panel._measure

    def measure(name, engines, token=None):
        original(name, engines, token)
        measured.append(name)
        if len(measured) == 1:
            panel.cancel_run()

    panel._measure = measure
    assert panel.run_now() is None
    assert measured == ["magnitude-30"]  # base was cached; stopped before the second new one
    assert panel.result is previous and not panel.busy
    assert panel.status.startswith("Cancelled")
    result = panel.run_now()
    assert [r.variant for r in result.rows] == list(state.variants)


def test_subspace_cancel_between_gradient_batches(fresh_session):
    from workbench.panels.subspace import SubspacePanel

    panel = SubspacePanel.from_session(fresh_session, analyses=["spectra"], samples=16,
                                       variants=["base"])
    previous = panel.run_now()
    assert previous and panel.error == ""
    panel.samples = 300
    runner, release = start_held(panel.run_now)
    assert panel.cancel_run()
    release.set()
    runner.join(WAIT)
    assert 1 <= panel.steps_run < 300  # one batch of samples, not all of them
    assert panel.results is previous and panel.status == CANCELLED and not panel.busy


def _cancel_after(token: CancelToken, steps: list, after: int):
    def hook(n):
        steps.append(n)
        if len(steps) >= after:
            token.cancel()
        token.check()
    return hook


def test_training_stops_at_the_next_batch_when_cancelled(default_session):
    from workbench.train import fit

    model = copy.deepcopy(default_session.base.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = default_session.data
    token, steps = CancelToken(), []
    with pytest.raises(Cancelled), on_step(_cancel_after(token, steps, 3)):
        fit(model, data.x_train, data.y_train, epochs=5, batch_size=32, progress=False)
    total = 5 * -(-len(data.x_train) // 32)
    assert len(steps) == 3 < total
    # it did train for the batches before the cancel
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_backend_benchmark_stops_between_repeats_when_cancelled(default_session):
    from workbench.backend import benchmark

    token, steps = CancelToken(), []
    # compile + warm-up steps (1 + 1 batch size) for one engine, then repeats: cancel in repeat 2
    with pytest.raises(Cancelled), on_step(_cancel_after(token, steps, 4)):
        benchmark([default_session.base], engines=("torch",), batch_sizes=(1,), repeats=1000,
                  warmup=1, progress=False)
    assert len(steps) == 4


def test_compress_apply_with_fine_tuning_can_be_cancelled(fresh_session):
    from workbench.panels.compress import CompressPanel

    panel = CompressPanel(state=SessionState(session=fresh_session))
    panel.param.update(method="magnitude", sparsity=0.5, finetune_epochs=100)
    before = list(fresh_session.variants)
    results = []
    worker = threading.Thread(target=lambda: results.append(asyncio.run(panel.apply_async())))
    worker.start()
    wait_for(lambda: panel.busy, "Apply to start")
    panel.param.trigger("cancel")
    worker.join(WAIT)
    assert results == [None] and not panel.busy
    assert panel.notice.startswith("Cancelled") and panel.error == ""
    assert list(fresh_session.variants) == before
    # and the next Apply works
    panel.param.update(finetune_epochs=0)
    variant = asyncio.run(panel.apply_async())
    assert variant is not None and variant.name in fresh_session.variants and panel.notice == ""
