"""Tests of the SatVision-TOA checkpoint importer: the released DeepSpeed layout (bf16, under
"module") round trip, official key names and shapes, norm3, the fixed buffers, the patch
embedding Conv2d in numpy, and errors that list every problem."""

import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from param_helpers import params, randomize

from eofm.convert import satvision as convert
from eofm.models import family, satvision
from eofm.models.satvision import SatVision

S = 128  # the released image size, which fixes the buffers
INPUTS = convert.DEFAULT_INPUTS
CFG = family.make_config(satvision, family.config_fields(satvision, "tiny"), INPUTS, S)
C, HEADS = CFG.embed_dim, CFG.num_heads  # 32, (2, 4, 8, 16)
NORM3 = ("encoder.layers.2.blocks.5.norm3.weight", "encoder.layers.2.blocks.5.norm3.bias")
BUFFERS = ("relative_coords_table", "relative_position_index", "attn_mask")


def bf16(value: np.ndarray) -> np.ndarray:
    """A float array in bfloat16, as the released file stores it; other dtypes as they are."""
    value = np.asarray(value)
    return value.astype(ml_dtypes.bfloat16) if value.dtype == np.float32 else value


def trained_model(seed: int = 0) -> SatVision:
    """A model whose every parameter is random and exactly representable in bfloat16."""
    model = randomize(SatVision(CFG, INPUTS, rngs=nnx.Rngs(seed)), seed)
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    rounded = [(p, v.replace(bf16(v[...]).astype(np.float32))) for p, v in flat]
    nnx.update(model, nnx.from_flat_state(rounded))
    return model


def deepspeed_checkpoint(state: dict) -> dict:
    """The released file's form: the state dict in bf16 under "module", beside DeepSpeed's own
    entries."""
    return {
        "module": {key: bf16(value) for key, value in state.items()},
        "buffer_names": [key for key in state if key.endswith(BUFFERS)],
        "optimizer": None,
        "global_steps": 1000,
        "ds_version": "0.14.0",
    }


def fresh_model() -> SatVision:
    return SatVision(CFG, INPUTS, rngs=nnx.Rngs(1))


def images(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(1, S, S, 14)).astype(np.float32)


@nnx.jit
def features(model: SatVision, x):
    return model.features(x, satvision.SLOTS)


@pytest.fixture(scope="module")
def exporter() -> SatVision:
    return trained_model(0)


@pytest.fixture(scope="module")
def official(exporter) -> dict[str, np.ndarray]:
    """The released layout (float32, buffers included) of `exporter`."""
    return convert.from_eofm(exporter)


def assert_unchanged(model: SatVision, before: dict) -> None:
    after = params(model)
    assert all(np.array_equal(after[path], before[path]) for path in before)


# --- round trip -----------------------------------------------------------------------------


def test_deepspeed_bf16_checkpoint_round_trips_exactly(exporter, official):
    model = fresh_model()
    report = convert.to_eofm(deepspeed_checkpoint(official), model, source="mp_rank_00.pt")
    assert report.kept == () and report.unused == ()
    want = params(exporter)
    got = params(model)
    assert got.keys() == want.keys()
    for path, value in got.items():
        assert value.dtype == np.float32, path
        np.testing.assert_array_equal(value, want[path], err_msg=str(path))

    exported = convert.from_eofm(model)
    assert exported.keys() == official.keys()
    for key, value in exported.items():
        np.testing.assert_array_equal(value, official[key], err_msg=key)
        assert value.dtype == official[key].dtype, key


def test_imported_model_computes_the_exporters_features(exporter, official):
    model = fresh_model()
    convert.to_eofm({"module": official}, model)
    x = images()
    got, want = features(model, x), features(exporter, x)
    np.testing.assert_array_equal(got["pooled"], want["pooled"])
    for level, (g, w) in enumerate(zip(got["levels"], want["levels"])):
        np.testing.assert_array_equal(g, w, err_msg=f"level {level}")


