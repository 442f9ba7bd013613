"""Checkpoint integrity: per-array checksums verified on restore (a bit flip or a zeroed block
falls back to the previous checkpoint), the same whatever the sharding, and read-only access that
never writes to the directory it reads."""

import os
import stat
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_checks import listing

from eofm import parallel
from eofm.train import checkpoint


class _NoIterator:
    def get_state(self):
        return {}


def _state(seed: int, devices=None) -> dict:
    """A small train-state-like tree; "w" holds random bits (stored uncompressed by zstd, so its
    bytes can be found in the checkpoint files) sharded over `devices` (default: all)."""
    mesh = parallel.make_mesh("fsdp", devices=devices or jax.devices())
    bits = np.random.default_rng(seed).integers(0, 2**32, size=(64, 32), dtype=np.uint32)
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    return {
        "params": {"w": jax.device_put(bits.view(np.float32), sharded), "b": jnp.arange(3.0)},
        "step": jnp.int32(seed),
    }


def _abstract(state: dict) -> dict:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )


def _save(directory: Path, states: dict[int, dict]) -> None:
    ckpt = checkpoint.Checkpointer(directory)
    for step, state in states.items():
        ckpt.save(step, state, _NoIterator(), {"model": "t"})
    ckpt.close()


def _corrupt(step_dir: Path, array: np.ndarray, how: str) -> None:
    """Flips one bit or zeroes 64 bytes of `array` where its bytes lie in the checkpoint's files
    (the chunk still decodes: only its values change)."""
    raw = array.tobytes()
    for f in (step_dir / "state").rglob("*"):
        data = bytearray(f.read_bytes()) if f.is_file() else bytearray()
        at = data.find(raw[1024:1088])
        if at >= 0:
            if how == "bit":
                data[at + 10] ^= 0x04
            else:
                data[at : at + 64] = bytes(64)
            f.write_bytes(bytes(data))
            return
    raise AssertionError(f"the bytes of the array are not stored verbatim under {step_dir}")


@pytest.mark.parametrize("how", ["bit", "zeros"])
def test_corrupt_array_falls_back_to_previous_checkpoint(tmp_path, how):
    states = {1: _state(1), 2: _state(2)}
    _save(tmp_path / "checkpoints", states)
    _corrupt(tmp_path / "checkpoints" / "2", np.asarray(states[2]["params"]["w"]), how)

    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
    step, restored = ckpt.restore_latest(_abstract(states[2]), None, {"model": "t"})
    ckpt.close()

    assert step == 1
    np.testing.assert_array_equal(
        np.asarray(restored["params"]["w"]), np.asarray(states[1]["params"]["w"])
    )
    assert (tmp_path / "checkpoints_unreadable" / "2" / "state").is_dir()  # set aside, kept
    assert not (tmp_path / "checkpoints" / "2").exists()


def test_latest_params_verifies_checksums(tmp_path):
    states = {1: _state(1), 2: _state(2)}
    _save(tmp_path / "checkpoints", states)
    _corrupt(tmp_path / "checkpoints" / "2", np.asarray(states[2]["params"]["w"]), "bit")

    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
    step, params = ckpt.latest_params()
    ckpt.close()

    assert step == 1
    np.testing.assert_array_equal(params["w"], np.asarray(states[1]["params"]["w"]))
    assert (tmp_path / "checkpoints_unreadable" / "2").is_dir()


def test_checksums_do_not_depend_on_sharding(tmp_path):
    """Saved sharded over 2 devices, restored and verified on 1 (and without a target)."""
    on_two = _state(3, devices=jax.devices()[:2])
    assert len(on_two["params"]["w"].sharding.device_set) == 2
    on_one = _state(3, devices=jax.devices()[:1])
    assert checkpoint.checksums(on_two) == checkpoint.checksums(on_one)
    assert checkpoint.checksums(on_two) != checkpoint.checksums(_state(4))
    _save(tmp_path / "checkpoints", {1: on_two})

    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", read_only=True)
    step, restored = ckpt.restore_latest(_abstract(on_one), None, {"model": "t"})
    assert step == 1 and restored["params"]["w"].sharding == on_one["params"]["w"].sharding
    assert ckpt.latest_params()[0] == 1
    assert set(ckpt.latest_meta()[1]["checksums"]) == {"params/w", "params/b", "step"}


@pytest.fixture
def read_only_tree(tmp_path):
    """A workdir with checkpoints 1 and 2 (2 truncated), then chmod -R a-w; restored afterwards."""
    workdir = tmp_path / "run"
    states = {1: _state(1), 2: _state(2)}
    _save(workdir / "checkpoints", states)
    for f in (workdir / "checkpoints" / "2" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[:100])
    paths = [workdir, *workdir.rglob("*")]
    modes = {p: p.stat().st_mode for p in paths}
    for p in paths:
        p.chmod(modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield workdir, states
    for p in reversed(paths):
        p.chmod(modes[p])


def test_read_only_checkpointer_writes_nothing_and_skips_bad_checkpoints(read_only_tree, caplog):
    workdir, states = read_only_tree
    before = listing(workdir.parent)

    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", read_only=True)
    step, params = ckpt.latest_params()
    meta_step, meta = ckpt.latest_meta()
    restored = ckpt.restore_latest(_abstract(states[1]), None, {"model": "t"})
    ckpt.close()

    assert step == 1 and meta_step == 1 and restored[0] == 1 and meta["model"] == "t"
    np.testing.assert_array_equal(params["w"], np.asarray(states[1]["params"]["w"]))
    assert "checkpoints/2 is unreadable" in caplog.text and "left in place" in caplog.text
    assert listing(workdir.parent) == before  # nothing created, moved or touched
    with pytest.raises(PermissionError, match="read-only"):
        ckpt.save(3, states[1], _NoIterator(), {})


def test_read_only_meta_falls_back_when_unreadable(tmp_path):
    _save(tmp_path / "checkpoints", {1: _state(1), 2: _state(2)})
    (tmp_path / "checkpoints" / "2" / "meta" / "metadata").write_text("{torn")
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", read_only=True)
    assert ckpt.latest_meta()[0] == 1
    assert (tmp_path / "checkpoints" / "2").is_dir()


def test_read_only_on_a_missing_directory_creates_nothing(tmp_path):
    ckpt = checkpoint.Checkpointer(tmp_path / "absent" / "checkpoints", read_only=True)
    with pytest.raises(FileNotFoundError, match="no readable checkpoint in"):
        ckpt.latest_params()
    ckpt.close()
    assert os.listdir(tmp_path) == []
