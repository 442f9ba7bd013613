"""Released RoMA checkpoints (PyTorch) <-> `eofm.models.roma.Roma`.

  python -m eofm.convert.roma --checkpoint RoMA-B.pth --out weights/   # needs torch
  -> weights/roma_B.safetensors, read without torch by
  load_roma("weights/roma_B.safetensors", config_of("B"))

The command reads a released file, infers its variant from its shapes (or takes `--variant`),
checks every tensor by loading it into a `Roma` and writes the released state dict (float32,
without the optimizer state) as `.safetensors`.

The released files are MAE-style training checkpoints {"model": state dict, "optimizer": ...,
"epoch": ..., ...}; `official_state` reads the state dict under "model" and ignores the rest.

Official key (torch shape) -> eofm parameter; D width, C channels, p patch side, K convolution
width, N state size, R dt rank, Dd decoder width, T memory taps, i encoder layer, j decoder block:
  patch_embed.proj.weight (D, C, p, p), .bias       encoder.patch_embed.proj kernel [p*p*C, D]
  angle_embed (1, 1, D)                             encoder.angle_embed
  layers.{i}.norm1 | norm2                          encoder.blocks[i].norm1 | norm2
  layers.{i}.mixer.in_proj.weight (2D, D)           ....mixer.in_proj kernel [D, 2D]
  layers.{i}.mixer.conv1d.weight (D, 1, K), .bias   ....mixer.conv_kernel [K, D], conv_bias
  layers.{i}.mixer.x_proj.weight (R + 2N, D)        ....mixer.x_proj kernel [D, R + 2N]
  layers.{i}.mixer.dt_proj.weight (D, R), .bias     ....mixer.dt_proj
  layers.{i}.mixer.A_log (D, N), .D (D,)            ....mixer.a_log, d_skip (float32)
  layers.{i}.mixer.out_proj.weight (D, D)           ....mixer.out_proj
  layers.{i}.mlp.w1 | w2 | w3                       ....ffn.w1 | w2 | w3
  norm_{t} (t = 1 .. T)                             decoder.tap_norms[t - 1]
  enc2dec.weight (T Dd, T D), .bias                 decoder.enc2dec
  ar_token (1, 1, Dd)                               decoder.ar_token
  dec_block.{j}.attn2.q | proj                      decoder.blocks[j].attn.q | proj
  dec_block.{j}.attn2.kv.weight (2Dd, Dd), .bias    decoder.blocks[j].attn.kv [Dd, 2, Dd], [2, Dd]
  dec_block.{j}.norm2_1 | norm2_2 | norm2           decoder.blocks[j].norm_q | norm_kv | norm
  dec_block.{j}.mlp.fc1 | fc2                       decoder.blocks[j].mlp.fc1 | fc2
  ar_norm, ar_pred.weight (p*p*C, Dd), .bias        decoder.norm, decoder.pred
Linear weights are transposed and LayerNorm weights become scales. The patch embedding Conv2d is
the Linear on patches flattened in (row, col, channel) order (the "patch_conv" layout), and the
head predicts patches in that order too. The depthwise Conv1d (groups D, padding K - 1, the first
L outputs kept) is `mamba.causal_depthwise_conv` with kernel[k, d] = weight[d, 0, k].

Fixed tensors are checked, not loaded: `pos_embed` (1, L, D) and `dec_pos_embed` (1, L, Dd)
against the MAE 2-D sin-cos table of the g x g grid, and the decoder's `mask` (Q, Q) against
`roma.block_causal_mask`, stored as 0/1 (1: may attend) or as an additive 0/-inf mask.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from eofm.convert import common, torch_state
from eofm.convert.common import ConversionError, ParamPath, Tensor
from eofm.data.spec import SensorSpec
from eofm.models import family, roma
from eofm.models.roma import Roma, RomaConfig

# Inputs of a loaded model when none are given: the RGB images RoMA is pretrained on.
DEFAULT_INPUTS = {"rgb": SensorSpec.full("rgb")}
# Key of the state dict in a released training checkpoint.
CHECKPOINT_KEY = "model"

# eofm Params outside Linear and LayerNorm modules -> official keys ("{}": a layer index).
_PARAMS = {
    "encoder.angle_embed": "angle_embed",
    "encoder.blocks.{}.mixer.conv_kernel": "layers.{}.mixer.conv1d.weight",
    "encoder.blocks.{}.mixer.conv_bias": "layers.{}.mixer.conv1d.bias",
    "encoder.blocks.{}.mixer.a_log": "layers.{}.mixer.A_log",
    "encoder.blocks.{}.mixer.d_skip": "layers.{}.mixer.D",
    "decoder.ar_token": "ar_token",
}
_CONV_KERNEL = "encoder.blocks.{}.mixer.conv_kernel"
_MIXER_LINEARS = ("in_proj", "x_proj", "dt_proj", "out_proj")
# eofm Linear and LayerNorm modules -> official modules.
_MODULES = {
    "encoder.patch_embed.proj": "patch_embed.proj",
    "encoder.blocks.{}.norm1": "layers.{}.norm1",
    "encoder.blocks.{}.norm2": "layers.{}.norm2",
    **{f"encoder.blocks.{{}}.mixer.{m}": f"layers.{{}}.mixer.{m}" for m in _MIXER_LINEARS},
    **{f"encoder.blocks.{{}}.ffn.{w}": f"layers.{{}}.mlp.{w}" for w in ("w1", "w2", "w3")},
    "decoder.tap_norms.{}": "norm_{}",  # one-based
    "decoder.enc2dec": "enc2dec",
    "decoder.blocks.{}.attn.q": "dec_block.{}.attn2.q",
    "decoder.blocks.{}.attn.kv": "dec_block.{}.attn2.kv",
    "decoder.blocks.{}.attn.proj": "dec_block.{}.attn2.proj",
    "decoder.blocks.{}.norm_q": "dec_block.{}.norm2_1",
    "decoder.blocks.{}.norm_kv": "dec_block.{}.norm2_2",
    "decoder.blocks.{}.norm": "dec_block.{}.norm2",
    "decoder.blocks.{}.mlp.fc1": "dec_block.{}.mlp.fc1",
    "decoder.blocks.{}.mlp.fc2": "dec_block.{}.mlp.fc2",
    "decoder.norm": "ar_norm",
    "decoder.pred": "ar_pred",
}
_ONE_BASED = "decoder.tap_norms.{}"
_TABLE_KEYS = ("pos_embed", "dec_pos_embed")
_MASK_KEY = "mask"
_LAYER_INDEX = re.compile(r"layers\.(\d+)\.")
_DECODER_BLOCK_INDEX = re.compile(r"dec_block\.(\d+)\.")
_TAP_NORM_INDEX = re.compile(r"norm_(\d+)\.")
_ROMA_KEY = re.compile(r"(layers\.\d+\.mixer|dec_block\.\d+\.attn2|ar_pred|enc2dec)\.")
_EXPECTED = (
    "a RoMA pretraining state dict, alone or under 'model' of a training checkpoint:"
    " patch_embed.proj, pos_embed, angle_embed, layers.{i}.{norm1, mixer, norm2, mlp},"
    " norm_{1..T}, enc2dec, ar_token, dec_pos_embed, dec_block.{j}.{norm2_1, norm2_2, attn2.q,"
    " attn2.kv, attn2.proj, norm2, mlp}, ar_norm, ar_pred, mask"
)


def official_state(checkpoint: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The state dict of a released training checkpoint, or of a plain state dict, as numpy.

    Args:
      checkpoint: {"model": {official key: tensor}, other training entries (ignored)}, or
        {official key: tensor}.
    Returns:
      {official key: array}.
    """
    inner = checkpoint.get(CHECKPOINT_KEY)
    state = inner if isinstance(inner, Mapping) else checkpoint
    return {key: torch_state.to_numpy(value) for key, value in torch_state.flatten(state).items()}


