"""Sharding on 8 simulated CPU devices: dp, fsdp and fsdp_tp agree with one device; and the
errors of a multi-process launch."""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from eofm import parallel
from eofm.data.spec import SensorSpec
from eofm.models import layers, mae
from eofm.train import config as train_config
from eofm.train import loop, optim
from eofm.train import step as step_lib

CFG = mae.MAEConfig(
    patch_size=8,
    embed_dim=64,
    depth=2,
    num_heads=4,
    in_chans=4,
    decoder_dim=32,
    decoder_depth=1,
    decoder_heads=4,
)
INPUTS = {"image": SensorSpec("sentinel2_l2a", ("B02", "B03", "B04", "B08"))}


def _loss(model, batch, rng):
    return model.loss(batch, rng)


def _no_dataset(process_index, process_count):
    raise AssertionError("these tests feed their own batches")


WORKLOAD = loop.Workload(
    name="mae",
    variant="test",
    make_model=lambda rngs: mae.MAE(CFG, INPUTS, rngs=rngs),
    loss_fn=_loss,
    make_dataset=_no_dataset,
    input_keys=tuple(INPUTS),
)


def _config():
    config = ml_collections.ConfigDict({"seed": 0})
    train_config.training(config, lr=1e-3, batch_size=8, total_steps=10, warmup_steps=0)
    return config


def _setup(mesh):
    """Parameters created sharded on `mesh` (same values whatever the mesh), the jitted step of
    the training loop, and the run's static pieces (`loop.Setup`)."""
    config = _config()
    run = loop.setup(config, WORKLOAD, mesh)
    state = jax.jit(run.init, out_shardings=run.state_shardings)()
    assert not jax.tree.leaves(state.frozen)  # MAE keeps no non-parameter state
    return state, loop.compile_step(config, WORKLOAD, run), run


def _grads(run, state, batch, rng):
    def f(p):
        return _loss(nnx.merge(run.graphdef, p, state.frozen), batch, rng)[0]

    return jax.jit(jax.value_and_grad(f))(state.params)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=(8, 32, 32, 4)), axis=1).astype(np.float32)
    return {"image": x}


@pytest.fixture(scope="module")
def reference(batch):
    assert jax.device_count() == 8, "conftest sets 8 host devices"
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    state, train_step, run = _setup(mesh)
    loss, grads = _grads(run, state, batch, jax.random.key(1))
    new_state, metrics = train_step(state, batch, jax.random.key(1))
    del new_state
    return {
        "loss": loss,
        "grads": grads,
        "step_loss": metrics["loss"],
        "grad_norm": metrics["grad_norm"],
        "bytes": parallel.bytes_per_device(state.params),
    }


@pytest.mark.parametrize("preset", ["dp", "fsdp", "fsdp_tp"])
def test_sharded_step_matches_one_device(preset, batch, reference):
    mesh = parallel.make_mesh(preset)
    state, train_step, run = _setup(mesh)
    sharded_batch = jax.device_put(batch, parallel.batch_sharding(mesh))
    loss, grads = _grads(run, state, sharded_batch, jax.random.key(1))
    np.testing.assert_allclose(loss, reference["loss"], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6),
        jax.device_get(grads),
        jax.device_get(reference["grads"]),
    )
    new_state, metrics = train_step(state, sharded_batch, jax.random.key(1))
    np.testing.assert_allclose(metrics["loss"], reference["step_loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], reference["grad_norm"], rtol=1e-5)
    # The update keeps every parameter's sharding.
    for new, old in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params)):
        assert new.sharding == old.sharding


def test_fsdp_stores_an_eighth_of_the_parameters_per_device(reference):
    dp_state = _setup(parallel.make_mesh("dp"))[0]
    fsdp_state = _setup(parallel.make_mesh("fsdp"))[0]
    dp = parallel.bytes_per_device(dp_state.params)
    fsdp = parallel.bytes_per_device(fsdp_state.params)
    assert len(dp) == len(fsdp) == 8
    total = sum(reference["bytes"].values())
    assert all(v == total for v in dp.values())  # replicated
    ratio = max(fsdp.values()) / max(dp.values())
    assert 0.125 <= ratio < 0.15, ratio  # a few small params (patch dims) stay replicated
    tp = parallel.bytes_per_device(_setup(parallel.make_mesh("fsdp_tp"))[0].params)
    assert max(tp.values()) < max(dp.values()) / 4  # fsdp 4 x tensor 2


