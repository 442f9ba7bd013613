"""Official SMARTIES checkpoints (PyTorch) <-> `eofm.models.smarties.Smarties`.

Official key (torch shape) -> eofm parameter; D width, Dd decoder width, p patch side, k range:
  spectrum_projection.spectrum_embeds.{k}.proj.weight (D, p*p)  encoder.patch_embed.kernel[k]
  spectrum_projection.spectrum_embeds.{k}.proj.bias (D,)        encoder.patch_embed.bias[k]
  cls_token (1, 1, D)                                           encoder.cls_token
  blocks.{i}.norm1 | norm2 .weight, .bias                       encoder.blocks[i].norm1 | norm2
  blocks.{i}.attn.qkv.weight (3D, D), .bias (3D,)               encoder.blocks[i].attn.qkv [D, 3, D]
  blocks.{i}.attn.proj | mlp.fc1 | mlp.fc2 .weight, .bias       encoder.blocks[i]....
  norm.weight, .bias                                            encoder.norm
  decoder_embed, decoder_blocks.{i}..., decoder_norm            decoder.embed, blocks[i], norm
  mask_token (1, 1, Dd)                                         decoder.mask_token
  decoder_preds.{k}.weight (p*p, Dd), .bias (p*p,)              head_kernel[k], head_bias[k]
Linear weights are transposed and LayerNorm weights become scales. The fused qkv output is
[q | k | v] with the heads contiguous inside each part, which is how `layers.Attention` splits
its [3, D] output, so kernel = weight.T reshaped to [D, 3, D].

`pos_embed` (1, 1 + L, D) and `decoder_pos_embed` (1, 1 + L, Dd) are fixed tables that eofm
recomputes for each input size instead of storing; they are checked against the MAE 2-D sin-cos
table with a zero CLS row, since a difference means the file is not a SMARTIES (MAE sin-cos)
model.

The released files hold the encoder only; the decoder and pixel heads then keep their initial
values (`allow_missing_decoder`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping

import jax
import numpy as np
from flax import nnx

from eofm.convert import torch_state
from eofm.models import layers
from eofm.models.smarties import Smarties, SmartiesConfig

# Largest |difference| tolerated between a stored position table and the recomputed one.
POSEMB_ATOL = 1e-5
DEFAULT_IMAGE_SIZE = 224  # the official models are built for 224 px inputs

_DECODER_ROOTS = ("decoder", "head_kernel", "head_bias")
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
# Module prefixes of the official names, by the first two parts of the eofm path.
_MODULE_NAMES = {
    ("encoder", "blocks"): "blocks",
    ("encoder", "norm"): "norm",
    ("decoder", "embed"): "decoder_embed",
    ("decoder", "blocks"): "decoder_blocks",
    ("decoder", "norm"): "decoder_norm",
}
_TOKENIZER_KEY = "spectrum_projection.spectrum_embeds.{}.proj.{}"
_TOKENIZER_INDEX = re.compile(r"spectrum_projection\.spectrum_embeds\.(\d+)\.")
_BLOCK_INDEX = re.compile(r"blocks\.(\d+)\.")
_DECODER_BLOCK_INDEX = re.compile(r"decoder_blocks\.(\d+)\.")
_HEAD_KEY = "decoder_preds.{}.{}"
_SMARTIES_KEY = re.compile(
    r"(cls_token|pos_embed|mask_token|decoder_pos_embed|spectrum_projection\.|blocks\.|norm\."
    r"|decoder_(embed|blocks|norm|preds)\.)"
)

ParamPath = tuple[str | int, ...]


class ConversionError(ValueError):
    """A checkpoint does not fit the model.

    Attributes:
      missing: official keys the model needs that the file lacks.
      unexpected: keys of the file the model has no place for.
      mismatched: "key: expected (...), got (...)" for tensors of the wrong shape.
      invalid: problems with the values of the fixed position tables.
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


