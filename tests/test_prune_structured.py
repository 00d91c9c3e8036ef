"""Channel pruning: the slimmed model computes what the original computes with the removed
channels' outgoing connections cut, and it really is smaller."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from workbench.errors import ParameterError, UnsupportedLayerError
from workbench.flops import layer_macs
from workbench.prune import PRUNERS
from workbench.prune.structured import filter_norms
from tests.conftest import state_equal, zoo_model

# Written out by hand for 8×8 inputs, independently of the tracer: which layers read each
# layer's output channels (with the number of features per channel after a flatten), and which
# layers share one index set because their outputs meet in a residual add.
CONSUMERS = {
    "mlp": {"features.1": {"features.3": 1}, "features.3": {"fc": 1}},
    "lenet5": {"features.0": {"features.3": 1}, "features.3": {"classifier.0": 4},
               "classifier.0": {"classifier.2": 1}, "classifier.2": {"fc": 1}},
    "vgg_small": {"features.0": {"features.3": 1}, "features.3": {"features.7": 1},
                  "features.7": {"features.10": 1}, "features.10": {"features.14": 1},
                  "features.14": {"features.17": 1}, "features.17": {"fc": 1}},
    "resnet_small": {
        "stem.0": {"layers.0.conv1": 1, "layers.1.conv1": 1, "layers.1.shortcut.0": 1},
        "layers.0.conv1": {"layers.0.conv2": 1},
        "layers.1.conv1": {"layers.1.conv2": 1},
        "layers.1.conv2": {"layers.2.conv1": 1, "layers.2.shortcut.0": 1},
        "layers.2.conv1": {"layers.2.conv2": 1},
        "layers.2.conv2": {"fc": 1},
    },
}
GROUPS = {"resnet_small": [["layers.0.conv2", "stem.0"],
                           ["layers.1.conv2", "layers.1.shortcut.0"],
                           ["layers.2.conv2", "layers.2.shortcut.0"]]}


def randomized(arch: str) -> nn.Module:
    """A zoo model with random BatchNorm statistics and affine parameters (so BN(0) != 0)."""
    model = zoo_model(arch)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def cut_reference(model: nn.Module, kept: dict, arch: str) -> nn.Module:
    """The original model with the consumers' input weights of removed channels zeroed."""
    ref = copy.deepcopy(model)
    layers = dict(ref.named_modules())
    with torch.no_grad():
        for producer, readers in CONSUMERS[arch].items():
            n_out = layers[producer].weight.shape[0]
            removed = sorted(set(range(n_out)) - set(kept[producer]))
            for reader, per_channel in readers.items():
                cols = [c * per_channel + j for c in removed for j in range(per_channel)]
                layers[reader].weight[:, cols] = 0
    return ref


@pytest.mark.parametrize("method", ["l1_structured", "l2_structured"])
@pytest.mark.parametrize("arch", ["mlp", "lenet5", "vgg_small", "resnet_small"])
def test_slimmed_equals_cut_reference(arch, method, digits):
    model = randomized(arch)
    before = copy.deepcopy(model)
    p = PRUNERS[method](model, 0.5)
    assert state_equal(model, before)
    kept = p.info["kept"]
    members = {n for group in GROUPS.get(arch, []) for n in group}
    assert set(kept) == set(CONSUMERS[arch]) | members  # every hidden layer, not fc
    assert sorted(sorted(g) for g in p.info["groups"]) == GROUPS.get(arch, [])
    for group in p.info["groups"]:
        assert len({tuple(kept[n]) for n in group}) == 1  # one index set per residual group
    x = digits.x_test[:32]
    with torch.no_grad():
        got, want = p.model(x), cut_reference(model, kept, arch)(x)
        full = model(x)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got, full, atol=1e-3)  # something was really removed
    dense = sum(q.numel() for q in model.parameters())
    assert sum(q.numel() for q in p.model.parameters()) < 0.6 * dense
    macs = lambda m: sum(d for d, _ in layer_macs(m, (1, 8, 8)).values())  # noqa: E731
    assert macs(p.model) < 0.6 * macs(model)


