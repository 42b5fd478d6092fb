"""Job driver for the cluster-autoscaling test: deploy a GPU council, see where its replicas land, then undeploy.

Submitted to a head started with Ray's fake multi-node provider. It prints one `RESULT {json}` line:
how long the deploy waited for the autoscaler, the GPU nodes, the node of every specialist replica, one
answer, and how long the idle GPU node took to go away after the app was deleted.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

log = logging.getLogger("autoscale_driver")


def gpu_nodes() -> list[str]:
    """Alive nodes that hold a GPU (in the fake cluster: the workers the autoscaler added)."""
    import ray

    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0]


def specialist_replica_nodes() -> dict[str, str]:
    """Serve replica actor name -> node id, for every specialist replica (through the state API)."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
    return {
        (a.name or a.actor_id): a.node_id for a in actors if "Specialist_" in (a.name or "") + (a.class_name or "")
    }


def main() -> None:
    """Deploy, measure, ask, delete, measure; print RESULT."""
    import ray
    from ray import serve

    from council.serving.app import build_app

    parser = argparse.ArgumentParser()
    parser.add_argument("--config-json", required=True, help="The council config as JSON.")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--scale-down-timeout-s", type=float, default=90.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    ray.init()
    result: dict[str, Any] = {"gpu_nodes_before": gpu_nodes()}
    serve.start(http_options={"host": "127.0.0.1", "port": args.http_port})
    t0 = time.perf_counter()
    # serve.run returns once every replica runs: the specialists' GPUs exist only after the autoscaler acts.
    serve.run(build_app({"config_dict": json.loads(args.config_json)}), name="council", route_prefix="/")
    result["deploy_s"] = round(time.perf_counter() - t0, 1)
    result["gpu_nodes"] = gpu_nodes()
    result["replica_nodes"] = specialist_replica_nodes()
    answer = serve.get_app_handle("council").ask.remote({"question": "Where does the river Varn flow?"})
    result["answer_members"] = [m["name"] for m in answer.result(timeout_s=120)["members"]]
    log.info("deployed in %.1fs on GPU nodes %s", result["deploy_s"], result["gpu_nodes"])

    serve.delete("council")
    t1 = time.perf_counter()
    while gpu_nodes() and time.perf_counter() - t1 < args.scale_down_timeout_s:
        time.sleep(1.0)
    result["gpu_nodes_after"] = gpu_nodes()
    result["scale_down_s"] = round(time.perf_counter() - t1, 1)
    serve.shutdown()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
