"""Released CROMA checkpoints (`CROMA_base.pt`, `CROMA_large.pt`) <-> `eofm.models.croma.Croma`.

A released file is a dict of five state dicts, flattened here to dotted keys "<part>.<key>":
s2_encoder (optical), s1_encoder (radar), s2_GAP_FFN, s1_GAP_FFN and joint_encoder.

Released key (torch shape) -> eofm parameter; D width, i layer:
  s2_encoder.linear_input (D, 8*8*12)                       optical.embed
  s2_encoder.transformer.layers.{i}.0.input_norm            optical.blocks[i].norm1
  s2_encoder.transformer.layers.{i}.0.to_qkv.weight (3D, D) optical.blocks[i].attn.qkv [D, 3, D]
  s2_encoder.transformer.layers.{i}.0.to_out                optical.blocks[i].attn.proj
  s2_encoder.transformer.layers.{i}.1.input_norm            optical.blocks[i].norm2
  s2_encoder.transformer.layers.{i}.1.net.0 | net.3         optical.blocks[i].mlp.fc1 | fc2
  s2_encoder.transformer.norm_out                           optical.norm
  s1_encoder.*  (linear_input (D, 8*8*2))                   radar.*
  s2_GAP_FFN.0 | 1 | 3  (LN, Linear(D, 4D), Linear(4D, D))  optical_gap.norm | mlp.fc1 | fc2
  s1_GAP_FFN.*                                              radar_gap.*
  joint_encoder.layers.{i}.0.input_norm                     joint[i].self_norm
  joint_encoder.layers.{i}.0.to_qkv | to_out                joint[i].self_attn.qkv | proj
  joint_encoder.layers.{i}.1.input_norm                     joint[i].cross_norm
  joint_encoder.layers.{i}.1.to_q | to_k | to_v | to_out    joint[i].cross_attn.q | k | v | proj
  joint_encoder.layers.{i}.2.input_norm | net.0 | net.3     joint[i].mlp_norm | mlp.fc1 | fc2
  joint_encoder.norm_out                                    joint_norm
Linear weights are transposed, LayerNorm weights become scales and the fused `to_qkv` output
[q | k | v] (heads contiguous in each part) becomes the [D, 3, D] kernel of `layers.Attention`
(see `common`). The released code cuts patches with rearrange "b c (h i) (w j) -> b (h w) (c i j)",
the channel-major order of `croma.patch_vectors`, so `linear_input` needs no permutation.

Names follow the released inference code (`to_qkv`, `to_out`, `net.3`), not the pretraining script
(`create_qkv`, `out`, `net.2`). A state dict of that code's `PretrainedCROMA` module, whose
attributes are named `GAP_FFN_s1`, `GAP_FFN_s2` and `cross_encoder`, is read as well.

The files hold no pretraining-only parameters (contrastive projections, logit scale, MAE decoder):
they keep their initial values, which a log line reports.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from eofm.convert import common, torch_state
from eofm.convert.common import ConversionError, ParamPath, Tensor
from eofm.data.spec import SensorSpec
from eofm.models.croma import Croma, CromaConfig

# Inputs of a loaded model when none are given: what the released models were pretrained on,
# SSL4EO-S12 Sentinel-2 L1C without B10 (optical) and Sentinel-1 VV, VH (radar).
DEFAULT_INPUTS = {
    "s2": SensorSpec(
        "sentinel2_l1c",
        ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
    ),
    "s1": SensorSpec.full("sentinel1_grd"),
}

# Parameters used only by the pretraining loss, absent from the released files.
PRETRAINING_ONLY = (
    "optical_proj",
    "radar_proj",
    "logit_scale",
    "decoder_embed",
    "mask_token",
    "decoder_block",
    "decoder_norm",
    "decoder_pred",
)
# Parts of a released file, by eofm module.
_ENCODERS = {"optical": "s2_encoder", "radar": "s1_encoder"}
_GAP_FFNS = {"optical_gap": "s2_GAP_FFN", "radar_gap": "s1_GAP_FFN"}
_JOINT = "joint_encoder"
# Attribute names of the `PretrainedCROMA` module -> part names of the released files.
_MODULE_ALIASES = {"GAP_FFN_s1": "s1_GAP_FFN", "GAP_FFN_s2": "s2_GAP_FFN", "cross_encoder": _JOINT}

# eofm module (relative to a block, joint layer or GAP-FFN) -> released module.
_BLOCK_MODULES = {
    "norm1": "0.input_norm",
    "attn.qkv": "0.to_qkv",
    "attn.proj": "0.to_out",
    "norm2": "1.input_norm",
    "mlp.fc1": "1.net.0",
    "mlp.fc2": "1.net.3",
}
_JOINT_MODULES = {
    "self_norm": "0.input_norm",
    "self_attn.qkv": "0.to_qkv",
    "self_attn.proj": "0.to_out",
    "cross_norm": "1.input_norm",
    "cross_attn.q": "1.to_q",
    "cross_attn.k": "1.to_k",
    "cross_attn.v": "1.to_v",
    "cross_attn.proj": "1.to_out",
    "mlp_norm": "2.input_norm",
    "mlp.fc1": "2.net.0",
    "mlp.fc2": "2.net.3",
}
_GAP_MODULES = {"norm": "0", "mlp.fc1": "1", "mlp.fc2": "3"}

_PARTS = (*_ENCODERS.values(), *_GAP_FFNS.values(), _JOINT)
_CROMA_KEY = re.compile(rf"({'|'.join(_PARTS)})\.")
_ENCODER_LAYER_INDEX = r"{}\.transformer\.layers\.(\d+)\."
_JOINT_LAYER_INDEX = re.compile(rf"{_JOINT}\.layers\.(\d+)\.")


def _released_modules() -> dict[str, str]:
    """eofm module path, "{}" for the layer index -> released module, "{}" likewise."""
    modules = {"joint_norm": f"{_JOINT}.norm_out"}
    for ours, theirs in _ENCODERS.items():
        modules[f"{ours}.embed"] = f"{theirs}.linear_input"
        modules[f"{ours}.norm"] = f"{theirs}.transformer.norm_out"
        for block, layer in _BLOCK_MODULES.items():
            modules[f"{ours}.blocks.{{}}.{block}"] = f"{theirs}.transformer.layers.{{}}.{layer}"
    for ours, theirs in _GAP_FFNS.items():
        for module, layer in _GAP_MODULES.items():
            modules[f"{ours}.{module}"] = f"{theirs}.{layer}"
    for module, layer in _JOINT_MODULES.items():
        modules[f"joint.{{}}.{module}"] = f"{_JOINT}.layers.{{}}.{layer}"
    return modules


_RELEASED_MODULES = _released_modules()


def to_eofm(
    state: Mapping[str, Any], model: Croma, *, source: str | os.PathLike | None = None
) -> None:
    """Writes released CROMA weights into `model` in place.

    Everything is checked before anything is written, so on error the model is unchanged. The
    pretraining-only parameters (`PRETRAINING_ONLY`) keep their values.

    Args:
      state: {released key: array} with dotted keys ("s2_encoder.linear_input.weight"), e.g.
        from `torch_state.load`, or the nested dict of a released file as `torch.load` returns
        it ({"s2_encoder": {"linear_input.weight": tensor, ...}, ...}).
      model: a built (not abstract) `Croma`; its config must match the file.
      source: the file the state came from, named in messages.
    Raises:
      ConversionError: listing every missing and unexpected key and every shape mismatch.
    """
    state = _released_state(state)
    params = common.model_params(model)
    common.require_built(params)
    tensors = _tensors(params)
    common.check_and_write(
        source, _describe_model(model.cfg), _describe_file(state), model, params, tensors, state
    )
    kept = sorted({str(path[0]) for path in params.keys() - {t.path for t in tensors}})
    if kept:
        logging.info(
            "%s: the pretraining-only parameters %s are not in released CROMA files and keep"
            " their initial values",
            common.source_name(source),
            ", ".join(kept),
        )


def from_eofm(model: Croma) -> dict[str, np.ndarray]:
    """The released CROMA state of `model`, flattened: the inverse of `to_eofm`.

    Returns:
      {released key: float32 array in the torch layout}; the pretraining-only parameters are
      left out, as in the released files.
    """
    params = common.model_params(model)
    return common.read(params, _tensors(params))


def load_croma(
    path: str | os.PathLike,
    cfg: CromaConfig,
    *,
    inputs: Mapping[str, SensorSpec] | None = None,
    rngs: nnx.Rngs | None = None,
) -> Croma:
    """Builds a `Croma` for `cfg` and loads a released checkpoint file into it.

    Args:
      path: `.safetensors` (flattened keys, e.g. written by `torch_state.save_safetensors` from
        `from_eofm`) or the released `.pt`.
      cfg: the model configuration; width and depth must match the file (a mismatch shows as
        shape errors or missing / unexpected layers). Head counts leave no trace in the shapes:
        they are taken from `cfg` (16 for both CROMA-B and CROMA-L).
      inputs: the model's (optical, radar) input sensors; default `DEFAULT_INPUTS`. `features`
        reads the optical bands, by name, from any data that has them.
      rngs: initialises the pretraining-only parameters; default seed 0.
    """
    inputs = DEFAULT_INPUTS if inputs is None else inputs
    model = Croma(cfg, inputs, rngs=rngs if rngs is not None else nnx.Rngs(0))
    to_eofm(torch_state.load(path), model, source=path)
    return model


# ---------------------------------------------------------------------------------------------
# Released keys


def _released_tensor(path: ParamPath) -> Tensor | None:
    """The released tensor of the eofm Param at `path`; None for a pretraining-only Param."""
    if path[0] in PRETRAINING_ONLY:
        return None
    module, leaf = path[:-1], path[-1]
    indices = [part for part in module if isinstance(part, int)]
    template = ".".join("{}" if isinstance(part, int) else part for part in module)
    released = _RELEASED_MODULES.get(template)
    if released is None or leaf not in common.TORCH_LEAF_NAMES:
        raise ConversionError(f"model parameter {common.dotted(path)} has no CROMA checkpoint key")
    key = f"{released.format(*indices)}.{common.TORCH_LEAF_NAMES[leaf]}"
    return Tensor(key, path, None, common.layout_of(path))


def _tensors(params: Mapping[ParamPath, nnx.Param]) -> list[Tensor]:
    return [t for path in params if (t := _released_tensor(path)) is not None]


def _released_state(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Dotted keys, numpy values and the released part names (for a `PretrainedCROMA` state)."""
    flat = {}
    for key, value in torch_state.flatten(state).items():
        part, dot, rest = key.partition(".")
        flat[_MODULE_ALIASES.get(part, part) + dot + rest] = torch_state.to_numpy(value)
    return flat


