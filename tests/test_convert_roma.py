"""Tests of the RoMA checkpoint importer: the released training-checkpoint layout round trip
(parameters and loss), released key names and shapes, the depthwise Conv1d and the fused kv
against numpy ports of torch, the fixed tensors, variant inference, errors and the command."""

import jax
import numpy as np
import pytest
from flax import nnx
from param_helpers import params, randomize

from eofm.convert import roma as convert
from eofm.convert import torch_state
from eofm.data.rotation_crop import rotated_key
from eofm.models import mamba
from eofm.models.roma import Roma

INPUTS = convert.DEFAULT_INPUTS
CFG = convert.config_of("tiny")
D, DD, P, G = CFG.embed_dim, CFG.decoder_dim, CFG.patch_size, CFG.grid  # 64, 64, 8, 12
K, N, R = CFG.conv_width, CFG.state_size, 4  # R = ceil(64 / 16)
HIDDEN = 8 * D // 3
S = CFG.image_size  # 96


def trained_model(seed: int = 0) -> Roma:
    """A model whose every parameter (zero biases, unit scales included) is random."""
    return randomize(Roma(CFG, INPUTS, rngs=nnx.Rngs(seed)), seed)


def fresh_model() -> Roma:
    return Roma(CFG, INPUTS, rngs=nnx.Rngs(1))


def training_checkpoint(state: dict) -> dict:
    """The released file's form: the state dict under "model" beside the training entries."""
    return {
        "model": dict(state),
        "optimizer": {"state": {0: {"exp_avg": np.zeros(3, np.float32)}}, "param_groups": []},
        "epoch": 399,
        "scaler": {"scale": 65536.0},
    }


def batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rotated = np.zeros((2, G * G), np.float32)
    rotated[0, 30:40] = 1.0
    return {"rgb": rng.standard_normal((2, S, S, 3), np.float32), rotated_key("rgb"): rotated}


@nnx.jit
def loss(model: Roma, inputs: dict):
    return model.loss(inputs, jax.random.key(0))


@pytest.fixture(scope="module")
def exporter() -> Roma:
    return trained_model(0)


@pytest.fixture(scope="module")
def official(exporter) -> dict[str, np.ndarray]:
    """The released layout (fixed tensors included) of `exporter`."""
    return convert.from_eofm(exporter)


def assert_same_params(model: Roma, want: dict) -> None:
    got = params(model)
    assert got.keys() == want.keys()
    for path, value in got.items():
        assert value.dtype == want[path].dtype, path
        np.testing.assert_array_equal(value, want[path], err_msg=str(path))


def conversion_error(state: dict, match: str | None = None) -> convert.ConversionError:
    """The error (whose message matches `match`) of importing `state` from "roma.pth", after
    checking that the model was left unchanged."""
    model = fresh_model()
    before = params(model)
    with pytest.raises(convert.ConversionError, match=match) as info:
        convert.to_eofm(training_checkpoint(state), model, source="roma.pth")
    assert_same_params(model, before)
    return info.value


# --- round trip -----------------------------------------------------------------------------


def test_training_checkpoint_round_trips_exactly(exporter, official):
    model = fresh_model()
    report = convert.to_eofm(training_checkpoint(official), model, source="roma.pth")
    assert report.kept == () and report.unused == ()
    assert_same_params(model, params(exporter))
    assert params(model)[("encoder", "blocks", 0, "mixer", "a_log")].dtype == np.float32

    exported = convert.from_eofm(model)
    assert exported.keys() == official.keys()
    for key, value in exported.items():
        assert value.dtype == official[key].dtype, key
        np.testing.assert_array_equal(value, official[key], err_msg=key)


def test_imported_model_computes_the_exporters_loss(exporter, official):
    model = fresh_model()
    convert.to_eofm(training_checkpoint(official), model)
    want_loss, want_aux = loss(exporter, batch())
    got_loss, got_aux = loss(model, batch())
    assert float(want_loss) != float(loss(fresh_model(), batch())[0])  # the weights matter
    np.testing.assert_array_equal(got_loss, want_loss)
    for name in ("main_loss", "multiscale_loss"):
        np.testing.assert_array_equal(got_aux[name], want_aux[name], err_msg=name)


