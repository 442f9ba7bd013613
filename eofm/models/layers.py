"""Transformer building blocks shared by every model family.

Shapes: B batch, L (or N) tokens, D model width, H heads, p patch side, C channels.

Every parameter carries logical sharding names (see `nnx.with_partitioning`), drawn only from
`LOGICAL_AXES`; the training engine maps them onto a device mesh:
  "embed"  model width D (also the decoder width),
  "mlp"    MLP hidden width,
  "heads"  the fused heads * head_dim width of the attention projections,
  "patch"  a flattened patch p * p * C.
A name appears at most once per parameter, so a D -> D' projection names only one side. The
names are metadata only (no eager sharding), so models build outside a mesh too.

Initialisation follows MAE: xavier-uniform Linear kernels, zero biases, LayerNorm ones / zeros.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from eofm import parallel
from eofm.models import attention

LOGICAL_AXES = ("embed", "mlp", "heads", "patch")
Axis = str | None

_xavier_uniform = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()
_ones = nnx.initializers.ones_init()


def logical(initializer: nnx.Initializer, axes: tuple[Axis, ...]) -> nnx.Initializer:
    """`initializer` whose Params carry the logical sharding names `axes` (one per dim)."""
    return nnx.with_partitioning(initializer, axes, eager_sharding=False)


def linear(
    in_features: int,
    out_features: int,
    axes: tuple[Axis, Axis],
    *,
    use_bias: bool = True,
    kernel_init: nnx.Initializer = _xavier_uniform,
    dtype: DTypeLike = jnp.float32,
    param_dtype: DTypeLike = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """`nnx.Linear` with a `kernel_init` (default xavier-uniform) kernel, zero bias and logical
    names `axes` (in, out)."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=logical(kernel_init, axes),
        bias_init=logical(_zeros, (axes[1],)),
        rngs=rngs,
    )


def layer_norm(
    dim: int,
    *,
    eps: float = 1e-6,
    zero_init: bool = False,
    dtype: DTypeLike = jnp.float32,
    param_dtype: DTypeLike = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.LayerNorm:
    """LayerNorm over the last axis (width `dim`, logical name "embed"); statistics in float32.

    Uses the two-pass variance E[(x - E x)^2], as torch does. Scale 1 and bias 0, or both 0 with
    `zero_init` (a residual branch that starts switched off, as in SwinV2's post-norm).
    """
    return nnx.LayerNorm(
        dim,
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        use_fast_variance=False,
        scale_init=logical(_zeros if zero_init else _ones, ("embed",)),
        bias_init=logical(_zeros, ("embed",)),
        rngs=rngs,
    )


class Mlp(nnx.Module):
    """Linear(D -> hidden) -> exact (erf) GELU -> Linear(hidden -> D).  [..., D] -> [..., D].

    Kernels from `kernel_init` (default xavier-uniform), zero biases."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        *,
        kernel_init: nnx.Initializer = _xavier_uniform,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = {"kernel_init": kernel_init, "dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.fc1 = linear(dim, hidden_dim, ("embed", "mlp"), **kw)
        self.fc2 = linear(hidden_dim, dim, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


def qkv_projection(
    dim: int,
    *,
    parts: int = 3,
    use_bias: bool = True,
    kernel_init: nnx.Initializer = _xavier_uniform,
    dtype: DTypeLike = jnp.float32,
    param_dtype: DTypeLike = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.LinearGeneral:
    """The fused q, k, v projection [B, ..., D] -> [B, ..., 3, D]: kernel [D, 3, D] (logical names
    "embed", None, "heads", so that sharding "heads" splits q, k and v alike), bias [3, D].
    Under the default xavier-uniform its fan-in is D and fan-out 3D, as a fused torch
    Linear(D, 3D). `parts` = 2 gives the fused k, v projection of cross-attention."""
    return nnx.LinearGeneral(
        dim,
        (parts, dim),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=logical(kernel_init, ("embed", None, "heads")),
        bias_init=logical(_zeros, (None, "heads")),
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Multi-head self-attention.  [B, L, D] -> [B, L, D].

    q, k and v come from one fused kernel [D, 3, D] (logical names "embed", None, "heads"), so
    that sharding "heads" splits q, k and v alike. Logits are scaled by 1/sqrt(D/H) and the
    softmax runs in float32. `attention_impl` is one of `attention.IMPLEMENTATIONS` (default
    "auto": chosen per backend and sequence length); it adds no parameters.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        attention_impl: str = "auto",
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        attention.check_implementation(attention_impl)
        self.num_heads = num_heads
        self.attention_impl = attention_impl
        self.qkv = qkv_projection(
            dim, use_bias=qkv_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.proj = linear(
            dim, dim, ("heads", "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array, attn_bias: jax.Array | None = None) -> jax.Array:
        """Args: x [B, L, D]; attn_bias: additive logit bias [B or 1, H, L, L] (e.g. ALiBi)."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        out = attention.dot_product_attention(  # [B, L, H, D/H]
            q, k, v, bias=attn_bias, implementation=self.attention_impl
        )
        return self.proj(out.reshape(b, n, d))


