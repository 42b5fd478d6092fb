"""Every file under clusters/ parses, passes its tool's own schema, and carries a council config that validates."""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from council.config import CouncilConfig

REPO = Path(__file__).resolve().parents[2]
CLUSTERS = REPO / "clusters"
# CI lays shared/ beside the clone; the CRDs are KubeRay v1.7.0's, used as they are (nothing vendored).
CRDS = REPO.parent / "shared" / "kuberay-crds"
KUBERAY = CLUSTERS / "kuberay"
CRD_FILES = {
    "RayService": "ray.io_rayservices.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCluster": "ray.io_rayclusters.yaml",
}
YAMLS = sorted(CLUSTERS.rglob("*.yaml"))


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kuberay_manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in docs(p) if d.get("apiVersion") == "ray.io/v1"]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(CLUSTERS)))
def test_every_yaml_parses(path: Path) -> None:
    assert docs(path), f"{path} is empty"


def test_the_expected_files_are_there() -> None:
    names = {str(p.relative_to(CLUSTERS)) for p in YAMLS}
    assert {
        "local.yaml", "remote.yaml", "remote-council.yaml",
        "aws-gpu.yaml", "council-gpu.yaml", "serve-gpu.yaml", "kuberay/rayservice.yaml",
        "kuberay/rayjob-batch.yaml", "kuberay/rayjob-eval.yaml", "kuberay/chroma.yaml",
    } <= names
    readme = (CLUSTERS / "README.md").read_text()
    for name in names:
        assert f"`{name}`" in readme, f"clusters/README.md does not say what {name} is for"


# ---- the council configs ---------------------------------------------------------------------------------


def gpu_config() -> CouncilConfig:
    return CouncilConfig.from_yaml(CLUSTERS / "council-gpu.yaml")


def test_gpu_council_config() -> None:
    config = gpu_config()
    for spec in config.specialists:
        d = spec.deployment
        assert d.num_gpus == 1, spec.name
        assert d.autoscaling is not None and d.autoscaling.min_replicas >= 1 and d.autoscaling.max_replicas >= 2
        assert d.max_ongoing_requests >= d.max_batch_size
    assert config.retrieval.host, "a GPU cluster's replicas and jobs share one Chroma server"
    assert config.router.max_ongoing_requests >= 100


def serve_apps(path: Path, data: dict[str, Any]) -> list[dict[str, Any]]:
    """A Serve config's applications, checked with Serve's own schema."""
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(data)
    return list(data["applications"])


def council_of(app: dict[str, Any], where: str) -> CouncilConfig:
    """The council config a build_app application entry names (a path from the repository root, or inline)."""
    assert app["import_path"] == "council.serving.app:build_app", where
    args = app.get("args") or {}
    if "config_dict" in args:
        return CouncilConfig.from_dict(args["config_dict"], source=where)
    path = REPO / args["config"]
    assert path.exists(), f"{where}: args.config {args['config']!r} does not exist in the repository"
    return CouncilConfig.from_yaml(path)


@pytest.mark.parametrize("name", ["local.yaml", "serve-gpu.yaml", "remote.yaml"])
def test_serve_configs_hold_a_valid_council(name: str) -> None:
    path = CLUSTERS / name
    for app in serve_apps(path, docs(path)[0]):
        council_of(app, str(path))


def test_the_remote_council_mixes_remote_and_local_members_under_a_chairman() -> None:
    (app,) = serve_apps(CLUSTERS / "remote.yaml", docs(CLUSTERS / "remote.yaml")[0])
    config = council_of(app, "remote.yaml")
    assert sorted(s.engine for s in config.specialists) == ["openai", "openai", "transformers"]
    assert config.aggregator.chairman is not None and config.aggregator.chairman.member == "legal-1"
    for spec in config.specialists:
        assert "api_key" not in spec.engine_options  # keys live in the environment (api_key_env), never here


