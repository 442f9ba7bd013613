"""End-to-end pretraining runs: exact resume after SIGKILL and SIGTERM, corrupt checkpoints,
errors for bad configs, foreign checkpoints and unwritable workdirs, and NaN detection."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from eofm.data import arrayrecord, datasets, pipeline
from eofm.train import checkpoint, loop
from eofm.train import metrics as metrics_lib

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--config=configs/pretrain/mae.py:tiny",
    "--config.model.embed_dim=64",
    "--config.model.depth=2",
    "--config.model.num_heads=2",
    "--config.model.decoder_dim=32",
    "--config.model.decoder_depth=1",
    "--config.model.decoder_heads=2",
    "--config.data.image_size=32",
    "--config.batch_size=8",
    "--config.total_steps=10",
    "--config.warmup_steps=2",
    "--config.log_every=1",
    "--config.checkpoint.every_steps=3",
    "--config.peak_flops=1e11",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    arrayrecord.prepare(datasets.BigEarthNetSource(), directory, name="bigearthnet_s1s2")
    return directory


def _cmd(workdir, prepared, *extra):
    return [
        sys.executable,
        str(ROOT / "pretrain" / "main.py"),
        *TINY,
        f"--config.data.prepared_dir={prepared}",
        f"--workdir={workdir}",
        *extra,
    ]


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return env


def _run(workdir, prepared, *extra, check=True):
    result = subprocess.run(
        _cmd(workdir, prepared, *extra),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _losses(workdir):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def _interrupt(workdir, prepared, sig, after_step):
    """Starts a run and sends `sig` once it has logged `after_step`; returns its exit code."""
    proc = subprocess.Popen(
        _cmd(workdir, prepared),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = Path(workdir) / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= after_step:
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=240)
    return proc.returncode, stderr


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    result = _run(workdir, prepared)
    assert "step 10/10 | loss" in result.stdout and "img/s | MFU" in result.stdout
    return _losses(workdir)


def test_uninterrupted_run_logs_every_step(reference):
    assert sorted(reference) == list(range(1, 11))
    assert reference[10] < reference[1]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_run_resumes_exactly(sig, prepared, reference, tmp_path):
    code, stderr = _interrupt(tmp_path, prepared, sig, after_step=5)
    if sig == signal.SIGTERM:
        assert code == 0, stderr[-2000:]  # saved and exited cleanly
        assert "stopped after step" in stderr
    else:
        assert code == -signal.SIGKILL
    assert len(_losses(tmp_path)) < 10
    _run(tmp_path, prepared)
    assert _losses(tmp_path) == reference  # bit-identical per-step losses


def test_corrupt_latest_checkpoint_falls_back_to_previous(prepared, reference, tmp_path):
    _run(tmp_path, prepared)
    ckpts = tmp_path / "checkpoints"
    assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [6, 9, 10]
    for f in (ckpts / "10" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[:100])
    result = _run(tmp_path, prepared)
    assert "is unreadable" in result.stderr and "resumed from" in result.stderr
    assert (tmp_path / "checkpoints_unreadable" / "10").is_dir()  # set aside, not deleted
    assert _losses(tmp_path) == reference  # step 10 recomputed from step 9, identically


def test_unknown_config_key(prepared, tmp_path):
    result = _run(tmp_path, prepared, "--config.modle.depth=3", check=False)
    assert result.returncode != 0 and "modle" in result.stderr


def test_checkpoint_of_another_model(prepared, tmp_path):
    _run(tmp_path, prepared, "--config.total_steps=3")
    result = _run(tmp_path, prepared, "--config.model.depth=3", check=False)
    assert result.returncode != 0
    assert "other parameters" in result.stderr and "Traceback" not in result.stderr
    other = _run(tmp_path, prepared, "--config.variant=base", check=False)
    assert "is of variant 'tiny', this run is 'base'" in other.stderr


def test_workdir_not_writable(prepared, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = _run(blocker / "run", prepared, check=False)
    assert result.returncode != 0 and f"workdir {blocker / 'run'} is not writable" in result.stderr


class _Tiny(nnx.Module):
    def __init__(self, rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (4, 2)))

    def __call__(self, x):
        return x @ self.w[...]


def test_nan_loss_stops_with_step_and_tensors(tmp_path, prepared):
    def loss_fn(model, batch, rng):
        del rng
        y = model(batch["x"])
        return jnp.sqrt(-1.0 - jnp.mean(y) ** 2), {}  # sqrt of a negative number: NaN, NaN grads

    class ToXMap(grain.transforms.Map):
        def map(self, sample):
            return {"x": sample["s1"][0, 0, :1].repeat(4)}

    workload = loop.Workload(
        name="tiny",
        variant="nan",
        make_model=_Tiny,
        loss_fn=loss_fn,
        make_dataset=_x_dataset(prepared, ToXMap()),
        input_keys=("x",),
    )
    config = _config()
    with pytest.raises(
        loop.NonFiniteLossError,
        match=r"loss is nan at step 1; non-finite"
        r" gradients in \['w",
    ):
        loop.train(config, tmp_path, workload)


def _x_dataset(prepared, transform):
    source = arrayrecord.ArrayRecordSource(prepared)
    return lambda i, n: pipeline.make_dataset(
        source, batch_size=8, seed=0, transforms=[transform], process_index=i, process_count=n
    )


class _Drifting(nnx.Module):
    """A scalar w that the loss -w + sqrt(1.5 - w) pushes up: Adam at lr 1 moves it by about 1 per
    step, so the loss is finite at steps 1 and 2 and NaN from step 3."""

    def __init__(self, rngs):
        del rngs
        self.w = nnx.Param(jnp.zeros(()))

    def __call__(self, x):
        return -self.w[...] + jnp.sqrt(1.5 - self.w[...]) + 0.0 * jnp.mean(x)


def test_nan_check_does_not_sync_every_step_but_names_the_step(tmp_path, prepared):
    """With no logging step in sight the loss is checked one step behind: the error still names
    the first non-finite step, and no checkpoint of a non-finite state is written."""

    class ToX(grain.transforms.Map):
        def map(self, sample):
            return {"x": sample["s1"][0, 0, :1]}

    workload = loop.Workload(
        name="drift",
        variant="nan",
        make_model=_Drifting,
        loss_fn=lambda model, batch, rng: (model(batch["x"]), {}),
        make_dataset=_x_dataset(prepared, ToX()),
        input_keys=("x",),
    )
    config = _config()
    config.update(lr=1.0, total_steps=6, log_every=100)
    with pytest.raises(loop.NonFiniteLossError, match=r"loss is nan at step 3; non-finite"):
        loop.train(config, tmp_path, workload)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


def _config():
    return ml_collections.ConfigDict(
        dict(
            seed=0,
            batch_size=8,
            total_steps=3,
            warmup_steps=0,
            lr=1e-3,
            weight_decay=0.0,
            b1=0.9,
            b2=0.95,
            grad_clip_norm=0.0,
            peak_flops=1e9,
            log_every=1,
            mesh=dict(preset="dp"),
            data=dict(num_workers=0),
            checkpoint=dict(every_steps=10, keep=1, keep_period=0),
        )
    )


class _FourValues(grain.transforms.Map):
    """{"x": f32[4]} from a sample's first S1 pixel, after `delay_s` seconds."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    def map(self, sample):
        time.sleep(self.delay_s)
        return {"x": sample["s1"][0, 0, :1].repeat(4)}


