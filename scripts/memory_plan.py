r"""Per-device memory of SatVision-TOA pretraining under FSDP, planned ahead of time on CPU.

  python scripts/memory_plan.py --out=workdirs/memory_plan     # default grid: 4 points, ~15 min
  python scripts/memory_plan.py --variants=giant --devices=64 --meshes=fsdp,fsdp_tp \
      --batch_per_device=8 --remat=none,dots,full --scan=on --out=workdirs/memory_plan

Each point of the grid (variant x devices x mesh x batch per device x remat x scan) builds the
pretraining step of `eofm.train.loop` (AdamW, f32 master weights, `--dtype` compute) on abstract
inputs (jax.ShapeDtypeStruct carrying their shardings: nothing is allocated) and compiles it for
N simulated host devices (XLA_FLAGS=--xla_force_host_platform_device_count=N, one worker
subprocess per N). It reports per device:

  params, opt state   shard shape x dtype of the abstract train state's shardings
  args, out, temp,    `compiled.memory_analysis()`: the step's inputs (state + batch), outputs
  xla peak            (new state + metrics; the JSON also has the bytes aliasing inputs), the
                      temporaries (activations kept for the backward pass, gradients,
                      all-gathered weights, workspace) and XLA's `peak_memory_in_bytes` (on CPU:
                      about args + out, without the temporaries)
  fit                 state + batch + temp: the footprint when the state is donated (outputs
                      overwrite inputs, as `loop.compile_step` does on accelerators)

The numbers come from the XLA *CPU* backend: its fusion, layouts and scheduling differ from GPU and
TPU (XLA:CPU upcasts bf16 matmuls to f32, for one), so they show how memory scales with batch,
remat, scan and sharding rather than an accelerator's exact bytes. Rows are merged into
`--out`/memory_plan.json (same point: replaced) and the whole table rewritten to memory_plan.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from eofm import parallel
from eofm.models import family, satvision
from eofm.train import loop

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "pretrain" / "satvision.py"
VARIANTS = ("huge", "giant")
REMATS = ("none", "dots", "full")
MESHES = ("fsdp", "fsdp_tp")
IMAGE_SIZE = 128  # SatVision-TOA's native 128 x 128 MODIS chips
# XLA:CPU options that shorten code generation without changing buffer assignment.
FAST_CODEGEN = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
ROW_PREFIX = "memory_plan_row "  # worker stdout lines carrying one JSON row


@dataclasses.dataclass(frozen=True)
class Point:
    """One configuration of the grid; `batch_per_device` counts examples per batch shard."""

    variant: str
    devices: int
    mesh: str
    batch_per_device: int
    remat: str
    scan: bool

    @property
    def key(self) -> tuple:
        return dataclasses.astuple(self)


def grid(args: argparse.Namespace) -> list[Point]:
    """The cartesian product of the flags' lists."""
    return [
        Point(*values)
        for values in itertools.product(
            args.variants, args.devices, args.meshes, args.batch_per_device, args.remat, args.scan
        )
    ]


# ---- one point, inside a worker with `devices` host devices ------------------------------------


def pretraining_config(point: Point, dtype: str) -> ml_collections.ConfigDict:
    """configs/pretrain/satvision.py for `point`: its variant at 128 px, mesh preset, batch,
    compute `dtype` (params stay float32), remat and scan."""
    spec = importlib.util.spec_from_file_location("satvision_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(f"{point.variant},image_size={IMAGE_SIZE}")
    c.model.update(dtype=dtype, param_dtype="float32", remat=point.remat, scan_blocks=point.scan)
    c.batch_size = point.batch_per_device * point.devices // parallel.PRESETS[point.mesh]["tensor"]
    c.mesh.preset = point.mesh
    return c


def memory_workload(config: ml_collections.ConfigDict) -> loop.Workload:
    """The SatVision-TOA pretraining `loop.Workload` of `config`, without data."""

    def no_data(process_index: int, process_count: int):
        raise RuntimeError("scripts/memory_plan.py compiles the step only; it reads no data")

    return loop.Workload(
        name="satvision",
        variant=config.variant,
        make_model=family.model_builder(config, {"modis": satvision.SLOTS}),
        loss_fn=lambda model, batch, rng: model.loss(batch, rng),
        make_dataset=no_data,
        input_keys=("modis",),
    )


def shard_bytes(tree) -> int:
    """Bytes one device holds of the abstract arrays in `tree` (the largest shard of each)."""
    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
    )