def test_logical_rules_and_mesh_sizes():
    mesh = parallel.make_mesh("fsdp_tp")
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    spec = parallel.logical_to_mesh(("embed", "mlp"), (64, 256), mesh)
    assert spec == (jax.sharding.PartitionSpec("fsdp", "tensor"), [])
    # Not divisible: replicated rather than an error, and reported.
    spec = parallel.logical_to_mesh(("embed",), (6,), mesh)
    assert spec == (jax.sharding.PartitionSpec(None), [(0, 6, ("fsdp",))])
    assert parallel.mesh_shape({"data": 2, "fsdp": -1}, 8) == (2, 4, 1)
    with pytest.raises(ValueError, match="needs 6 devices"):
        parallel.mesh_shape({"data": 3, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match="unknown mesh preset 'fdsp'"):
        parallel.make_mesh("fdsp")
    with pytest.raises(ValueError, match="no rule"):
        parallel.logical_to_mesh(("vocab",), (8,), mesh)


def test_rules_config_round_trips():
    from absl import flags
    from ml_collections import config_dict, config_flags

    default = parallel.default_rules_config()
    assert {n for n, _ in default} == {"batch", *layers.LOGICAL_AXES}
    assert parallel.rules_from_config(default) == parallel.DEFAULT_RULES
    assert parallel.rules_from_config(()) == parallel.rules_from_config([]) == default
    # Lists, as a JSON-saved config gives back.
    assert parallel.rules_from_config(json.loads(json.dumps(default))) == default
    config = config_dict.ConfigDict(dict(mesh=dict(rules=default)))
    assert parallel.rules_from_config(config.mesh.rules) == default
    assert config_dict.ConfigDict(config.to_dict()).mesh.rules == default
    # A command-line flag replaces the table.
    argv = ["prog", "--config.mesh.rules=(('embed', None), ('mlp', ['fsdp', 'tensor']))"]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", config, flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    assert parallel.rules_from_config(flag_values.config.mesh.rules) == (
        ("embed", None),
        ("mlp", ("fsdp", "tensor")),
    )


@pytest.mark.parametrize(
    "rules, culprit, allowed",
    [
        ((("embed", "fsdb"),), "fsdb", "('data', 'fsdp', 'tensor')"),
        ((("batch", ("data", "fdsp")),), "fdsp", "('data', 'fsdp', 'tensor')"),
        ((("batch", ("data", "data")),), "('data', 'data')", "distinct"),
        ((("embd", "fsdp"),), "'embd'", "('batch', 'embed', 'mlp', 'heads', 'patch')"),
        ((("embed", "fsdp"), ("embed", None)), "('embed', None)", "has a rule already"),
        (("embed", None), "'embed'", "(logical axis, mesh axes) pair"),  # a pair, not a table
    ],
)
def test_rules_config_errors_name_the_culprit(rules, culprit, allowed):
    with pytest.raises(ValueError) as error:
        parallel.rules_from_config(rules)
    assert culprit in str(error.value) and allowed in str(error.value), str(error.value)


def _linear_tree(in_features, out_features):
    """{"odd": abstract Linear state}: kernel [in, out] named ("embed", "mlp"), bias [out]."""
    linear = nnx.eval_shape(
        lambda: layers.linear(in_features, out_features, ("embed", "mlp"), rngs=nnx.Rngs(0))
    )
    return {"odd": nnx.state(linear)}


