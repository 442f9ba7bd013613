r"""Train-step speed, compile time, memory and loader headroom of every model family, and the ViT
encoder against timm, as markdown tables.

  python scripts/bench_train.py [--families=mae,smarties,croma,spectralgpt,satvision,roma]
      [--variants=tiny] [--scan=off,on] [--dtypes=float32,bfloat16] [--backend=cpu]
      [--batch_size=N] [--steps=N] [--loader_batches=20] [--encoder_table]

  # the base configs, as in the README (2-3 minutes per row on 2 CPU cores; SatVision-TOA has
  # no base size and is skipped with a note, RoMA's base is `B`):
  python scripts/bench_train.py --variants=base --steps=3 --encoder_table
  python scripts/bench_train.py --families=roma --variants=B --steps=3

Step table, one row per family x variant x block scan x compute dtype: the jitted train step of
`pretrain/main.py` (`pretrain.workload`, `loop.setup`, `loop.compile_step`: the family's objective,
its backward and AdamW) on one batch of the real training pipeline (the configured source,
prepared once into a temporary directory), repeated.
  compile cold    trace, lower and compile with nothing in the persistent compilation cache;
  compile cached  the same after `jax.clear_caches()`, loaded from that cache: what a resumed run,
                  a second evaluation or the next sweep point pays;
  args, temps     the compiled step's argument and temporary buffers (`memory_analysis`);
  step ms         mean of --steps consecutive steps after one untimed one, dispatched as
                  `loop.train` does (each step's loss checked once the next one is dispatched);
  MFU             model FLOPs (`flops_per_example`, 3 x forward matmuls) per second over the
                  measured throughput of a large matmul in the row's compute dtype.
Rows whose family has no `model.scan_blocks` (or `model.dtype`) are skipped with a note.

Loader table, one row per family x variant: batches/s of that training pipeline alone
(`pipeline.make_iterator` with the worker processes `data.num_workers=-1` gives this machine)
against the demand of the fastest step measured for it; the loader should stay 3x ahead.

Encoder table (--encoder_table, needs torch and timm): forward + backward of
mean(encoder(images)) for the plain ViT of the MAE variants (192 wide x 6 blocks, ViT-B/16,
ViT-L/16) on 224 x 224 x 3 images, in JAX and in PyTorch eager with timm's `VisionTransformer` of
the same shape (CLS token, token pooling, no head, no dropout) on all CPU threads; JAX and torch
steps alternate, medians over --steps timed steps. Install them with

  pip install -e '.[bench]' && pip install --no-deps torchvision==0.16.2

timm imports torchvision. The Linux torchvision wheels on PyPI link against the CUDA build of
torch, so beside the CPU torch 2.13.0 their C++ ops do not load, and torchvision >= 0.17 then fails
at import ("operator torchvision::nms does not exist"); 0.16.2 only warns, and the ViT uses none
of its ops. `--no-deps` keeps torch 2.13.0 (`pip check` reports torchvision's torch==2.1.2 pin).

Timings move with other load on the machine; the first line gives its load average.
`--backend=gpu` (or tpu) records the same tables on an accelerator.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from eofm import compilation_cache, parallel
from eofm.data import pipeline
from eofm.models import mae as mae_lib
from eofm.models import vit as vit_lib
from eofm.train import loop, pretrain
from eofm.train import metrics as metrics_lib

_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pretrain"
_FAMILIES = ("mae", "smarties", "croma", "spectralgpt", "satvision", "roma")
_INSTALL = "pip install -e '.[bench]' && pip install --no-deps torchvision==0.16.2"
# variant: (batch size, timed steps) when --batch_size / --steps are not given.
_DEFAULTS = {"tiny": (32, 10), "base": (4, 3)}
_VIT_NAMES = {"tiny": "ViT-192x6", "base": "ViT-B", "large": "ViT-L"}
_ENCODER_IMAGE_SIZE = 224
_ENCODER_CHANNELS = 3
_MIB = 2**20

_FAMILIES_FLAG = flags.DEFINE_list("families", list(_FAMILIES), "Pretraining configs to time.")
_VARIANTS = flags.DEFINE_list("variants", ["tiny"], "Config variants (tiny, base, ...).")
_SCAN = flags.DEFINE_list("scan", ["off", "on"], "Block scan settings: off, on.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes (model.dtype).")
_BACKEND = flags.DEFINE_string("backend", None, "JAX platform (cpu, gpu, tpu); default: JAX's.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Batch; default 32 (tiny), 4 (others).")
_STEPS = flags.DEFINE_integer("steps", None, "Timed steps per row; default 10 (tiny), 3 (others).")
_LOADER_BATCHES = flags.DEFINE_integer("loader_batches", 20, "Batches timed per loader row.")
_ENCODER = flags.DEFINE_bool("encoder_table", False, "Also time the ViT encoder against timm.")
_ENCODER_BATCH = flags.DEFINE_integer("encoder_batch_size", 8, "Batch size of the encoder rows.")


def _defaults(variant: str) -> tuple[int, int]:
    batch_size, steps = _DEFAULTS.get(variant, _DEFAULTS["base"])
    return _BATCH_SIZE.value or batch_size, _STEPS.value or steps


def _config(family: str, variant: str):
    spec = importlib.util.spec_from_file_location(f"{family}_config", _CONFIGS / f"{family}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def _prepared_dir(config, root: Path) -> str:
    """One ArrayRecord directory per source and its arguments, shared by the rows."""
    args = json.dumps(config.data.source_args.to_dict(), sort_keys=True)
    digest = hashlib.sha256(f"{config.data.source}:{args}".encode()).hexdigest()[:12]
    return str(root / f"{config.data.source}-{digest}")


@dataclasses.dataclass
class _Row:
    family: str
    variant: str
    scan: str
    dtype: str
    batch_size: int
    steps: int
    compile_cold_s: float
    compile_cached_s: float
    args_mib: float
    temps_mib: float
    step_s: float
    flops_per_step: float


def _workload(family: str, variant: str, scratch: Path, **model):
    """(config, workload) of `family`:`variant` with `model` overrides, data prepared in
    `scratch`; None when the family's model config lacks one of the override keys."""
    config = _config(family, variant)
    if any(key not in config.model for key in model):
        return None
    config.model.update(model)
    config.batch_size = _defaults(variant)[0]
    config.data.prepared_dir = _prepared_dir(config, scratch / "data")
    config.data.num_workers = 0
    return config, pretrain.workload(config, scratch / "workdir")