def test_released_key_names_and_shapes(official):
    t, q = len(CFG.memory_layers), CFG.num_predicted
    expected = {
        "patch_embed.proj.weight": (D, 3, P, P),
        "patch_embed.proj.bias": (D,),
        "pos_embed": (1, G * G, D),
        "angle_embed": (1, 1, D),
        "layers.3.norm1.weight": (D,),
        "layers.3.norm2.bias": (D,),
        "layers.3.mixer.in_proj.weight": (2 * D, D),
        "layers.3.mixer.conv1d.weight": (D, 1, K),
        "layers.3.mixer.conv1d.bias": (D,),
        "layers.3.mixer.x_proj.weight": (R + 2 * N, D),
        "layers.3.mixer.dt_proj.weight": (D, R),
        "layers.3.mixer.dt_proj.bias": (D,),
        "layers.3.mixer.A_log": (D, N),
        "layers.3.mixer.D": (D,),
        "layers.3.mixer.out_proj.weight": (D, D),
        "layers.3.mlp.w1.weight": (HIDDEN, D),
        "layers.3.mlp.w2.bias": (HIDDEN,),
        "layers.3.mlp.w3.weight": (D, HIDDEN),
        "norm_1.weight": (D,),
        "norm_4.bias": (D,),
        "enc2dec.weight": (t * DD, t * D),
        "enc2dec.bias": (t * DD,),
        "ar_token": (1, 1, DD),
        "dec_pos_embed": (1, G * G, DD),
        "dec_block.3.attn2.q.weight": (DD, DD),
        "dec_block.3.attn2.kv.weight": (2 * DD, DD),
        "dec_block.3.attn2.kv.bias": (2 * DD,),
        "dec_block.3.attn2.proj.bias": (DD,),
        "dec_block.3.norm2_1.weight": (DD,),
        "dec_block.3.norm2_2.weight": (DD,),
        "dec_block.3.norm2.weight": (DD,),
        "dec_block.3.mlp.fc1.weight": (4 * DD, DD),
        "dec_block.3.mlp.fc2.weight": (DD, 4 * DD),
        "ar_norm.bias": (DD,),
        "ar_pred.weight": (P * P * 3, DD),
        "mask": (q, q),
    }
    for key, shape in expected.items():
        assert official[key].shape == shape, key
    no_bias = ("in_proj", "x_proj", "out_proj")
    mixer = 2 * 2 + len(no_bias) + 2  # conv1d and dt_proj weight + bias, A_log, D
    layer = 2 * 2 + mixer + 3 * 2  # norm1, norm2, mixer, SwiGLU
    decoder_block = 3 * 2 + 5 * 2  # 3 norms; q, kv, proj, fc1, fc2
    fixed = 3  # pos_embed, dec_pos_embed, mask
    # patch_embed, angle_embed, norm_{1..T}, enc2dec, ar_token, ar_norm, ar_pred
    top = 2 + 1 + 2 * t + 2 + 1 + 2 + 2
    assert len(official) == CFG.depth * layer + t * decoder_block + fixed + top
    assert not any(f".mixer.{name}.bias" in key for key in official for name in no_bias)
    assert not any(word in key for key in official for word in ("kernel", "scale", "attn2.k."))
    assert official["mask"].dtype == np.bool_
    assert all(v.dtype == np.float32 for k, v in official.items() if k != "mask")


# --- the layouts against numpy ports of torch ------------------------------------------------


