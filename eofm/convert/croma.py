"""Official CROMA checkpoints <-> `eofm.models.croma.Croma`.

Two kinds of file load:
  released  `CROMA_base.pt`, `CROMA_large.pt`: a dict of five state dicts, flattened here to dotted
            keys "<part>.<key>": s2_encoder (optical), s1_encoder (radar), s2_GAP_FFN, s1_GAP_FFN
            and joint_encoder, with the names of the released inference code (`to_qkv`, `to_out`,
            `net.3`). A state dict of that code's `PretrainedCROMA` module, whose attributes are
            named `GAP_FFN_s1`, `GAP_FFN_s2` and `cross_encoder`, is read as well. These files
            hold no pretraining-only parameters (`PRETRAINING_ONLY`: contrastive projections,
            logit scale, MAE decoder), which keep their values.
  pretraining  a checkpoint of the pretraining script's `CROMA` module, which holds those too, so
            pretraining resumes from it: optical_encoder, radar_encoder, GAP_FFN_optical,
            GAP_FFN_radar, cross_encoder, decoder and global_contrast_loss, with the script's names
            (`create_qkv`, `out`, `create_q`, `net.2`). A file may lack the decoder or the
            contrastive head as a whole; they then keep their values.

Released key (torch shape) -> eofm parameter; D width, Dd decoder width, i layer:
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
Pretraining-script key -> eofm parameter, where it differs:
  optical_encoder.* | radar_encoder.*                       optical.* | radar.*
  GAP_FFN_optical.* | GAP_FFN_radar.*                       optical_gap.* | radar_gap.*
  cross_encoder.*                                           joint[i].*, joint_norm
  ....0.create_qkv | ....0.out | ....net.2                  ....qkv | ....proj | ....mlp.fc2
  cross_encoder.layers.{i}.1.create_q | create_k | create_v joint[i].cross_attn.q | k | v
  global_contrast_loss.optical_proj | radar_proj (D, D)     optical_proj | radar_proj
  global_contrast_loss.logit_scale ()                       logit_scale
  decoder.encoder_to_decoder (Dd, D)                        decoder_embed
  decoder.mask_token (1, 1, Dd)                             mask_token
  decoder.decoder.layers.0.*  (as an encoder layer)         decoder_block.*
  decoder.decoder.norm_out                                  decoder_norm
  decoder.linear_output (8*8*14, Dd)                        decoder_pred
Linear weights are transposed, LayerNorm weights become scales and the fused qkv output
[q | k | v] (heads contiguous in each part) becomes the [D, 3, D] kernel of `layers.Attention`
(see `common`). Both codes cut patches with rearrange "b c (h i) (w j) -> b (h w) (c i j)", the
channel-major order of `croma.patch_vectors`, so `linear_input` needs no permutation.
`decoder.decoder_pos_embed` (1, L, Dd) is the fixed MAE 2-D sin-cos table, which eofm recomputes
for each grid; it is checked against that table.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
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

# Parameters used only by the pretraining loss, by part; absent from the released files.
_PRETRAINING_PARTS = {
    "decoder": ("decoder_embed", "mask_token", "decoder_block", "decoder_norm", "decoder_pred"),
    "contrastive head": ("optical_proj", "radar_proj", "logit_scale"),
}
PRETRAINING_ONLY = tuple(root for roots in _PRETRAINING_PARTS.values() for root in roots)
DEFAULT_IMAGE_SIZE = 120  # the pretraining size: the decoder's position table is 15 x 15


@dataclasses.dataclass(frozen=True)
class _Layout:
    """The official module names of one kind of CROMA file.

    Attributes:
      name: what the file is, in messages.
      parts: eofm module -> official module, for optical, radar, optical_gap, radar_gap and joint.
      qkv, out: the fused qkv and the output Linear of self-attention.
      cross_prefix: of the cross-attention q, k, v Linears ("to_": to_q, to_k, to_v).
      fc2: the second Linear of a feed-forward network.
      aliases: other names of `parts` values read from a file ({official: name in `parts`}).
      pretraining: eofm module (or Param) -> official module (or key) of the `PRETRAINING_ONLY`
        parameters but the decoder block; empty: the file holds none of them.
      decoder_layer: official module of the decoder's one layer (`decoder_block`), if any.
      table: key of the decoder's fixed position table, if the file holds it.
    """

    name: str
    parts: Mapping[str, str]
    qkv: str
    out: str
    cross_prefix: str
    fc2: str
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    pretraining: Mapping[str, str] = dataclasses.field(default_factory=dict)
    decoder_layer: str | None = None
    table: str | None = None

    @property
    def roots(self) -> tuple[str, ...]:
        """The official top-level modules of such a file."""
        names = [*self.parts.values(), *self.aliases, *self.pretraining.values()]
        return tuple(dict.fromkeys(name.split(".")[0] for name in names))


RELEASED = _Layout(
    name="released CROMA file",
    parts={
        "optical": "s2_encoder",
        "radar": "s1_encoder",
        "optical_gap": "s2_GAP_FFN",
        "radar_gap": "s1_GAP_FFN",
        "joint": "joint_encoder",
    },
    qkv="to_qkv",
    out="to_out",
    cross_prefix="to_",
    fc2="net.3",
    # Attribute names of the released `PretrainedCROMA` module.
    aliases={
        "GAP_FFN_s1": "s1_GAP_FFN",
        "GAP_FFN_s2": "s2_GAP_FFN",
        "cross_encoder": "joint_encoder",
    },
)
PRETRAINING = _Layout(
    name="checkpoint of the CROMA pretraining script",
    parts={
        "optical": "optical_encoder",
        "radar": "radar_encoder",
        "optical_gap": "GAP_FFN_optical",
        "radar_gap": "GAP_FFN_radar",
        "joint": "cross_encoder",
    },
    qkv="create_qkv",
    out="out",
    cross_prefix="create_",
    fc2="net.2",
    pretraining={
        "optical_proj": "global_contrast_loss.optical_proj",
        "radar_proj": "global_contrast_loss.radar_proj",
        "logit_scale": "global_contrast_loss.logit_scale",
        "decoder_embed": "decoder.encoder_to_decoder",
        "mask_token": "decoder.mask_token",
        "decoder_norm": "decoder.decoder.norm_out",
        "decoder_pred": "decoder.linear_output",
    },
    decoder_layer="decoder.decoder.layers.0",
    table="decoder.decoder_pos_embed",
)
LAYOUTS = {"released": RELEASED, "pretraining": PRETRAINING}
_EXPECTED = (
    f"a {RELEASED.name} (parts {', '.join(RELEASED.parts.values())}) or a {PRETRAINING.name}"
    f" ({', '.join(PRETRAINING.roots)})"
)
_GAP_MODULES = {"norm": "0", "mlp.fc1": "1", "mlp.fc2": "3"}
# Layer index of an encoder ("<part>.transformer.layers.{i}.") or joint encoder ("<part>.layers").
_LAYER_INDEX = r"{}\.(?:transformer\.)?layers\.(\d+)\."


def _block_modules(layout: _Layout) -> dict[str, str]:
    """eofm module of a `layers.Block` -> official module of an encoder layer."""
    return {
        "norm1": "0.input_norm",
        "attn.qkv": f"0.{layout.qkv}",
        "attn.proj": f"0.{layout.out}",
        "norm2": "1.input_norm",
        "mlp.fc1": "1.net.0",
        "mlp.fc2": f"1.{layout.fc2}",
    }


def _joint_modules(layout: _Layout) -> dict[str, str]:
    """eofm module of a joint layer -> official module of a cross-encoder layer."""
    cross = {f"cross_attn.{x}": f"1.{layout.cross_prefix}{x}" for x in "qkv"}
    return {
        "self_norm": "0.input_norm",
        "self_attn.qkv": f"0.{layout.qkv}",
        "self_attn.proj": f"0.{layout.out}",
        "cross_norm": "1.input_norm",
        **cross,
        "cross_attn.proj": "1.to_out",
        "mlp_norm": "2.input_norm",
        "mlp.fc1": "2.net.0",
        "mlp.fc2": f"2.{layout.fc2}",
    }


def _official_modules(layout: _Layout) -> dict[str, str]:
    """eofm module, "{}" for a layer index -> official module of `layout`, "{}" likewise."""
    joint = layout.parts["joint"]
    modules = {"joint_norm": f"{joint}.norm_out"}
    for ours in ("optical", "radar"):
        theirs = layout.parts[ours]
        modules[f"{ours}.embed"] = f"{theirs}.linear_input"
        modules[f"{ours}.norm"] = f"{theirs}.transformer.norm_out"
        for block, layer in _block_modules(layout).items():
            modules[f"{ours}.blocks.{{}}.{block}"] = f"{theirs}.transformer.layers.{{}}.{layer}"
    for ours in ("optical_gap", "radar_gap"):
        for module, layer in _GAP_MODULES.items():
            modules[f"{ours}.{module}"] = f"{layout.parts[ours]}.{layer}"
    for module, layer in _joint_modules(layout).items():
        modules[f"joint.{{}}.{module}"] = f"{joint}.layers.{{}}.{layer}"
    modules |= layout.pretraining
    if layout.decoder_layer:
        for block, layer in _block_modules(layout).items():
            modules[f"decoder_block.{block}"] = f"{layout.decoder_layer}.{layer}"
    return modules


def to_eofm(
    state: Mapping[str, Any], model: Croma, *, source: str | os.PathLike | None = None
) -> common.ImportReport:
    """Writes official CROMA weights, released or from the pretraining script, into `model`.

    Everything is checked before anything is written, so on error the model is unchanged.

    Args:
      state: {official key: array} with dotted keys ("s2_encoder.linear_input.weight"), e.g.
        from `torch_state.load`, or the nested dict of a released file as `torch.load` returns
        it ({"s2_encoder": {"linear_input.weight": tensor, ...}, ...}).
      model: a built (not abstract) `Croma`; its config must match the file.
      source: the file the state came from, named in messages.
    Returns:
      The keys not used and the modules that kept their values (the `PRETRAINING_ONLY`
      parameters of a released file), also logged as warnings.
    Raises:
      ConversionError: listing every missing and unexpected key and every shape mismatch (and a
        decoder position table that is not the MAE sin-cos table).
    """
    state = {key: torch_state.to_numpy(value) for key, value in torch_state.flatten(state).items()}
    layout = _layout_of(state)
    state = _unaliased(state, layout)
    params = common.model_params(model)
    common.require_built(params)
    tensors = _tensors(layout, params)
    tables = {layout.table: model.cfg.decoder_dim} if layout.table else {}
    mismatched, invalid = common.check_sincos_tables(
        state, tables, cls_rows=0, grid=None, source=source
    )
    return common.load_checked(
        model,
        params,
        tensors,
        state,
        source=source,
        description=common.Description(
            _describe_model(model.cfg), _describe_file(state, layout), _EXPECTED
        ),
        optional_parts=_optional_parts(layout, tensors),
        checked=tables.keys(),
        mismatched=mismatched,
        invalid=list(invalid.values()),
        invalid_title="invalid position tables",
    )


def from_eofm(
    model: Croma, *, layout: str = "released", image_size: int = DEFAULT_IMAGE_SIZE
) -> dict[str, np.ndarray]:
    """The official state of `model`, flattened: the inverse of `to_eofm`.

    Args:
      model: a built `Croma`.
      layout: "released" (the pretraining-only parameters are left out, as in the released
        files) or "pretraining" (the pretraining script's names, all parameters).
      image_size: image side of the decoder's stored position table ("pretraining").
    Returns:
      {official key: float32 array in the torch layout}.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown CROMA layout {layout!r}; expected one of {list(LAYOUTS)}")
    p = model.cfg.patch_size
    if image_size % p:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {p}")
    chosen = LAYOUTS[layout]
    params = common.model_params(model)
    state = common.read(params, _tensors(chosen, params))
    if chosen.table:
        grid = (image_size // p, image_size // p)
        state[chosen.table] = common.sincos_table(grid, model.cfg.decoder_dim, cls_rows=0)
    return state


def load_croma(
    path: str | os.PathLike,
    cfg: CromaConfig,
    *,
    inputs: Mapping[str, SensorSpec] | None = None,
    rngs: nnx.Rngs | None = None,
) -> Croma:
    """Builds a `Croma` for `cfg` and loads an official checkpoint file into it.

    Args:
      path: `.safetensors` (flattened keys, e.g. written by `torch_state.save_safetensors` from
        `from_eofm`), the released `.pt` or a checkpoint of the pretraining script.
      cfg: the model configuration; width and depth must match the file (a mismatch shows as
        shape errors or missing / unexpected layers). Head counts leave no trace in the shapes:
        they are taken from `cfg` (16 for both CROMA-B and CROMA-L).
      inputs: the model's (optical, radar) input sensors; default `DEFAULT_INPUTS`. `features`
        reads the optical bands, by name, from any data that has them.
      rngs: initialises what the file lacks (the pretraining-only parameters of a released
        file); default seed 0. `to_eofm` also returns what the file left out (logged here).
    """
    inputs = DEFAULT_INPUTS if inputs is None else inputs
    model = Croma(cfg, inputs, rngs=rngs if rngs is not None else nnx.Rngs(0))
    to_eofm(torch_state.load(path), model, source=path)
    return model


# ---------------------------------------------------------------------------------------------
# Official keys


def _official_tensor(modules: Mapping[str, str], path: ParamPath) -> Tensor:
    """The official tensor of the eofm Param at `path`, given `_official_modules`."""
    if len(path) == 1 and path[0] in modules:  # a Param outside a module (mask_token, logit_scale)
        return Tensor(modules[path[0]], path, None, "copy")
    module, leaf = path[:-1], path[-1]
    indices = [part for part in module if isinstance(part, int)]
    template = ".".join("{}" if isinstance(part, int) else part for part in module)
    official = modules.get(template)
    if official is None or leaf not in common.TORCH_LEAF_NAMES:
        raise ConversionError(f"model parameter {common.dotted(path)} has no CROMA checkpoint key")
    key = f"{official.format(*indices)}.{common.TORCH_LEAF_NAMES[leaf]}"
    return Tensor(key, path, None, common.layout_of(path))


def _tensors(layout: _Layout, params: Mapping[ParamPath, nnx.Param]) -> list[Tensor]:
    """The official tensors of a `layout` file (without `PRETRAINING_ONLY` ones if it lacks them)."""
    modules = _official_modules(layout)
    held = [path for path in params if layout.pretraining or path[0] not in PRETRAINING_ONLY]
    return [_official_tensor(modules, path) for path in held]


def _optional_parts(layout: _Layout, tensors: Sequence[Tensor]) -> dict[str, list[str]]:
    """{part: keys} of the pretraining-only parts a `layout` file may lack as a whole."""
    if not layout.pretraining:
        return {}
    parts = {
        part: [t.key for t in tensors if t.path[0] in roots]
        for part, roots in _PRETRAINING_PARTS.items()
    }
    parts["decoder"].append(layout.table)
    return parts


def _layout_of(state: Mapping[str, np.ndarray]) -> _Layout:
    """The layout whose top-level modules hold the most keys of `state` (released on a tie)."""
    return max(
        LAYOUTS.values(),
        key=lambda layout: sum(key.partition(".")[0] in layout.roots for key in state),
    )


def _unaliased(state: Mapping[str, np.ndarray], layout: _Layout) -> dict[str, np.ndarray]:
    """`state` with the top-level modules named as `layout.parts` (for a `PretrainedCROMA`)."""
    out = {}
    for key, value in state.items():
        part, dot, rest = key.partition(".")
        out[layout.aliases.get(part, part) + dot + rest] = value
    return out


# ---------------------------------------------------------------------------------------------
# Error messages


def _describe_model(cfg: CromaConfig) -> str:
    return (
        f"CROMA (width {cfg.embed_dim}, depth optical {cfg.depth} / radar {cfg.half_depth} /"
        f" joint {cfg.half_depth}, heads {cfg.num_heads}, patch {cfg.patch_size})"
    )


def _describe_file(state: Mapping[str, np.ndarray], layout: _Layout) -> str:
    """What the keys and shapes of a state dict say about the model that wrote it."""
    if not any(key.partition(".")[0] in layout.roots for key in state):
        return common.foreign_file(state, "CROMA")

    def depth(part: str) -> int:
        pattern = re.compile(_LAYER_INDEX.format(layout.parts[part]))
        return common.count_indices(state, pattern)

    embed = state.get(f"{layout.parts['optical']}.linear_input.weight")
    width, pixels = embed.shape if embed is not None and embed.ndim == 2 else (None, None)
    facts = [
        f"a {layout.name}",
        width and f"width {width}",
        "depth optical {} / radar {} / joint {}".format(*map(depth, ("optical", "radar", "joint"))),
        pixels and f"optical patch vectors of {pixels} values",
    ]
    return ", ".join(fact for fact in facts if fact)