def to_eofm(
    checkpoint: Mapping[str, Any], model: Roma, *, source: str | os.PathLike | None = None
) -> common.ImportReport:
    """Writes released RoMA weights into `model` in place.

    Everything is checked before anything is written, so on error the model is unchanged.

    Args:
      checkpoint: a training checkpoint or a state dict (`official_state`), of arrays or torch
        tensors, e.g. from `torch_state.load`.
      model: a built (not abstract) `Roma`; its config must match the file (`variant_of`).
      source: the file the checkpoint came from, named in messages.
    Returns:
      What the file left out (nothing, for a released file), also logged.
    Raises:
      ConversionError: listing every missing and unexpected key, every shape mismatch and every
        fixed tensor (position tables, decoder mask) that differs from eofm's.
    """
    cfg = model.cfg
    state = official_state(checkpoint)
    params = common.model_params(model)
    common.require_built(params)
    tensors = _tensors(cfg, params)
    fixed_missing, fixed_mismatched, invalid = _check_fixed(state, cfg, source)
    return common.load_checked(
        model,
        params,
        tensors,
        state,
        source=source,
        description=common.Description(_describe_model(cfg), _describe_file(state), _EXPECTED),
        optional_parts={},
        checked=_fixed_tensors(cfg).keys(),
        missing=fixed_missing,
        mismatched=fixed_mismatched,
        invalid=invalid,
        invalid_title="fixed tensors that differ from eofm's",
    )


