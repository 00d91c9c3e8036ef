"""Loading user models: modules, state_dict checkpoints, safetensors, TorchScript, and errors."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
from safetensors.torch import save_file

import workbench
from conftest import state_equal, zoo_model
from workbench.errors import CheckpointError, ParameterError
from workbench.models import load_model

SHAPE = (1, 8, 8)


class CreatesFile:
    """A pickle payload: unpickling it would create ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def lenet():
    return zoo_model("lenet5", SHAPE, 10, seed=1)


@pytest.fixture
def x():
    return torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(0))


def same_outputs(a, b, x) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_a_module_is_returned_as_is(lenet):
    assert load_model(lenet) is lenet
    assert workbench.load_model(lenet) is lenet


@pytest.mark.parametrize("arch", ["mlp", "lenet5", "vgg_small", "resnet_small"])
def test_state_dict_round_trip_gives_identical_outputs(tmp_path, arch, x):
    model = zoo_model(arch, SHAPE, 10, seed=2)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    loaded = load_model(tmp_path / "w.pth", arch=arch, input_shape=SHAPE)
    assert type(loaded) is type(model) and not loaded.training
    assert state_equal(loaded, model) and same_outputs(loaded, model, x)


def test_num_classes_is_read_from_the_last_weight(tmp_path):
    torch.save(zoo_model("lenet5", SHAPE, 7).state_dict(), tmp_path / "w.pt")
    assert load_model(tmp_path / "w.pt", arch="lenet5", input_shape=SHAPE).fc.out_features == 7


@pytest.mark.parametrize("wrap", ["state_dict", "model_state_dict", "model", "module_prefix"])
def test_checkpoint_dicts_and_prefixes_are_unwrapped(tmp_path, lenet, x, wrap):
    sd = lenet.state_dict()
    if wrap == "module_prefix":  # what nn.DataParallel saves
        obj = {f"module.{k}": v for k, v in sd.items()}
    else:
        optimizer = {"state": {0: {"momentum_buffer": torch.ones(3)}},
                     "param_groups": [{"lr": 0.1, "params": [0]}]}
        obj = {wrap: sd, "epoch": 3, "optimizer": optimizer}
    torch.save(obj, tmp_path / "w.ckpt")
    loaded = load_model(tmp_path / "w.ckpt", arch="lenet5", input_shape=SHAPE)
    assert same_outputs(loaded, lenet, x)


def test_safetensors_round_trip_by_name_and_by_content(tmp_path, lenet, x):
    save_file(lenet.state_dict(), tmp_path / "w.safetensors")
    loaded = load_model(tmp_path / "w.safetensors", arch="lenet5", input_shape=SHAPE)
    assert same_outputs(loaded, lenet, x)
    save_file(lenet.state_dict(), tmp_path / "weights.bin")
    assert state_equal(load_model(tmp_path / "weights.bin", arch="lenet5", input_shape=SHAPE),
                       lenet)


def test_torchscript_file_of_a_zoo_model(tmp_path, lenet, x, digits):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(lenet), str(tmp_path / "scripted.pt"))
    loaded = load_model(tmp_path / "scripted.pt", arch="ignored-for-torchscript")
    assert isinstance(loaded, torch.jit.ScriptModule)
    assert same_outputs(loaded, lenet, x)
    session = workbench.Session(loaded, digits)
    assert same_outputs(session.base.model, lenet, x)


def test_own_architecture_instance_is_copied_not_modified(tmp_path, lenet, x):
    torch.save(lenet.state_dict(), tmp_path / "w.pt")
    template = zoo_model("lenet5", SHAPE, 10, seed=5)
    before = {k: v.clone() for k, v in template.state_dict().items()}
    loaded = load_model(tmp_path / "w.pt", arch=template)
    assert loaded is not template and same_outputs(loaded, lenet, x)
    assert all(torch.equal(before[k], v) for k, v in template.state_dict().items())


def test_state_dict_needs_arch_and_input_shape(tmp_path, lenet):
    torch.save(lenet.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ParameterError, match="pass arch= one of .*lenet5") as err:
        load_model(tmp_path / "w.pt")
    assert str(tmp_path / "w.pt") in str(err.value)
    with pytest.raises(ParameterError, match="pass input_shape="):
        load_model(tmp_path / "w.pt", arch="lenet5")


