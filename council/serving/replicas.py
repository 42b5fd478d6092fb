"""Serve replicas as named actors: list them, see which deployments are fully running, kill one (chaos tests)."""

from __future__ import annotations


def replica_actors(app: str, deployment_prefix: str = "") -> list[str]:
    """Names of the live replica actors of `app` whose deployment starts with `deployment_prefix`."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment_prefix}"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))


def kill_replica(name: str) -> None:
    """Kill one replica actor the way a crash would; Serve notices and starts a replacement."""
    import ray

    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=False)


def running_deployments(app: str, prefix: str = "") -> set[str]:
    """Deployments of `app` (names starting with `prefix`) whose every replica is RUNNING."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return set()
    states = {
        name: {str(getattr(k, "value", k)) for k, n in d.replica_states.items() if n}
        for name, d in status.deployments.items()
    }
    return {name for name, s in states.items() if name.startswith(prefix) and s == {"RUNNING"}}
