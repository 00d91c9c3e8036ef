"""Bad input, one place: each mistake gets a clear, specific error and the session stays usable.

Checkpoint, pickle and file-format mistakes are tested with the loaders (test_loading.py,
test_data_readers.py); this file covers what a user can get wrong through the session API.
"""

from __future__ import annotations

import copy

import pytest
import torch

import workbench
from workbench.errors import DataError, ParameterError, UnsupportedLayerError, WorkbenchError
from tests.conftest import state_equal, zoo_model


def _still_usable(session):
    v = session.prune("magnitude", 0.3)
    assert v.metrics.sparsity == pytest.approx(0.3, abs=0.01)
    session.remove(v.name)


@pytest.mark.parametrize("x, y, message", [
    (torch.rand(0, 1, 8, 8), torch.zeros(0), "at least 3 samples"),
    (torch.rand(30, 1, 8, 8), torch.zeros(30), "single class"),
    (torch.rand(30, 1, 8, 8), torch.arange(30) % 3 - 1, "must be >= 0"),
    (torch.rand(30, 1, 8, 8), torch.rand(30), "labels must be integers"),
    (torch.rand(30, 1, 8, 8), torch.arange(29) % 2, "30 inputs but 29 labels"),
    (torch.full((30, 1, 8, 8), float("nan")), torch.arange(30) % 2, "NaN or Inf"),
])
def test_bad_datasets_are_refused(x, y, message):
    with pytest.raises(DataError, match=message):
        workbench.Session(zoo_model("mlp", num_classes=2), (x, y))


def test_labels_beyond_the_models_classes(digits):
    x = digits.x_train[:60]
    y = torch.arange(60) % 12  # 12 classes for a 10-class model
    with pytest.raises(DataError, match="12 classes"):
        workbench.Session(zoo_model("lenet5"), (x, y))


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 16, 16), (64,)])
def test_images_of_the_wrong_shape_or_channels(digits, shape):
    x = torch.rand(60, *shape)
    with pytest.raises(DataError, match="does not accept inputs"):
        workbench.Session(zoo_model("lenet5"), (x, digits.y_train[:60]))


@pytest.mark.parametrize("call, error, message", [
    (lambda s: s.prune("magnitude", 1.0), ParameterError, "sparsity must lie in"),
    (lambda s: s.prune("magnitude", -0.2), ParameterError, "sparsity must lie in"),
    (lambda s: s.prune("magnitude", 0.5, scope="everywhere"), ParameterError, "scope"),
    (lambda s: s.prune("magnitude", 0.5, exclude=["nope"]), ParameterError, "unknown layers"),
    (lambda s: s.prune("nm", 0.5), UnsupportedLayerError, "features.0"),
    (lambda s: s.quantize("uniform", bits=3.5), ParameterError, "bits"),
    (lambda s: s.quantize("uniform", bits=16), ParameterError, "supports bits"),
    (lambda s: s.quantize("binary", bits=4), ParameterError, "supports bits"),
    (lambda s: s.quantize("uniform", bits=8, granularity="row"), ParameterError, "granularity"),
    (lambda s: s.quantize("nosuch"), WorkbenchError, "unknown quantization method"),
    (lambda s: s.load_recipes("workbench_recipe: 1\nvariants: [{name: a, kind: prune, "
                              "method: wizardry}]"), WorkbenchError, "unknown pruning method"),
])
def test_bad_parameters_leave_the_session_usable(fresh_session, call, error, message):
    before = copy.deepcopy(fresh_session.base.model)
    with pytest.raises(error, match=message):
        call(fresh_session)
    assert list(fresh_session.variants) == ["base"]
    assert state_equal(fresh_session.base.model, before)
    _still_usable(fresh_session)


def test_a_layer_a_method_cannot_handle_is_named_and_others_still_work(digits):
    class WithEmbedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(4, 4)
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)) + 0 * self.table.weight.sum()

    s = workbench.Session(WithEmbedding(), digits)
    with pytest.raises(UnsupportedLayerError, match="table"):
        s.quantize("uniform", bits=8)
    q = s.quantize("uniform", bits=8, exclude=["table"])
    assert q.metrics.bits == {"fc": 8}
    assert s.prune("magnitude", 0.5).metrics.layer_sparsity == {"fc": pytest.approx(0.5)}