class Block(nnx.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x)).  [B, L, D] -> [B, L, D]."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        ln_eps: float = 1e-6,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.norm1 = layer_norm(dim, eps=ln_eps, **kw)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, **kw)
        self.norm2 = layer_norm(dim, eps=ln_eps, **kw)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **kw)

    def __call__(self, x: jax.Array, attn_bias: jax.Array | None = None) -> jax.Array:
        """Args: x [B, L, D]; attn_bias: optional [B or 1, H, L, L], see `Attention`."""
        x = x + self.attn(self.norm1(x), attn_bias)
        return x + self.mlp(self.norm2(x))


def block_stack(depth: int, dim: int, num_heads: int, **block_kwargs) -> nnx.List:
    """`depth` transformer `Block`s of width `dim`, as an nnx.List (parameters blocks/0, ...)."""
    return nnx.List([Block(dim, num_heads, **block_kwargs) for _ in range(depth)])


def tapped_blocks(
    blocks: Sequence[nnx.Module],
    x: jax.Array,
    taps: Sequence[int],
    final_norm: Callable[[jax.Array], jax.Array] | None,
    *block_args,
) -> list[jax.Array]:
    """Outputs of blocks `taps` (0-based, any order, repeats allowed), for dense heads.

    Runs the blocks up to the deepest tap; the output of the last block of the stack gets
    `final_norm` (so that tap equals the encoder's output; None: it stays raw), the others are raw
    residual streams.
    Args: x [B, L, D]; block_args are passed to every block (e.g. an attention bias).
    Returns: one [B, L, D] per tap, in `taps` order. As in `run_stack`, each block's input and
    floating-point arguments pass `cotangent_boundary`, for an encoder trained end to end.
    """
    depth = len(blocks)
    bad = [t for t in taps if not 0 <= t < depth]
    if bad:
        raise ValueError(f"taps {bad} outside the {depth} blocks of the encoder")
    out = {}
    for i in range(max(taps) + 1):
        shared = [_with_boundary(arg) for arg in block_args]
        x = blocks[i](cotangent_boundary(x), *shared)
        if i in taps:
            out[i] = final_norm(x) if final_norm is not None and i == depth - 1 else x
    return [out[t] for t in taps]


# ---- Stochastic depth, rematerialisation and scanned stacks ------------------------------------

