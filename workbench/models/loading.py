"""Load a user's model: a module, a state_dict checkpoint, a safetensors file or TorchScript.

Checkpoints are read with ``torch.load(weights_only=True)``, which never runs pickled code; a
file that needs it is refused with the name of the object it would build. Every problem raises
:class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import copy
import re
import struct
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from workbench.errors import CheckpointError, ParameterError

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
_SAFE_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.", "_codecs.")


def _kind(path: Path) -> str:
    """``"torchscript"``, ``"safetensors"`` or ``"torch"``, from the content, not the name."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "torch"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return "torch"
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if n < path.stat().st_size:
            return "safetensors"
    return "safetensors" if path.suffix == ".safetensors" else "torch"


def _refused_class(path: Path, message: str) -> str | None:
    """The global ``torch.load(weights_only=True)`` refused, from its message or the pickle."""
    m = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if m:
        return m.group(1)
    from workbench.safe_pickle import pickle_globals

    data = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("data.pkl")]
            data = z.read(pkl[0]) if pkl else b""
    unsafe = [g for g in pickle_globals(data) if not g.startswith(_SAFE_PREFIXES)]
    return unsafe[0] if unsafe else None


def _torch_load(path: Path):
    import pickle

    with open(path, "rb") as f:
        head = f.read(8)
    if head and head[:1] != b"\x80" and head[:2] != b"PK":  # pickle PROTO opcode, zip magic
        raise CheckpointError(
            f"{path}: not a model file: neither a torch.save checkpoint, safetensors nor "
            f"TorchScript (it starts with {head!r})"
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        message = str(err)
        if "Weights only load failed" not in message:
            raise CheckpointError(f"{path}: not a readable checkpoint ({message.splitlines()[0]}); "
                                  "the file is damaged or of another format") from None
        found = _refused_class(path, message)
        if found is None:
            m = re.search(r"WeightsUnpickler error: \s*(.+)", message)
            reason = m.group(1).strip() if m else "unsupported content"
            raise CheckpointError(
                f"{path}: refused to unpickle: torch.load(weights_only=True) does not accept "
                f"its content ({reason}); if it is a model file, re-save it with "
                "torch.save(model.state_dict()) or safetensors"
            ) from None
        raise CheckpointError(
            f"{path}: refused to unpickle: the file contains Python objects that would execute "
            f"code (found {found}); re-save it with torch.save(model.state_dict()) or safetensors"
        ) from None
    except EOFError:
        raise CheckpointError(f"{path}: the file ends early (truncated or empty); save or copy "
                              "it again") from None
    except Exception as err:  # noqa: BLE001  torch raises RuntimeError/KeyError/... on corruption
        first = str(err).split(". ")[0].splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({first}); save or "
                              "copy it again") from None


def _safetensors_load(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as err:  # noqa: BLE001  SafetensorError has no stable import path
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({err}); save or "
                              "copy it again") from None


def _torchscript_load(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: unreadable TorchScript file "
                              f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                              ) from None


def _state_dict_of(obj, path: Path) -> dict:
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict) and obj[key] and all(
                    isinstance(v, torch.Tensor) for v in obj[key].values()):
                return dict(obj[key])
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict; save "
                              "the weights with torch.save(model.state_dict(), path)")
    bad = [f"{k} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: holds a dict whose entries are not all tensors ({', '.join(bad[:5])}); "
            f"expected a state_dict, or a checkpoint with one under {', '.join(STATE_DICT_KEYS)}"
        )
    return dict(obj)


def _check_finite(tensors: dict, path) -> None:
    bad = sorted(k for k, v in tensors.items()
                 if v.dtype.is_floating_point and not torch.isfinite(v).all())
    if bad:
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise CheckpointError(f"{path}: NaN or Inf values in {', '.join(bad[:10])}{more}; "
                              "the weights are unusable (did training diverge?)")


def _align_keys(state: dict, model_keys: set) -> dict:
    # DataParallel saves "module.x", Lightning "model.x": strip a prefix every key shares when
    # that is what makes the keys match the model.
    if set(state) & model_keys:
        return state
    firsts = {k.split(".", 1)[0] for k in state}
    if len(firsts) == 1 and all("." in k for k in state):
        stripped = {k.split(".", 1)[1]: v for k, v in state.items()}
        if set(stripped) & model_keys:
            return stripped
    return state