def test_official_key_names_and_shapes(official):
    d = 8 * C
    expected = {
        "encoder.patch_embed.proj.weight": (C, 14, 4, 4),
        "encoder.patch_embed.proj.bias": (C,),
        "encoder.patch_embed.norm.weight": (C,),
        "encoder.mask_token": (1, 1, C),
        "encoder.layers.0.blocks.1.attn.qkv.weight": (3 * C, C),
        "encoder.layers.0.blocks.1.attn.q_bias": (C,),
        "encoder.layers.0.blocks.1.attn.v_bias": (C,),
        "encoder.layers.0.blocks.1.attn.logit_scale": (HEADS[0], 1, 1),
        "encoder.layers.0.blocks.1.attn.cpb_mlp.0.weight": (512, 2),
        "encoder.layers.0.blocks.1.attn.cpb_mlp.0.bias": (512,),
        "encoder.layers.0.blocks.1.attn.cpb_mlp.2.weight": (HEADS[0], 512),
        "encoder.layers.0.blocks.1.attn.proj.weight": (C, C),
        "encoder.layers.0.blocks.1.mlp.fc1.weight": (4 * C, C),
        "encoder.layers.0.blocks.1.norm2.bias": (C,),
        "encoder.layers.0.downsample.reduction.weight": (2 * C, 4 * C),
        "encoder.layers.0.downsample.norm.weight": (2 * C,),
        "encoder.layers.2.blocks.5.norm3.weight": (4 * C,),
        "encoder.layers.2.blocks.5.norm3.bias": (4 * C,),
        "encoder.norm.weight": (d,),
        "decoder.0.weight": (32 * 32 * 14, d, 1, 1),
        "decoder.0.bias": (32 * 32 * 14,),
        # buffers: window 8 on the 32, 16 and 8 grids, 4 on the 4 x 4 grid
        "encoder.layers.0.blocks.0.attn.relative_coords_table": (1, 15, 15, 2),
        "encoder.layers.0.blocks.0.attn.relative_position_index": (64, 64),
        "encoder.layers.0.blocks.1.attn_mask": (16, 64, 64),
        "encoder.layers.1.blocks.1.attn_mask": (4, 64, 64),
        "encoder.layers.3.blocks.1.attn.relative_coords_table": (1, 7, 7, 2),
        "encoder.layers.3.blocks.1.attn.relative_position_index": (16, 16),
    }
    for key, shape in expected.items():
        assert official[key].shape == shape, key
    assert sorted(key for key in official if ".norm3." in key) == sorted(NORM3)
    # Unshifted blocks, and the shifted ones of the one-window stages, have no mask.
    masks = [key for key in official if key.endswith("attn_mask")]
    assert masks == ["encoder.layers.0.blocks.1.attn_mask", "encoder.layers.1.blocks.1.attn_mask"]
    assert not any(".qkv.bias" in key for key in official)
    assert not any(word in key for key in official for word in ("kernel", "scale.", "cpb_fc"))
    assert official["encoder.layers.0.blocks.0.attn.relative_position_index"].dtype == np.int64


def test_patch_embedding_is_the_official_conv2d(official):
    model = fresh_model()
    convert.to_eofm(official, model)
    weight, bias = (
        official["encoder.patch_embed.proj.weight"],
        official["encoder.patch_embed.proj.bias"],
    )
    image = images(1)[0, :8, :12]  # [H, W, K]: a 2 x 3 patch grid
    want = np.zeros((2, 3, C))
    for y, x in np.ndindex(2, 3):  # torch Conv2d over the [K, H, W] image, stride 4
        patch = image[4 * y : 4 * y + 4, 4 * x : 4 * x + 4].transpose(2, 0, 1)
        want[y, x] = np.einsum("dkij,kij->d", weight, patch) + bias
    got = model.encoder.patch_embed(image[None])[0]
    np.testing.assert_allclose(got, want.reshape(6, C), rtol=1e-5, atol=1e-5)


def test_encoder_only_file_keeps_the_simmim_head(official):
    head = ("decoder.0.weight", "decoder.0.bias", "encoder.mask_token")
    state = {key: value for key, value in official.items() if key not in head}
    model = fresh_model()
    before = params(model)
    report = convert.to_eofm(state, model)
    assert report.kept == ("decoder", "mask_token")
    np.testing.assert_array_equal(params(model)[("mask_token",)], before[("mask_token",)])
    with pytest.raises(convert.ConversionError) as info:
        convert.to_eofm(state, fresh_model(), allow_missing_decoder=False)
    assert info.value.missing == sorted(head)


