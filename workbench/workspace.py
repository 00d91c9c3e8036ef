"""Save a :class:`~workbench.Session` to a workspace directory and open it again, losing nothing.

A workspace holds, with no pickle anywhere::

    workbench.json                  the manifest: format version, data, model, variants, results
    files/data-<hash>.safetensors   the data splits (left out for a registered dataset such as
                                    digits, which is reloaded by name and seed)
    files/base-<hash>.safetensors   the base model's weights
    files/base-<hash>.pt            TorchScript of a model not from the zoo (if scriptable)
    files/<variant>-<hash>.safetensors
                                    one per variant: weights, pruning masks, quantization codes

Reopening rebuilds nothing: weights, masks and quantization codes are read back, recipes are
kept in the manifest and the cached metrics are prefilled, so ``variant.metrics`` is instant.

**Models.** A zoo model (``workbench.models.create_model``, which sets ``model.workbench_arch``)
is rebuilt from its description. Any other model is also saved as TorchScript (scripted, else
traced and checked); reopened that way its variants and metrics (all measured at save time) are
there to inspect, and ``Session.open(directory, model=MyNet())`` gives back a module that can be
pruned further. A model that is neither is saved as weights only, with a warning, and needs
``model=`` to reopen.

**No lost work.** Every file is written atomically (temporary file in the same directory, fsync,
rename). Files are named by their content hash and never overwritten with other content, and
the manifest is written last, so a save that dies at any point leaves the previous manifest and
every file it names intact: opening gives the old state or the new one, never a mix. Files the
manifest does not name (leftovers of an interrupted save) are ignored when opening and deleted
by the next save. Each file's SHA-256 is checked when it is read. One writer at a time.

**Versions.** The manifest records :data:`FORMAT_VERSION`. A workspace of another version is
migrated if a step in :data:`MIGRATIONS` exists, else refused with an error naming both versions.

**Changed data.** The manifest records the data fingerprint. If the data found when opening
differs (a registered dataset that changed, an edited data file, or ``data=`` passed to
:func:`open_session`), the session opens with the new data, ``session.data_changed`` is True,
the cached metrics are dropped (they are recomputed on the new data) and a warning is issued;
``on_data_change="error"`` raises :class:`~workbench.errors.DataError` instead.

Examples
--------
>>> import tempfile, workbench
>>> s = workbench.Session.default(progress=False)
>>> v = s.prune("magnitude", sparsity=0.5)
>>> path = s.save(tempfile.mkdtemp() + "/ws")
>>> again = workbench.Session.open(path)
>>> list(again.variants), again["magnitude-50"].metrics.sparsity == v.metrics.sparsity
(['base', 'magnitude-50'], True)
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import warnings
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from workbench.cache import atomic_write_bytes
from workbench.errors import DataError, WorkbenchError

FORMAT_VERSION = 1
MANIFEST = "workbench.json"
FILES = "files"

#: ``{old_version: step}``; ``step(manifest) -> manifest`` of ``old_version + 1``.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}

_FILE_PATH = re.compile(r"files/[\w.+-]+\.(safetensors|pt)")
_REGISTERED: dict[tuple, str] = {}  # (name, seed, fingerprint) → fingerprint of a fresh load


class WorkspaceError(WorkbenchError, ValueError):
    """A workspace directory is missing, malformed, damaged or of another format version."""


# --- saving ------------------------------------------------------------------------------------
def save_session(session, directory) -> Path:
    """Write ``session`` to ``directory`` (created if needed; an existing workspace is updated).

    Parameters
    ----------
    session : Session
    directory : str or Path
        A new or empty directory, or a workspace saved earlier (which is replaced atomically).

    Returns
    -------
    Path
        The workspace directory.

    Examples
    --------
    >>> import tempfile, workbench
    >>> s = workbench.Session.default(progress=False)
    >>> path = save_session(s, tempfile.mkdtemp() + "/ws")
    >>> sorted(p.name for p in path.iterdir())
    ['files', 'workbench.json']
    """
    import workbench

    root = Path(directory).expanduser()
    old = _previous_manifest(root)
    (root / FILES).mkdir(parents=True, exist_ok=True)
    model = _save_model(root, session.base.model, session.data)
    if model["arch"] is None:  # reopened as TorchScript, layers are opaque: measure them now
        for v in session.variants.values():
            v.metrics  # noqa: B018  (computes and caches)
    doc = {
        "workbench_workspace": FORMAT_VERSION,
        "workbench_version": workbench.__version__,
        "created": (old or {}).get("created") or _now(),
        "saved": _now(),
        "session": {"name": session.name, "seed": session.seed,
                    "model_info": _jsonable(getattr(session, "model_info", None))},
        "data": _save_data(root, session.data, session.seed),
        "model": model,
        "variants": [_save_variant(root, v) for v in session.variants.values()
                     if v.recipe is not None],
        "results": {
            "workbench_version": workbench.__version__,
            "data_fingerprint": session.data.fingerprint(),
            "metrics": {v.name: _jsonable(asdict(v.metrics)) for v in session.variants.values()
                        if "metrics" in v.__dict__},  # only what was computed (a cache)
        },
    }
    _fsync_dir(root / FILES)
    atomic_write_bytes(root / MANIFEST, json.dumps(doc, indent=1).encode())
    _fsync_dir(root)
    _remove_unreferenced(root, doc)
    return root


def _previous_manifest(root: Path) -> dict | None:
    """The manifest already in ``root`` (or None); refuses a directory that is not a workspace."""
    if root.exists() and not root.is_dir():
        raise WorkspaceError(f"{root}: is a file, not a workspace directory")
    if not root.exists():
        return None
    foreign = [p.name for p in root.iterdir()
               if p.name not in (MANIFEST, FILES) and not _is_temporary(p.name)]
    if foreign and not (root / MANIFEST).exists():
        raise WorkspaceError(f"{root}: is not empty and not a workbench workspace (it holds "
                             f"{sorted(foreign)[:5]}); save to a new or empty directory")
    try:
        old = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None  # unreadable: replaced by this save
    if not isinstance(old, dict):
        return None
    version = old.get("workbench_workspace")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise WorkspaceError(f"{root / MANIFEST}: workspace format version {version} was written "
                             f"by a newer workbench (this one writes {FORMAT_VERSION}); save to "
                             "another directory, or upgrade workbench")
    return old


def _save_data(root: Path, data, seed: int) -> dict:
    entry = {"name": data.name, "fingerprint": data.fingerprint(), "source": data.source,
             "classes": list(data.classes), "meta": _jsonable(data.meta),
             "registered": None, "file": None}
    if _reloads_by_name(data, seed):
        entry["registered"] = {"name": data.name, "seed": seed}
    else:
        tensors = {part: getattr(data, part) for part in
                   ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        entry["file"] = _put(root, "data", _safetensors(tensors), ".safetensors")
    return entry


def _reloads_by_name(data, seed: int) -> bool:
    """True if ``load_dataset(data.name, seed=seed)`` gives exactly ``data`` (checked once)."""
    from workbench.data import DATASETS, load_dataset

    if data.name not in DATASETS:
        return False
    key = (data.name, seed, data.fingerprint())
    if key not in _REGISTERED:
        try:
            _REGISTERED[key] = load_dataset(data.name, seed=seed).fingerprint()
        except Exception:  # noqa: BLE001  cannot reload (files missing…): save the tensors
            _REGISTERED[key] = ""
    return _REGISTERED[key] == data.fingerprint()


def _save_model(root: Path, model: nn.Module, data) -> dict:
    name = getattr(model, "original_name", type(model).__name__)  # a ScriptModule's class
    entry = {"class": name, "arch": _zoo_arch(model), "torchscript": None,
             "weights": _put(root, "base", _safetensors(model.state_dict()), ".safetensors")}
    if entry["arch"] is None:
        script = _torchscript(model, data.x_test[:3])
        if script is None:
            warnings.warn(
                f"{name} is not a workbench zoo model and cannot be saved as "
                "TorchScript (torch.jit.script and torch.jit.trace both failed); its weights are "
                f"saved, so reopen with workbench.Session.open({str(root)!r}, model={name}(...)) "
                "passing an instance of the architecture",
                stacklevel=4)
        else:
            entry["torchscript"] = _put(root, "base", script, ".pt")
    return entry


def _zoo_arch(model: nn.Module) -> dict | None:
    """``model.workbench_arch`` if rebuilding it gives the same parameter names and shapes."""
    from workbench.models import MODELS, create_model

    arch = getattr(model, "workbench_arch", None)
    if not isinstance(arch, dict) or arch.get("name") not in MODELS:
        return None
    try:
        fresh = create_model(arch["name"], arch["input_shape"], arch["num_classes"],
                             **arch.get("params", {})).state_dict()
    except Exception:  # noqa: BLE001  the description no longer builds: treat as a custom model
        return None
    own = model.state_dict()
    if fresh.keys() != own.keys() or any(fresh[k].shape != own[k].shape for k in own):
        return None
    return _jsonable(arch)


def _torchscript(model: nn.Module, x: torch.Tensor) -> bytes | None:
    """TorchScript bytes of ``model`` (scripted, else traced), checked on ``x``; None if neither."""
    with torch.no_grad():
        expected = model(x)
        for make in (lambda: torch.jit.script(model),
                     lambda: torch.jit.trace(model, x[:2], check_trace=False)):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    scripted = make()
                    if not torch.allclose(scripted(x), expected, atol=1e-6):
                        continue  # e.g. a trace that baked in the batch size (traced on 2)
                    buf = io.BytesIO()
                    torch.jit.save(scripted, buf)
                    return buf.getvalue()
            except Exception:  # noqa: BLE001  not scriptable / traceable
                continue
    return None


def _save_variant(root: Path, v) -> dict:
    from workbench.quantize import activation_quantizers

    tensors = {f"state/{k}": t for k, t in v.model.state_dict().items()}
    tensors.update({f"mask/{layer}": m for layer, m in v.masks.items()})
    for layer, q in v.quant.items():
        parts = {"codes": q.codes, "scale": q.scale, "zero_point": q.zero_point,
                 "codebook": q.codebook}
        tensors.update({f"quant/{layer}/{k}": t for k, t in parts.items() if t is not None})
    return {
        "recipe": _jsonable(v.recipe.to_dict()),
        "file": _put(root, v.name, _safetensors(tensors), ".safetensors"),
        "bits": {layer: q.bits for layer, q in v.quant.items()},
        "activations": {layer: {"scale": h.scale, "zero_point": h.zero_point, "bits": h.bits}
                        for layer, h in activation_quantizers(v.model).items()},
        "info": _jsonable(v.info),
    }


def _safetensors(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save({k: t.detach().cpu().contiguous().clone() for k, t in tensors.items()})


def _put(root: Path, stem: str, data: bytes, suffix: str) -> dict:
    """Store ``data`` under a name made of ``stem`` and its hash (kept if already there)."""
    digest = hashlib.sha256(data).hexdigest()
    safe = re.sub(r"[^\w.+-]", "_", stem)[:60]
    rel = f"{FILES}/{safe}-{digest[:16]}{suffix}"
    path = root / rel
    if not (path.is_file() and _sha256(path.read_bytes()) == digest):
        atomic_write_bytes(path, data)
    return {"path": rel, "sha256": digest}


def _remove_unreferenced(root: Path, doc: dict) -> None:
    """Delete leftovers: temporary files and files the manifest does not name."""
    keep = {e["path"] for e in _file_entries(doc)}
    for path in [*root.iterdir(), *(root / FILES).iterdir()]:
        rel = path.relative_to(root).as_posix()
        stale = _is_temporary(path.name) or (path.parent.name == FILES and rel not in keep
                                             and _FILE_PATH.fullmatch(rel))
        if stale and path.is_file():
            path.unlink(missing_ok=True)


def _file_entries(doc: dict) -> list[dict]:
    entries = [doc["data"]["file"], doc["model"]["weights"], doc["model"]["torchscript"]]
    entries += [v["file"] for v in doc["variants"]]
    return [e for e in entries if e]


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")  # atomic_write_bytes's temp names


def _fsync_dir(path: Path) -> None:
    """Make the renames in ``path`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- opening -----------------------------------------------------------------------------------
def open_session(directory, *, model: nn.Module | None = None, data=None,
                 on_data_change: str = "warn"):
    """Open a workspace written by :func:`save_session`, with all variants and cached metrics.

    Parameters
    ----------
    directory : str or Path
    model : nn.Module, optional
        An instance of the base architecture, to load the saved weights into. Needed for a
        model that is neither from the zoo nor saved as TorchScript; for a TorchScript model
        it gives back a module that can be pruned further.
    data : optional
        Data to use instead of the saved data (anything :class:`~workbench.Session` accepts).
    on_data_change : {"warn", "error"}
        What to do if the data differs from the data saved: warn and set
        ``session.data_changed`` (cached metrics are dropped), or raise ``DataError``.

    Returns
    -------
    Session

    Examples
    --------
    >>> import tempfile, workbench
    >>> s = workbench.Session.default(progress=False)
    >>> _ = s.quantize("uniform", bits=4)
    >>> again = open_session(save_session(s, tempfile.mkdtemp() + "/ws"))
    >>> again["uniform-4b"].metrics.bits["fc"], again.data_changed
    (4, False)
    """
    import workbench
    from workbench.data.convert import as_dataset
    from workbench.metrics import Metrics
    from workbench.session import Session

    if on_data_change not in ("warn", "error"):
        raise WorkspaceError(f"on_data_change must be 'warn' or 'error', got {on_data_change!r}")
    root = Path(directory).expanduser()
    doc = read_manifest(root)
    where = str(root / MANIFEST)
    info = _section(doc, "session", dict, where)
    seed = int(info.get("seed", 0))
    saved = _section(doc, "data", dict, where)
    if data is None:
        data = _open_data(root, saved, where)
    data = as_dataset(data, seed=seed)
    changed = data.fingerprint() != saved.get("fingerprint")
    if changed:
        message = (f"{root}: the data differs from the data saved in the workspace (dataset "
                   f"{saved.get('name')!r}: fingerprint {saved.get('fingerprint')} when saved, "
                   f"{data.fingerprint()} now)")
        if on_data_change == "error":
            raise DataError(message)
        warnings.warn(message + "; cached metrics are dropped and recomputed on the new data; "
                      "session.data_changed is True", stacklevel=3)

    session = Session(_open_base(root, _section(doc, "model", dict, where), model, where),
                      data, seed=seed, name=str(info.get("name", "session")))
    if info.get("model_info") is not None:
        session.model_info = info["model_info"]
    session.data_changed = changed
    for i, entry in enumerate(_section(doc, "variants", list, where)):
        variant = _open_variant(root, entry, session, f"{where}, variant {i}")
        session.variants[variant.name] = variant

    results = doc.get("results") if isinstance(doc.get("results"), dict) else {}
    names = {f.name for f in fields(Metrics)}
    if (not changed and results.get("workbench_version") == workbench.__version__
            and results.get("data_fingerprint") == data.fingerprint()):
        for name, values in (results.get("metrics") or {}).items():
            if name in session.variants and isinstance(values, dict) and set(values) == names:
                values = {**values, "per_class_accuracy": tuple(values["per_class_accuracy"])}
                session.variants[name].__dict__["metrics"] = Metrics(**values)
    session.workspace = root
    return session


def read_manifest(root: Path) -> dict:
    """The manifest of workspace ``root``, migrated to :data:`FORMAT_VERSION`, or a clear error.

    Examples
    --------
    >>> import tempfile
    >>> read_manifest(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    workbench.workspace.WorkspaceError: ...: not a workbench workspace (no workbench.json; ...
    """
    path = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise WorkspaceError(f"{root}: no such workspace directory")
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise WorkspaceError(f"{root}: not a workbench workspace (no {MANIFEST}; if a save was "
                             "interrupted before its first manifest, nothing was saved)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise WorkspaceError(f"{path}: cannot read the manifest ({err})") from None
    except json.JSONDecodeError as err:
        raise WorkspaceError(f"{path}: the manifest is not valid JSON ({err})") from None
    if not isinstance(doc, dict) or "workbench_workspace" not in doc:
        raise WorkspaceError(f"{path}: not a workbench manifest (no 'workbench_workspace' "
                             "format version)")
    version = doc["workbench_workspace"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise WorkspaceError(f"{path}: format version must be an integer, got {version!r}")
    while version < FORMAT_VERSION and version in MIGRATIONS:
        doc = MIGRATIONS[version](doc)
        version = doc["workbench_workspace"] = version + 1
    if version != FORMAT_VERSION:
        newer = version > FORMAT_VERSION
        raise WorkspaceError(
            f"{path}: workspace format version {version} found, this workbench reads version "
            f"{FORMAT_VERSION}; " + ("it was written by a newer workbench: upgrade workbench"
                                     if newer else
                                     "no migration exists: rebuild the variants from the recipes "
                                     "in the manifest's 'variants' list (session.load_recipes)"))
    return doc


def _section(doc: dict, key: str, kind: type, where: str):
    if not isinstance(doc.get(key), kind):
        raise WorkspaceError(f"{where}: '{key}' must be a {kind.__name__} "
                             f"(got {type(doc.get(key)).__name__}); the manifest is damaged")
    return doc[key]


def _read(root: Path, entry, where: str) -> bytes:
    """The bytes of a file the manifest names, checked against its SHA-256."""
    if not isinstance(entry, dict) or not _FILE_PATH.fullmatch(str(entry.get("path"))):
        raise WorkspaceError(f"{where}: malformed file entry {entry!r}")
    path = root / entry["path"]
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise WorkspaceError(f"{path}: cannot read it ({err.strerror or err}); the workspace is "
                             "incomplete") from None
    if _sha256(blob) != entry.get("sha256"):
        raise WorkspaceError(f"{path}: damaged (its SHA-256 does not match the manifest)")
    return blob


def _tensors(root: Path, entry, where: str) -> dict:
    from safetensors.torch import load

    blob = _read(root, entry, where)
    try:
        return load(blob)
    except Exception as err:  # noqa: BLE001  SafetensorError has no stable import path
        raise WorkspaceError(f"{root / entry['path']}: not a readable safetensors file "
                             f"({err})") from None


def _open_data(root: Path, saved: dict, where: str):
    from workbench.data import Dataset, load_dataset

    if saved.get("registered"):
        reg = saved["registered"]
        try:
            return load_dataset(reg["name"], seed=int(reg.get("seed", 0)))
        except WorkbenchError as err:
            raise DataError(f"{where}: cannot reload dataset {reg['name']!r} ({err}); pass "
                            "data= to Session.open") from None
    entry = saved.get("file")
    if not isinstance(entry, dict):
        raise WorkspaceError(f"{where}: 'data' names neither a registered dataset nor a file")
    path = root / str(entry.get("path"))
    try:  # a changed data file is reported by its fingerprint, not refused as damaged
        from safetensors.torch import load

        t = load(path.read_bytes())
        return Dataset(str(saved.get("name")), t["x_train"], t["y_train"], t["x_val"],
                       t["y_val"], t["x_test"], t["y_test"], tuple(saved.get("classes") or ()),
                       str(saved.get("source", "")), dict(saved.get("meta") or {}))
    except WorkbenchError:
        raise
    except Exception as err:  # noqa: BLE001  missing, truncated or foreign file
        raise DataError(f"{path}: cannot read the saved data ({err}); pass data= to "
                        "Session.open") from None


def _open_base(root: Path, saved: dict, model: nn.Module | None, where: str) -> nn.Module:
    state = _tensors(root, saved.get("weights"), where)
    if model is not None:
        if not isinstance(model, nn.Module):
            raise WorkspaceError(f"model= must be an nn.Module, got {type(model).__name__}")
        model = copy.deepcopy(model)
    elif saved.get("arch"):
        from workbench.models import create_model

        arch = saved["arch"]
        model = create_model(arch["name"], arch["input_shape"], arch["num_classes"],
                             **arch.get("params", {}))
    elif saved.get("torchscript"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(io.BytesIO(_read(root, saved["torchscript"], where)))
        warnings.warn(
            f"{root}: the base model ({saved.get('class')}) is not a zoo model, so it was "
            "reopened from TorchScript: the saved variants and their cached metrics are all "
            "here, but to prune or quantize further pass an instance of the architecture: "
            f"workbench.Session.open({str(root)!r}, model={saved.get('class')}(...))",
            stacklevel=4)
    else:
        raise WorkspaceError(
            f"{where}: the base model ({saved.get('class')}) was saved as weights only, because "
            "it is neither a zoo model nor TorchScript; pass an instance of its architecture: "
            f"workbench.Session.open({str(root)!r}, model={saved.get('class')}(...))")
    _set_state(model, state, f"{root / saved['weights']['path']}", exact=True)
    return model.eval()


def _set_state(model: nn.Module, state: dict, where: str, exact: bool = False) -> None:
    """Load ``state`` into ``model``; unless ``exact``, tensors of another shape (channels
    removed by structured pruning) replace the module's own and its sizes follow."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or (exact and shapes):
        raise WorkspaceError(
            f"{where}: the saved weights do not fit the architecture {type(model).__name__} "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}, other shapes {shapes[:5]}); "
            "pass model= an instance of the architecture the workspace was saved with")
    modules = dict(model.named_modules())
    resized = set()
    with torch.no_grad():
        for key, value in state.items():
            owner, _, attr = key.rpartition(".")
            module, current = modules[owner], getattr(modules[owner], attr)
            if current.shape == value.shape:
                own[key].copy_(value)
            elif isinstance(current, nn.Parameter):
                setattr(module, attr, nn.Parameter(value, requires_grad=current.requires_grad))
                resized.add(owner)
            else:
                setattr(module, attr, value)
                resized.add(owner)
    for module in (modules[name] for name in resized):  # sizes as structured.py's _slice_ sets
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            module.out_channels, module.in_channels = module.weight.shape[:2]
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = len(module.running_mean if module.weight is None
                                      else module.weight)


def _open_variant(root: Path, entry, session, where: str):
    from workbench.quantize import ActivationFakeQuant, QuantizedTensor
    from workbench.recipe import Recipe
    from workbench.session import Variant

    if not isinstance(entry, dict):
        raise WorkspaceError(f"{where}: must be a mapping, got {type(entry).__name__}")
    recipe = Recipe.from_dict(entry.get("recipe"), where)
    if recipe.name in session.variants or not recipe.name:
        raise WorkspaceError(f"{where}: variant name {recipe.name!r} is empty or repeated")
    if recipe.parent is not None and recipe.parent not in session.variants:
        raise WorkspaceError(f"{where}: variant {recipe.name!r} names parent {recipe.parent!r}, "
                             "which is not saved before it")
    tensors = _tensors(root, entry.get("file"), where)
    groups: dict[str, dict] = {"state": {}, "mask": {}, "quant": {}}
    for key, t in tensors.items():
        kind, _, rest = key.partition("/")
        if kind not in groups:
            raise WorkspaceError(f"{root / entry['file']['path']}: unexpected tensor {key!r}")
        groups[kind][rest] = t
    model = copy.deepcopy(session.base.model)
    _set_state(model, groups["state"], str(root / entry["file"]["path"]))
    bits = entry.get("bits") or {}
    quant = {}
    for layer in bits:
        part = {k: groups["quant"].get(f"{layer}/{k}")
                for k in ("codes", "scale", "zero_point", "codebook")}
        if any(part[k] is None for k in ("codes", "scale", "zero_point")):
            raise WorkspaceError(f"{where}: quantization codes of layer {layer!r} are missing")
        quant[layer] = QuantizedTensor(part["codes"], part["scale"], part["zero_point"],
                                       int(bits[layer]), part["codebook"])
    modules = dict(model.named_modules())
    for layer, a in (entry.get("activations") or {}).items():
        if layer not in modules:
            raise WorkspaceError(f"{where}: activation quantizer on unknown layer {layer!r}")
        modules[layer].register_forward_pre_hook(
            ActivationFakeQuant(a["scale"], a["zero_point"], a["bits"]))
    return Variant(recipe.name, recipe, model.eval(), session.data, groups["mask"], quant,
                   dict(entry.get("info") or {}))


# --- helpers -----------------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _jsonable(obj):
    """``obj`` as plain JSON data: tuples become lists, tensors and arrays nested lists."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((_jsonable(v) for v in obj), key=repr)
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


__all__ = ["FORMAT_VERSION", "MANIFEST", "MIGRATIONS", "WorkspaceError", "open_session",
           "read_manifest", "save_session"]