def _num_classes(state: dict, path: Path) -> int:
    if "fc.weight" in state and state["fc.weight"].ndim == 2:
        return int(state["fc.weight"].shape[0])
    weights = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    if not weights:
        raise ParameterError(f"{path}: cannot tell the number of classes (no 2-D weight); pass "
                             "num_classes=")
    return int(weights[-1].shape[0])


def _build(arch, input_shape, num_classes, arch_params, state: dict, path: Path) -> nn.Module:
    from workbench.models.registry import MODELS, create_model

    if isinstance(arch, nn.Module):
        return copy.deepcopy(arch)
    if arch is None:
        raise ParameterError(
            f"{path} holds only weights (a state_dict); pass arch= one of "
            f"{', '.join(MODELS.names())} (or an nn.Module instance of your architecture)"
        )
    if input_shape is None:
        raise ParameterError(
            f"{path}: pass input_shape= to build {arch!r}, the shape of one input without the "
            "batch dimension, e.g. (1, 28, 28) for MNIST or (3, 32, 32) for CIFAR-10"
        )
    if num_classes is None:
        num_classes = _num_classes(state, path)
    return create_model(arch, input_shape, num_classes, **(arch_params or {}))


def _load_state(model: nn.Module, state: dict, path: Path, strict: bool) -> None:
    own = model.state_dict()
    state = _align_keys(state, set(own))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if shapes or (strict and (missing or unexpected)):
        lines = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", shapes)):
            if items:
                more = f", … ({len(items)} in all)" if len(items) > 12 else ""
                lines.append(f"  {title}: {', '.join(items[:12])}{more}")
        raise CheckpointError(
            f"{path}: the weights do not fit the architecture "
            f"{type(model).__name__}:\n" + "\n".join(lines)
            + "\nCheck arch=, input_shape=, num_classes= (and arch_params=)"
            + ("" if shapes else ", or pass strict=False to load the keys that match")
        )
    if missing or unexpected:
        warnings.warn(f"{path}: loaded with strict=False; {len(missing)} model tensors keep their "
                      f"initial values ({missing[:5]}), {len(unexpected)} file tensors were "
                      f"ignored ({unexpected[:5]})", stacklevel=3)
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def load_model(source, arch=None, input_shape=None, num_classes=None, strict: bool = True,
               arch_params: dict | None = None) -> nn.Module:
    """A model from ``source``: an ``nn.Module`` or a checkpoint file.

    Parameters
    ----------
    source : nn.Module, str or Path
        A module (returned as is; a :class:`~workbench.Session` keeps its own copy), a
        state_dict saved with ``torch.save`` (``.pt``/``.pth``/``.ckpt``, or a dict holding it
        under ``"state_dict"``, ``"model_state_dict"`` or ``"model"``), a ``.safetensors`` file,
        or a TorchScript file (recognised by its content).
    arch : str or nn.Module, optional
        For weights only: a registered architecture name (``workbench.models.MODELS.names()``),
        or a module of your own architecture (copied, never modified). Ignored for TorchScript.
    input_shape : tuple, optional
        Shape of one input, needed to build a registered architecture.
    num_classes : int, optional
        Default: the output size of the last 2-D weight (``fc.weight``) in the file.
    strict : bool
        If False, keys missing from the file or unknown to the model are skipped with a warning
        (shape mismatches are always an error).
    arch_params : dict, optional
        Extra arguments of the architecture (``{"hidden": (256, 128)}`` for ``"mlp"``).

    Examples
    --------
    >>> import tempfile, torch
    >>> from workbench.models import create_model
    >>> net = create_model("mlp", (1, 8, 8), 10)
    >>> path = tempfile.mkdtemp() + "/mlp.pt"
    >>> torch.save(net.state_dict(), path)
    >>> loaded = load_model(path, arch="mlp", input_shape=(1, 8, 8))
    >>> x = torch.rand(2, 1, 8, 8)
    >>> torch.equal(loaded(x), net(x))
    True
    """
    if isinstance(source, nn.Module):
        return source
    if not isinstance(source, (str, Path)):
        raise CheckpointError(f"cannot load a model from a {type(source).__name__}; pass an "
                              "nn.Module or the path of a checkpoint file")
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    kind = _kind(path)
    if kind == "torchscript":
        model = _torchscript_load(path)
        _check_finite(model.state_dict(), path)
        return model.eval()
    state = _safetensors_load(path) if kind == "safetensors" else _state_dict_of(
        _torch_load(path), path)
    _check_finite(state, path)
    model = _build(arch, input_shape, num_classes, arch_params, state, path)
    _load_state(model, state, path, strict)
    return model.eval()
