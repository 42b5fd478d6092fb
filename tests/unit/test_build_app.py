"""`build_app` validates before any deployment exists; clusters/local.yaml is a valid Serve config for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from council.errors import ConfigError
from council.serving.app import build_app
from tests.serve.conftest import ROOT, SPECIALISTS, council_config


def _config(tmp_path: Path) -> dict[str, Any]:
    return council_config([tmp_path / "model"], tmp_path / "store", SPECIALISTS)


def test_clusters_local_yaml_points_build_app_at_the_demo_council(local_yaml_app: dict[str, Any]) -> None:
    assert local_yaml_app["import_path"] == "council.serving.app:build_app"
    assert local_yaml_app["name"] == "council" and local_yaml_app["route_prefix"] == "/"
    assert local_yaml_app["args"] == {"config": "council/demo/council.yaml"}
    data = yaml.safe_load((ROOT / "clusters" / "local.yaml").read_text())
    assert data["http_options"]["host"] == "127.0.0.1"


def test_the_demo_config_builds(local_yaml_app: dict[str, Any]) -> None:
    """The committed demo council (part of the repo: its absence is a failure) builds into six specialist
    deployments, each over its own committed checkpoint."""
    app = build_app(local_yaml_app["args"])
    config, specialists = app._bound_deployment.init_args[:2]  # what the ingress replicas get
    names = ["finance-1", "finance-2", "legal-1", "legal-2", "medical-1", "medical-2"]
    assert sorted(specialists) == names
    assert sorted(s["name"] for s in config["specialists"]) == names
    for s in config["specialists"]:
        assert Path(s["model"]) == ROOT / "council" / "demo" / "models" / s["name"]
        assert (Path(s["model"]) / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({}, "exactly one of"),
        ({"config": "a.yaml", "config_dict": {}}, "exactly one of"),
        ({"config": "/no/such/council.yaml"}, "cannot read config"),
        ({"config_dict": {"specialists": []}}, "specialists"),
        ({"config_dict": {"specialists": [{"name": "a"}]}}, "specialists.0.model"),
        ({"typo": 1, "config_dict": {}}, "typo"),
    ],
)
def test_bad_args_raise_config_error_naming_the_field(args: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        build_app(args)


def test_router_field_errors_are_named(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config["router"]["k"] = 0
    with pytest.raises(ConfigError, match=r"router\.k"):
        build_app({"config_dict": config})


def test_faults_must_name_a_specialist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ghost"):
        build_app({"config_dict": _config(tmp_path), "faults": {"ghost": {"error": "x"}}})
    with pytest.raises(ConfigError, match="delay_s"):
        build_app({"config_dict": _config(tmp_path), "faults": {"physics": {"delay_s": -1}}})


def test_builds_from_a_yaml_file_with_relative_model_paths(tmp_path: Path) -> None:
    config = _config(tmp_path)
    (tmp_path / "model").mkdir()
    for spec in config["specialists"]:
        spec["model"] = "model"  # resolved beside the YAML file
    path = tmp_path / "council.yaml"
    path.write_text(yaml.safe_dump(config))
    app = build_app({"config": str(path)})
    ingress_args = app._bound_deployment.init_args  # the config the ingress replicas will get
    assert all(s["model"] == str((tmp_path / "model").resolve()) for s in ingress_args[0]["specialists"])
    assert Path(ingress_args[0]["retrieval"]["path"]).is_absolute()


def test_a_members_health_check_settings_reach_serve(tmp_path: Path) -> None:
    """What lets Serve replace a member with a dead engine within seconds (tests/serve/test_vllm_member.py)."""
    config = _config(tmp_path)
    config["specialists"][0]["deployment"] |= {"health_check_period_s": 1.0, "health_check_timeout_s": 10.0}
    _, specialists = build_app({"config_dict": config})._bound_deployment.init_args[:2]
    checks = {
        name: (d.health_check_period_s, d.health_check_timeout_s)
        for name, d in ((n, a._bound_deployment._deployment_config) for n, a in specialists.items())
    }
    assert checks == {"physics": (1.0, 10.0), "history": (10.0, 30.0), "finance": (10.0, 30.0)}


def test_a_remote_member_is_a_cheap_self_batching_deployment(tmp_path: Path) -> None:
    """engine: openai: an async replica (its client on the replica's loop), many requests in (the engine bounds
    what is at the endpoint), no GPU, and no answer embedder of its own (the ingress embeds its answers)."""
    config = _config(tmp_path)
    config["specialists"][0] |= {
        "engine": "openai", "model": "gpt-x", "tokenizer": str(tmp_path / "tok"), "context_window": 4096,
        "engine_options": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "SOME_KEY"},
    }  # fmt: skip
    _, specialists = build_app({"config_dict": config})._bound_deployment.init_args[:2]
    remote, local = specialists["physics"]._bound_deployment, specialists["history"]._bound_deployment
    assert remote.func_or_class.__name__ == "AsyncSpecialistServer"
    assert remote._deployment_config.max_ongoing_requests == 256 and remote.ray_actor_options["num_gpus"] == 0
    assert remote.init_kwargs["answer_embedder"] is None and local.init_kwargs["answer_embedder"] == ""
    assert set(remote.init_args[0]["engine_options"]) == {"base_url", "api_key_env"}  # the variable's name only
