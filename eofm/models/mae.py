"""Masked autoencoder (He et al. 2022) on a plain ViT; the base the model families extend.

Shapes: B batch, H x W pixels, C channels, p patch side, L = (H/p)(W/p) patches,
K = int(L * (1 - mask_ratio)) kept patches, P = p*p*C values per patch, D / Dd encoder / decoder
width. Patch values are flattened as in `layers.patchify`: (row, col, channel).
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
from eofm.models.vit import ViTConfig, ViTEncoder, ViTFeatures, vit_forward_flops

NORM_PIX_EPS = 1e-6


@dataclasses.dataclass(frozen=True, kw_only=True)
class MAEConfig(ViTConfig):
    """MAE hyper-parameters: the ViT encoder's fields (`ViTConfig`) plus the decoder's; the decoder
    reuses the encoder's mlp_ratio, qkv_bias, ln_eps, remat, scan_blocks and dtypes.

    Attributes:
      decoder_dim: Dd, decoder width.
      decoder_depth: number of decoder blocks.
      decoder_heads: decoder attention heads.
      mask_ratio: fraction of patches removed per example.
      norm_pix_loss: regress per-patch normalised pixels (`norm_pix_stats`) instead of raw ones.
    """

    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True

    @property
    def encoder(self) -> ViTConfig:
        return ViTConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ViTConfig)})

    def num_kept(self, num_patches: int) -> int:
        """K = int(L * (1 - mask_ratio)): patches the encoder sees."""
        return int(num_patches * (1 - self.mask_ratio))


Config = MAEConfig
# The ViT sizes of the MAE paper (patch 16, 512-wide 8-block decoder) and a CPU `tiny`.
VARIANTS = {
    "tiny": dict(
        patch_size=16,
        embed_dim=192,
        depth=6,
        num_heads=3,
        decoder_dim=128,
        decoder_depth=2,
        decoder_heads=4,
    ),
    "base": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "large": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
}
DATA_FIELDS = ("in_chans",)


def from_data(inputs: Mapping[str, SensorSpec], image_size: int) -> dict[str, int]:
    """Any sensors: their bands are stacked along channels, in `inputs` order."""
    del image_size
    if not inputs:
        raise ValueError("the MAE needs at least one input sensor")
    return {"in_chans": sum(len(spec.bands) for spec in inputs.values())}


def random_masking(
    rng: jax.Array, batch: int, num_patches: int, num_kept: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-example random subset: argsort of uniform noise, the K lowest-noise patches are kept.

    Returns:
      ids_keep: int32 [B, K], kept patch indices (in shuffled order).
      mask: float32 [B, L], 1 = removed, 0 = kept; exactly L - K ones per row.
      ids_restore: int32 [B, L], position of each patch in the shuffled order (un-shuffles).
    """
    noise = jax.random.uniform(rng, (batch, num_patches))
    ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    mask = (ids_restore >= num_kept).astype(jnp.float32)
    return ids_shuffle[:, :num_kept], mask, ids_restore


def unshuffle_with_mask_tokens(
    kept: jax.Array, mask_token: jax.Array, ids_restore: jax.Array
) -> jax.Array:
    """Puts the K kept tokens [B, K, D] (shuffled order) and a mask token in every removed slot
    back into patch order.  -> [B, L, D]."""
    b, k, d = kept.shape
    fill = jnp.broadcast_to(
        mask_token.astype(kept.dtype).reshape(1, 1, d), (b, ids_restore.shape[1] - k, d)
    )
    return jnp.take_along_axis(jnp.concatenate([kept, fill], axis=1), ids_restore[..., None], 1)