def test_wrong_architecture_lists_keys_and_shapes(tmp_path, lenet):
    path = tmp_path / "w.pt"
    torch.save(lenet.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_model(path, arch="mlp", input_shape=SHAPE)
    text = str(err.value)
    assert str(path) in text and "missing keys: features.1.weight" in text
    assert "unexpected keys: features.0.weight" in text
    with pytest.raises(CheckpointError) as err:
        load_model(path, arch="lenet5", input_shape=SHAPE, num_classes=5)
    assert "fc.weight: file (10, 84) vs model (5, 84)" in str(err.value)
    assert "fc.bias: file (10,) vs model (5,)" in str(err.value)
    with pytest.raises(CheckpointError, match=r"classifier.0.weight: file \(120, 64\) vs "
                                              r"model \(120, 784\)"):
        load_model(path, arch="lenet5", input_shape=(1, 28, 28))


def test_strict_false_loads_what_matches(tmp_path, lenet):
    sd = dict(lenet.state_dict())
    del sd["fc.bias"]
    sd["extra.weight"] = torch.zeros(2)
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="strict=False"):
        load_model(tmp_path / "w.pt", arch="lenet5", input_shape=SHAPE)
    with pytest.warns(UserWarning, match="1 model tensors keep their initial values"):
        loaded = load_model(tmp_path / "w.pt", arch="lenet5", input_shape=SHAPE, strict=False)
    assert torch.equal(loaded.fc.weight, lenet.fc.weight)
    assert not torch.equal(loaded.fc.bias, lenet.fc.bias)  # seed 0 init, not the file's


@pytest.mark.parametrize("kind", ["zip", "plain_pickle", "whole_module"])
def test_pickled_code_is_refused_without_side_effect(tmp_path, kind):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    if kind == "zip":
        torch.save({"fc.weight": torch.zeros(2, 2), "x": CreatesFile(marker)}, path)
        found = "io.open"
    elif kind == "plain_pickle":
        path.write_bytes(pickle.dumps({"fc.weight": CreatesFile(marker)}, protocol=4))
        found = "io.open"
    else:
        torch.save(zoo_model("mlp", SHAPE, 10), path)
        found = "workbench.models.zoo.MLP"
    with pytest.raises(CheckpointError) as err:
        load_model(path, arch="mlp", input_shape=SHAPE)
    text = str(err.value)
    assert text.startswith(f"{path}: refused to unpickle: the file contains Python objects that "
                           f"would execute code (found {found})")
    assert "torch.save(model.state_dict())" in text
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [
    ("truncated_zip", "corrupt or truncated checkpoint"),
    ("truncated_legacy", "truncated"),
    ("empty", "ends early"),
    ("garbage", "not a model file"),
    ("truncated_safetensors", "corrupt or truncated safetensors"),
    ("not_a_state_dict", "holds a list, not a state_dict"),
    ("non_tensor_values", r"entries are not all tensors \(epoch \(int\)\)"),
])
def test_damaged_files_raise_checkpoint_errors_naming_the_file(tmp_path, lenet, damage,
                                                                message):
    path = tmp_path / "w.pt"
    sd = lenet.state_dict()
    if damage == "truncated_zip":
        torch.save(sd, path)
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "truncated_legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"this is not a checkpoint at all")
    elif damage == "truncated_safetensors":
        path = tmp_path / "w.safetensors"
        save_file(sd, path)
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "not_a_state_dict":
        torch.save([torch.zeros(2)], path)
    else:
        torch.save({**sd, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(path, arch="lenet5", input_shape=SHAPE)
    assert str(err.value).startswith(str(path))


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "torchscript"])
def test_nan_and_inf_weights_are_named(tmp_path, lenet, fmt):
    with torch.no_grad():
        lenet.fc.weight[0, 0] = float("nan")
        lenet.features[0].bias[1] = float("inf")
    path = tmp_path / f"w.{fmt}"
    if fmt == "pt":
        torch.save(lenet.state_dict(), path)
    elif fmt == "safetensors":
        save_file(lenet.state_dict(), path)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.script(lenet), str(path))
    with pytest.raises(CheckpointError, match="NaN or Inf values in fc.weight, features.0.bias"):
        load_model(path, arch="lenet5", input_shape=SHAPE)


def test_missing_paths_and_wrong_sources(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: no such file"):
        load_model(tmp_path / "nope.pt", arch="lenet5", input_shape=SHAPE)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_model(tmp_path, arch="lenet5", input_shape=SHAPE)
    with pytest.raises(CheckpointError, match="cannot load a model from a dict"):
        load_model({"fc.weight": torch.zeros(2, 2)})


def test_loaded_model_starts_a_session(tmp_path, digits):
    model = zoo_model("mlp", SHAPE, 10, seed=3)
    torch.save(model.state_dict(), tmp_path / "mlp.pt")
    session = workbench.Session(workbench.load_model(tmp_path / "mlp.pt", arch="mlp",
                                                     input_shape=SHAPE), digits)
    assert state_equal(session.base.model, model)
