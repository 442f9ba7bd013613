"""Tests of the CROMA checkpoint importer: round trip, released key names, a numpy port of the
released forward pass, error reports and the file forms of the released weights."""

import dataclasses
import logging
import math
import re

import jax
import numpy as np
import pytest
from flax import nnx
from param_helpers import params, randomize

from eofm.convert import croma as convert
from eofm.convert import smarties as smarties_convert
from eofm.convert import torch_state
from eofm.data.spec import SensorSpec
from eofm.models import croma
from eofm.models.croma import Croma, CromaConfig
from eofm.models.smarties import Smarties, SmartiesConfig

D, DEPTH, HEADS, P = 32, 2, 4, 8
CFG = CromaConfig(
    embed_dim=D, depth=DEPTH, num_heads=HEADS, decoder_dim=16, decoder_heads=2, decoder_mlp_dim=32
)
INPUTS = convert.DEFAULT_INPUTS  # optical (12 bands), radar
IMAGE_HW = (24, 16)  # a 3 x 2 patch grid: rows and columns cannot be confused
PRETRAINING_ONLY = set(convert.PRETRAINING_ONLY)


def trained_model(seed: int = 0, cfg: CromaConfig = CFG) -> Croma:
    """A model whose every parameter (zero biases, unit scales included) is random."""
    return randomize(Croma(cfg, INPUTS, rngs=nnx.Rngs(seed)), seed)


def images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    optical = rng.standard_normal((2, *IMAGE_HW, 12), np.float32)
    radar = rng.standard_normal((2, *IMAGE_HW, 2), np.float32)
    return optical, radar


@nnx.jit
def encode(model: Croma, optical: jax.Array, radar: jax.Array) -> dict:
    return model.encode(optical, radar)


@pytest.fixture(scope="module")
def released() -> dict[str, np.ndarray]:
    """A released-layout state dict with random values."""
    return convert.from_eofm(trained_model(0))


# --- round trip -----------------------------------------------------------------------------


