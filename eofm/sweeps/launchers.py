"""Running a sweep's points: each point is one `pretrain/main.py` or `finetune/main.py` run in its
own workdir ROOT/<point name>, its output in ROOT/logs/<point name>.log.

  local  a pool of at most `max_parallel` runs at once on this machine (`run_local`);
  slurm  one SLURM job array through submitit (`submit_slurm`), `max_parallel` tasks at once,
         each with a time limit; a task that is preempted or reaches its time limit has its run
         stopped with SIGTERM (the loop saves a checkpoint and exits), and is requeued, and
         the requeued run resumes from that checkpoint.

Both skip points whose run is finished (`spec.finished`) and rerun unfinished ones, which resume
from their newest checkpoint. The slurm launcher also skips points whose job is still queued or
running (the job ids are kept in ROOT/jobs.json).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import submitit

from eofm import files
from eofm.sweeps import spec

JOBS_FILE = "jobs.json"
# submitit job states of a job that will still run.
ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED")


def log_path(root: Path, point: spec.Point) -> Path:
    return root / "logs" / f"{point.name}.log"


def todo(sweep: spec.Sweep, root: Path) -> list[spec.Point]:
    """The points whose run is not finished."""
    return [p for p in sweep.points if not spec.finished(sweep.program, p.config, root / p.name)]


class PointRun(submitit.helpers.Checkpointable):
    """One point's run as a subprocess; callable (returns its exit status, raises on failure)
    and checkpointable for submitit: on preemption or time-out the run gets SIGTERM, saves and
    exits, and the job is requeued to resume it.

    Args:
      command: the run's argv.
      log: the file its stdout and stderr are appended to.
      cwd: the directory to run it in (where the sweep was launched: relative paths of the
        config hold there).
    """

    def __init__(self, command: list[str], log: Path, cwd: Path):
        self.command, self.log, self.cwd = command, log, cwd
        self._process = None

    def __call__(self) -> int:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as out:
            out.write(f"$ {' '.join(self.command)}\n")
            out.flush()
            self._process = subprocess.Popen(
                self.command, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT
            )
            status = self._process.wait()
        if status != 0:
            raise RuntimeError(f"{self.command[1]} exited with status {status}; see {self.log}")
        return status

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Stops the run with SIGTERM (it saves a checkpoint) and requeues this point."""
        if self._process is not None:
            self._process.send_signal(signal.SIGTERM)
            # Called in a signal handler, possibly inside `Popen.wait` (which holds the Popen's
            # lock): wait for the run's exit without that lock.
            try:
                os.waitpid(self._process.pid, 0)
            except ChildProcessError:  # it had exited and been reaped already
                pass
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_process": None}


def point_run(sweep: spec.Sweep, root: Path, point: spec.Point, cwd: Path) -> PointRun:
    return PointRun(sweep.command(point, root / point.name), log_path(root, point), cwd)


def run_local(sweep: spec.Sweep, root: Path, max_parallel: int, cwd: Path) -> dict[str, str]:
    """Runs the unfinished points, at most `max_parallel` at once; {point name: "finished",
    "ran" or the error}."""
    status = {p.name: "finished" for p in sweep.points}
    points = todo(sweep, root)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, max_parallel)) as pool:
        futures = {pool.submit(point_run(sweep, root, p, cwd)): p for p in points}
        for future in concurrent.futures.as_completed(futures):
            point = futures[future]
            try:
                future.result()
                status[point.name] = "ran"
            except RuntimeError as e:
                status[point.name] = str(e)
                logging.error("sweep point %s failed: %s", point.name, e)
    return status


def _read_jobs(root: Path) -> dict[str, dict[str, str]]:
    """{point name: {"job_id", "cluster"}} of the jobs submitted so far."""
    path = root / JOBS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _live(folder: Path, job: dict[str, str]) -> bool:
    """Whether a submitted job is still queued or running."""
    if submitit.core.utils.JobPaths(folder, job["job_id"]).result_pickle.exists():
        return False  # submitit wrote its result: it ended, however
    if job["cluster"] == "slurm":
        state = submitit.SlurmJob(folder, job["job_id"]).state
        return state.split()[0] in ACTIVE_STATES
    try:  # a local job's id is its controller's pid
        os.kill(int(job["job_id"]), 0)
    except (ProcessLookupError, ValueError):
        return False
    return True


def submit_slurm(
    sweep: spec.Sweep,
    root: Path,
    max_parallel: int,
    cwd: Path,
    *,
    timeout_min: int,
    cluster: str | None = None,
    slurm: dict[str, Any] | None = None,
) -> list[submitit.Job]:
    """Submits the unfinished points without a live job as one job array; returns the jobs.

    Args:
      timeout_min: each task's time limit (a task reaching it is requeued, see the module).
      cluster: submitit's cluster ("slurm", or "local" to run the array on this machine with
        the same signals and requeueing); None: SLURM when it is there.
      slurm: further submitit parameters, e.g. {"slurm_partition": "gpu", "gpus_per_node": 1}.
    """
    folder = root / "submitit"
    jobs = _read_jobs(root)
    points = [p for p in todo(sweep, root) if p.name not in jobs or not _live(folder, jobs[p.name])]
    if not points:
        return []
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(
        name=f"sweep_{root.name}",
        timeout_min=timeout_min,
        slurm_array_parallelism=max(1, max_parallel),
        **(slurm or {}),
    )
    with executor.batch():
        new_jobs = [executor.submit(point_run(sweep, root, p, cwd)) for p in points]
    submitted = {
        p.name: {"job_id": j.job_id, "cluster": executor.cluster} for p, j in zip(points, new_jobs)
    }
    recorded = {**_read_jobs(root), **submitted}
    files.write_text_atomic(root / JOBS_FILE, json.dumps(recorded, indent=2) + "\n")
    return new_jobs
