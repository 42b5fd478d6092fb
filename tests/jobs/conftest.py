"""A real `ray start --head` on loopback for the job tests: token auth on, private dashboard, stopped cleanly."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120.0
AGENT_WAIT_S = 120.0


DEPLOY_TIMEOUT_S = 300.0  # `serve deploy` of a tiny council on a busy 2-core head


def free_port() -> int:
    """A TCP port nobody listens on right now (on loopback)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def auth_token() -> str:
    """The test run's own cluster token (tests/conftest.py writes it; Ray reads RAY_AUTH_TOKEN_PATH)."""
    return Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()


def cluster_env(extra: dict[str, str] | None = None, unset: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment for Ray processes: the venv first on PATH (a job's `python` is the cluster's), offline."""
    env = dict(os.environ)
    env.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            # Production keeps token auth on; so do the tests (clients send the token explicitly).
            "RAY_AUTH_MODE": "token",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "ANONYMIZED_TELEMETRY": "False",
            "RAY_USAGE_STATS_ENABLED": "0",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
        }
    )
    for name in ("RAY_ADDRESS", *unset):
        env.pop(name, None)
    env.update(extra or {})
    return env


@dataclass
class RayHead:
    """A running head: where its GCS and dashboard (job server) listen, and how to stop it."""

    proc: subprocess.Popen[bytes]
    gcs_address: str
    dashboard_url: str
    temp_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    token_path: Path | None = None  # where this head's token is, when not the suite's own

    def headers(self) -> dict[str, str]:
        """HTTP headers a client needs: the bearer token."""
        token = self.token_path.read_text().strip() if self.token_path else auth_token()
        return {"Authorization": f"Bearer {token}"}

    def job_client(self):  # noqa: ANN201 - JobSubmissionClient, imported lazily
        """A JobSubmissionClient for this head, sending the token."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url, headers=self.headers())

    def submit(self, entrypoint: str, runtime_env: dict[str, Any] | None = None) -> tuple[Any, str]:
        """Submit a job; (client, job id). Retries while the head's agent is still starting (it answers 500)."""
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            self.check_alive()
            try:
                client = self.job_client()
                return client, client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            except Exception as e:  # "No available agent" (500) or a dropped connection while it starts
                if time.monotonic() > deadline:
                    raise
                log.info("job server not ready yet: %s", e)
                time.sleep(2.0)

    def app_status(self, app: str = "council") -> str:
        """An app's status from the dashboard's Serve API (with the token), or '' when absent."""
        resp = requests.get(f"{self.dashboard_url}/api/serve/applications/", headers=self.headers(), timeout=30)
        resp.raise_for_status()
        return str(resp.json().get("applications", {}).get(app, {}).get("status", ""))

    def deploy(self, serve_config: Path, timeout_s: float, poll_s: float = 2.0) -> None:
        """`serve deploy` the config to this head (the real CLI), then wait until its `council` app is RUNNING."""
        done = subprocess.run(
            [str(VENV_BIN / "serve"), "deploy", str(serve_config), "--address", self.dashboard_url],
            env=self.env, timeout=180, capture_output=True, text=True,
        )
        assert done.returncode == 0, f"serve deploy exited {done.returncode}: {done.stderr[-3000:]}"
        deadline = time.monotonic() + timeout_s
        while (status := self.app_status()) != "RUNNING":
            assert status not in {"DEPLOY_FAILED", "UNHEALTHY"}, f"the app is {status}"
            assert time.monotonic() < deadline, f"the app is still {status!r} after {timeout_s}s"
            time.sleep(poll_s)

    def check_alive(self) -> None:
        """Fail with the tail of the head's log if `ray start` has exited (it stops everything when a part dies)."""
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"the ray head exited ({self.proc.returncode}):\n{tail}")

    def stop(self) -> None:
        """SIGTERM to the head's process group (`--block` stops every Ray process it started), then forget it."""
        stop_process_group(self.proc)
        # `ray start` records its address in ray_current_cluster and leaves it behind: remove it (it lives in
        # our own temp dir, but a plain ray.init() elsewhere must never find a dead cluster).
        (self.temp_dir / "ray_current_cluster").unlink(missing_ok=True)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)  # a failure has already quoted its tail


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM `proc`, wait, then SIGKILL whatever is left of the process group it leads (that group only).

    Only the leader gets SIGTERM: `ray start --block` then drains its node through the GCS and stops its
    children in order; signalling the whole group would kill the GCS first and leave it waiting on a timeout.
    """
    if proc.poll() is None:
        proc.terminate()
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers (worker raylets) of this group only
    if proc.poll() is None:
        proc.wait(timeout=10)


def start_head(**kwargs: Any) -> RayHead:
    """`start_head_once`, tried twice: on a very busy machine a part of Ray can time out while starting
    (its client server waits 30 s for the head node to register), and `ray start --block` then stops it all."""
    try:
        return start_head_once(**kwargs)
    except RuntimeError as e:
        log.warning("ray head failed to start, trying once more: %s", str(e)[:300])
        return start_head_once(**kwargs)


def start_head_once(
    *,
    num_cpus: float = 2,
    gcs_port: int | None = None,
    extra_args: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
    unset_env: tuple[str, ...] = (),
    token_path: Path | None = None,
) -> RayHead:
    """`ray start --head --block` on 127.0.0.1 in its own process group; returns once the job server answers."""
    gcs_port, dash_port = gcs_port or free_port(), free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # short: Ray's unix sockets live under it
    log_path = temp_dir.parent / f"{temp_dir.name}-head.log"
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash_port}",
        # Every fixed default port moved to a free one: other Ray instances may run on this machine.
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--num-cpus={num_cpus}",
        "--object-store-memory=300000000",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        *(extra_args or []),
    ]
    env = cluster_env(extra_env, unset_env)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    head = RayHead(
        proc, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}", temp_dir, log_path, env, token_path
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            head.job_client().list_jobs()
            time.sleep(3.0)  # the parts that give up late (see start_head) have done so by now
            head.check_alive()
            return head
        except Exception as e:  # not up yet (connection refused, token not written yet, ...)
            last = e
            time.sleep(1.0)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    head.stop()
    raise RuntimeError(f"ray head did not come up: {last}\n{tail}")


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    """One real head for the whole job test session."""
    head = start_head()
    try:
        yield head
    finally:
        head.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here runs against the real head: mark them `jobs`."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.jobs)


# Routing text per test specialist (two tiny models stand in for trained ones).
SPECIALISTS = {
    "physics": "forces, energy, motion, atoms, light and gravity",
    "history": "kings, wars, empires, treaties and centuries past",
}
DOCS = {
    "public": [
        ("river.txt", "The river Varn flows north through the valley. The old mill stands beside the bridge."),
        ("guild.txt", "The guild of glassmakers was founded by Ilsa Merrow in the harbour town."),
    ],
    "acme": [("acme.txt", "Acme's capital is Tolbrook. Acme sells anvils and rockets.")],
}


def council_dict(models: list[Path], store: Path, **retrieval: object) -> dict[str, object]:
    """A two-member council over tiny models, small enough to answer many questions fast on 2 cores."""
    return {
        "specialists": [
            {
                "name": name,
                "model": str(models[i % len(models)]),
                "domain": name,
                "description": text,
                "generation": {"max_new_tokens": 6, "stop": ["\n"]},
                "deployment": {"num_cpus": 0.05},
            }
            for i, (name, text) in enumerate(SPECIALISTS.items())
        ],
        "router": {"k": 2, "quorum": 1, "member_timeout_s": 60},
        "retrieval": {"path": str(store), "top_n": 2, **retrieval},
        "aggregator": {"default_budget_tokens": 64},
    }


def seeded_council_yaml(folder: Path, models: list[Path]) -> Path:
    """A council YAML in `folder` whose embedded store already holds documents for `public` and `acme`."""
    import yaml

    from council.backends.chroma import ChromaRetriever
    from council.config import CouncilConfig

    path = folder / "council.yaml"
    path.write_text(yaml.safe_dump(council_dict(models, folder / "store")))
    retriever = ChromaRetriever(CouncilConfig.from_yaml(path).retrieval)
    for tenant, docs in DOCS.items():
        retriever.ingest_texts(docs, tenant=tenant)
    retriever.close()  # the job's actors open the folder next: this process lets go of it
    return path


@pytest.fixture(scope="session")
def council_yaml(tiny_models: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The council the batch jobs build in their own actors (its store seeded for `public` and `acme`)."""
    return seeded_council_yaml(tmp_path_factory.mktemp("job-council"), tiny_models)


@contextmanager
def deployed_local_app(
    ray_head: RayHead, folder: Path, council_yaml: Path, env: dict[str, str] | None = None
) -> Iterator[Path]:
    """`serve deploy` of clusters/local.yaml's application on the head, its council config swapped for
    `council_yaml` and `env` added to its environment; `serve shutdown` after."""
    import yaml

    serve_config: dict[str, Any] = yaml.safe_load((REPO / "clusters" / "local.yaml").read_text())
    serve_config["http_options"]["port"] = free_port()
    (app,) = serve_config["applications"]
    app["args"]["config"] = str(council_yaml)
    app["runtime_env"] = {"env_vars": {"HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False", **(env or {})}}
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(serve_config))
    ray_head.deploy(path, DEPLOY_TIMEOUT_S)
    try:
        yield path
    finally:
        subprocess.run([str(VENV_BIN / "serve"), "shutdown", "--yes", "--address", ray_head.dashboard_url],
                       env=ray_head.env, timeout=120, capture_output=True)  # fmt: skip
