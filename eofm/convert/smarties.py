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

Three kinds of file load: a pretraining checkpoint (all of the above), the encoder alone (as
released; the decoder and pixel heads keep their values, `allow_missing_decoder`) and a downstream
classifier, the timm ViT of the official finetuning code: the encoder and `head` (not used), with
`fc_norm` (not used) in place of `norm` (which keeps its values) under global pooling. Finetuning
may train that ViT's `pos_embed` further; a classifier's table that is not the sin-cos table is
then not used either (the model keeps the sin-cos table).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections.abc import Mapping

import numpy as np
from flax import nnx

from eofm.convert import common, torch_state
from eofm.convert.common import ConversionError, ParamPath, Tensor
from eofm.data.spec import SensorSpec
from eofm.models.smarties import Smarties, SmartiesConfig

DEFAULT_IMAGE_SIZE = 224  # the official models are built for 224 px inputs
# Inputs of a loaded model when none are given: the pretraining pair of the released models
# (BigEarthNet Sentinel-2 + Sentinel-1). Only the pretraining loss reads them; `features` encodes
# any sensor.
DEFAULT_INPUTS = {"s2": SensorSpec.full("sentinel2_l2a"), "s1": SensorSpec.full("sentinel1_grd")}

_DECODER_ROOTS = ("decoder", "head_kernel", "head_bias")
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
_EXPECTED = (
    "a SMARTIES state dict: the encoder (spectrum_projection.spectrum_embeds.{k}.proj, cls_token,"
    " pos_embed, blocks.{i}.*, norm), alone, with the decoder of a pretraining checkpoint"
    " (decoder_*, mask_token), or with the head of a classifier (head, fc_norm)"
)
_SMARTIES_KEY = re.compile(
    r"(cls_token|pos_embed|mask_token|decoder_pos_embed|spectrum_projection\.|blocks\.|norm\."
    r"|decoder_(embed|blocks|norm|preds)\.)"
)


