"""RoMA: token order, causality, the block-causal decoder, the loss terms, the angle embedding,
the four-direction downstream backbone and the family's host transforms."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from eofm.data.rotation_crop import RotateTexturedWindow, rotated_key
from eofm.data.spec import SensorSpec
from eofm.models import family, layers, mamba, roma
from eofm.train import optim

RGB = SensorSpec.full("rgb")
TINY = dict(roma.VARIANTS["tiny"], in_chans=3)


def tiny_model(seed: int = 0, **overrides) -> roma.Roma:
    return roma.Roma(roma.Config(**{**TINY, **overrides}), {"rgb": RGB}, rngs=nnx.Rngs(seed))


def images(seed: int = 0, batch: int = 2, size: int = 96) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def test_block_order_groups_blocks_then_patches():
    # 2 x 2 blocks of 2 x 2 patches on a 4 x 4 grid (raster indices 0 .. 15).
    order = roma.block_order(2, 2)
    np.testing.assert_array_equal(order, [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15])
    full = roma.block_order(3, 4)
    assert sorted(full) == list(range(144))
    np.testing.assert_array_equal(full[16:20], [4, 5, 6, 7])  # block 2 starts at column 4


def test_block_causal_mask_is_next_block():
    mask = roma.block_causal_mask(8, 16)
    assert mask.shape == (128, 128)
    # A query of target block 2 (queries 0..15) sees memory block 1 (tokens 0..15) only.
    assert mask[0, :16].all() and not mask[0, 16:].any()
    # A query of target block 9 (the last) sees all 8 memory blocks.
    assert mask[127].all()
    # Expanded 8 x 8 lower triangle.
    np.testing.assert_array_equal(mask[::16, ::16], np.tril(np.ones((8, 8), bool)))


def test_encoder_is_causal():
    """Perturbing token t of the block-ordered sequence changes no encoder output before t."""
    model = tiny_model()
    cfg = model.cfg
    tokens = jax.random.normal(jax.random.key(1), (1, cfg.num_predicted, cfg.embed_dim))
    t = 37
    bumped = tokens.at[:, t].add(1.0)
    run = lambda x: model.encoder.run(x, [cfg.depth])[-1]
    before, after = run(tokens), run(bumped)
    np.testing.assert_array_equal(before[:, :t], after[:, :t])
    assert float(jnp.abs(before[:, t:] - after[:, t:]).min(axis=-1).max()) > 0


def test_prediction_of_a_block_reads_only_earlier_blocks():
    """Changing the pixels of block k (k = 0 .. 8 in raster block order) changes only the
    predictions of blocks k + 2 .. 9 (1-based), whatever it does to the target."""
    model = tiny_model()
    x = images()
    base = model.predict(x)
    k = 4  # the centre block: rows 32..63, columns 32..63 at patch 8
    bumped = x.at[:, 32:64, 32:64].add(1.0)
    changed = jnp.abs(model.predict(bumped) - base).max(axis=(0, 2))  # per query
    per_block = np.asarray(changed).reshape(8, 16).max(axis=1)  # target blocks 2 .. 9
    assert (per_block[:k] == 0).all()
    assert (per_block[k:] > 0).all()


def test_angle_embedding_lands_on_the_marked_tokens():
    model = tiny_model()
    x = images()
    rotated = jnp.zeros((2, 144)).at[0, jnp.array([3, 4, 15, 16])].set(1.0)
    delta = model.encoder.embed(x, rotated) - model.encoder.embed(x)
    angle = model.encoder.angle_embed[...][0, 0]
    np.testing.assert_allclose(delta, rotated[..., None] * angle, atol=1e-6)


def test_main_loss_is_norm_pix_mse_over_all_predicted_patches():
    model = tiny_model()
    x = images()
    loss, aux = model(x)
    patches = np.asarray(layers.patchify(x, 8))[:, roma.block_order(3, 4)][:, 16:]
    mean = patches.mean(-1, keepdims=True)
    std = np.sqrt(patches.var(-1, ddof=1, keepdims=True) + 1e-6)
    want = np.mean((np.asarray(aux["pred"]) - (patches - mean) / std) ** 2)
    np.testing.assert_allclose(aux["main"], want, rtol=1e-5)
    np.testing.assert_allclose(loss, aux["main"] + 0.1 * aux["multiscale"], rtol=1e-6)


def test_multiscale_term_is_aligned():
    cfg = roma.Config(**TINY)
    rng = np.random.default_rng(0)
    target = jnp.asarray(rng.normal(size=(2, 128, 192)), jnp.float32)
    assert float(roma.multiscale_error(target, target, cfg)) == 0.0
    assert float(roma.multiscale_error(target, target, cfg, bug_compat=True)) > 0.1
    # Aligned, it is the squared error over the patches of the 3 kept 6 x 6-patch groups.
    pred = target + jnp.asarray(rng.normal(size=target.shape), jnp.float32)
    error = np.zeros((2, 144, 192), np.float32)
    error[:, roma.block_order(3, 4)[16:]] = np.asarray(pred - target) ** 2
    rows, cols = np.divmod(np.arange(144), 12)
    kept = ~((rows < 6) & (cols < 6))  # the first (top-left) group is dropped
    np.testing.assert_allclose(
        roma.multiscale_error(pred, target, cfg), error[:, kept].mean(), rtol=1e-5
    )


def test_four_direction_mixer_averages_the_scans_of_one_mixer():
    """The downstream backbone's per-direction copies equal the pretrained mixer: the mixer with
    `orders` is the mean of the causal mixer run on each permuted sequence, put back in order."""
    mixer = mamba.MambaMixer(16, rngs=nnx.Rngs(0))
    u = jax.random.normal(jax.random.key(2), (2, 12, 16))
    orders = roma.scan_orders((3, 4))
    want = sum(mixer(u[:, o])[:, np.argsort(o)] for o in orders) / 4
    np.testing.assert_allclose(mixer(u, orders), want, atol=1e-5)
    np.testing.assert_allclose(mixer(u, [np.arange(12)]), mixer(u), atol=1e-6)
    # Not causal: the last token changes the first output.
    bumped = u.at[:, -1].add(1.0)
    assert float(jnp.abs(mixer(bumped, orders)[:, 0] - mixer(u, orders)[:, 0]).max()) > 0


def test_scan_orders_cover_rows_and_columns_both_ways():
    rows, back, cols, cols_back = roma.scan_orders((2, 3))
    np.testing.assert_array_equal(rows, [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(back, [5, 4, 3, 2, 1, 0])
    np.testing.assert_array_equal(cols, [0, 3, 1, 4, 2, 5])
    np.testing.assert_array_equal(cols_back, [5, 2, 4, 1, 3, 0])


@pytest.mark.parametrize("size", [96, 112])
def test_features_on_native_and_other_sizes(size):
    model = tiny_model()
    out = model.features(images(size=size), RGB)
    grid = size // 8
    assert out["pooled"].shape == (2, 64)
    assert [level.shape for level in out["levels"]] == [(2, grid, grid, 64)] * 4
    assert np.isfinite(np.asarray(out["pooled"])).all()
    one_way = tiny_model(feature_directions=1).features(images(size=size), RGB)
    assert not np.allclose(one_way["pooled"], out["pooled"])


def test_position_table_resize():
    table = layers.posemb_sincos_2d(12, 12, 64)
    np.testing.assert_array_equal(roma.resize_position_table(table, 12, (12, 12)), table)
    resized = np.asarray(roma.resize_position_table(table, 12, (14, 14)))
    assert resized.shape == (196, 64)
    # Corners of the grid keep (nearly) their values; the table is not just regenerated.
    np.testing.assert_allclose(resized[0], table[0], atol=0.15)
    assert not np.allclose(resized, layers.posemb_sincos_2d(14, 14, 64), atol=1e-3)


def test_wrong_image_size_names_the_expected_one():
    with pytest.raises(ValueError, match="96 x 96 px"):
        tiny_model()(images(size=64))


def test_config_checks_memory_layers():
    with pytest.raises(ValueError, match="memory_layers"):
        roma.Config(**{**TINY, "memory_layers": (2, 1, 3, 4)})
    with pytest.raises(ValueError, match="memory_layers"):
        roma.Config(**{**TINY, "memory_layers": (1, 2, 3, 5)})


def test_encoder_sizes_match_the_paper():
    """Encoder parameters (patch embedding, angle embedding, Mamba blocks): B about 80 M, L 282 M
    (the spec's counts; README: 85 M and 297 M). B is built (abstractly) and counted; L follows
    from the same sum."""

    def expected(cfg):
        return cfg.depth * mamba.mamba_block_params(cfg.embed_dim) + (768 + 2) * cfg.embed_dim

    base = roma.Config(**roma.VARIANTS["B"], in_chans=3)
    model = nnx.eval_shape(lambda: roma.Roma(base, {"rgb": RGB}, rngs=nnx.Rngs(0)))
    built = sum(p.size for p in jax.tree.leaves(nnx.state(model.encoder, nnx.Param)))
    assert built == expected(base) and 79e6 < built < 81e6
    large = roma.Config(**roma.VARIANTS["L"], in_chans=3)
    assert 280e6 < expected(large) < 284e6


def test_weight_decay_spares_tokens_angle_embedding_and_a_log():
    state = nnx.state(tiny_model(), nnx.Param)
    paths = [optim.param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    decayed = dict(zip(paths, jax.tree.leaves(optim.decay_mask(state))))
    assert not decayed["encoder/angle_embed/value"]
    assert not decayed["decoder/ar_token/value"]
    assert not decayed["encoder/blocks/0/mixer/a_log/value"]
    assert not decayed["encoder/blocks/0/mixer/d_skip/value"]
    assert decayed["encoder/blocks/0/mixer/conv_kernel/value"]
    assert decayed["encoder/blocks/0/mixer/in_proj/kernel/value"]
    assert decayed["decoder/blocks/0/attn/q/kernel/value"]


def test_host_transforms_rotate_and_mark_tokens():
    config = ml_collections.ConfigDict(
        {
            "model_name": "roma",
            "model": family.config_fields(roma, "tiny"),
            "data": {"image_size": 96},
        }
    )
    transforms, keys = family.host_transforms(config, {"rgb": RGB})
    assert keys == (rotated_key("rgb"),)
    (window,) = transforms
    assert isinstance(window, RotateTexturedWindow)
    image = np.random.default_rng(0).normal(size=(96, 96, 3)).astype(np.float32)
    sample = window.random_map({"rgb": image}, np.random.default_rng(1))
    assert sample[keys[0]].shape == (144,) and sample[keys[0]].sum() in (36, 16, 4)
    config.model.rotation_degrees = 0.0
    assert family.host_transforms(config, {"rgb": RGB}) == ([], ())


def test_layer_ids():
    model = tiny_model()
    assert model.num_layers == 5
    assert model.layer_of("encoder/patch_embed/proj/kernel/value") == 0
    assert model.layer_of("encoder/angle_embed/value") == 0
    assert model.layer_of("encoder/blocks/2/mixer/a_log/value") == 3
    assert model.layer_of("decoder/enc2dec/kernel/value") == 5


def test_reconstruction_keeps_block_one_and_fills_the_rest():
    model = tiny_model()
    x = images()
    out = model.reconstruct(x)
    assert out.shape == x.shape
    np.testing.assert_array_equal(out[:, :32, :32], x[:, :32, :32])
    assert not np.allclose(out[:, 32:, 32:], x[:, 32:, 32:])


def test_short_pretraining_on_eurosat_rgb_learns_and_knn_reads_it(
    tmp_path, pretrain_config, finetune_config, shared_data
):
    """Real RGB images, rotations on the host, next-block loss falls; the run is then a frozen
    encoder for the EuroSAT RGB kNN probe."""
    import json

    from eofm.eval import classification
    from eofm.train import loop, pretrain

    subset = tmp_path / "eurosat_rgb"  # 20 images per class, read where they are
    subset.mkdir()
    root = shared_data / "eurosat_rgb"
    rows = (root / "labels.csv").read_text().splitlines()
    by_class = {}
    for row in rows[1:]:
        by_class.setdefault(row.split(",")[2], []).append(row)
    picked = [r for group in by_class.values() for r in group[:20]]
    absolute = [f"{root / r.split(',', 1)[0]},{r.split(',', 1)[1]}" for r in picked]
    (subset / "labels.csv").write_text("\n".join([rows[0], *absolute]) + "\n")

    config = pretrain_config("roma", "tiny")
    config.model.update(dict(embed_dim=32, decoder_dim=32, decoder_heads=2))
    config.data.source_args.root = str(subset)
    config.data.prepared_dir = str(tmp_path / "data")
    config.batch_size = 8
    config.total_steps = 24
    config.warmup_steps = 2
    config.log_every = 1
    config.peak_flops = 1e11
    run = tmp_path / "run"
    loop.train(config, run, pretrain.workload(config, run))
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    losses = [r["loss"] for r in records]
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    # A window of 6, 4 or 2 patches per side is rotated in every image: 36, 16 or 4 of 144 tokens.
    assert all(4 / 144 <= r["rotated_token_fraction"] <= 36 / 144 for r in records)

    probe = finetune_config("eurosat_rgb", "method=knn")
    probe.encoder = str(run)
    probe.data.source_args.root = str(subset)
    report = classification.run(probe, tmp_path / "knn")
    assert report["encoder"]["checkpoint_step"] == 24
    assert report["data"]["train"] + report["data"]["test"] == 200
    assert report["metrics"]["oa"] > 0.2  # chance is 0.1
