"""SwinV2 backbone: shifted-window cosine attention with a continuous position bias (SatVision-TOA).

Shapes: B batch, (H, W) a stage's token grid, C its width, M = window side, N = M * M tokens per
window, nW = (H / M) * (W / M) windows, h attention heads.

The encoder keeps tokens as grids [B, H, W, C] from the patch embedding on. Stage s (0-based) runs
at stride p * 2^s with width C * 2^s; every stage but the last ends with a patch merging. Window
geometry is worked out from the grid at call time, so one set of parameters serves any image size
whose stage grids tile into windows: a stage whose grid is no larger than the window uses one
window over the whole grid, unshifted, as the official SwinV2 does.

Numerics follow the official SwinV2 code: residual post-norm (x + LN(attn(x)), x + LN(mlp(x)))
with both LNs initialised to zero, an extra LN after every `extra_norm_period`-th block of a stage,
LN eps 1e-5, exact GELU, Linear kernels N(0, 0.02) (torch's `trunc_normal_(std=.02)` truncates at
+-2 absolute, i.e. +-100 std, so it is a plain normal), zero biases. A token of zeros (a patch of
fill) has no direction: its cosine attention uses x / max(||x||, eps), as torch's F.normalize.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from eofm.models import layers

MAX_LOGIT_SCALE = math.log(100.0)  # per-head cosine logit scale exp(tau) is at most 100
INIT_LOGIT_SCALE = math.log(10.0)
SHIFT_MASK_VALUE = -100.0  # logit bias between tokens from different regions of a shifted window
CPB_MAX_BIAS = 16.0  # the position bias is CPB_MAX_BIAS * sigmoid(cpb_mlp(coords))

_linear_kernel_init = nnx.initializers.normal(0.02)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SwinConfig:
    """SwinV2 encoder hyper-parameters.

    Attributes:
      embed_dim: C, width of the first stage; stage s has width C * 2^s.
      depths: blocks per stage.
      num_heads: attention heads per stage; each must divide its stage's width.
      window_size: M, side of an attention window in tokens (clamped per stage, see module doc).
      patch_size: p, side of the square patch embedding in pixels.
      in_chans: image channels.
      mlp_ratio: MLP hidden width / stage width.
      extra_norm_period: an extra LN follows blocks k * period (1-based) of every stage; 0: none.
      cpb_hidden: hidden width of the continuous position bias MLP.
      ln_eps: LayerNorm epsilon.
      drop_path_rate: stochastic depth of the last block; block i of n (over all stages) drops
        its residual branches with rate drop_path_rate * i / (n - 1).
      remat: rematerialisation of each block (or scanned unit), a `layers.REMAT_POLICIES` name.
      scan_blocks: run each stage's blocks as a scan over units of `scan_unit` blocks (stages
        with at least two units); same parameters and results, compile time independent of depth.
      dtype: compute (activation) dtype, e.g. jnp.bfloat16.
      param_dtype: parameter storage dtype.
    """

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int = 8
    patch_size: int = 4
    in_chans: int = 3
    mlp_ratio: float = 4.0
    extra_norm_period: int = 0
    cpb_hidden: int = 512
    ln_eps: float = 1e-5
    drop_path_rate: float = 0.0
    remat: str = "none"
    scan_blocks: bool = False
    dtype: DTypeLike = jnp.float32
    param_dtype: DTypeLike = jnp.float32

    def __post_init__(self):
        layers.check_remat(self.remat)
        if len(self.depths) != len(self.num_heads):
            raise ValueError(
                f"SwinConfig: depths {self.depths} and num_heads {self.num_heads} must have one "
                "entry per stage"
            )
        for s, (dim, heads) in enumerate(zip(self.stage_dims, self.num_heads)):
            if dim % heads:
                raise ValueError(
                    f"SwinConfig: stage {s} width {dim} is not divisible by num_heads[{s}]={heads}"
                )

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Width of each stage, C * 2^s."""
        return tuple(self.embed_dim * 2**s for s in range(len(self.depths)))

    @property
    def stage_strides(self) -> tuple[int, ...]:
        """Pixel stride of each stage's grid, p * 2^s."""
        return tuple(self.patch_size * 2**s for s in range(len(self.depths)))

    @property
    def scan_unit(self) -> int:
        """Blocks per scanned unit: alternate shifts and the extra-norm period repeat after
        lcm(2, extra_norm_period) blocks."""
        return math.lcm(2, self.extra_norm_period or 1)

    def drop_path_rates(self) -> list[float]:
        """Stochastic-depth rate of every block, over all stages in order."""
        n = sum(self.depths)
        return [self.drop_path_rate * i / max(n - 1, 1) for i in range(n)]