# Activation rematerialisation of a stack's blocks (`run_stack`): "none" keeps every activation for
# the backward pass, "dots" keeps only the results of the weight matmuls (no batch dimension) and
# recomputes the rest (attention scores, norms, GELU), "full" keeps only each block's input.
REMAT_POLICIES = {
    "none": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def check_remat(remat: str) -> None:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat {remat!r} is not one of {sorted(REMAT_POLICIES)}")


def drop_path(x: jax.Array, rate: jax.Array | float, rng: jax.Array | None) -> jax.Array:
    """Stochastic depth of a residual branch x [B, ...]: each example's branch is zeroed with
    probability `rate` and otherwise scaled by 1 / (1 - rate). Identity when `rng` is None
    (evaluation). `rate` may be traced (a scanned stack's per-block rate)."""
    if rng is None:
        return x
    keep_prob = 1.0 - jnp.asarray(rate, jnp.float32)
    keep = jax.random.bernoulli(rng, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / keep_prob.astype(x.dtype), jnp.zeros_like(x))


@jax.custom_vjp
def cotangent_boundary(x: jax.Array) -> jax.Array:
    """Identity whose backward makes the compiler keep x's gradient as one materialised array.

    Without it, XLA (seen on CPU) fuses the residual stream's gradient, a chain of additions
    through every block above, into each of its consumers and recomputes the whole chain per
    consumer: backward work and compile time grow with the square of the depth (a ViT-B
    stack's forward + backward 1.4x slower, its compile 3x longer). The backward passes the
    cotangent through `rem(g, inf)`, which is g for every finite g (and NaN for +-inf, which
    stays non-finite); the compiler counts rem as expensive and does not duplicate it.
    `jax.lax.optimization_barrier` does not help (it is removed before fusion), nor does
    dividing by a runtime 1 (rewritten into a cheap multiply). On other backends the backward
    is the identity: rem by an infinity is only known to be exact in XLA's CPU lowering, and
    the duplication was only seen there.
    """
    return x


def _cotangent_boundary_fwd(x: jax.Array) -> tuple[jax.Array, None]:
    return x, None


def _cotangent_boundary_bwd(_, g: jax.Array) -> tuple[jax.Array]:
    on_cpu = lambda g: jax.lax.rem(g, jnp.full_like(g, jnp.inf))
    return (jax.lax.platform_dependent(g, cpu=on_cpu, default=lambda g: g),)


cotangent_boundary.defvjp(_cotangent_boundary_fwd, _cotangent_boundary_bwd)


def _with_boundary(arg):
    """`cotangent_boundary` of a floating-point array argument; other arguments as they are."""
    if isinstance(arg, jax.Array) and jnp.issubdtype(arg.dtype, jnp.floating):
        return cotangent_boundary(arg)
    return arg


def run_stack(
    blocks: Sequence[nnx.Module],
    x: jax.Array,
    block_args: Sequence[tuple] | None = None,
    *,
    shared_args: tuple = (),
    remat: str = "none",
    scan_unit: int = 0,
) -> jax.Array:
    """x = blocks[i](x, *shared_args, *block_args[i]) for every block in order, with
    rematerialisation and an optional scan.

    Args:
      blocks: modules of one stack; with a scan, blocks i and i + scan_unit must be alike (same
        graph and parameter shapes).
      x: the stack's input.
      block_args: per block, the extra call arguments (arrays, floats or None), alike across
        scanned units; None: no per-block arguments.
      shared_args: call arguments common to every block (e.g. an attention bias or the context
        of a cross-attention), passed once rather than stacked for the scan.
      remat: a `REMAT_POLICIES` name, applied to each block (each scanned unit).
      scan_unit: k > 0 runs the stack as a `jax.lax.scan` over its len / k units of k consecutive
        blocks, when k divides the length and there are at least two units; the units' parameters
        are stacked for the scan (one extra copy of the stack's weights), so checkpoints keep one
        layout whether or not the stack is scanned. Compile time and program size then no longer
        grow with the depth.
    Returns:
      the output, of x's shape. Under a mesh, each block's output keeps its batch dimension split
      over the data-parallel axes (`parallel.constrain_activations`). Each block's input passes
      `cotangent_boundary`, and so does each block's use of a floating-point shared argument
      (whose gradient sums over the blocks), so the backward's cost stays linear in the depth.
    """
    check_remat(remat)
    n = len(blocks)
    block_args = [()] * n if block_args is None else block_args
    k = scan_unit if scan_unit and n % scan_unit == 0 and n >= 2 * scan_unit else 0
    graphs, states = zip(*(nnx.split(block) for block in blocks))

    def unit_fn(unit_graphs):
        def unit(x, unit_states, unit_args):
            for graph, state, a in zip(unit_graphs, unit_states, unit_args):
                x = cotangent_boundary(x)
                shared = [_with_boundary(arg) for arg in shared_args]
                x = parallel.constrain_activations(nnx.merge(graph, state)(x, *shared, *a))
            return x

        policy = REMAT_POLICIES[remat]
        return unit if remat == "none" else jax.checkpoint(unit, policy=policy)

    if not k:
        for graph, state, a in zip(graphs, states, block_args):
            x = unit_fn([graph])(x, [state], [tuple(a)])
        return x
    stack = lambda *leaves: jnp.stack([jnp.asarray(leaf) for leaf in leaves])
    unit_states = [jax.tree.map(stack, *states[j::k]) for j in range(k)]
    unit_args = [jax.tree.map(stack, *[tuple(a) for a in block_args[j::k]]) for j in range(k)]
    unit = unit_fn(graphs[:k])
    x, _ = jax.lax.scan(lambda x, xs: (unit(x, *xs), None), x, (unit_states, unit_args))
    return x


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """Cuts images into non-overlapping patches.

    Args:
      images: [B, H, W, C], H and W multiples of p = `patch_size`.
      patch_size: p.
    Returns:
      [B, L, p*p*C] with L = (H/p) * (W/p). Patches run over the grid row-major; each patch is
      flattened in (row, col, channel) order, i.e. value (i, j, c) of a patch sits at
      (i * p + j) * C + c.
    """
    b, h, w, c = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, grid_hw: tuple[int, int]) -> jax.Array:
    """Inverse of `patchify`: [B, gh*gw, p*p*C] -> [B, gh*p, gw*p, C], grid_hw = (gh, gw)."""
    b, n, k = patches.shape
    (gh, gw), p = grid_hw, patch_size
    if n != gh * gw or k % (p * p):
        raise ValueError(f"patches {patches.shape} do not fit grid {grid_hw} with patch {p}")
    c = k // (p * p)
    x = patches.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * p, gw * p, c)