def test_round_trip_through_safetensors(tmp_path, caplog):
    model_a = trained_model(0)
    path = tmp_path / "croma.safetensors"
    torch_state.save_safetensors(path, convert.from_eofm(model_a))
    with caplog.at_level(logging.WARNING):
        model_b = convert.load_croma(path, CFG, rngs=nnx.Rngs(1))
    assert "no values for decoder_block, decoder_embed" in caplog.text
    # Default inputs: optical (12 bands) then radar, as CROMA's input contract requires.
    assert model_b.inputs == convert.DEFAULT_INPUTS
    assert croma.from_data(model_b.inputs, 120) == {"optical_channels": 12, "radar_channels": 2}
    for name in PRETRAINING_ONLY:
        assert name in caplog.text

    trained, init = params(model_a), params(Croma(CFG, INPUTS, rngs=nnx.Rngs(1)))
    for key, value in params(model_b).items():
        want = init[key] if key[0] in PRETRAINING_ONLY else trained[key]
        np.testing.assert_array_equal(value, want, err_msg=str(key))

    out_a = encode(model_a, *images())
    out_b = encode(model_b, *images())
    assert out_a.keys() == out_b.keys() == {"optical", "radar", "joint"}
    for name in out_a:
        for got, want in zip(out_b[name], out_a[name]):  # tokens, pooled
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_released_key_names_and_shapes(released):
    expected = {
        "s2_encoder.linear_input.weight": (D, P * P * 12),
        "s2_encoder.linear_input.bias": (D,),
        "s2_encoder.transformer.layers.1.0.input_norm.weight": (D,),
        "s2_encoder.transformer.layers.1.0.to_qkv.weight": (3 * D, D),
        "s2_encoder.transformer.layers.1.0.to_out.weight": (D, D),
        "s2_encoder.transformer.layers.1.0.to_out.bias": (D,),
        "s2_encoder.transformer.layers.1.1.input_norm.bias": (D,),
        "s2_encoder.transformer.layers.1.1.net.0.weight": (4 * D, D),
        "s2_encoder.transformer.layers.1.1.net.3.weight": (D, 4 * D),
        "s2_encoder.transformer.norm_out.weight": (D,),
        "s1_encoder.linear_input.weight": (D, P * P * 2),
        "s1_encoder.transformer.layers.0.0.to_qkv.weight": (3 * D, D),
        "s1_encoder.transformer.norm_out.bias": (D,),
        "s2_GAP_FFN.0.weight": (D,),
        "s2_GAP_FFN.1.weight": (4 * D, D),
        "s1_GAP_FFN.3.weight": (D, 4 * D),
        "s1_GAP_FFN.3.bias": (D,),
        "joint_encoder.layers.0.0.input_norm.weight": (D,),
        "joint_encoder.layers.0.0.to_qkv.weight": (3 * D, D),
        "joint_encoder.layers.0.0.to_out.bias": (D,),
        "joint_encoder.layers.0.1.input_norm.weight": (D,),
        "joint_encoder.layers.0.1.to_q.weight": (D, D),
        "joint_encoder.layers.0.1.to_k.weight": (D, D),
        "joint_encoder.layers.0.1.to_v.weight": (D, D),
        "joint_encoder.layers.0.1.to_out.weight": (D, D),
        "joint_encoder.layers.0.2.input_norm.bias": (D,),
        "joint_encoder.layers.0.2.net.0.weight": (4 * D, D),
        "joint_encoder.layers.0.2.net.3.bias": (D,),
        "joint_encoder.norm_out.weight": (D,),
    }
    for key, shape in expected.items():
        assert released[key].shape == shape, key
    attention, cross_attention, ffn = 2 + 1 + 2, 2 + 3 + 2, 2 + 2 + 2  # no q, k, v biases
    encoders = 2 * (2 + 2) + (DEPTH + DEPTH // 2) * (attention + ffn)  # + embedding, final LN
    joint = DEPTH // 2 * (attention + cross_attention + ffn) + 2
    assert len(released) == encoders + joint + 2 * 6
    assert not any(part in key for key in released for part in ("kernel", "scale", "decoder"))
    assert all(v.dtype == np.float32 for v in released.values())


def test_qkv_layout_matches_torch(released):
    """torch: q, k, v = (x W^T).chunk(3), then 'b n (h d) -> b h n d'."""
    rng = np.random.default_rng(0)
    w_qkv = rng.standard_normal((3 * D, D), np.float32) / np.sqrt(D)
    state = dict(released)
    state["s2_encoder.transformer.layers.0.0.to_qkv.weight"] = w_qkv
    model = Croma(CFG, INPUTS, rngs=nnx.Rngs(1))
    convert.to_eofm(state, model)
    attn = model.optical.blocks[0].attn

    b, n, hd = 2, 5, D // HEADS
    x = rng.standard_normal((b, n, D), np.float32)
    q, k, v = np.split(x @ w_qkv.T, 3, axis=-1)
    eofm_qkv = np.asarray(attn.qkv(x)).reshape(b, n, 3, HEADS, hd)  # as `Attention` splits it
    for i, want in enumerate((q, k, v)):
        np.testing.assert_allclose(eofm_qkv[:, :, i], want.reshape(b, n, HEADS, hd), atol=1e-5)


# --- the released forward pass in numpy ------------------------------------------------------


def _layer_norm(x, state, key):
    mean = x.mean(-1, keepdims=True)
    var = np.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * state[f"{key}.weight"] + state[f"{key}.bias"]


def _linear(x, state, key):
    y = x @ state[f"{key}.weight"].T
    return y + state[f"{key}.bias"] if f"{key}.bias" in state else y


def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _attend(q, k, v, bias):
    """'b n (h d)' q, k, v and an [H, Nq, Nk] bias -> 'b n (h d)'."""
    heads = lambda t: t.reshape(*t.shape[:2], HEADS, -1).transpose(0, 2, 1, 3)
    q, k, v = heads(q), heads(k), heads(v)
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]) + bias
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    out = weights / weights.sum(-1, keepdims=True) @ v
    return out.transpose(0, 2, 1, 3).reshape(*out.shape[:1], out.shape[2], -1)


