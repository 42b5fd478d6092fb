"""The cluster autoscaler on one machine (Ray's fake multi-node provider): GPU demand adds a worker node.

`ray.cluster_utils.AutoscalingCluster` wraps the same provider, but its start/shutdown run `ray stop --force`,
which would kill every other Ray instance on the machine, and Ray 2.60's wheel lacks the example.yaml it
reads. So the head is started here like the other job tests' head, with the provider's config written out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.conftest import RayHead, council_dict, free_port, start_head
from tests.jobs.test_batch import RUNTIME_ENV

pytestmark = pytest.mark.load

GPU_NODE_TYPE = "gpu_worker"


def fake_cluster_config(gcs_address: str) -> dict[str, Any]:
    """A launcher config for the fake provider: a CPU-only head and one GPU worker type, 0..1 nodes."""
    return {
        "cluster_name": "council-fake",
        "max_workers": 1,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            # A fake GPU: the scheduler and autoscaler count it; torch in the replica still sees no CUDA.
            GPU_NODE_TYPE: {
                "resources": {"CPU": 1, "GPU": 1, "object_store_memory": 100_000_000},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 1,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


@pytest.fixture
def fake_cluster(tmp_path: Path) -> Iterator[RayHead]:
    """A head with the fake multi-node autoscaler (no GPU of its own)."""
    import ray._private.services as services

    port = free_port()
    config = tmp_path / "autoscaler.json"
    # Ray publishes the GCS on the machine's address even when told 127.0.0.1: the fake nodes join there.
    config.write_text(json.dumps(fake_cluster_config(f"{services.get_node_ip_address()}:{port}")))
    head = start_head(
        num_cpus=1,
        gcs_port=port,
        extra_args=[f"--autoscaling-config={config}"],
        extra_env={
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        },
    )
    try:
        yield head
    finally:
        head.stop()


def test_gpu_demand_adds_a_worker_node_and_the_specialists_land_on_it(
    fake_cluster: RayHead, tiny_models: list[Path], tmp_path: Path
) -> None:
    council = council_dict(tiny_models, tmp_path / "store")
    for spec in council["specialists"]:  # type: ignore[union-attr]
        # Two specialists share the one (fake) GPU of the node the autoscaler adds.
        spec["deployment"] = {"num_cpus": 0.05, "num_gpus": 0.5}
    council["router"]["num_cpus"] = 0.05  # type: ignore[index]
    council["retrieval"]["num_cpus"] = 0.05  # type: ignore[index]
    entrypoint = (
        f"python tests/jobs/autoscale_driver.py --http-port {free_port()} --config-json '{json.dumps(council)}'"
    )
    t0 = time.monotonic()
    client, job = fake_cluster.submit(entrypoint, RUNTIME_ENV)
    while not client.get_job_status(job).is_terminal():
        assert time.monotonic() - t0 < 240, "the autoscaling job took too long"
        time.sleep(1.0)
    logs = client.get_job_logs(job)
    assert str(client.get_job_status(job).value) == "SUCCEEDED", logs[-4000:]
    (line,) = [x for x in logs.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))

    assert result["gpu_nodes_before"] == [], "the cluster started with a GPU node already"
    assert len(result["gpu_nodes"]) == 1, "the autoscaler did not add exactly one GPU node"
    (gpu_node,) = result["gpu_nodes"]
    assert len(result["replica_nodes"]) == 2, result["replica_nodes"]
    assert set(result["replica_nodes"].values()) == {gpu_node}, "a specialist replica is not on the new node"
    assert sorted(result["answer_members"]) == ["history", "physics"]
    assert result["gpu_nodes_after"] == [], f"the idle GPU node was not removed ({result['scale_down_s']}s)"
    print(f"cluster autoscaling: deploy incl. node start {result['deploy_s']}s, idle node removed after "
          f"{result['scale_down_s']}s")
