"""ChromaRetriever on a real embedded Chroma in a temp dir with the real MiniLM embedder."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from council.backends import chroma
from council.backends.chroma import ChromaRetriever, IngestReport
from council.backends.embeddings import SentenceTransformerEmbedder, get_embedder
from council.config import RetrievalConfig
from council.errors import BadInputFile, InvalidRequest, UnknownTenant
from council.protocols import Retriever
from council.retrieval import chunk_id, chunk_text, content_words, lexical_score, stem
from council.types import Document

DOCS = [
    ("rivers.txt", "The river Varn flows north through the valley. The old mill stands beside the bridge."),
    ("harbour.txt", "Rain fell on the harbour town. Ships waited for the tide to turn in the morning."),
    ("guild.txt", "The guild of glassmakers was founded in the year 812. Its hall has green windows."),
]
SECRET = "The vault code of Brightwater Holdings is 7741-alpha and only the treasurer knows it."


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return get_embedder()


@pytest.fixture(autouse=True)
def _no_chroma_default_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    # Chroma's default embedding function would download an ONNX model: it must never be called.
    from chromadb.utils.embedding_functions import ONNXMiniLM_L6_V2

    def refuse(self: object, *args: object, **kwargs: object) -> None:
        raise AssertionError("Chroma's default embedding function was used")

    monkeypatch.setattr(ONNXMiniLM_L6_V2, "__call__", refuse)


def _retriever(path: Path, embedder: SentenceTransformerEmbedder, **overrides: object) -> ChromaRetriever:
    return ChromaRetriever(RetrievalConfig(path=str(path), **overrides), embedder=embedder)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> ChromaRetriever:
    retriever = _retriever(tmp_path / "chroma", embedder)
    yield retriever
    retriever.close()


def test_ingest_and_query(store: ChromaRetriever) -> None:
    assert isinstance(store, Retriever)
    report = store.ingest_texts(DOCS, tenant="acme", domain="geo")
    assert report == IngestReport(added=3, skipped=0, chunks=3)
    results = store.query("Which way does the river Varn flow?", tenant="acme", top_n=2)
    assert [c.source for c in results][0] == "rivers.txt"
    assert results[0].tenant == "acme" and results[0].domain == "geo" and not results[0].ephemeral
    assert results[0].id == chunk_id("acme", DOCS[0][1])
    assert results[0].score >= results[1].score
    assert store.count() == 3 and store.count("acme") == 3


def test_reingest_adds_nothing(store: ChromaRetriever) -> None:
    store.ingest_texts(DOCS, tenant="acme")
    again = store.ingest_texts(DOCS + DOCS[:1], tenant="acme")
    assert again == IngestReport(added=0, skipped=4, chunks=4)
    assert store.count() == 3
    # The same text under another tenant is a different chunk.
    assert store.ingest_texts(DOCS[:1], tenant="other").added == 1


def test_restart_finds_the_same_chunks_and_results(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    first = _retriever(tmp_path / "c", embedder)
    first.ingest_texts(DOCS, tenant="acme")
    before = first.query("glassmakers guild founded", tenant="acme", top_n=3)
    first.close()
    second = _retriever(tmp_path / "c", embedder)
    try:
        assert second.count("acme") == 3
        after = second.query("glassmakers guild founded", tenant="acme", top_n=3)
        assert [c.id for c in after] == [c.id for c in before]
        assert [c.score for c in after] == pytest.approx([c.score for c in before], abs=1e-5)
        assert second.ingest_texts(DOCS, tenant="acme").added == 0
    finally:
        second.close()


def test_search_ef_is_set_on_a_new_store_and_on_one_made_with_chromas_default(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    import chromadb

    def ef_search(r: ChromaRetriever) -> object:
        return (r._collection.configuration or {})["hnsw"]["ef_search"]

    new = _retriever(tmp_path / "new", embedder, search_ef=250)
    try:
        assert ef_search(new) == 250
    finally:
        new.close()
    old_path = tmp_path / "old"
    client = chromadb.PersistentClient(str(old_path))  # a store made before search_ef: Chroma's default
    hnsw = {"hnsw": {"space": "cosine"}}
    made = client.get_or_create_collection("council", embedding_function=None, configuration=hnsw)  # type: ignore[arg-type]
    assert made.configuration["hnsw"]["ef_search"] == 100
    del made, client
    chromadb.api.client.SharedSystemClient.clear_system_cache()
    writer = _retriever(old_path, embedder)
    try:
        assert ef_search(writer) == RetrievalConfig().search_ef == 200
    finally:
        writer.close()


async def test_tenant_isolation_whatever_the_query(store: ChromaRetriever) -> None:
    store.ingest_texts(DOCS, tenant="acme")
    store.ingest_texts([("secret.txt", SECRET)], tenant="brightwater")
    acme_ids = {chunk_id("acme", text) for _, text in DOCS}
    for question in (SECRET, "vault code 7741-alpha Brightwater treasurer", "Brightwater"):
        for top_n in (1, 10, 100):
            results = await store.retrieve(question, tenant="acme", top_n=top_n)
            assert {c.id for c in results} <= acme_ids
            assert all(c.tenant == "acme" and "7741" not in c.text for c in results)
    # The owner does find it.
    assert "7741" in store.query("vault code", tenant="brightwater", top_n=1)[0].text


async def test_ephemeral_documents_never_persist_or_cross_tenants(store: ChromaRetriever) -> None:
    store.ingest_texts(DOCS, tenant="acme")
    store.ingest_texts(DOCS[:1], tenant="beta")
    private = Document(text="Project Nightjar ships on the fourth of May.", source="memo")
    question = "When does Project Nightjar ship?"
    results = await store.retrieve(question, tenant="beta", top_n=5, documents=[private, private])
    assert results[0].ephemeral and results[0].tenant == "beta" and results[0].source == "memo"
    assert sum(c.ephemeral for c in results) == 1  # the same text twice is one chunk
    assert store.count() == 4
    later = store.query("When does Project Nightjar ship?", tenant="acme", top_n=10)
    assert all("Nightjar" not in c.text and not c.ephemeral for c in later)
    assert all("Nightjar" not in c.text for c in store.query("Project Nightjar", tenant="beta", top_n=10))


def test_unknown_tenants(store: ChromaRetriever, tmp_path: Path, embedder: SentenceTransformerEmbedder) -> None:
    store.ingest_texts(DOCS, tenant="acme")
    with pytest.raises(UnknownTenant):
        store.query("anything", tenant="ghost", top_n=3)
    assert store.query("anything", tenant="public", top_n=3) == []  # always known, even when empty
    # Ephemeral documents make a tenant usable for that request only.
    doc = Document(text="Ghosts live in the attic.")
    assert store.query("where do ghosts live", tenant="ghost", top_n=3, documents=[doc])[0].ephemeral
    assert store.known_tenants() == {"acme", "public"}

    listed = _retriever(tmp_path / "listed", embedder, tenants=["acme"])
    try:
        assert listed.query("anything", tenant="acme", top_n=3) == []  # listed: known before any ingest
        with pytest.raises(UnknownTenant):
            listed.query("anything", tenant="ghost", top_n=3, documents=[doc])
        with pytest.raises(UnknownTenant):
            listed.ingest_texts(DOCS, tenant="ghost")
        assert listed.known_tenants() == {"acme", "public"}
    finally:
        listed.close()


@pytest.mark.parametrize("bad", ["", "../etc", "a b", "-lead", "x" * 65, "t\u00e9"])
def test_bad_tenant_names_are_refused(store: ChromaRetriever, bad: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid tenant"):
        store.query("q", tenant=bad, top_n=1)
    with pytest.raises(InvalidRequest, match="invalid tenant"):
        store.ingest_texts(DOCS, tenant=bad)


def test_parquet_ingest_and_its_errors(store: ChromaRetriever, tmp_path: Path) -> None:
    good = tmp_path / "docs.parquet"
    table = {
        "text": [DOCS[0][1], DOCS[1][1], None],
        "source": ["r.txt", None, "x"],
        "domain": ["geo", None, None],
        "tenant": [None, "beta", None],
    }
    pq.write_table(pa.table(table), good)
    # The column names another tenant for row 1: stored for it only when asked (--tenant-column).
    report = store.ingest_paths([good], tenant="acme", tenant_column=True)
    assert report == IngestReport(added=2, skipped=0, chunks=2) and report.tenants == {"acme": 1, "beta": 1}
    [river] = store.query("river Varn", tenant="acme", top_n=5)
    assert (river.source, river.domain) == ("r.txt", "geo")
    [harbour] = store.query("harbour", tenant="beta", top_n=5)
    assert harbour.source == f"{good}#1"

    missing = tmp_path / "notext.parquet"
    pq.write_table(pa.table({"body": ["a sentence ."]}), missing)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    for bad, column in ((missing, "text"), (garbage, None)):
        with pytest.raises(BadInputFile, match=str(bad)) as info:
            store.ingest_paths([bad], tenant="acme")
        assert info.value.details["file"] == str(bad)
        assert info.value.details.get("column") == column
    assert store.count() == 2


def test_folders_are_read_recursively_and_checked_before_writing(store: ChromaRetriever, tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(DOCS[0][1])
    (root / "sub" / "b.md").write_text(DOCS[1][1])
    (root / "sub" / "ignored.json").write_text("{}")
    assert store.ingest_paths([root], tenant="acme").added == 2
    (root / "sub" / "c.txt").write_text(DOCS[2][1])
    pq.write_table(pa.table({"body": ["x"]}), root / "bad.parquet")
    with pytest.raises(BadInputFile, match="column 'text'"):
        store.ingest_paths([root], tenant="acme")
    assert store.count() == 2  # c.txt was not written either
    with pytest.raises(BadInputFile, match="no such file"):
        store.ingest_paths([tmp_path / "nope.txt"], tenant="acme")


def test_lexical_score_rescues_a_made_up_entity(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    fillers = [
        "The apprentice was taught glassblowing by an old master in the harbour town.",
        "Every master craftsman in the guild trains one apprentice at a time.",
        "Apprentices learn from their teachers for seven years before joining the guild.",
        "The old master taught his apprentice how to shape molten glass.",
        "A famous teacher trained many apprentices in the art of pottery.",
        "The blacksmith's apprentice learned to forge swords from his mentor.",
        "Master weavers taught young apprentices to operate the looms.",
        "Who taught the apprentice? The records of the guild name every teacher.",
        "Teachers and tutors taught the children of the town to read and write.",
        "Her mentor taught her everything about painting and drawing.",
        "Who taught the young painter? Her teacher was a master of colour.",
        "The teacher who taught the apprentices is named in the guild records.",
        "Which master taught which apprentice is written in the ledger.",
        "Teachers taught, apprentices learned and masters judged their work.",
    ]
    target = "Quorvath Ellindre keeps bees on the western hill and sells honey in spring."
    store = _retriever(tmp_path / "lex", embedder)
    try:
        store.ingest_texts([(f"f{i}", t) for i, t in enumerate(fillers)] + [("target", target)], tenant="acme")
        question = "Who taught Quorvath Ellindre?"
        dense = _retriever(tmp_path / "lex", embedder, lexical_weight=0.0)
        ranked = [c.source for c in dense.query(question, tenant="acme", top_n=len(fillers) + 1)]
        # Dense similarity alone ranks it below the 4 x top_n candidates a top-1 query re-ranks: only the
        # verbatim word probe brings it in, and the lexical score puts it first.
        assert ranked.index("target") >= 4
        assert store.query(question, tenant="acme", top_n=1)[0].source == "target"
        monkeypatch.setattr(chroma, "_contains_filter", lambda words: None)
        assert store.query(question, tenant="acme", top_n=1)[0].source != "target"
    finally:
        store.close()


def test_query_embedding_is_used_and_checked(store: ChromaRetriever, embedder: SentenceTransformerEmbedder) -> None:
    store.ingest_texts(DOCS, tenant="acme")
    question = "harbour ships tide"
    vector = embedder.embed([question])[0]
    with_vector = store.query(question, tenant="acme", top_n=3, query_embedding=list(vector))
    assert [c.id for c in with_vector] == [c.id for c in store.query(question, tenant="acme", top_n=3)]
    with pytest.raises(InvalidRequest, match="dimensions"):
        store.query(question, tenant="acme", top_n=3, query_embedding=[0.1, 0.2])
    with pytest.raises(InvalidRequest, match="top_n"):
        store.query(question, tenant="acme", top_n=0)


def test_chunking_packs_sentences() -> None:
    text = "One two three. Four five six! Seven eight nine? Ten eleven twelve."
    assert chunk_text(text, max_chars=32) == [
        "One two three. Four five six!",
        "Seven eight nine?",
        "Ten eleven twelve.",
    ]
    assert chunk_text(text, max_chars=32, overlap_sentences=1) == [
        "One two three. Four five six!",
        "Four five six! Seven eight nine?",  # the overlap sentence repeats where it fits
        "Ten eleven twelve.",
    ]
    assert chunk_text(text, max_chars=600) == [text]
    # An overlong sentence splits at spaces, an overlong word hard; no text is lost.
    long = chunk_text("word " * 12 + "x" * 30, max_chars=20)
    assert long == ["word word word word"] * 3 + ["x" * 20, "x" * 10]
    assert chunk_text("", max_chars=50) == []


def test_content_words_and_lexical_score() -> None:
    words = content_words("Who taught Quorvath the art of glass?")
    assert words == ["taught", "Quorvath", "art", "glass"]
    assert lexical_score(words, "quorvath makes GLASS") == 0.5
    assert lexical_score([], "anything") == 0.0


def test_stems_let_inflections_meet_and_leave_short_words_and_ss_alone() -> None:
    assert [stem(w) for w in ["Treats", "treated", "treating", "treat"]] == ["treat"] * 4
    words = ["companies", "doses", "class", "bus", "red"]
    assert [stem(w) for w in words] == ["company", "dose", "class", "bus", "red"]
    # The question's "treat" meets the passage's "treats"; an unrelated word still does not.
    assert lexical_score(["Zorvex", "treat"], "Zorvex treats migraine.") == 1.0
    assert lexical_score(["Zorvex", "cure"], "Zorvex treats migraine.") == 0.5


def test_relevance_filters_drop_near_misses_and_keep_a_clear_winner(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    docs = [
        ("pila", "The ceo of pila corp is jonas dubois. Pila corp works in the farming sector."),
        ("tavo", "The ceo of tavo corp is mira santos. Tavo corp works in the mining sector."),
        ("reno", "The ceo of reno corp is ada fischer. Reno corp works in the shipping sector."),
    ]
    plain = _retriever(tmp_path / "rel", embedder)
    try:
        plain.ingest_texts(docs, tenant="acme")
        everything = plain.query("who is the ceo of pila corp ?", tenant="acme", top_n=3)
        assert [c.source for c in everything][0] == "pila" and len(everything) == 3  # filters off: top_n back
        assert len(plain.query("a question about nothing stored here", tenant="acme", top_n=3)) == 3
        best, runner_up = everything[0].score, everything[1].score
        near_miss = plain.query("who is the ceo of zorbax corp ?", tenant="acme", top_n=3)[0].score
        assert near_miss < best  # a made-up company only half matches any passage
    finally:
        plain.close()
    cut, margin = (near_miss + best) / 2, (best - runner_up) / 2
    strict = _retriever(tmp_path / "rel", embedder, min_score=cut, score_margin=margin)
    try:
        assert [c.source for c in strict.query("who is the ceo of pila corp ?", tenant="acme", top_n=3)] == ["pila"]
        assert strict.query("who is the ceo of zorbax corp ?", tenant="acme", top_n=3) == []
    finally:
        strict.close()


@pytest.mark.parametrize(("field", "value"), [("min_score", -1.5), ("min_score", 1.5), ("score_margin", -1)])
def test_relevance_filter_settings_are_checked(field: str, value: float) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=field):
        RetrievalConfig.model_validate({field: value})


def test_stored_ids_names_what_the_store_holds(store: ChromaRetriever) -> None:
    store.ingest_texts(DOCS[:1], tenant="acme")
    [held] = [chunk_id("acme", c) for c in chunk_text(DOCS[0][1], store.config.chunking.max_chars)]
    assert store.stored_ids([held, chunk_id("acme", "never stored")]) == {held}
