"""Issue 16, finding 4: the cluster's Chroma server runs with Chroma's own token auth (clusters/chroma-server.sh,
the script the systemd unit and the KubeRay container run), council's store sends the token from
COUNCIL_CHROMA_TOKEN, and a missing or wrong token is an error naming that variable. The data folder outlives
the server process (what the supervisor's restart relies on)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from council.backends.chroma import ChromaRetriever
from council.config import RetrievalConfig
from council.errors import StoreAuthError
from council.protocols import Embedder
from council.testing.scripted_openai import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "clusters" / "chroma-server.sh"
TOKEN = "tok-3f9a:right/one"  # Chroma takes ASCII letters, digits and punctuation
TEXT = "The Varn ledger is kept by the amber guild. It records 4411 lanterns sold in 1207."


class ChromaServer:
    """clusters/chroma-server.sh on a free loopback port, in its own process group."""

    def __init__(self, data: Path, token_file: Path) -> None:
        self.data, self.token_file, self.port = data, token_file, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90.0) -> None:
        env = {**os.environ, "CHROMA_TOKEN_FILE": str(self.token_file), "PYTHON": sys.executable}
        env.pop("CHROMA_SERVER_AUTHN_CREDENTIALS", None)
        self.proc = subprocess.Popen(
            ["bash", str(SCRIPT), str(self.data), "127.0.0.1", str(self.port)], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while True:  # the heartbeat needs no token (Chroma's ignore paths)
            assert self.proc.poll() is None, f"chroma-server.sh exited: {self._stderr()}"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/api/v2/heartbeat", timeout=1, trust_env=False).is_success:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the Chroma server did not come up"
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def _stderr(self) -> str:
        return self.proc.stderr.read().decode()[-3000:] if self.proc and self.proc.stderr else ""

    def config(self) -> RetrievalConfig:
        return RetrievalConfig(host="127.0.0.1", port=self.port, collection="auth-test")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    folder = tmp_path_factory.mktemp("chroma-auth")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n")  # a trailing newline, as `echo` writes it: not part of the token
    token_file.chmod(0o600)
    srv = ChromaServer(folder / "data", token_file)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    from council.backends.embeddings import get_embedder

    return get_embedder(None)


def test_the_right_token_reads_and_writes(server: ChromaServer, embedder: Embedder,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUNCIL_CHROMA_TOKEN", TOKEN)
    store = ChromaRetriever(server.config(), embedder)
    try:
        report = store.ingest_texts([("ledger.txt", TEXT)], tenant="acme")
        assert report.added == report.chunks >= 1
        (best, *_) = store.query("Who keeps the Varn ledger?", tenant="acme", top_n=3)
        assert "amber guild" in best.text and best.source == "ledger.txt"
    finally:
        store.close()


def test_a_missing_token_is_refused_naming_the_variable(server: ChromaServer, embedder: Embedder,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COUNCIL_CHROMA_TOKEN", raising=False)
    with pytest.raises(StoreAuthError) as err:
        ChromaRetriever(server.config(), embedder)
    assert f"127.0.0.1:{server.port} requires a token and $COUNCIL_CHROMA_TOKEN (retrieval.token_env) is not set" in (
        err.value.message)


def test_a_wrong_token_is_refused_naming_the_variable(server: ChromaServer, embedder: Embedder,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_CHROMA_TOKEN", TOKEN + "x")
    config = server.config().model_copy(update={"token_env": "MY_CHROMA_TOKEN"})
    with pytest.raises(StoreAuthError) as err:
        ChromaRetriever(config, embedder)
    assert "refused the token in $MY_CHROMA_TOKEN (retrieval.token_env): it is not the server's token" in (
        err.value.message)
    assert TOKEN not in str(err.value), "the error must not echo a token"


def test_a_raw_request_without_the_token_is_forbidden(server: ChromaServer) -> None:
    url = f"http://127.0.0.1:{server.port}/api/v2/tenants/default_tenant/databases/default_database/collections"
    assert httpx.get(url, trust_env=False).status_code == 403
    ok = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, trust_env=False)
    assert ok.status_code == 200


def test_the_script_refuses_to_serve_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CHROMA_TOKEN_FILE", "CHROMA_SERVER_AUTHN_CREDENTIALS")}
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "d"), "127.0.0.1", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "no token: set CHROMA_SERVER_AUTHN_CREDENTIALS or CHROMA_TOKEN_FILE" in done.stderr


def test_the_data_outlives_the_server_process(server: ChromaServer, embedder: Embedder,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """What the supervisor's restart (and a new head on the same volume) relies on: a server started again on
    the same folder serves what the first one stored."""
    monkeypatch.setenv("COUNCIL_CHROMA_TOKEN", TOKEN)
    store = ChromaRetriever(server.config(), embedder)
    try:
        store.ingest_texts([("mill.txt", "The Ostry mill was repaired by the cedar guild in 1311.")], tenant="acme")
        before = store.count()
    finally:
        store.close()
    server.stop()
    server.start()
    store = ChromaRetriever(server.config(), embedder)
    try:
        assert store.count() == before >= 2
        (best, *_) = store.query("Who repaired the Ostry mill?", tenant="acme", top_n=3)
        assert best.source == "mill.txt"
    finally:
        store.close()