# ---- Window geometry (static numpy, cached) -----------------------------------------------------


@functools.lru_cache(maxsize=64)
def cpb_coords_table(window: int) -> np.ndarray:
    """Log-spaced relative coordinates fed to the position-bias MLP.  -> f32 [2M-1, 2M-1, 2].

    Entry [i, j] is (f(i - (M-1)), f(j - (M-1))): the row and column offsets in [-(M-1), M-1],
    divided by M-1, times 8, then f(x) = sign(x) * log2(|x| + 1) / log2(8). A one-token window
    (M = 1, where the official code divides 0 by 0) gives the single offset 0.
    """
    offsets = np.arange(-(window - 1), window, dtype=np.float64) / max(window - 1, 1) * 8.0
    logs = np.sign(offsets) * np.log2(np.abs(offsets) + 1.0) / np.log2(8.0)
    rows, cols = np.meshgrid(logs, logs, indexing="ij")
    table = np.stack([rows, cols], axis=-1).astype(np.float32)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=64)
def relative_position_index(window: int) -> np.ndarray:
    """Row of `cpb_coords_table` (flattened) for each query/key pair of a window.  -> i32 [N, N].

    Tokens are numbered row-major; pair (q, k) with offset (dr, dc) = pos_q - pos_k reads row
    (dr + M - 1) * (2M - 1) + (dc + M - 1).
    """
    rows, cols = np.divmod(np.arange(window * window), window)
    dr = rows[:, None] - rows[None, :] + window - 1
    dc = cols[:, None] - cols[None, :] + window - 1
    index = (dr * (2 * window - 1) + dc).astype(np.int32)
    index.flags.writeable = False
    return index


def stage_window(grid_hw: tuple[int, int], window: int, shift: int) -> tuple[int, int]:
    """(window, shift) a block uses on `grid_hw`: a grid no larger than the window (its shorter
    side <= `window`) gets one window of that side and no shift; otherwise they are unchanged.
    Raises if the grid does not tile into windows."""
    if min(grid_hw) <= window:
        window, shift = min(grid_hw), 0
    if grid_hw[0] % window or grid_hw[1] % window:
        raise ValueError(
            f"token grid {grid_hw} does not tile into {window}x{window} windows; choose an image "
            "size whose stage grids are multiples of the window size"
        )
    return window, shift


def window_partition(x: jax.Array, window: int) -> jax.Array:
    """Cuts grids into windows.  [B, H, W, C] -> [B, nW, N, C].

    Windows run row-major over the grid, tokens row-major inside a window.
    """
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // window) * (w // window), window * window, c)


