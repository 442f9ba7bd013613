"""Sweeps (eofm/sweeps, scripts/sweep.py): points from a config's get_sweep(), the local launcher
on MAE tiny (2 learning rates x 2 mask ratios, 20 steps), its summary, a second invocation that
does nothing, and the slurm launcher through submitit's local executor with a preempted job that
is requeued and resumes."""

import csv
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from run_checks import load_script

from eofm.sweeps import launchers, spec, summary
from eofm.train import metrics

ROOT = Path(__file__).resolve().parents[1]
MAE = ROOT / "configs/pretrain/mae.py"
STEPS = [
    "--config.total_steps=20",
    "--config.batch_size=16",
    "--config.log_every=5",
    "--config.checkpoint.every_steps=10",
]


def test_product_and_zip_build_the_points():
    lr = spec.sweep("config.lr", [1e-4, 3e-4])
    ratio = spec.sweep("config.model.mask_ratio", [0.5, 0.75])
    assert spec.product(lr, ratio) == [
        {"config.lr": 1e-4, "config.model.mask_ratio": 0.5},
        {"config.lr": 1e-4, "config.model.mask_ratio": 0.75},
        {"config.lr": 3e-4, "config.model.mask_ratio": 0.5},
        {"config.lr": 3e-4, "config.model.mask_ratio": 0.75},
    ]
    assert spec.zipped(lr, ratio)[1] == {"config.lr": 3e-4, "config.model.mask_ratio": 0.75}
    with pytest.raises(ValueError, match="different lengths"):
        spec.zipped(lr, spec.sweep("arg.variant", ["tiny"]))
    with pytest.raises(ValueError, match="set by two axes"):
        spec.product(lr, lr)
    with pytest.raises(ValueError, match="must start with one of"):
        spec.sweep("lr", [1.0])
    assert spec.point_name({"config.lr": 3e-4, "config.model.mask_ratio": 0.5}) == (
        "lr=0.0003,mask_ratio=0.5"
    )
    assert spec.point_name({"config.a.size": 1, "config.b.size": 2}) == "a.size=1,b.size=2"


def test_points_carry_their_config_and_command(tmp_path):
    sweep = spec.load_sweep(f"{MAE}:tiny", STEPS)
    assert sweep.program == str(ROOT / "pretrain/main.py") and len(sweep.points) == 4
    point = sweep.points[1]
    assert point.name == "lr=7.5e-05,mask_ratio=0.75"
    assert point.config.lr == 7.5e-5 and point.config.model.mask_ratio == 0.75
    assert point.config.total_steps == 20 and point.config.variant == "tiny"
    command = sweep.command(point, tmp_path / point.name)
    assert command[1:] == [
        str(ROOT / "pretrain/main.py"),
        f"--config={MAE}:tiny",
        f"--workdir={tmp_path / point.name}",
        "--config.lr=7.5e-05",
        "--config.model.mask_ratio=0.75",
        *STEPS,
    ]


def test_sweep_errors_name_the_culprit(tmp_path):
    config = tmp_path / "pretrain" / "bad.py"
    config.parent.mkdir()
    body = f"""
import importlib.util
from eofm.sweeps import spec as sweeps
_spec = importlib.util.spec_from_file_location("mae", {str(MAE)!r})
_mae = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mae)
get_config = _mae.get_config
"""
    config.write_text(body + "def get_sweep():\n    return sweeps.sweep('config.lr', ['fast'])\n")
    with pytest.raises(ValueError, match="config.lr = 'fast'.*is a float"):
        spec.load_sweep(str(config))
    config.write_text(body + "def get_sweep():\n    return sweeps.sweep('config.lrr', [1.0])\n")
    with pytest.raises(ValueError, match="no key 'lrr'"):
        spec.load_sweep(str(config))
    config.write_text(body + "def get_sweep():\n    return sweeps.sweep('arg.size', ['big'])\n")
    with pytest.raises(ValueError, match="unknown config argument 'size'"):
        spec.load_sweep(str(config))
    config.write_text(body)
    with pytest.raises(ValueError, match="defines no get_sweep"):
        spec.load_sweep(str(config))
    with pytest.raises(ValueError, match="expected --config.KEY=VALUE"):
        spec.load_sweep(f"{MAE}:tiny", ["--lr=1"])


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """The MAE tiny sweep run by the local launcher, 2 points at a time: (root, stdout)."""
    root = tmp_path_factory.mktemp("sweep")
    script = load_script(ROOT / "scripts/sweep.py")
    args = [f"--config={MAE}:tiny", f"--workdir={root}", "--max_parallel=2", *STEPS]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        assert script.main(args) == 0
    return root, args


