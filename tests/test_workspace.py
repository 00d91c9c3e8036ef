"""Saved sessions: round trip, no lost work when the writer dies, versions, changed data."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import workbench
from workbench import workspace
from workbench.errors import DataError, WorkbenchError
from workbench.workspace import MANIFEST, WorkspaceError
from tests.conftest import REPO, state_equal


def same_variants(a: workbench.Session, b: workbench.Session) -> bool:
    """Same variant names, recipes, weights and masks, in the same order."""
    if list(a.variants) != list(b.variants):
        return False
    for name, va in a.variants.items():
        vb = b.variants[name]
        if va.recipe != vb.recipe or not state_equal(va.model, vb.model):
            return False
        if va.masks.keys() != vb.masks.keys() or not all(
                torch.equal(va.masks[k], vb.masks[k]) for k in va.masks):
            return False
    return True


def edit_manifest(path: Path, change) -> None:
    doc = json.loads((path / MANIFEST).read_text())
    change(doc)
    (path / MANIFEST).write_text(json.dumps(doc))


def test_round_trip_keeps_variants_masks_codes_metrics_and_recipes(fresh_session, tmp_path):
    s = fresh_session
    pruned = s.prune("magnitude", 0.6)
    slim = s.prune("l1_structured", 0.5)  # channels physically removed: other shapes
    shared = s.quantize("kmeans", 4, parent=pruned.name)
    int8 = s.quantize("uniform", 8, activations=True, exclude=["fc"])  # hooks + tuple param
    for v in (s.base, pruned, slim, shared):
        v.metrics  # noqa: B018  cached before saving; int8's is left to compute after opening
    path = s.save(tmp_path / "ws")
    assert s.workspace == path

    again = workbench.Session.open(path)
    assert list(again.variants) == ["base", pruned.name, slim.name, shared.name, int8.name]
    assert same_variants(s, again) and not again.data_changed
    assert again.seed == s.seed and again.data.fingerprint() == s.data.fingerprint()
    for name, v in s.variants.items():
        w = again[name]
        assert w.model is not v.model and w.info == json.loads(json.dumps(v.info))
        assert w.quant.keys() == v.quant.keys()
        for layer, q in v.quant.items():
            r = w.quant[layer]
            assert r.bits == q.bits and torch.equal(r.codes, q.codes)
            assert torch.equal(r.scale, q.scale) and torch.equal(r.zero_point, q.zero_point)
            assert (r.codebook is None) == (q.codebook is None)
            assert q.codebook is None or torch.equal(r.codebook, q.codebook)
        x = s.data.x_test[:64]  # same function, including int8's activation hooks
        assert torch.equal(w.model(x), v.model(x))
    # metrics cached at save time come back without evaluating anything
    for name in ("base", pruned.name, slim.name, shared.name):
        assert "metrics" in again[name].__dict__ and again[name].metrics == s[name].metrics
    assert "metrics" not in again[int8.name].__dict__
    assert again[int8.name].metrics == int8.metrics  # computed now, and the same
    assert again[shared.name].metrics.bits == {n: 4 for n in shared.quant}
    assert again[int8.name].recipe.params["exclude"] == ["fc"]  # tuples come back as lists
    assert again[slim.name].model.features[0].out_channels == slim.model.features[0].out_channels

    # the reopened session keeps working, and saving again keeps the new variant
    child = again.prune("magnitude", 0.5, parent=slim.name)
    assert child.metrics.sparsity == pytest.approx(0.5, abs=0.02)
    again.save(path)
    third = workbench.Session.open(path)
    assert same_variants(again, third) and third[child.name].recipe.parent == slim.name


def test_workspace_holds_only_json_and_safetensors(fresh_session, tmp_path):
    from safetensors.torch import load_file

    fresh_session.prune("random", 0.5)
    path = fresh_session.save(tmp_path / "ws")
    files = [p for p in path.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".json", ".safetensors"}
    for p in files:
        assert p.read_bytes()[:1] != b"\x80"  # no pickle (its PROTO opcode)
        if p.suffix == ".safetensors":
            assert all(isinstance(t, torch.Tensor) for t in load_file(p).values())
    doc = json.loads((path / MANIFEST).read_text())
    assert doc["workbench_workspace"] == workspace.FORMAT_VERSION
    assert doc["data"]["registered"] == {"name": "digits", "seed": 0}  # reloaded by name
    assert doc["model"]["arch"]["name"] == "lenet5"


class Tiny(nn.Module):
    """A model not from the zoo (scriptable)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class Opaque(Tiny):
    """Neither scriptable (NumPy in forward) nor traceable (the trace bakes in the batch size)."""

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(h.reshape(len(h), int(np.prod(h.shape[1:]))))


