"""SpectralGPT (Hong et al., TPAMI 2024): 3-D spatial-spectral tokens, 90 % masked cube modelling.

Input: the 12 Sentinel-2 bands B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B11, B12 (B10
dropped), each image min-max scaled per band. Tokens are cubes of 3 bands x 8 x 8 pixels: the four
spectral groups {B01,B02,B03}, {B04,B05,B06}, {B07,B08,B8A}, {B09,B11,B12}, ordered spectral group
first, then spatial raster, so L = 4 * (H/8) * (W/8). No CLS token. Positions are learned and
separable, pos(t, s) = spatial[s] + spectral[t]; `resize_positions` interpolates the spatial tables
to another grid (the official finetuning code drops them; we never do).

Pretraining: 90 % random masking over all cubes (len_keep = int(0.1 L)); a 512-wide, 4-block
decoder with its own separable positions predicts each cube's 3 x 8 x 8 values in (band-in-group,
row, col) order; no norm-pix. Loss = L1 + L2 with
  L1  MSE over masked cubes;
  L2  at every spatial location, the prediction and target summed over the 4 spectral groups, then
      MSE over the 192 values and all locations (the "multi-target" term).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from eofm.data.spec import SensorSpec
from eofm.models import family, layers
from eofm.models.mae import random_masking, unshuffle_with_mask_tokens

BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpectralGPTConfig:
    """SpectralGPT hyper-parameters; `image_size` fixes the learned spatial position tables.

    `remat`: rematerialisation of each encoder and decoder block, a `layers.REMAT_POLICIES` name.
    `scan_blocks`: run the encoder and decoder blocks as scans over single blocks
    (`layers.run_stack`); same parameters and results, compile time independent of depth.
    """

    embed_dim: int
    depth: int
    num_heads: int
    image_size: int = 128
    patch_size: int = 8
    bands_per_token: int = 3
    num_bands: int = 12
    mlp_ratio: float = 4.0
    decoder_dim: int = 512
    decoder_depth: int = 4
    decoder_heads: int = 16
    mask_ratio: float = 0.9
    ln_eps: float = 1e-6
    remat: str = "none"
    scan_blocks: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def __post_init__(self):
        layers.check_remat(self.remat)

    @property
    def num_groups(self) -> int:
        return self.num_bands // self.bands_per_token

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def cube_dim(self) -> int:
        return self.bands_per_token * self.patch_size**2


Config = SpectralGPTConfig
VARIANTS = {
    "tiny": dict(
        embed_dim=192, depth=6, num_heads=3, decoder_dim=128, decoder_depth=2, decoder_heads=4
    ),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}
DATA_FIELDS = ("image_size",)


def from_data(inputs: Mapping[str, SensorSpec], image_size: int) -> dict[str, int]:
    """One Sentinel-2 image with exactly `BANDS`, in that order; the image size fixes the learned
    spatial position tables."""
    if len(inputs) != 1:
        raise ValueError(f"SpectralGPT takes one Sentinel-2 image, got data.sensors={list(inputs)}")
    ((key, spec),) = inputs.items()
    if spec.bands != BANDS:
        raise ValueError(
            f"SpectralGPT needs the bands {BANDS} in this order, got {spec.bands} for {key!r}"
            " (set data.bands)"
        )
    return {"image_size": image_size}


def adapt_param(path: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Interpolates spatial position tables to the new grid (progressive training)."""
    if path.split("/")[-2:] != ["spatial", "value"]:
        raise ValueError(f"{path}: shape {value.shape} cannot become {shape}")
    return np.asarray(resize_positions(value, int(round(np.sqrt(shape[0])))))


