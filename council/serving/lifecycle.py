"""Serve's lifecycle for the CLI and the demo: what a config file deploys, starting and stopping Serve, waiting."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from council.errors import CouncilError

# The council package folder (council/): the repository is its parent.
_PACKAGE = Path(__file__).resolve().parents[1]


def serve_target(config: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(build_app args, Serve settings: name, route_prefix, host, port) for a council or Serve config file.

    A Serve config (with `applications:`) is read the way `serve run` reads it; a council config is wrapped
    as `{config: path}`; no file means clusters/local.yaml, else the packaged demo council.
    """
    import yaml

    path = config or default_serve_config()
    data = yaml.safe_load(path.read_text()) if path.exists() else None
    if not isinstance(data, dict):
        raise CouncilError(f"{path}: not a readable YAML mapping")
    if "applications" not in data:
        return {"config": str(path.resolve())}, {}
    apps = data.get("applications") or [{}]
    first = apps[0]
    args = dict(first.get("args") or {})
    if isinstance(args.get("config"), str) and not Path(args["config"]).is_absolute():
        # Serve configs name paths from the repository root (where `serve run` is started).
        root = path.resolve().parent.parent
        args["config"] = str(root / args["config"]) if not Path(args["config"]).exists() else args["config"]
    http = data.get("http_options") or {}
    settings = {
        "name": first.get("name"),
        "route_prefix": first.get("route_prefix"),
        "host": http.get("host"),
        "port": http.get("port"),
    }
    return args, {k: v for k, v in settings.items() if v is not None}


def default_serve_config() -> Path:
    """clusters/local.yaml of the working directory or the repository, else the packaged demo council."""
    for base in (Path.cwd(), _PACKAGE.parent):
        if (base / "clusters" / "local.yaml").exists():
            return base / "clusters" / "local.yaml"
    return _PACKAGE / "demo" / "council.yaml"


def start_serve(
    args: dict[str, Any], *, name: str = "council", route_prefix: str = "/", host: str = "127.0.0.1", port: int = 8000
) -> str:
    """Start (or join, with RAY_ADDRESS) Ray, deploy the council app, return its URL."""
    import ray
    from ray import serve

    from council.serving.app import build_app

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the CLI prints what matters itself
    # A busy small machine can take longer than Ray's default 60 s to register the local node.
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    if not ray.is_initialized():
        # "local" never joins a stale cluster left in ray_current_cluster; RAY_ADDRESS opts in to joining.
        ray.init(
            address=os.environ.get("RAY_ADDRESS") or "local",
            log_to_driver=False,
            include_dashboard=False,
            namespace="serve",
            logging_level=logging.WARNING,
        )
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(args), name=name, route_prefix=route_prefix, blocking=False)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def stop_serve() -> None:
    """Shut Serve and the Ray we started down (quietly: we are on the way out)."""
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def block_until_signal() -> None:
    """Sleep until Ctrl-C or SIGTERM (a backgrounded shell job ignores SIGINT; SIGTERM must stop it too)."""
    import signal
    import time

    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
