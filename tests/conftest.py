"""Shared fixtures: an isolated cache, the default session, tiny zoo models, the MNIST files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "datasets" / "mnist"
# Debian's Chromium, driven by Playwright in the browser tests (CI installs it).
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

torch.set_num_threads(min(2, os.cpu_count() or 1))


def _isa_names() -> list[str]:
    from workbench.backend.isa import isas

    return [i.name for i in isas()]


@pytest.fixture(params=_isa_names())
def kernel_isa(request, monkeypatch):
    """Run the test once per instruction set of this architecture's kernels (forced through
    ``$WORKBENCH_ISA``). An ISA this CPU cannot run is skipped, naming the features it lacks;
    kernels that do not build or load fail the test, never skip it."""
    from workbench.backend import isa, native

    target = isa.get_isa(request.param)
    missing = target.missing(native.cpu_features())
    if missing:
        pytest.skip(f"the {target.name} kernels were not run: this CPU lacks {', '.join(missing)}")
    monkeypatch.setenv(isa.ENV, target.name)
    assert native.load_kernels().isa == target.name
    return target.name


@pytest.fixture(scope="session")
def default_session():
    """The embedded default session (trained once per run, then cached on disk).

    Tests must not add variants to it; use ``fresh_session`` for that.
    """
    import workbench

    return workbench.Session.default(progress=False)


@pytest.fixture
def fresh_session(default_session):
    """A new session around the default model and data, safe to add variants to."""
    import workbench

    return workbench.Session(default_session.base.model, default_session.data)


@pytest.fixture(scope="session")
def digits():
    from workbench.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail(f"the MNIST test split is expected at {MNIST_DIR}")
    return MNIST_DIR


def zoo_model(name: str, input_shape=(1, 8, 8), num_classes: int = 10, seed: int = 0):
    """An untrained (seeded) zoo model; random weights are enough for contract tests."""
    from workbench.models import create_model

    return create_model(name, input_shape, num_classes, seed=seed)


def state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """True if two modules have identical state_dicts (same keys, same values)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def hook_count(model: torch.nn.Module) -> int:
    """Number of forward/backward hooks registered anywhere in ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through Playwright (sync API), one per test module."""
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is expected at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()