def cubify(images: jax.Array, patch_size: int = 8, bands_per_token: int = 3) -> jax.Array:
    """[B, H, W, C] -> [B, G * h * w, t * p * p]: cubes of t bands x p x p, spectral group first,
    then spatial raster; values in (band-in-group, row, col) order."""
    b, h, w, c = images.shape
    p, t = patch_size, bands_per_token
    if c % t or h % p or w % p:
        raise ValueError(f"images {images.shape} do not split into {t} x {p} x {p} cubes")
    x = images.reshape(b, h // p, p, w // p, p, c // t, t)
    x = x.transpose(0, 5, 1, 3, 6, 2, 4)  # b, g, gh, gw, t, i, j
    return x.reshape(b, (c // t) * (h // p) * (w // p), t * p * p)


def uncubify(
    cubes: jax.Array, image_hw: tuple[int, int], patch_size: int = 8, bands_per_token: int = 3
) -> jax.Array:
    """Inverse of `cubify`: [B, G * h * w, t * p * p] -> [B, H, W, G * t]."""
    b, n, _ = cubes.shape
    p, t = patch_size, bands_per_token
    gh, gw = image_hw[0] // p, image_hw[1] // p
    g = n // (gh * gw)
    x = cubes.reshape(b, g, gh, gw, t, p, p).transpose(0, 2, 5, 3, 6, 1, 4)
    return x.reshape(b, gh * p, gw * p, g * t)


def resize_positions(table: np.ndarray | jax.Array, new_grid: int) -> jax.Array:
    """Interpolates a spatial position table [g*g, D] to [n*n, D] (bilinear, corners aligned, so
    table values stay exactly where the old and new grids share points)."""
    old = int(round(np.sqrt(table.shape[0])))
    if old * old != table.shape[0]:
        raise ValueError(f"position table of {table.shape[0]} rows is not a square grid")
    if old == new_grid:
        return jnp.asarray(table)
    grid = jnp.asarray(table, jnp.float32).reshape(old, old, -1)
    coords = jnp.linspace(0.0, old - 1.0, new_grid)
    rows, cols = jnp.meshgrid(coords, coords, indexing="ij")
    sample = lambda g: jax.scipy.ndimage.map_coordinates(g, [rows, cols], order=1, mode="nearest")
    out = jax.vmap(sample, in_axes=-1, out_axes=-1)(grid)
    return out.reshape(new_grid * new_grid, -1).astype(jnp.asarray(table).dtype)


class SeparablePositions(nnx.Module):
    """Learned pos(t, s) = spatial[s] + spectral[t] (trunc-normal std 0.02).  -> [G * h * w, D]."""

    def __init__(self, num_spatial: int, num_groups: int, dim: int, *, param_dtype, rngs):
        init = layers.logical(nnx.initializers.truncated_normal(0.02), (None, "embed"))
        self.spatial = nnx.Param(init(rngs.params(), (num_spatial, dim), param_dtype))
        self.spectral = nnx.Param(init(rngs.params(), (num_groups, dim), param_dtype))

    def __call__(self) -> jax.Array:
        return (self.spectral[...][:, None, :] + self.spatial[...][None]).reshape(
            -1, self.spatial.shape[-1]
        )


class SpectralGPT(nnx.Module):
    """3-D cube ViT encoder (no CLS) + separable-position decoder for masked cube modelling."""

    ENCODING_PARAMS = ("patch_embed/", "pos/", "blocks/", "norm/")
    feature_definition: str = (
        "`pooled`: the mean over all cube tokens of the final-LayerNorm encoder output. `levels`:"
        " the tapped blocks averaged over the 4 spectral groups on the 8-pixel patch grid; the"
        " last block's tap includes the final LayerNorm, earlier taps are the raw residual stream."
    )

    def __init__(self, cfg: SpectralGPTConfig, inputs: Mapping[str, SensorSpec], *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.inputs = dict(inputs)
        (self.trained_spec,) = self.inputs.values()
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        d, dd = cfg.embed_dim, cfg.decoder_dim
        spatial = cfg.grid**2
        self.patch_embed = layers.linear(cfg.cube_dim, d, ("patch", "embed"), **kw)
        self.pos = SeparablePositions(
            spatial, cfg.num_groups, d, param_dtype=cfg.param_dtype, rngs=rngs
        )
        self.blocks = layers.block_stack(
            cfg.depth, d, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, ln_eps=cfg.ln_eps, **kw
        )
        self.norm = layers.layer_norm(d, eps=cfg.ln_eps, **kw)
        self.decoder_embed = layers.linear(d, dd, (None, "embed"), **kw)
        self.mask_token = nnx.Param(
            layers.logical(nnx.initializers.normal(0.02), (None, None, "embed"))(
                rngs.params(), (1, 1, dd), cfg.param_dtype
            )
        )
        self.decoder_pos = SeparablePositions(
            spatial, cfg.num_groups, dd, param_dtype=cfg.param_dtype, rngs=rngs
        )
        self.decoder_blocks = layers.block_stack(
            cfg.decoder_depth,
            dd,
            cfg.decoder_heads,
            mlp_ratio=cfg.mlp_ratio,
            ln_eps=cfg.ln_eps,
            **kw,
        )
        self.decoder_norm = layers.layer_norm(dd, eps=cfg.ln_eps, **kw)
        self.decoder_pred = layers.linear(dd, cfg.cube_dim, ("embed", "patch"), **kw)

    def _check(self, images: jax.Array) -> None:
        c, s = self.cfg, self.cfg.image_size
        if images.shape[1:] != (s, s, c.num_bands):
            raise ValueError(
                f"SpectralGPT {c.image_size}px expects [B, {s}, {s}, {c.num_bands}]"
                f" ({', '.join(BANDS)}); got {images.shape}. Use resize_positions"
                " (configs: model.image_size) for another size."
            )

    def embed(self, images: jax.Array) -> jax.Array:
        """Cube tokens with positions.  [B, S, S, 12] -> [B, L, D]."""
        self._check(images)
        cfg = self.cfg
        x = self.patch_embed(
            cubify(images.astype(jnp.float32), cfg.patch_size, cfg.bands_per_token)
        )
        return x + self.pos().astype(x.dtype)

    def _run(self, blocks: nnx.List, x: jax.Array) -> jax.Array:
        """A block stack on tokens [B, N, D], with the config's remat and scan."""
        cfg = self.cfg
        return layers.run_stack(blocks, x, remat=cfg.remat, scan_unit=int(cfg.scan_blocks))

    def encode_tokens(self, x: jax.Array) -> jax.Array:
        """Encoder blocks + final LN.  [B, N, D] -> [B, N, D]."""
        return self.norm(self._run(self.blocks, x))

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The Encoder API: all cubes, unmasked.  -> (tokens [B, L, D], pooled mean [B, D])."""
        tokens = self.encode_tokens(self.embed(images))
        return tokens, jnp.mean(tokens, axis=1)

    def missing_bands(self, spec: SensorSpec) -> tuple[str, ...]:
        family.pick_bands(spec, self.trained_spec, "SpectralGPT")
        return ()

    def features(
        self, images: jax.Array, spec: SensorSpec, taps: Sequence[int] | None = None
    ) -> dict[str, Any]:
        """See `feature_definition`; levels are [B, S/p, S/p, D] (stride p)."""
        x = images[..., family.pick_bands(spec, self.trained_spec, "SpectralGPT")]
        depth, grid = self.cfg.depth, self.cfg.grid
        taps = tuple(taps) if taps else family.default_taps(depth)
        tokens = layers.tapped_blocks(self.blocks, self.embed(x), (*taps, depth - 1), self.norm)
        grids = [t.reshape(t.shape[0], -1, grid, grid, t.shape[-1]).mean(1) for t in tokens[:-1]]
        return {"pooled": jnp.mean(tokens[-1], axis=1), "levels": grids}

    @property
    def num_layers(self) -> int:
        return self.cfg.depth + 1

    def layer_of(self, path: str) -> int:
        return family.block_layer_of(self.cfg.depth, r"^(patch_embed|pos)/")(path)

    def loss(self, batch: Mapping[str, jax.Array], rng: jax.Array):
        (key,) = self.inputs
        return self(batch[key], rng=rng)

    def flops_per_example(self, image_size: int) -> float:
        return spectralgpt_flops_per_example(dataclasses.replace(self.cfg, image_size=image_size))

    def __call__(
        self, images: jax.Array, *, rng: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Masked cube modelling loss.  images f32[B, S, S, 12] (per-image min-max scaled)."""
        cfg = self.cfg
        x = self.embed(images)
        b, num_tokens, _ = x.shape
        keep, mask, restore = random_masking(
            rng, b, num_tokens, int(num_tokens * (1 - cfg.mask_ratio))
        )
        latent = self.encode_tokens(jnp.take_along_axis(x, keep[..., None], axis=1))
        y = unshuffle_with_mask_tokens(self.decoder_embed(latent), self.mask_token[...], restore)
        y = y + self.decoder_pos().astype(y.dtype)
        y = self._run(self.decoder_blocks, y)
        pred = self.decoder_pred(self.decoder_norm(y)).astype(jnp.float32)
        target = cubify(images.astype(jnp.float32), cfg.patch_size, cfg.bands_per_token)
        return spectralgpt_loss(pred, target, mask, cfg.num_groups)


def spectralgpt_loss(
    pred: jax.Array, target: jax.Array, mask: jax.Array, num_groups: int
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L1 (MSE on masked cubes) + L2 (MSE of the group sums at every spatial location).

    pred, target: f32[B, G * h * w, t p p] (spectral group first); mask: [B, G * h * w], 1 = masked.
    """
    per_token = jnp.mean(jnp.square(pred - target), axis=-1)
    l1 = jnp.sum(per_token * mask) / jnp.sum(mask)
    b, n, k = pred.shape
    group_sum = lambda x: x.reshape(b, num_groups, n // num_groups, k).sum(axis=1)
    l2 = jnp.mean(jnp.square(group_sum(pred) - group_sum(target)))
    return l1 + l2, {"loss_cubes": l1, "loss_group_sums": l2}


def spectralgpt_flops_per_example(cfg: SpectralGPTConfig) -> float:
    """Training FLOPs per example (3 x forward, 2 per multiply-add): cube embedding of all L tokens,
    encoder on K = int(0.1 L), decoder blocks on L, prediction head."""
    n = cfg.num_groups * cfg.grid**2
    k = int(n * (1 - cfg.mask_ratio))
    mlp, dmlp = int(cfg.embed_dim * cfg.mlp_ratio), int(cfg.decoder_dim * cfg.mlp_ratio)
    forward = (
        2.0 * n * cfg.cube_dim * cfg.embed_dim
        + cfg.depth * layers.block_flops(k, cfg.embed_dim, mlp)
        + 2.0 * k * cfg.embed_dim * cfg.decoder_dim
        + cfg.decoder_depth * layers.block_flops(n, cfg.decoder_dim, dmlp)
        + 2.0 * n * cfg.decoder_dim * cfg.cube_dim
    )
    return 3.0 * forward


Model = SpectralGPT
