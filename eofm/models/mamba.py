"""Mamba-1 selective state-space mixer (Gu and Dao, 2023), the SwiGLU FFN and the pre-LN residual
block of RoMA's encoder.

Shapes: B batch, L tokens, D model width, E = expand * D inner width, N state size, R = dt rank,
K causal convolution width.

The mixer, token by token (t = 1..L), on the inner channels e:
  x, z = in_proj(u)                                   (no bias)
  x = silu(causal depthwise conv_K(x) + bias)         (left padding K - 1: x_t sees x_1..x_t)
  dt_raw, B_t, C_t = x_proj(x)                        (R, N, N values; no bias)
  dt = softplus(dt_proj(dt_raw))                      (bias: dt starts log-uniform in [1e-3, 0.1])
  h_t = exp(dt_t A) * h_{t-1} + dt_t B_t x_t          (h [E, N]; A = -exp(A_log) = -(1..N) at init)
  y_t = h_t . C_t + D_skip x_t
  out = out_proj(y * silu(z))                         (no bias)
The recurrence (the selective scan) always runs in float32, whatever the compute dtype; A_log and
D_skip are float32 parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from eofm.models import layers

DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 0.1, 1e-4  # range of the initial step sizes dt


# ---- The selective scan ------------------------------------------------------------------------


def _combine(earlier, later):
    """Composes two affine maps h -> a h + b, `earlier` applied first."""
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2


def _scan_chunk(h0, x, dt, a, b_in, c_out):
    """Selective scan of one chunk from state h0 [B, E, N].  -> (y [B, c, E], last state)."""
    decay = jnp.exp(dt[..., None] * a)  # [B, c, E, N]
    drive = (dt * x)[..., None] * b_in[:, :, None, :]
    decay, drive = jax.lax.associative_scan(_combine, (decay, drive), axis=1)
    h = decay * h0[:, None] + drive  # h_t for every t of the chunk
    return jnp.einsum("blen,bln->ble", h, c_out), h[:, -1]


def selective_scan(
    x: jax.Array,
    dt: jax.Array,
    a: jax.Array,
    b_in: jax.Array,
    c_out: jax.Array,
    *,
    chunk_size: int = 0,
) -> jax.Array:
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t (h_0 = 0), y_t = h_t . C_t, in float32.

    Args:
      x, dt: [B, L, E] inputs and (positive) step sizes.
      a: [E, N] state matrix (negative).
      b_in, c_out: [B, L, N] input and output projections of the state.
      chunk_size: 0 scans all L tokens at once with `jax.lax.associative_scan` (O(log L) depth,
        [B, L, E, N] intermediates, kept for the backward pass); c > 0 scans chunks of c tokens
        that way and carries the state across chunks sequentially, each chunk rematerialised in
        the backward pass, so that only the [B, E, N] state at each chunk boundary is kept and
        the [B, c, E, N] intermediates exist one chunk at a time, whatever L is.
    Returns:
      y: f32[B, L, E].
    """
    x, dt, a, b_in, c_out = (t.astype(jnp.float32) for t in (x, dt, a, b_in, c_out))
    batch, length, inner = x.shape
    h0 = jnp.zeros((batch, inner, a.shape[-1]), jnp.float32)
    if not chunk_size or chunk_size >= length:
        return _scan_chunk(h0, x, dt, a, b_in, c_out)[0]
    pad = -length % chunk_size  # trailing tokens with dt = 0 leave the earlier outputs untouched

    def chunks(t):
        t = jnp.pad(t, [(0, 0), (0, pad)] + [(0, 0)] * (t.ndim - 2))
        t = t.reshape(batch, -1, chunk_size, *t.shape[2:])
        return jnp.moveaxis(t, 1, 0)  # [num_chunks, B, c, ...]

    @jax.checkpoint
    def body(h, inputs):
        y, h = _scan_chunk(h, *inputs[:2], a, *inputs[2:])
        return h, y

    _, y = jax.lax.scan(body, h0, tuple(chunks(t) for t in (x, dt, b_in, c_out)))
    return jnp.moveaxis(y, 0, 1).reshape(batch, -1, inner)[:, :length]