def user_data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(90, 1, 8, 8, generator=g), torch.arange(90) % 3


def test_custom_model_is_saved_as_torchscript_and_data_as_tensors(tmp_path):
    torch.manual_seed(0)
    s = workbench.Session(Tiny(), user_data())
    slim = s.prune("l1_structured", 0.5)
    q = s.quantize("uniform", 8, parent=s.prune("magnitude", 0.5).name)
    path = s.save(tmp_path / "ws")
    suffixes = sorted(p.suffix for p in (path / "files").iterdir())
    assert suffixes == [".pt"] + [".safetensors"] * 5  # data, base, three variants
    script = next((path / "files").glob("*.pt"))
    assert zipfile.is_zipfile(script)  # TorchScript archive

    with pytest.warns(UserWarning, match="TorchScript.*model=Tiny"):
        viewed = workbench.Session.open(path)
    assert same_variants(s, viewed) and not viewed.data_changed
    x = s.data.x_test
    assert torch.equal(viewed[slim.name].model(x), slim.model(x))
    assert {n: viewed[n].metrics for n in s.variants} == {n: s[n].metrics for n in s.variants}
    assert viewed[q.name].metrics.bits == {"conv": 8, "fc": 8}

    editable = workbench.Session.open(path, model=Tiny())
    assert isinstance(editable.base.model, Tiny) and same_variants(s, editable)
    assert editable.prune("magnitude", 0.3).metrics.sparsity == pytest.approx(0.3, abs=0.02)


def test_unscriptable_model_saves_weights_and_needs_model_to_reopen(tmp_path):
    torch.manual_seed(0)
    s = workbench.Session(Opaque(), user_data())
    s.prune("magnitude", 0.5)
    with pytest.warns(UserWarning, match="cannot be saved as TorchScript.*model=Opaque"):
        path = s.save(tmp_path / "ws")
    assert not list((path / "files").glob("*.pt"))
    with pytest.raises(WorkspaceError, match=r"weights only.*model=Opaque\(\.\.\.\)"):
        workbench.Session.open(path)
    assert same_variants(s, workbench.Session.open(path, model=Opaque()))
    with pytest.raises(WorkspaceError, match="do not fit the architecture Sequential"):
        workbench.Session.open(path, model=nn.Sequential(nn.Flatten(), nn.Linear(64, 3)))


CHILD = textwrap.dedent("""
    import os, random, sys, time
    import workbench
    import workbench.workspace as ws

    ref_a, ref_b, target, mode, seed = sys.argv[1:]
    random.seed(int(seed))
    a, b = workbench.Session.open(ref_a), workbench.Session.open(ref_b)
    real_fsync, real_write = os.fsync, ws.atomic_write_bytes

    def hang():
        print("hang", flush=True)
        time.sleep(600)

    if mode == "in-file":  # dies between writing a temporary file and renaming it
        os.fsync = lambda fd: hang()
        b.save(target)
    elif mode == "before-manifest":  # dies with every new file written, the manifest not
        ws.atomic_write_bytes = lambda p, d: hang() if p.name == ws.MANIFEST else real_write(p, d)
        b.save(target)
    else:  # a slow writer saving two states in turn, killed at a random moment
        def slow_fsync(fd):
            time.sleep(random.uniform(0, 0.01))
            real_fsync(fd)
        os.fsync = slow_fsync
        a.save(target)
        print("ready", flush=True)
        while True:
            b.save(target)
            a.save(target)
""")


