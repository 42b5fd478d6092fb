"""The ingest job on a real head: into an embedded folder and into a Chroma server, twice, adding nothing twice."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.jobs.conftest import VENV_BIN, RayHead, cluster_env, council_dict, free_port
from tests.jobs.test_batch import RUNTIME_ENV, wait_job


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """A folder of text, Markdown and Parquet documents (one Parquet row for another tenant)."""
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "statute.txt").write_text("The Varn act sets a fine. It was passed in 1820. The Tolbrook court hears it.")
    (folder / "sub" / "drug.md").write_text("# Zorvex\nZorvex treats fever. Its usual dose is 5 mg. " * 20)
    pq.write_table(
        pa.table({"text": ["Ilsa Holdings is listed on the Varn market.", "", "Acme sells anvils."],
                  "tenant": [None, None, "acme2"]}),
        folder / "funds.parquet",
    )
    return folder


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[int]:
    """`chroma run` on a free loopback port, in its own process group; yields the port."""
    port = free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "chroma"), "run", "--path", str(tmp_path / "chroma-server"), "--host", "127.0.0.1",
         "--port", str(port)],
        env=cluster_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        import chromadb
        from chromadb.config import Settings

        deadline = time.monotonic() + 60
        while True:
            try:
                chromadb.HttpClient(host="127.0.0.1", port=port, settings=Settings(anonymized_telemetry=False))
                break
            except Exception:
                assert proc.poll() is None and time.monotonic() < deadline, "chroma server did not start"
                time.sleep(0.5)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def stored_ids(config_path: Path) -> list[str]:
    """Every chunk id in the store the config names (through the retriever's own client)."""
    from council.backends.chroma import ChromaRetriever
    from council.config import CouncilConfig

    retriever = ChromaRetriever(CouncilConfig.from_yaml(config_path).retrieval)
    try:
        return list(retriever._collection.get(include=[])["ids"])
    finally:
        retriever.close()


def ingest_twice(head: RayHead, docs: Path, config: Path) -> tuple[list[str], list[str], str]:
    cmd = (f"python -m council.jobs.ingest {docs} --tenant acme --tenant-column --config {config} --num-cpus 0.25 "
           "--concurrency 1")
    logs = []
    for _ in range(2):
        client, job = head.submit(cmd, RUNTIME_ENV)
        status = wait_job(client, job)
        logs.append(client.get_job_logs(job))
        assert status == "SUCCEEDED", logs[-1][-4000:]
        if len(logs) == 1:
            first = stored_ids(config)
    return first, stored_ids(config), "\n".join(logs)


def test_ingest_twice_into_an_embedded_store_adds_nothing_the_second_time(
    ray_head: RayHead, docs: Path, tiny_models: list[Path], tmp_path: Path
) -> None:
    config = tmp_path / "council.yaml"
    config.write_text(yaml.safe_dump(council_dict(tiny_models, tmp_path / "store")))
    first, second, logs = ingest_twice(ray_head, docs, config)
    assert len(first) > 3 and len(first) == len(set(first))
    assert sorted(second) == sorted(first), "the second ingest changed the store"
    assert "0 already stored, " in logs and f"{len(first)} already stored, 0 to embed" in logs, logs[-3000:]
    assert "0 added" in logs


def test_ingest_into_a_chroma_server(
    ray_head: RayHead, docs: Path, tiny_models: list[Path], tmp_path: Path, chroma_server: int
) -> None:
    config = tmp_path / "council.yaml"
    config.write_text(yaml.safe_dump(council_dict(tiny_models, tmp_path / "unused", host="127.0.0.1",
                                                  port=chroma_server)))
    first, second, logs = ingest_twice(ray_head, docs, config)
    assert "Chroma server 127.0.0.1" in logs
    assert len(first) > 3 and sorted(second) == sorted(first)
    assert not (tmp_path / "unused").exists(), "an embedded folder was used instead of the server"


def test_bad_parquet_is_named_and_the_store_is_untouched(tmp_path: Path, tiny_models: list[Path]) -> None:
    config = tmp_path / "council.yaml"
    config.write_text(yaml.safe_dump(council_dict(tiny_models, tmp_path / "store")))
    bad = tmp_path / "notes.parquet"
    pq.write_table(pa.table({"body": ["no text column here"]}), bad)
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "council.jobs.ingest", str(bad), "--tenant", "acme", "--config", str(config)],
        capture_output=True, text=True, timeout=120, env=cluster_env(),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{bad}: missing required column 'text'" in result.stderr
    assert not (tmp_path / "store").exists()
