"""Official SatVision-TOA checkpoints (`mp_rank_00_model_states.pt`) <-> `SatVision`.

The released files are DeepSpeed checkpoints {"module": state dict, "ds_config": ..., ...} of the
SimMIM pretraining model, tensors in bf16; `official_state` takes the state dict under "module".
bf16 values are exact in float32, the models' parameter dtype.

Official key (torch shape) -> eofm parameter; C width, D = 8C the last stage's width, h heads, p
patch side, K = 14 bands, r = 32 the encoder stride, s stage, b block:
  encoder.patch_embed.proj.weight (C, K, p, p), .bias   encoder.patch_embed.proj kernel [p*p*K, C]
  encoder.patch_embed.norm                              encoder.patch_norm
  encoder.mask_token (1, 1, C)                          mask_token [C]
  encoder.layers.{s}.blocks.{b}.norm1 | norm2 | norm3   encoder.stages[s].blocks[b].norm1 | ...
  ....attn.qkv.weight (3C, C) (no bias)                 ....attn.qkv kernel [C, 3, C]
  ....attn.q_bias | v_bias (C,)                         ....attn.q_bias | v_bias
  ....attn.logit_scale (h, 1, 1)                        ....attn.logit_scale [h]
  ....attn.cpb_mlp.0 (512, 2), .2 (h, 512) (no bias)    ....attn.cpb_fc1, cpb_fc2
  ....attn.proj, mlp.fc1, mlp.fc2                       ....attn.proj, mlp.fc1, mlp.fc2
  encoder.layers.{s}.downsample.reduction | norm        encoder.stages[s].downsample....
  encoder.norm                                          encoder.norm
  decoder.0.weight (r*r*K, D, 1, 1), .bias              decoder kernel [D, r*r*K], bias
Linear weights are transposed and LayerNorm weights become scales. The patch embedding Conv2d is
the Linear on patches flattened in (row, col, channel) order (the "patch_conv" layout); the 1x1
decoder convolution is a Linear whose output channels keep their order (both feed the same pixel
shuffle). norm3, the extra LN after every 6th block of a stage, is loaded: the official downstream
wrapper builds its encoder without it and drops it silently, which this importer never does.

Each block also stores fixed buffers: `attn.relative_coords_table` (1, 2M-1, 2M-1, 2),
`attn.relative_position_index` (N, N) and, in shifted blocks, `attn_mask` (nW, N, N), for the
window M (N = M * M tokens, nW windows) each block has at the image size the model was built for
(128 px: stage grids 32, 16, 8, 4; see `swin.stage_window`). eofm recomputes them at run time, so
they are compared with `swin.cpb_coords_table`, `swin.relative_position_index` and
`swin.shift_attention_mask` and not loaded. A file may hold none of them (nothing to compare).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from eofm.convert import common, torch_state
from eofm.convert.common import ConversionError, ParamPath, Tensor
from eofm.data.spec import SensorSpec
from eofm.models import swin
from eofm.models.satvision import SLOTS, SatVision, SatVisionConfig

# Inputs of a loaded model when none are given: the 14 MODIS bands the model reads.
DEFAULT_INPUTS = {"modis": SLOTS}
# Image side the released models were built for, which fixes their buffers.
RELEASED_IMAGE_SIZE = 128
# Prefix of the model's keys in a DeepSpeed checkpoint.
DEEPSPEED_PREFIX = "module."
# Largest relative difference tolerated between a stored float buffer and the recomputed one:
# bf16 rounding, as the released buffers are stored in bf16.
BUFFER_RTOL = 2.0**-8

# eofm module names -> official ones (other names are the same).
_MODULE_NAMES = {
    "stages": "layers",
    "patch_norm": "patch_embed.norm",
    "cpb_fc1": "cpb_mlp.0",
    "cpb_fc2": "cpb_mlp.2",
    "decoder": "decoder.0",
}
_ATTENTION_LEAVES = ("q_bias", "v_bias", "logit_scale")
# What each buffer is, by the last part of its key.
_BUFFER_NAMES = {
    "relative_coords_table": "the log-spaced CPB coordinates",
    "relative_position_index": "the relative position index",
    "attn_mask": "the shifted-window mask",
}
_BLOCK_INDEX = re.compile(r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.")
_SATVISION_KEY = re.compile(r"encoder\.(layers\.\d+\.blocks|patch_embed)\.")
_EXPECTED = (
    "a SatVision-TOA (SimMIM SwinV2) state dict, alone or under 'module' of a DeepSpeed"
    " checkpoint: encoder.patch_embed, encoder.layers.{s}.blocks.{b} (attn.qkv, q_bias, v_bias,"
    " logit_scale, cpb_mlp; norm1, norm2 and norm3 after every 6th block; fixed buffers),"
    " encoder.layers.{s}.downsample, encoder.norm, with or without the SimMIM head (decoder.0,"
    " encoder.mask_token)"
)


def official_state(checkpoint: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The state dict of a DeepSpeed checkpoint, or of a plain state dict, as numpy arrays.

    Args:
      checkpoint: {"module": {official key: tensor}, other DeepSpeed entries}, nested or with
        dotted keys ("module.encoder.norm.weight"), or {official key: tensor}.
    Returns:
      {official key: array}; entries outside "module" and None (absent) buffers are dropped.
    """
    state = torch_state.flatten(checkpoint)
    if any(key.startswith(DEEPSPEED_PREFIX) for key in state):
        state = {
            key.removeprefix(DEEPSPEED_PREFIX): value
            for key, value in state.items()
            if key.startswith(DEEPSPEED_PREFIX)
        }
    return {key: torch_state.to_numpy(value) for key, value in state.items() if value is not None}