def test_custom_rules_change_the_specs():
    mesh = parallel.make_mesh("fsdp_tp")
    P = jax.sharding.PartitionSpec
    rules = parallel.rules_from_config((("embed", None), ("mlp", "tensor")))
    spec = parallel.logical_to_mesh(("embed", "mlp"), (64, 256), mesh, rules)
    assert spec == (P(None, "tensor"), [])
    rules = parallel.rules_from_config([["embed", "tensor"], ["mlp", ["fsdp", "tensor"]]])
    # "tensor" goes to the first dim, so "mlp" keeps only "fsdp".
    assert parallel.logical_to_mesh(("embed", "mlp"), (64, 256), mesh, rules) == (
        P("tensor", "fsdp"),
        [],
    )
    shardings = parallel.shardings_for(_linear_tree(64, 256), mesh, rules)
    assert shardings["odd"]["kernel"].get_value().spec == P("tensor", "fsdp")
    assert shardings["odd"]["bias"].get_value().spec == P(("fsdp", "tensor"))


def test_undivided_dimension_is_replicated_and_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(parallel, "_REPORTED", set())
    mesh = parallel.make_mesh("fsdp_tp")  # fsdp 4, tensor 2
    tree = _linear_tree(6, 8)
    with caplog.at_level(logging.WARNING):
        first = parallel.shardings_for(tree, mesh)
        second = parallel.shardings_for(tree, mesh)
    P = jax.sharding.PartitionSpec
    for shardings in (first, second):
        assert shardings["odd"]["kernel"].get_value().spec == P(None, "tensor")
        assert shardings["odd"]["bias"].get_value().spec == P("tensor")
    messages = [r.getMessage() for r in caplog.records if "does not divide" in r.getMessage()]
    assert messages == [
        "parameter odd/kernel: dim 0 (6) does not divide mesh axes ('fsdp',) (4): replicated"
    ]


def test_constrain_batch_inside_jit():
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    batch = {
        "image": np.arange(8 * 3 * 2, dtype=np.float32).reshape(8, 3, 2),
        "label": np.arange(8, dtype=np.int32),
    }
    placed = jax.device_put(batch, parallel.replicated(mesh))
    out = jax.jit(lambda b: parallel.constrain_batch(b, mesh))(placed)
    for key, value in batch.items():
        np.testing.assert_array_equal(np.asarray(out[key]), value)
        assert out[key].sharding.is_equivalent_to(parallel.batch_sharding(mesh), value.ndim)
        assert not placed[key].sharding.is_equivalent_to(parallel.batch_sharding(mesh), value.ndim)


def test_gradient_accumulation_equals_one_big_batch(batch):
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    state, _, run = _setup(mesh)
    tx = optax.sgd(1.0)
    s = step_lib.TrainState(state.step, state.params, tx.init(state.params), state.frozen)
    full = jax.jit(step_lib.make_train_step(run.graphdef, tx, lambda _: 1.0, _fixed_mask_loss))
    accum = jax.jit(
        step_lib.make_train_step(run.graphdef, tx, lambda _: 1.0, _fixed_mask_loss, accum_steps=4)
    )
    a, ma = full(s, batch, jax.random.key(0))
    b, mb = accum(s, batch, jax.random.key(0))
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
    # SGD with lr 1: parameter deltas are the gradients, equal to float32 summation noise.
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-5), a.params, b.params
    )


def test_step_reports_gradient_norm_and_names_non_finite_gradients(batch):
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    state, _, run = _setup(mesh)
    tx = optax.sgd(1.0)
    s = step_lib.TrainState(state.step, state.params, tx.init(state.params), state.frozen)

    def metrics_of(loss):
        step = jax.jit(step_lib.make_train_step(run.graphdef, tx, lambda _: 1.0, loss))
        return step(s, batch, jax.random.key(0))[1]

    def one_infinite_gradient(model, batch, rng):
        value, metrics = _fixed_mask_loss(model, batch, rng)
        return value + jnp.inf * jnp.sum(model.encoder.patch_embed.proj.kernel[...]), metrics

    grads = jax.grad(
        lambda p: _fixed_mask_loss(nnx.merge(run.graphdef, p, s.frozen), batch, None)[0]
    )(s.params)
    metrics = metrics_of(_fixed_mask_loss)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-5)
    assert all(jax.tree.leaves(metrics["grads_finite"]))
    flags = jax.tree_util.tree_flatten_with_path(metrics_of(one_infinite_gradient)["grads_finite"])
    bad = [optim.param_path(path) for path, ok in flags[0] if not ok]
    assert bad == ["encoder/patch_embed/proj/kernel/value"]