def total_bytes(tree) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def measure(point: Point, dtype: str) -> dict:
    """Compiles the train step of `point` on abstract inputs and returns its table row."""
    if jax.device_count() != point.devices:
        raise RuntimeError(f"{point} needs {point.devices} devices, jax has {jax.device_count()}")
    config = pretraining_config(point, dtype)
    work = memory_workload(config)
    start = time.perf_counter()
    plan = loop.setup(config, work, loop.make_mesh(config))
    step = loop.compile_step(config, work, plan)
    images = (config.batch_size, IMAGE_SIZE, IMAGE_SIZE, len(satvision.SLOTS.bands))
    batch = {
        "modis": jax.ShapeDtypeStruct(
            images, jnp.float32, sharding=parallel.batch_sharding(plan.mesh)
        )
    }
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=parallel.replicated(plan.mesh))
    lowered = step.lower(plan.abstract_state, batch, rng)
    traced_s = time.perf_counter() - start
    compiled = lowered.compile(compiler_options=FAST_CODEGEN)
    compile_s = time.perf_counter() - start - traced_s
    stats = compiled.memory_analysis()
    state = plan.abstract_state
    return {
        **dataclasses.asdict(point),
        "global_batch": config.batch_size,
        "dtype": dtype,
        "param_bytes_total": total_bytes(state.params),
        "param_bytes": shard_bytes(state.params),
        "opt_bytes": shard_bytes(state.opt_state),
        "batch_bytes": shard_bytes(batch),
        "argument_bytes": stats.argument_size_in_bytes,
        "output_bytes": stats.output_size_in_bytes,
        "alias_bytes": stats.alias_size_in_bytes,
        "temp_bytes": stats.temp_size_in_bytes,
        "peak_bytes": stats.peak_memory_in_bytes,
        "fit_bytes": stats.argument_size_in_bytes + stats.temp_size_in_bytes,
        "trace_s": round(traced_s, 1),
        "compile_s": round(compile_s, 1),
    }


def run_worker(points: list[Point], dtype: str) -> None:
    """Measures `points` (all with this process's device count), one JSON row per line."""
    for point in points:
        try:
            row = measure(point, dtype)
        except (ValueError, TypeError, jax.errors.JaxRuntimeError) as e:  # keep the other rows
            row = {**dataclasses.asdict(point), "error": f"{type(e).__name__}: {e}"}
        print(ROW_PREFIX + json.dumps(row), flush=True)


# ---- the driver: one worker per device count, the table ----------------------------------------

GIB = 2.0**30
COLUMNS = (
    ("variant", "variant", str),
    ("dev", "devices", str),
    ("mesh", "mesh", str),
    ("batch", "global_batch", str),
    ("/dev", "batch_per_device", str),
    ("remat", "remat", str),
    ("scan", "scan", lambda v: "on" if v else "off"),
    ("params", "param_bytes", lambda v: f"{v / GIB:.2f}"),
    ("opt", "opt_bytes", lambda v: f"{v / GIB:.2f}"),
    ("args", "argument_bytes", lambda v: f"{v / GIB:.2f}"),
    ("out", "output_bytes", lambda v: f"{v / GIB:.2f}"),
    ("temp", "temp_bytes", lambda v: f"{v / GIB:.2f}"),
    ("xla peak", "peak_bytes", lambda v: f"{v / GIB:.2f}"),
    ("fit", "fit_bytes", lambda v: f"{v / GIB:.2f}"),
    ("compile s", "compile_s", lambda v: f"{v:.0f}"),
)
TABLE_TITLE = (
    "SatVision-TOA pretraining step, 128 px, AdamW, f32 params; GiB per device from XLA:CPU"
    " memory_analysis (CPU backend: shapes of the problem, not exact accelerator bytes);"
    " fit = args + temp (state donated)"
)


