"""Tests of the SMARTIES checkpoint importer and of reading PyTorch checkpoint files."""

import argparse
import json
import logging
import struct
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from param_helpers import params, randomize

from eofm.convert import smarties as convert
from eofm.convert import torch_state
from eofm.data.datasets import eurosat_ms
from eofm.data.spec import SensorSpec
from eofm.models.smarties import Smarties, SmartiesConfig, View

D, DEPTH, HEADS, P = 32, 2, 2, 8
DD = 16
RANGES = 17
IMAGE_SIZE = 32


def tiny_cfg(**encoder) -> SmartiesConfig:
    sizes = {"patch_size": P, "embed_dim": D, "depth": DEPTH, "num_heads": HEADS} | encoder
    return SmartiesConfig(
        **sizes, in_chans=0, decoder_dim=DD, decoder_depth=1, decoder_heads=2, num_ranges=RANGES
    )


def smarties(cfg: SmartiesConfig | None = None, seed: int = 0) -> Smarties:
    return Smarties(cfg or tiny_cfg(), convert.DEFAULT_INPUTS, rngs=nnx.Rngs(seed))


def trained_model(seed: int = 0, cfg: SmartiesConfig | None = None) -> Smarties:
    """A model whose every parameter (zero biases, unit scales included) is random."""
    return randomize(smarties(cfg, seed), seed)


def without_decoder(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("decoder") and k != "mask_token"}


@pytest.fixture(scope="module")
def sample(shared_data):
    """A EuroSAT-MS Sentinel-2 image (32 x 32, 13 bands, standardised per band) and its View."""
    source = eurosat_ms(shared_data / "eurosat_ms")
    image = source[0]["s2"][:IMAGE_SIZE, :IMAGE_SIZE]
    image = (image - image.mean((0, 1))) / (image.std((0, 1)) + 1e-6)
    return image[None].astype(np.float32), View.of(source.specs["s2"], tiny_cfg())


# --- round trip -----------------------------------------------------------------------------


def test_round_trip_through_safetensors(tmp_path, sample):
    images, view = sample
    model_a = trained_model(0)
    path = tmp_path / "smarties.safetensors"
    torch_state.save_safetensors(path, convert.from_eofm(model_a, image_size=IMAGE_SIZE))
    model_b = convert.load_smarties(path, tiny_cfg(), rngs=nnx.Rngs(1))

    want, got = params(model_a), params(model_b)
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=str(key))
    # The inputs (what the pretraining loss reads) are the released pair unless given.
    assert model_b.inputs == convert.DEFAULT_INPUTS
    rgb = {"rgb": SensorSpec.full("rgb")}
    model_c = convert.load_smarties(path, tiny_cfg(), inputs=rgb, rngs=nnx.Rngs(1))
    assert model_c.inputs == rgb
    assert all(np.array_equal(v, want[k]) for k, v in params(model_c).items())

    @nnx.jit
    def encode_and_loss(model: Smarties, images: jax.Array, key: jax.Array):
        loss, _ = model([images], [view], rng=key)
        return model.encode(images, view), loss

    key = jax.random.key(3)
    (tokens_a, cls_a), loss_a = encode_and_loss(model_a, images, key)
    (tokens_b, cls_b), loss_b = encode_and_loss(model_b, images, key)
    np.testing.assert_array_equal(tokens_b, tokens_a)
    np.testing.assert_array_equal(cls_b, cls_a)
    np.testing.assert_array_equal(loss_b, loss_a)