def to_eofm(
    state: Mapping[str, np.ndarray],
    model: Smarties,
    *,
    source: str | os.PathLike | None = None,
    allow_missing_decoder: bool = True,
    image_size: int | None = None,
) -> None:
    """Writes official SMARTIES weights into `model` in place.

    Everything is checked before anything is written, so on error the model is unchanged.

    Args:
      state: {official key: array}, e.g. from `torch_state.load`.
      model: a built (not abstract) `Smarties`; its config must match the file.
      source: the file the state came from, named in messages.
      allow_missing_decoder: a file without any decoder tensor (as released) loads; the decoder
        and pixel heads keep their values, with a warning.
      image_size: image side the position tables were made for; None: a square grid. Tables of
        another grid are not checked.
    Raises:
      ConversionError: listing every missing and unexpected key and every shape mismatch (and
        position tables that are not the MAE sin-cos table).
    """
    params = _params(model)
    if not all(isinstance(param[...], jax.Array) for param in params.values()):
        raise ValueError("to_eofm needs a built model, not an abstract one (nnx.eval_shape)")
    tensors = _tensors(params)
    tables = _position_tables(model)
    decoder_keys = {t.key for t in tensors if t.in_decoder}
    skip_decoder = allow_missing_decoder and not decoder_keys & state.keys()

    missing = [t.key for t in tensors if t.key not in state]
    if skip_decoder:
        missing = [key for key in missing if key not in decoder_keys]
    known = {t.key for t in tensors} | tables.keys()
    unexpected = sorted((key for key in state if key not in known), key=_natural_order)
    mismatched, invalid = [], []
    for t in tensors:
        if t.key in state:
            shape = params[t.path].shape[1:] if t.index is not None else params[t.path].shape
            expected, got = _official_shape(t.layout, shape), tuple(state[t.key].shape)
            if expected != got:
                mismatched.append(f"{t.key}: expected {expected}, got {got}")
    p = model.cfg.mae.encoder.patch_size
    grid = None if image_size is None else (image_size // p, image_size // p)
    for key, width in tables.items():
        if key not in state:
            continue
        table = np.asarray(state[key])
        if table.ndim != 3 or table.shape[0] != 1 or table.shape[1] < 2 or table.shape[2] != width:
            mismatched.append(f"{key}: expected (1, 1 + L, {width}), got {table.shape}")
        elif (problem := _check_position_table(key, table, grid, source)) is not None:
            invalid.append(problem)

    if missing or unexpected or mismatched or invalid:
        raise ConversionError(
            _error_message(model, state, source, missing, unexpected, mismatched, invalid),
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
            invalid=invalid,
        )

    values: dict[ParamPath, np.ndarray] = {}
    for t in tensors:
        if t.key not in state:
            continue
        param = params[t.path]
        if t.index is None:
            values[t.path] = _to_eofm_layout(t.layout, np.asarray(state[t.key]), param.shape)
        else:
            rows = values.setdefault(t.path, np.array(jax.device_get(param[...])))
            rows[t.index] = _to_eofm_layout(t.layout, np.asarray(state[t.key]), param.shape[1:])
    updates = [
        (path, params[path].replace(_like(params[path][...], value)))
        for path, value in values.items()
    ]
    nnx.update(model, nnx.from_flat_state(updates))
    if skip_decoder and decoder_keys:
        logging.warning(
            "%s: %d decoder tensors missing (decoder, not in the file): the decoder and the pixel"
            " heads keep their initial values",
            _name(source),
            len(decoder_keys),
        )


def from_eofm(model: Smarties, *, image_size: int = DEFAULT_IMAGE_SIZE) -> dict[str, np.ndarray]:
    """The official state dict of `model`: the inverse of `to_eofm`.

    Args:
      model: a built `Smarties`.
      image_size: image side of the stored position tables (the official models use 224).
    Returns:
      {official key: float32 array in the torch layout}, with `pos_embed` and
      `decoder_pos_embed` as the official code stores them.
    """
    params = _params(model)
    p = model.cfg.mae.encoder.patch_size
    if image_size % p:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {p}")
    grid = (image_size // p, image_size // p)
    arrays = {
        path: np.array(jax.device_get(param[...]), np.float32) for path, param in params.items()
    }
    state = {key: _sincos_with_cls(grid, width) for key, width in _position_tables(model).items()}
    for t in _tensors(params):
        value = arrays[t.path] if t.index is None else arrays[t.path][t.index]
        state[t.key] = np.ascontiguousarray(_to_official_layout(t.layout, value))
    return state


def load_smarties(
    path: str | os.PathLike,
    cfg: SmartiesConfig,
    *,
    rngs: nnx.Rngs | None = None,
    allow_missing_decoder: bool = True,
    image_size: int | None = None,
) -> Smarties:
    """Builds a `Smarties` for `cfg` and loads an official checkpoint file into it.

    Args:
      path: `.safetensors` (preferred), `.pt`, `.pth` or `.bin` file.
      cfg: the model configuration; width, depth, patch and decoder sizes must match the file
        (a mismatch shows as shape errors). Head counts leave no trace in the shapes: they are
        taken from `cfg` (12 for ViT-B, 16 for ViT-L and the decoder).
      rngs: initialises what the file lacks (the decoder of an encoder-only file); default seed 0.
      allow_missing_decoder, image_size: see `to_eofm`.
    """
    model = Smarties(cfg, rngs=rngs if rngs is not None else nnx.Rngs(0))
    to_eofm(
        torch_state.load(path),
        model,
        source=path,
        allow_missing_decoder=allow_missing_decoder,
        image_size=image_size,
    )
    return model


# ---------------------------------------------------------------------------------------------
# Official keys and tensor layouts


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One official tensor: its key, the eofm Param it goes to and how it is laid out.

    Attributes:
      key: official name.
      path: path of the eofm Param in `nnx.state(model, nnx.Param)`.
      index: row of a per-range Param [R, ...] the tensor fills; None for a whole Param.
      layout: "copy", "linear" (transposed), "qkv_kernel" ((3D, D) <-> [D, 3, D]) or
        "qkv_bias" ((3D,) <-> [3, D]).
    """

    key: str
    path: ParamPath
    index: int | None
    layout: str

    @property
    def in_decoder(self) -> bool:
        return self.path[0] in _DECODER_ROOTS


def _official_tensors(path: ParamPath, shape: tuple[int, ...]) -> list[_Tensor]:
    """The official tensors that make up the eofm Param at `path` (of shape `shape`)."""
    leaf = path[-1]
    if path[:2] == ("encoder", "patch_embed") and len(path) == 3 and leaf in _LEAF_NAMES:
        layout = "linear" if leaf == "kernel" else "copy"
        return [
            _Tensor(_TOKENIZER_KEY.format(k, _LEAF_NAMES[leaf]), path, k, layout)
            for k in range(shape[0])
        ]
    if path in (("head_kernel",), ("head_bias",)):
        layout, name = ("linear", "weight") if leaf == "head_kernel" else ("copy", "bias")
        return [_Tensor(_HEAD_KEY.format(k, name), path, k, layout) for k in range(shape[0])]
    if path in (("encoder", "cls_token"), ("decoder", "mask_token")):
        return [_Tensor(str(leaf), path, None, "copy")]
    if path[:2] in _MODULE_NAMES and leaf in _LEAF_NAMES:
        key = ".".join([_MODULE_NAMES[path[:2]], *map(str, path[2:-1]), _LEAF_NAMES[leaf]])
        if path[-2] == "qkv":
            layout = "qkv_kernel" if leaf == "kernel" else "qkv_bias"
        else:
            layout = "linear" if leaf == "kernel" else "copy"
        return [_Tensor(key, path, None, layout)]
    raise ConversionError(f"model parameter {_dotted(path)} has no SMARTIES checkpoint key")


def _official_shape(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Torch shape of a tensor whose eofm shape (one range row for per-range Params) is `shape`."""
    if layout == "linear":
        return shape[::-1]
    if layout == "qkv_kernel":
        return (shape[1] * shape[2], shape[0])
    if layout == "qkv_bias":
        return (shape[0] * shape[1],)
    return shape


def _to_eofm_layout(layout: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if layout in ("linear", "qkv_kernel"):
        value = value.T
    return value.reshape(shape)


def _to_official_layout(layout: str, value: np.ndarray) -> np.ndarray:
    if layout == "qkv_kernel":
        value = value.reshape(value.shape[0], -1)
    if layout in ("linear", "qkv_kernel"):
        return value.T
    if layout == "qkv_bias":
        return value.reshape(-1)
    return value


def _params(model: Smarties) -> dict[ParamPath, nnx.Param]:
    return dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def _tensors(params: Mapping[ParamPath, nnx.Param]) -> list[_Tensor]:
    return [t for path, param in params.items() for t in _official_tensors(path, param.shape)]


def _position_tables(model: Smarties) -> dict[str, int]:
    """Official keys of the fixed position tables -> their width."""
    mae = model.cfg.mae
    return {"pos_embed": mae.encoder.embed_dim, "decoder_pos_embed": mae.decoder_dim}


# ---------------------------------------------------------------------------------------------
# Checks and error messages


def _sincos_with_cls(grid: tuple[int, int], width: int) -> np.ndarray:
    """[1, 1 + gh * gw, width]: a zero CLS row, then the MAE 2-D sin-cos table."""
    table = layers.posemb_sincos_2d(*grid, width)
    return np.concatenate([np.zeros((1, width), np.float32), table])[None]


def _check_position_table(
    key: str, table: np.ndarray, grid: tuple[int, int] | None, source: str | os.PathLike | None
) -> str | None:
    """A message if `table` [1, 1 + L, W] is not the sin-cos table of `grid` (None: a square
    grid), else None. Tables of another grid are not compared."""
    num_positions = table.shape[1] - 1
    if grid is None:
        side = math.isqrt(num_positions)
        grid, expected = (side, side), "a square grid"
    else:
        expected = f"the {grid[0]}x{grid[1]} grid asked for"
    if grid[0] * grid[1] != num_positions:
        logging.info(
            "%s: %s covers %d positions, not %s; its values are not checked",
            _name(source),
            key,
            num_positions,
            expected,
        )
        return None
    error = float(np.max(np.abs(table - _sincos_with_cls(grid, table.shape[2]))))
    if not error <= POSEMB_ATOL:
        return (
            f"{key}: not the MAE 2-D sin-cos table with a zero CLS row (largest difference"
            f" {error:.3g} > {POSEMB_ATOL:g}); the file is not a SMARTIES / MAE sin-cos model"
        )
    return None


def _like(old: jax.Array, value: np.ndarray) -> jax.Array:
    """`value` with the dtype and sharding of the Param value `old`."""
    return jax.device_put(np.asarray(value).astype(old.dtype), old.sharding)


def _error_message(
    model: Smarties,
    state: Mapping[str, np.ndarray],
    source: str | os.PathLike | None,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
    invalid: list[str],
) -> str:
    lines = [f"cannot load {_name(source)} into {_describe_model(model)}:"]
    lines.append(f"  the file holds: {_describe_file(state)}")
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
        ("invalid position tables", invalid),
    ):
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {item}" for item in items)
    return "\n".join(lines)


def _describe_model(model: Smarties) -> str:
    enc, mae = model.cfg.mae.encoder, model.cfg.mae
    return (
        f"SMARTIES (width {enc.embed_dim}, depth {enc.depth}, heads {enc.num_heads}, patch"
        f" {enc.patch_size}; decoder width {mae.decoder_dim}, depth {mae.decoder_depth}, heads"
        f" {mae.decoder_heads}; {model.cfg.num_ranges} spectral ranges)"
    )


def _describe_file(state: Mapping[str, np.ndarray]) -> str:
    """What the keys and shapes of a state dict say about the model that wrote it."""
    if not any(_SMARTIES_KEY.match(key) for key in state):
        names = sorted(state, key=_natural_order)
        examples = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return f"none of its {len(state)} keys ({examples}) is a SMARTIES key"

    def count(pattern: re.Pattern[str]) -> int:
        return len({m[1] for key in state if (m := pattern.match(key))})

    def size(key: str, axis: int) -> int | None:
        value = state.get(key)
        return value.shape[axis] if value is not None and value.ndim else None

    pixels = size(_TOKENIZER_KEY.format(0, "weight"), -1)
    facts = {
        "width": size("cls_token", -1) or size("norm.weight", 0),
        "depth": count(_BLOCK_INDEX),
        "patch": math.isqrt(pixels) if pixels else None,
        "spectral ranges": count(_TOKENIZER_INDEX),
        "decoder width": size("decoder_embed.weight", 0),
        "decoder depth": count(_DECODER_BLOCK_INDEX),
    }
    return ", ".join(f"{name} {value}" for name, value in facts.items() if value)


def _natural_order(key: str) -> list[str | int]:
    """Sort key putting "blocks.2" before "blocks.10"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _name(source: str | os.PathLike | None) -> str:
    return "the checkpoint" if source is None else str(source)


def _dotted(path: ParamPath) -> str:
    return ".".join(map(str, path))
