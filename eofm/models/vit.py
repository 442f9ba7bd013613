"""Plain ViT encoder with a CLS token and fixed sin-cos positions (MAE style).

Shapes: B batch, H x W image pixels, C channels, p patch side, L = (H/p)(W/p) patches, D width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from eofm.models import family, layers


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """ViT encoder hyper-parameters.

    Attributes:
      patch_size: p, side of a square patch in pixels.
      embed_dim: D, token width.
      depth: number of transformer blocks.
      num_heads: attention heads; must divide D.
      in_chans: C, image channels.
      mlp_ratio: MLP hidden width / D.
      qkv_bias: whether the q, k, v projections have a bias.
      ln_eps: LayerNorm epsilon.
      remat: rematerialisation of each block, a `layers.REMAT_POLICIES` name.
      scan_blocks: run the blocks as a scan over single blocks (`layers.run_stack`); same
        parameters and results, compile time independent of depth.
      dtype: compute (activation) dtype, e.g. jnp.bfloat16.
      param_dtype: parameter storage dtype.
    """

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    in_chans: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    remat: str = "none"
    scan_blocks: bool = False
    dtype: DTypeLike = jnp.float32
    param_dtype: DTypeLike = jnp.float32

    def __post_init__(self):
        layers.check_remat(self.remat)

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


class ViTEncoder(nnx.Module):
    """Patch embedding + fixed sin-cos positions, a learnable CLS token, pre-LN blocks, final LN."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs, patch_embed: nnx.Module | None = None):
        """`patch_embed` replaces the plain `layers.PatchEmbed` (e.g. a spectrum-aware tokenizer);
        it maps images [B, H, W, C] (plus its own keyword arguments) to [B, L, D]."""
        self.cfg = cfg
        kw = {"dtype": cfg.dtype, "param_dtype": cfg.param_dtype, "rngs": rngs}
        if patch_embed is None:
            patch_embed = layers.PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim, **kw)
        self.patch_embed = patch_embed
        cls_init = layers.logical(nnx.initializers.normal(0.02), (None, None, "embed"))
        self.cls_token = nnx.Param(cls_init(rngs.params(), (1, 1, cfg.embed_dim), cfg.param_dtype))
        self.blocks = layers.block_stack(
            cfg.depth,
            cfg.embed_dim,
            cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=cfg.qkv_bias,
            ln_eps=cfg.ln_eps,
            **kw,
        )
        self.norm = layers.layer_norm(cfg.embed_dim, eps=cfg.ln_eps, **kw)

    def embed_patches(self, images: jax.Array, **tokenizer_kwargs) -> jax.Array:
        """Patch tokens with positions added.  images f32[B, H, W, C] -> [B, L, D] in `dtype`."""
        p = self.cfg.patch_size
        x = self.patch_embed(images, **tokenizer_kwargs)
        pos = layers.posemb_sincos_2d(images.shape[1] // p, images.shape[2] // p, x.shape[-1])
        return x + jnp.asarray(pos, x.dtype)

    def encode_tokens(self, x: jax.Array) -> jax.Array:
        """Prepends CLS (position zero) and runs blocks + final LN.

        Args:
          x: [B, N, D] embedded tokens, positions included (any subset of `embed_patches`).
        Returns:
          [B, 1 + N, D] in `dtype`; index 0 is CLS.
        """
        cfg = self.cfg
        x = layers.run_stack(
            self.blocks, self._with_cls(x), remat=cfg.remat, scan_unit=int(cfg.scan_blocks)
        )
        return self.norm(x)

    def tapped_tokens(
        self, x: jax.Array, taps: Sequence[int], *, final_norm: bool = True
    ) -> list[jax.Array]:
        """`encode_tokens` stopped at blocks `taps`: one [B, 1 + N, D] per tap (CLS first); a tap
        of the last block gets the final LN unless `final_norm` is False. See
        `layers.tapped_blocks`."""
        norm = self.norm if final_norm else None
        return layers.tapped_blocks(self.blocks, self._with_cls(x), taps, norm)

    def _with_cls(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.cfg.dtype)
        cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        return jnp.concatenate([cls, x], axis=1)

    def __call__(self, images: jax.Array) -> jax.Array:
        """images f32[B, H, W, C] -> tokens [B, 1 + L, D] (CLS first)."""
        return self.encode_tokens(self.embed_patches(images))


class ViTFeatures:
    """The encoder side of the family protocol (`eofm.models.family`) for models whose encoder is
    the `ViTEncoder` at `self.encoder`: encoding parameters, LLRD layer ids, dense features."""

    ENCODING_PARAMS = ("encoder/",)

    @property
    def num_layers(self) -> int:
        return self.encoder.cfg.depth + 1

    def layer_of(self, path: str) -> int:
        """Embeddings (patch embedding, CLS) 0, encoder block i -> i + 1, the rest depth + 1."""
        embeddings = r"^encoder/(patch_embed|cls_token)(/|$)"
        return family.block_layer_of(self.encoder.cfg.depth, embeddings, "encoder/")(path)

    def vit_features(
        self,
        tokens: jax.Array,
        image_hw: tuple[int, int],
        taps: Sequence[int] | None,
        *,
        final_norm_on_levels: bool = True,
    ) -> dict[str, Any]:
        """Features of embedded patch tokens [B, L, D]: the final-LN CLS [B, D] and the tapped
        blocks on the patch grid [B, H/p, W/p, D] (stride p; default taps `family.default_taps`).
        A tap of the last block includes the final LN (the encoder output) unless
        `final_norm_on_levels` is False; the other taps are raw residual streams."""
        cfg = self.encoder.cfg
        taps = tuple(taps) if taps else family.default_taps(cfg.depth)
        out = self.encoder.tapped_tokens(
            tokens, (*taps, cfg.depth - 1), final_norm=final_norm_on_levels
        )
        cls = out[-1][:, 0]
        pooled = cls if final_norm_on_levels else self.encoder.norm(cls)
        grid = (image_hw[0] // cfg.patch_size, image_hw[1] // cfg.patch_size)
        return {"pooled": pooled, "levels": family.token_grids(out[:-1], grid, skip=1)}


def vit_forward_flops(cfg: ViTConfig, num_tokens: int, num_patches: int | None = None) -> float:
    """Forward matmul FLOPs of the encoder for one example (2 FLOPs per multiply-add).

    = 2 * P * p^2 C * D (patch embedding of P patches) + depth * `layers.block_flops`(N, D, M),
    with N = `num_tokens` (CLS included) and P = `num_patches` (default N - 1; MAE embeds all L
    patches but encodes only 1 + kept).
    """
    if num_patches is None:
        num_patches = num_tokens - 1
    patch_dim = cfg.patch_size**2 * cfg.in_chans
    embed = 2.0 * num_patches * patch_dim * cfg.embed_dim
    return embed + cfg.depth * layers.block_flops(num_tokens, cfg.embed_dim, cfg.mlp_dim)