def from_eofm(model: Roma) -> dict[str, np.ndarray]:
    """The released state dict of `model`, fixed tensors included: the inverse of `to_eofm`.

    Returns:
      {official key: array in the torch layout}: float32 parameters and position tables, the
      decoder mask as bool (True: may attend).
    """
    params = common.model_params(model)
    state = common.read(params, _tensors(model.cfg, params))
    return _fixed_tensors(model.cfg) | state


def load_roma(
    path: str | os.PathLike,
    cfg: RomaConfig,
    *,
    inputs: Mapping[str, SensorSpec] | None = None,
    rngs: nnx.Rngs | None = None,
) -> Roma:
    """Builds a `Roma` for `cfg` and loads a released checkpoint file into it.

    Args:
      path: the released `.pth` (needs torch) or a `.safetensors` file (e.g. written by this
        module's command, or by `torch_state.save_safetensors` from `from_eofm`).
      cfg: the model configuration (`config_of(variant_of(state))` for a released file); widths
        and depths must match the file. Head counts leave no trace in the shapes: they are taken
        from `cfg` (8 in the released decoders).
      inputs: the model's input ({key: SensorSpec} of RGB images); default `DEFAULT_INPUTS`.
      rngs: initialises the model before loading; default seed 0.
    """
    inputs = DEFAULT_INPUTS if inputs is None else inputs
    model = Roma(cfg, inputs, rngs=rngs if rngs is not None else nnx.Rngs(0))
    to_eofm(torch_state.load(path), model, source=path)
    return model


# ---------------------------------------------------------------------------------------------
# Variants


def config_of(variant: str, inputs: Mapping[str, SensorSpec] | None = None) -> RomaConfig:
    """The `RomaConfig` of `roma.VARIANTS[variant]` for `inputs` (default `DEFAULT_INPUTS`)."""
    fields = family.config_fields(roma, variant)
    image_size = fields.patch_size * fields.block_patches * fields.grid_blocks
    return family.make_config(
        roma, fields, DEFAULT_INPUTS if inputs is None else inputs, image_size
    )


def variant_of(checkpoint: Mapping[str, Any], *, source: str | os.PathLike | None = None) -> str:
    """The name of the `roma.VARIANTS` entry whose width, patch side, depth and decoder width
    are those of the checkpoint's tensors.

    Raises:
      ConversionError: naming the file's sizes and each variant's when none fits.
    """
    sizes = _variant_sizes(official_state(checkpoint))
    for name, fields in roma.VARIANTS.items():
        if all(fields[field] == size for field, size in sizes.items()):
            return name
    known = "; ".join(f"{name}: {_shown_sizes(fields)}" for name, fields in roma.VARIANTS.items())
    raise ConversionError(
        f"{common.source_name(source)}: no RoMA variant has {_shown_sizes(sizes)}; the variants:"
        f" {known}"
    )


