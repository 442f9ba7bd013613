"""SMARTIES (Sumbul et al., ICCV 2025): a spectrum-aware multi-sensor masked autoencoder.

Any band of any sensor in `eofm.sensors` is embedded by the spectral-range projections of
`eofm.models.spectral` (`SpectralPatchEmbed`), so one ViT encodes Sentinel-2, Sentinel-1, RGB and
sensors it never saw (Landsat, NAIP, MODIS), with any band subset.

Pretraining on a pair of co-registered views (S2 + S1, RGB + S2):
  1. tokenise both (positions added), T1 and T2 [B, L, D];
  2. cross-sensor token mixup: per example, a random half of the positions of view M1 comes from
     T1 and the rest from T2, and M2 is the COMPLEMENT (the paper's intent; the official torch code
     reuses a variable so that M2 equals the unmixed T2: `official_mixup_bug=True` reproduces it);
     targets and band slots travel with their tokens;
  3. one random mask (75 %) shared by both views; the encoder sees the kept tokens of each view;
  4. the MAE decoder, then for each token the heads of its 12 band slots predict 12 x p*p pixels;
  5. loss: MSE against the norm-pix targets (per token over its 12 x p*p values, ddof=1, eps 1e-6)
     averaged over masked tokens (denominator + 1e-6), L = (L_M1 + L_M2) / 2.
A single view is plain spectral MAE (L = L_M1).

Band slots: an image's (non-dropped) bands are tiled to `max_bands` = 12 slots (RGB x4, S1 x6,
S2 x1); the token embedding is `max_bands * mean` over bands, so tiling does not change it.
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
from eofm.models import layers, spectral
from eofm.models import mae as mae_lib
from eofm.models.mae import NORM_PIX_EPS, MAEConfig, MAEDecoder, norm_pix_stats, random_masking
from eofm.models.tokenizers import SpectralPatchEmbed, band_patches
from eofm.models.vit import ViTEncoder, ViTFeatures, vit_forward_flops

LOSS_EPS = 1e-6


@dataclasses.dataclass(frozen=True, kw_only=True)
class SmartiesConfig(MAEConfig):
    """SMARTIES hyper-parameters: the MAE's (`in_chans` unused: the tokenizer takes any bands) and

    Attributes:
      num_ranges: spectral-range projections (17 in the released weights).
      max_bands: C_max, band slots per token (12).
      mixup_ratio: fraction of M1's positions taken from the first view.
      official_mixup_bug: M2 = unmixed second view, as the official code does.
      blend: how bands of unseen sensors blend two ranges: "nearer" (inverse distance) or
        "official" (the official configuration: its blended ranges for Landsat-8 B2 and B10, and
        weights that grow with distance); see `eofm.models.spectral`.
    """

    num_ranges: int = spectral.NUM_RANGES
    max_bands: int = 12
    mixup_ratio: float = 0.5
    official_mixup_bug: bool = False
    blend: str = "nearer"


Config = SmartiesConfig
# The MAE's ViT sizes (patch 16, 512-wide 8-block decoder) with 17 per-range heads.
VARIANTS = mae_lib.VARIANTS
DATA_FIELDS = ("in_chans",)


def from_data(inputs: Mapping[str, SensorSpec], image_size: int) -> dict[str, int]:
    """One sensor, or a pair of co-registered views (`Smarties` checks that each has a band the
    spectral ranges cover)."""
    del image_size
    if len(inputs) not in (1, 2):
        raise ValueError(f"SMARTIES pretrains on one sensor or a pair, got {list(inputs)}")
    return {"in_chans": 0}


@dataclasses.dataclass(frozen=True)
class View:
    """Static description of one input image: its band projections and band-slot layout."""

    weights: np.ndarray  # [C, R] projection weights of the image's bands
    slot_bands: np.ndarray  # int [max_bands]: channel of the image in each slot
    slot_weights: np.ndarray  # [max_bands, R]: head weights of each slot

    @classmethod
    def of(cls, spec: SensorSpec, cfg: SmartiesConfig) -> View:
        weights = spectral.projection_matrix(
            spectral.assign_sensor(spec.sensor, spec.bands, blend=cfg.blend), cfg.num_ranges
        )
        active = np.flatnonzero(weights.sum(-1) > 0)
        if active.size == 0:
            raise ValueError(f"{spec.sensor} bands {spec.bands} have no spectral projection")
        slots = np.resize(active, cfg.max_bands)
        return cls(weights, slots, weights[slots])


class Smarties(ViTFeatures, nnx.Module):
    """Spectrum-aware ViT encoder + MAE decoder + one pixel head per spectral range."""

    feature_definition: str = (
        "`pooled`: the CLS token after the final LayerNorm (the official kNN and linear-probe"
        " feature). `levels`: the patch tokens of the tapped blocks on the patch grid (stride p),"
        " all before the final LayerNorm, as the official `all_tokens=True` output."
    )

    def __init__(self, cfg: SmartiesConfig, inputs: Mapping[str, SensorSpec], *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.inputs = dict(inputs)
        for spec in self.inputs.values():
            View.of(spec, cfg)  # raises when no band has a spectral projection
        enc = cfg.encoder
        kw = dict(dtype=enc.dtype, param_dtype=enc.param_dtype, rngs=rngs)
        tokenizer = SpectralPatchEmbed(
            enc.patch_size, cfg.num_ranges, enc.embed_dim, max_bands=cfg.max_bands, **kw
        )
        self.encoder = ViTEncoder(enc, rngs=rngs, patch_embed=tokenizer)
        self.decoder = MAEDecoder(cfg, rngs=rngs)
        pp = enc.patch_size**2
        head_init = layers.logical(
            nnx.initializers.xavier_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,)),
            (None, "embed", "patch"),
        )
        self.head_kernel = nnx.Param(
            head_init(rngs.params(), (cfg.num_ranges, cfg.decoder_dim, pp), enc.param_dtype)
        )
        self.head_bias = nnx.Param(
            layers.logical(nnx.initializers.zeros, (None, "patch"))(
                rngs.params(), (cfg.num_ranges, pp), enc.param_dtype
            )
        )

    # ---- encoding -------------------------------------------------------------------------

    def encode(self, images: jax.Array, view: View) -> tuple[jax.Array, jax.Array]:
        """All patches of one image.  [B, H, W, C] -> (tokens [B, L, D], pooled CLS [B, D]).

        The released model's encoder output (what the weight importer is checked against).
        """
        tokens = self.encoder.encode_tokens(
            self.encoder.embed_patches(images, weights=view.weights)
        )
        return tokens[:, 1:], tokens[:, 0]

    def features(
        self, images: jax.Array, spec: SensorSpec, taps: Sequence[int] | None = None
    ) -> dict[str, Any]:
        """See `feature_definition`."""
        tokens = self.encoder.embed_patches(images, weights=View.of(spec, self.cfg).weights)
        return self.vit_features(tokens, images.shape[1:3], taps, final_norm_on_levels=False)

    def missing_bands(self, spec: SensorSpec) -> tuple[str, ...]:
        View.of(spec, self.cfg)  # raises when no band has a spectral projection
        return ()

    # ---- pretraining ----------------------------------------------------------------------

    def loss(self, batch: Mapping[str, jax.Array], rng: jax.Array):
        views = [View.of(spec, self.cfg) for spec in self.inputs.values()]
        return self([batch[k] for k in self.inputs], views, rng=rng)

    def flops_per_example(self, image_size: int) -> float:
        return smarties_flops_per_example(self.cfg, (image_size, image_size), len(self.inputs))

    def _targets(self, images: jax.Array, view: View) -> jax.Array:
        """Per-token pixels of the band slots.  -> f32[B, L, max_bands * p*p]."""
        x = band_patches(images.astype(jnp.float32), self.cfg.encoder.patch_size)
        x = x[:, :, view.slot_bands]
        return x.reshape(*x.shape[:2], -1)

    def _predict(self, features: jax.Array, slot_weights: jax.Array) -> jax.Array:
        """Slot predictions from decoder features.  [B, L, Dd], [B, L, S, R] -> f32[B, L, S*p*p]."""
        per_range = (
            jnp.einsum(
                "bld,rdp->blrp",
                features.astype(jnp.float32),
                self.head_kernel[...].astype(jnp.float32),
            )
            + self.head_bias[...]
        )
        pred = jnp.einsum("blsr,blrp->blsp", slot_weights, per_range)
        return pred.reshape(*pred.shape[:2], -1)

    def _view_loss(self, tokens, targets, slot_weights, ids_keep, ids_restore, mask, grid_hw):
        latent = self.encoder.encode_tokens(jnp.take_along_axis(tokens, ids_keep[..., None], 1))
        pred = self._predict(self.decoder(latent, ids_restore, grid_hw), slot_weights)
        if self.cfg.norm_pix_loss:
            mean, std = norm_pix_stats(targets, NORM_PIX_EPS)
            targets = (targets - mean) / std
        per_token = jnp.mean(jnp.square(pred - targets), axis=-1)
        return jnp.sum(per_token * mask) / (jnp.sum(mask) + LOSS_EPS)

    def __call__(
        self, images: Sequence[jax.Array], views: Sequence[View], *, rng: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Pretraining loss on one view or a co-registered pair of views.

        Args:
          images: one or two f32[B, H, W, C_v] images of the same size (normalised).
          views: their static `View`s.
          rng: PRNG key for the mixup permutation and the shared mask.
        Returns:
          (loss f32[], {"loss_view1", "loss_view2" when paired}).
        """
        if len(images) not in (1, 2) or len(images) != len(views):
            raise ValueError(
                f"SMARTIES takes one view or a pair, got {len(images)} images and"
                f" {len(views)} views"
            )
        p = self.cfg.encoder.patch_size
        b, h, w, _ = images[0].shape
        grid_hw = (h // p, w // p)
        num_patches = grid_hw[0] * grid_hw[1]
        mix_rng, mask_rng = jax.random.split(rng)
        tokens = [self.encoder.embed_patches(x, weights=v.weights) for x, v in zip(images, views)]
        targets = [self._targets(x, v) for x, v in zip(images, views)]
        slots = [
            jnp.broadcast_to(jnp.asarray(v.slot_weights), (b, num_patches, *v.slot_weights.shape))
            for v in views
        ]
        ids_keep, mask, ids_restore = random_masking(
            mask_rng, b, num_patches, self.cfg.num_kept(num_patches)
        )
        views_data = [(t, y, s) for t, y, s in zip(tokens, targets, slots)]
        if len(images) == 2:
            if images[1].shape[:3] != images[0].shape[:3]:
                raise ValueError(
                    f"paired views differ in size: {images[0].shape[:3]} vs {images[1].shape[:3]}"
                )
            first = mixup_selection(mix_rng, b, num_patches, self.cfg.mixup_ratio)
            one, two = views_data
            mixed_one = tuple(_where_tokens(first, x, y) for x, y in zip(one, two))
            if self.cfg.official_mixup_bug:
                mixed_two = two
            else:
                mixed_two = tuple(_where_tokens(~first, x, y) for x, y in zip(one, two))
            views_data = [mixed_one, mixed_two]
        losses = [
            self._view_loss(t, y, s, ids_keep, ids_restore, mask, grid_hw) for t, y, s in views_data
        ]
        aux = {f"loss_view{i + 1}": l for i, l in enumerate(losses)}
        return sum(losses) / len(losses), aux


def _where_tokens(select: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """Per token, `a` where select [B, L] is True else `b` ([B, L, ...] arrays)."""
    return jnp.where(select.reshape(*select.shape, *(1,) * (a.ndim - 2)), a, b)


def mixup_selection(rng: jax.Array, batch: int, num_patches: int, ratio: float) -> jax.Array:
    """bool [B, L]: True where view M1 takes the first image's token; exactly int(L * ratio)
    positions per example, chosen by a random permutation."""
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(rng, (batch, num_patches)), axis=1), axis=1)
    return ranks < int(num_patches * ratio)


