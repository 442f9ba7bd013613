r"""Forward + backward time and compiled temporaries of each attention implementation at the
attention shapes of the model families.

  python scripts/bench_attention.py [--backend=cpu --dtype=float32 --repeats=5 \
      --cases=spectralgpt_decoder,vit_b --implementations=jax.nn,xla,blockwise]

One step is the gradient of sum(out * g) with respect to q, k and v (a bias or mask is a constant,
as ALiBi and masks are in the models), jitted. Runs are interleaved across implementations (one
run of each, `--repeats` times) and the median is reported, with the compiled step's temporary
buffers (`memory_analysis().temp_size_in_bytes`). "auto" marks the implementation
`attention.choose_implementation` picks for the case on this backend. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eofm.models import attention


class Case(NamedTuple):
    name: str
    batch: int
    lq: int
    lk: int
    heads: int
    head_dim: int
    bias: str = ""  # "", "shared" [1, H, Lq, Lk] or "batch" [B, H, Lq, Lk]
    mask: str = ""  # "" or "keys" [B, 1, 1, Lk]


CASES = (
    Case("spectralgpt_decoder", 4, 1024, 1024, 16, 32),
    Case("spectralgpt_encoder", 4, 102, 102, 12, 64),
    Case("smarties_encoder", 4, 50, 50, 12, 64),
    Case("smarties_decoder", 4, 197, 197, 16, 32),
    Case("vit_b", 8, 197, 197, 12, 64),
    Case("croma_alibi", 4, 225, 225, 12, 64, bias="shared"),
    Case("croma_alibi_masked", 4, 56, 56, 12, 64, bias="batch"),
    Case("cross_attention", 4, 196, 1024, 8, 64, mask="keys"),
)
BASELINE = "jax.nn"


def _inputs(case: Case, dtype) -> tuple[tuple[jax.Array, ...], dict]:
    keys = jax.random.split(jax.random.key(0), 6)
    b, h, d = case.batch, case.heads, case.head_dim
    q = jax.random.normal(keys[0], (b, case.lq, h, d), dtype)
    k, v = (jax.random.normal(key, (b, case.lk, h, d), dtype) for key in keys[1:3])
    g = jax.random.normal(keys[3], q.shape, dtype)
    extra = {}
    if case.bias:
        shape = (1 if case.bias == "shared" else b, h, case.lq, case.lk)
        extra["bias"] = -jax.random.uniform(keys[4], shape, jnp.float32, 0.0, 8.0)
    if case.mask:
        extra["mask"] = jax.random.bernoulli(keys[5], 0.8, (b, 1, 1, case.lk))
    return (q, k, v, g), extra


def _step(implementation: str, **kwargs):
    def attend(q, k, v, extra):
        if implementation == BASELINE:
            return jax.nn.dot_product_attention(q, k, v, **extra)
        return attention.dot_product_attention(
            q, k, v, implementation=implementation, **extra, **kwargs
        )

    def loss(q, k, v, g, extra):
        return jnp.sum(attend(q, k, v, extra).astype(jnp.float32) * g.astype(jnp.float32))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def bench_case(case: Case, implementations, dtype, repeats: int, **kwargs) -> dict[str, tuple]:
    """{implementation: (median ms, temporaries in bytes)} of one case; an implementation that
    refuses the case (cuDNN) is left out."""
    args, extra = _inputs(case, dtype)
    compiled = {}
    for impl in implementations:
        try:
            compiled[impl] = _step(impl, **kwargs).lower(*args, extra).compile()
        except (ValueError, NotImplementedError, RuntimeError) as e:
            print(f"<!-- {case.name}: {impl} skipped: {e} -->")
            continue
        jax.block_until_ready(compiled[impl](*args, extra))
    times = {impl: [] for impl in compiled}
    for _ in range(repeats):
        for impl, fn in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args, extra))
            times[impl].append(time.perf_counter() - start)
    return {
        impl: (1e3 * float(np.median(times[impl])), fn.memory_analysis().temp_size_in_bytes)
        for impl, fn in compiled.items()
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="cpu", help="JAX platform: cpu, gpu or tpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default=",".join(c.name for c in CASES))
    parser.add_argument(
        "--implementations", default="", help="default: jax.nn,xla,blockwise (+cudnn: gpu, half)"
    )
    parser.add_argument("--block_q", type=int, default=None, help="blockwise query block")
    parser.add_argument("--block_k", type=int, default=None, help="blockwise key block")
    args = parser.parse_args(argv)
    jax.config.update("jax_platforms", args.backend)
    backend = jax.default_backend()
    dtype = jnp.dtype(args.dtype)
    half = dtype in (jnp.bfloat16, jnp.float16)
    implementations = (
        args.implementations.split(",")
        if args.implementations
        else [BASELINE, "xla", "blockwise"] + (["cudnn"] if backend == "gpu" and half else [])
    )
    by_name = {c.name: c for c in CASES}
    unknown = set(args.cases.split(",")) - set(by_name)
    if unknown:
        raise SystemExit(f"unknown cases {sorted(unknown)}; choose from {sorted(by_name)}")
    blocks = {f: getattr(args, f) for f in ("block_q", "block_k") if getattr(args, f)}
    print(
        f"{jax.devices()[0].device_kind} ({backend}), {args.dtype}, fwd+bwd, "
        f"median of {args.repeats} interleaved runs\n"
    )
    print("| case | B, Lq x Lk, H, Dh | extra | implementation | ms | temp MiB | vs jax.nn |")
    print("|---|---|---|---|---:|---:|---:|")
    for name in args.cases.split(","):
        case = by_name[name]
        auto = attention.choose_implementation(case.lq, case.lk, dtype, backend)
        rows = bench_case(case, implementations, dtype, args.repeats, **blocks)
        base_ms = rows[BASELINE][0] if BASELINE in rows else None
        shape = f"{case.batch}, {case.lq} x {case.lk}, {case.heads}, {case.head_dim}"
        extra = " ".join(
            s for s in (case.bias and f"bias {case.bias}", case.mask and f"mask {case.mask}") if s
        )
        for impl, (ms, temp) in rows.items():
            speedup = f"{base_ms / ms:.2f}x" if base_ms else ""
            label = f"**{impl}** (auto)" if impl == auto else impl
            print(
                f"| {name} | {shape} | {extra} | {label} | {ms:.1f} | {temp / 2**20:.1f} "
                f"| {speedup} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