def to_eofm(
    state: Mapping[str, np.ndarray],
    model: Smarties,
    *,
    source: str | os.PathLike | None = None,
    allow_missing_decoder: bool = True,
    image_size: int | None = None,
) -> common.ImportReport:
    """Writes official SMARTIES weights into `model` in place.

    Reads a pretraining checkpoint, its encoder alone and a downstream classifier (see the module
    docstring). Everything is checked before anything is written, so on error the model is
    unchanged.

    Args:
      state: {official key: array}, e.g. from `torch_state.load`.
      model: a built (not abstract) `Smarties`; its config must match the file.
      source: the file the state came from, named in messages.
      allow_missing_decoder: a file without any decoder tensor (as released) loads; the decoder
        and pixel heads keep their values.
      image_size: image side the position tables were made for; None: a square grid. Tables of
        another grid are not checked.
    Returns:
      The keys not used and the modules that kept their values, also logged as warnings.
    Raises:
      ConversionError: listing every missing and unexpected key and every shape mismatch (and
        position tables that are not the MAE sin-cos table).
    """
    params = common.model_params(model)
    common.require_built(params)
    tensors = _tensors(params)
    tables = _position_tables(model)
    p = model.cfg.patch_size
    grid = None if image_size is None else (image_size // p, image_size // p)
    mismatched, invalid = common.check_sincos_tables(
        state, tables, cls_rows=1, grid=grid, source=source
    )
    classifier = common.classifier_keys(state)
    trained_tables = invalid if classifier else {}
    for problem in trained_tables.values():
        logging.warning(
            "%s: %s, trained by finetuning; the model keeps the sin-cos table",
            common.source_name(source),
            problem,
        )
    decoder = {t.key for t in tensors if _in_decoder(t)} if allow_missing_decoder else ()
    return common.load_checked(
        model,
        params,
        tensors,
        state,
        source=source,
        description=common.Description(_describe_model(model), _describe_file(state), _EXPECTED),
        optional_parts=common.optional_vit_parts(state, decoder),
        unused=[*classifier, *trained_tables],
        checked=tables.keys(),
        mismatched=mismatched,
        invalid=[problem for key, problem in invalid.items() if key not in trained_tables],
        invalid_title="invalid position tables",
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
    p = model.cfg.patch_size
    if image_size % p:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {p}")
    grid = (image_size // p, image_size // p)
    tables = _position_tables(model)
    state = {key: common.sincos_table(grid, width, cls_rows=1) for key, width in tables.items()}
    params = common.model_params(model)
    return state | common.read(params, _tensors(params))


def load_smarties(
    path: str | os.PathLike,
    cfg: SmartiesConfig,
    *,
    inputs: Mapping[str, SensorSpec] | None = None,
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
      inputs: the model's input sensors ({key: SensorSpec}, one or a pair); default
        `DEFAULT_INPUTS`.
      rngs: initialises what the file lacks (the decoder of an encoder-only file); default seed 0.
      allow_missing_decoder, image_size: see `to_eofm`, which also returns what the file left
        out (logged here).
    """
    inputs = DEFAULT_INPUTS if inputs is None else inputs
    model = Smarties(cfg, inputs, rngs=rngs if rngs is not None else nnx.Rngs(0))
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


def _official_tensors(path: ParamPath, shape: tuple[int, ...]) -> list[Tensor]:
    """The official tensors that make up the eofm Param at `path` (of shape `shape`)."""
    leaf = path[-1]
    names = common.TORCH_LEAF_NAMES
    if path[:2] == ("encoder", "patch_embed") and len(path) == 3 and leaf in names:
        layout = common.layout_of(path)
        return [
            Tensor(_TOKENIZER_KEY.format(k, names[leaf]), path, k, layout) for k in range(shape[0])
        ]
    if path in (("head_kernel",), ("head_bias",)):
        layout, name = ("linear", "weight") if leaf == "head_kernel" else ("copy", "bias")
        return [Tensor(_HEAD_KEY.format(k, name), path, k, layout) for k in range(shape[0])]
    if path in (("encoder", "cls_token"), ("decoder", "mask_token")):
        return [Tensor(str(leaf), path, None, "copy")]
    if path[:2] in _MODULE_NAMES and leaf in names:
        key = ".".join([_MODULE_NAMES[path[:2]], *map(str, path[2:-1]), names[leaf]])
        return [Tensor(key, path, None, common.layout_of(path))]
    raise ConversionError(f"model parameter {common.dotted(path)} has no SMARTIES checkpoint key")


def _in_decoder(tensor: Tensor) -> bool:
    return tensor.path[0] in _DECODER_ROOTS


def _tensors(params: Mapping[ParamPath, nnx.Param]) -> list[Tensor]:
    return [t for path, param in params.items() for t in _official_tensors(path, param.shape)]


def _position_tables(model: Smarties) -> dict[str, int]:
    """Official keys of the fixed position tables -> their width."""
    return {"pos_embed": model.cfg.embed_dim, "decoder_pos_embed": model.cfg.decoder_dim}


# ---------------------------------------------------------------------------------------------
# Error messages


def _describe_model(model: Smarties) -> str:
    cfg = model.cfg
    return (
        f"SMARTIES (width {cfg.embed_dim}, depth {cfg.depth}, heads {cfg.num_heads}, patch"
        f" {cfg.patch_size}; decoder width {cfg.decoder_dim}, depth {cfg.decoder_depth}, heads"
        f" {cfg.decoder_heads}; {cfg.num_ranges} spectral ranges)"
    )


def _describe_file(state: Mapping[str, np.ndarray]) -> str:
    """What the keys and shapes of a state dict say about the model that wrote it."""
    if not any(_SMARTIES_KEY.match(key) for key in state):
        return common.foreign_file(state, "SMARTIES")
    count = functools.partial(common.count_indices, state)
    size = functools.partial(common.dim, state)
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