def _self_attention(x, state, key, bias):
    q, k, v = np.split(
        _linear(_layer_norm(x, state, f"{key}.input_norm"), state, f"{key}.to_qkv"), 3, -1
    )
    return _linear(_attend(q, k, v, bias), state, f"{key}.to_out")


def _cross_attention(x, context, state, key, bias):
    x, context = (_layer_norm(t, state, f"{key}.input_norm") for t in (x, context))
    q = _linear(x, state, f"{key}.to_q")
    k, v = _linear(context, state, f"{key}.to_k"), _linear(context, state, f"{key}.to_v")
    return _linear(_attend(q, k, v, bias), state, f"{key}.to_out")


def _ffn(x, state, key):
    hidden = _gelu(_linear(_layer_norm(x, state, f"{key}.input_norm"), state, f"{key}.net.0"))
    return _linear(hidden, state, f"{key}.net.3")


def _alibi(grid):
    rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    dist = np.hypot(rows[:, None] - rows[None], cols[:, None] - cols[None])
    slopes = 2.0 ** (-8.0 * np.arange(1, HEADS + 1) / HEADS)
    return -slopes[:, None, None] * dist


def _vit(images, state, part, depth, bias):
    """Patches 'b c (h i) (w j) -> b (h w) (c i j)', then the released ViT."""
    b, h, w, c = images.shape
    x = images.reshape(b, h // P, P, w // P, P, c).transpose(0, 1, 3, 5, 2, 4)
    x = _linear(x.reshape(b, (h // P) * (w // P), c * P * P), state, f"{part}.linear_input")
    for i in range(depth):
        x = x + _self_attention(x, state, f"{part}.transformer.layers.{i}.0", bias)
        x = x + _ffn(x, state, f"{part}.transformer.layers.{i}.1")
    return _layer_norm(x, state, f"{part}.transformer.norm_out")


def _gap_ffn(tokens, state, part):
    x = _layer_norm(tokens.mean(1), state, f"{part}.0")
    return _linear(_gelu(_linear(x, state, f"{part}.1")), state, f"{part}.3")


def _released_forward(state, optical, radar):
    state = {key: value.astype(np.float64) for key, value in state.items()}
    bias = _alibi((IMAGE_HW[0] // P, IMAGE_HW[1] // P))
    s2 = _vit(optical.astype(np.float64), state, "s2_encoder", DEPTH, bias)
    s1 = _vit(radar.astype(np.float64), state, "s1_encoder", DEPTH // 2, bias)
    x = s1
    for i in range(DEPTH // 2):
        x = x + _self_attention(x, state, f"joint_encoder.layers.{i}.0", bias)
        x = x + _cross_attention(x, s2, state, f"joint_encoder.layers.{i}.1", bias)
        x = x + _ffn(x, state, f"joint_encoder.layers.{i}.2")
    joint = _layer_norm(x, state, "joint_encoder.norm_out")
    return {
        "optical": (s2, _gap_ffn(s2, state, "s2_GAP_FFN")),
        "radar": (s1, _gap_ffn(s1, state, "s1_GAP_FFN")),
        "joint": (joint, joint.mean(1)),
    }


def test_matches_the_released_forward_pass(released):
    model = Croma(CFG, INPUTS, rngs=nnx.Rngs(1))
    convert.to_eofm(released, model)
    got = encode(model, *images(1))
    want = _released_forward(released, *images(1))
    for name in want:
        for g, w in zip(got[name], want[name]):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)


# --- errors ---------------------------------------------------------------------------------


def test_all_problems_listed_in_one_error(released):
    state = dict(released)
    del state["joint_encoder.layers.0.1.to_k.weight"]
    state["s1_GAP_FFN.2.weight"] = np.zeros(3, np.float32)
    state["s2_encoder.transformer.layers.1.1.net.3.weight"] = np.zeros((5, 7), np.float32)
    model = Croma(CFG, INPUTS, rngs=nnx.Rngs(1))
    before = params(model)
    with pytest.raises(convert.ConversionError) as info:
        convert.to_eofm(state, model, source="bad.safetensors")
    error = info.value
    assert error.missing == ["joint_encoder.layers.0.1.to_k.weight"]
    assert error.unexpected == ["s1_GAP_FFN.2.weight"]
    assert error.mismatched == [
        "s2_encoder.transformer.layers.1.1.net.3.weight: expected (32, 128), got (5, 7)"
    ]
    message = str(error)
    assert "bad.safetensors" in message and "CROMA (width 32" in message
    for item in error.missing + error.unexpected + error.mismatched:
        assert item in message
    after = params(model)  # nothing written
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_depth_mismatch_is_described():
    deep = dataclasses.replace(CFG, depth=4)
    state = convert.from_eofm(trained_model(0, deep))
    with pytest.raises(convert.ConversionError) as info:
        convert.to_eofm(state, Croma(CFG, INPUTS, rngs=nnx.Rngs(0)), source="deep.pt")
    assert "s2_encoder.transformer.layers.3.1.net.3.weight" in info.value.unexpected
    assert "joint_encoder.layers.1.2.input_norm.weight" in info.value.unexpected
    assert not info.value.missing and not info.value.mismatched
    assert "width 32, depth optical 4 / radar 2 / joint 2" in str(info.value)


def test_smarties_checkpoint_is_refused():
    cfg = SmartiesConfig(
        patch_size=P,
        embed_dim=D,
        depth=DEPTH,
        num_heads=HEADS,
        in_chans=0,
        decoder_dim=16,
        decoder_depth=1,
        decoder_heads=2,
        num_ranges=3,
    )
    # Three spectral ranges cover B01 and B02 only.
    s2 = SensorSpec("sentinel2_l2a", ("B01", "B02"))
    smarties = Smarties(cfg, {"s2": s2}, rngs=nnx.Rngs(0))
    state = smarties_convert.from_eofm(smarties, image_size=32)
    with pytest.raises(convert.ConversionError) as info:
        convert.to_eofm(state, Croma(CFG, INPUTS, rngs=nnx.Rngs(0)), source="smarties.pt")
    error = info.value
    assert "s2_encoder.linear_input.weight" in error.missing
    assert "cls_token" in error.unexpected and "blocks.0.attn.qkv.weight" in error.unexpected
    message = str(error)
    assert "smarties.pt" in message and "is a CROMA key" in message
    assert "s2_encoder, s1_encoder, s2_GAP_FFN, s1_GAP_FFN, joint_encoder" in message
    assert "optical_encoder, radar_encoder" in message and "global_contrast_loss" in message
    assert len(message.splitlines()) < 60 and "... and " in message
    # And the other way round, with the one error class of the importers.
    with pytest.raises(convert.ConversionError, match="is a SMARTIES key"):
        smarties_convert.to_eofm(convert.from_eofm(trained_model(0)), smarties)


# --- checkpoints of the pretraining script -----------------------------------------------------

# The pretraining script's module names -> the released ones (encoders and GAP-FFN heads).
SCRIPT_TO_RELEASED = (
    (r"^optical_encoder\.", "s2_encoder."),
    (r"^radar_encoder\.", "s1_encoder."),
    (r"^GAP_FFN_optical\.", "s2_GAP_FFN."),
    (r"^GAP_FFN_radar\.", "s1_GAP_FFN."),
    (r"^cross_encoder\.", "joint_encoder."),
    (r"\.create_qkv\.", ".to_qkv."),
    (r"\.0\.out\.", ".0.to_out."),
    (r"\.create_([qkv])\.", r".to_\1."),
    (r"\.net\.2\.", ".net.3."),
)


def script_to_released(key: str) -> str:
    for pattern, name in SCRIPT_TO_RELEASED:
        key = re.sub(pattern, name, key)
    return key


def script_sincos(grid: int, dim: int) -> np.ndarray:
    """The script's fixed decoder table [grid^2, dim]: the first half encodes the column, the
    second the row, each as [sin | cos] of position * 10000^(-k / (dim / 4))."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    half = lambda pos: np.concatenate(
        [np.sin(pos[:, None] * omega), np.cos(pos[:, None] * omega)], 1
    )
    return np.concatenate([half(cols), half(rows)], 1)


def test_pretraining_script_key_names_and_shapes(released):
    state = convert.from_eofm(trained_model(0), layout="pretraining")
    dd = CFG.decoder_dim
    expected = {
        "optical_encoder.linear_input.weight": (D, P * P * 12),
        "optical_encoder.transformer.layers.1.0.create_qkv.weight": (3 * D, D),
        "optical_encoder.transformer.layers.1.0.out.weight": (D, D),
        "optical_encoder.transformer.layers.1.1.net.2.weight": (D, 4 * D),
        "radar_encoder.linear_input.weight": (D, P * P * 2),
        "radar_encoder.transformer.norm_out.bias": (D,),
        "GAP_FFN_optical.3.weight": (D, 4 * D),
        "GAP_FFN_radar.0.weight": (D,),
        "cross_encoder.layers.0.0.create_qkv.weight": (3 * D, D),
        "cross_encoder.layers.0.1.create_k.weight": (D, D),
        "cross_encoder.layers.0.1.to_out.weight": (D, D),
        "cross_encoder.layers.0.2.net.2.bias": (D,),
        "cross_encoder.norm_out.weight": (D,),
        "global_contrast_loss.optical_proj.weight": (D, D),
        "global_contrast_loss.radar_proj.bias": (D,),
        "global_contrast_loss.logit_scale": (),
        "decoder.encoder_to_decoder.weight": (dd, D),
        "decoder.mask_token": (1, 1, dd),
        "decoder.decoder_pos_embed": (1, 15 * 15, dd),
        "decoder.decoder.layers.0.0.input_norm.weight": (dd,),
        "decoder.decoder.layers.0.0.create_qkv.weight": (3 * dd, dd),
        "decoder.decoder.layers.0.0.out.bias": (dd,),
        "decoder.decoder.layers.0.1.net.0.weight": (CFG.decoder_mlp_dim, dd),
        "decoder.decoder.layers.0.1.net.2.weight": (dd, CFG.decoder_mlp_dim),
        "decoder.decoder.norm_out.bias": (dd,),
        "decoder.linear_output.weight": (P * P * 14, dd),
    }
    for key, shape in expected.items():
        assert state[key].shape == shape, key
    # The encoders and GAP-FFN heads are the released tensors under the script's names.
    script_only = ("decoder.", "global_contrast_loss.")
    encoders = {script_to_released(k): v for k, v in state.items() if not k.startswith(script_only)}
    assert encoders.keys() == released.keys()
    for key, value in released.items():
        np.testing.assert_array_equal(encoders[key], value, err_msg=key)
    block = 2 + 1 + 2 + 2 + 2 + 2  # norm1, qkv (no bias), proj, norm2, fc1, fc2
    decoder = 2 + 1 + 1 + block + 2 + 2  # embed, mask token, positions, block, norm, pred
    assert len(state) == len(released) + decoder + 2 * 2 + 1  # + projections, logit scale
    table = state["decoder.decoder_pos_embed"][0]
    np.testing.assert_allclose(table, script_sincos(15, dd), rtol=1e-6, atol=1e-6)


def test_pretraining_checkpoint_resumes_pretraining(caplog):
    model_a = trained_model(0)
    state = convert.from_eofm(model_a, layout="pretraining")
    model_b = Croma(CFG, INPUTS, rngs=nnx.Rngs(1))
    with caplog.at_level(logging.WARNING):
        report = convert.to_eofm(state, model_b, source="checkpoint-299.pt")
    assert report.unused == () and report.kept == ()
    assert "checkpoint-299.pt" not in caplog.text  # nothing to warn about
    want = params(model_a)  # every parameter: the pretraining loss is model_a's
    for key, value in params(model_b).items():
        np.testing.assert_array_equal(value, want[key], err_msg=str(key))

    # Encoders alone, under the script's names: the pretraining-only parts keep their values.
    script_only = ("decoder.", "global_contrast_loss.")
    encoders = {k: v for k, v in state.items() if not k.startswith(script_only)}
    model_c = Croma(CFG, INPUTS, rngs=nnx.Rngs(1))
    with caplog.at_level(logging.WARNING):
        report = convert.to_eofm(encoders, model_c, source="encoders.pt")
    assert report.kept == tuple(sorted(PRETRAINING_ONLY))
    assert "encoders.pt" in caplog.text and "decoder_block" in caplog.text
    init = params(Croma(CFG, INPUTS, rngs=nnx.Rngs(1)))
    for key, value in params(model_c).items():
        np.testing.assert_array_equal(
            value, (init if key[0] in PRETRAINING_ONLY else want)[key], err_msg=str(key)
        )


def test_pretraining_checkpoint_problems_are_listed():
    state = convert.from_eofm(trained_model(0), layout="pretraining")
    del state["global_contrast_loss.logit_scale"]
    state["decoder.decoder.layers.1.0.out.weight"] = np.zeros((16, 16), np.float32)
    state["decoder.linear_output.weight"] = np.zeros((5, 16), np.float32)
    state["decoder.decoder_pos_embed"] = state["decoder.decoder_pos_embed"] + 1e-3
    model = Croma(CFG, INPUTS, rngs=nnx.Rngs(1))
    before = params(model)
    with pytest.raises(convert.ConversionError) as info:
        convert.to_eofm(state, model, source="checkpoint-299.pt")
    error = info.value
    assert error.missing == ["global_contrast_loss.logit_scale"]
    assert error.unexpected == ["decoder.decoder.layers.1.0.out.weight"]
    assert error.mismatched == ["decoder.linear_output.weight: expected (896, 16), got (5, 16)"]
    assert len(error.invalid) == 1 and error.invalid[0].startswith("decoder.decoder_pos_embed")
    message = str(error)
    assert "checkpoint-299.pt" in message and "pretraining script" in message
    after = params(model)  # nothing written
    assert all(np.array_equal(after[k], before[k]) for k in before)


# --- file forms -----------------------------------------------------------------------------


def nested(state: dict[str, np.ndarray], parts: dict[str, str] | None = None) -> dict:
    """The released file form: {part: {key inside the part: tensor}}."""
    out: dict[str, dict] = {}
    for key, value in state.items():
        part, rest = key.split(".", 1)
        out.setdefault((parts or {}).get(part, part), {})[rest] = value
    return out


def test_nested_and_module_state_dicts(released):
    model_a = Croma(CFG, INPUTS, rngs=nnx.Rngs(1))
    convert.to_eofm(released, model_a)
    # The released file as torch.load returns it, and a `PretrainedCROMA.state_dict()`.
    aliases = {
        "s1_GAP_FFN": "GAP_FFN_s1",
        "s2_GAP_FFN": "GAP_FFN_s2",
        "joint_encoder": "cross_encoder",
    }
    module_state = torch_state.flatten(nested(released, aliases))
    assert "cross_encoder.layers.0.1.to_k.weight" in module_state
    for state in (nested(released), module_state):
        model_b = Croma(CFG, INPUTS, rngs=nnx.Rngs(1))
        convert.to_eofm(state, model_b)
        want = params(model_a)
        assert all(np.array_equal(v, want[k]) for k, v in params(model_b).items())


def test_released_torch_file(tmp_path):
    torch = pytest.importorskip("torch")
    model_a = trained_model(0)
    state = convert.from_eofm(model_a)
    path = tmp_path / "CROMA_base.pt"
    torch.save(nested({k: torch.from_numpy(v) for k, v in state.items()}), path)
    loaded = torch_state.load(path)
    assert loaded.keys() == state.keys()
    model_b = convert.load_croma(path, CFG, rngs=nnx.Rngs(1))
    trained = params(model_a)
    for key, value in params(model_b).items():
        if key[0] not in PRETRAINING_ONLY:
            np.testing.assert_array_equal(value, trained[key], err_msg=str(key))

    # torch tensors straight from torch.load, bfloat16 included.
    tensors = nested({k: torch.from_numpy(v).bfloat16() for k, v in state.items()})
    model_c = Croma(CFG, INPUTS, rngs=nnx.Rngs(1))
    convert.to_eofm(tensors, model_c)
    got = params(model_c)[("optical", "embed", "kernel")]
    np.testing.assert_allclose(got, trained[("optical", "embed", "kernel")], rtol=1e-2, atol=1e-2)
