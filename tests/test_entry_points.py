"""The entry points fail early and clearly: a config value that cannot work, or a workdir that is
a file, stops pretrain/main.py and finetune/main.py before any data is prepared or anything is
computed; SIGTERM ends with the step and where its checkpoint is; logs are quiet by default."""

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import TINY

from eofm import logs
from eofm.data import arrayrecord, datasets
from eofm.train import loop, validate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pretrain_main():
    """pretrain/main.py as a module (its flags join absl's; no other test module imports it)."""
    spec = importlib.util.spec_from_file_location("pretrain_main", ROOT / "pretrain" / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


def _set(config, key: str, value):
    *parents, last = key.split(".")
    for name in parents:
        config = config[name]
    config[last] = value


# (config key, bad value, how the message names the key, what it says is allowed); 8 devices.
BAD_VALUES = [
    ("batch_size", 12, "batch_size = 12", "multiples of 8"),
    ("total_steps", 0, "total_steps = 0", "an integer >= 1"),
    ("warmup_steps", -1, "warmup_steps = -1", "an integer >= 0"),
    ("warmup_steps", 400, "warmup_steps = 400", "0 to total_steps (300)"),
    ("log_every", 0, "log_every = 0", "an integer >= 1"),
    ("checkpoint.every_steps", 0, "checkpoint.every_steps = 0", "an integer >= 1"),
    ("checkpoint.keep", 0, "checkpoint.keep = 0", "an integer >= 1"),
    ("grad_accum_steps", 3, "grad_accum_steps = 3", "divisors of 32: [1, 2, 4, 8, 16, 32]"),
    ("model.dtype", "bfloat61", "model.dtype = 'bfloat61'", "float32, bfloat16, float16"),
    ("model.param_dtype", "int8", "model.param_dtype = 'int8'", "float32, bfloat16, float16"),
    ("mesh.preset", "dpp", "mesh.preset = 'dpp'", "allowed: dp, fsdp, fsdp_tp"),
    ("mesh.tensor", 3, "mesh = {'tensor': 3}", "8 devices do not divide"),
    ("data.source_args", {"rooot": "x"}, "data.source_args", "did you mean 'root'"),
]


@pytest.mark.parametrize(
    "key, value, named, allowed", BAD_VALUES, ids=[f"{k}={v}" for k, v, *_ in BAD_VALUES]
)
def test_bad_config_value_fails_before_data_is_prepared(
    key, value, named, allowed, pretrain_main, pretrain_config, tmp_path
):
    config = pretrain_config("mae", "tiny")
    _set(config, key, value)
    with pytest.raises(validate.ConfigError) as error:
        pretrain_main.run(config, str(tmp_path / "run"))
    assert f"config key {named}" in str(error.value)
    assert allowed in str(error.value)
    assert not (tmp_path / "run" / "data").exists()


@pytest.mark.parametrize("workdir", ["a_file", "a_file/run"])
def test_workdir_that_is_a_file_fails_before_data_is_prepared(
    workdir, pretrain_main, pretrain_config, tmp_path
):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(validate.ConfigError, match="a_file is a file, not a directory"):
        pretrain_main.run(pretrain_config("mae", "tiny"), str(tmp_path / workdir))
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]


def test_pretrain_config_error_is_one_line_and_prepares_nothing(tmp_path):
    command = [
        sys.executable,
        str(ROOT / "pretrain" / "main.py"),
        "--config=configs/pretrain/mae.py:tiny",
        "--config.log_every=0",
        f"--workdir={tmp_path}",
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "pretrain/main.py: config key log_every = 0; allowed: an integer >= 1"
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_summary_of_a_run_that_had_nothing_left_to_train(pretrain_main):
    done = loop.Result(model=None, step=300, metrics={})
    assert pretrain_main.summary(done, "runs/a") == (
        "process 0/1: runs/a is already at step 300; nothing to train"
    )


def _finetune(workdir, *overrides):
    command = [
        sys.executable,
        str(ROOT / "finetune" / "main.py"),
        "--config=configs/finetune/eurosat_ms.py:method=finetune",
        *overrides,
        f"--workdir={workdir}",
    ]
    return subprocess.run(
        command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.fit.log_every=0", "config key fit.log_every = 0; allowed: an integer >= 1"),
        (
            "--config.fit.warmup_fraction=2.0",
            "config key fit.warmup_fraction = 2.0; allowed: 0 to 1",
        ),
    ],
)
def test_finetune_fit_error_stops_before_any_compute(override, message, tmp_path):
    result = _finetune(tmp_path, override)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"finetune/main.py: {message}"
    assert list(tmp_path.iterdir()) == []  # no features, fit checkpoints nor reports


def test_finetune_workdir_that_is_a_file_stops_before_any_compute(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = _finetune(blocker)
    assert result.returncode == 1
    assert f"workdir {blocker} is not writable: {blocker} is a file" in result.stderr


def test_quiet_logs_by_default_and_verbosity_brings_library_info_back():
    loggers = [logging.getLogger(name) for name in ("", *logs.LIBRARY_LOGGERS)]
    levels = [logger.level for logger in loggers]
    try:
        logs.configure()
        assert logging.getLogger().getEffectiveLevel() == logging.INFO  # eofm's own messages
        for name in ("absl", "orbax", "jax._src.xla_bridge"):
            assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING
        logs.configure(0)
        assert logging.getLogger("orbax").getEffectiveLevel() == logging.INFO
        logs.configure(1)
        assert logging.getLogger("absl").getEffectiveLevel() == logging.DEBUG
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    arrayrecord.prepare(datasets.BigEarthNetSource(), directory, name="bigearthnet_s1s2")
    return directory


def test_sigterm_says_where_the_checkpoint_is_and_logs_stay_quiet(prepared, tmp_path):
    """A run with a grain worker stopped by SIGTERM after 2 steps: status 0, a last line naming
    the step and its checkpoint, warnings but no library INFO logs, no leaked shared memory."""
    command = [
        sys.executable,
        str(ROOT / "pretrain" / "main.py"),
        *TINY,
        "--config.total_steps=1000",
        "--config.data.num_workers=1",
        f"--config.data.prepared_dir={prepared}",
        f"--workdir={tmp_path}",
    ]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    last = stdout.strip().splitlines()[-1]
    assert "on SIGTERM; checkpoint saved in" in last, stdout[-2000:]
    step = int(last.split("stopped at step ")[1].split()[0])
    checkpoint = tmp_path / "checkpoints" / str(step)
    assert last == (
        f"process 0/1: stopped at step {step} on SIGTERM; checkpoint saved in {checkpoint}"
        " (run the same command to resume)"
    )
    assert checkpoint.is_dir() and 2 <= step < 1000
    assert "finished at loss" not in stdout
    assert "SIGTERM received" in stderr  # warnings still show
    assert "checkpoint_manager.py" not in stderr  # orbax's INFO logs do not
    assert "leaked shared_memory" not in stderr


def test_misspelt_source_argument_of_an_evaluation_is_a_config_error():
    """finetune/main.py checks the evaluation's `data.source_args` before any compute."""
    with pytest.raises(validate.ConfigError, match="config key data.source_args: .*'splt'"):
        validate.check_source_args("eurosat_ms", {"root": "x", "splt": "train"})
