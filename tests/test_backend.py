"""Contract tests of every registered inference engine (workbench.backend.ENGINES).

Each engine compiles untrained zoo models (dense, 90 % magnitude-pruned, 8- and 4-bit uniform,
8-bit with int8 activations, 90 % pruned then 8- / 4-bit quantized) and must reproduce the
compressed model's own logits on the digits test split within the engine's documented
:class:`~workbench.backend.Tolerance` (against ``compiled.reference`` for engines that quantize
activations), leave the input model untouched and report every Conv2d/Linear layer. A trained
LeNet-5 on the MNIST test split checks the ≥ 99.9 % argmax agreement of every low-bit path.
"""

from __future__ import annotations

import pytest
import torch

from conftest import hook_count, state_equal, zoo_model
from workbench.backend import ENGINES, Tolerance, compile_model, compile_variant
from workbench.backend.graph import find_sites
from workbench.backend.lowbit import signed_codes
from workbench.backend.sparse import FORMATS, format_bytes
from workbench.backend.weightonly import rice_code_bytes, to_rice_codes
from workbench.errors import ParameterError, UnknownNameError
from workbench.prune import PRUNERS
from workbench.quantize import QUANTIZERS

MODELS = ["mlp", "lenet5", "vgg_small", "resnet_small"]
VARIANTS = ["dense", "pruned90", "uniform8", "uniform4", "uniform8-act", "pruned90-uniform8",
            "pruned90-uniform4"]
# Inductor compiles for tens of seconds per model on 2 cores, and ONNX export + int8
# calibration take seconds per model: the slow engines run on a subset.
HEAVY = {"torch-compile": (["mlp"], ["dense", "pruned90"]),
         "onnxruntime": (["mlp", "lenet5", "resnet_small"], VARIANTS),
         "onnxruntime-int8": (["resnet_small"], VARIANTS),
         "onnxruntime-int8-dynamic": (["lenet5"], VARIANTS)}


@pytest.fixture(autouse=True)
def _no_grad():
    """Reference outputs are plain tensors (no autograd graph)."""
    with torch.no_grad():
        yield


# The activation fake-quant of "-act" variants rounds fp32 values: an engine that sums in
# another order (MKL vs ORT vs our kernels) flips codes at rounding ties, so only the engines
# that run the variant's own arithmetic (torch) or replace it by their int8 kernels take it.
ACT_ENGINES = ("torch", "lowbit", "lowbit-int8")


def _cases():
    for engine in ENGINES:
        models, variants = HEAVY.get(engine, (MODELS, VARIANTS))
        for m in models:
            for v in variants:
                if v.endswith("-act") and engine not in ACT_ENGINES:
                    continue
                yield pytest.param(engine, m, v, id=f"{engine}-{m}-{v}")


_built: dict = {}


def build(model_name: str, variant: str, data=None):
    """``(model, masks, quant)`` of an untrained zoo model compressed as ``variant`` (cached);
    ``data`` calibrates the activations of ``-act`` variants."""
    key = (model_name, variant)
    if key not in _built:
        model = zoo_model(model_name)
        masks, quant = {}, {}
        if variant.startswith("pruned90"):
            p = PRUNERS["magnitude"](model, 0.9)
            model, masks = p.model, p.masks
        if "uniform" in variant:
            bits = int(variant.split("uniform")[1][0])
            q = QUANTIZERS["uniform"](model, bits, masks=masks or None, data=data,
                                      activations=variant.endswith("-act"))
            model, quant = q.model, q.layers
        _built[key] = (model.eval(), masks, quant)
    return _built[key]


@pytest.mark.parametrize("engine,model_name,variant", list(_cases()))
def test_engine_matches_the_variant(engine, model_name, variant, digits):
    model, masks, quant = build(model_name, variant, digits)
    before, hooks = {k: v.clone() for k, v in model.state_dict().items()}, hook_count(model)
    x = digits.x_test
    cm = compile_model(model, engine, masks=masks, quant=quant, example=digits.x_train[:128],
                       threads=1)
    with torch.inference_mode():
        ref = (cm.reference or model)(x)
    out = cm(x)
    tol: Tolerance = ENGINES[engine].tolerance
    diff = float((out - ref).abs().max())
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert diff <= tol.bound(ref), f"{engine}: max |Δlogit| {diff:.3g} > {tol.bound(ref):.3g}"
    agreement = float((out.argmax(1) == ref.argmax(1)).float().mean())
    assert agreement >= tol.agreement, f"{engine}: argmax agreement {agreement:.4f}"
    # the input model is untouched, the report names every layer
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert hook_count(model) == hooks
    assert set(cm.report.kernels()) == {s.name for s in find_sites(model)}
    assert all(r.reason for r in cm.report.layers if r.kernel == "torch")
    # a second call (buffers reused) and a single sample give the same logits
    assert torch.equal(cm(x), out)
    one = cm(x[:1])
    assert float((one - out[:1]).abs().max()) <= tol.bound(ref)


