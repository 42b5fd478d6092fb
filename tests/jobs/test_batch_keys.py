"""Issue 16, finding 1, for batch jobs: a job that runs with a key for tenant `acme` against the deployed app
(its key table in the app's environment, as clusters/serve-gpu.yaml ships it) gets answers for acme's rows and
a per-row refusal for rows naming `globex`; no globex chunk or text is anywhere in the output."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from council.credentials import table_entry
from tests.jobs.conftest import RayHead, deployed_local_app, seeded_council_yaml
from tests.jobs.test_batch import RUNTIME_ENV, assert_exactly_once, wait_job

ACME_KEY = "ck-acme-batch-7f31"
GLOBEX_SECRET = "Globex keeps its reserve in the Quell vault, code 5518."


@pytest.fixture(scope="module")
def keyed_app(ray_head: RayHead, tiny_models: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """clusters/local.yaml's app over a store holding public, acme and globex documents, with a key table."""
    from council.backends.chroma import ChromaRetriever
    from council.config import CouncilConfig

    tmp = tmp_path_factory.mktemp("keyed")
    council_yaml = seeded_council_yaml(tmp, tiny_models)
    store = ChromaRetriever(CouncilConfig.from_yaml(council_yaml).retrieval)
    store.ingest_texts([("globex.txt", GLOBEX_SECRET)], tenant="globex")
    store.close()
    keys = tmp / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [table_entry("acme-batch", ACME_KEY, ["acme"], ["read"])]}))
    with deployed_local_app(ray_head, tmp, council_yaml, {"COUNCIL_KEYS_FILE": str(keys)}) as path:
        yield path


def test_a_batch_with_an_acme_key_answers_acme_and_refuses_globex_per_row(
    ray_head: RayHead, keyed_app: Path, tmp_path: Path
) -> None:
    n = 8
    ids = [f"q{i:04d}" for i in range(n)]
    tenants = ["acme" if i % 2 else "globex" for i in range(n)]
    questions = [f"Where does Globex keep its reserve, and what is Acme's capital? ({i})" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "question": questions, "tenant": tenants}), tmp_path / "q.parquet")
    out = tmp_path / "answers"
    cmd = (f"python -m council.jobs.batch --input {tmp_path / 'q.parquet'} --output {out} --app council "
           "--num-cpus 0.25 --batch-size 4 --max-error-rate 1")
    runtime_env = {**RUNTIME_ENV, "env_vars": {"COUNCIL_API_KEY": ACME_KEY}}
    client, job = ray_head.submit(cmd, runtime_env)
    status = wait_job(client, job)
    logs = client.get_job_logs(job)
    assert status == "SUCCEEDED", logs[-4000:]
    rows = {r["id"]: r for r in assert_exactly_once(out, ids).to_pylist()}
    for i, tenant in zip(ids, tenants, strict=True):
        row = rows[i]
        if tenant == "globex":  # the same 404 as a tenant that does not exist, per row
            assert row["answer"] is None and row["error"] == "unknown_tenant: unknown tenant 'globex'", row
        else:
            assert row["error"] is None and row["answer"] is not None and row["members"], row
            assert "globex" not in {s["tenant"] for s in row["sources"]}, row["sources"]
    assert sum(r["error"] is None for r in rows.values()) == n // 2
    text = repr(list(rows.values()))  # every cell of the output: answers, members, sources, errors
    assert "globex.txt" not in text and "Quell vault" not in text and "5518" not in text