def _variant_sizes(state: Mapping[str, np.ndarray]) -> dict[str, int | None]:
    """{RomaConfig field: size} of the fields a state dict shows (None: the key is absent)."""
    return {
        "embed_dim": common.dim(state, "patch_embed.proj.weight", 0),
        "patch_size": common.dim(state, "patch_embed.proj.weight", 2),
        "depth": common.count_indices(state, _LAYER_INDEX),
        "decoder_dim": common.dim(state, "ar_token", 2),
    }


def _shown_sizes(fields: Mapping[str, Any]) -> str:
    return (
        f"width {fields['embed_dim']}, patch {fields['patch_size']}, depth {fields['depth']},"
        f" decoder width {fields['decoder_dim']}"
    )


# ---------------------------------------------------------------------------------------------
# Official keys and tensor layouts


def _official_tensor(cfg: RomaConfig, path: ParamPath, shape: tuple[int, ...]) -> Tensor:
    """The official tensor of the eofm Param at `path` (of shape `shape`)."""
    indices = [part for part in path if isinstance(part, int)]
    template = ".".join("{}" if isinstance(part, int) else str(part) for part in path)
    if template in _PARAMS:
        key = _PARAMS[template].format(*indices)
        if template == _CONV_KERNEL:  # (D, 1, K) <-> [K, D]
            return Tensor(key, path, None, "linear", shape=(shape[1], 1, shape[0]))
        return Tensor(key, path, None, "copy")
    module, leaf = template.rpartition(".")[0], path[-1]
    if module not in _MODULES or leaf not in common.TORCH_LEAF_NAMES:
        raise ConversionError(f"model parameter {common.dotted(path)} has no RoMA checkpoint key")
    if module == _ONE_BASED:
        indices = [index + 1 for index in indices]
    key = f"{_MODULES[module].format(*indices)}.{common.TORCH_LEAF_NAMES[leaf]}"
    if module == "encoder.patch_embed.proj" and leaf == "kernel":
        p = cfg.patch_size
        return Tensor(key, path, None, "patch_conv", shape=(shape[1], cfg.in_chans, p, p))
    return Tensor(key, path, None, common.layout_of(path))


def _tensors(cfg: RomaConfig, params: Mapping[ParamPath, nnx.Param]) -> list[Tensor]:
    return [_official_tensor(cfg, path, param.shape) for path, param in params.items()]


# ---------------------------------------------------------------------------------------------
# Fixed tensors


def _fixed_tensors(cfg: RomaConfig) -> dict[str, np.ndarray]:
    """{official key: value} of the tensors eofm recomputes: the position tables (1, L, width)
    f32 and the decoder mask bool [Q, Q]."""
    grid = (cfg.grid, cfg.grid)
    widths = dict(zip(_TABLE_KEYS, (cfg.embed_dim, cfg.decoder_dim)))
    tables = {key: common.sincos_table(grid, width, cls_rows=0) for key, width in widths.items()}
    return tables | {_MASK_KEY: _block_causal_mask(cfg)}


def _block_causal_mask(cfg: RomaConfig) -> np.ndarray:
    return roma.block_causal_mask(cfg.grid_blocks**2 - 1, cfg.block_patches**2)


