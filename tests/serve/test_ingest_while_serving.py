"""`council ingest` while the council serves its embedded store (the README's order): the documents go through
the server that owns the store, and the next question of that tenant is answered from them — never a 500."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.serve.conftest import App

COUNCIL_CLI = Path(sys.executable).parent / "council"
NOTE = "The Quibble Accord was signed in the harbour town of Marrowby. It ended the salt war."


def serve_config(app: App, folder: Path) -> Path:
    """A Serve config like clusters/local.yaml for the running app: its port, its council YAML."""
    assert app.config_path is not None
    port = int(app.url.rsplit(":", 1)[1].split("/")[0])
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump({
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": app.name, "route_prefix": "/", "import_path": "council.serving.app:build_app",
                          "args": {"config": str(app.config_path)}}],
    }))
    return path


def cli_ingest(path: Path, tenant: str, config: Path) -> subprocess.CompletedProcess[str]:
    """`council ingest PATH --tenant T --config C`, run as a user runs it, from another folder."""
    return subprocess.run(
        [str(COUNCIL_CLI), "ingest", str(path), "--tenant", tenant, "--config", str(config)],
        capture_output=True, text=True, timeout=300, cwd=config.parent,
    )


def test_cli_ingest_goes_through_the_server_that_holds_the_store(council_app: App, tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "accord.txt").write_text(NOTE)
    done = cli_ingest(notes, "acme-cli", serve_config(council_app, tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ingesting through {council_app.url}" in " ".join(done.stderr.split()), done.stderr
    assert "1 chunks added" in " ".join(done.stdout.split()), done.stdout

    for _ in range(3):  # every later question of the tenant works, not just the first
        r = council_app.post("/v1/council", {"question": "Where was the Quibble Accord signed?", "tenant": "acme-cli"})
        assert r.status_code == 200, r.text
        assert [s["text"] for s in r.json()["sources"]] == [NOTE]

    again = cli_ingest(notes, "acme-cli", serve_config(council_app, tmp_path))  # idempotent through the server too
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 chunks added, 1 already there" in " ".join(again.stdout.split()), again.stdout