class PatchEmbed(nnx.Module):
    """Linear embedding of non-overlapping p x p patches.  [B, H, W, C] -> [B, L, D].

    Equal to a stride-p convolution; the kernel [p*p*C, D] rows follow the `patchify` order.
    """

    def __init__(
        self,
        patch_size: int,
        in_chans: int,
        dim: int,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.patch_size = patch_size
        self.proj = linear(
            patch_size * patch_size * in_chans,
            dim,
            ("patch", "embed"),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.proj(patchify(images, self.patch_size))


@functools.lru_cache(maxsize=64)
def posemb_sincos_2d(grid_h: int, grid_w: int, dim: int) -> np.ndarray:
    """Fixed 2-D sin-cos position table of MAE.  Returns float32 [grid_h * grid_w, dim].

    Rows follow the patch grid row-major. Channels [0, D/2) encode the column index and
    [D/2, D) the row index; each half is [sin(pos * w_k)]_k ++ [cos(pos * w_k)]_k with
    w_k = 10000^(-k / (D/4)), k = 0 .. D/4 - 1. A cached read-only numpy constant, never a
    parameter.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position width must be a multiple of 4, got {dim}")
    omega = 1.0 / 10000.0 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))  # [D/4]
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")

    def encode(pos: np.ndarray) -> np.ndarray:  # [L] -> [L, D/2]
        angles = pos.reshape(-1, 1).astype(np.float64) * omega
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    table = np.concatenate([encode(cols), encode(rows)], axis=1).astype(np.float32)
    table.flags.writeable = False
    return table


def block_flops(num_tokens: int, dim: int, mlp_dim: int) -> float:
    """Forward matmul FLOPs of one `Block` on N tokens (2 FLOPs per multiply-add).

    qkv 2N*D*3D + proj 2N*D*D + scores q.k 2N*N*D + weighted values 2N*N*D + MLP 2 * 2N*D*M
    = 2N(4D^2 + 2DM) + 4N^2 D. Norms, softmax, GELU and residual adds are not counted.
    """
    n, d, m = num_tokens, dim, mlp_dim
    return float(2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d)


# ---- ALiBi (CROMA) ------------------------------------------------------------------------------


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi head slopes m_h = 2^(-8h/H), h = 1..H, for H a power of two; otherwise the standard
    interleaving: the slopes of the next lower power of two, then every other slope of twice that.
    -> float32 [H]."""

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    if num_heads & (num_heads - 1) == 0:
        return np.asarray(power_of_two(num_heads), np.float32)
    lower = 2 ** int(np.floor(np.log2(num_heads)))
    extra = power_of_two(2 * lower)[0::2][: num_heads - lower]
    return np.asarray(power_of_two(lower) + extra, np.float32)


def grid_distances(grid_hw: tuple[int, int]) -> np.ndarray:
    """Euclidean distances between the patches of a grid numbered row-major.  -> f32 [L, L]."""
    rows, cols = np.divmod(np.arange(grid_hw[0] * grid_hw[1]), grid_hw[1])
    return np.sqrt((rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2).astype(
        np.float32
    )


def alibi_2d_bias(
    grid_hw: tuple[int, int],
    num_heads: int,
    q_ids: jax.Array | None = None,
    k_ids: jax.Array | None = None,
) -> jax.Array:
    """2D-ALiBi logit bias -m_h * ||pos_i - pos_j|| (CROMA; X-ALiBi when queries and keys come from
    two sensors on one grid).

    Args:
      grid_hw: patch grid (rows, cols); patches numbered row-major.
      num_heads: H.
      q_ids, k_ids: optional int [B, Nq] / [B, Nk] patch indices of the queries / keys (kept
        tokens under masking).
    Returns:
      f32 [1, H, L, L] without ids, else [B, H, Nq, Nk].
    """
    dist = jnp.asarray(grid_distances(grid_hw))
    if q_ids is not None:
        dist = dist[q_ids]  # [B, Nq, L]
        dist = jnp.take_along_axis(dist, k_ids[:, None, :], axis=2) if k_ids is not None else dist
    else:
        dist = dist[None]
    slopes = jnp.asarray(alibi_slopes(num_heads))
    return -slopes[None, :, None, None] * dist[:, None]


class CrossAttention(nnx.Module):
    """Multi-head attention of queries x [B, Nq, D] over a context [B, Nk, D] -> [B, Nq, D], with
    q, k, v projections (logical "embed" -> "heads"; k and v fused into one [D, 2, D] kernel with
    `fused_kv`, as `qkv_projection`) and an optional logit bias or mask; `attention_impl` as in
    `Attention`."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        fused_kv: bool = False,
        attention_impl: str = "auto",
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        attention.check_implementation(attention_impl)
        self.num_heads = num_heads
        self.attention_impl = attention_impl
        kw = dict(use_bias=qkv_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q = linear(dim, dim, ("embed", "heads"), **kw)
        if fused_kv:
            self.kv = qkv_projection(dim, parts=2, **kw)
        else:
            self.k = linear(dim, dim, ("embed", "heads"), **kw)
            self.v = linear(dim, dim, ("embed", "heads"), **kw)
        self.proj = linear(
            dim, dim, ("heads", "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array,
        attn_bias: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        """Args: x [B, Nq, D]; context [B, Nk, D]; attn_bias: additive logit bias
        [B or 1, H or 1, Nq, Nk]; mask: bool, broadcastable like attn_bias, False = not attended."""
        b, nq, d = x.shape
        heads = lambda t: t.reshape(t.shape[0], t.shape[1], self.num_heads, d // self.num_heads)
        if hasattr(self, "kv"):
            kv = self.kv(context)
            k, v = kv[:, :, 0], kv[:, :, 1]
        else:
            k, v = self.k(context), self.v(context)
        out = attention.dot_product_attention(
            heads(self.q(x)),
            heads(k),
            heads(v),
            bias=attn_bias,
            mask=mask,
            implementation=self.attention_impl,
        )
        return self.proj(out.reshape(b, nq, d))