def smarties_flops_per_example(
    cfg: SmartiesConfig, image_hw: tuple[int, int], num_views: int
) -> float:
    """Training FLOPs per example (3 x forward, 2 FLOPs per multiply-add), per view:
    tokenizer 2 L C_max p^2 D (the mean over bands costs C_max projections), encoder on 1 + K,
    decoder as MAE's, heads 2 L Dd R p^2 plus the slot mix 2 L C_max R p^2."""
    enc, mae = cfg.encoder, cfg
    p = enc.patch_size
    num_patches = (image_hw[0] // p) * (image_hw[1] // p)
    kept = mae.num_kept(num_patches)
    pp = p * p
    dec_mlp = int(mae.decoder_dim * enc.mlp_ratio)
    forward = (
        2.0 * num_patches * cfg.max_bands * pp * enc.embed_dim
        + vit_forward_flops(enc, 1 + kept, 0)
        + 2.0 * (1 + kept) * enc.embed_dim * mae.decoder_dim
        + mae.decoder_depth * layers.block_flops(1 + num_patches, mae.decoder_dim, dec_mlp)
        + 2.0 * num_patches * mae.decoder_dim * cfg.num_ranges * pp
        + 2.0 * num_patches * cfg.max_bands * cfg.num_ranges * pp
    )
    return 3.0 * num_views * forward


Model = Smarties