def test_killed_writer_leaves_the_old_or_the_new_state(tmp_path):
    from workbench.models import create_model

    model = create_model("mlp", (1, 8, 8), 3)  # a zoo model on saved tensors: quick to open
    a = workbench.Session(model, user_data())
    a.prune("magnitude", 0.5, name="v")
    a.quantize("uniform", 8, parent="v")
    b = workbench.Session(model, user_data())
    b.prune("random", 0.7, name="v", seed=1)  # same name, other weights: a mix would show
    b.prune("magnitude", 0.8)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    target = tmp_path / "target"
    rng = random.Random(0)

    def run_and_kill(mode: str, expected: str) -> workbench.Session:
        with open(tmp_path / "child.err", "w") as err:
            proc = subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / "a"), str(tmp_path / "b"),
                 str(target), mode, str(rng.randrange(10**6))],
                cwd=REPO, stdout=subprocess.PIPE, stderr=err, env=dict(os.environ))
            try:
                line = proc.stdout.readline().decode().strip()
                assert line == expected, (tmp_path / "child.err").read_text()
                if mode == "random":
                    time.sleep(rng.uniform(0, 0.4))
            finally:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                proc.stdout.close()
        return workbench.Session.open(target)

    # killed in the middle of a file: the temporary file is left over and ignored
    a.save(target)
    opened = run_and_kill("in-file", "hang")
    assert same_variants(opened, a)
    assert list((target / "files").glob(".*.tmp"))
    # killed after writing every new file but before the manifest: still the old state
    opened = run_and_kill("before-manifest", "hang")
    assert same_variants(opened, a)
    kept = {e["path"] for e in workspace._file_entries(json.loads((target / MANIFEST).read_text()))}
    written = {f"files/{p.name}" for p in (target / "files").iterdir() if p.suffix != ".tmp"}
    assert len(written - kept) == 2  # b's two variant files, written but not (yet) used
    # killed at random moments of repeated saves: always one whole state
    for _ in range(3):
        opened = run_and_kill("random", "ready")
        assert same_variants(opened, a) or same_variants(opened, b)
    # the next save cleans every leftover
    opened.save(target)
    doc = json.loads((target / MANIFEST).read_text())
    kept = {e["path"] for e in workspace._file_entries(doc)}
    assert {f"files/{p.name}" for p in (target / "files").iterdir()} == kept
    assert not list(target.glob(".*.tmp"))


def test_leftovers_are_ignored_then_cleaned_and_foreign_directories_refused(fresh_session,
                                                                            tmp_path):
    fresh_session.prune("magnitude", 0.5)
    path = fresh_session.save(tmp_path / "ws")
    (path / f".{MANIFEST}.abc123.tmp").write_text('{"half": ')
    (path / "files" / ".v-1.safetensors.xyz.tmp").write_bytes(b"\x00" * 10)
    (path / "files" / "old-0123456789abcdef.safetensors").write_bytes(b"orphan")
    (path / "notes.txt").write_text("mine")
    assert same_variants(workbench.Session.open(path), fresh_session)
    fresh_session.save(path)
    assert sorted(p.name for p in path.iterdir()) == ["files", "notes.txt", MANIFEST]
    assert len(list((path / "files").iterdir())) == 2  # base and the variant

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"jpeg")
    with pytest.raises(WorkspaceError, match="photos: is not empty and not a workbench"):
        fresh_session.save(foreign)
    assert [p.name for p in foreign.iterdir()] == ["cat.jpg"]


def test_format_versions_are_checked(fresh_session, tmp_path, monkeypatch):
    path = fresh_session.save(tmp_path / "ws")
    edit_manifest(path, lambda d: d.update(workbench_workspace=0))
    with pytest.raises(WorkspaceError, match=r"workbench.json: workspace format version 0 "
                                             r"found, this workbench reads version 1; no migr"):
        workbench.Session.open(path)
    monkeypatch.setitem(workspace.MIGRATIONS, 0, lambda doc: {**doc, "migrated": True})
    assert list(workbench.Session.open(path).variants) == ["base"]  # migrated in memory
    edit_manifest(path, lambda d: d.update(workbench_workspace=7))
    with pytest.raises(WorkspaceError, match="version 7 found.*newer workbench: upgrade"):
        workbench.Session.open(path)


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / MANIFEST).write_text('{"workbench_workspace": 1, "data": {'),
     r"workbench.json: the manifest is not valid JSON \(Expecting"),
    (lambda p: (p / MANIFEST).write_text("[1, 2]"), "not a workbench manifest"),
    (lambda p: edit_manifest(p, lambda d: d.pop("variants")), "'variants' must be a list"),
    (lambda p: edit_manifest(p, lambda d: d.update(workbench_workspace="1")),
     "format version must be an integer"),
    (lambda p: edit_manifest(p, lambda d: d["variants"][0]["recipe"].pop("kind")),
     r"variant 0: missing field\(s\) \['kind'\]"),
    (lambda p: edit_manifest(p, lambda d: d["variants"][0]["file"].update(path="../x.pt")),
     "variant 0: malformed file entry"),
    (lambda p: (p / MANIFEST).unlink(), "not a workbench workspace"),
])
def test_malformed_manifest_gives_clear_error(fresh_session, tmp_path, damage, message):
    fresh_session.prune("magnitude", 0.5)
    path = fresh_session.save(tmp_path / "ws")
    damage(path)
    with pytest.raises(WorkbenchError, match=message):
        workbench.Session.open(path)