def test_exact_engines_agree_on_the_trained_default_model(default_session):
    """On a trained model every fp32 engine's argmax agrees with the reference exactly."""
    v = default_session.base
    x = v.data.x_test
    with torch.no_grad():
        ref = v.model(x)
    for engine in ["onnxruntime", "sparse"]:
        out = compile_variant(v, engine, threads=1)(x)
        assert torch.equal(out.argmax(1), ref.argmax(1))
        assert float((out - ref).abs().max()) < 1e-3


@pytest.fixture(scope="module")
def mnist_lenet(mnist_dir):
    """LeNet-5 trained briefly on the MNIST t10k split's training part (cached on disk)."""
    from workbench.data import load_dataset
    from workbench.models.default import trained_model

    data = load_dataset("mnist", root=mnist_dir)
    return trained_model("lenet5", data, epochs=3, progress=False).eval(), data


def _mnist_variant(model, data, variant):
    if variant == "pruned70-uniform4":
        p = PRUNERS["magnitude"](model, 0.7)
        q = QUANTIZERS["uniform"](p.model, 4, masks=p.masks)
        return q.model, p.masks, q.layers
    method, bits = {"uniform8": ("uniform", 8), "uniform4": ("uniform", 4),
                    "ternary": ("ternary", 2), "uniform8-act": ("uniform", 8)}[variant]
    q = QUANTIZERS[method](model, bits, data=data, activations=variant.endswith("-act"))
    return q.model, {}, q.layers


@pytest.mark.parametrize("engine,variant,kernel", [
    ("lowbit", "uniform8", "int8-fp32"), ("lowbit", "uniform4", "int4-fp32"),
    ("lowbit", "ternary", "int2-fp32"), ("lowbit", "pruned70-uniform4", "int4-sparse-fp32"),
    ("lowbit", "uniform8-act", "int8-int8"), ("lowbit-int8", "uniform4", "int4-int8"),
    ("onnxruntime-int8", "dense", "ort-int8-static"),
    ("onnxruntime-int8-dynamic", "dense", "ort-int8-dynamic")])
def test_argmax_agreement_on_mnist(engine, variant, kernel, mnist_lenet):
    """≥ 99.9 % argmax agreement with the engine's reference on the MNIST test split (2001
    images, a trained model), and max|Δlogit| within the engine's documented bound."""
    model, data = mnist_lenet
    masks, quant = {}, {}
    if variant != "dense":
        model, masks, quant = _mnist_variant(model, data, variant)
    cm = compile_model(model, engine, masks=masks, quant=quant, example=data.x_train[:256],
                       threads=1, max_density=0.5) if engine.startswith("lowbit") else \
        compile_model(model, engine, example=data.x_train[:256], threads=1)
    assert kernel in set(cm.report.kernels().values())
    x = data.x_test
    with torch.no_grad():
        plain = model(x)
        ref = (cm.reference or model)(x)
    out = cm(x)
    tol = ENGINES[engine].tolerance
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= 0.999
    assert float((out - ref).abs().max()) <= tol.bound(ref)
    if cm.reference is None:  # weight-only: the reference is the plain variant, to fp32 rounding
        assert float((out - plain).abs().max()) < 1e-4 * float(plain.abs().max())