def test_official_key_names_and_shapes():
    state = convert.from_eofm(trained_model(0))
    pp, grid = P * P, 224 // P
    expected = {
        "cls_token": (1, 1, D),
        "pos_embed": (1, 1 + grid * grid, D),
        "spectrum_projection.spectrum_embeds.16.proj.weight": (D, pp),
        "spectrum_projection.spectrum_embeds.16.proj.bias": (D,),
        "blocks.1.norm1.weight": (D,),
        "blocks.1.attn.qkv.weight": (3 * D, D),
        "blocks.1.attn.qkv.bias": (3 * D,),
        "blocks.1.attn.proj.weight": (D, D),
        "blocks.1.mlp.fc1.weight": (4 * D, D),
        "blocks.1.mlp.fc2.weight": (D, 4 * D),
        "norm.weight": (D,),
        "mask_token": (1, 1, DD),
        "decoder_pos_embed": (1, 1 + grid * grid, DD),
        "decoder_embed.weight": (DD, D),
        "decoder_blocks.0.attn.qkv.weight": (3 * DD, DD),
        "decoder_norm.bias": (DD,),
        "decoder_preds.16.weight": (pp, DD),
        "decoder_preds.16.bias": (pp,),
    }
    for key, shape in expected.items():
        assert state[key].shape == shape, key
    per_block = 12  # norm1, qkv, proj, norm2, fc1, fc2: weight and bias each
    encoder = 2 * RANGES + 2 + DEPTH * per_block + 2
    decoder = 2 + 2 + 1 * per_block + 2 + 2 * RANGES
    assert len(state) == encoder + decoder
    assert not any(part in key for key in state for part in ("kernel", "scale"))
    assert all(v.dtype == np.float32 for v in state.values())
    np.testing.assert_array_equal(state["pos_embed"][0, 0], 0)


def test_qkv_layout_matches_torch():
    """torch: qkv = x W^T + b, split [q | k | v], heads contiguous inside each part."""
    rng = np.random.default_rng(0)
    state = convert.from_eofm(trained_model(0))
    w_qkv = rng.standard_normal((3 * D, D), np.float32) / np.sqrt(D)
    b_qkv = rng.standard_normal(3 * D, np.float32)
    state["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.bias"] = w_qkv, b_qkv
    model = smarties(seed=1)
    convert.to_eofm(state, model)
    attn = model.encoder.blocks[0].attn

    b, n, hd = 2, 5, D // HEADS
    x = rng.standard_normal((b, n, D), np.float32)
    q, k, v = np.split(x @ w_qkv.T + b_qkv, 3, axis=-1)
    q, k, v = (t.reshape(b, n, HEADS, hd) for t in (q, k, v))
    eofm_qkv = np.asarray(attn.qkv(x)).reshape(b, n, 3, HEADS, hd)  # as `Attention` splits it
    for i, want in enumerate((q, k, v)):
        np.testing.assert_allclose(eofm_qkv[:, :, i], want, rtol=1e-5, atol=1e-5)

    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, D)
    want = heads @ state["blocks.0.attn.proj.weight"].T + state["blocks.0.attn.proj.bias"]
    np.testing.assert_allclose(np.asarray(attn(x)), want, rtol=1e-4, atol=1e-5)


# --- errors ---------------------------------------------------------------------------------


def test_all_problems_listed_in_one_error():
    state = convert.from_eofm(trained_model(0))
    del state["blocks.0.norm1.weight"]
    state["blocks.0.attn.extra"] = np.zeros(3, np.float32)
    state["blocks.1.mlp.fc1.weight"] = np.zeros((5, 7), np.float32)
    model = smarties(seed=1)
    before = params(model)
    with pytest.raises(convert.ConversionError) as info:
        convert.to_eofm(state, model, source="bad.safetensors")
    error = info.value
    assert error.missing == ["blocks.0.norm1.weight"]
    assert error.unexpected == ["blocks.0.attn.extra"]
    assert error.mismatched == ["blocks.1.mlp.fc1.weight: expected (128, 32), got (5, 7)"]
    message = str(error)
    assert "bad.safetensors" in message
    for item in error.missing + error.unexpected + error.mismatched:
        assert item in message
    after = params(model)  # nothing written
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_config_mismatch_shows_in_shapes(tmp_path):
    path = tmp_path / "wide.safetensors"
    torch_state.save_safetensors(path, convert.from_eofm(trained_model(0, tiny_cfg(embed_dim=48))))
    with pytest.raises(convert.ConversionError) as info:
        convert.load_smarties(path, tiny_cfg())
    message = str(info.value)
    assert "blocks.0.attn.qkv.weight: expected (96, 32), got (144, 48)" in message
    assert "width 48" in message and str(path) in message