def _first_batch(workload) -> dict[str, np.ndarray]:
    iterator = pipeline.make_iterator(workload.make_dataset(0, 1), num_workers=0)
    try:
        return next(iterator)
    finally:
        iterator.close()


def _step_row(family: str, variant: str, scan: str, dtype: str, scratch: Path) -> _Row | None:
    # Only settings that differ from every config's default (no scan, float32) are overridden, so
    # a family without those keys still gets its default row.
    overrides = {"scan_blocks": True} if scan == "on" else {}
    if dtype != "float32":
        overrides["dtype"] = dtype
    built = _workload(family, variant, scratch, **overrides)
    if built is None:
        return None
    config, workload = built
    batch_size, steps = _defaults(variant)
    mesh = loop.make_mesh(config)
    plan = loop.setup(config, workload, mesh)
    state = jax.jit(plan.init, out_shardings=plan.state_shardings)()
    train_step = loop.compile_step(config, workload, plan)
    host_batch = _first_batch(workload)
    sharding = parallel.batch_sharding(mesh)
    batch = {
        k: jax.make_array_from_process_local_data(sharding, host_batch[k])
        for k in workload.input_keys
        if k in host_batch
    }
    base_key = jax.random.key(config.seed)
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        train_step.lower(state, batch, base_key).compile()
        cold = time.perf_counter() - start
        jax.clear_caches()
        start = time.perf_counter()
        compiled = train_step.lower(state, batch, base_key).compile()
        cached = time.perf_counter() - start
        memory = compiled.memory_analysis()
        previous = None
        for i in range(steps + 1):
            if i == 1:
                jax.block_until_ready(state)
                start = time.perf_counter()
            state, step_metrics = compiled(state, batch, jax.random.fold_in(base_key, i))
            if previous is not None:
                float(previous["loss"])
            previous = step_metrics
        jax.block_until_ready(state)
        step_s = (time.perf_counter() - start) / steps
    return _Row(
        family,
        variant,
        scan,
        dtype,
        batch_size,
        steps,
        cold,
        cached,
        memory.argument_size_in_bytes / _MIB,
        memory.temp_size_in_bytes / _MIB,
        step_s,
        workload.flops_per_example * batch_size,
    )


def _loader_batches_per_s(family: str, variant: str, scratch: Path) -> tuple[int, float]:
    """(worker processes, batches/s) of the family's training pipeline on this machine."""
    _, workload = _workload(family, variant, scratch)
    workers = pipeline.auto_num_workers()
    iterator = pipeline.make_iterator(workload.make_dataset(0, 1), num_workers=workers)
    try:
        for _ in range(2):  # worker start-up and the first reads
            next(iterator)
        start = time.perf_counter()
        for _ in range(_LOADER_BATCHES.value):
            next(iterator)
        return workers, _LOADER_BATCHES.value / (time.perf_counter() - start)
    finally:
        iterator.close()