def _task_pid(job) -> int:
    """The pid of the job's task: the process the local executor's controller started."""
    controller = job._process.pid
    (child,) = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    return int(child)


def _records(workdir: Path) -> list[dict]:
    return [
        {k: r[k] for k in ("step", "loss")} for r in metrics.read_records(workdir / "metrics.jsonl")
    ]


def test_local_sweep_runs_every_point_and_summarises(local_sweep):
    root, _ = local_sweep
    with open(root / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["point"] for r in rows] == [
        "lr=7.5e-05,mask_ratio=0.5",
        "lr=7.5e-05,mask_ratio=0.75",
        "lr=0.0003,mask_ratio=0.5",
        "lr=0.0003,mask_ratio=0.75",
    ]
    for row in rows:
        assert row["status"] == "finished" and row["step"] == "20.0"
        assert float(row["loss"]) == _records(root / row["point"])[-1]["loss"]
        assert float(row["config.lr"]) in (7.5e-5, 3e-4)
    losses = {r["point"]: float(r["loss"]) for r in rows}
    assert len(set(losses.values())) == 4  # each point trained its own way
    table = (root / "summary.md").read_text().splitlines()
    assert table[0].startswith("| point | status | config.lr | config.model.mask_ratio | step")
    assert len(table) == 2 + 4
    assert (root / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_a_second_invocation_does_nothing_new(local_sweep, capsys):
    root, args = local_sweep
    before = {p: p.stat().st_mtime_ns for p in root.glob("*/metrics.jsonl")}
    script = load_script(ROOT / "scripts/sweep.py")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        assert script.main(args) == 0
    assert "4 points, 4 finished" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in root.glob("*/metrics.jsonl")} == before


def test_slurm_launcher_requeues_a_preempted_job_that_resumes(local_sweep, tmp_path, monkeypatch):
    """One point as a submitit job array on the local executor; preempted after step 5, the job
    is requeued and its run resumes to the losses of the uninterrupted local run."""
    monkeypatch.chdir(ROOT)
    sweep = spec.load_sweep(f"{MAE}:tiny", STEPS)
    sweep.points[:] = sweep.points[:1]
    (job,) = launchers.submit_slurm(sweep, tmp_path, 1, ROOT, timeout_min=10, cluster="local")
    log = tmp_path / sweep.points[0].name / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (log.exists() and any(r["step"] >= 5 for r in metrics.read_records(log))):
        assert not job.done(), job.stderr()
        assert time.monotonic() < deadline, "the job logged no step within 300 s"
        time.sleep(0.2)
    os.kill(_task_pid(job), signal.SIGUSR2)  # SLURM's signal to a job it preempts
    assert job.result() == 0
    runs = (tmp_path / "logs" / f"{sweep.points[0].name}.log").read_text()
    assert runs.count("$ ") == 2  # the requeued job ran the point again
    assert "resum" in runs.split("$ ")[2].lower()
    uninterrupted = _records(local_sweep[0] / sweep.points[0].name)
    resumed = _records(tmp_path / sweep.points[0].name)
    assert [r["step"] for r in resumed] == [5, 10, 15, 20]
    np.testing.assert_array_equal([r["loss"] for r in resumed], [r["loss"] for r in uninterrupted])
    assert launchers.submit_slurm(sweep, tmp_path, 1, ROOT, timeout_min=10, cluster="local") == []
    assert summary.collect(sweep, tmp_path)[0]["status"] == "finished"