def to_eofm(
    checkpoint: Mapping[str, Any],
    model: SatVision,
    *,
    source: str | os.PathLike | None = None,
    allow_missing_decoder: bool = True,
    image_size: int = RELEASED_IMAGE_SIZE,
) -> common.ImportReport:
    """Writes official SatVision-TOA weights into `model` in place.

    Everything is checked before anything is written, so on error the model is unchanged.

    Args:
      checkpoint: a DeepSpeed checkpoint or a state dict (`official_state`), of arrays or torch
        tensors, e.g. from `torch_state.load`.
      model: a built (not abstract) `SatVision`; its config must match the file.
      source: the file the checkpoint came from, named in messages.
      allow_missing_decoder: a file without the SimMIM head (decoder.0 and encoder.mask_token)
        loads; the head keeps its values.
      image_size: image side the file's model was built for, which fixes its buffers.
    Returns:
      The modules that kept their values, also logged as a warning.
    Raises:
      ConversionError: listing every missing and unexpected key, every shape mismatch and every
        buffer that differs from the recomputed one.
    """
    state = official_state(checkpoint)
    params = common.model_params(model)
    common.require_built(params)
    tensors = _tensors(model.cfg, params)
    head = {t.key for t in tensors if t.path[0] in ("decoder", "mask_token")}
    buffers = fixed_buffers(model.cfg, image_size)
    missing, mismatched, invalid = _check_buffers(state, buffers)
    return common.load_checked(
        model,
        params,
        tensors,
        state,
        source=source,
        description=common.Description(
            _describe_model(model.cfg, image_size), _describe_file(state), _EXPECTED
        ),
        optional_parts={"SimMIM head": head} if allow_missing_decoder else {},
        checked=buffers.keys(),
        missing=missing,
        mismatched=mismatched,
        invalid=invalid,
        invalid_title="buffers that differ from the recomputed ones",
    )