def test_the_plain_chat_template_renders_the_demo_prompt() -> None:
    """`vllm serve --chat-template clusters/plain-chat.jinja` of a demo checkpoint sees what a local member sees."""
    from council.backends.tokens import load_tokenizer_counter

    config = CouncilConfig.from_yaml(CLUSTERS / "remote-council.yaml").specialist("legal-1")
    tokens = load_tokenizer_counter(config)
    template = (CLUSTERS / "plain-chat.jinja").read_text()
    question, passages = "what is the penalty under the kavo act ?", ["the kavo act carries a fine ."]
    for history in ((), (("system", "be brief"),), (("user", "hello"), ("assistant", "hi"))):
        messages = tokens.render_messages(question, passages, history)
        rendered = tokens.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
        local = tokens.render_prompt(question, passages, history)
        assert rendered == local, (history, rendered, local)


def test_serve_gpu_deploys_the_gpu_council() -> None:
    (app,) = serve_apps(CLUSTERS / "serve-gpu.yaml", docs(CLUSTERS / "serve-gpu.yaml")[0])
    assert council_of(app, "serve-gpu.yaml") == gpu_config()


# ---- the Ray cluster launcher ----------------------------------------------------------------------------


def test_launcher_config_passes_rays_validate_config() -> None:
    from ray.autoscaler._private.util import validate_config

    config = docs(CLUSTERS / "aws-gpu.yaml")[0]
    validate_config(config)  # raises on anything ray-schema.json rejects


def test_launcher_config_shape() -> None:
    config = docs(CLUSTERS / "aws-gpu.yaml")[0]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head must not hold a GPU"
    gpu = [t for name, t in types.items() if name != config["head_node_type"]]
    assert gpu and all(t["resources"]["GPU"] >= 1 and t["max_workers"] > t["min_workers"] for t in gpu)
    assert config["provider"]["use_internal_ips"] is True
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "~/council" in setup
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start, "the dashboard/job server must stay private"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
        # Ray's workers inherit the Chroma token from the raylet (retrieval.token_env), read from the synced file.
        assert all('COUNCIL_CHROMA_TOKEN="$(cat ~/.council/chroma_token)"' in c for c in starts), key


def test_launcher_keeps_chroma_on_a_volume_that_outlives_the_head_under_a_supervisor() -> None:
    """Issue 16, finding 4: `ray down` terminates the head (cache_stopped_nodes: false) and its root disk; the
    store lives on the separate EBS volume chroma-volume.sh mounts, served by the systemd unit with token auth."""
    import configparser

    config = docs(CLUSTERS / "aws-gpu.yaml")[0]
    text = (CLUSTERS / "aws-gpu.yaml").read_text()
    assert "chroma run" not in text, "`chroma run` ignores Chroma's token auth (chromadb 1.5)"
    assert config["provider"]["cache_stopped_nodes"] is False  # hence the separate volume
    assert config["file_mounts"]["~/.council/chroma_token"] == "~/.council/chroma_token"
    head_setup = config["head_setup_commands"]
    assert head_setup[0] == "bash ~/council/clusters/chroma-volume.sh /mnt/council-chroma"
    assert "sudo cp ~/council/clusters/council-chroma.service /etc/systemd/system/council-chroma.service" in head_setup
    assert any("systemctl enable council-chroma" in c and "systemctl restart council-chroma" in c for c in head_setup)
    assert gpu_config().retrieval.token_env == "COUNCIL_CHROMA_TOKEN"

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read_string((CLUSTERS / "council-chroma.service").read_text())
    service = unit["Service"]
    assert service["Restart"] == "always" and unit["Unit"]["StartLimitIntervalSec"] == "0"
    assert unit["Unit"]["RequiresMountsFor"] == "/mnt/council-chroma", "never serve an empty store off the root disk"
    script, data, host, port = service["ExecStart"].split()
    assert script == "/home/ubuntu/council/clusters/chroma-server.sh" and data.startswith("/mnt/council-chroma/")
    assert int(port) == gpu_config().retrieval.port
    assert service["Environment"] == "CHROMA_TOKEN_FILE=/home/ubuntu/.council/chroma_token"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("script", ["chroma-server.sh", "chroma-volume.sh"])