def _tiny_workload(prepared, delay_s: float = 0.0) -> loop.Workload:
    return loop.Workload(
        name="tiny",
        variant="mse",
        make_model=_Tiny,
        loss_fn=lambda model, batch, rng: (jnp.mean((model(batch["x"]) - 1.0) ** 2), {}),
        make_dataset=_x_dataset(prepared, _FourValues(delay_s)),
        input_keys=("x",),
    )


def _logged_steps(workdir):
    return [
        r["step"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
    ]


def test_torn_metrics_line_is_dropped_on_resume(tmp_path, prepared, caplog):
    config = _config()  # 3 steps, a checkpoint at the end
    loop.train(config, tmp_path, _tiny_workload(prepared))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.')  # killed in the middle of an append
    config.total_steps = 5  # extending a run is no config change that matters
    loop.train(config, tmp_path, _tiny_workload(prepared))
    assert _logged_steps(tmp_path) == [1, 2, 3, 4, 5]
    assert "metrics.jsonl:4 is not a whole JSON record" in caplog.text


def test_fresh_start_drops_records_of_a_run_killed_before_its_first_checkpoint(tmp_path, prepared):
    stale = [json.dumps({"step": step, "loss": 9.0}) + "\n" for step in range(1, 8)]
    (tmp_path / "metrics.jsonl").write_text("".join(stale))
    loop.train(_config(), tmp_path, _tiny_workload(prepared))
    assert _logged_steps(tmp_path) == [1, 2, 3]


def test_failed_checkpoint_save_stops_the_run_and_keeps_earlier_ones(
    tmp_path, prepared, monkeypatch
):
    """The second save fails in the background as on a full disk: the run stops a step or two
    later, before its next save, naming the step, the directory and the OS error."""
    handler = ocp.handlers.JsonCheckpointHandler
    write_meta = handler._save_fn
    saves = []

    async def full_disk_on_second_save(self, item, directory):
        saves.append(directory)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        await write_meta(self, item, directory)

    monkeypatch.setattr(handler, "_save_fn", full_disk_on_second_save)
    config = _config()
    config.total_steps = 16
    config.checkpoint.update(every_steps=4, keep=1)
    with pytest.raises(checkpoint.CheckpointSaveError) as error:
        loop.train(config, tmp_path, _tiny_workload(prepared, delay_s=0.03))
    assert f"step 8 to {tmp_path / 'checkpoints'} failed" in str(error.value)
    assert "No space left on device" in str(error.value)
    assert 8 <= max(_logged_steps(tmp_path)) < 12  # stopped before the save at step 12
    kept = checkpoint.Checkpointer(tmp_path / "checkpoints", read_only=True)
    assert kept.steps == [4] and kept.latest_params()[0] == 4  # not deleted by keep=1


def test_resume_refuses_a_changed_batch_size_or_seed(tmp_path, prepared):
    config = _config()
    loop.train(config, tmp_path, _tiny_workload(prepared))
    config.update(batch_size=16, seed=1, total_steps=5, log_every=2)
    with pytest.raises(
        loop.ResumeConfigError,
        match=r"batch_size: 8 -> 16; seed: 0 -> 1\..*--config.allow_resume_changes=batch_size,seed",
    ):
        loop.train(config, tmp_path, _tiny_workload(prepared))
    config.allow_resume_changes = "batch_size, seed"
    assert loop.train(config, tmp_path, _tiny_workload(prepared)).step == 5


def test_resume_compares_data_keys_but_not_where_data_is_cached():
    saved = {"config": {"seed": 0, "data": {"bands": {"s2": ["B4"]}, "prepared_dir": "a"}}}
    config = ml_collections.ConfigDict(
        {"seed": 0, "data": {"bands": {"s2": ["B4", "B8"]}, "prepared_dir": "b"}}
    )
    with pytest.raises(loop.ResumeConfigError, match=r"data.bands.s2: \['B4'\] -> \['B4', 'B8'\]"):
        loop.check_resume_config(config, saved, Path("ckpt/3"))
    config.allow_resume_changes = "data"
    loop.check_resume_config(config, saved, Path("ckpt/3"))


def test_training_configs_define_allow_resume_changes(pretrain_config, finetune_config):
    assert pretrain_config("mae", "tiny").allow_resume_changes == ""
    assert finetune_config("eurosat_ms").fit.allow_resume_changes == ""


def test_check_same_model_names_the_difference(tmp_path):
    a = {"format": 2, "model": "mae", "variant": "tiny", "param_shapes": {"w": [2, 2]}}
    with pytest.raises(checkpoint.CheckpointMismatchError, match="model 'croma'"):
        checkpoint.check_same_model({**a, "model": "croma"}, a, tmp_path)
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"shapes differ for \['w'\]"):
        checkpoint.check_same_model({**a, "param_shapes": {"w": [3, 2]}}, a, tmp_path)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="layout version 1"):
        checkpoint.check_same_model({k: v for k, v in a.items() if k != "format"}, a, tmp_path)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_together(prepared, tmp_path):
    """Two JAX processes on 127.0.0.1 (gloo CPU collectives) run the same data-parallel steps."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            _cmd(
                tmp_path,
                prepared,
                "--config.total_steps=4",
                "--config.checkpoint.every_steps=2",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.time() + 240
    while time.time() < deadline and any(p.poll() is None for p in procs):
        if any(p.poll() not in (None, 0) for p in procs):
            break  # one process failed: the other would wait for it at a collective
        time.sleep(0.2)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    results = [proc.communicate() for proc in procs]
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
    outs = [out for out, _ in results]
    finals = [
        line.split("loss ")[-1]
        for out in outs
        for line in out.splitlines()
        if "finished at loss" in line
    ]
    assert len(finals) == 2 and finals[0] == finals[1], outs
    assert "process 0/2" in outs[0] and "process 1/2" in outs[1]
    assert sorted(_losses(tmp_path)) == [1, 2, 3, 4]  # process 0 logs every step
    assert (tmp_path / "checkpoints" / "4").is_dir()


def test_progress_line_between_logged_steps_names_the_examples(capsys, monkeypatch):
    clock = iter([0.0, 10.0, 20.0, 22.0, 24.0, 24.0, 60.0])
    monkeypatch.setattr(metrics_lib.time, "perf_counter", lambda: next(clock))
    progress = metrics_lib.Progress(100, 8, "windows", show=True, every_s=30.0)  # shown_at 0
    progress.step_done(1)  # t 10: compiling
    progress.step_done(2)  # t 20
    progress.step_done(3)  # t 22
    assert not progress.due()  # t 24
    progress.show(3, {"loss": 0.5, "lr": 1e-3})  # shown_at 24
    assert progress.due()  # t 60
    line = capsys.readouterr().out
    # 2 steps in 12 s after the first: 6 s per step, 8 / 6 windows per second, 97 steps left.
    assert line.strip() == "step 3/100 | loss 0.5000 | lr 1.00e-03 | 1.3 windows/s | ETA 9m42s"
