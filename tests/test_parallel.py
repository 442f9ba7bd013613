"""Sharding on 8 simulated CPU devices: dp, fsdp and fsdp_tp agree with one device."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from eofm import parallel
from eofm.models import mae, vit
from eofm.train import optim
from eofm.train import step as step_lib

CFG = mae.MAEConfig(
    encoder=vit.ViTConfig(patch_size=8, embed_dim=64, depth=2, num_heads=4, in_chans=4),
    decoder_dim=32,
    decoder_depth=1,
    decoder_heads=4,
)


def _loss(model, batch, rng):
    loss, _ = model(batch["image"], rng=rng)
    return loss, {}


def _setup(mesh):
    """Parameters created sharded on `mesh` (same values whatever the mesh), and a jitted step."""
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: mae.MAE(CFG, rngs=nnx.Rngs(0)))
    graphdef, abstract_params, abstract_rest = nnx.split(abstract, nnx.Param, ...)
    tx, schedule = optim.make_optimizer(abstract_params, lr=1e-3, total_steps=10, warmup_steps=0)

    def init():
        with nnx.use_eager_sharding(False):
            _, params, _ = nnx.split(mae.MAE(CFG, rngs=nnx.Rngs(0)), nnx.Param, ...)
        return step_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    shardings = parallel.shardings_for(jax.eval_shape(init), mesh)
    state = jax.jit(init, out_shardings=shardings)()
    rest = nnx.split(abstract, nnx.Param, ...)[2]
    assert not jax.tree.leaves(abstract_rest)  # MAE keeps no non-parameter state
    train_step = jax.jit(
        step_lib.make_train_step(graphdef, rest, tx, schedule, _loss),
        in_shardings=(shardings, parallel.batch_sharding(mesh), parallel.replicated(mesh)),
        out_shardings=(shardings, parallel.replicated(mesh)),
    )
    return state, train_step, graphdef


def _grads(graphdef, params, batch, rng):
    def f(p):
        return _loss(nnx.merge(graphdef, p), batch, rng)[0]

    return jax.jit(jax.value_and_grad(f))(params)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=(8, 32, 32, 4)), axis=1).astype(np.float32)
    return {"image": x}


@pytest.fixture(scope="module")
def reference(batch):
    assert jax.device_count() == 8, "conftest sets 8 host devices"
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    state, train_step, graphdef = _setup(mesh)
    loss, grads = _grads(graphdef, state.params, batch, jax.random.key(1))
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
    state, train_step, graphdef = _setup(mesh)
    sharded_batch = jax.device_put(batch, parallel.batch_sharding(mesh))
    loss, grads = _grads(graphdef, state.params, sharded_batch, jax.random.key(1))
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
    assert spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    # Not divisible: replicated rather than an error.
    assert parallel.logical_to_mesh(("embed",), (6,), mesh) == jax.sharding.PartitionSpec(None)
    assert parallel.mesh_shape({"data": 2, "fsdp": -1}, 8) == (2, 4, 1)
    with pytest.raises(ValueError, match="needs 6 devices"):
        parallel.mesh_shape({"data": 3, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match="unknown mesh preset 'fdsp'"):
        parallel.make_mesh("fdsp")
    with pytest.raises(ValueError, match="no rule"):
        parallel.logical_to_mesh(("vocab",), (8,), mesh)


def test_gradient_accumulation_equals_one_big_batch(batch):
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    state, _, graphdef = _setup(mesh)
    tx = optax.sgd(1.0)
    opt = tx.init(state.params)
    s = step_lib.TrainState(state.step, state.params, opt)
    full = jax.jit(
        step_lib.make_train_step(graphdef, nnx.State({}), tx, lambda _: 1.0, _fixed_mask_loss)
    )
    accum = jax.jit(
        step_lib.make_train_step(
            graphdef, nnx.State({}), tx, lambda _: 1.0, _fixed_mask_loss, accum_steps=4
        )
    )
    a, ma = full(s, batch, jax.random.key(0))
    b, mb = accum(s, batch, jax.random.key(0))
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
    # SGD with lr 1: parameter deltas are the gradients, equal to float32 summation noise.
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-5), a.params, b.params
    )


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

    saved_state = _setup(parallel.make_mesh("fsdp"))[0]
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
    meta = {"model": "mae", "variant": "test", "param_shapes": {}}

    class _NoIterator:
        def get_state(self):
            return {}

    ckpt.save(1, saved_state, _NoIterator(), meta)
    ckpt.close()

    small = parallel.make_mesh("fsdp_tp", devices=jax.devices()[:2])
    assert dict(small.shape) == {"data": 1, "fsdp": 1, "tensor": 2}
    target = _setup(small)[0]
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target
    )
    step, restored = checkpoint.Checkpointer(tmp_path / "checkpoints").restore_latest(
        abstract, None, meta
    )
    assert step == 1
    for new, old in zip(jax.tree.leaves(restored), jax.tree.leaves(saved_state)):
        assert new.sharding.mesh.devices.size == 2
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