def test_conv1d_is_torchs_depthwise_causal_conv(official):
    """torch: Conv1d(D, D, K, groups=D, padding=K - 1) on [B, D, L], the first L outputs."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((D, 1, K), np.float32)
    bias = rng.standard_normal(D, np.float32)
    state = dict(official)
    state["layers.1.mixer.conv1d.weight"], state["layers.1.mixer.conv1d.bias"] = weight, bias
    model = fresh_model()
    convert.to_eofm(state, model)
    mixer = model.encoder.blocks[1].mixer

    b, length = 2, 7
    x = rng.standard_normal((b, D, length), np.float32)
    padded = np.pad(x, [(0, 0), (0, 0), (K - 1, K - 1)])
    conv = np.stack(
        [np.einsum("bdk,dk->bd", padded[:, :, s : s + K], weight[:, 0]) for s in range(length)],
        axis=-1,
    )  # cross-correlation per channel, first L of the L + K - 1 outputs
    want = conv + bias[None, :, None]
    got = mamba.causal_depthwise_conv(
        x.transpose(0, 2, 1), mixer.conv_kernel[...], mixer.conv_bias[...]
    )
    np.testing.assert_allclose(np.asarray(got).transpose(0, 2, 1), want, rtol=1e-5, atol=1e-5)


def test_fused_kv_splits_into_k_then_v(official):
    """torch: kv = Linear(x).reshape(B, N, 2, H, Dd / H); k, v = kv[:, :, 0], kv[:, :, 1]."""
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((2 * DD, DD), np.float32)
    bias = rng.standard_normal(2 * DD, np.float32)
    state = dict(official)
    state["dec_block.2.attn2.kv.weight"], state["dec_block.2.attn2.kv.bias"] = weight, bias
    model = fresh_model()
    convert.to_eofm(state, model)
    attn = model.decoder.blocks[2].attn
    kernel, kv_bias = np.asarray(attn.kv.kernel[...]), np.asarray(attn.kv.bias[...])
    np.testing.assert_array_equal(kernel[:, 0], weight[:DD].T)
    np.testing.assert_array_equal(kernel[:, 1], weight[DD:].T)
    np.testing.assert_array_equal(kv_bias, bias.reshape(2, DD))

    x = rng.standard_normal((2, 5, DD), np.float32)
    kv = (x @ weight.T + bias).reshape(2, 5, 2, CFG.decoder_heads, -1)
    got = np.asarray(attn.kv(x)).reshape(2, 5, 2, CFG.decoder_heads, -1)
    np.testing.assert_allclose(got, kv, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "mask",
    [
        lambda m: m.astype(np.float32),
        lambda m: np.where(m, 0.0, -np.inf).astype(np.float32),
    ],
    ids=["zero_one", "additive"],
)
def test_decoder_mask_may_be_zero_one_or_additive(official, mask):
    state = dict(official)
    state["mask"] = mask(official["mask"])
    model = fresh_model()
    convert.to_eofm(training_checkpoint(state), model)
    np.testing.assert_array_equal(params(model)[("decoder", "ar_token")], official["ar_token"])


# --- errors ---------------------------------------------------------------------------------


def test_unexpected_keys_inside_model_are_errors(official):
    state = dict(official)
    state["layers.0.mixer.in_proj.bias"] = np.zeros(2 * D, np.float32)
    state["dec_block.4.attn2.kv.weight"] = official["dec_block.0.attn2.kv.weight"]
    error = conversion_error(state)
    assert error.unexpected == ["dec_block.4.attn2.kv.weight", "layers.0.mixer.in_proj.bias"]
    assert error.missing == error.mismatched == error.invalid == []
    message = str(error)
    assert "cannot load roma.pth into RoMA (width 64, depth 4" in message
    assert "unexpected keys (2):" in message and "layers.0.mixer.in_proj.bias" in message


def test_missing_keys_are_errors_naming_them(official):
    gone = ("layers.2.mixer.A_log", "dec_block.1.attn2.kv.bias", "norm_3.weight", "mask")
    state = {key: value for key, value in official.items() if key not in gone}
    error = conversion_error(state, match="missing keys \\(4\\):")
    assert error.missing == [
        "dec_block.1.attn2.kv.bias",
        "layers.2.mixer.A_log",
        "mask",
        "norm_3.weight",
    ]
    assert error.unexpected == error.mismatched == []
    assert all(key in str(error) for key in gone)


def test_wrong_shapes_name_key_expected_and_got(official):
    state = dict(official)
    state["layers.0.mixer.conv1d.weight"] = official["layers.0.mixer.conv1d.weight"][:, 0]
    state["dec_block.0.attn2.kv.weight"] = official["dec_block.0.attn2.kv.weight"][:DD]
    state["pos_embed"] = official["pos_embed"][:, :100]
    error = conversion_error(state)
    assert sorted(error.mismatched) == [
        f"dec_block.0.attn2.kv.weight: expected ({2 * DD}, {DD}), got ({DD}, {DD})",
        f"layers.0.mixer.conv1d.weight: expected ({D}, 1, {K}), got ({D}, {K})",
        f"pos_embed: expected (1, {G * G}, {D}), got (1, 100, {D})",
    ]
    assert error.missing == error.unexpected == []
    assert "shape mismatches (3):" in str(error)


@pytest.mark.parametrize(
    "key, corrupt, problem",
    [
        (
            "pos_embed",
            lambda v: v + 1e-3,
            r"pos_embed: not the MAE 2-D sin-cos table \(largest difference 0.001 > 1e-05\)",
        ),
        ("dec_pos_embed", np.zeros_like, r"dec_pos_embed: not the MAE 2-D sin-cos table"),
        ("mask", lambda v: ~v, r"mask: not the block-causal mask \(\d+ of 16384 entries differ"),
        ("mask", lambda v: v * 2.0, r"mask: values \[0.0, 2.0\] are neither 0/1 nor"),
    ],
    ids=["pos_embed", "dec_pos_embed", "mask", "mask_values"],
)
def test_fixed_tensors_that_differ_are_errors_naming_them(official, key, corrupt, problem):
    state = dict(official)
    state[key] = corrupt(official[key])
    error = conversion_error(state, match=problem)
    assert len(error.invalid) == 1 and error.invalid[0].startswith(f"{key}: ")
    assert error.missing == error.unexpected == error.mismatched == []
    assert "fixed tensors that differ from eofm's (1):" in str(error)


# --- variants and files ----------------------------------------------------------------------


def test_variant_is_inferred_from_the_shapes(official):
    assert convert.variant_of(training_checkpoint(official)) == "tiny"
    shallow = {key: value for key, value in official.items() if not key.startswith("layers.3.")}
    with pytest.raises(
        convert.ConversionError, match="no RoMA variant has width 64, patch 8, depth 3"
    ):
        convert.variant_of(shallow, source="shallow.pth")
    assert convert.config_of("B").embed_dim == 768 and convert.config_of("B").in_chans == 3


def test_command_writes_a_safetensors_file_that_loads_without_torch(tmp_path, exporter, official):
    source = tmp_path / "released.safetensors"
    torch_state.save_safetensors(source, official)
    assert convert.main(["--checkpoint", str(source), "--out", str(tmp_path / "out")]) == 0
    written = tmp_path / "out" / "roma_tiny.safetensors"
    assert sorted(p.name for p in written.parent.iterdir()) == [written.name]
    model = convert.load_roma(written, CFG, rngs=nnx.Rngs(1))
    assert_same_params(model, params(exporter))


def test_released_pth_file(tmp_path, exporter, official):
    torch = pytest.importorskip("torch")
    checkpoint = {
        "model": {key: torch.from_numpy(value) for key, value in official.items()},
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]},
        "epoch": 399,
        "scaler": {"scale": 65536.0},
    }
    path = tmp_path / "roma_base.pth"
    torch.save(checkpoint, path)
    written = convert.convert_file(path, tmp_path / "out")
    assert written.name == "roma_tiny.safetensors"
    assert_same_params(convert.load_roma(path, CFG, rngs=nnx.Rngs(1)), params(exporter))
