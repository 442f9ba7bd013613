r"""Runs the sweep a config file defines (`get_sweep()`, see eofm/sweeps/spec.py): one
pretrain/main.py or finetune/main.py run per point, each in ROOT/<point name>.

  python scripts/sweep.py --config=configs/pretrain/mae.py:tiny --workdir=sweeps/mae_tiny \
      --launcher=local --max_parallel=2 --config.total_steps=20
  python scripts/sweep.py --config=configs/pretrain/mae.py:tiny --workdir=/scratch/sweeps/mae \
      --launcher=slurm --max_parallel=8 --timeout_min=240 --slurm_partition=gpu --gpus_per_node=1

Further --config.KEY=VALUE flags apply to every point (after the sweep's own values). Running the
same command again skips finished points and resumes unfinished ones (from their newest
checkpoint); with --launcher=slurm it also skips points whose job is queued or running. The local
launcher runs the points and then writes ROOT/summary.{csv,md,png}; the slurm launcher submits one
job array and returns (--wait waits for it and summarises); --summary only rewrites the summary
of what has finished. The points share one JAX compilation cache (eofm/compilation_cache.py;
EOFM_COMPILATION_CACHE=off turns it off).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from eofm import compilation_cache
from eofm.sweeps import launchers, spec, summary


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", required=True, help="FILE[:ARGS] defining get_sweep()")
    p.add_argument("--workdir", required=True, help="the sweep's root directory")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local")
    p.add_argument("--max_parallel", type=int, default=1, help="points running at once")
    p.add_argument("--program", default=None, help="pretrain|finetune (default: by the folder)")
    p.add_argument("--summary", action="store_true", help="only write the summary")
    p.add_argument("--wait", action="store_true", help="slurm: wait for the jobs, summarise")
    p.add_argument("--timeout_min", type=int, default=240, help="slurm: time limit per task")
    p.add_argument("--slurm_partition", default=None)
    p.add_argument("--gpus_per_node", type=int, default=None)
    p.add_argument("--cpus_per_task", type=int, default=None)
    p.add_argument("--mem_gb", type=int, default=None)
    p.add_argument("--cluster", default=None, help="submitit cluster (default: slurm if present)")
    args, rest = p.parse_known_args(argv)
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        p.error(f"unrecognised arguments {unknown}; per-point overrides are --config.KEY=VALUE")
    return args, rest


def slurm_parameters(args: argparse.Namespace) -> dict:
    given = {
        "slurm_partition": args.slurm_partition,
        "gpus_per_node": args.gpus_per_node,
        "cpus_per_task": args.cpus_per_task,
        "mem_gb": args.mem_gb,
    }
    return {k: v for k, v in given.items() if v is not None}


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    # The points' runs (local subprocesses, or SLURM tasks, which inherit this environment) share
    # one compilation cache: a point compiles only what no point before it has compiled.
    os.environ[compilation_cache.ENV] = compilation_cache.enable() or "off"
    program = None if args.program is None else str(spec.PROGRAMS[args.program])
    try:
        sweep = spec.load_sweep(args.config, overrides, program)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"scripts/sweep.py: {e}")
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    pending = launchers.todo(sweep, root)
    print(f"{len(sweep.points)} points, {len(sweep.points) - len(pending)} finished", flush=True)
    failed = []
    if not args.summary and args.launcher == "local":
        status = launchers.run_local(sweep, root, args.max_parallel, Path.cwd())
        failed = [name for name, s in status.items() if s not in ("finished", "ran")]
    elif not args.summary:
        jobs = launchers.submit_slurm(
            sweep,
            root,
            args.max_parallel,
            Path.cwd(),
            timeout_min=args.timeout_min,
            cluster=args.cluster,
            slurm=slurm_parameters(args),
        )
        print(f"submitted {len(jobs)} jobs: {[j.job_id for j in jobs]}", flush=True)
        if args.wait:
            failed = [j.job_id for j in jobs if j.exception() is not None]
    paths = summary.write(sweep, root)
    print(f"summary: {paths['md']} {paths['csv']} {paths['png']}", flush=True)
    if failed:
        print(f"failed: {failed}; see {root / 'logs'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