def test_kept_channels_have_the_largest_norms():
    model = zoo_model("mlp")
    p = PRUNERS["l1_structured"](model, 0.25)
    w = model.features[1].weight.detach()
    top = torch.argsort(w.abs().sum(1), descending=True)[:96]
    assert set(p.info["kept"]["features.1"]) == set(top.tolist())
    kept = torch.tensor(p.info["kept"]["features.1"])
    assert torch.equal(p.model.features[1].weight, w[kept])
    rows = torch.tensor(p.info["kept"]["features.3"])
    assert torch.equal(p.model.features[3].weight, model.features[3].weight[rows][:, kept])
    assert torch.equal(p.model.features[3].bias, model.features[3].bias[rows])
    assert torch.allclose(filter_norms(w, 2), w.norm(dim=1))


def test_residual_group_ranks_by_the_summed_norms():
    model = zoo_model("resnet_small")
    p = PRUNERS["l1_structured"](model, 0.5)
    layers = dict(model.named_modules())
    score = sum(layers[n].weight.detach().abs().flatten(1).sum(1)
                for n in ("layers.1.conv2", "layers.1.shortcut.0"))
    top = torch.argsort(score, descending=True)[:16]
    assert set(p.info["kept"]["layers.1.conv2"]) == set(top.tolist())


def test_channel_counts_round_and_keep_one():
    model = zoo_model("lenet5")
    p = PRUNERS["l1_structured"](model, 0.9)
    assert p.info["channels"]["features.0"] == [6, 1]  # round(5.4) = 5 removed, 1 kept
    assert p.info["channels"]["features.3"] == [16, 2]
    assert p.info["channels"]["fc"] == [10, 10]


def test_global_scope_is_refused():
    with pytest.raises(ParameterError, match="scope"):
        PRUNERS["l1_structured"](zoo_model("mlp"), 0.5, scope="global")


class Concat(nn.Module):
    """Two branches concatenated: the tracer does not handle cat, so those convs stay whole."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.c(torch.cat([self.a(x), self.b(x)], 1))), 1))


def test_unknown_ops_leave_their_channels_alone(digits):
    model = Concat().eval()
    p = PRUNERS["l1_structured"](model, 0.5, data=digits)
    assert set(p.info["kept"]) == {"c"}
    assert "cat" in p.info["skipped"]["a"] and "cat" in p.info["skipped"]["b"]
    assert p.model.fc.weight.shape == (10, 3 * 64)


class ScaledMLP(nn.Module):
    """Linear → BatchNorm1d → ReLU → ×0.5 → Linear: all channel-preserving steps."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(64, 32)
        self.bn = nn.BatchNorm1d(32)
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.hidden(x.flatten(1)))) * 0.5)


def test_batchnorm1d_and_scaling_are_followed(digits):
    model = ScaledMLP().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.bias.uniform_(0.1, 0.3)  # BN(0) != 0: the cut must happen at the reader
    p = PRUNERS["l1_structured"](model, 0.5)
    kept = p.info["kept"]["hidden"]
    assert len(kept) == 16 and p.model.bn.num_features == 16
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.out.weight[:, sorted(set(range(32)) - set(kept))] = 0
        x = digits.x_test[:16]
        assert torch.allclose(p.model(x), ref(x), atol=1e-5, rtol=0)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow cannot be traced
            x = x * 2
        return self.fc(x.flatten(1))


def test_untraceable_or_unprunable_models_raise_clearly():
    with pytest.raises(UnsupportedLayerError, match="Branchy cannot be traced"):
        PRUNERS["l1_structured"](Branchy(), 0.5)
    with pytest.raises(UnsupportedLayerError, match="layer '1': its outputs are the model's"):
        PRUNERS["l1_structured"](nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), 0.5)


def test_session_structured_variant(fresh_session):
    v = fresh_session.prune("l1_structured", 0.5)
    base = fresh_session.base.metrics
    assert v.metrics.params < base.params and v.metrics.macs < base.macs
    assert 0.0 <= v.metrics.accuracy <= 1.0 and v.masks == {}
    assert v.name == "l1_structured-50"


def test_structured_child_of_a_masked_parent_keeps_its_zeros(fresh_session):
    parent = fresh_session.prune("magnitude", 0.6)
    child = fresh_session.prune("l1_structured", 0.5, parent=parent.name, finetune_epochs=1)
    layers = dict(child.model.named_modules())
    assert child.masks and child.masks.keys() == parent.masks.keys()
    for n, mask in child.masks.items():
        assert mask.shape == layers[n].weight.shape
        assert torch.all(layers[n].weight[~mask] == 0)  # fine-tuning did not revive them
    assert child.metrics.sparsity > 0.2  # the densest filters survive, but zeros remain
