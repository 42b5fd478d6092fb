"""Against a council deployed on the head with `serve deploy` (clusters/local.yaml's app): batch by handle,
and the quickstart notebook through `Client.connect()`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.jobs.conftest import RayHead, deployed_local_app, seeded_council_yaml
from tests.jobs.test_batch import assert_exactly_once, batch_cmd, submit, wait_job, write_questions
from tests.jobs.test_notebooks import execute


@pytest.fixture(scope="module")
def deployed(ray_head: RayHead, tiny_models: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`serve deploy` of clusters/local.yaml's application (its council config swapped for a tiny one)."""
    tmp = tmp_path_factory.mktemp("deployed")
    with deployed_local_app(ray_head, tmp, seeded_council_yaml(tmp, tiny_models)) as path:
        yield path


def test_batch_asks_the_deployed_app_through_its_handle(ray_head: RayHead, deployed: Path, tmp_path: Path) -> None:
    ids = write_questions(tmp_path / "q.parquet", 16)
    out = tmp_path / "answers"
    cmd = batch_cmd(tmp_path / "q.parquet", out, deployed, "--batch-size", "4").replace(f"--config {deployed}", "")
    client, job = submit(ray_head, cmd + " --app council")
    status = wait_job(client, job)
    logs = client.get_job_logs(job)
    assert status == "SUCCEEDED", logs[-4000:]
    assert "answering through the deployed Serve app 'council'" in logs
    table = assert_exactly_once(out, ids)
    assert all(r["error"] is None and r["members"] for r in table.to_pylist())


def test_quickstart_through_the_client_handle(
    ray_head: RayHead, deployed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = execute(
        "01_quickstart.ipynb", monkeypatch,
        COUNCIL_NOTEBOOK_MODE="handle", RAY_ADDRESS=ray_head.gcs_address, RAY_AUTH_MODE="token",
    )
    assert "connected (handle)" in out
    assert "acme now retrieves the new document: True; public sees it: False" in out, out[-3000:]
