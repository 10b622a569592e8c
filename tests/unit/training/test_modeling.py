"""Tiny Qwen3 models from a spec: deterministic per seed, right shapes, safetensors round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kap.training.errors import CheckpointError
from kap.training.modeling import (
    TinyModelSpec,
    build_tiny_model,
    load_model,
    pick_attn_implementation,
    qwen3_config,
    save_model,
)

SPEC = TinyModelSpec(vocab_size=97)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    rng_before = torch.get_rng_state()
    first, again = build_tiny_model(SPEC, seed=3), build_tiny_model(SPEC, seed=3)
    other = build_tiny_model(SPEC, seed=4)
    assert _same_weights(first, again)
    assert not torch.equal(first.lm_head.weight, other.lm_head.weight)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone


def test_config_follows_the_spec() -> None:
    spec = TinyModelSpec(vocab_size=50, num_heads=8, num_kv_heads=2, tie_word_embeddings=True)
    config = qwen3_config(spec)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (8, 2, 16)
    assert config.rope_parameters["rope_theta"] == spec.rope_theta
    model = build_tiny_model(spec, seed=0)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with pytest.raises(ValueError, match="multiple"):
        qwen3_config(TinyModelSpec(vocab_size=50, num_heads=4, num_kv_heads=3))


def test_forward_shapes_dtype_and_backend() -> None:
    model = build_tiny_model(SPEC, seed=0)
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    assert pick_attn_implementation("cpu") == "sdpa"
    assert sum(p.numel() for p in model.parameters()) < 200_000
    logits = model(torch.randint(0, SPEC.vocab_size, (2, 9)), use_cache=False).logits
    assert logits.shape == (2, 9, SPEC.vocab_size)


def test_load_model_from_spec_matches_build_and_casts() -> None:
    model = load_model(SPEC, dtype=torch.bfloat16, device="cpu", seed=5)
    assert model.dtype == torch.bfloat16
    reference = build_tiny_model(SPEC, seed=5).to(torch.bfloat16)
    assert _same_weights(model, reference)
    eager = load_model(SPEC, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"


def test_save_then_load_round_trip(tmp_path: Path) -> None:
    model = build_tiny_model(SPEC, seed=1).eval()
    out = save_model(model, None, tmp_path / "ckpt")
    assert (out / "model.safetensors").is_file()
    assert (out / "config.json").is_file()
    loaded = load_model(out, dtype=torch.float32, device="cpu")
    assert _same_weights(model, loaded)
    ids = torch.randint(0, SPEC.vocab_size, (1, 11))
    with torch.no_grad():
        torch.testing.assert_close(
            model(ids, use_cache=False).logits, loaded(ids, use_cache=False).logits
        )


def test_load_model_names_a_missing_or_foreign_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(CheckpointError, match="no-such-checkpoint"):
        load_model(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty has no config\.json"):
        load_model(tmp_path / "empty")