def _median_seconds(run_steps: list[Callable[[int], Any]], steps: int) -> list[float]:
    """Median wall time of each run_step(i) over `steps` calls after one untimed one (which
    compiles). The functions take turns step by step, so that they see the same background load.
    """
    for run_step in run_steps:
        run_step(0)
    times = [[] for _ in run_steps]
    for i in range(1, 1 + steps):
        for run_step, seconds in zip(run_steps, times):
            start = time.perf_counter()
            run_step(i)
            seconds.append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def _jax_encoder_step(cfg: vit_lib.ViTConfig, batch_size: int) -> Callable[[int], None]:
    """Jitted gradient of mean(ViTEncoder(images)) with respect to the parameters."""
    graphdef, params, rest = nnx.split(vit_lib.ViTEncoder(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)

    def loss_fn(params, images):
        return jnp.mean(nnx.merge(graphdef, params, rest)(images))

    grad_fn = jax.jit(jax.grad(loss_fn))
    shape = (batch_size, _ENCODER_IMAGE_SIZE, _ENCODER_IMAGE_SIZE, cfg.in_chans)
    images = jax.random.normal(jax.random.key(0), shape)
    return lambda i: jax.block_until_ready(grad_fn(params, images))


def _import_torch_timm():
    """(torch, timm), or None after printing why not and how to install them."""
    try:
        with warnings.catch_warnings():
            # torchvision's image extension is not needed.
            warnings.filterwarnings("ignore", message="Failed to load image Python extension")
            import timm
            import timm.models.vision_transformer
            import torch
    except (ImportError, RuntimeError) as e:
        print(f"\nencoder table skipped: torch / timm unavailable ({type(e).__name__}: {e}).")
        print(f"Install them with: {_INSTALL}  (see this script's docstring)")
        return None
    return torch, timm


def _torch_encoder_step(torch, vit_cls, cfg: vit_lib.ViTConfig, batch_size: int):
    """Eager forward + backward of mean(VisionTransformer(images)), with the shapes of `cfg`."""
    model = vit_cls(
        img_size=_ENCODER_IMAGE_SIZE,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        class_token=True,
        global_pool="token",
        num_classes=0,
        drop_rate=0.0,
        pos_drop_rate=0.0,
        proj_drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
    )
    model.train()
    images = torch.randn(batch_size, cfg.in_chans, _ENCODER_IMAGE_SIZE, _ENCODER_IMAGE_SIZE)

    def run_step(i: int) -> None:
        del i
        model.zero_grad(set_to_none=True)
        model(images).mean().backward()

    return run_step


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A markdown table under `title`: first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(padded) + " |"

    rule = [":" + "-" * (widths[0] + 1)] + ["-" * (w + 1) + ":" for w in widths[1:]]
    print(f"\n{title}")
    print(line(header))
    print("|" + "|".join(rule) + "|")
    for row in rows:
        print(line(row))


def _known_configs() -> list[tuple[str, str]]:
    """The (family, variant) pairs of the flags whose config exists, checked before any timing so
    that a variant one family lacks (SatVision has no `base`) is a note, not a crash hours in."""
    known = []
    for family in _FAMILIES_FLAG.value:
        for variant in _VARIANTS.value:
            try:
                _config(family, variant)
            except ValueError as error:
                print(f"skipped {family}:{variant}: {error}")
            else:
                known.append((family, variant))
    return known


def _step_table(peaks: dict[str, float], scratch: Path) -> list[_Row]:
    rows, skipped = [], []
    for family, variant in _known_configs():
        for scan in _SCAN.value:
            for dtype in _DTYPES.value:
                row = _step_row(family, variant, scan, dtype, scratch)
                if row is None:
                    skipped.append(f"{family}:{variant} scan={scan} {dtype}")
                else:
                    rows.append(row)
                    print(f"  {family}:{variant} scan={scan} {dtype}: {row.step_s * 1e3:.1f} ms")
    _print_table(
        f"Train step (objective, backward, AdamW) on one batch of the training pipeline,"
        f" {jax.devices()[0].device_kind}",
        [
            "config",
            "scan",
            "dtype",
            "batch",
            "compile cold s",
            "compile cached s",
            "args MiB",
            "temps MiB",
            "step ms",
            "images/s",
            "MFU",
        ],
        [
            [
                f"{r.family}:{r.variant}",
                r.scan,
                r.dtype,
                str(r.batch_size),
                f"{r.compile_cold_s:.1f}",
                f"{r.compile_cached_s:.2f}",
                f"{r.args_mib:.0f}",
                f"{r.temps_mib:.0f}",
                f"{r.step_s * 1e3:.1f}",
                f"{r.batch_size / r.step_s:.1f}",
                f"{r.flops_per_step / r.step_s / peaks[r.dtype]:.1%}",
            ]
            for r in rows
        ],
    )
    for name in skipped:
        print(f"skipped {name}: the family's model config has no such setting")
    return rows


def _loader_table(step_rows: list[_Row], scratch: Path) -> None:
    rows = []
    for family in _FAMILIES_FLAG.value:
        for variant in _VARIANTS.value:
            fastest = min(
                (r.step_s for r in step_rows if (r.family, r.variant) == (family, variant)),
                default=None,
            )
            if fastest is None:
                continue
            workers, rate = _loader_batches_per_s(family, variant, scratch)
            rows.append(
                [
                    f"{family}:{variant}",
                    str(_defaults(variant)[0]),
                    str(workers),
                    f"{rate:.1f}",
                    f"{1 / fastest:.1f}",
                    f"{rate * fastest:.1f}x",
                ]
            )
    _print_table(
        "Loader (the training pipeline alone) against the fastest step of each config",
        ["config", "batch", "workers", "loader batches/s", "steps/s", "headroom"],
        rows,
    )


def _encoder_table(peak: float) -> None:
    imported = _import_torch_timm()
    if imported is None:
        return
    torch, timm = imported
    vit_cls = timm.models.vision_transformer.VisionTransformer
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    batch_size = _ENCODER_BATCH.value
    rows = []
    for variant in _VARIANTS.value:
        shape = {
            k: mae_lib.VARIANTS[variant][k]
            for k in ("patch_size", "embed_dim", "depth", "num_heads")
        }
        cfg = vit_lib.ViTConfig(**shape, in_chans=_ENCODER_CHANNELS)
        num_patches = (_ENCODER_IMAGE_SIZE // cfg.patch_size) ** 2
        flops = 3 * vit_lib.vit_forward_flops(cfg, 1 + num_patches) * batch_size
        steps = _defaults(variant)[1]
        jax_s, torch_s = _median_seconds(
            [
                _jax_encoder_step(cfg, batch_size),
                _torch_encoder_step(torch, vit_cls, cfg, batch_size),
            ],
            steps,
        )
        rows.append(
            [
                f"{_VIT_NAMES.get(variant, variant)}/{cfg.patch_size}",
                str(steps),
                f"{jax_s * 1e3:.1f}",
                f"{torch_s * 1e3:.1f}",
                f"{jax_s / torch_s:.2f}",
                f"{flops / jax_s / 1e9:.1f}",
                f"{flops / torch_s / 1e9:.1f}",
                f"{flops / jax_s / peak:.1%}",
                f"{flops / torch_s / peak:.1%}",
            ]
        )
    size, chans = _ENCODER_IMAGE_SIZE, _ENCODER_CHANNELS
    _print_table(
        f"ViT encoder forward + backward on {batch_size} x {size}x{size}x{chans}: JAX (jit) vs"
        f" torch {torch.__version__} eager + timm {timm.__version__}"
        f" ({torch.get_num_threads()} threads)",
        [
            "model",
            "steps",
            "JAX ms",
            "torch ms",
            "JAX/torch",
            "JAX GFLOP/s",
            "torch GFLOP/s",
            "JAX MFU",
            "torch MFU",
        ],
        rows,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _BACKEND.value:
        jax.config.update("jax_platforms", _BACKEND.value)
    with tempfile.TemporaryDirectory(prefix="eofm_bench_") as scratch:
        scratch = Path(scratch)
        compilation_cache.enable(scratch / "compilation_cache")
        peaks = {
            dtype: metrics_lib.measure_peak_flops(dtype=jnp.dtype(dtype))
            for dtype in {*_DTYPES.value, "float32"}
        }
        print(
            f"measured peak: {', '.join(f'{d} {p / 1e9:.1f}' for d, p in peaks.items())} GFLOP/s"
            f" (2048^3 matmul, jax {jax.__version__}, {jax.devices()[0].device_kind},"
            f" cpus={os.cpu_count()})  load average before the run: {os.getloadavg()[0]:.1f}"
        )
        step_rows = _step_table(peaks, scratch)
        _loader_table(step_rows, scratch)
    if _ENCODER.value:
        _encoder_table(peaks["float32"])


if __name__ == "__main__":
    app.run(main)
