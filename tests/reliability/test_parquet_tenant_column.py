"""A Parquet `tenant` column does not override --tenant in silence (issue 16, finding 6).

Before, `council ingest vendor.parquet --tenant acme` wrote the rows into the tenants the file's column named and
still printed "for tenant 'acme'": a vendor's file could write into any tenant, `public` included. Now a column
that names another tenant is refused before anything is stored, unless asked for (`--tenant-column`), and the
report counts the chunks of each tenant.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from council.backends import embeddings
from council.backends.chroma import ChromaRetriever
from council.backends.files import document_batches
from council.cli import app
from council.config import RetrievalConfig
from council.errors import BadInputFile
from council.jobs import ingest as ingest_job
from tests.reliability.test_ingest_reads_only_given import TinyEmbedder


@pytest.fixture
def vendor(tmp_path: Path) -> Path:
    path = tmp_path / "vendor.parquet"
    rows = {
        "text": ["Anvils ship on Mondays.", "The globex launch code is 9902.", "Public notice: all is well."],
        "tenant": [None, "globex", "public"],
    }
    pq.write_table(pa.table(rows), path)
    return path


@pytest.fixture
def store(tmp_path: Path) -> ChromaRetriever:
    retriever = ChromaRetriever(RetrievalConfig(path=str(tmp_path / "chroma")), embedder=TinyEmbedder())
    yield retriever
    retriever.close()


def test_a_disagreeing_column_is_refused_and_nothing_is_stored(store: ChromaRetriever, vendor: Path) -> None:
    with pytest.raises(BadInputFile, match=r"vendor\.parquet: row 1: column 'tenant' says 'globex', not 'acme'") as e:
        store.ingest_paths([vendor], tenant="acme")
    assert "--tenant-column" in e.value.message
    assert e.value.details == {"file": str(vendor), "column": "tenant", "row": 1, "tenant": "globex"}
    assert store.count() == 0
    with pytest.raises(BadInputFile, match="row 1"):
        list(document_batches([vendor], tenant="acme"))  # `council ingest --url` checks the same


def test_an_agreeing_column_needs_no_flag(store: ChromaRetriever, tmp_path: Path) -> None:
    path = tmp_path / "own.parquet"
    pq.write_table(pa.table({"text": ["One fact.", "Another fact."], "tenant": ["acme", None]}), path)
    report = store.ingest_paths([path], tenant="acme")
    assert report.added == 2 and report.tenants == {"acme": 2}


def test_asked_for_the_column_says_each_rows_tenant_and_the_report_counts_them(
    store: ChromaRetriever, vendor: Path
) -> None:
    report = store.ingest_paths([vendor], tenant="acme", tenant_column=True)
    assert report.added == 3 and report.tenants == {"acme": 1, "globex": 1, "public": 1}
    assert (store.count("acme"), store.count("globex"), store.count("public")) == (1, 1, 1)
    batches = list(document_batches([vendor], tenant="acme", tenant_column=True))
    assert [(t, len(docs)) for t, docs in batches] == [("acme", 1), ("globex", 1), ("public", 1)]


def test_the_cli_refuses_then_reports_per_tenant(
    vendor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embeddings, "get_embedder", lambda path=None: TinyEmbedder())
    config = tmp_path / "council.yaml"
    config.write_text(f"specialists: [{{name: m, model: m}}]\nretrieval: {{path: {tmp_path / 'store'}}}\n")
    cmd = ["ingest", str(vendor), "--tenant", "acme", "--config", str(config)]
    refused = CliRunner().invoke(app, cmd)
    assert refused.exit_code == 1 and "column 'tenant' says 'globex', not 'acme'" in refused.output, refused.output
    assert not (tmp_path / "store").exists()  # refused before the store was opened
    asked = CliRunner().invoke(app, [*cmd, "--tenant-column"])
    assert asked.exit_code == 0, asked.output
    out = " ".join(asked.output.split())
    assert "for tenants 'acme' (1 chunks), 'globex' (1 chunks), 'public' (1 chunks)" in out, out
    assert "for tenant 'acme':" not in out


def test_the_ingest_job_refuses_before_ray_starts(vendor: Path, tmp_path: Path) -> None:
    config = tmp_path / "council.yaml"
    config.write_text(f"specialists: [{{name: m, model: m}}]\nretrieval: {{path: {tmp_path / 'store'}}}\n")
    argv = [str(vendor), "--tenant", "acme", "--config", str(config)]
    with pytest.raises(BadInputFile, match="column 'tenant' says 'globex'"):
        ingest_job.main(argv)
    # Asked for, the check passes and the job goes on to join Ray (which this tier forbids).
    with pytest.raises(RuntimeError, match="must not start Ray"):
        ingest_job.main([*argv, "--tenant-column"])
