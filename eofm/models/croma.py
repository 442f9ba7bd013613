"""CROMA (Fuller, Millard, Green; NeurIPS 2023): radar-optical contrastive + masked autoencoding.

An optical ViT (Sentinel-2, 12 bands), a radar ViT at half depth (Sentinel-1 VV, VH) and a joint
encoder at half depth whose layers are: self-attention on radar tokens, cross-attention from radar
tokens to optical tokens, FFN. No CLS token and no position embedding: positions enter only through
2D-ALiBi (self-attention) and X-ALiBi (cross-attention), `layers.alibi_2d_bias`, recomputed for any
grid, so larger images than the training size work at test time. Patch 8, patches flattened
channel-major (c, i, j); LN eps 1e-5; q, k, v without bias.

Pretraining (`__call__`), with independent 75 % masks of equal size for radar and optical:
  contrastive  GAP-FFN of each masked encoder output -> Linear -> L2 norm; logits exp(s) cos with s
               learnable (init ln(1/0.07)); symmetric InfoNCE. Under data parallelism the negatives
               are all-gathered from every device and only the local shard carries gradient, as
               torch `dist.all_gather` does (`contrastive_loss`).
  MAE          the joint encoder runs on the visible radar tokens (queries) against the visible
               optical tokens; a one-layer decoder fills the radar-masked positions; targets are the
               14-channel patches (c, i, j) with norm-pix over all 896 values jointly; optical MSE
               is averaged over optical-masked patches, radar MSE over radar-masked patches.
  total        w_contrastive * L_contrastive + w_mae * (L_opt + L_rad).

Difference from the official pretraining script: its joint encoder hands one bias to both attentions
of a layer, the X-ALiBi of the kept radar (query) x kept optical (key) positions, so under masking
the radar self-attention is biased by distances to optical positions its keys do not have. We give
the self-attention the 2D-ALiBi of the radar tokens' own positions (the evident intent);
`official_joint_bias=True` reproduces the script. Without masking both are the same.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from eofm import parallel
from eofm.data.spec import SensorSpec
from eofm.models import family, layers
from eofm.models.mae import norm_pix_stats, random_masking, unshuffle_with_mask_tokens
from eofm.models.tokenizers import band_patches

LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True, kw_only=True)
class CromaConfig:
    """CROMA hyper-parameters (depths of radar and joint encoders are half the optical depth).

    `official_joint_bias`: in pretraining, the joint encoder's radar self-attention takes the
    cross-attention bias (kept radar x kept optical positions), as the official script does;
    default False: the radar x radar bias of its own tokens (see the module docstring).
    `remat`: rematerialisation of each block of every stack (optical, radar, joint, decoder), a
    `layers.REMAT_POLICIES` name. `scan_blocks`: run each stack of two or more blocks as a scan
    over single blocks (`layers.run_stack`); same parameters and results, compile time
    independent of depth.
    """

    embed_dim: int
    depth: int  # optical encoder depth
    num_heads: int
    patch_size: int = 8
    optical_channels: int = 12
    radar_channels: int = 2
    mlp_ratio: float = 4.0
    decoder_dim: int = 512
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    mask_ratio: float = 0.75
    temperature_init: float = 0.07
    contrastive_weight: float = 1.0
    mae_weight: float = 1.0
    official_joint_bias: bool = False
    remat: str = "none"
    scan_blocks: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def __post_init__(self):
        layers.check_remat(self.remat)

    @property
    def half_depth(self) -> int:
        return self.depth // 2


Config = CromaConfig
# Published sizes (base, large; patch 8 at 120 px) and a CPU `tiny`.
VARIANTS = {
    "tiny": dict(
        embed_dim=128, depth=4, num_heads=4, decoder_dim=128, decoder_heads=4, decoder_mlp_dim=512
    ),
    "base": dict(embed_dim=768, depth=12, num_heads=16),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}
DATA_FIELDS = ("optical_channels", "radar_channels")
OPTICAL_BANDS, RADAR_BANDS = 12, 2


def from_data(inputs: Mapping[str, SensorSpec], image_size: int) -> dict[str, int]:
    """(optical, radar): 12 Sentinel-2 bands (no B10) and Sentinel-1 VV, VH, in that order."""
    del image_size
    if len(inputs) != 2:
        raise ValueError(f"CROMA needs data.sensors = (optical, radar), got {list(inputs)}")
    (optical, optical_spec), (radar, radar_spec) = inputs.items()
    for key, spec, n, what in (
        (optical, optical_spec, OPTICAL_BANDS, "optical"),
        (radar, radar_spec, RADAR_BANDS, "radar"),
    ):
        if len(spec.bands) != n:
            raise ValueError(
                f"CROMA's {what} input {key!r} must have {n} bands, got {spec.bands}"
                " (select them with data.bands)"
            )
    return {"optical_channels": OPTICAL_BANDS, "radar_channels": RADAR_BANDS}


def patch_vectors(images: jax.Array, patch_size: int) -> jax.Array:
    """Channel-major patch vectors (c, i, j).  [B, H, W, C] -> [B, L, C*p*p]."""
    x = band_patches(images, patch_size)
    return x.reshape(*x.shape[:2], -1)


class _Encoder(nnx.Module):
    """Linear patch embedding, ALiBi self-attention blocks, final LN."""

    def __init__(self, cfg: CromaConfig, in_chans: int, depth: int, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.patch_size, self.num_heads = cfg.patch_size, cfg.num_heads
        self.remat, self.scan_unit = cfg.remat, int(cfg.scan_blocks)
        self.embed = layers.linear(
            in_chans * cfg.patch_size**2, cfg.embed_dim, ("patch", "embed"), **kw
        )
        self.blocks = layers.block_stack(
            depth,
            cfg.embed_dim,
            cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=False,
            ln_eps=LN_EPS,
            **kw,
        )
        self.norm = layers.layer_norm(cfg.embed_dim, eps=LN_EPS, **kw)

    def _embed(self, images: jax.Array, keep: jax.Array | None):
        """(tokens [B, L or K, D], ALiBi bias, patch grid) of images [B, H, W, C]."""
        p = self.patch_size
        grid = (images.shape[1] // p, images.shape[2] // p)
        x = self.embed(patch_vectors(images.astype(jnp.float32), p))
        if keep is not None:
            x = jnp.take_along_axis(x, keep[..., None], axis=1)
        return x, layers.alibi_2d_bias(grid, self.num_heads, keep, keep), grid

    def __call__(self, images: jax.Array, keep: jax.Array | None = None) -> jax.Array:
        """images [B, H, W, C] -> [B, L or K, D]; `keep` int [B, K] selects visible patches."""
        x, bias, _ = self._embed(images, keep)
        x = layers.run_stack(
            self.blocks, x, shared_args=(bias,), remat=self.remat, scan_unit=self.scan_unit
        )
        return self.norm(x)

    def tapped_grids(self, images: jax.Array, taps: Sequence[int]) -> list[jax.Array]:
        """Dense features: outputs of blocks `taps`.  [B, H, W, C] -> one [B, H/p, W/p, D] each."""
        x, bias, grid = self._embed(images, None)
        levels = layers.tapped_blocks(self.blocks, x, taps, self.norm, bias)
        return [t.reshape(t.shape[0], *grid, t.shape[-1]) for t in levels]


class _JointLayer(nnx.Module):
    """Radar self-attention (ALiBi), cross-attention to optical tokens (X-ALiBi), FFN.

    The cross-attention normalises queries and context with the same LayerNorm."""

    def __init__(self, cfg: CromaConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        d = cfg.embed_dim
        self.self_norm = layers.layer_norm(d, eps=LN_EPS, **kw)
        self.self_attn = layers.Attention(d, cfg.num_heads, qkv_bias=False, **kw)
        self.cross_norm = layers.layer_norm(d, eps=LN_EPS, **kw)
        self.cross_attn = layers.CrossAttention(d, cfg.num_heads, qkv_bias=False, **kw)
        self.mlp_norm = layers.layer_norm(d, eps=LN_EPS, **kw)
        self.mlp = layers.Mlp(d, int(d * cfg.mlp_ratio), **kw)

    def __call__(self, radar, optical, self_bias, cross_bias):
        radar = radar + self.self_attn(self.self_norm(radar), self_bias)
        radar = radar + self.cross_attn(
            self.cross_norm(radar), self.cross_norm(optical), cross_bias
        )
        return radar + self.mlp(self.mlp_norm(radar))


class GapFfn(nnx.Module):
    """Mean over tokens -> LN -> Linear(D, 4D) -> GELU -> Linear(4D, D).  [B, N, D] -> [B, D]."""

    def __init__(self, cfg: CromaConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.norm = layers.layer_norm(cfg.embed_dim, eps=LN_EPS, **kw)
        self.mlp = layers.Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio), **kw)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.mlp(self.norm(jnp.mean(tokens, axis=1)))


class Croma(nnx.Module):
    """Optical, radar and joint encoders, GAP-FFN heads, contrastive heads and the MAE decoder.

    As an encoder for downstream tasks, the optical encoder reads the bands it was pretrained on,
    picked by name, and pools with its GAP-FFN head.
    """

    ENCODING_PARAMS = ("optical/", "optical_gap/")
    feature_definition: str = (
        "`pooled`: the optical encoder's GAP-FFN head on its final-LayerNorm tokens (the official"
        " `optical_GAP`). `levels`: the optical encoder's tapped blocks on the 8-pixel patch grid;"
        " the last block's tap includes the final LayerNorm (the official `optical_encodings`),"
        " earlier taps are the raw residual stream."
    )

    def __init__(self, cfg: CromaConfig, inputs: Mapping[str, SensorSpec], *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.inputs = dict(inputs)
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        d = cfg.embed_dim
        self.optical = _Encoder(cfg, cfg.optical_channels, cfg.depth, rngs=rngs)
        self.radar = _Encoder(cfg, cfg.radar_channels, cfg.half_depth, rngs=rngs)
        self.joint = nnx.List([_JointLayer(cfg, rngs=rngs) for _ in range(cfg.half_depth)])
        self.joint_norm = layers.layer_norm(d, eps=LN_EPS, **kw)
        self.optical_gap = GapFfn(cfg, rngs=rngs)
        self.radar_gap = GapFfn(cfg, rngs=rngs)
        self.optical_proj = layers.linear(d, d, ("embed", None), **kw)
        self.radar_proj = layers.linear(d, d, ("embed", None), **kw)
        self.logit_scale = nnx.Param(jnp.asarray(math.log(1 / cfg.temperature_init), jnp.float32))
        dd = cfg.decoder_dim
        self.decoder_embed = layers.linear(d, dd, (None, "embed"), **kw)
        self.mask_token = nnx.Param(
            layers.logical(nnx.initializers.normal(0.02), (None, None, "embed"))(
                rngs.params(), (1, 1, dd), cfg.param_dtype
            )
        )
        self.decoder_block = layers.Block(
            dd,
            cfg.decoder_heads,
            mlp_ratio=cfg.decoder_mlp_dim / dd,
            qkv_bias=False,
            ln_eps=LN_EPS,
            **kw,
        )
        self.decoder_norm = layers.layer_norm(dd, eps=LN_EPS, **kw)
        channels = cfg.optical_channels + cfg.radar_channels
        self.decoder_pred = layers.linear(
            dd, channels * cfg.patch_size**2, ("embed", "patch"), **kw
        )

    # ---- encoding (the Encoder API) -------------------------------------------------------

    def joint_tokens(
        self,
        radar: jax.Array,
        optical: jax.Array,
        grid_hw: tuple[int, int],
        radar_keep: jax.Array | None = None,
        optical_keep: jax.Array | None = None,
    ) -> jax.Array:
        """Joint encoder on radar tokens [B, Nr, D] attending to optical tokens [B, No, D]; the
        keep ids int [B, Nr] / [B, No] give their patch positions (None: every patch in order).
        """
        h = self.cfg.num_heads
        cross_bias = layers.alibi_2d_bias(grid_hw, h, radar_keep, optical_keep)
        if self.cfg.official_joint_bias:
            self_bias = cross_bias
        else:
            self_bias = layers.alibi_2d_bias(grid_hw, h, radar_keep, radar_keep)
        x = layers.run_stack(
            self.joint,
            radar,
            shared_args=(optical, self_bias, cross_bias),
            remat=self.cfg.remat,
            scan_unit=int(self.cfg.scan_blocks),
        )
        return self.joint_norm(x)

    def encode(
        self, optical: jax.Array | None = None, radar: jax.Array | None = None
    ) -> dict[str, tuple[jax.Array, jax.Array]]:
        """Unmasked encodings of whichever modalities are given (any size divisible by 8).

        Args:
          optical: f32[B, H, W, 12] Sentinel-2 (12 bands, no B10), normalised.
          radar: f32[B, H, W, 2] Sentinel-1 VV, VH, normalised.
        Returns:
          {"optical" | "radar" | "joint": (tokens [B, L, D], pooled [B, D])}: optical and radar
          pooled by their GAP-FFN heads, joint pooled by a plain mean (as the paper does).
        """
        out = {}
        if optical is not None:
            tokens = self.optical(optical)
            out["optical"] = (tokens, self.optical_gap(tokens))
        if radar is not None:
            tokens = self.radar(radar)
            out["radar"] = (tokens, self.radar_gap(tokens))
        if optical is not None and radar is not None:
            p = self.cfg.patch_size
            grid = (optical.shape[1] // p, optical.shape[2] // p)
            joint = self.joint_tokens(out["radar"][0], out["optical"][0], grid)
            out["joint"] = (joint, jnp.mean(joint, axis=1))
        return out

    def _optical_bands(self, spec: SensorSpec) -> list[int]:
        optical = next(iter(self.inputs.values()))
        return family.pick_bands(spec, optical, "CROMA's optical encoder")

    def missing_bands(self, spec: SensorSpec) -> tuple[str, ...]:
        self._optical_bands(spec)
        return ()

    def features(
        self, images: jax.Array, spec: SensorSpec, taps: Sequence[int] | None = None
    ) -> dict[str, Any]:
        """The optical encoder's GAP-FFN pooling and tapped blocks on the patch grid (stride 8)."""
        x = images[..., self._optical_bands(spec)]
        taps = tuple(taps) if taps else family.default_taps(self.cfg.depth)
        grids = self.optical.tapped_grids(x, (*taps, self.cfg.depth - 1))
        last = grids[-1]
        pooled = self.optical_gap(last.reshape(last.shape[0], -1, last.shape[-1]))
        return {"pooled": pooled, "levels": grids[:-1]}

    @property
    def num_layers(self) -> int:
        return self.cfg.depth + 1

    def layer_of(self, path: str) -> int:
        return family.block_layer_of(self.cfg.depth, r"^optical/embed/", "optical/")(path)

    # ---- pretraining ----------------------------------------------------------------------

    def loss(self, batch: Mapping[str, jax.Array], rng: jax.Array):
        optical, radar = self.inputs
        return self(batch[optical], batch[radar], rng=rng)

    def flops_per_example(self, image_size: int) -> float:
        return croma_flops_per_example(self.cfg, (image_size, image_size))

    def __call__(
        self, optical: jax.Array, radar: jax.Array, *, rng: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Pretraining loss on co-registered optical [B, H, W, 12] and radar [B, H, W, 2]."""
        cfg = self.cfg
        p = cfg.patch_size
        b, h, w, _ = optical.shape
        grid = (h // p, w // p)
        num_patches = grid[0] * grid[1]
        kept = int(num_patches * (1 - cfg.mask_ratio))
        optical_rng, radar_rng = jax.random.split(rng)
        optical_keep, optical_mask, _ = random_masking(optical_rng, b, num_patches, kept)
        radar_keep, radar_mask, radar_restore = random_masking(radar_rng, b, num_patches, kept)

        optical_tokens = self.optical(optical, optical_keep)
        radar_tokens = self.radar(radar, radar_keep)

        z_opt = l2_normalize(self.optical_proj(self.optical_gap(optical_tokens)))
        z_rad = l2_normalize(self.radar_proj(self.radar_gap(radar_tokens)))
        contrastive, accuracy = contrastive_loss(z_opt, z_rad, self.logit_scale[...])

        joint = self.joint_tokens(radar_tokens, optical_tokens, grid, radar_keep, optical_keep)
        pred = self._decode(joint, radar_restore, grid)
        target = patch_vectors(jnp.concatenate([optical, radar], -1).astype(jnp.float32), p)
        mean, std = norm_pix_stats(target)
        target = (target - mean) / std
        split = cfg.optical_channels * p * p
        loss_opt = _masked_mse(pred[..., :split], target[..., :split], optical_mask)
        loss_rad = _masked_mse(pred[..., split:], target[..., split:], radar_mask)
        total = cfg.contrastive_weight * contrastive + cfg.mae_weight * (loss_opt + loss_rad)
        return total, {
            "contrastive": contrastive,
            "contrastive_accuracy": accuracy,
            "mae_optical": loss_opt,
            "mae_radar": loss_rad,
            "temperature": jnp.exp(-self.logit_scale[...]),
        }

    def _decode(
        self, joint: jax.Array, radar_restore: jax.Array, grid: tuple[int, int]
    ) -> jax.Array:
        """Joint tokens at radar-visible positions -> f32[B, L, 14 p^2] predictions."""
        x = unshuffle_with_mask_tokens(
            self.decoder_embed(joint), self.mask_token[...], radar_restore
        )
        x = x + jnp.asarray(layers.posemb_sincos_2d(*grid, x.shape[-1]), x.dtype)
        x = self.decoder_norm(layers.run_stack([self.decoder_block], x, remat=self.cfg.remat))
        return self.decoder_pred(x).astype(jnp.float32)


def l2_normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _masked_mse(pred, target, mask):
    per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)


def _local_contrastive(z_opt, z_rad, logit_scale, gather_axes):
    """Symmetric InfoNCE of the local rows against the negatives of every device in
    `gather_axes` (none: the local batch is the whole batch). Other devices' features are constants
    (stop_gradient), the local shard keeps its gradient. -> (mean loss, accuracy)."""
    local = z_opt.shape[0]
    if gather_axes:
        index = jax.lax.axis_index(gather_axes)
        gather = lambda z: jax.lax.dynamic_update_slice_in_dim(
            jax.lax.stop_gradient(jax.lax.all_gather(z, gather_axes, tiled=True)),
            z,
            index * local,
            axis=0,
        )
        all_opt, all_rad = gather(z_opt), gather(z_rad)
        labels = index * local + jnp.arange(local)
    else:
        all_opt, all_rad = z_opt, z_rad
        labels = jnp.arange(local)
    scale = jnp.exp(logit_scale)
    logits_o2r = scale * z_opt @ all_rad.T
    logits_r2o = scale * z_rad @ all_opt.T
    ce = lambda logits: (
        -jnp.mean(
            jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), labels[:, None], axis=-1)
        )
    )
    loss = 0.5 * (ce(logits_o2r) + ce(logits_r2o))
    accuracy = 0.5 * (
        jnp.mean(jnp.argmax(logits_o2r, -1) == labels)
        + jnp.mean(jnp.argmax(logits_r2o, -1) == labels)
    )
    if gather_axes:
        loss, accuracy = jax.lax.pmean((loss, accuracy), gather_axes)
    return loss, accuracy


def contrastive_loss(
    z_opt: jax.Array, z_rad: jax.Array, logit_scale: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """CROMA's symmetric InfoNCE over the global batch; f32 [B, D] unit vectors -> (loss, acc).

    Inside a mesh context (`jax.set_mesh`, as the training loop sets it) with data-parallel axes of
    size > 1, runs per device under `shard_map`: each device scores its rows against the
    all-gathered negatives with gradient through its own shard only, matching torch DDP with
    `dist.all_gather`; the loss value equals the single-device loss on the same global batch.
    """
    mesh = jax.sharding.get_abstract_mesh()
    axes = tuple(a for a in parallel.BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
    if not axes:
        return _local_contrastive(z_opt, z_rad, logit_scale, ())
    spec = PartitionSpec(axes)
    fn = jax.shard_map(
        lambda o, r, s: _local_contrastive(o, r, s, axes),
        mesh=mesh,
        in_specs=(spec, spec, PartitionSpec()),
        out_specs=(PartitionSpec(), PartitionSpec()),
        axis_names=set(axes),
    )
    return fn(z_opt, z_rad, logit_scale)


def croma_flops_per_example(cfg: CromaConfig, image_hw: tuple[int, int]) -> float:
    """Training FLOPs per example (3 x forward, 2 per multiply-add): optical encoder on K tokens,
    radar and joint encoders at half depth (joint: self-attention, cross-attention over K optical
    tokens, FFN), GAP-FFN and projection heads, and the decoder over all L patches."""
    p, d = cfg.patch_size, cfg.embed_dim
    num_patches = (image_hw[0] // p) * (image_hw[1] // p)
    k = int(num_patches * (1 - cfg.mask_ratio))
    mlp = int(d * cfg.mlp_ratio)
    embed = 2.0 * num_patches * (cfg.optical_channels + cfg.radar_channels) * p * p * d
    encoders = (cfg.depth + cfg.half_depth) * layers.block_flops(k, d, mlp)
    joint = cfg.half_depth * (layers.block_flops(k, d, mlp) + 2 * k * 4 * d * d + 4 * k * k * d)
    heads = 2 * (2.0 * d * mlp * 2 + 2.0 * d * d)
    decoder = (
        2.0 * k * d * cfg.decoder_dim
        + layers.block_flops(num_patches, cfg.decoder_dim, cfg.decoder_mlp_dim)
        + 2.0 * num_patches * cfg.decoder_dim * (cfg.optical_channels + cfg.radar_channels) * p * p
    )
    return 3.0 * (embed + encoders + joint + heads + decoder)


Model = Croma
