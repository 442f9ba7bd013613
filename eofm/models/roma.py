"""RoMA (Wang et al. 2025): autoregressive next-block pretraining of a unidirectional Mamba encoder,
with rotation-aware adaptive cropping.

Shapes: B batch, S = g p image side in pixels, p patch side, g = b n patches per side (n blocks of
b x b patches per side: 3 x 4 = 12), L = g^2 patches, Q = (n^2 - 1) b^2 predicted patches (128),
P = p^2 C values per patch, D / Dd encoder / decoder width, T memory taps (4).

Token order: the patch grid is regrouped into n x n blocks of b x b patches, blocks in raster
order and patches within a block in raster order (`block_order`). The encoder (a causal Mamba
stack, `eofm.models.mamba`) reads blocks 1 .. n^2 - 1 (the last block is dropped); the decoder
predicts blocks 2 .. n^2 from them, all b^2 patches of a block at once:
  memory   = enc2dec(concat_t LN_t(encoder output after layer m_t)), [B, Q, T Dd], split into T
             memories channel-interleaved (memory k takes channels k, k + T, ...);
  queries  = ar_token + sin-cos position of the target patch, [B, Q, Dd];
  decoder  = T blocks of  q += CrossAttn(LN(q), LN(memory_k)); q += MLP(LN(q))  (no
             self-attention), where a query of target block j attends to memory of blocks < j;
  head     = Linear(LN(q)) -> [B, Q, P], patch values (row, col, channel).
Loss: norm-pix MSE over all Q predicted patches, plus `multiscale_weight` x the same error on
groups of h x h patches (the L / h^2 groups but the first, which holds the unpredicted block 1);
see `multiscale_error`.

Rotation-aware cropping (`eofm.data.rotation_crop`) runs on the host: it rotates a textured
window of the image (which stays the target) and marks its tokens in `<key>_rotated`; the encoder
adds a learned angle embedding to every marked token.

Downstream (`features`): the released fine-tuning backbone scans the full grid in four directions
(rows forwards and backwards, columns forwards and backwards) with per-direction copies of the
pretrained mixer; here the copies are the pretrained mixer itself (`MambaMixer` with `orders`),
so a frozen encoder computes exactly that backbone. Position tables are resized bicubically for
other grids, as the release does (12^2 -> 14^2 at 224 px).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from eofm.data.rotation_crop import RotateTexturedWindow, rotated_key
from eofm.data.spec import SensorSpec
from eofm.models import family, layers
from eofm.models.mae import norm_pix_stats
from eofm.models.mamba import MambaBlock, mamba_block_flops


@dataclasses.dataclass(frozen=True, kw_only=True)
class RomaConfig:
    """RoMA hyper-parameters.

    Attributes:
      patch_size: p, patch side in pixels.
      embed_dim: D, encoder width.
      depth: encoder blocks.
      memory_layers: encoder layers (1-based) whose outputs make the memories, one per decoder
        block.
      in_chans: C, image channels.
      block_patches: b, side of a block in patches.
      grid_blocks: n, blocks per image side.
      state_size, conv_width: the Mamba mixer's N and K.
      scan_chunk: 0 = one associative scan over all tokens; c > 0 scans chunks of c tokens,
        rematerialised in the backward pass (`mamba.selective_scan`): the same result (one chunk
        at the 128 pretraining tokens) in memory linear in the tokens, about 4x less than one scan
        at 576 tokens (scripts/bench_scaling.py).
      ln_eps: encoder LayerNorm epsilon.
      decoder_dim, decoder_heads, decoder_mlp_ratio: Dd, heads and MLP ratio of the decoder.
      decoder_ln_eps: decoder LayerNorm epsilon.
      norm_pix_loss: targets are per-patch normalised pixels.
      multiscale_weight: weight of the multi-scale term.
      multiscale_group: h, side of a multi-scale group in patches.
      multiscale_bug_compat: reproduce the released multi-scale term, whose predictions are
        misaligned with its targets (`multiscale_error`).
      rotation_degrees: rotations of the textured window are drawn in U(-r, r) degrees (0: no
        rotation, no angle embedding used).
      rotation_bug_compat: put the angle embedding on the diagonal tokens (0, 0) .. (w - 1,
        w - 1) wherever the rotated window is, as the released code does
        (`RotateTexturedWindow.released_token_mask`).
      feature_directions: 4 = the released four-direction downstream backbone, 1 = the causal
        pretraining encoder as it is.
      remat: encoder activation rematerialisation (`layers.REMAT_POLICIES`).
      dtype, param_dtype: compute and parameter dtypes (A_log, D and the scan stay float32).
    """

    patch_size: int
    embed_dim: int
    depth: int
    memory_layers: tuple[int, ...]
    in_chans: int = 3
    block_patches: int = 4
    grid_blocks: int = 3
    state_size: int = 16
    conv_width: int = 4
    scan_chunk: int = 256
    ln_eps: float = 1e-5
    decoder_dim: int = 512
    decoder_heads: int = 8
    decoder_mlp_ratio: float = 4.0
    decoder_ln_eps: float = 1e-6
    norm_pix_loss: bool = True
    multiscale_weight: float = 0.1
    multiscale_group: int = 6
    multiscale_bug_compat: bool = False
    rotation_degrees: float = 45.0
    rotation_bug_compat: bool = False
    feature_directions: int = 4
    remat: str = "none"
    dtype: DTypeLike = jnp.float32
    param_dtype: DTypeLike = jnp.float32

    def __post_init__(self):
        layers.check_remat(self.remat)
        taps = self.memory_layers
        if (
            not taps
            or list(taps) != sorted(set(taps))
            or not 1 <= taps[0] <= taps[-1] <= self.depth
        ):
            raise ValueError(
                f"RomaConfig: memory_layers {taps} must be increasing layers in 1..{self.depth}"
            )
        if self.grid % self.multiscale_group:
            raise ValueError(
                f"RomaConfig: multiscale_group {self.multiscale_group} does not divide the"
                f" {self.grid}-patch grid"
            )
        if self.feature_directions not in (1, 4):
            raise ValueError(f"RomaConfig: feature_directions {self.feature_directions} not 1 or 4")

    @property
    def grid(self) -> int:
        """g, patches per image side."""
        return self.block_patches * self.grid_blocks

    @property
    def image_size(self) -> int:
        """S, the pretraining image side in pixels."""
        return self.grid * self.patch_size

    @property
    def num_predicted(self) -> int:
        """Q, patches the encoder reads and the decoder predicts."""
        return (self.grid_blocks**2 - 1) * self.block_patches**2


Config = RomaConfig
_DECODER = dict(decoder_dim=512, decoder_heads=8)
VARIANTS = {
    # 96 px, patch 8: the 12 x 12 grid of the paper at CPU cost.
    "tiny": dict(
        patch_size=8,
        embed_dim=64,
        depth=4,
        memory_layers=(1, 2, 3, 4),
        decoder_dim=64,
        decoder_heads=4,
    ),
    "T": dict(patch_size=16, embed_dim=192, depth=12, memory_layers=(6, 8, 10, 12), **_DECODER),
    "S": dict(patch_size=16, embed_dim=384, depth=12, memory_layers=(6, 8, 10, 12), **_DECODER),
    "B": dict(patch_size=16, embed_dim=768, depth=12, memory_layers=(6, 8, 10, 12), **_DECODER),
    "L": dict(patch_size=16, embed_dim=1024, depth=24, memory_layers=(12, 16, 20, 24), **_DECODER),
}
DATA_FIELDS = ("in_chans",)


def from_data(inputs: Mapping[str, SensorSpec], image_size: int) -> dict[str, int]:
    """One sensor (RoMA reads RGB optical images); `image_size` must be the variant's g p (checked
    by the model, which knows p)."""
    del image_size
    if len(inputs) != 1:
        raise ValueError(f"RoMA reads one sensor's images, got inputs {sorted(inputs)}")
    (spec,) = inputs.values()
    return {"in_chans": len(spec.bands)}


def host_transforms(
    cfg: RomaConfig, inputs: Mapping[str, SensorSpec]
) -> tuple[list, tuple[str, ...]]:
    """Rotation-aware adaptive cropping (`RotateTexturedWindow`) of the input images, and the
    rotation mask key it adds."""
    if not cfg.rotation_degrees:
        return [], ()
    (key,) = inputs
    window = RotateTexturedWindow(
        key,
        patch_size=cfg.patch_size,
        max_degrees=cfg.rotation_degrees,
        released_token_mask=cfg.rotation_bug_compat,
    )
    return [window], (rotated_key(key),)


@functools.lru_cache(maxsize=16)
def block_order(grid_blocks: int, block_patches: int) -> np.ndarray:
    """Raster index of the patch at each position of the block-ordered sequence.  -> int [L]."""
    n, b = grid_blocks, block_patches
    index = np.arange((n * b) ** 2).reshape(n, b, n, b)  # [block row, row, block col, col]
    order = index.transpose(0, 2, 1, 3).reshape(-1)
    order.flags.writeable = False
    return order


def block_causal_mask(num_blocks: int, block_len: int) -> np.ndarray:
    """Decoder mask bool [Q, Q]: query i (of target block i // block_len + 1) sees memory m when
    m's block m // block_len <= i // block_len, i.e. memory of the blocks before its target."""
    blocks = np.arange(num_blocks * block_len) // block_len
    return blocks[None, :] <= blocks[:, None]


def scan_orders(grid_hw: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """The four token orders of the downstream backbone on a raster grid: rows forwards, rows
    backwards, columns forwards, columns backwards.  -> 4 x int [h w]."""
    rows = np.arange(grid_hw[0] * grid_hw[1])
    cols = rows.reshape(grid_hw).T.reshape(-1)
    return rows, rows[::-1], cols, cols[::-1]


def resize_position_table(table: np.ndarray, old: int, new_hw: tuple[int, int]) -> jax.Array:
    """A position table [old^2, D] resized bicubically to [h w, D] (identity at the same size)."""
    if new_hw == (old, old):
        return jnp.asarray(table)
    grid = jnp.asarray(table).reshape(old, old, -1)
    return jax.image.resize(grid, (*new_hw, grid.shape[-1]), "bicubic").reshape(-1, grid.shape[-1])


def multiscale_error(
    pred: jax.Array, target: jax.Array, cfg: RomaConfig, *, bug_compat: bool = False
) -> jax.Array:
    """Mean squared error on groups of h x h patches: the predicted image cut into (g/h)^2 groups,
    the first (top-left, holding the unpredicted block 1) dropped.

    Args:
      pred, target: f32[B, Q, P], block-ordered predictions and targets of blocks 2 .. n^2.
      bug_compat: the released term instead reads the block-ordered sequence (block 1 taken as
        zeros) as if it were raster-ordered, and flattens the predicted groups (channel, y, x)
        against targets flattened (y, x, channel), so that most elements meet the wrong target.
    Returns:
      f32[], the mean over the kept groups' elements.
    """
    b, q, _ = pred.shape
    g, h, p = cfg.grid, cfg.multiscale_group, cfg.patch_size
    first = jnp.zeros((b, g * g - q, pred.shape[-1]), pred.dtype)
    order = block_order(cfg.grid_blocks, cfg.block_patches)

    def raster(seq):  # block-ordered [B, Q, P] (block 1 zero) -> raster patches [B, L, P]
        full = jnp.concatenate([first, seq], axis=1)
        return full if bug_compat else full[:, np.argsort(order)]

    def groups(patches, channel_first):  # [B, L, P] -> [B, (g/h)^2, h p h p C] flattened
        image = layers.unpatchify(patches, p, (g, g))
        c = image.shape[-1]
        cut = image.reshape(b, g // h, h * p, g // h, h * p, c).transpose(0, 1, 3, 2, 4, 5)
        if channel_first:
            cut = jnp.moveaxis(cut, -1, 3)
        return cut.reshape(b, (g // h) ** 2, -1)[:, 1:]

    pred_groups = groups(raster(pred), channel_first=bug_compat)
    target_groups = groups(jnp.concatenate([first, target], axis=1)[:, np.argsort(order)], False)
    return jnp.mean(jnp.square(pred_groups - target_groups))


class RomaEncoder(nnx.Module):
    """Patch embedding, fixed sin-cos positions, the angle embedding and a stack of Mamba blocks
    (no CLS token, no final norm)."""

    def __init__(self, cfg: RomaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = {"dtype": cfg.dtype, "param_dtype": cfg.param_dtype, "rngs": rngs}
        self.patch_embed = layers.PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim, **kw)
        angle_init = layers.logical(nnx.initializers.truncated_normal(0.02), (None, None, "embed"))
        self.angle_embed = nnx.Param(
            angle_init(rngs.params(), (1, 1, cfg.embed_dim), cfg.param_dtype)
        )
        self.blocks = nnx.List(
            [
                MambaBlock(cfg.embed_dim, ln_eps=cfg.ln_eps, scan_chunk=cfg.scan_chunk, **kw)
                for _ in range(cfg.depth)
            ]
        )

    def embed(self, images: jax.Array, rotated: jax.Array | None = None) -> jax.Array:
        """Raster-ordered patch tokens with positions (resized for other grids) and, on the tokens
        marked in `rotated` f32[B, L], the angle embedding.  images f32[B, H, W, C] -> [B, L, D]."""
        p, g = self.cfg.patch_size, self.cfg.grid
        grid_hw = (images.shape[1] // p, images.shape[2] // p)
        x = self.patch_embed(images)
        native = layers.posemb_sincos_2d(g, g, self.cfg.embed_dim)
        x = x + resize_position_table(native, g, grid_hw).astype(x.dtype)
        if rotated is not None:
            x = x + rotated[..., None].astype(x.dtype) * self.angle_embed[...].astype(x.dtype)
        return x

    def run(
        self, x: jax.Array, taps: Sequence[int], orders: Sequence[np.ndarray] | None = None
    ) -> list[jax.Array]:
        """Outputs of the layers `taps` (1-based, increasing) for tokens x [B, N, D]; `orders`:
        see `MambaMixer.__call__` (None: causal)."""
        outputs, start = [], 0
        for stop in taps:
            if orders is None:
                segment = self.blocks[start:stop]
                x = layers.run_stack(segment, x, [()] * len(segment), remat=self.cfg.remat)
            else:  # the orders are static index arrays, which a rematerialised block would trace
                for block in self.blocks[start:stop]:
                    x = block(x, orders)
            outputs.append(x)
            start = stop
        return outputs


class RomaDecoderBlock(nnx.Module):
    """q += CrossAttn(LN(q), LN(memory), mask); q += MLP(LN(q)).  [B, Q, Dd] -> [B, Q, Dd]."""

    def __init__(self, cfg: RomaConfig, *, rngs: nnx.Rngs):
        dim, eps = cfg.decoder_dim, cfg.decoder_ln_eps
        kw = {"dtype": cfg.dtype, "param_dtype": cfg.param_dtype, "rngs": rngs}
        self.norm_q = layers.layer_norm(dim, eps=eps, **kw)
        self.norm_kv = layers.layer_norm(dim, eps=eps, **kw)
        self.attn = layers.CrossAttention(dim, cfg.decoder_heads, fused_kv=True, **kw)
        self.norm = layers.layer_norm(dim, eps=eps, **kw)
        self.mlp = layers.Mlp(dim, int(dim * cfg.decoder_mlp_ratio), **kw)

    def __call__(self, q: jax.Array, memory: jax.Array, mask: jax.Array) -> jax.Array:
        q = q + self.attn(self.norm_q(q), self.norm_kv(memory), mask=mask)
        return q + self.mlp(self.norm(q))


class RomaDecoder(nnx.Module):
    """Memories from the tapped encoder layers and the cross-attention decoder of the module doc.
    Encoder taps T x [B, Q, D] -> predictions f32[B, Q, P]."""

    def __init__(self, cfg: RomaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dim, taps = cfg.decoder_dim, len(cfg.memory_layers)
        kw = {"dtype": cfg.dtype, "param_dtype": cfg.param_dtype, "rngs": rngs}
        self.tap_norms = nnx.List(
            [layers.layer_norm(cfg.embed_dim, eps=cfg.decoder_ln_eps, **kw) for _ in range(taps)]
        )
        # "embed" may name only one side of the T D -> T Dd projection.
        self.enc2dec = layers.linear(taps * cfg.embed_dim, taps * dim, (None, "embed"), **kw)
        token_init = layers.logical(nnx.initializers.truncated_normal(0.02), (None, None, "embed"))
        self.ar_token = nnx.Param(token_init(rngs.params(), (1, 1, dim), cfg.param_dtype))
        self.blocks = nnx.List([RomaDecoderBlock(cfg, rngs=rngs) for _ in range(taps)])
        self.norm = layers.layer_norm(dim, eps=cfg.decoder_ln_eps, **kw)
        patch_dim = cfg.patch_size**2 * cfg.in_chans
        self.pred = layers.linear(dim, patch_dim, ("embed", "patch"), **kw)

    def __call__(self, taps: Sequence[jax.Array]) -> jax.Array:
        cfg = self.cfg
        memory = self.enc2dec(jnp.concatenate([n(t) for n, t in zip(self.tap_norms, taps)], -1))
        b, q, _ = memory.shape
        order = block_order(cfg.grid_blocks, cfg.block_patches)
        pos = layers.posemb_sincos_2d(cfg.grid, cfg.grid, cfg.decoder_dim)[order[-q:]]
        x = self.ar_token[...].astype(memory.dtype) + jnp.asarray(pos, memory.dtype)
        x = jnp.broadcast_to(x, (b, q, cfg.decoder_dim))
        mask = jnp.asarray(block_causal_mask(cfg.grid_blocks**2 - 1, cfg.block_patches**2))
        for k, block in enumerate(self.blocks):
            x = block(x, memory[..., k :: len(self.blocks)], mask[None, None])
        return self.pred(self.norm(x)).astype(jnp.float32)


class Roma(nnx.Module):
    """The RoMA encoder and its autoregressive decoder (module doc)."""

    feature_definition: str = (
        "`pooled`: the mean of the last block's tokens (the encoder has no CLS token and no final"
        " norm). `levels`: the tokens of the tapped blocks on the patch grid (stride p), raw"
        " residual streams. Features come from the four-direction backbone (rows and columns,"
        " each forwards and backwards) whose per-direction mixers equal the pretrained one,"
        " unless feature_directions is 1."
    )
    ENCODING_PARAMS = ("encoder/",)

    def __init__(self, cfg: RomaConfig, inputs: Mapping[str, SensorSpec], *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.inputs = dict(inputs)
        (self.key,) = self.inputs
        self.encoder = RomaEncoder(cfg, rngs=rngs)
        self.decoder = RomaDecoder(cfg, rngs=rngs)

    def _check_size(self, image_hw: tuple[int, int]) -> None:
        size = self.cfg.image_size
        if tuple(image_hw) != (size, size):
            raise ValueError(
                f"RoMA pretraining needs {size} x {size} px images ({self.cfg.grid} patches of"
                f" {self.cfg.patch_size} px per side), got {tuple(image_hw)}; set"
                f" data.image_size = {size}"
            )

    def targets(self, images: jax.Array) -> jax.Array:
        """Block-ordered patches of blocks 2 .. n^2, per-patch normalised if norm_pix_loss.
        images f32[B, S, S, C] -> f32[B, Q, P]."""
        cfg = self.cfg
        patches = layers.patchify(images.astype(jnp.float32), cfg.patch_size)
        patches = patches[:, block_order(cfg.grid_blocks, cfg.block_patches)][
            :, -cfg.num_predicted :
        ]
        if cfg.norm_pix_loss:
            mean, std = norm_pix_stats(patches)
            patches = (patches - mean) / std
        return patches

    def predict(self, images: jax.Array, rotated: jax.Array | None = None) -> jax.Array:
        """Predictions of blocks 2 .. n^2 from blocks 1 .. n^2 - 1.  -> f32[B, Q, P]."""
        cfg = self.cfg
        self._check_size(images.shape[1:3])
        tokens = self.encoder.embed(images, rotated)
        tokens = tokens[:, block_order(cfg.grid_blocks, cfg.block_patches)][:, : cfg.num_predicted]
        return self.decoder(self.encoder.run(tokens.astype(cfg.dtype), cfg.memory_layers))

    def __call__(
        self, images: jax.Array, rotated: jax.Array | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Loss of a batch: images f32[B, S, S, C] (already rotated, they are the target) and the
        rotation mask f32[B, L] -> (f32[], {"main", "multiscale", "pred", "target"})."""
        pred = self.predict(images, rotated)
        target = self.targets(images)
        main = jnp.mean(jnp.square(pred - target))
        multiscale = multiscale_error(
            pred, target, self.cfg, bug_compat=self.cfg.multiscale_bug_compat
        )
        loss = main + self.cfg.multiscale_weight * multiscale
        return loss, {"main": main, "multiscale": multiscale, "pred": pred, "target": target}

    # ---- the family protocol (eofm.models.family) --------------------------------------------

    def stack(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        return batch[self.key]

    def loss(self, batch: Mapping[str, jax.Array], rng: jax.Array):
        del rng  # nothing is random in the objective; the rotation is drawn on the host
        rotated = batch.get(rotated_key(self.key))
        loss, aux = self(batch[self.key], rotated)
        metrics = {"main_loss": aux["main"], "multiscale_loss": aux["multiscale"]}
        if rotated is not None:
            metrics["rotated_token_fraction"] = jnp.mean(rotated)
        return loss, metrics

    def flops_per_example(self, image_size: int) -> float:
        return roma_flops_per_example(self.cfg, image_size)

    def _filled(self, spec: SensorSpec) -> tuple[np.ndarray, np.ndarray]:
        """(gather index, presence) of the trained bands in images of `spec`."""
        index = np.asarray(
            [-1 if i is None else i for i in family.band_indices(spec, self.inputs[self.key])]
        )
        return np.maximum(index, 0), (index >= 0).astype(np.float32)

    def missing_bands(self, spec: SensorSpec) -> tuple[str, ...]:
        trained = self.inputs[self.key]
        _, present = self._filled(spec)
        if not present.any():
            raise ValueError(
                f"RoMA reads {trained.sensor} {', '.join(trained.bands)}; {spec.sensor} data"
                f" {spec.bands} have none of them"
            )
        return tuple(b for b, p in zip(trained.bands, present) if not p)

    def stand_in_bands(self, spec: SensorSpec) -> dict[str, str]:
        return family.stand_ins(spec, self.inputs[self.key])

    def features(
        self, images: jax.Array, spec: SensorSpec, taps: Sequence[int] | None = None
    ) -> dict[str, Any]:
        """Features of images f32[B, H, W, C] of `spec` (H, W multiples of p; missing bands 0)."""
        cfg = self.cfg
        gather, present = self._filled(spec)
        taps = tuple(taps) if taps else family.default_taps(cfg.depth)
        bad = [t for t in taps if not 0 <= t < cfg.depth]
        if bad:
            raise ValueError(f"taps {bad} outside the {cfg.depth} blocks of the encoder")
        grid_hw = (images.shape[1] // cfg.patch_size, images.shape[2] // cfg.patch_size)
        tokens = self.encoder.embed(images[..., gather] * present).astype(cfg.dtype)
        orders = scan_orders(grid_hw) if cfg.feature_directions == 4 else None
        wanted = sorted(set(taps) | {cfg.depth - 1})
        outputs = dict(zip(wanted, self.encoder.run(tokens, [t + 1 for t in wanted], orders)))
        return {
            "pooled": jnp.mean(outputs[cfg.depth - 1], axis=1),
            "levels": family.token_grids([outputs[t] for t in taps], grid_hw),
        }

    @property
    def num_layers(self) -> int:
        return self.cfg.depth + 1

    def layer_of(self, path: str) -> int:
        """Patch and angle embeddings 0, encoder block i -> i + 1, the decoder depth + 1."""
        embeddings = r"^encoder/(patch_embed|angle_embed)(/|$)"
        return family.block_layer_of(self.cfg.depth, embeddings, "encoder/")(path)

    def reconstruct(self, images: jax.Array, rotated: jax.Array | None = None) -> jax.Array:
        """Predicted images for visualisation: blocks 2 .. n^2 predicted (mapped back with each
        target patch's own mean / std under norm_pix_loss), block 1 copied from the input.
        images f32[B, S, S, C] -> f32[B, S, S, C]."""
        cfg = self.cfg
        pred = self.predict(images, rotated)
        patches = layers.patchify(images.astype(jnp.float32), cfg.patch_size)
        order = block_order(cfg.grid_blocks, cfg.block_patches)
        ordered = patches[:, order]
        if cfg.norm_pix_loss:
            mean, std = norm_pix_stats(ordered[:, -cfg.num_predicted :])
            pred = pred * std + mean
        ordered = jnp.concatenate([ordered[:, : -cfg.num_predicted], pred], axis=1)
        return layers.unpatchify(ordered[:, np.argsort(order)], cfg.patch_size, (cfg.grid,) * 2)


def roma_flops_per_example(cfg: RomaConfig, image_size: int) -> float:
    """Training (forward + backward = 3 x forward) FLOPs per example of `Roma.loss`:

    2 L P D                                   patch embedding of all L patches
    + depth * mamba_block_flops(Q, D)         encoder on Q tokens
    + 2 Q (T D)(T Dd)                         enc2dec
    + T * [2 Q Dd^2 + 2 Q Dd 2Dd + 2 Q Dd^2   q, k v and output projections
           + 4 Q^2 Dd + 2 Q Dd 2 M]           scores, weighted values, MLP (M = ratio Dd)
    + 2 Q Dd P                                prediction head
    """
    del image_size  # fixed by the config (g p)
    d, dd, t = cfg.embed_dim, cfg.decoder_dim, len(cfg.memory_layers)
    num_patches, q = cfg.grid**2, cfg.num_predicted
    patch_dim = cfg.patch_size**2 * cfg.in_chans
    mlp = int(dd * cfg.decoder_mlp_ratio)
    decoder_block = 2 * q * dd * dd * 4 + 4 * q * q * dd + 4 * q * dd * mlp
    forward = (
        2.0 * num_patches * patch_dim * d
        + cfg.depth * mamba_block_flops(q, d, cfg.state_size)
        + 2.0 * q * t * d * t * dd
        + t * decoder_block
        + 2.0 * q * dd * patch_dim
    )
    return 3.0 * forward


Model = Roma
