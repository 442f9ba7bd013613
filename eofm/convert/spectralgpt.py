"""Official SpectralGPT checkpoints (`SpectralGPT.pth`, `SpectralGPT+.pth`) <-> `SpectralGPT`.

The files are MAE training checkpoints {model, optimizer, epoch, scaler, args}; `torch_state.load`
takes the state dict under "model" (the pretraining MAE, decoder included).

Official key (torch shape) -> eofm parameter; D width, Dd decoder width, N = (S/8)^2, i layer:
  patch_embed.proj.weight (D, 1, 3, 8, 8), .bias (D,)   patch_embed.kernel [192, D], .bias
  pos_embed_spatial (1, N, D)                           pos.spatial [N, D]
  pos_embed_temporal (1, 4, D)                          pos.spectral [4, D]
  blocks.{i}.norm1 | norm2 .weight, .bias               blocks[i].norm1 | norm2
  blocks.{i}.attn.q | k | v .weight (D, D), .bias (D,)  blocks[i].attn.qkv kernel[:, 0 | 1 | 2],
                                                        bias[0 | 1 | 2]
  blocks.{i}.attn.proj | mlp.fc1 | mlp.fc2              blocks[i]....
  norm                                                  norm
  mask_token (1, 1, Dd), decoder_embed (Dd, D)          mask_token, decoder_embed
  decoder_pos_embed_spatial | _temporal                 decoder_pos.spatial | spectral
  decoder_blocks.{i}.*, decoder_norm                    decoder_blocks[i].*, decoder_norm
  decoder_pred (192, Dd)                                decoder_pred
Linear weights are transposed and LayerNorm weights become scales. The patch embedding is a
Conv3d(1 -> D) with kernel = stride = (3, 8, 8) over the 12 bands taken as frames; its receptive
field flattens in (band-in-group, row, col) order, the order of `spectralgpt.cubify`, so it is the
Linear kernel = weight.reshape(D, 192).T. The separate q, k and v outputs are laid out with the
heads contiguous, as `layers.Attention` splits each part of its fused [D, 3, D] kernel.

Spatial position tables made for another grid (the 96 px `SpectralGPT.pth` in a 128 px model)
are interpolated with `spectralgpt.resize_positions`, as progressive training does.

Three kinds of file load: the pretraining MAE (all of the above), its encoder alone (the decoder
and mask token keep their values, `allow_missing_decoder`) and the official finetuning ViT. That
classifier holds the encoder with one learned `pos_embed` (1, 4 N, D) in place of the separable
tables (they keep their values: a joint table has no exact separable form), a `head` and, under
global pooling, `fc_norm` in place of `norm` (which keeps its values); `pos_embed`, `head` and
`fc_norm` are not used.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from eofm.convert import common, torch_state
from eofm.convert.common import ConversionError, ParamPath, Tensor
from eofm.data.spec import SensorSpec
from eofm.models.spectralgpt import BANDS, SpectralGPT, SpectralGPTConfig, resize_positions

# Inputs of a loaded model when none are given: the 12 bands SpectralGPT reads, of Sentinel-2 L1C
# as in fMoW-Sentinel, its main pretraining set (SpectralGPT+ continued on BigEarthNet-S2, L2A).
DEFAULT_INPUTS = {"s2": SensorSpec("sentinel2_l1c", BANDS)}

# Official keys of the position tables, by eofm module and table.
_POSITION_KEYS = {
    ("pos", "spatial"): "pos_embed_spatial",
    ("pos", "spectral"): "pos_embed_temporal",
    ("decoder_pos", "spatial"): "decoder_pos_embed_spatial",
    ("decoder_pos", "spectral"): "decoder_pos_embed_temporal",
}
_SPATIAL_KEYS = {"pos_embed_spatial": "pos", "decoder_pos_embed_spatial": "decoder_pos"}
_MODULES = ("blocks", "norm", "decoder_embed", "decoder_blocks", "decoder_norm", "decoder_pred")
_BLOCK_INDEX = re.compile(r"blocks\.(\d+)\.")
_DECODER_BLOCK_INDEX = re.compile(r"decoder_blocks\.(\d+)\.")
# Keys found only in SpectralGPT files (not in the fused-qkv ViTs of the other models).
_SPECTRALGPT_KEY = re.compile(
    r"(patch_embed\.proj\.|(decoder_)?pos_embed_(spatial|temporal)$|(decoder_)?blocks\.\d+\.attn"
    r"\.[qkv]\.)"
)
# The joint position table of the finetuning ViT, which replaces the separable encoder tables.
_JOINT_TABLE = "pos_embed"
_ENCODER_TABLES = ("pos_embed_spatial", "pos_embed_temporal")
_EXPECTED = (
    "a SpectralGPT state dict: the encoder (patch_embed.proj, a Conv3d; pos_embed_spatial /"
    " _temporal; blocks.{i} with separate attn.q, attn.k, attn.v; norm), alone, with the decoder"
    " of the pretraining MAE (decoder_*, mask_token), or as the finetuning ViT (pos_embed in place"
    " of the separable tables; head, fc_norm)"
)


def to_eofm(
    state: Mapping[str, Any],
    model: SpectralGPT,
    *,
    source: str | os.PathLike | None = None,
    allow_missing_decoder: bool = True,
) -> common.ImportReport:
    """Writes official SpectralGPT weights into `model` in place.

    Reads the pretraining MAE, its encoder alone and the finetuning ViT (see the module
    docstring). Everything is checked before anything is written, so on error the model is
    unchanged. Spatial position tables of another square grid are interpolated to the model's
    grid.

    Args:
      state: {official key: array or torch tensor}, e.g. from `torch_state.load`.
      model: a built (not abstract) `SpectralGPT`; its config must match the file, except for
        the image size.
      source: the file the state came from, named in messages.
      allow_missing_decoder: a file without any decoder tensor loads; the decoder and mask token
        keep their values.
    Returns:
      The keys not used and the modules that kept their values, also logged as warnings.
    Raises:
      ConversionError: listing every missing and unexpected key and every shape mismatch.
    """
    state = {key: torch_state.to_numpy(value) for key, value in torch_state.flatten(state).items()}
    params = common.model_params(model)
    common.require_built(params)
    tensors = _tensors(model.cfg, params)
    decoder = {t.key for t in tensors if _in_decoder(t)} if allow_missing_decoder else ()
    parts = common.optional_vit_parts(state, decoder)
    if _JOINT_TABLE in state:
        parts["separable position tables"] = _ENCODER_TABLES
    return common.load_checked(
        model,
        params,
        tensors,
        _resize_spatial_tables(state, model.cfg, source),
        source=source,
        description=common.Description(
            _describe_model(model.cfg), _describe_file(state), _EXPECTED
        ),
        optional_parts=parts,
        unused=[*common.classifier_keys(state), _JOINT_TABLE],
    )


def from_eofm(model: SpectralGPT) -> dict[str, np.ndarray]:
    """The official state dict of `model`: the inverse of `to_eofm`.

    Returns:
      {official key: float32 array in the torch layout}: the (D, 1, 3, 8, 8) Conv3d weight, the
      (1, N, D) position tables and separate q, k, v Linears.
    """
    params = common.model_params(model)
    return common.read(params, _tensors(model.cfg, params))


def load_spectralgpt(
    path: str | os.PathLike,
    cfg: SpectralGPTConfig,
    *,
    inputs: Mapping[str, SensorSpec] | None = None,
    rngs: nnx.Rngs | None = None,
) -> SpectralGPT:
    """Builds a `SpectralGPT` for `cfg` and loads an official checkpoint file into it.

    Args:
      path: `.safetensors` (e.g. written by `torch_state.save_safetensors` from `from_eofm`) or
        the official `.pth` training checkpoint.
      cfg: the model configuration; widths, depths and the cube size must match the file (a
        mismatch shows as shape errors or missing / unexpected layers). `image_size` may differ:
        the spatial position tables are then interpolated. Head counts leave no trace in the
        shapes: they are taken from `cfg` (12 and 16 for the released ViT-B and its decoder).
      inputs: the model's input ({key: SensorSpec} of the `spectralgpt.BANDS`); default
        `DEFAULT_INPUTS`. `features` reads those bands, by name, from any data that has them.
      rngs: initialises the model before loading; default seed 0.
    """
    inputs = DEFAULT_INPUTS if inputs is None else inputs
    model = SpectralGPT(cfg, inputs, rngs=rngs if rngs is not None else nnx.Rngs(0))
    to_eofm(torch_state.load(path), model, source=path)
    return model


# ---------------------------------------------------------------------------------------------
# Official keys and tensor layouts


def _official_tensors(
    cfg: SpectralGPTConfig, path: ParamPath, shape: tuple[int, ...]
) -> list[Tensor]:
    """The official tensors that make up the eofm Param at `path` (of shape `shape`)."""
    leaf, names = path[-1], common.TORCH_LEAF_NAMES
    if path in _POSITION_KEYS:
        return [Tensor(_POSITION_KEYS[path], path, None, "copy", shape=(1, *shape))]
    if path == ("mask_token",):
        return [Tensor("mask_token", path, None, "copy")]
    if path[0] == "patch_embed" and len(path) == 2 and leaf in names:
        if leaf == "bias":
            return [Tensor("patch_embed.proj.bias", path, None, "copy")]
        kernel_shape = (shape[1], 1, cfg.bands_per_token, cfg.patch_size, cfg.patch_size)
        return [Tensor("patch_embed.proj.weight", path, None, "linear", shape=kernel_shape)]
    if path[0] in _MODULES and leaf in names:
        module = ".".join(map(str, path[:-1]))
        if len(path) > 1 and path[-2] == "qkv":
            # kernel [D, 3, D]: part j along axis 1; bias [3, D]: row j.
            layout, axis = ("linear", 1) if leaf == "kernel" else ("copy", 0)
            attn = module.removesuffix(".qkv")
            return [
                Tensor(f"{attn}.{part}.{names[leaf]}", path, j, layout, axis=axis)
                for j, part in enumerate("qkv")
            ]
        return [Tensor(f"{module}.{names[leaf]}", path, None, common.layout_of(path))]
    raise ConversionError(
        f"model parameter {common.dotted(path)} has no SpectralGPT checkpoint key"
    )


def _in_decoder(tensor: Tensor) -> bool:
    """Whether the tensor is the mask token or in a decoder_* module."""
    root = str(tensor.path[0])
    return root == "mask_token" or root.startswith("decoder_")


def _tensors(cfg: SpectralGPTConfig, params: Mapping[ParamPath, nnx.Param]) -> list[Tensor]:
    return [t for path, param in params.items() for t in _official_tensors(cfg, path, param.shape)]


def _resize_spatial_tables(
    state: dict[str, np.ndarray], cfg: SpectralGPTConfig, source: str | os.PathLike | None
) -> dict[str, np.ndarray]:
    """`state` with its spatial position tables (1, g*g, W) of another square grid interpolated
    to the model's grid; tables of any other shape are left for `common.check` to report."""
    widths = {"pos": cfg.embed_dim, "decoder_pos": cfg.decoder_dim}
    out = dict(state)
    for key, module in _SPATIAL_KEYS.items():
        table = state.get(key)
        if table is None or table.ndim != 3 or table.shape[0] != 1:
            continue
        rows, width = table.shape[1:]
        side = math.isqrt(rows)
        if width != widths[module] or side * side != rows or side == cfg.grid:
            continue
        out[key] = np.asarray(resize_positions(table[0], cfg.grid))[None]
        logging.info(
            "%s: %s interpolated from a %dx%d grid (%d px) to %dx%d (%d px)",
            common.source_name(source),
            key,
            side,
            side,
            side * cfg.patch_size,
            cfg.grid,
            cfg.grid,
            cfg.image_size,
        )
    return out


