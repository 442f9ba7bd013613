"""PyTorch checkpoint files as dicts of numpy arrays, read without running pickled code.

`.safetensors` files are read with the `safetensors` numpy API. `.pt`, `.pth` and `.bin` files
go through `torch.load(..., weights_only=True)`, which unpickles only tensors and plain
containers (torch is optional: `pip install -e '.[torch]'`). Training checkpoints are unwrapped:
a state dict nested under "model" or "state_dict" is taken, and the "module." prefix of
DistributedDataParallel is dropped. A file holding the state dicts of several sub-modules
({"encoder": {...}, "head": {...}}) is flattened to dotted keys ("encoder.<key>"). bfloat16 tensors
come back as float32 (numpy has no bfloat16).
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
# Keys under which training scripts nest the state dict, tried in this order.
CONTAINER_KEYS = ("model", "state_dict", "model_state_dict")
WRAPPER_PREFIX = "module."

# Plain attribute bags that training scripts store beside the weights (MAE saves its argparse
# arguments); allowing them lets `weights_only` read such files.
_SAFE_GLOBALS = (argparse.Namespace,)


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads the state dict of a `.safetensors`, `.pt`, `.pth` or `.bin` file.

    Returns:
      {name: array}, unwrapped from training-checkpoint containers; entries that are not tensors
      (epoch counters, optimizer settings) are dropped.
    Raises:
      FileNotFoundError, ImportError (torch missing for a torch file), ValueError (unknown format,
      a file holding arbitrary Python objects, or no tensors).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        state = _read_safetensors(path)
    elif suffix in TORCH_SUFFIXES:
        state = _read_torch(path)
    else:
        raise ValueError(
            f"{path}: unknown checkpoint format {suffix!r}; expected one of"
            f" {SAFETENSORS_SUFFIXES + TORCH_SUFFIXES}"
        )
    if not state:
        raise ValueError(f"{path} holds no tensors")
    return _strip_wrapper_prefix(state)


def save_safetensors(path: str | os.PathLike, state: Mapping[str, np.ndarray]) -> None:
    """Writes {name: array} as a `.safetensors` file (readable by torch and by `load`)."""
    safetensors.numpy.save_file(
        {name: np.ascontiguousarray(value) for name, value in state.items()}, str(path)
    )


def flatten(state: Mapping[Any, Any]) -> dict[str, Any]:
    """Nested state dicts to dotted keys: {"a": {"b": x}, "c": y} -> {"a.b": x, "c": y}.

    Values other than mappings (tensors, arrays, counters) are kept as they are.
    """
    flat = {}
    for name, value in state.items():
        if isinstance(value, Mapping):
            flat.update({f"{name}.{key}": inner for key, inner in flatten(value).items()})
        else:
            flat[str(name)] = value
    return flat


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array or a torch tensor (bfloat16 as float32) as a numpy array."""
    if type(value).__module__.split(".")[0] == "torch":
        return _torch_to_numpy(value)
    return np.asarray(value)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    # numpy reads bfloat16 tensors through the dtype that `ml_dtypes` registers.
    state = safetensors.numpy.load_file(path)
    return {
        name: value.astype(np.float32) if value.dtype == ml_dtypes.bfloat16 else value
        for name, value in state.items()
    }


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading {path} needs PyTorch: pip install -e '.[torch]' (or convert the file to"
            " .safetensors)"
        ) from e
    try:
        with torch.serialization.safe_globals(list(_SAFE_GLOBALS)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path} stores Python objects other than tensors and plain containers, which are"
            " not loaded because unpickling them can run arbitrary code. Where the file is"
            " trusted, extract its state dict and save it as .safetensors."
            f" ({reason})"
        ) from e
    state = flatten(_unwrap(obj, path))
    tensors = {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}
    dropped = sorted(str(name) for name in state if name not in tensors)
    if dropped:
        logging.info("%s: ignoring entries that are not tensors: %s", path, ", ".join(dropped))
    return {name: _torch_to_numpy(value) for name, value in tensors.items()}


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    """The state dict inside a training checkpoint {"model": {...}, "optimizer": ..., ...}."""
    while isinstance(obj, Mapping) and not any(_is_array(v) for v in obj.values()):
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, found a {type(obj).__name__}")
    return obj


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _torch_to_numpy(tensor: Any) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.contiguous().numpy()


def _strip_wrapper_prefix(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops the "module." prefix that DistributedDataParallel puts on every key."""
    while state and all(name.startswith(WRAPPER_PREFIX) for name in state):
        state = {name[len(WRAPPER_PREFIX) :]: value for name, value in state.items()}
    return state