def causal_depthwise_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """out_t = bias + sum_k kernel[k] * x_{t - K + 1 + k} (zeros before the first token), per
    channel: torch's Conv1d(groups=E, padding=K - 1) cut to the first L outputs.
    x [B, L, E], kernel [K, E], bias [E] -> [B, L, E]."""
    k = kernel.shape[0]
    padded = jnp.pad(x, [(0, 0), (k - 1, 0), (0, 0)])
    length = x.shape[1]
    out = sum(padded[:, i : i + length] * kernel[i].astype(x.dtype) for i in range(k))
    return out + bias.astype(x.dtype)


# ---- Modules ------------------------------------------------------------------------------------


def _dt_bias_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """Inverse softplus of step sizes drawn log-uniformly in [DT_MIN, DT_MAX] (floored at
    DT_FLOOR), so that softplus(bias) starts as those step sizes."""
    log_dt = jax.random.uniform(key, shape, jnp.float32, math.log(DT_MIN), math.log(DT_MAX))
    dt = jnp.maximum(jnp.exp(log_dt), DT_FLOOR)
    return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)


def _a_log_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """log(1 .. N) on every inner channel: A = -(1 .. N)."""
    del key
    return jnp.broadcast_to(jnp.log(jnp.arange(1, shape[-1] + 1, dtype=jnp.float32)), shape).astype(
        dtype
    )