# ---------------------------------------------------------------------------------------------
# Error messages


def _describe_model(cfg: SpectralGPTConfig) -> str:
    return (
        f"SpectralGPT (width {cfg.embed_dim}, depth {cfg.depth}, heads {cfg.num_heads}, image"
        f" {cfg.image_size} px, cubes {cfg.bands_per_token}x{cfg.patch_size}x{cfg.patch_size} of"
        f" {cfg.num_bands} bands; decoder width {cfg.decoder_dim}, depth {cfg.decoder_depth},"
        f" heads {cfg.decoder_heads})"
    )


def _describe_file(state: Mapping[str, np.ndarray]) -> str:
    """What the keys and shapes of a state dict say about the model that wrote it."""
    if not any(_SPECTRALGPT_KEY.match(key) for key in state):
        return common.foreign_file(state, "SpectralGPT")
    facts = []
    kernel = state.get("patch_embed.proj.weight")
    if kernel is not None and kernel.ndim == 5:
        facts.append("width {}, cubes {}x{}x{}".format(kernel.shape[0], *kernel.shape[2:]))
    if depth := common.count_indices(state, _BLOCK_INDEX):
        facts.append(f"depth {depth}")
    if (rows := common.dim(state, "pos_embed_spatial", 1)) and math.isqrt(rows) ** 2 == rows:
        facts.append(f"a {math.isqrt(rows)}x{math.isqrt(rows)} position grid")
    if width := common.dim(state, "decoder_embed.weight", 0):
        facts.append(f"decoder width {width}")
    if depth := common.count_indices(state, _DECODER_BLOCK_INDEX):
        facts.append(f"decoder depth {depth}")
    return ", ".join(facts)
