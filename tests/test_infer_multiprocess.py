"""Whole-scene inference (`scripts/infer_scene.py`) data-parallel over two JAX processes on CPU
(gloo): each process takes every other tile of one shared store, and the finished store and maps
equal those of one process bit for bit. The scene is the Sen1Floods11 Sentinel-2 chip (512 x 512,
13 bands): 4 tiles of 256 px, 36 windows of 96 px (stride 48) each."""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "infer_scene.py"
RANDOM_SMARTIES = f"random:{ROOT / 'configs/pretrain/smarties.py'}:tiny"
S2_CHIP = "sen1floods11_sample/S2/Spain_7370579_S2Hand.tif"
TILES, WINDOWS_PER_TILE = 4, 36
# One CPU device per process, in the single-process reference as in each of the two processes,
# so that every model call compiles to the same program.
ONE_DEVICE = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
PRINTED = re.compile(r": (\d+) tiles, (\d+) windows \((\d+) without data skipped\)")
# The script's one-line error (stderr) before it exits 1.
ERROR_LINE = re.compile(r"^scripts/infer_scene\.py: .*$", re.MULTILINE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], logs: Path, processes: int, timeout_s: float = 180) -> list[dict]:
    """Runs scripts/infer_scene.py as `processes` JAX processes (one plain run for 1) and returns
    each one's {"returncode", "stdout", "stderr"}.

    As soon as one fails (exits non-zero, or prints its error line: JAX's shutdown barrier then
    holds it until every process reaches it) all are killed: the others would wait for it at the
    next barrier for minutes."""
    if processes > 1:
        address = f"127.0.0.1:{free_port()}"
        args = [*args, f"--coordinator_address={address}", f"--num_processes={processes}"]
    logs.mkdir(parents=True, exist_ok=True)
    running = []
    for i in range(processes):
        command = [sys.executable, str(SCRIPT), *args]
        if processes > 1:
            command.append(f"--process_id={i}")
        out, err = logs / f"{i}.out", logs / f"{i}.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            running.append(
                subprocess.Popen(command, cwd=ROOT, env=ONE_DEVICE, stdout=stdout, stderr=stderr)
            )
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p in running):
        failed = any(p.poll() not in (None, 0) for p in running) or any(
            ERROR_LINE.search((logs / f"{i}.err").read_text()) for i in range(processes)
        )
        if failed or time.monotonic() > deadline:
            for p in running:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.2)
    return [
        {
            "returncode": p.returncode,
            "stdout": (logs / f"{i}.out").read_text(),
            "stderr": (logs / f"{i}.err").read_text(),
        }
        for i, p in enumerate(running)
    ]


def check_exits(results: list[dict]) -> None:
    """Every process exited 0; else the message gives each failure's status and its error line
    (or the end of its stderr)."""
    failures = [
        f"process {i} of {len(results)} exited {r['returncode']}: "
        + "\n".join(ERROR_LINE.findall(r["stderr"]) or [r["stderr"][-1500:]])
        for i, r in enumerate(results)
        if r["returncode"] != 0
    ]
    assert not failures, "\n".join(failures)


