"""Issue 16, finding 2, at app level: a council app started by Serve with its HTTP proxy on 0.0.0.0 and no
credentials refuses to start, saying how to set them; with `http.auth: none` it starts and logs a warning.

Serve's proxy host is cluster-wide, so this runs its own small Ray in a child process (the session's Serve
listens on loopback): the app is built by `build_app`, as `serve run`/`serve deploy` build it, and deployed with
`serve.run`; the child prints what happened and the replicas' log lines (log_to_driver).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.serve.conftest import council_config, free_port

DRIVER = r"""
import json, logging, sys
import httpx, ray
from ray import serve
from council.serving.app import build_app

config, port = json.loads(sys.argv[1]), int(sys.argv[2])
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
serve.start(http_options={"host": "0.0.0.0", "port": port})
try:
    serve.run(build_app({"config_dict": config}), name="exposed", route_prefix="/exposed")
    print("RESULT keyless " + json.dumps("started"), flush=True)
except Exception as e:  # serve.run names the deployment; its status holds the replica's error
    app = serve.status().applications["exposed"]
    why = [str(e), app.message, *(d.message for d in app.deployments.values())]
    print("RESULT keyless " + json.dumps("\n".join(why)[-8000:]), flush=True)
serve.delete("exposed")
config["http"]["auth"] = "none"
serve.run(build_app({"config_dict": config}), name="open", route_prefix="/open")
status = httpx.get(f"http://127.0.0.1:{port}/open/healthz", timeout=30, trust_env=False).status_code
print("RESULT none " + json.dumps(status), flush=True)
serve.shutdown()
ray.shutdown()
"""


def test_on_0_0_0_0_without_keys_the_app_refuses_to_start_and_auth_none_starts_with_a_warning(
    tiny_models: list[Path], tmp_path: Path
) -> None:
    config = council_config(tiny_models[:1], tmp_path / "store", {"solo": "anything at all"})
    env = {k: v for k, v in os.environ.items() if k not in ("COUNCIL_API_KEY", "COUNCIL_KEYS_FILE", "RAY_ADDRESS")}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(config), str(free_port())],
        env={**env, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"},
        capture_output=True, text=True, timeout=540,
    )
    out = done.stdout + done.stderr
    results: dict[str, Any] = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            _, what, value = line.split(" ", 2)
            results[what] = json.loads(value)
    assert done.returncode == 0 and set(results) == {"keyless", "none"}, out[-6000:]

    refused = results["keyless"]
    assert refused != "started", "an exposed app started with no credentials"
    assert "Failed to update the deployments ['RouterIngress']" in refused  # the ingress refused, nothing else
    assert "Serve listens on '0.0.0.0' and no credentials are configured" in refused, refused
    assert "set COUNCIL_KEYS_FILE to a key table" in refused and "`http.auth: none`" in refused

    assert results["none"] == 200
    assert "http.auth: none — the council answers every caller, for every tenant, without a key" in out, out[-6000:]