def norm_pix_stats(patches: jax.Array, eps: float = NORM_PIX_EPS) -> tuple[jax.Array, jax.Array]:
    """Per-patch mean and sqrt(unbiased variance (ddof=1) + eps).  [B, L, P] -> 2 x [B, L, 1]."""
    mean = jnp.mean(patches, axis=-1, keepdims=True)
    var = jnp.var(patches, axis=-1, keepdims=True, ddof=1)
    return mean, jnp.sqrt(var + eps)


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over masked patches of the per-patch MSE.  [B, L, P], [B, L, P], [B, L] -> f32[]."""
    per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)


class MAEDecoder(nnx.Module):
    """MAE's light decoder: Linear D -> Dd, learned mask tokens for removed patches, fixed sin-cos
    positions, pre-LN blocks, final LN. Families put their own prediction heads on top."""

    def __init__(self, cfg: MAEConfig, *, rngs: nnx.Rngs):
        enc = cfg.encoder
        kw = dict(dtype=enc.dtype, param_dtype=enc.param_dtype, rngs=rngs)
        self.remat, self.scan_unit = enc.remat, int(enc.scan_blocks)
        # "embed" may name only one side of the D -> Dd projection.
        self.embed = layers.linear(enc.embed_dim, cfg.decoder_dim, (None, "embed"), **kw)
        token_init = layers.logical(nnx.initializers.normal(0.02), (None, None, "embed"))
        self.mask_token = nnx.Param(
            token_init(rngs.params(), (1, 1, cfg.decoder_dim), enc.param_dtype)
        )
        self.blocks = layers.block_stack(
            cfg.decoder_depth,
            cfg.decoder_dim,
            cfg.decoder_heads,
            mlp_ratio=enc.mlp_ratio,
            qkv_bias=enc.qkv_bias,
            ln_eps=enc.ln_eps,
            **kw,
        )
        self.norm = layers.layer_norm(cfg.decoder_dim, eps=enc.ln_eps, **kw)

    def __call__(
        self, latent: jax.Array, ids_restore: jax.Array, grid_hw: tuple[int, int]
    ) -> jax.Array:
        """Decoder features of every patch.

        Args:
          latent: [B, 1 + K, D] encoder tokens, CLS first, kept patches in shuffled order.
          ids_restore: int32 [B, L] from `random_masking`.
          grid_hw: (H/p, W/p).
        Returns:
          [B, L, Dd] in the compute dtype, patches in image order (CLS dropped).
        """
        x = self.embed(latent)
        patches = unshuffle_with_mask_tokens(x[:, 1:], self.mask_token[...], ids_restore)
        patches = patches + jnp.asarray(layers.posemb_sincos_2d(*grid_hw, x.shape[-1]), x.dtype)
        x = jnp.concatenate([x[:, :1], patches], axis=1)
        x = layers.run_stack(self.blocks, x, remat=self.remat, scan_unit=self.scan_unit)
        return self.norm(x)[:, 1:]


class MAE(ViTFeatures, nnx.Module):
    """ViT encoder on the kept patches; a light ViT decoder predicts every patch's pixels.

    The images of every input sensor are stacked along channels (in `inputs` order) into one
    C-channel image; as an encoder for other data, bands are matched by name, then by wavelength
    (`family.band_indices`: RGB red reads as B04), and the ones the data lack are set to 0 after
    normalisation (the dataset mean).
    """

    feature_definition: str = (
        "`pooled`: the CLS token after the final LayerNorm. `levels`: the patch tokens of the"
        " tapped blocks on the patch grid (stride p); the last block's tap includes the final"
        " LayerNorm (the encoder output), earlier taps are the raw residual stream."
    )

    def __init__(self, cfg: MAEConfig, inputs: Mapping[str, SensorSpec], *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.inputs = dict(inputs)
        self.bands = tuple(b for spec in self.inputs.values() for b in spec.bands)
        if len(self.bands) != cfg.in_chans:
            raise ValueError(
                f"inputs {self.inputs} have {len(self.bands)} bands, not {cfg.in_chans}"
            )
        enc = cfg.encoder
        kw = dict(dtype=enc.dtype, param_dtype=enc.param_dtype, rngs=rngs)
        self.encoder = ViTEncoder(enc, rngs=rngs)
        self.decoder = MAEDecoder(cfg, rngs=rngs)
        patch_dim = enc.patch_size**2 * enc.in_chans
        self.decoder_pred = layers.linear(cfg.decoder_dim, patch_dim, ("embed", "patch"), **kw)

    def decode(
        self, latent: jax.Array, ids_restore: jax.Array, grid_hw: tuple[int, int]
    ) -> jax.Array:
        """Predicts all patches from the encoder output (see `MAEDecoder`).

        Returns:
          float32 [B, L, P] predictions in (normalised, if norm_pix_loss) pixel units.
        """
        return self.decoder_pred(self.decoder(latent, ids_restore, grid_hw)).astype(jnp.float32)

    def _predict(self, images: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Masks, encodes and decodes.  -> (pred f32[B, L, P], mask f32[B, L])."""
        b, h, w, _ = images.shape
        p = self.cfg.encoder.patch_size
        grid_hw = (h // p, w // p)
        num_patches = grid_hw[0] * grid_hw[1]
        ids_keep, mask, ids_restore = random_masking(
            rng, b, num_patches, self.cfg.num_kept(num_patches)
        )
        x = self.encoder.embed_patches(images)
        x = jnp.take_along_axis(x, ids_keep[..., None], axis=1)
        latent = self.encoder.encode_tokens(x)
        return self.decode(latent, ids_restore, grid_hw), mask

    def __call__(
        self, images: jax.Array, *, rng: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """MAE loss on a batch.

        Args:
          images: f32[B, H, W, C].
          rng: PRNG key for the masks.
        Returns:
          loss: f32[], mean over masked patches of the per-patch MSE.
          aux: {"pred": f32[B, L, P], "mask": f32[B, L] (1 = masked), "target": f32[B, L, P]}.
        """
        pred, mask = self._predict(images, rng)
        target = layers.patchify(images.astype(jnp.float32), self.cfg.encoder.patch_size)
        if self.cfg.norm_pix_loss:
            mean, std = norm_pix_stats(target)
            target = (target - mean) / std
        loss = masked_mse(pred, target, mask)
        return loss, {"pred": pred, "mask": mask, "target": target}

    # ---- the family protocol (eofm.models.family) -----------------------------------------

    def stack(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """The input sensors' images stacked along channels.  -> f32[B, H, W, C]."""
        return jnp.concatenate([batch[k] for k in self.inputs], axis=-1)

    def loss(self, batch: Mapping[str, jax.Array], rng: jax.Array):
        loss, _ = self(self.stack(batch), rng=rng)
        return loss, {}

    def flops_per_example(self, image_size: int) -> float:
        return mae_flops_per_example(self.cfg, (image_size, image_size))

    def _filled(self, spec: SensorSpec) -> tuple[np.ndarray, np.ndarray]:
        """(gather index, presence) of the encoder's channels in images of `spec`."""
        index = np.asarray(
            [
                -1 if i is None else i
                for trained in self.inputs.values()
                for i in family.band_indices(spec, trained)
            ]
        )
        return np.maximum(index, 0), (index >= 0).astype(np.float32)

    def missing_bands(self, spec: SensorSpec) -> tuple[str, ...]:
        _, present = self._filled(spec)
        missing = tuple(b for b, p in zip(self.bands, present) if not p)
        if len(missing) == len(self.bands):
            trained = "; ".join(f"{s.sensor} {', '.join(s.bands)}" for s in self.inputs.values())
            raise ValueError(
                f"the MAE reads {trained}; {spec.sensor} data {spec.bands} have none of them"
            )
        return missing

    def stand_in_bands(self, spec: SensorSpec) -> dict[str, str]:
        return {
            trained_band: band
            for trained in self.inputs.values()
            for trained_band, band in family.stand_ins(spec, trained).items()
        }

    def features(
        self, images: jax.Array, spec: SensorSpec, taps: Sequence[int] | None = None
    ) -> dict[str, Any]:
        gather, present = self._filled(spec)
        tokens = self.encoder.embed_patches(images[..., gather] * present)
        return self.vit_features(tokens, images.shape[1:3], taps)

    def reconstruct(self, images: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Predicted images for visualisation.

        With norm_pix_loss the prediction is mapped back with each input patch's own mean / std.

        Args:
          images: f32[B, H, W, C].
          rng: PRNG key for the masks.
        Returns:
          reconstruction: f32[B, H, W, C], the prediction for every patch, in input units.
          mask: f32[B, H, W], 1 on pixels of masked patches.
        """
        _, h, w, _ = images.shape
        p = self.cfg.encoder.patch_size
        grid_hw = (h // p, w // p)
        pred, mask = self._predict(images, rng)
        if self.cfg.norm_pix_loss:
            mean, std = norm_pix_stats(layers.patchify(images.astype(jnp.float32), p))
            pred = pred * std + mean
        pixel_mask = layers.unpatchify(jnp.repeat(mask[..., None], p * p, axis=-1), p, grid_hw)
        return layers.unpatchify(pred, p, grid_hw), pixel_mask[..., 0]


def mae_flops_per_example(cfg: MAEConfig, image_hw: tuple[int, int]) -> float:
    """Training (forward + backward) matmul FLOPs per example, for MFU.

    F = 3 * [ 2 L P D                          patch embedding of all L patches
              + n_enc * block(1 + K, D, M)      encoder on CLS + K kept tokens
              + 2 (1 + K) D Dd                  decoder embedding
              + n_dec * block(1 + L, Dd, Md)    decoder on CLS + L tokens
              + 2 L Dd P ]                      prediction head (CLS dropped first)
    with block(N, D, M) = 2N(4D^2 + 2DM) + 4N^2 D (`layers.block_flops`), P = p^2 C,
    M = mlp_ratio D, Md = mlp_ratio Dd, K = int(L (1 - mask_ratio)), 2 FLOPs per multiply-add
    and the backward pass counted as twice the forward.
    """
    enc = cfg.encoder
    p = enc.patch_size
    num_patches = (image_hw[0] // p) * (image_hw[1] // p)
    kept = cfg.num_kept(num_patches)
    patch_dim = p * p * enc.in_chans
    dec_mlp = int(cfg.decoder_dim * enc.mlp_ratio)
    forward = (
        vit_forward_flops(enc, 1 + kept, num_patches)
        + 2.0 * (1 + kept) * enc.embed_dim * cfg.decoder_dim
        + cfg.decoder_depth * layers.block_flops(1 + num_patches, cfg.decoder_dim, dec_mlp)
        + 2.0 * num_patches * cfg.decoder_dim * patch_dim
    )
    return 3.0 * forward


Model = MAE