class MambaMixer(nnx.Module):
    """The Mamba-1 mixer of the module doc.  [B, L, D] -> [B, L, D].

    Projections run in `dtype`; the scan, A_log and D_skip in float32. Kernels are xavier-uniform
    except dt_proj's, U(-R^-1/2, R^-1/2) as Mamba initialises it, and the convolution's,
    U(-K^-1/2, K^-1/2) as torch's Conv1d (its bias 0).
    """

    def __init__(
        self,
        dim: int,
        *,
        expand: int = 1,
        state_size: int = 16,
        conv_width: int = 4,
        dt_rank: int | None = None,
        scan_chunk: int = 0,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        inner = expand * dim
        self.dt_rank = dt_rank or math.ceil(dim / 16)
        self.state_size = state_size
        self.scan_chunk = scan_chunk
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.in_proj = layers.linear(dim, 2 * inner, ("embed", "mlp"), use_bias=False, **kw)
        conv_init = nnx.initializers.uniform(2 / math.sqrt(conv_width))
        self.conv_kernel = nnx.Param(
            layers.logical(_centred(conv_init, 1 / math.sqrt(conv_width)), (None, "mlp"))(
                rngs.params(), (conv_width, inner), param_dtype
            )
        )
        self.conv_bias = nnx.Param(
            layers.logical(nnx.initializers.zeros_init(), ("mlp",))(
                rngs.params(), (inner,), param_dtype
            )
        )
        self.x_proj = layers.linear(
            inner, self.dt_rank + 2 * state_size, ("mlp", None), use_bias=False, **kw
        )
        bound = self.dt_rank**-0.5
        self.dt_proj = nnx.Linear(
            self.dt_rank,
            inner,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=layers.logical(
                _centred(nnx.initializers.uniform(2 * bound), bound), (None, "mlp")
            ),
            bias_init=layers.logical(_dt_bias_init, ("mlp",)),
            rngs=rngs,
        )
        self.a_log = nnx.Param(
            layers.logical(_a_log_init, ("mlp", None))(
                rngs.params(), (inner, state_size), jnp.float32
            )
        )
        self.d_skip = nnx.Param(
            layers.logical(nnx.initializers.ones_init(), ("mlp",))(
                rngs.params(), (inner,), jnp.float32
            )
        )
        self.out_proj = layers.linear(inner, dim, ("mlp", "embed"), use_bias=False, **kw)

    def __call__(self, u: jax.Array, orders: Sequence[np.ndarray] | None = None) -> jax.Array:
        """u [B, L, D] -> [B, L, D].

        `orders`: None scans the tokens once, first to last (causal). Otherwise one scan per
        token order (int [L] permutations), each with this mixer's convolution, x_proj, dt_proj,
        A and D, its outputs put back in token order and averaged before the gate; in_proj and
        out_proj are applied once. This is a multi-direction Mamba whose per-direction copies all
        equal this mixer, e.g. RoMA's four-direction backbone right after it copies the pretrained
        mixer."""
        x, z = jnp.split(self.in_proj(u), 2, axis=-1)
        if orders is None:
            y = self._scan_branch(x)
        else:
            y = sum(self._scan_branch(x[:, o])[:, np.argsort(o)] for o in orders) / len(orders)
        return self.out_proj((y * jax.nn.silu(z.astype(jnp.float32))).astype(u.dtype))

    def _scan_branch(self, x: jax.Array) -> jax.Array:
        """Convolution, selective scan and skip along the token axis.  x [B, L, E] -> f32."""
        x = jax.nn.silu(causal_depthwise_conv(x, self.conv_kernel[...], self.conv_bias[...]))
        dt_raw, b_in, c_out = jnp.split(
            self.x_proj(x), [self.dt_rank, self.dt_rank + self.state_size], axis=-1
        )
        dt = jax.nn.softplus(self.dt_proj(dt_raw).astype(jnp.float32))
        a = -jnp.exp(self.a_log[...])
        y = selective_scan(x, dt, a, b_in, c_out, chunk_size=self.scan_chunk)
        return y + self.d_skip[...] * x.astype(jnp.float32)


def _centred(uniform: nnx.Initializer, half_width: float) -> nnx.Initializer:
    """U(-half_width, half_width) from `uniform`, which draws from [0, 2 half_width)."""

    def init(key, shape, dtype=jnp.float32):
        return uniform(key, shape, dtype) - jnp.asarray(half_width, dtype)

    return init


class SwiGLU(nnx.Module):
    """w3(silu(w1 x) * w2 x), hidden width floor(8 D / 3), all with biases.
    [..., D] -> [..., D]."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int | None = None,
        *,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        hidden = hidden_dim or 8 * dim // 3
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.w1 = layers.linear(dim, hidden, ("embed", "mlp"), **kw)
        self.w2 = layers.linear(dim, hidden, ("embed", "mlp"), **kw)
        self.w3 = layers.linear(hidden, dim, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.w3(jax.nn.silu(self.w1(x)) * self.w2(x))


class MambaBlock(nnx.Module):
    """Pre-LN residual block: x + mixer(LN(x)), then x + SwiGLU(LN(x)).  [B, L, D] -> [B, L, D].

    Causal (without `orders`): output t depends on inputs 1..t only."""

    def __init__(
        self,
        dim: int,
        *,
        ln_eps: float = 1e-5,
        scan_chunk: int = 0,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.norm1 = layers.layer_norm(dim, eps=ln_eps, **kw)
        self.mixer = MambaMixer(dim, scan_chunk=scan_chunk, **kw)
        self.norm2 = layers.layer_norm(dim, eps=ln_eps, **kw)
        self.ffn = SwiGLU(dim, **kw)

    def __call__(self, x: jax.Array, orders: Sequence[np.ndarray] | None = None) -> jax.Array:
        """`orders`: see `MambaMixer.__call__` (None: causal)."""
        x = x + self.mixer(self.norm1(x), orders)
        return x + self.ffn(self.norm2(x))


def mamba_block_params(dim: int, state_size: int = 16, conv_width: int = 4) -> int:
    """Parameter count of one `MambaBlock` (expand 1, dt rank ceil(D / 16), SwiGLU floor(8D/3)).

    in_proj 2D^2, conv K D + D, x_proj D (R + 2N), dt_proj R D + D, A_log D N, D_skip D,
    out_proj D^2, SwiGLU 3 D H + 2 H + D, two LNs 4 D.
    """
    d, r, h = dim, math.ceil(dim / 16), 8 * dim // 3
    mixer = 2 * d * d + conv_width * d + d + d * (r + 2 * state_size) + r * d + d
    mixer += d * state_size + d + d * d
    return int(mixer + 3 * d * h + 2 * h + d + 4 * d)


def mamba_block_flops(num_tokens: int, dim: int, state_size: int = 16) -> float:
    """Forward FLOPs of one `MambaBlock` on L tokens (2 FLOPs per multiply-add; expand 1).

    Matmuls: in_proj 2L*D*2D + x_proj 2L*D(R + 2N) + dt_proj 2L*R*D + out_proj 2L*D*D + SwiGLU
    3 * 2L*D*H; plus the scan's multiply-adds on the [L, D, N] state: the update
    (decay * h + dt B x) and the readout h . C, about 4 L D N (linear in L, unlike attention's
    4 L^2 D). Norms, the convolution and activations are not counted.
    """
    n, d, r, h = num_tokens, dim, math.ceil(dim / 16), 8 * dim // 3
    matmuls = 2 * n * (2 * d * d + d * (r + 2 * state_size) + r * d + d * d + 3 * d * h)
    return float(matmuls + 4 * n * d * state_size)