def window_reverse(windows: jax.Array, window: int, grid_hw: tuple[int, int]) -> jax.Array:
    """Inverse of `window_partition`.  [B, nW, N, C] -> [B, H, W, C] with (H, W) = `grid_hw`."""
    b, _, _, c = windows.shape
    h, w = grid_hw
    x = windows.reshape(b, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


@functools.lru_cache(maxsize=64)
def shift_attention_mask(grid_hw: tuple[int, int], window: int, shift: int) -> np.ndarray:
    """Logit bias of shifted windows.  -> f32 [nW, N, N], 0 or `SHIFT_MASK_VALUE`.

    After the grid is rolled by (-shift, -shift), each axis splits into [0, n - M), [n - M, n - s)
    and [n - s, n); windows over the seams mix tokens from regions that are not neighbours in the
    image, and a query may attend only to keys of its own region.
    """
    h, w = grid_hw

    def bands(n: int) -> np.ndarray:  # region of each coordinate along one axis
        return np.digitize(np.arange(n), [n - window, n - shift])

    regions = bands(h)[:, None] * 3 + bands(w)[None, :]
    region_windows = window_partition(regions[None, :, :, None], window)[0, :, :, 0]  # [nW, N]
    differs = region_windows[:, :, None] != region_windows[:, None, :]
    mask = np.where(differs, SHIFT_MASK_VALUE, 0.0).astype(np.float32)
    mask.flags.writeable = False
    return mask


def merge_subgrids(x: jax.Array) -> jax.Array:
    """Stacks each 2x2 neighbourhood along channels.  [B, H, W, C] -> [B, H/2, W/2, 4C].

    Channel blocks in the official order: (even row, even col), (odd, even), (even, odd),
    (odd, odd).
    """
    h, w = x.shape[1:3]
    if h % 2 or w % 2:
        raise ValueError(f"patch merging needs an even token grid, got {h}x{w}")
    subgrids = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
    return jnp.concatenate(subgrids, axis=-1)


# ---- Modules ------------------------------------------------------------------------------------


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) over the last axis (torch F.normalize), computed in float32.

    The norm is sqrt(max(||x||^2, eps^2)): the same values, and finite gradients (those of torch)
    for an all-zero x, e.g. the token of a patch of fill pixels, where d sqrt / d 0 is infinite."""
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.maximum(jnp.sum(x32 * x32, axis=-1, keepdims=True), eps * eps))
    return (x32 / norm).astype(x.dtype)


class WindowAttention(nnx.Module):
    """Cosine self-attention inside windows with a continuous position bias.

    logits = cos(q, k) * exp(min(tau_h, ln 100)) + 16 * sigmoid(cpb_mlp(coords))[h, q, k] (+ mask),
    softmax in float32. q and v carry learned biases, k none; the q/k/v kernel is fused [C, 3, C].
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        cpb_hidden: int = 512,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.num_heads = num_heads
        self.qkv = layers.qkv_projection(
            dim,
            use_bias=False,
            kernel_init=_linear_kernel_init,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        zeros = layers.logical(nnx.initializers.zeros_init(), ("heads",))
        self.q_bias = nnx.Param(zeros(rngs.params(), (dim,), param_dtype))
        self.v_bias = nnx.Param(zeros(rngs.params(), (dim,), param_dtype))
        scale = layers.logical(nnx.initializers.constant(INIT_LOGIT_SCALE), (None,))
        self.logit_scale = nnx.Param(scale(rngs.params(), (num_heads,), param_dtype))
        # The bias MLP is tiny and feeds a sigmoid: it runs in float32 whatever `dtype` is.
        cpb = {
            "kernel_init": _linear_kernel_init,
            "dtype": jnp.float32,
            "param_dtype": param_dtype,
            "rngs": rngs,
        }
        self.cpb_fc1 = layers.linear(2, cpb_hidden, (None, None), **cpb)
        self.cpb_fc2 = layers.linear(cpb_hidden, num_heads, (None, None), use_bias=False, **cpb)
        self.proj = layers.linear(
            dim,
            dim,
            ("heads", "embed"),
            kernel_init=_linear_kernel_init,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def position_bias(self, window: int) -> jax.Array:
        """16 * sigmoid(CPB) for an M x M window.  -> f32 [h, N, N]."""
        table = jnp.asarray(cpb_coords_table(window)).reshape(-1, 2)
        per_offset = self.cpb_fc2(jax.nn.relu(self.cpb_fc1(table)))  # [(2M-1)^2, h]
        bias = per_offset[jnp.asarray(relative_position_index(window))]  # [N, N, h]
        return CPB_MAX_BIAS * jax.nn.sigmoid(bias.transpose(2, 0, 1))

    def __call__(self, x: jax.Array, window: int, mask: np.ndarray | None = None) -> jax.Array:
        """Args: x [B, nW, N, C] windows of side `window`; mask f32 [nW, N, N] or None.
        Returns [B, nW, N, C]."""
        b, nw, n, c = x.shape
        bias = jnp.stack([self.q_bias[...], jnp.zeros_like(self.v_bias[...]), self.v_bias[...]])
        qkv = self.qkv(x) + bias.astype(x.dtype)  # [B, nW, N, 3, C]
        qkv = qkv.reshape(b, nw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = (
            _l2_normalize(qkv[..., 0, :, :]),
            _l2_normalize(qkv[..., 1, :, :]),
            qkv[..., 2, :, :],
        )
        cosine = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k, preferred_element_type=jnp.float32)
        scale = jnp.exp(jnp.minimum(self.logit_scale[...].astype(jnp.float32), MAX_LOGIT_SCALE))
        logits = cosine * scale[:, None, None] + self.position_bias(window)
        if mask is not None:
            logits = logits + jnp.asarray(mask)[:, None]
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bwhqk,bwkhd->bwqhd", weights, v)
        return self.proj(out.reshape(b, nw, n, c))


class SwinBlock(nnx.Module):
    """Residual post-norm SwinV2 block on a grid.  [B, H, W, C] -> [B, H, W, C].

    x = x + LN1(attn(x)); x = x + LN2(mlp(x)); then LN3(x) if `extra_norm`. Attention runs in
    M x M windows, cyclically shifted by M // 2 when `shifted` (see `stage_window` for the clamp).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        window_size: int,
        shifted: bool,
        extra_norm: bool = False,
        mlp_ratio: float = 4.0,
        cpb_hidden: int = 512,
        ln_eps: float = 1e-5,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.window_size = window_size
        self.shift_size = window_size // 2 if shifted else 0
        self.attn = WindowAttention(dim, num_heads, cpb_hidden=cpb_hidden, **kw)
        self.norm1 = layers.layer_norm(dim, eps=ln_eps, zero_init=True, **kw)
        self.mlp = layers.Mlp(dim, int(dim * mlp_ratio), kernel_init=_linear_kernel_init, **kw)
        self.norm2 = layers.layer_norm(dim, eps=ln_eps, zero_init=True, **kw)
        self.norm3 = layers.layer_norm(dim, eps=ln_eps, **kw) if extra_norm else None

    def attend(self, x: jax.Array) -> jax.Array:
        """(Shifted-)window attention over the grid.  [B, H, W, C] -> [B, H, W, C]."""
        grid = x.shape[1:3]
        window, shift = stage_window(grid, self.window_size, self.shift_size)
        if shift:
            x = jnp.roll(x, (-shift, -shift), axis=(1, 2))
        mask = shift_attention_mask(grid, window, shift) if shift else None
        x = window_reverse(self.attn(window_partition(x, window), window, mask), window, grid)
        return jnp.roll(x, (shift, shift), axis=(1, 2)) if shift else x

    def __call__(
        self, x: jax.Array, drop_rate: jax.Array | float = 0.0, rng: jax.Array | None = None
    ) -> jax.Array:
        """Args: x [B, H, W, C]; drop_rate and rng: stochastic depth of both residual branches
        (`layers.drop_path`; rng None: none)."""
        rngs = (None, None) if rng is None else tuple(jax.random.split(rng))
        x = x + layers.drop_path(self.norm1(self.attend(x)), drop_rate, rngs[0])
        x = x + layers.drop_path(self.norm2(self.mlp(x)), drop_rate, rngs[1])
        return self.norm3(x) if self.norm3 is not None else x


class PatchMerging(nnx.Module):
    """`merge_subgrids`, Linear(4C -> 2C, no bias), LN(2C).  [B, H, W, C] -> [B, H/2, W/2, 2C]."""

    def __init__(
        self,
        dim: int,
        *,
        ln_eps: float = 1e-5,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.reduction = layers.linear(
            4 * dim,
            2 * dim,
            (None, "embed"),
            use_bias=False,
            kernel_init=_linear_kernel_init,
            **kw,
        )
        self.norm = layers.layer_norm(2 * dim, eps=ln_eps, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.reduction(merge_subgrids(x)))


class SwinStage(nnx.Module):
    """The blocks of one stage (alternately unshifted and shifted) and, unless it is the last
    stage, the patch merging that feeds the next one."""

    def __init__(self, cfg: SwinConfig, stage: int, *, rngs: nnx.Rngs):
        dim, period = cfg.stage_dims[stage], cfg.extra_norm_period
        self.first_block = sum(cfg.depths[:stage])
        self.drop_rates = tuple(
            cfg.drop_path_rates()[self.first_block : self.first_block + cfg.depths[stage]]
        )
        self.remat = cfg.remat
        self.scan_unit = cfg.scan_unit if cfg.scan_blocks else 0
        kw = {"dtype": cfg.dtype, "param_dtype": cfg.param_dtype, "rngs": rngs}
        self.blocks = nnx.List(
            [
                SwinBlock(
                    dim,
                    cfg.num_heads[stage],
                    window_size=cfg.window_size,
                    shifted=i % 2 == 1,
                    extra_norm=period > 0 and (i + 1) % period == 0,
                    mlp_ratio=cfg.mlp_ratio,
                    cpb_hidden=cfg.cpb_hidden,
                    ln_eps=cfg.ln_eps,
                    **kw,
                )
                for i in range(cfg.depths[stage])
            ]
        )
        last = stage == len(cfg.depths) - 1
        self.downsample = None if last else PatchMerging(dim, ln_eps=cfg.ln_eps, **kw)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """The stage's blocks (not the downsampling).  [B, H, W, C] -> [B, H, W, C].

        rng: stochastic-depth key of the whole encoder (block i uses fold_in(rng, i)); None: no
        stochastic depth."""
        args = [
            (rate, None if rng is None else jax.random.fold_in(rng, self.first_block + i))
            for i, rate in enumerate(self.drop_rates)
        ]
        return layers.run_stack(
            list(self.blocks), x, args, remat=self.remat, scan_unit=self.scan_unit
        )


class SwinEncoder(nnx.Module):
    """SwinV2 encoder: patch embedding + LN, stages of SwinV2 blocks with patch merging, final LN.

    `embed` and `encode` split the forward pass where SimMIM swaps masked tokens for a mask token.
    """

    def __init__(self, cfg: SwinConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = {"dtype": cfg.dtype, "param_dtype": cfg.param_dtype, "rngs": rngs}
        self.patch_embed = layers.PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim, **kw)
        self.patch_norm = layers.layer_norm(cfg.embed_dim, eps=cfg.ln_eps, **kw)
        self.stages = nnx.List([SwinStage(cfg, s, rngs=rngs) for s in range(len(cfg.depths))])
        self.norm = layers.layer_norm(cfg.stage_dims[-1], eps=cfg.ln_eps, **kw)

    def embed(self, images: jax.Array) -> jax.Array:
        """Patch tokens after the embedding's LN.  images f32[B, H, W, in_chans] -> [B, H/p, W/p, C]
        in `dtype` (a p x p, stride p convolution whose kernel rows follow `layers.patchify`)."""
        b, h, w, _ = images.shape
        p = self.cfg.patch_size
        tokens = self.patch_embed(images)
        return self.patch_norm(tokens.reshape(b, h // p, w // p, tokens.shape[-1]))

    def encode(self, x: jax.Array, rng: jax.Array | None = None) -> list[jax.Array]:
        """Stage outputs of an embedded grid.

        Args:
          x: [B, h, w, C] from `embed` (possibly with masked tokens replaced).
          rng: stochastic-depth key (training); None: deterministic.
        Returns:
          one grid per stage s, [B, h / 2^s, w / 2^s, C * 2^s] (stride p * 2^s), taken after its
          blocks and before its patch merging; the last one has the final LN.
        """
        outputs = []
        for stage in self.stages:
            x = stage(x, rng)
            outputs.append(x)
            if stage.downsample is not None:
                x = stage.downsample(x)
        outputs[-1] = self.norm(outputs[-1])
        return outputs

    def __call__(self, images: jax.Array) -> list[jax.Array]:
        """images f32[B, H, W, in_chans] -> the stage grids of `encode`."""
        return self.encode(self.embed(images))


def swin_forward_flops(cfg: SwinConfig, image_hw: tuple[int, int]) -> float:
    """Forward matmul FLOPs of the encoder for one image (2 FLOPs per multiply-add).

    Patch embedding 2 L p^2 C_in C; per block, `layers.block_flops` of one window times the number
    of windows, plus the position-bias MLP over its (2M-1)^2 offsets; per merging 2 (L/4) 4C 2C.
    Norms, softmax, GELU and the mask are not counted.
    """
    grid = (image_hw[0] // cfg.patch_size, image_hw[1] // cfg.patch_size)
    flops = 2.0 * grid[0] * grid[1] * cfg.patch_size**2 * cfg.in_chans * cfg.embed_dim
    for s, (dim, depth, heads) in enumerate(zip(cfg.stage_dims, cfg.depths, cfg.num_heads)):
        window, _ = stage_window(grid, cfg.window_size, 0)
        num_windows = (grid[0] // window) * (grid[1] // window)
        attn_mlp = num_windows * layers.block_flops(window**2, dim, int(dim * cfg.mlp_ratio))
        cpb = 2.0 * (2 * window - 1) ** 2 * cfg.cpb_hidden * (2 + heads)
        flops += depth * (attn_mlp + cpb)
        if s < len(cfg.depths) - 1:
            grid = (grid[0] // 2, grid[1] // 2)
            flops += 2.0 * grid[0] * grid[1] * 4 * dim * 2 * dim
    return flops
