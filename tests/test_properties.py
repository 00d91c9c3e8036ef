"""Property-based tests: random parameter combinations for every registered method.

Whatever the combination, a method either returns a valid variant or raises a clear
``WorkbenchError`` — never an exception from deep inside torch, never a modified base model.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workbench
from workbench.errors import WorkbenchError
from workbench.prune import PRUNERS
from workbench.quantize import QUANTIZERS
from tests.conftest import state_equal, zoo_model

MODELS = ["mlp", "lenet5", "vgg_small", "resnet_small"]
LAYERS = {name: [n for n, m in zoo_model(name).named_modules()
                 if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))] for name in MODELS}
SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# Methods that train or estimate run with small settings (and fewer examples if they train).
FAST_SETTINGS = {"epochs": 1, "epochs_per_step": 1, "rewind_epochs": 0, "steps": 2, "rounds": 2,
                 "iterations": 2, "samples": 2, "batches": 1, "batch_size": 64}


@pytest.fixture(scope="module")
def sessions(digits):
    small = workbench.data.Dataset(digits.name, digits.x_train[:200], digits.y_train[:200],
                                   digits.x_val[:50], digits.y_val[:50], digits.x_test[:100],
                                   digits.y_test[:100], digits.classes)
    return {name: workbench.Session(zoo_model(name), small) for name in MODELS}


def _check(session, snapshot, make):
    n_before = len(session.variants)
    try:
        variant = make()
    except WorkbenchError as err:
        assert str(err), "a workbench error must say what is wrong"
        assert len(session.variants) == n_before
    else:
        assert torch.isfinite(variant.model(session.data.x_test[:4])).all()
        assert 0.0 <= variant.metrics.accuracy <= 1.0
        session.remove(variant.name)
    assert state_equal(session.base.model, snapshot), "the base model was modified"


def _fast_params(entry):
    accepted = _accepts(entry.fn)
    return {k: v for k, v in FAST_SETTINGS.items() if k in accepted}


@pytest.mark.parametrize("method", PRUNERS.names())
def test_any_pruning_parameters_give_a_variant_or_a_clear_error(sessions, method):
    entry = PRUNERS[method]

    @settings(max_examples=4 if entry.trains else 12, **SETTINGS)
    @given(arch=st.sampled_from(MODELS),
           sparsity=st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 0.5, 0.9, 0.99])),
           scope=st.sampled_from(["layer", "global", "filter"]),
           n_exclude=st.integers(0, 3), seed=st.integers(0, 2**31 - 1))
    def run(arch, sparsity, scope, n_exclude, seed):
        session = sessions[arch]
        snapshot = copy.deepcopy(session.base.model)
        params = {"scope": scope} if "scope" in _accepts(entry.fn) else {}
        if "exclude" in _accepts(entry.fn):
            params["exclude"] = LAYERS[arch][:n_exclude]
        params.update(_fast_params(entry))
        _check(session, snapshot,
               lambda: session.prune(method, sparsity, seed=seed, **params))

    run()


@pytest.mark.parametrize("method", QUANTIZERS.names())
def test_any_quantization_parameters_give_a_variant_or_a_clear_error(sessions, method):
    @settings(max_examples=12, **SETTINGS)
    @given(arch=st.sampled_from(MODELS), bits=st.integers(-2, 12),
           granularity=st.sampled_from(["channel", "tensor", "row"]),
           symmetric=st.booleans(), seed=st.integers(0, 2**31 - 1))
    def run(arch, bits, granularity, symmetric, seed):
        session = sessions[arch]
        snapshot = copy.deepcopy(session.base.model)
        accepted = _accepts(QUANTIZERS[method].fn)
        params = {k: v for k, v in {"granularity": granularity, "symmetric": symmetric}.items()
                  if k in accepted}
        _check(session, snapshot,
               lambda: session.quantize(method, bits=bits, seed=seed, **params))

    run()


def _accepts(fn):
    import inspect

    return set(inspect.signature(fn).parameters)
