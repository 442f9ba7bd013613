"""scripts/memory_plan.py: the SatVision-TOA train step compiles ahead of time under FSDP on
simulated devices, and its memory numbers are those of a sharded state.

(Scan / remat equivalence of the loss and gradients: tests/test_satvision.py.)
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_huge_train_step_compiles_under_fsdp_on_8_devices_without_allocating(tmp_path):
    command = [
        sys.executable,
        str(ROOT / "scripts" / "memory_plan.py"),
        "--variants=huge",
        "--devices=8",
        "--meshes=fsdp",
        "--batch_per_device=1",
        "--remat=full",
        "--scan=on",
        f"--out={tmp_path}",
    ]
    run = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (row,) = json.loads((tmp_path / "memory_plan.json").read_text())
    assert "error" not in row, row
    assert (row["global_batch"], row["devices"], row["dtype"]) == (8, 8, "bfloat16")
    # About 0.65 B f32 parameters, each split 8 ways along its model width.
    assert 2.4e9 < row["param_bytes_total"] < 2.8e9
    assert row["param_bytes"] == pytest.approx(row["param_bytes_total"] / 8, rel=0.01)
    assert row["opt_bytes"] == pytest.approx(2 * row["param_bytes"], rel=0.01)  # AdamW mu, nu
    state = row["param_bytes"] + row["opt_bytes"]
    assert row["argument_bytes"] == pytest.approx(state + row["batch_bytes"], rel=0.01)
    assert row["temp_bytes"] > 0 and row["peak_bytes"] > 0
    assert row["fit_bytes"] == row["argument_bytes"] + row["temp_bytes"]
    table = (tmp_path / "memory_plan.md").read_text()
    assert "| huge | 8 | fsdp | 8 | 1 | full | on |" in table
