"""Causal LMs for training without downloads: tiny Qwen3 models from a spec, local checkpoints.

Every stage runs on a tiny model built from a config on the CPU in tests, and on a real checkpoint
(a local directory the user gives) on GPUs. Nothing here ever reaches the network: checkpoints
load with `local_files_only=True`, and a `TinyModelSpec` builds random weights from a seed.

Attention backend: "flash_attention_2" only on CUDA with `flash_attn` importable (varlen attention
for packed samples), otherwise "sdpa" — on which transformers builds the block-diagonal causal
mask of packed samples from the restarting position ids itself (see `kap.training.packing`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.utils.import_utils import is_flash_attn_2_available

from kap.training.errors import CheckpointError


@dataclass(frozen=True)
class TinyModelSpec:
    """The shape of a small Qwen3-style decoder, built with random weights from a seed."""

    vocab_size: int  # rows of the embedding and of the LM head; len(tokenizer) for a trained one
    hidden_size: int = 64  # width of the residual stream
    num_layers: int = 2  # decoder blocks
    num_heads: int = 4  # query heads per attention layer
    num_kv_heads: int = 2  # key/value heads (grouped-query attention: num_heads % this == 0)
    head_dim: int = 16  # width of one head; Qwen3 sets it apart from hidden_size // num_heads
    intermediate_size: int = 128  # width of the SwiGLU MLP
    max_position_embeddings: int = 4096  # longest sequence the rotary embedding is sized for
    rope_theta: float = 1_000_000.0  # rotary base; Qwen3 uses 1e6
    tie_word_embeddings: bool = False  # share the input embedding with the LM head (Qwen3 <= 4B)
    rms_norm_eps: float = 1e-6  # epsilon of every RMSNorm, q/k-norm included
    pad_token_id: int | None = None  # written to the config so generation and saving know it
    eos_token_id: int | None = None  # id of <|im_end|> for a chat model


def qwen3_config(spec: TinyModelSpec) -> Qwen3Config:
    """A `Qwen3Config` for the spec (q/k RMSNorm, SwiGLU, GQA and RoPE come with Qwen3)."""
    if spec.num_heads % spec.num_kv_heads:
        raise ValueError(f"num_heads={spec.num_heads} is not a multiple of {spec.num_kv_heads=}")
    return Qwen3Config(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        rms_norm_eps=spec.rms_norm_eps,
        tie_word_embeddings=spec.tie_word_embeddings,
        pad_token_id=spec.pad_token_id,
        eos_token_id=spec.eos_token_id,
    )


def pick_attn_implementation(device: str | torch.device) -> str:
    """ "flash_attention_2" on CUDA when flash_attn is importable, else "sdpa"."""
    on_cuda = torch.device(device).type == "cuda"
    return "flash_attention_2" if on_cuda and is_flash_attn_2_available() else "sdpa"


def build_tiny_model(
    spec: TinyModelSpec, *, seed: int, attn_implementation: str = "sdpa"
) -> Qwen3ForCausalLM:
    """A float32 Qwen3ForCausalLM with weights that depend only on `seed` (global RNG untouched)."""
    config = qwen3_config(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM._from_config(  # type: ignore[no-untyped-call]
            config, dtype=torch.float32, attn_implementation=attn_implementation
        )
    assert isinstance(model, Qwen3ForCausalLM)
    return model


def _check_checkpoint_dir(path: Path) -> None:
    if not path.is_dir():
        raise CheckpointError(f"model path {path} is not a directory (expected a local checkpoint)")
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"model path {path} has no config.json: not a transformers checkpoint"
        )


def load_model(
    source: str | Path | TinyModelSpec,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    seed: int = 0,
) -> PreTrainedModel:
    """A causal LM on `device`: built from a TinyModelSpec (with `seed`) or read from a local dir.

    Raises CheckpointError naming the path when it is not a directory holding config.json.
    """
    attn = attn_implementation or pick_attn_implementation(device)
    if isinstance(source, TinyModelSpec):
        # Built in float32 with sdpa (flash-attn refuses CPU/fp32), then moved and switched.
        model: PreTrainedModel = build_tiny_model(source, seed=seed)
        # nn.Module.to moves in place; transformers' decorated `.to` confuses type checkers.
        torch.nn.Module.to(model, device=device, dtype=dtype)
        if attn != "sdpa":
            model.set_attn_implementation(attn)
        return model
    path = Path(source).expanduser()
    _check_checkpoint_dir(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, dtype=dtype, attn_implementation=attn
    )
    torch.nn.Module.to(model, device)
    return model


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, out_dir: str | Path
) -> Path:
    """Write the model (safetensors + config) and the tokenizer to `out_dir`; returns the dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # transformers 5 always writes safetensors
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
