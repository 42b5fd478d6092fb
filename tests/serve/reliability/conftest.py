"""Reliability apps on the serve suite's one local Ray: each module deploys its own small council and deletes it
after, so killing or wedging its replicas never touches the apps other tests use."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from council.testing import harness
from tests.serve.conftest import App

log = logging.getLogger(__name__)


def deploy(name: str, config: dict[str, Any], serve_url: str, **args: Any) -> App:
    """Deploy a council app from `config` (and build_app `args` such as faults) at /<name>; waits until RUNNING."""
    from ray import serve

    from council.serving.app import build_app

    serve.run(build_app({"config_dict": config, **args}), name=name, route_prefix=f"/{name}")
    return App(name, f"{serve_url}/{name}")


def undeploy(name: str) -> None:
    """Delete an app and wait until its replicas are gone (their memory is back for the next module)."""
    from ray import serve

    serve.delete(name, _blocking=True)


@pytest.fixture(scope="module")
def loss_app(serve_url: str, tiny_models: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """Three specialists, one replica each, fast health checks, a 4 s member timeout."""
    store = tmp_path_factory.mktemp("rel-loss") / "store"
    app = deploy("rel_loss", harness.loss_config(tiny_models, store), serve_url)
    yield app
    undeploy(app.name)


def write_figures(path: Path, name: str, figures: dict[str, Any]) -> None:
    """Log the figures and keep them as JSON next to the test's files."""
    log.warning("%s: %s", name, json.dumps(figures))
    path.write_text(json.dumps(figures, indent=2))
