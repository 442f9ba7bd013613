"""Machinery shared by the checkpoint importers: official (PyTorch) tensors <-> eofm Params.

An importer describes a model as a list of `Tensor`s, one per official key, each naming the eofm
Param it fills and how the two are laid out. `check` compares that list with a state dict,
`write` copies a checked state dict into the model and `read` produces the official state dict.
`load_checked` does both for the files users have: whole parts a file may lack (the decoder of an
encoder-only file) keep their values, keys known but not loaded (a classifier's head) are listed,
and either way an `ImportReport` and a log warning say so.

Layouts (torch shape <-> eofm shape):
  "copy"        same shape (LayerNorm weights <-> scales, biases, tokens),
  "linear"      Linear weight (out, in) <-> kernel [in, out],
  "qkv_kernel"  fused Linear weight (3D, D) <-> `layers.Attention` kernel [D, 3, D]; the torch
                output is [q | k | v] with the heads contiguous inside each part, which is how
                `layers.Attention` splits its [3, D] output, so kernel = weight.T reshaped,
  "qkv_bias"    (3D,) <-> [3, D]; both also for the fused k, v of cross-attention ((2D, D),
                a `kv` Param [D, 2, D]),
  "patch_conv"  Conv2d weight (D, C, p, p) <-> `layers.PatchEmbed` kernel [p*p*C, D], whose rows
                run in `layers.patchify` (row, col, channel) order; the `Tensor` gives the shape.
A `Tensor` may fill one slice of a Param (a row of a stacked Param, the q of a fused qkv kernel)
and may be stored reshaped (a Conv kernel that is a Linear on flattened patches, a (1, N, D) table).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from eofm.models import layers

ParamPath = tuple[str | int, ...]

# Official (torch) name of each leaf of an eofm Linear / LinearGeneral / LayerNorm.
TORCH_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
# Keys of a timm / MAE ViT classifier that an encoder has no place for: the linear head, and
# fc_norm, the LayerNorm of the pooled tokens that a global-pool classifier holds instead of `norm`.
CLASSIFIER_KEY = re.compile(r"(head|fc_norm)\.(weight|bias)")
# Largest |difference| tolerated between a stored fixed position table and the recomputed one.
POSEMB_ATOL = 1e-5
# Items of each problem list that an error message shows.
MESSAGE_ITEMS = 20


class ConversionError(ValueError):
    """A checkpoint does not fit the model.

    Attributes:
      missing: official keys the model needs that the file lacks.
      unexpected: keys of the file the model has no place for.
      mismatched: "key: expected (...), got (...)" for tensors of the wrong shape.
      invalid: tensors of the right shape whose values show the file is not the expected model.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        mismatched: Iterable[str] = (),
        invalid: Iterable[str] = (),
    ):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        self.invalid = list(invalid)