def from_eofm(model: SatVision, *, image_size: int = RELEASED_IMAGE_SIZE) -> dict[str, np.ndarray]:
    """The official state dict of `model`, buffers included: the inverse of `to_eofm`.

    Args:
      model: a built `SatVision`.
      image_size: image side whose buffers are stored (the released models: 128).
    Returns:
      {official key: array in the torch layout}: float32 parameters and float buffers, int64
      `relative_position_index`; as the "module" of a DeepSpeed checkpoint.
    """
    params = common.model_params(model)
    return fixed_buffers(model.cfg, image_size) | common.read(params, _tensors(model.cfg, params))


def load_satvision(
    path: str | os.PathLike,
    cfg: SatVisionConfig,
    *,
    inputs: Mapping[str, SensorSpec] | None = None,
    rngs: nnx.Rngs | None = None,
    allow_missing_decoder: bool = True,
    image_size: int = RELEASED_IMAGE_SIZE,
) -> SatVision:
    """Builds a `SatVision` for `cfg` and loads an official checkpoint file into it.

    Args:
      path: the released DeepSpeed `mp_rank_00_model_states.pt` (needs torch), or a
        `.safetensors` file (e.g. written by `torch_state.save_safetensors` from `from_eofm`).
      cfg: the model configuration (`satvision.VARIANTS` "huge" or "giant" for the released
        files); widths, depths and heads must match the file (a mismatch shows as shape errors
        or missing / unexpected layers).
      inputs: the model's input ({key: SensorSpec} of data covering MODIS bands); default
        `DEFAULT_INPUTS`.
      rngs: initialises what the file lacks (the SimMIM head of an encoder-only file); default
        seed 0.
      allow_missing_decoder, image_size: see `to_eofm`.
    """
    inputs = DEFAULT_INPUTS if inputs is None else inputs
    model = SatVision(cfg, inputs, rngs=rngs if rngs is not None else nnx.Rngs(0))
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


def _official_key(path: ParamPath) -> str:
    """Official key of the eofm Param at `path` (not the mask token)."""
    *modules, leaf = path
    names = [_MODULE_NAMES.get(str(module), str(module)) for module in modules]
    return ".".join([*names, common.TORCH_LEAF_NAMES.get(str(leaf), str(leaf))])


def _official_tensor(cfg: SatVisionConfig, path: ParamPath, shape: tuple[int, ...]) -> Tensor:
    """The official tensor of the eofm Param at `path` (of shape `shape`)."""
    leaf = path[-1]
    if path == ("mask_token",):
        return Tensor("encoder.mask_token", path, None, "copy", shape=(1, 1, *shape))
    if leaf not in common.TORCH_LEAF_NAMES and leaf not in _ATTENTION_LEAVES:
        raise ConversionError(
            f"model parameter {common.dotted(path)} has no SatVision-TOA checkpoint key"
        )
    key = _official_key(path)
    if leaf == "logit_scale":
        return Tensor(key, path, None, "copy", shape=(*shape, 1, 1))
    if path == ("encoder", "patch_embed", "proj", "kernel"):
        p = cfg.patch_size
        return Tensor(key, path, None, "patch_conv", shape=(shape[1], cfg.in_chans, p, p))
    if path == ("decoder", "kernel"):
        return Tensor(key, path, None, "linear", shape=(shape[1], shape[0], 1, 1))
    return Tensor(key, path, None, common.layout_of(path))


def _tensors(cfg: SatVisionConfig, params: Mapping[ParamPath, nnx.Param]) -> list[Tensor]:
    return [_official_tensor(cfg, path, param.shape) for path, param in params.items()]


# ---------------------------------------------------------------------------------------------
# Fixed buffers