def test_damaged_or_missing_weight_file_is_reported(fresh_session, tmp_path):
    fresh_session.prune("magnitude", 0.5)
    path = fresh_session.save(tmp_path / "ws")
    weights = next((path / "files").glob("magnitude-50-*"))
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(WorkspaceError, match=rf"{weights.name}: damaged \(its SHA-256"):
        workbench.Session.open(path)
    weights.unlink()
    with pytest.raises(WorkspaceError, match=rf"{weights.name}: cannot read it"):
        workbench.Session.open(path)


def test_changed_registered_data_is_detected(fresh_session, tmp_path):
    fresh_session.base.metrics  # noqa: B018
    path = fresh_session.save(tmp_path / "ws")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unchanged data: no warning
        same = workbench.Session.open(path)
    assert not same.data_changed and "metrics" in same.base.__dict__
    edit_manifest(path, lambda d: d["data"].update(fingerprint="0123456789abcdef"))
    with pytest.warns(UserWarning, match="fingerprint 0123456789abcdef when saved, "
                                         f"{fresh_session.data.fingerprint()} now"):
        changed = workbench.Session.open(path)
    assert changed.data_changed and "metrics" not in changed.base.__dict__  # stale: dropped
    assert changed.base.metrics == fresh_session.base.metrics  # recomputed on current data
    with pytest.raises(DataError, match="differs from the data saved"):
        workbench.Session.open(path, on_data_change="error")


def test_changed_data_file_or_other_data_is_detected(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    s = workbench.Session(Tiny(), user_data())
    path = s.save(tmp_path / "ws")
    with pytest.warns(UserWarning):  # TorchScript notice only
        assert not workbench.Session.open(path).data_changed
    data_file = next((path / "files").glob("data-*"))
    tensors = load_file(data_file)
    tensors["x_test"][0, 0, 0, 0] += 0.5
    save_file(tensors, data_file)
    with pytest.warns(UserWarning, match="differs from the data saved"):
        reopened = workbench.Session.open(path, model=Tiny())
    assert reopened.data_changed
    assert torch.equal(reopened.data.x_test, tensors["x_test"])  # the data as it is now
    x, y = user_data()
    with pytest.raises(DataError, match="differs"):
        workbench.Session.open(path, model=Tiny(), data=(x + 0.1, y), on_data_change="error")


def test_damaged_or_outdated_model_cache_is_rebuilt(digits, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from workbench import cache
    from workbench.models.default import trained_model

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    first = trained_model("mlp", digits, epochs=1, progress=False)
    (path,) = (tmp_path / "models").iterdir()
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")  # a damaged cache file
    again = trained_model("mlp", digits, epochs=1, progress=False)
    assert state_equal(again, first)  # retrained (deterministic), not misread
    assert load_file(path).keys() == first.state_dict().keys()  # and rewritten whole
    save_file({"weight": torch.zeros(2)}, path)  # readable, but not what this version wrote
    assert state_equal(trained_model("mlp", digits, epochs=1, progress=False), first)
    assert load_file(path).keys() == first.state_dict().keys()
    # another cache format version means another file: an old one is never read
    key = cache.cache_key(kind="trained", arch="mlp")
    monkeypatch.setattr(cache, "CACHE_VERSION", cache.CACHE_VERSION + 1)
    assert cache.cache_key(kind="trained", arch="mlp") != key
    trained_model("mlp", digits, epochs=1, progress=False)
    assert len(list((tmp_path / "models").iterdir())) == 2