def test_checkpoint_of_another_model():
    state = {f"layer{i}.conv.weight": np.zeros((64, 3, 3, 3), np.float32) for i in range(5)}
    with pytest.raises(convert.ConversionError) as info:
        convert.to_eofm(state, smarties(seed=0), source="resnet.pt")
    assert info.value.unexpected == [f"layer{i}.conv.weight" for i in range(5)]
    assert "cls_token" in info.value.missing and len(info.value.missing) > 50
    message = str(info.value)
    assert "resnet.pt" in message and "is a SMARTIES key" in message
    # What was found (a few keys) and what was expected (the layouts read), in a short message.
    assert "(layer0.conv.weight, layer1.conv.weight, layer2.conv.weight, ...)" in message
    assert "expected: a SMARTIES state dict" in message and "head" in message
    assert len(message.splitlines()) < 50 and "... and " in message


def test_encoder_only_file_loads(tmp_path, caplog):
    model_a = trained_model(0)
    path = tmp_path / "encoder.safetensors"
    torch_state.save_safetensors(path, without_decoder(convert.from_eofm(model_a)))
    with caplog.at_level(logging.WARNING):
        model_b = convert.load_smarties(path, tiny_cfg(), rngs=nnx.Rngs(1))
    assert "no values for decoder, head_bias, head_kernel" in caplog.text
    report = convert.to_eofm(without_decoder(convert.from_eofm(model_a)), smarties(seed=1))
    assert report.unused == () and report.kept == ("decoder", "head_bias", "head_kernel")
    trained, init = params(model_a), params(smarties(seed=1))
    for key, value in params(model_b).items():
        np.testing.assert_array_equal(value, (trained if key[0] == "encoder" else init)[key])

    with pytest.raises(convert.ConversionError) as info:
        convert.load_smarties(path, tiny_cfg(), allow_missing_decoder=False)
    assert "decoder_embed.weight" in info.value.missing
    assert "decoder_preds.16.weight" in info.value.missing


def classifier(state: dict, *, global_pool: bool) -> dict:
    """The state dict of the official downstream classifier: the encoder and a linear head, with
    positions trained further; with global pooling, fc_norm normalises the pooled tokens and the
    final norm is gone."""
    rng = np.random.default_rng(5)
    out = without_decoder(state) | {
        "head.weight": rng.standard_normal((10, D), np.float32),
        "head.bias": rng.standard_normal(10, np.float32),
        "pos_embed": state["pos_embed"] + 0.01,
    }
    if global_pool:
        out["fc_norm.weight"], out["fc_norm.bias"] = out.pop("norm.weight"), out.pop("norm.bias")
    return out


@pytest.mark.parametrize("global_pool", [False, True])
def test_classifier_state_dict_loads_the_encoder(global_pool, caplog):
    model_a = trained_model(0)
    state = classifier(convert.from_eofm(model_a), global_pool=global_pool)
    model_b = smarties(seed=1)
    with caplog.at_level(logging.WARNING):
        report = convert.to_eofm(state, model_b, source="eurosat_finetuned.pth")

    fc_norm = ("fc_norm.bias", "fc_norm.weight") if global_pool else ()
    assert report.unused == (*fc_norm, "head.bias", "head.weight", "pos_embed")
    norm = ("encoder.norm",) if global_pool else ()
    assert report.kept == ("decoder", *norm, "head_bias", "head_kernel")
    assert "eurosat_finetuned.pth" in caplog.text
    for name in report.unused + report.kept:
        assert name in caplog.text
    assert "pos_embed: not the MAE 2-D sin-cos table" in caplog.text

    trained, init = params(model_a), params(smarties(seed=1))
    for path, value in params(model_b).items():
        kept = path[0] != "encoder" or (global_pool and path[1] == "norm")
        np.testing.assert_array_equal(value, (init if kept else trained)[path], err_msg=str(path))