def fixed_buffers(cfg: SatVisionConfig, image_size: int) -> dict[str, np.ndarray]:
    """{official key: value} of the buffers of every block of an official model built for
    `image_size` px: the CPB coordinates (1, 2M-1, 2M-1, 2) f32, the relative position index
    (N, N) int64 and, for shifted windows, the attention mask (nW, N, N) f32."""
    grid = image_size // cfg.patch_size
    buffers = {}
    for s, depth in enumerate(cfg.depths):
        side = grid // 2**s
        for b in range(depth):
            shift = cfg.window_size // 2 if b % 2 else 0
            window, shift = swin.stage_window((side, side), cfg.window_size, shift)
            block = f"encoder.layers.{s}.blocks.{b}"
            table = np.array(swin.cpb_coords_table(window))[None]
            buffers[f"{block}.attn.relative_coords_table"] = table
            index = swin.relative_position_index(window).astype(np.int64)
            buffers[f"{block}.attn.relative_position_index"] = index
            if shift:
                mask = swin.shift_attention_mask((side, side), window, shift)
                buffers[f"{block}.attn_mask"] = np.array(mask)
    return buffers


def _check_buffers(
    state: Mapping[str, np.ndarray], buffers: Mapping[str, np.ndarray]
) -> tuple[list[str], list[str], list[str]]:
    """Compares the buffers of `state` with the recomputed `buffers`.

    Returns:
      (missing keys: all of `buffers` absent from a state that holds some of them; shape
      mismatches; "key: ..." for each buffer whose values differ).
    """
    held = [key for key in buffers if key in state]
    missing = [key for key in buffers if key not in state] if held else []
    mismatched, invalid = [], []
    for key in held:
        got, want = np.asarray(state[key]), buffers[key]
        if got.shape != want.shape:
            mismatched.append(f"{key}: expected {want.shape}, got {got.shape}")
        elif difference := _buffer_difference(got, want):
            what = _BUFFER_NAMES[key.rpartition(".")[2]]
            invalid.append(f"{key}: not {what} of this block ({difference})")
    return missing, mismatched, invalid


def _buffer_difference(got: np.ndarray, want: np.ndarray) -> str:
    """How a stored buffer differs from the recomputed one: integers exactly, floats beyond bf16
    rounding; "" when they agree."""
    if np.issubdtype(want.dtype, np.integer):
        wrong = int(np.sum(got != want))
        return f"{wrong} of {want.size} entries differ" if wrong else ""
    error = np.abs(got.astype(np.float64) - want)
    if np.all(error <= common.POSEMB_ATOL + BUFFER_RTOL * np.abs(want)):
        return ""
    return f"largest difference {float(np.max(error)):.3g}"


# ---------------------------------------------------------------------------------------------
# Error messages


def _describe_model(cfg: SatVisionConfig, image_size: int) -> str:
    return (
        f"SatVision-TOA (width {cfg.embed_dim}, depths {cfg.depths}, heads {cfg.num_heads},"
        f" window {cfg.window_size}, patch {cfg.patch_size}, {cfg.in_chans} bands, extra LN every"
        f" {cfg.extra_norm_period} blocks; buffers of {image_size} px images)"
    )


def _describe_file(state: Mapping[str, np.ndarray]) -> str:
    """What the keys and shapes of a state dict say about the model that wrote it."""
    if not any(_SATVISION_KEY.match(key) for key in state):
        return common.foreign_file(state, "SatVision-TOA")
    facts = []
    if (kernel := state.get("encoder.patch_embed.proj.weight")) is not None and kernel.ndim == 4:
        facts.append("width {}, {} bands, patch {}".format(*kernel.shape[:3]))
    blocks = {m.groups() for key in state if (m := _BLOCK_INDEX.match(key))}
    stages = sorted({int(s) for s, _ in blocks})
    if stages:
        depths = tuple(sum(int(s) == stage for s, _ in blocks) for stage in stages)
        facts.append(f"depths {depths}")
    norm3 = sum(key.endswith(".norm3.weight") for key in state)
    facts.append(f"{norm3} norm3 layers" if norm3 else "no norm3 layers")
    if (width := common.dim(state, "decoder.0.weight", 1)) is not None:
        facts.append(f"a SimMIM decoder from width {width}")
    return ", ".join(facts)
