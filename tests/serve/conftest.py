"""One local Ray + Serve per test session, with two council apps on tiny real models.

`council` is built the way `serve run clusters/local.yaml` builds it (that file's application entry, with
its config path pointed at a test council YAML). `council_guarded` runs with COUNCIL_API_KEY set and two
specialists broken on purpose (fault injection): one fails every request, one is slower than the timeout.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-3f9c2a"
GUARDED_TIMEOUT_S = 2.0
# Routing text per test specialist: distinct enough that routing scores differ.
SPECIALISTS = {
    "physics": "forces, energy, motion, atoms, light and gravity",
    "history": "kings, wars, empires, treaties and centuries past",
    "finance": "money, markets, interest rates, banks and taxes",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here needs the local Ray Serve instance: mark them `serve`."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.serve)


@dataclass(frozen=True)
class App:
    """A deployed council app: its Serve name, base URL and API key (None = auth off)."""

    name: str
    url: str
    api_key: str | None = None
    config_path: Path | None = None  # the council YAML it was built from, when it was built from one

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, headers=self.headers(), timeout=60, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, headers=self.headers(), timeout=60, **kw)


def free_port() -> int:
    """A free TCP port on loopback (never 8000: a user's own Serve may hold it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _specialist(name: str, model: Path, description: str, **deployment: Any) -> dict[str, Any]:
    return {
        "name": name,
        "model": str(model),
        "domain": name,
        "description": description,
        "generation": {"max_new_tokens": 8, "stop": ["\n"]},
        "deployment": {"num_cpus": 0.05, "max_batch_size": 8, "batch_wait_timeout_s": 0.02, **deployment},
    }


def council_config(models: list[Path], store: Path, names: dict[str, str], **router: Any) -> dict[str, Any]:
    """A small council config over tiny models, sized for a 2-core machine."""
    return {
        "specialists": [_specialist(n, models[i % len(models)], d) for i, (n, d) in enumerate(names.items())],
        "router": {"k": 3, "quorum": 1, "member_timeout_s": 30, "num_cpus": 0.05, **router},
        "retrieval": {"path": str(store), "top_n": 3, "num_cpus": 0.05},
        "aggregator": {"num_cpus": 0.05, "default_budget_tokens": 96},
        "http": {"max_body_bytes": 16384},
    }


@pytest.fixture(scope="session")
def serve_url() -> Iterator[str]:
    """A fresh local Ray (never a stale cluster) with Serve's HTTP proxy on a free loopback port."""
    import ray
    from ray import serve

    # Replicas inherit this process's environment: a key set in the shell would turn auth on everywhere.
    os.environ.pop("COUNCIL_API_KEY", None)
    for attempt in (1, 2):
        # On a saturated 2-core box a fresh node can miss Ray's start-up deadline once; try a second time.
        try:
            ray.init(
                address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                logging_level=logging.WARNING,
            )
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def apps(
    serve_url: str, tiny_models: list[Path], tmp_path_factory: pytest.TempPathFactory, local_yaml_app: dict[str, Any]
) -> dict[str, App]:
    """Both apps, deployed side by side (their replicas load in parallel)."""
    from ray import serve

    from council.serving.app import build_app

    tmp = tmp_path_factory.mktemp("council")
    council_yaml = tmp / "council.yaml"
    council_yaml.write_text(yaml.safe_dump(council_config(tiny_models, tmp / "store", SPECIALISTS)))
    # The YAML's import path and name, the test's council config instead of the demo one.
    module, attr = local_yaml_app["import_path"].split(":")
    builder = getattr(importlib.import_module(module), attr)
    main = builder({**local_yaml_app["args"], "config": str(council_yaml)})

    guarded_names = dict(zip(("steady", "broken", "sleepy"), SPECIALISTS.values(), strict=True))
    guarded_config = council_config(
        tiny_models, tmp / "guarded-store", guarded_names, member_timeout_s=GUARDED_TIMEOUT_S
    )
    guarded_config["aggregator"]["agreement_threshold"] = 0.3
    guarded = build_app(
        {
            "config_dict": guarded_config,
            "faults": {"broken": {"error": "injected failure"}, "sleepy": {"delay_s": 30}},
            "env": {"COUNCIL_API_KEY": API_KEY},
        }
    )
    serve.run_many(
        [
            serve.RunTarget(main, name=local_yaml_app["name"], route_prefix=local_yaml_app["route_prefix"]),
            serve.RunTarget(guarded, name="council_guarded", route_prefix="/guarded"),
        ]
    )
    return {
        "council": App(
            local_yaml_app["name"], serve_url + local_yaml_app["route_prefix"].rstrip("/"), config_path=council_yaml
        ),
        "guarded": App("council_guarded", serve_url + "/guarded", API_KEY),
    }


@pytest.fixture(scope="session")
def council_app(apps: dict[str, App]) -> App:
    """The main app (auth off, healthy specialists)."""
    return apps["council"]


@pytest.fixture(scope="session")
def guarded_app(apps: dict[str, App]) -> App:
    """The app with auth on and faulty specialists."""
    return apps["guarded"]