def _check_fixed(
    state: Mapping[str, np.ndarray], cfg: RomaConfig, source: str | os.PathLike | None
) -> tuple[list[str], list[str], list[str]]:
    """Compares the fixed tensors of `state` with `_fixed_tensors`.

    Returns:
      (missing keys, shape mismatches, "key: ..." for each tensor whose values differ).
    """
    fixed = _fixed_tensors(cfg)
    missing = [key for key in fixed if key not in state]
    held = {key: value for key, value in fixed.items() if key in state}
    mismatched = [
        f"{key}: expected {value.shape}, got {tuple(state[key].shape)}"
        for key, value in held.items()
        if tuple(state[key].shape) != value.shape
    ]
    shaped = [key for key, value in held.items() if tuple(state[key].shape) == value.shape]
    widths = {key: fixed[key].shape[-1] for key in shaped if key in _TABLE_KEYS}
    _, table_problems = common.check_sincos_tables(
        state, widths, cls_rows=0, grid=(cfg.grid, cfg.grid), source=source
    )
    invalid = list(table_problems.values())
    if _MASK_KEY in shaped and (problem := _mask_problem(state[_MASK_KEY], fixed[_MASK_KEY])):
        invalid.append(f"{_MASK_KEY}: {problem}")
    return missing, mismatched, invalid


def _mask_problem(mask: np.ndarray, attends: np.ndarray) -> str:
    """How a stored decoder mask differs from `attends` (bool, True: may attend); "" if not.
    The mask may be 0/1 (1: may attend) or additive 0/-inf (0: may attend)."""
    values = set(np.unique(mask).tolist())
    if values <= {0, 1}:
        stored = mask != 0
    elif values <= {0, -np.inf}:
        stored = mask == 0
    else:
        shown = sorted(values)[:4]
        return f"values {shown} are neither 0/1 nor an additive 0/-inf mask"
    wrong = int(np.sum(stored != attends))
    if not wrong:
        return ""
    return f"not the block-causal mask ({wrong} of {attends.size} entries differ)"


# ---------------------------------------------------------------------------------------------
# Error messages


def _describe_model(cfg: RomaConfig) -> str:
    return (
        f"RoMA (width {cfg.embed_dim}, depth {cfg.depth}, patch {cfg.patch_size},"
        f" {cfg.in_chans} channels, memory layers {cfg.memory_layers}; decoder width"
        f" {cfg.decoder_dim}, heads {cfg.decoder_heads})"
    )


def _describe_file(state: Mapping[str, np.ndarray]) -> str:
    """What the keys and shapes of a state dict say about the model that wrote it."""
    if not any(_ROMA_KEY.match(key) for key in state):
        return common.foreign_file(state, "RoMA")
    facts = []
    kernel = state.get("patch_embed.proj.weight")
    if kernel is not None and kernel.ndim == 4:
        facts.append("width {}, {} channels, patch {}".format(*kernel.shape[:3]))
    facts.append(f"depth {common.count_indices(state, _LAYER_INDEX)}")
    facts.append(f"{common.count_indices(state, _TAP_NORM_INDEX)} memory norms")
    if width := common.dim(state, "ar_token", 2):
        facts.append(f"decoder width {width}")
    facts.append(f"{common.count_indices(state, _DECODER_BLOCK_INDEX)} decoder blocks")
    return ", ".join(facts)


# ---------------------------------------------------------------------------------------------
# Command line


def convert_file(
    checkpoint: str | os.PathLike, out_dir: str | os.PathLike, variant: str | None = None
) -> Path:
    """Checks a released file by loading it and writes its state dict to
    `out_dir`/roma_<variant>.safetensors (written under a temporary name, then renamed).

    Args:
      checkpoint: the released `.pth` (needs torch) or a `.safetensors` file.
      out_dir: the output directory, created if needed.
      variant: a `roma.VARIANTS` name; None: `variant_of` the file.
    Returns:
      The path written.
    """
    state = torch_state.load(checkpoint)
    variant = variant or variant_of(state, source=checkpoint)
    model = Roma(config_of(variant), DEFAULT_INPUTS, rngs=nnx.Rngs(0))
    to_eofm(state, model, source=checkpoint)
    target = Path(out_dir) / f"roma_{variant}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    torch_state.save_safetensors(partial, from_eofm(model))
    os.replace(partial, target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="released .pth or .safetensors file")
    parser.add_argument("--out", required=True, help="directory of the .safetensors written")
    parser.add_argument(
        "--variant", choices=sorted(roma.VARIANTS), help="default: inferred from the shapes"
    )
    args = parser.parse_args(argv)
    target = convert_file(args.checkpoint, args.out, args.variant)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