def printed_counts(result: dict) -> tuple[int, int, int]:
    """(tiles, windows computed, windows skipped) of the line a process prints at its end."""
    (match,) = PRINTED.finditer(result["stdout"])
    return tuple(int(g) for g in match.groups())


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a finished store (data, masks, coordinates), as numpy."""
    ds = xr.open_zarr(path)
    return {name: ds[name].values for name in (*ds.data_vars, *ds.coords)}


def assert_same_arrays(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name, strict=True)


def check_split(two: list[dict], one: list[dict], summary: dict) -> None:
    """Each of the two processes computed half the tiles and windows of the single process, and
    process 0's summary says so."""
    ((tiles, windows, skipped),) = [printed_counts(r) for r in one]
    assert (tiles, windows, skipped) == (TILES, TILES * WINDOWS_PER_TILE, 0)
    halves = [printed_counts(r) for r in two]
    assert halves == [(TILES // 2, TILES // 2 * WINDOWS_PER_TILE, 0)] * 2
    assert sum(w for _, w, _ in halves) == windows  # no window computed twice
    assert (summary["tiles"], summary["tiles_total"]) == (TILES // 2, TILES // 2)
    assert summary["windows_computed"] == TILES // 2 * WINDOWS_PER_TILE
    assert summary["settings"]["process_count"] == 2


@pytest.mark.slow
def test_two_processes_embed_the_scene_like_one(shared_data, tmp_path):
    common = [
        f"--encoder={RANDOM_SMARTIES}",
        "--sensor=sentinel2_l1c",
        f"--input={shared_data / S2_CHIP}",
        "--tile=256",
        "--batch_size=8",
    ]
    two = launch([*common, f"--output={tmp_path / 'two.zarr'}"], tmp_path / "logs2", 2)
    check_exits(two)
    one = launch([*common, f"--output={tmp_path / 'one.zarr'}"], tmp_path / "logs1", 1)
    check_exits(one)

    shared = xr.open_zarr(tmp_path / "two.zarr")
    assert shared.attrs["complete"] is True
    assert shared.attrs == xr.open_zarr(tmp_path / "one.zarr").attrs
    arrays = store_arrays(tmp_path / "two.zarr")
    assert {"embedding", "valid", "x", "y", "feature", "spatial_ref"} <= arrays.keys()
    assert arrays["tile_done"].all()
    assert_same_arrays(arrays, store_arrays(tmp_path / "one.zarr"))

    summary = json.loads((tmp_path / "two.summary.json").read_text())
    check_split(two, one, summary)
    assert json.loads((tmp_path / "one.summary.json").read_text())["settings"]["process_count"] == 1


@pytest.fixture(scope="module")
def water_head(tmp_path_factory):
    """The workdir of a 2-step UPerNet water head on a random SMARTIES tiny (Sen1Floods11),
    trained by finetune/main.py on one device: its checkpoint names device 0, which is process
    0's device in a 2-process run."""
    workdir = tmp_path_factory.mktemp("water_head") / "run"
    command = [
        sys.executable,
        str(ROOT / "finetune" / "main.py"),
        "--config=configs/finetune/sen1floods11.py",
        f"--config.encoder={RANDOM_SMARTIES}",
        "--config.fit.total_steps=2",
        "--config.fit.warmup_fraction=0.5",
        "--config.fit.log_every=2",
        "--config.fit.checkpoint.every_steps=2",
        "--config.head.channels=16",
        f"--workdir={workdir}",
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=ONE_DEVICE, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_two_processes_map_the_scene_like_one(water_head, shared_data, tmp_path):
    common = [f"--head={water_head}", f"--input={shared_data / S2_CHIP}", "--tile=256"]
    two = launch([*common, f"--output={tmp_path / 'two.tif'}"], tmp_path / "logs2", 2)
    check_exits(two)
    one = launch([*common, f"--output={tmp_path / 'one.tif'}"], tmp_path / "logs1", 1)
    check_exits(one)

    logits = xr.open_zarr(tmp_path / "two.logits.zarr")
    assert logits.attrs["complete"] is True and list(logits.feature.values) == ["no_water", "water"]
    assert_same_arrays(
        store_arrays(tmp_path / "two.logits.zarr"), store_arrays(tmp_path / "one.logits.zarr")
    )
    for suffix in ("", ".probabilities"):
        with rasterio.open(tmp_path / f"two{suffix}.tif") as a:
            with rasterio.open(tmp_path / f"one{suffix}.tif") as b:
                assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
                np.testing.assert_array_equal(a.read(), b.read(), strict=True)

    summary = json.loads((tmp_path / "two.summary.json").read_text())
    check_split(two, one, summary)