def test_the_chroma_scripts_are_valid_bash(script: str) -> None:
    import subprocess

    done = subprocess.run(["bash", "-n", str(CLUSTERS / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---- KubeRay ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def crd_schemas() -> dict[str, dict[str, Any]]:
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRDS} (CI lays shared/ beside the clone); manifests not validated")
    schemas = {}
    for kind, name in CRD_FILES.items():
        # The CRDs are megabytes of YAML: libyaml's loader reads them in a fraction of the pure-Python time.
        crd = yaml.load((CRDS / name).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schemas[kind] = v1["schema"]["openAPIV3Schema"]
    return schemas


@pytest.mark.parametrize(
    ("path", "manifest"), kuberay_manifests(), ids=lambda x: x.name if isinstance(x, Path) else x.get("kind", "")
)
def test_kuberay_manifest_matches_the_crd(path: Path, manifest: dict[str, Any], crd_schemas: dict[str, Any]) -> None:
    import jsonschema

    validator = jsonschema.Draft7Validator(crd_schemas[manifest["kind"]])
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{path.name}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    # The API server silently prunes fields its schema does not know: a typo would vanish, not fail.
    unknown = unknown_fields(manifest, crd_schemas[manifest["kind"]])
    assert not unknown, f"{path.name}: fields the CRD does not declare: {unknown}"


def unknown_fields(value: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """Paths in `value` that `schema` does not declare (where it declares its properties at all)."""
    if isinstance(value, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out = []
        for key, sub in value.items():
            if key not in schema["properties"]:
                out.append(f"{where}.{key}")
            else:
                out += unknown_fields(sub, schema["properties"][key], f"{where}.{key}")
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [p for i, v in enumerate(value) for p in unknown_fields(v, schema["items"], f"{where}[{i}]")]
    return []


def cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"].get("rayClusterConfig") or manifest["spec"]["rayClusterSpec"]


@pytest.mark.parametrize(
    ("path", "manifest"), kuberay_manifests(), ids=lambda x: x.name if isinstance(x, Path) else x.get("kind", "")
)
def test_kuberay_clusters_are_private_autoscaled_and_authenticated(path: Path, manifest: dict[str, Any]) -> None:
    spec = cluster_spec(manifest)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    (gpu,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert str(limits["nvidia.com/gpu"]) == "1"
    assert gpu["maxReplicas"] > gpu["minReplicas"]
    assert spec["rayVersion"] == _installed_ray()


def _installed_ray() -> str:
    from importlib.metadata import version

    return version("ray")


def test_rayservice_serves_the_gpu_council() -> None:
    (svc,) = docs(KUBERAY / "rayservice.yaml")
    serve_config = yaml.safe_load(svc["spec"]["serveConfigV2"])
    (app,) = serve_apps(KUBERAY / "rayservice.yaml", serve_config)
    config = council_of(app, "rayservice.yaml serveConfigV2")
    assert config == gpu_config()
    assert all(s.deployment.num_gpus == 1 and s.deployment.autoscaling for s in config.specialists)


def test_chroma_service_is_what_the_gpu_council_points_at() -> None:
    manifests = {d["kind"]: d for d in docs(KUBERAY / "chroma.yaml")}
    assert {"Deployment", "Service", "PersistentVolumeClaim", "NetworkPolicy"} <= set(manifests)
    service, deployment = manifests["Service"], manifests["Deployment"]
    retrieval = gpu_config().retrieval
    assert service["metadata"]["name"] == retrieval.host
    assert service["spec"]["type"] == "ClusterIP"
    (port,) = service["spec"]["ports"]
    assert port["port"] == retrieval.port == 8001
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    command = container["command"]
    # clusters/chroma-server.sh DATA HOST PORT: Chroma's token auth (`chroma run` has none in chromadb 1.5)
    assert command[:2] == ["bash", "/home/ray/council/clusters/chroma-server.sh"] and command[-1] == str(
        port["targetPort"])
    (data,) = [m for m in container["volumeMounts"] if m["mountPath"] == command[2]]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == data["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == manifests["PersistentVolumeClaim"]["metadata"]["name"]
    (token,) = [e for e in container["env"] if e["name"] == "CHROMA_SERVER_AUTHN_CREDENTIALS"]
    assert token["valueFrom"]["secretKeyRef"] == CHROMA_SECRET, "the token comes from a Secret, never a value"
    assert deployment["spec"]["replicas"] == 1, "one Chroma server per data folder"


CHROMA_SECRET = {"name": "council-chroma-token", "key": "token"}


@pytest.mark.parametrize("name", ["rayservice.yaml", "rayjob-batch.yaml", "rayjob-eval.yaml"])
def test_every_ray_pod_gets_the_chroma_token_from_the_secret(name: str) -> None:
    (manifest,) = docs(KUBERAY / name)
    spec = cluster_spec(manifest)
    pods = [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]
    for pod in pods:
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            token = env[gpu_config().retrieval.token_env]
            assert token == {"name": "COUNCIL_CHROMA_TOKEN", "valueFrom": {"secretKeyRef": CHROMA_SECRET}}


@pytest.mark.parametrize("name", ["rayjob-batch.yaml", "rayjob-eval.yaml"])
def test_rayjob_entrypoints_parse_and_name_a_valid_council(name: str) -> None:
    (job,) = docs(KUBERAY / name)
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "-m"], argv
    module, args = argv[2], argv[3:]
    assert module in {"council.jobs.batch", "council.jobs.eval"}
    config = REPO / args[args.index("--config") + 1]
    CouncilConfig.from_yaml(config)
    # The job's own parser accepts the entrypoint's arguments.
    importlib.import_module(module).parse_args(args)
    assert job["spec"]["shutdownAfterJobFinishes"] is True


# ---- secure by default -----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["serve-gpu.yaml", "kuberay/rayservice.yaml"])
def test_an_exposed_serve_config_brings_credentials_and_never_a_key(where: str) -> None:
    """Both listen on 0.0.0.0, so the app starts only with credentials (council/serving/exposure.py): a key table
    path in the app's environment, the table itself a Secret or a node file; no key in the Serve config."""
    import json

    path = CLUSTERS / where
    (first,) = docs(path)
    serve = yaml.safe_load(first["spec"]["serveConfigV2"]) if "spec" in first else first
    assert serve["http_options"]["host"] == "0.0.0.0"
    for app in serve_apps(path, serve):
        env = app["runtime_env"]["env_vars"]
        assert env["COUNCIL_KEYS_FILE"].startswith("/") and council_of(app, where).http.auth == "keys"
        assert "COUNCIL_API_KEY" not in json.dumps(app) and "sha256" not in json.dumps(app)
    if "spec" in first:  # every pod that may run the ingress mounts the Secret where the path points
        folder = str(Path(env["COUNCIL_KEYS_FILE"]).parent)
        cluster = first["spec"]["rayClusterConfig"]
        workers = [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
        pods = [cluster["headGroupSpec"]["template"]["spec"], *workers]
        for pod in pods:
            secrets = {v["name"] for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "council-keys"}
            mounts = {m["name"] for c in pod["containers"] for m in c["volumeMounts"] if m["mountPath"] == folder}
            assert secrets & mounts, pod["containers"][0]["name"]


def test_the_network_policy_lets_only_the_gateway_reach_the_api_port() -> None:
    (policy,) = docs(KUBERAY / "networkpolicy.yaml")
    assert policy["kind"] == "NetworkPolicy"
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": "council"}
    rules = policy["spec"]["ingress"]
    api = [r for r in rules if {"protocol": "TCP", "port": 8000} in r.get("ports", [])]
    assert len(api) == 1
    sources = [s["podSelector"]["matchLabels"] for s in api[0]["from"]]
    assert sources == [{"app.kubernetes.io/name": "council-gateway"}, {"ray.io/cluster": "council"}]
    assert all("from" in r for r in rules)  # no rule open to every source
