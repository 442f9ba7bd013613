r"""One family's pretraining step in two checkouts (or two settings), timed in interleaved pairs.

  python scripts/bench_step_ab.py --config=smarties:base --batch_size=4 --steps=8 \
      --a=/path/to/old/checkout --b=.
  python scripts/bench_step_ab.py --config=croma:base --a=. --b=. --b_model='{"scan_blocks": true}'
  python scripts/bench_step_ab.py --config=spectralgpt:base,stage2 --a=. --b=. \
      --b_xla_flags=--xla_cpu_enable_fast_math=true

Each side runs in its own process with its checkout first on `sys.path`: it builds the config's
workload (data prepared once per side under --scratch), compiles `loop.compile_step` with the
persistent compilation cache off, then times one step per request. The sides compile one after
the other and then step in turns (A B, B A, A B, ...), so load on the machine falls on both; the
table gives compile seconds, compiled temporaries, median step seconds and the median of the
per-pair ratios B / A with their range. Batches are one real batch of the configured source,
repeated; both sides start from the same seed, and their first losses are printed to show that
they compute the same thing.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", None, "FAMILY:ARGS of configs/pretrain/FAMILY.py.")
_A = flags.DEFINE_string("a", ".", "Checkout of side A.")
_B = flags.DEFINE_string("b", ".", "Checkout of side B.")
_A_MODEL = flags.DEFINE_string("a_model", "{}", "JSON of config.model overrides, side A.")
_B_MODEL = flags.DEFINE_string("b_model", "{}", "JSON of config.model overrides, side B.")
_A_FLAGS = flags.DEFINE_string("a_xla_flags", "", "XLA_FLAGS of side A.")
_B_FLAGS = flags.DEFINE_string("b_xla_flags", "", "XLA_FLAGS of side B.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 4, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 8, "Timed steps per side.")
_SCRATCH = flags.DEFINE_string("scratch", None, "Prepared data and workdirs; default: a temp dir.")
_SERVE = flags.DEFINE_string("serve", None, "Internal: run as one side, from this checkout.")


def _serve(checkout: str) -> None:
    """One side: compile, print {"compile_s", ...}, then one timed step per 'go' on stdin."""
    sys.path.insert(0, str(Path(checkout).resolve()))
    import importlib.util

    import jax

    from eofm import parallel
    from eofm.data import pipeline
    from eofm.train import loop, pretrain

    family, _, args = _CONFIG.value.partition(":")
    path = Path(checkout) / "configs" / "pretrain" / f"{family}.py"
    spec = importlib.util.spec_from_file_location(f"{family}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(args)
    overrides = json.loads(_A_MODEL.value if _SERVE.value == "a" else _B_MODEL.value)
    unknown = sorted(set(overrides) - set(config.model))
    if unknown:
        raise ValueError(f"{checkout}: config.model has no {unknown}")
    config.model.update(overrides)
    config.batch_size = _BATCH_SIZE.value
    config.data.num_workers = 0
    scratch = Path(_SCRATCH.value) / _SERVE.value
    config.data.prepared_dir = str(scratch / "data")
    workload = pretrain.workload(config, scratch / "workdir")
    mesh = loop.make_mesh(config)
    plan = loop.setup(config, workload, mesh)
    state = jax.jit(plan.init, out_shardings=plan.state_shardings)()
    train_step = loop.compile_step(config, workload, plan)
    iterator = pipeline.make_iterator(workload.make_dataset(0, 1), num_workers=0)
    host_batch = next(iterator)
    iterator.close()
    sharding = parallel.batch_sharding(mesh)
    batch = {
        k: jax.make_array_from_process_local_data(sharding, host_batch[k])
        for k in workload.input_keys
        if k in host_batch
    }
    key = jax.random.key(config.seed)
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        compiled = train_step.lower(state, batch, key).compile()
        compile_s = time.perf_counter() - start
        memory = compiled.memory_analysis()
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready(state)
        ready = {
            "compile_s": compile_s,
            "temps_mib": memory.temp_size_in_bytes / 2**20,
            "first_loss": float(metrics["loss"]),
        }
        print(json.dumps(ready), flush=True)
        for i, line in enumerate(sys.stdin, start=1):
            if line.strip() != "go":
                break
            start = time.perf_counter()
            state, metrics = compiled(state, batch, jax.random.fold_in(key, i))
            jax.block_until_ready(state)
            print(json.dumps({"step_s": time.perf_counter() - start}), flush=True)


def _start(side: str, xla_flags: str, scratch: str) -> subprocess.Popen:
    env = dict(os.environ, EOFM_COMPILATION_CACHE="off", XLA_FLAGS=xla_flags)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    argv = [a for a in sys.argv[1:] if not a.startswith(("--serve", "--scratch"))]
    command = [sys.executable, __file__, *argv, f"--serve={side}", f"--scratch={scratch}"]
    return subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )


def _reply(process: subprocess.Popen, side: str) -> dict:
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"side {side} exited with status {process.wait()} (see its stderr)")
    return json.loads(line)


def main(argv) -> None:
    del argv
    if not _CONFIG.value:
        raise app.UsageError("--config=FAMILY:ARGS is required")
    if _SERVE.value:
        _serve(_A.value if _SERVE.value == "a" else _B.value)
        return
    scratch = _SCRATCH.value or tempfile.mkdtemp(prefix="eofm_ab_")
    sides = {"a": (_A.value, _A_FLAGS.value), "b": (_B.value, _B_FLAGS.value)}
    processes, ready = {}, {}
    for side, (checkout, xla_flags) in sides.items():  # compiles do not overlap
        processes[side] = _start(side, xla_flags, scratch)
        ready[side] = _reply(processes[side], side)
    times = {"a": [], "b": []}
    for i in range(_STEPS.value):
        for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
            processes[side].stdin.write("go\n")
            processes[side].stdin.flush()
            times[side].append(_reply(processes[side], side)["step_s"])
    for process in processes.values():
        process.stdin.close()
        process.wait()
    ratios = [b / a for a, b in zip(times["a"], times["b"])]
    print(f"{_CONFIG.value}, batch {_BATCH_SIZE.value}, load average {os.getloadavg()[0]:.1f}\n")
    print("| side | checkout | compile s | temps MiB | first loss | step s (median) |")
    print("|---|---|---|---|---|---|")
    for side, (checkout, _) in sides.items():
        r = ready[side]
        print(
            f"| {side.upper()} | {checkout} | {r['compile_s']:.1f} | {r['temps_mib']:.0f} "
            f"| {r['first_loss']:.6g} | {statistics.median(times[side]):.3f} |"
        )
    print(
        f"\nB / A per pair: median {statistics.median(ratios):.3f}, "
        f"range {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} pairs"
    )


if __name__ == "__main__":
    app.run(main)