@dataclasses.dataclass(frozen=True)
class Description:
    """What an error message says about a model and a file.

    Attributes:
      model: what the model is, e.g. "CROMA (width 768, ...)".
      file: what the keys and shapes of the file say about the model that wrote it.
      expected: the files the importer reads, e.g. "a CROMA state dict: ...".
    """

    model: str
    file: str
    expected: str


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """What an import left out.

    Attributes:
      unused: keys of the file that were recognised but not loaded (a classifier's head), in
        natural order.
      kept: eofm modules (dotted paths, the shortest that cover them) of which the file holds no
        Param; they keep the values they had, e.g. ("decoder",) for an encoder-only file.
    """

    unused: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One official tensor: its key, the eofm Param it goes to and how it is laid out.

    Attributes:
      key: official name.
      path: path of the eofm Param in `nnx.state(model, nnx.Param)`.
      index: the slice of the Param at `index` along `axis` is the tensor; None for a whole Param.
      layout: "copy", "linear", "qkv_kernel", "qkv_bias" or "patch_conv" (see the module
        docstring).
      axis: the axis of the Param that `index` selects.
      shape: the official shape where the file stores the layout's result reshaped (a Conv
        kernel (D, C, kh, kw) of a Linear on flattened patches); None: that result as it is.
        Required by "patch_conv".
    """

    key: str
    path: ParamPath
    index: int | None
    layout: str
    axis: int = 0
    shape: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.layout == "patch_conv" and (self.shape is None or len(self.shape) != 4):
            raise ValueError(f"{self.key}: a patch_conv tensor needs its (D, C, p, p) shape")

    def eofm_shape(self, param_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the part of a Param of shape `param_shape` that the tensor fills."""
        if self.index is None:
            return tuple(param_shape)
        return tuple(param_shape[: self.axis]) + tuple(param_shape[self.axis + 1 :])

    def expected_shape(self, param_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Official shape of the tensor for a Param of shape `param_shape`."""
        if self.shape is not None:
            return self.shape
        return official_shape(self.layout, self.eofm_shape(param_shape))

    def selection(self) -> tuple[slice | int, ...]:
        """Numpy index of the tensor's part of the Param (`index` along `axis`)."""
        return (slice(None),) * self.axis + (self.index,)


def layout_of(path: ParamPath) -> str:
    """Layout of the Linear, fused-qkv or LayerNorm Param at `path` (see the module docstring)."""
    kernel = path[-1] == "kernel"
    if len(path) > 1 and path[-2] in ("qkv", "kv"):
        return "qkv_kernel" if kernel else "qkv_bias"
    return "linear" if kernel else "copy"


def official_shape(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Torch shape of a tensor whose eofm shape (one row of a stacked Param) is `shape`."""
    if layout == "linear":
        return shape[::-1]
    if layout == "qkv_kernel":
        return (shape[1] * shape[2], shape[0])
    if layout == "qkv_bias":
        return (shape[0] * shape[1],)
    return shape


def to_eofm_layout(layout: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The eofm array of shape `shape` from an official tensor `value` as the file stores it."""
    if layout == "patch_conv":
        return value.transpose(2, 3, 1, 0).reshape(shape)  # (D, C, p, p) -> (p, p, C, D)
    value = value.reshape(official_shape(layout, shape))
    if layout in ("linear", "qkv_kernel"):
        value = value.T
    return value.reshape(shape)


def to_official_layout(
    layout: str, value: np.ndarray, stored_shape: tuple[int, ...] | None
) -> np.ndarray:
    """The official tensor of the eofm array `value`, reshaped to `stored_shape` unless None."""
    if layout == "patch_conv":
        d, c, kh, kw = stored_shape
        return value.reshape(kh, kw, c, d).transpose(3, 2, 0, 1)
    if layout == "qkv_kernel":
        value = value.reshape(value.shape[0], -1)
    if layout in ("linear", "qkv_kernel"):
        value = value.T
    elif layout == "qkv_bias":
        value = value.reshape(-1)
    return value if stored_shape is None else value.reshape(stored_shape)


def model_params(model: nnx.Module) -> dict[ParamPath, nnx.Param]:
    return dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def require_built(params: Mapping[ParamPath, nnx.Param]) -> None:
    """Raises ValueError for an abstract model (from `nnx.eval_shape`), which cannot be filled."""
    if not all(isinstance(param[...], jax.Array) for param in params.values()):
        raise ValueError("to_eofm needs a built model, not an abstract one (nnx.eval_shape)")


def check(
    state: Mapping[str, np.ndarray],
    tensors: Sequence[Tensor],
    params: Mapping[ParamPath, nnx.Param],
    *,
    optional: Collection[str] = (),
    also_known: Collection[str] = (),
) -> tuple[list[str], list[str], list[str]]:
    """Compares a state dict with the official tensors of a model.

    Args:
      state: {official key: array}.
      tensors: the official tensors of the model.
      params: the model's Params by path (`model_params`).
      optional: keys that may be absent.
      also_known: keys of the file that are not `tensors` but are checked by the caller.
    Returns:
      (missing keys, unexpected keys, "key: expected (...), got (...)" shape mismatches).
    """
    known = {t.key for t in tensors} | set(also_known)
    absent = (t.key for t in tensors if t.key not in state and t.key not in optional)
    missing = sorted(absent, key=natural_order)
    unexpected = sorted((key for key in state if key not in known), key=natural_order)
    mismatched = []
    for t in tensors:
        if t.key in state:
            expected = t.expected_shape(params[t.path].shape)
            got = tuple(state[t.key].shape)
            if expected != got:
                mismatched.append(f"{t.key}: expected {expected}, got {got}")
    return missing, unexpected, mismatched


def write(
    model: nnx.Module,
    params: Mapping[ParamPath, nnx.Param],
    tensors: Sequence[Tensor],
    state: Mapping[str, np.ndarray],
) -> None:
    """Copies the (checked) tensors of `state` into `model`; Params it lacks keep their values.

    Each value takes the dtype and sharding of the Param it replaces.
    """
    values: dict[ParamPath, np.ndarray] = {}
    for t in tensors:
        if t.key not in state:
            continue
        param = params[t.path]
        shape = t.eofm_shape(param.shape)
        value = np.asarray(state[t.key])
        if t.index is None:
            values[t.path] = to_eofm_layout(t.layout, value, shape)
        else:
            whole = values.setdefault(t.path, np.array(jax.device_get(param[...])))
            whole[t.selection()] = to_eofm_layout(t.layout, value, shape)
    updates = [
        (path, params[path].replace(_like(params[path][...], value)))
        for path, value in values.items()
    ]
    nnx.update(model, nnx.from_flat_state(updates))


def read(params: Mapping[ParamPath, nnx.Param], tensors: Sequence[Tensor]) -> dict[str, np.ndarray]:
    """{official key: contiguous float32 array in the torch layout} of `tensors`."""
    arrays = {
        path: np.array(jax.device_get(params[path][...]), np.float32)
        for path in {t.path for t in tensors}
    }
    state = {}
    for t in tensors:
        value = arrays[t.path] if t.index is None else arrays[t.path][t.selection()]
        value = to_official_layout(t.layout, value, t.shape)
        state[t.key] = np.array(value, order="C")  # np.ascontiguousarray makes scalars 1-D
    return state


def load_checked(
    model: nnx.Module,
    params: Mapping[ParamPath, nnx.Param],
    tensors: Sequence[Tensor],
    state: Mapping[str, np.ndarray],
    *,
    source: str | os.PathLike | None,
    description: Description,
    optional_parts: Mapping[str, Collection[str]],
    unused: Collection[str] = (),
    checked: Collection[str] = (),
    missing: Sequence[str] = (),
    mismatched: Sequence[str] = (),
    invalid: Sequence[str] = (),
    invalid_title: str = "invalid values",
) -> ImportReport:
    """Checks `state` against `tensors` and raises one `ConversionError` listing every problem,
    else writes the tensors into `model` and reports (and logs) what was left out.

    Args:
      model, params, tensors, state: as `check` and `write`.
      source: the file, named in messages.
      description: what error messages say about the model and the file.
      optional_parts: {name: official keys} of parts a file may lack as a whole (a decoder); a
        part of which the file holds some keys only is reported as missing keys.
      unused: keys of `state` known but not loaded (a classifier's head): reported, no error.
      checked: keys of `state` that the caller checks itself (fixed position tables).
      missing, mismatched, invalid: the caller's own problems, reported with those found here.
      invalid_title: heading of the `invalid` list.
    """
    absent = [keys for keys in optional_parts.values() if not state.keys() & set(keys)]
    unused = sorted(state.keys() & set(unused), key=natural_order)
    missing_tensors, unexpected, wrong_shapes = check(
        state,
        tensors,
        params,
        optional={key for keys in absent for key in keys},
        also_known={*unused, *checked},
    )
    problems = {
        "missing": sorted([*missing_tensors, *missing], key=natural_order),
        "unexpected": unexpected,
        "mismatched": [*wrong_shapes, *mismatched],
        "invalid": list(invalid),
    }
    if any(problems.values()):
        raise conversion_error(source, description, invalid_title=invalid_title, **problems)
    write(model, params, tensors, state)
    loaded = {t.path for t in tensors if t.key in state}
    report = ImportReport(tuple(unused), covering_modules(params, params.keys() - loaded))
    log_report(source, report)
    return report


def log_report(source: str | os.PathLike | None, report: ImportReport) -> None:
    """Warns of the keys not used and of the modules the file holds no values for."""
    name = source_name(source)
    if report.unused:
        logging.warning(
            "%s: %d keys are not used: %s", name, len(report.unused), ", ".join(report.unused)
        )
    if report.kept:
        logging.warning(
            "%s: the file holds no values for %s: they keep their values",
            name,
            ", ".join(report.kept),
        )


def covering_modules(paths: Collection[ParamPath], kept: Collection[ParamPath]) -> tuple[str, ...]:
    """The shortest dotted module paths whose Params are all in `kept` and that together cover
    `kept` (of all Params `paths`): "decoder" for a whole decoder, "encoder.norm" for one LN."""
    partly_loaded = {path[:n] for path in paths if path not in kept for n in range(1, len(path))}
    modules = {
        next(path[:n] for n in range(1, len(path) + 1) if path[:n] not in partly_loaded)
        for path in kept
    }
    return tuple(sorted(map(dotted, modules), key=natural_order))


def optional_vit_parts(
    state: Mapping[str, np.ndarray], decoder: Collection[str]
) -> dict[str, Collection[str]]:
    """Parts a timm / MAE ViT file may lack as a whole: the decoder (its keys `decoder`; empty:
    the decoder is required) and, where the file holds fc_norm (a global-pool classifier), the
    final `norm`."""
    parts = {"decoder": decoder} if decoder else {}
    if "fc_norm.weight" in state:
        parts["final norm"] = ("norm.weight", "norm.bias")
    return parts


def classifier_keys(state: Mapping[str, np.ndarray]) -> list[str]:
    """Keys of `state` that only a classifier holds (`CLASSIFIER_KEY`)."""
    return [key for key in state if CLASSIFIER_KEY.fullmatch(key)]


def sincos_table(grid: tuple[int, int], width: int, cls_rows: int) -> np.ndarray:
    """[1, cls_rows + gh * gw, width]: zero rows for the class tokens, then the MAE 2-D sin-cos
    table (`layers.posemb_sincos_2d`)."""
    table = layers.posemb_sincos_2d(*grid, width)
    return np.concatenate([np.zeros((cls_rows, width), np.float32), table])[None]


def check_sincos_tables(
    state: Mapping[str, np.ndarray],
    widths: Mapping[str, int],
    *,
    cls_rows: int,
    grid: tuple[int, int] | None,
    source: str | os.PathLike | None,
) -> tuple[list[str], dict[str, str]]:
    """Compares the fixed position tables of `state` with the ones eofm recomputes.

    Args:
      state: {official key: array}.
      widths: {key of a table: its width}; absent keys are skipped.
      cls_rows: leading zero rows (a CLS slot) of each table.
      grid: the patch grid of the tables; None: a square grid. Tables of another grid are not
        compared (logged).
      source: the file, named in messages.
    Returns:
      (shape mismatches, {key: why its values are not the sin-cos table}).
    """
    mismatched, invalid = [], {}
    what = "the MAE 2-D sin-cos table" + (" with a zero CLS row" if cls_rows else "")
    for key, width in widths.items():
        table = state.get(key)
        if table is None:
            continue
        shape = tuple(table.shape)
        if len(shape) != 3 or shape[0] != 1 or shape[1] <= cls_rows or shape[2] != width:
            rows = f"{cls_rows} + L" if cls_rows else "L"
            mismatched.append(f"{key}: expected (1, {rows}, {width}), got {shape}")
            continue
        table_grid = _table_grid(key, shape[1] - cls_rows, grid, source)
        if table_grid is None:
            continue
        error = float(np.max(np.abs(table - sincos_table(table_grid, width, cls_rows))))
        if not error <= POSEMB_ATOL:
            invalid[key] = f"{key}: not {what} (largest difference {error:.3g} > {POSEMB_ATOL:g})"
    return mismatched, invalid


def _table_grid(
    key: str,
    num_positions: int,
    grid: tuple[int, int] | None,
    source: str | os.PathLike | None,
) -> tuple[int, int] | None:
    """`grid` (None: the square grid) of a table of `num_positions` rows; None, logged, when
    the table is of another grid."""
    if grid is None:
        side = math.isqrt(num_positions)
        grid, expected = (side, side), "a square grid"
    else:
        expected = f"the {grid[0]}x{grid[1]} grid asked for"
    if grid[0] * grid[1] == num_positions:
        return grid
    logging.info(
        "%s: %s covers %d positions, not %s; its values are not checked",
        source_name(source),
        key,
        num_positions,
        expected,
    )
    return None


def conversion_error(
    source: str | os.PathLike | None,
    description: Description,
    *,
    missing: Sequence[str] = (),
    unexpected: Sequence[str] = (),
    mismatched: Sequence[str] = (),
    invalid: Sequence[str] = (),
    invalid_title: str = "invalid values",
) -> ConversionError:
    """A `ConversionError` whose message lists the problems (the first `MESSAGE_ITEMS` of each
    list; the error's attributes hold them all).

    Args:
      source: the file, named in the message.
      description: what the message says about the model and the file.
      missing, unexpected, mismatched, invalid: the problems (see `ConversionError`).
      invalid_title: heading of the `invalid` list.
    """
    lines = [
        f"cannot load {source_name(source)} into {description.model}:",
        f"  expected: {description.expected}",
        f"  the file holds: {description.file}",
    ]
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
        (invalid_title, invalid),
    ):
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {item}" for item in items[:MESSAGE_ITEMS])
            if len(items) > MESSAGE_ITEMS:
                lines.append(f"    ... and {len(items) - MESSAGE_ITEMS} more")
    return ConversionError(
        "\n".join(lines),
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
        invalid=invalid,
    )


def foreign_file(state: Mapping[str, np.ndarray], family: str) -> str:
    """Description of a state dict that holds no key of the model `family`."""
    names = sorted(state, key=natural_order)
    examples = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"none of its {len(state)} keys ({examples}) is a {family} key"


def count_indices(state: Mapping[str, np.ndarray], pattern: re.Pattern[str]) -> int:
    """Number of distinct values of the first group of `pattern` matched at the keys' start."""
    return len({m[1] for key in state if (m := pattern.match(key))})


def dim(state: Mapping[str, np.ndarray], key: str, axis: int) -> int | None:
    """Size of axis `axis` of `state[key]`, None if the key is absent or a scalar."""
    value = state.get(key)
    return value.shape[axis] if value is not None and len(value.shape) else None


def natural_order(key: str) -> list[str | int]:
    """Sort key putting "blocks.2" before "blocks.10"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def source_name(source: str | os.PathLike | None) -> str:
    return "the checkpoint" if source is None else str(source)


def dotted(path: ParamPath) -> str:
    return ".".join(map(str, path))


def _like(old: jax.Array, value: np.ndarray) -> jax.Array:
    """`value` with the dtype and sharding of the Param value `old`."""
    return jax.device_put(np.asarray(value).astype(old.dtype), old.sharding)