# --- errors ---------------------------------------------------------------------------------


def test_every_problem_is_listed_in_one_error(official):
    state = {key: value for key, value in official.items() if key not in NORM3}
    state["encoder.layers.0.blocks.0.attn.qkv.bias"] = np.zeros(3 * C, np.float32)
    state["decoder.0.weight"] = official["decoder.0.weight"][:, :, 0, 0]
    model = fresh_model()
    before = params(model)
    with pytest.raises(convert.ConversionError) as info:
        convert.to_eofm(deepspeed_checkpoint(state), model, source="no_norm3.pt")
    error = info.value
    assert error.missing == sorted(NORM3)
    assert error.unexpected == ["encoder.layers.0.blocks.0.attn.qkv.bias"]
    assert error.mismatched == ["decoder.0.weight: expected (14336, 256, 1, 1), got (14336, 256)"]
    assert error.invalid == []
    message = str(error)
    assert "no_norm3.pt" in message and "SatVision-TOA (width 32, depths (2, 2, 6, 2)" in message
    assert "the file holds: width 32, 14 bands, patch 4, depths (2, 2, 6, 2), no norm3" in message
    for item in error.missing + error.unexpected + error.mismatched:
        assert item in message
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "key, corrupt",
    [  # tokens renumbered, the shift mask left out, coordinates not log-spaced
        ("encoder.layers.1.blocks.0.attn.relative_position_index", lambda v: np.roll(v, 1, 0)),
        ("encoder.layers.0.blocks.1.attn_mask", np.zeros_like),
        ("encoder.layers.3.blocks.1.attn.relative_coords_table", lambda v: 0.9 * v),
    ],
    ids=["relative_position_index", "attn_mask", "relative_coords_table"],
)
def test_a_corrupted_buffer_is_an_error_naming_it(official, key, corrupt):
    state = dict(official)
    state[key] = corrupt(official[key])
    model = fresh_model()
    before = params(model)
    with pytest.raises(convert.ConversionError) as info:
        convert.to_eofm(deepspeed_checkpoint(state), model, source="bad_buffers.pt")
    error = info.value
    assert len(error.invalid) == 1 and error.invalid[0].startswith(f"{key}: not the ")
    assert key in str(error) and "buffers that differ from the recomputed ones" in str(error)
    assert error.missing == error.unexpected == error.mismatched == []
    assert_unchanged(model, before)


def test_buffers_of_another_layout_are_errors(official):
    no_buffers = {k: v for k, v in official.items() if not k.endswith(BUFFERS)}
    convert.to_eofm(no_buffers, fresh_model())  # a file without buffers has nothing to compare

    state = dict(official)
    mask = "encoder.layers.1.blocks.1.attn_mask"
    del state[mask]
    index = "encoder.layers.3.blocks.0.attn.relative_position_index"
    state[index] = official["encoder.layers.2.blocks.0.attn.relative_position_index"]
    state["encoder.layers.2.blocks.1.attn_mask"] = official[mask]  # a one-window stage: no mask
    with pytest.raises(convert.ConversionError) as info:
        convert.to_eofm(state, fresh_model())
    error = info.value
    assert error.missing == [mask]
    assert error.unexpected == ["encoder.layers.2.blocks.1.attn_mask"]
    assert error.mismatched == [f"{index}: expected (16, 16), got (64, 64)"]


# --- the official file form ------------------------------------------------------------------


def test_official_deepspeed_file(tmp_path, exporter, official):
    torch = pytest.importorskip("torch")
    checkpoint = deepspeed_checkpoint(official)
    module = {
        key: torch.from_numpy(np.asarray(value, np.float32)).to(torch.bfloat16)
        if value.dtype == ml_dtypes.bfloat16
        else torch.from_numpy(value)
        for key, value in checkpoint["module"].items()
    }
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save(checkpoint | {"module": module}, path)
    model = convert.load_satvision(path, CFG, rngs=nnx.Rngs(1))
    want = params(exporter)
    for param_path, value in params(model).items():
        np.testing.assert_array_equal(value, want[param_path], err_msg=str(param_path))