def test_lowbit_is_exact_for_activation_quantized_variants(fresh_session):
    """With calibrated int8 activations the VNNI kernels reproduce the variant's fake-quant;
    forcing fp32 activations keeps the fake-quant as a torch hook and is exact too."""
    q = fresh_session.quantize("uniform", 4, activations=True)
    x = q.data.x_test
    with torch.no_grad():
        ref = q.model(x)
    cm = compile_variant(q, "lowbit", threads=1)
    assert set(cm.report.kernels().values()) == {"int4-int8"}
    out = cm(x)
    assert torch.equal(out.argmax(1), ref.argmax(1))
    assert float((out - ref).abs().max()) < 1e-3 * float(ref.abs().max())
    weight_only = compile_variant(q, "lowbit", threads=1, activations="fp32")
    assert set(weight_only.report.kernels().values()) == {"int4-fp32"}
    assert torch.equal(weight_only(x).argmax(1), ref.argmax(1))


def test_lowbit_sparse_choice_follows_density_and_counts_bytes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(600, 300), torch.nn.ReLU(),
                                torch.nn.Linear(300, 10))
    p = PRUNERS["magnitude"](model, 0.9)
    q = QUANTIZERS["uniform"](p.model, 4, masks=p.masks)
    cm = compile_model(q.model, "lowbit", masks=p.masks, quant=q.layers)
    assert cm.report.kernels() == {"0": "int4-sparse-fp32", "2": "int4-sparse-fp32"}
    # Rice-coded gaps + 4-bit codes + per-block table, and the scale (not the bias)
    expected = 0
    for n in ("0", "2"):
        w = q.model.get_submodule(n).weight
        d, zw, _ = signed_codes(q.layers[n], w.shape[0])
        r = to_rice_codes(d - zw.to(torch.int32)[:, None])
        assert r.nnz == int((w != 0).sum()) and r.bits == 4
        expected += rice_code_bytes(r) + 4 * w.shape[0]
    assert cm.weight_bytes == expected
    dense = compile_model(q.model, "lowbit", quant=q.layers, sparse=False)
    assert set(dense.report.kernels().values()) == {"int4-fp32"}
    assert dense.weight_bytes > cm.weight_bytes
    q8 = QUANTIZERS["uniform"](model, 8)  # unpruned: density ~1, stays dense packed
    assert set(compile_model(q8.model, "lowbit", quant=q8.layers).report.kernels().values()) \
        == {"int8-fp32"}
    x = torch.randn(7, 600)
    with torch.no_grad():
        for c in (cm, dense):
            assert float((c(x) - q.model(x)).abs().max()) < 1e-5 * float(q.model(x).abs().max())
    with pytest.raises(ParameterError, match="activations"):
        compile_model(q.model, "lowbit", quant=q.layers, activations="int4")
    with pytest.raises(ParameterError, match="max_density"):
        compile_model(q.model, "lowbit", quant=q.layers, max_density=1.5)


def test_sparse_uses_sparse_kernels_on_a_pruned_variant(fresh_session):
    v = fresh_session.prune("magnitude", 0.95)
    cm = compile_variant(v, "sparse", threads=1, max_density=0.3)
    assert set(cm.report.kernels().values()) <= set(FORMATS) | {"nm-2:4", "nm-4:8"}
    assert set(cm.report.kernels().values()) & set(FORMATS)
    assert cm.weight_bytes < 0.35 * 4 * sum(s.layer.weight.numel()
                                            for s in find_sites(v.model))
    # automatic mode keeps LeNet's tiny layers (< MIN_WEIGHTS) on torch and says why
    auto = compile_variant(v, "sparse", threads=1)
    assert "too small" in auto.report.fallbacks()["features.0"]
    wide = torch.nn.Sequential(torch.nn.Linear(256, 256))
    p = PRUNERS["magnitude"](wide, 0.9)
    sizes = format_bytes(p.model[0].weight.detach())
    assert compile_model(p.model, "sparse").report.kernels() == {"0": min(sizes, key=sizes.get)}
    assert sizes["csr"] > 1.02 * min(sizes.values())  # not close enough to prefer CSR


