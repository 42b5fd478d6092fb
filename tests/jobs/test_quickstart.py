"""The README's batch-job quick-start, in the order written, with the real CLIs, as a newcomer runs it: a fresh
HOME (no ~/.ray, no token, no store), `ray get-auth-token --generate`, `ray start --head`, `serve deploy
clusters/local.yaml`, `ray job submit ... council.jobs.batch` (no --app: the deployed `council` by default),
`council ingest notes/ --tenant acme` and `council ask ... --tenant acme`. Ports are chosen free; nothing
else differs from the README."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import yaml

from council.demo.run import demo_world
from council.jobs.batch_files import read_answers
from tests.jobs.conftest import REPO, VENV_BIN, RayHead, cluster_env, free_port, start_head_once

DEPLOY_TIMEOUT_S = 420.0
# The suite's own settings a newcomer does not have: their Ray token, their store folder.
SUITE_ONLY = ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN", "COUNCIL_HOME", "COUNCIL_URL", "COUNCIL_API_KEY")


def run(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd[:3]} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RayHead, Path]]:
    """`ray get-auth-token --generate` into a fresh HOME, then the README's `ray start --head`."""
    home = tmp_path_factory.mktemp("fresh-home")
    env = cluster_env({"HOME": str(home), "RAY_AUTH_MODE": "token"}, SUITE_ONLY)
    generated = subprocess.run([str(VENV_BIN / "ray"), "get-auth-token", "--generate"], env=env,
                               capture_output=True, text=True, timeout=120)
    token = home / ".ray" / "auth_token"
    assert generated.returncode == 0 and token.is_file(), generated.stderr
    head = start_head_once(extra_env={"HOME": str(home)}, unset_env=SUITE_ONLY, token_path=token)
    try:
        yield head, home
    finally:
        subprocess.run([str(VENV_BIN / "serve"), "shutdown", "--yes", "--address", head.dashboard_url],
                       env=head.env, timeout=120, capture_output=True)
        head.stop()


def test_the_readme_quickstart_runs_on_a_fresh_machine(newcomer: tuple[RayHead, Path], tmp_path: Path) -> None:
    head, home = newcomer
    env = head.env
    assert "RAY_AUTH_TOKEN_PATH" not in env and env["HOME"] == str(home)

    # serve deploy clusters/local.yaml (its HTTP port moved to a free one)
    serve_config: dict[str, Any] = yaml.safe_load((REPO / "clusters" / "local.yaml").read_text())
    port = free_port()
    serve_config["http_options"]["port"] = port
    local_yaml = tmp_path / "local.yaml"
    local_yaml.write_text(yaml.safe_dump(serve_config))
    head.deploy(local_yaml, DEPLOY_TIMEOUT_S, poll_s=3.0)

    # ray job submit ... -- python -m council.jobs.batch --input ... --output ...   (no --app)
    world = demo_world()
    asked = [q.question for q in world.questions("trained")][:4]
    pq.write_table(pa.table({"id": [f"q{i}" for i in range(len(asked))], "question": asked}), tmp_path / "q.parquet")
    job = run([str(VENV_BIN / "ray"), "job", "submit", "--address", head.dashboard_url, "--working-dir", ".", "--",
               "python", "-m", "council.jobs.batch", "--input", str(tmp_path / "q.parquet"),
               "--output", str(tmp_path / "answers")], env, 600)
    assert "answering through the deployed Serve app 'council'" in job.stdout + job.stderr, job.stdout[-3000:]
    answers = read_answers(tmp_path / "answers")
    assert sorted(answers["id"].to_pylist()) == [f"q{i}" for i in range(len(asked))]
    assert answers["error"].null_count == len(asked), answers["error"].to_pylist()

    # council ingest notes/ --tenant acme, then council ask ... --tenant acme: a fact only that note holds
    fresh = next(q for q in world.questions("fresh") if q.doc_id)
    note = next(d for d in world.documents if d.id == fresh.doc_id)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "memo.txt").write_text(note.text)
    cli_env = {**env, "COUNCIL_URL": f"http://127.0.0.1:{port}", "COLUMNS": "200", "NO_COLOR": "1"}
    ingested = run([str(VENV_BIN / "council"), "ingest", str(notes), "--tenant", "acme"], cli_env, 300)
    assert "1 chunks added" in " ".join(ingested.stdout.split()), ingested.stdout
    asked_acme = run([str(VENV_BIN / "council"), "ask", fresh.question, "--tenant", "acme", "--json"], cli_env, 300)
    answer = json.loads(asked_acme.stdout)
    assert answer["answer"] == fresh.answer, answer
    assert [s["text"] for s in answer["sources"]] == [note.text]
    # The server's store is the default one, in the newcomer's HOME whatever the replicas' working directory.
    status = requests.get(f"http://127.0.0.1:{port}/v1/status", timeout=30).json()
    assert status["store"] == {"path": str(home / ".council" / "chroma"), "collection": "council"}