# ---------------------------------------------------------------------------------------------
# Error messages


def _describe_model(cfg: CromaConfig) -> str:
    return (
        f"CROMA (width {cfg.embed_dim}, depth optical {cfg.depth} / radar {cfg.half_depth} /"
        f" joint {cfg.half_depth}, heads {cfg.num_heads}, patch {cfg.patch_size})"
    )


def _describe_file(state: Mapping[str, np.ndarray]) -> str:
    """What the keys and shapes of a state dict say about the model that wrote it."""
    if not any(_CROMA_KEY.match(key) for key in state):
        return (
            f"{common.foreign_file(state, 'CROMA')}; released CROMA files hold the parts"
            f" {', '.join(_PARTS)}"
        )

    def depth(part: str) -> int:
        return common.count_indices(state, re.compile(_ENCODER_LAYER_INDEX.format(part)))

    depths = (
        depth(_ENCODERS["optical"]),
        depth(_ENCODERS["radar"]),
        common.count_indices(state, _JOINT_LAYER_INDEX),
    )
    facts = ["depth optical {} / radar {} / joint {}".format(*depths)]
    embed = state.get(f"{_ENCODERS['optical']}.linear_input.weight")
    if embed is not None and len(embed.shape) == 2:
        width, pixels = embed.shape
        facts = [f"width {width}", *facts, f"optical patch vectors of {pixels} values"]
    return ", ".join(facts)
