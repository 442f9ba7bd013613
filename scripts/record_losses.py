r"""Per-step training losses of each model family's tiny config at a fixed seed (a refactor guard).

  python scripts/record_losses.py --out=losses.json [--steps=30] [--families=mae,smarties,...]
  python scripts/record_losses.py --compare=before.json --out=after.json

Runs `pretrain/main.py` for every family (tiny variant, batch 8, seed 0, log every step) on the
embedded BigEarthNet pairs and writes {family: [loss of step 1, ..., loss of step N]}. With
`--compare`, prints the largest absolute difference per family against an earlier recording and
exits non-zero when any differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("mae", "smarties", "croma", "spectralgpt")


def record(family: str, steps: int, workdir: Path) -> list[float]:
    cmd = [
        sys.executable,
        str(ROOT / "pretrain" / "main.py"),
        f"--config=configs/pretrain/{family}.py:tiny",
        f"--workdir={workdir}",
        f"--config.total_steps={steps}",
        "--config.batch_size=8",
        "--config.seed=0",
        "--config.log_every=1",
        f"--config.checkpoint.every_steps={steps}",
        "--config.peak_flops=1e11",
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--compare", default="")
    args = parser.parse_args()
    losses = {}
    with tempfile.TemporaryDirectory() as scratch:
        for family in args.families.split(","):
            losses[family] = record(family, args.steps, Path(scratch) / family)
            print(f"{family:12s} first {losses[family][0]:.6f} last {losses[family][-1]:.6f}")
    Path(args.out).write_text(json.dumps(losses, indent=1))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        differs = False
        for family, values in losses.items():
            old = before.get(family)
            if old is None or len(old) != len(values):
                print(f"{family:12s} not comparable")
                differs = True
                continue
            gap = max(abs(a - b) for a, b in zip(old, values))
            differs |= gap > 0
            print(f"{family:12s} max |after - before| = {gap:.3g}")
        sys.exit(1 if differs else 0)


if __name__ == "__main__":
    main()