def _fixed_mask_loss(model, batch, rng):
    """A per-example mean loss through the encoder that does not depend on the rng (MAE's masks
    depend on the batch size, so they differ between one batch and its microbatches)."""
    del rng
    cls = model.encoder(batch["image"])[:, 0]
    return jnp.mean(jnp.sum((cls - 0.1) ** 2, axis=-1)), {}


def test_checkpoint_restores_onto_a_different_mesh(tmp_path):
    """Saved sharded over 8 devices (fsdp), restored onto 2 devices (fsdp_tp 1 x 2): same values,
    new shardings."""
    from eofm.train import checkpoint

    saved_state, _, saved_run = _setup(parallel.make_mesh("fsdp"))
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")

    class _NoIterator:
        def get_state(self):
            return {}

    ckpt.save(1, saved_state, _NoIterator(), saved_run.meta)
    ckpt.close()

    small = parallel.make_mesh("fsdp_tp", devices=jax.devices()[:2])
    assert dict(small.shape) == {"data": 1, "fsdp": 1, "tensor": 2}
    run = loop.setup(_config(), WORKLOAD, small)
    step, restored = checkpoint.Checkpointer(tmp_path / "checkpoints").restore_latest(
        run.abstract_state, None, run.meta
    )
    assert step == 1
    for new, old in zip(jax.tree.leaves(restored), jax.tree.leaves(saved_state)):
        assert new.sharding.mesh.devices.size == 2
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))


@pytest.mark.parametrize(
    "given, missing",
    [
        ({"num_processes": 2}, "coordinator_address, process_id missing"),
        ({"coordinator_address": "127.0.0.1:1234", "process_id": 0}, "num_processes missing"),
    ],
)
def test_partial_multi_process_arguments_name_what_is_missing(given, missing, monkeypatch):
    for name in parallel.CLUSTER_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=missing):
        parallel.initialize_distributed(**given)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_process_that_never_joins_is_a_clear_error_after_the_timeout(tmp_path):
    """Process 0 of 2 started alone exits with status 1 soon after --distributed_timeout_s,
    naming the address it waited on, before any data is prepared."""
    address = f"127.0.0.1:{_free_port()}"
    root = Path(__file__).resolve().parents[1]
    command = [
        sys.executable,
        str(root / "pretrain" / "main.py"),
        "--config=configs/pretrain/mae.py:tiny",
        f"--workdir={tmp_path / 'run'}",
        f"--coordinator_address={address}",
        "--num_processes=2",
        "--process_id=0",
        "--distributed_timeout_s=5",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    start = time.monotonic()
    result = subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"waited 5 s at coordinator {address}" in result.stderr, result.stderr[-3000:]
    assert "not all 2 processes joined" in result.stderr
    assert elapsed < 60  # imports + 5 s, well before JAX's own deadline aborts the process
    assert not (tmp_path / "run").exists()


def test_activations_keep_the_batch_split_under_a_mesh():
    mesh = parallel.make_mesh("fsdp")
    x = jax.device_put(jnp.ones((8, 4, 4, 16)), parallel.batch_sharding(mesh))

    def double(x):
        return parallel.constrain_activations(2 * x)

    def under_mesh(x):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return double(x)

    text = jax.jit(under_mesh).lower(x).as_text()
    assert 'sharding_constraint %1 <@mesh, [{"data", "fsdp"}, {?}, {?}, {?}]>' in text
    assert "sharding_constraint" not in jax.jit(double).lower(x).as_text()  # no mesh: no-op
    # A batch that does not split over the 8 devices is left alone.
    odd = jnp.ones((3, 4))
    assert "sharding_constraint" not in jax.jit(under_mesh).lower(odd).as_text()