def row_cells(row: dict) -> list[str]:
    if "error" in row:
        head = [fmt(row[key]) for _, key, fmt in COLUMNS[:7] if key in row]
        return head + ["-"] * (len(COLUMNS) - len(head) - 1) + [row["error"][:80]]
    return [fmt(row[key]) for _, key, fmt in COLUMNS]


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| " + " | ".join(name for name, _, _ in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(row_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def sort_key(row: dict) -> tuple:
    return (
        VARIANTS.index(row["variant"]),
        row["devices"],
        row["mesh"],
        row["batch_per_device"],
        REMATS.index(row["remat"]),
        not row["scan"],
    )


def merged_rows(path: Path, new_rows: list[dict]) -> list[dict]:
    """The rows of `path` (if any) with those of `new_rows` added or replacing the same point."""
    rows = {}
    if path.exists():
        rows = {Point(**_point_fields(r)).key: r for r in json.loads(path.read_text())}
    rows.update({Point(**_point_fields(r)).key: r for r in new_rows})
    return sorted(rows.values(), key=sort_key)


def _point_fields(row: dict) -> dict:
    return {f.name: row[f.name] for f in dataclasses.fields(Point)}


def write_outputs(out: Path, new_rows: list[dict]) -> list[dict]:
    """Merges `new_rows` into out/memory_plan.json and rewrites out/memory_plan.md."""
    out.mkdir(parents=True, exist_ok=True)
    rows = merged_rows(out / "memory_plan.json", new_rows)
    for name, text in (
        ("memory_plan.json", json.dumps(rows, indent=1)),
        ("memory_plan.md", f"{TABLE_TITLE}\n\n{markdown_table(rows)}\n"),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    return rows


def worker_command(args: argparse.Namespace, devices: int) -> list[str]:
    same = [
        f"--variants={','.join(args.variants)}",
        f"--meshes={','.join(args.meshes)}",
        f"--batch_per_device={','.join(map(str, args.batch_per_device))}",
        f"--remat={','.join(args.remat)}",
        f"--scan={','.join('on' if s else 'off' for s in args.scan)}",
        f"--dtype={args.dtype}",
    ]
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        f"--devices={devices}",
        *same,
    ]


def run_driver(args: argparse.Namespace) -> int:
    """Runs one worker per device count, printing rows as they come; returns the failure count."""
    rows, failures = [], 0
    print(TABLE_TITLE)
    print(" | ".join(name for name, _, _ in COLUMNS), flush=True)
    for devices in args.devices:
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            # compile_s measures a compilation, not a read of JAX's persistent cache
            "JAX_ENABLE_COMPILATION_CACHE": "false",
        }
        worker = subprocess.Popen(
            worker_command(args, devices), cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        for line in worker.stdout:
            if not line.startswith(ROW_PREFIX):
                continue
            row = json.loads(line[len(ROW_PREFIX) :])
            failures += "error" in row
            rows.append(row)
            print(" | ".join(row_cells(row)), flush=True)
            if args.out:
                write_outputs(Path(args.out), [row])
        if worker.wait():
            print(f"worker for {devices} devices exited with status {worker.returncode}")
            failures += 1
    if args.out:
        print(f"table: {Path(args.out) / 'memory_plan.md'}")
    return failures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def names(allowed):
        def parse(text: str) -> list[str]:
            values = [v.strip() for v in text.split(",") if v.strip()]
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise argparse.ArgumentTypeError(f"{bad or text!r}: expected some of {allowed}")
            return values

        return parse

    def ints(text: str) -> list[int]:
        return [int(v) for v in text.split(",") if v.strip()]

    def switches(text: str) -> list[bool]:
        return [v == "on" for v in names(("on", "off"))(text)]

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variants", type=names(VARIANTS), default=list(VARIANTS))
    p.add_argument("--devices", type=ints, default=[8, 64], help="simulated device counts")
    p.add_argument("--meshes", type=names(MESHES), default=["fsdp"])
    p.add_argument("--batch_per_device", type=ints, default=[8], help="examples per batch shard")
    p.add_argument("--remat", type=names(REMATS), default=["full"])
    p.add_argument("--scan", type=switches, default=[True], help="on, off or on,off")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype (params stay float32)")
    p.add_argument("--out", default="", help="directory of memory_plan.json / memory_plan.md")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(grid(args), args.dtype)
        return 0
    return 1 if run_driver(args) else 0


if __name__ == "__main__":
    sys.exit(main())