def test_sparse_keeps_dense_layers_on_torch_and_says_why():
    model = torch.nn.Sequential(torch.nn.Linear(200, 100), torch.nn.ReLU())
    cm = compile_model(model, "sparse")
    (layer,) = cm.report.layers
    assert layer.kernel == "torch" and "dense is faster" in layer.reason


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("variant", ["dense", "pruned90"])
def test_every_sparse_format_matches_the_variant(fmt, model_name, variant, digits):
    """Each unstructured format of the sparse engine, forced onto every supported layer."""
    model, masks, _ = build(model_name, variant)
    before, hooks = {k: v.clone() for k, v in model.state_dict().items()}, hook_count(model)
    x = digits.x_test[:300]
    with torch.inference_mode():
        ref = model(x)
    cm = compile_model(model, "sparse", masks=masks, threads=2, max_density=1.0, formats=(fmt,))
    out = cm(x)
    tol: Tolerance = ENGINES["sparse"].tolerance
    assert float((out - ref).abs().max()) <= tol.bound(ref)
    assert torch.equal(out.argmax(1), ref.argmax(1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert hook_count(model) == hooks
    kernels = cm.report.kernels()
    assert set(kernels) == {s.name for s in find_sites(model)}
    # the forced format runs every layer the kernels support (grouped convs fall back)
    assert {k for k in kernels.values() if not k.startswith("nm-")} <= {fmt, "torch"}
    assert fmt in kernels.values()
    assert float((cm(x[:1]) - out[:1]).abs().max()) <= tol.bound(ref)


def test_nm_pruned_layers_use_the_nm_format():
    model = zoo_model("mlp")
    p = PRUNERS["nm"](model, n=2, m=4)
    cm = compile_model(p.model, "sparse", masks=p.masks, max_density=1.0)
    assert set(cm.report.kernels().values()) == {"nm-2:4"}
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert float((cm(x) - p.model(x)).abs().max()) < 1e-5


def test_unquantized_and_codebook_layers_fall_back_with_a_reason():
    model = zoo_model("mlp")
    q = QUANTIZERS["kmeans"](model, 4) if "kmeans" in QUANTIZERS else None
    cm = compile_model(model, "lowbit")
    assert set(cm.report.fallbacks().values()) == {"not quantized"}
    if q is not None:
        cm = compile_model(q.model, "lowbit", quant=q.layers)
        assert all("codebook" in r for r in cm.report.fallbacks().values())


def test_compile_variant_and_report_are_readable(fresh_session):
    v = fresh_session.prune("magnitude", 0.9)
    cm = compile_variant(v, "sparse")
    text = str(cm.report)
    assert "engine 'sparse'" in text and "features.0" in text
    assert cm.report.as_dict()["engine"] == "sparse"
    assert "CompiledModel(engine='sparse'" in repr(cm)


def test_bad_arguments_raise_clear_errors():
    model = zoo_model("mlp")
    with pytest.raises(UnknownNameError, match="onnxruntime"):
        compile_model(model, "onnxrt")
    with pytest.raises(ParameterError, match="threads"):
        compile_model(model, "torch", threads=0)
    with pytest.raises(ParameterError, match="example"):
        compile_model(model, "onnxruntime")
    with pytest.raises(ParameterError, match="max_density"):
        compile_model(model, "sparse", max_density=2)
    cm = compile_model(model, "torch")
    with pytest.raises(ParameterError, match="float tensor"):
        cm(torch.zeros(2, 64, dtype=torch.long))


def test_torch_compile_falls_back_with_a_note(monkeypatch):
    """If Inductor fails, the engine runs eagerly and says so."""
    model = zoo_model("mlp")

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler today")

    monkeypatch.setattr(torch, "compile", broken)
    cm = compile_model(model, "torch-compile")
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(cm(x), model(x))
    assert "no compiler today" in " ".join(cm.report.notes)
    assert set(cm.report.kernels().values()) == {"torch"}


def test_onnx_export_is_checked_at_another_batch_size():
    """A graph that only runs at the traced batch size is refused at compile time with the
    cause, not at the first other batch; a model written batch-agnostic runs at any size."""
    from torch import nn

    from workbench.errors import WorkbenchError

    class Baked(nn.Module):
        def __init__(self, agnostic):
            super().__init__()
            self.fc, self.agnostic = nn.Linear(64, 10), agnostic

        def forward(self, x):
            return self.fc(x.reshape(x.shape[0] if self.agnostic else int(x.shape[0]), -1))

    x = torch.randn(20, 1, 8, 8)
    with pytest.raises(WorkbenchError, match=r"batch size into a constant"):
        compile_model(Baked(False).eval(), "onnxruntime", example=x)
    model = Baked(True).eval()
    cm = compile_model(model, "onnxruntime", example=x)
    for b in (1, 5, 20):
        assert float((cm(x[:b]) - model(x[:b])).abs().max()) < 1e-5