def test_position_tables_are_checked(caplog):
    model = smarties(seed=1)
    state = convert.from_eofm(trained_model(0), image_size=IMAGE_SIZE)
    # A table of another grid than the one asked for is not compared.
    with caplog.at_level(logging.INFO):
        convert.to_eofm(state, model, image_size=2 * IMAGE_SIZE)
    assert "not checked" in caplog.text

    state["pos_embed"] = state["pos_embed"] + 1e-3
    state["decoder_pos_embed"] = state["decoder_pos_embed"][:, :, :8]
    with pytest.raises(convert.ConversionError) as info:
        convert.to_eofm(state, model)
    assert len(info.value.invalid) == 1 and "pos_embed" in info.value.invalid[0]
    assert info.value.mismatched == ["decoder_pos_embed: expected (1, 1 + L, 16), got (1, 17, 8)"]


# --- reading files --------------------------------------------------------------------------


def test_safetensors_files(tmp_path):
    state = {"module.a": np.arange(6, dtype=np.float32).reshape(2, 3), "module.b": np.ones(2)}
    torch_state.save_safetensors(tmp_path / "w.safetensors", state)
    loaded = torch_state.load(tmp_path / "w.safetensors")
    assert loaded.keys() == {"a", "b"}
    np.testing.assert_array_equal(loaded["a"], state["module.a"])

    # bfloat16, as torch writes it, comes back as float32.
    value = np.array([[1.5, -2.0, 3.0]], ml_dtypes.bfloat16)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [1, 3], "data_offsets": [0, 6]}}).encode()
    (tmp_path / "bf16.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header + value.tobytes()
    )
    loaded = torch_state.load(tmp_path / "bf16.safetensors")
    assert loaded["w"].dtype == np.float32
    np.testing.assert_array_equal(loaded["w"], [[1.5, -2.0, 3.0]])

    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        torch_state.load(tmp_path / "w.npz")
    with pytest.raises(FileNotFoundError):
        torch_state.load(tmp_path / "absent.safetensors")


def test_torch_file_without_torch(tmp_path, monkeypatch):
    (tmp_path / "w.pt").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[torch\]'"):
        torch_state.load(tmp_path / "w.pt")


class _Opaque:
    """A class `weights_only` loading must refuse to rebuild."""


def test_torch_files(tmp_path):
    torch = pytest.importorskip("torch")
    model_a = trained_model(0)
    state = convert.from_eofm(model_a)
    training_checkpoint = {
        "model": {f"module.{k}": torch.from_numpy(v) for k, v in state.items()},
        "epoch": 3,
        "args": argparse.Namespace(lr=1e-3, batch_size=256),
    }
    path = tmp_path / "checkpoint-299.pth"
    torch.save(training_checkpoint, path)
    loaded = torch_state.load(path)
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key], value)
    model_b = convert.load_smarties(path, tiny_cfg(), rngs=nnx.Rngs(1))
    assert all(np.array_equal(v, params(model_a)[k]) for k, v in params(model_b).items())

    torch.save({"state_dict": {"w": torch.ones(2, dtype=torch.bfloat16)}}, tmp_path / "bf16.bin")
    assert torch_state.load(tmp_path / "bf16.bin")["w"].dtype == np.float32

    torch.save({"w": torch.ones(2), "extra": _Opaque()}, tmp_path / "opaque.pt")
    with pytest.raises(ValueError, match="arbitrary code"):
        torch_state.load(tmp_path / "opaque.pt")
