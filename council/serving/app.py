"""`build_app`: the one place that turns the council's classes into Serve deployments, from a validated config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ray import serve
from ray.serve import Application

from council.backends.faulty import Faults
from council.bases import base_deployment_names, by_base
from council.config import CouncilConfig, SpecialistConfig, format_validation_error
from council.engine_options import NO_LOCAL_MODEL
from council.errors import ConfigError
from council.serving.aggregator import AggregatorServer
from council.serving.base_server import AsyncBaseServer, BaseServer
from council.serving.ingress import RouterIngress
from council.serving.specialist import AsyncSpecialistServer, SpecialistServer
from council.serving.store import RetrievalServer

log = logging.getLogger(__name__)

INGRESS = "RouterIngress"
RETRIEVAL = "RetrievalServer"
AGGREGATOR = "AggregatorServer"
# Where the repository (or installed package) lives: `council/demo/council.yaml` resolves against it too.
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def specialist_deployment_name(name: str) -> str:
    """The Serve deployment name of a specialist (visible in `serve status`)."""
    return f"Specialist_{name}"


class AppArgs(BaseModel):
    """`build_app` arguments (the `args` of a Serve config application)."""

    model_config = ConfigDict(extra="forbid")

    config: str | None = Field(
        default=None, description="Path of the council YAML (relative: to the cwd, then the repo)."
    )
    config_dict: dict[str, Any] | None = Field(
        default=None, description="The council config inline, instead of `config`."
    )
    faults: dict[str, Faults] = Field(
        default_factory=dict, description="Fault injection per specialist name, for resilience testing only."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables of the ingress replicas (e.g. COUNCIL_API_KEY)."
    )

    @model_validator(mode="after")
    def _one_config(self) -> AppArgs:
        if (self.config is None) == (self.config_dict is None):
            raise ValueError("give exactly one of `config` (a YAML path) or `config_dict`")
        return self


def load_config(args: AppArgs) -> CouncilConfig:
    """The validated CouncilConfig named by the args; the store path is made absolute here, once."""
    if args.config_dict is not None:
        config = CouncilConfig.from_dict(args.config_dict, source="config_dict")
    else:
        path = Path(args.config).expanduser()  # type: ignore[arg-type]
        if not path.is_absolute() and not path.exists() and (_PACKAGE_ROOT / path).exists():
            path = _PACKAGE_ROOT / path
        config = CouncilConfig.from_yaml(path)
    # Replicas may start in another working directory: pin the embedded store to the builder's.
    store = str(Path(config.retrieval.path).expanduser().resolve())
    return config.model_copy(update={"retrieval": config.retrieval.model_copy(update={"path": store})})


# A member whose engine batches continuously (vLLM), or whose model is remote (openai: its engine bounds what is in
# flight at the endpoint, engine_options.max_concurrency), takes many requests at once.
SELF_BATCHING_MAX_ONGOING = 256
SELF_BATCHING_ENGINES = ("vllm", "openai", "simulated")


def _replica_options(spec: SpecialistConfig) -> dict[str, Any]:
    """Serve options of one specialist deployment, straight from its config."""
    d = spec.deployment
    # An engine that batches itself needs the requests in the replica: a higher default than ours (16).
    ongoing = d.max_ongoing_requests
    if spec.engine in SELF_BATCHING_ENGINES and "max_ongoing_requests" not in d.model_fields_set:
        ongoing = SELF_BATCHING_MAX_ONGOING
    opts: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
        "max_ongoing_requests": ongoing,
        "max_queued_requests": d.max_queued_requests,
        "health_check_period_s": d.health_check_period_s,
        "health_check_timeout_s": d.health_check_timeout_s,
    }
    if d.autoscaling is not None:
        opts["autoscaling_config"] = d.autoscaling.model_dump(exclude_none=True)
    else:
        opts["num_replicas"] = d.num_replicas
    if spec.engine == "transformers" and d.max_ongoing_requests < d.max_batch_size:
        log.warning(
            "max_ongoing_requests=%d < max_batch_size=%d: batches can never fill",
            d.max_ongoing_requests,
            d.max_batch_size,
        )
    return opts


def _specialist(spec: SpecialistConfig, fault: Faults | None, config: CouncilConfig) -> Application:
    options = _replica_options(spec)
    # vLLM's engine starts on the replica's event loop (an async __init__); the engine itself sets its CPU
    # environment (KV cache, thread binding) from engine_options before it spawns its core process. A remote
    # member's client belongs to that loop too.
    server = SpecialistServer if spec.engine == "transformers" else AsyncSpecialistServer
    deployment: Any = serve.deployment(server, name=specialist_deployment_name(spec.name), **options)
    # A remote member's replica stays cheap (no torch model, no embedder): the ingress embeds its answers.
    # A simulated member holds no CPU while it "generates", as a GPU member: the ingress embeds its answers too.
    embed = config.aggregator.answers_embedded_by == "members" and spec.engine not in NO_LOCAL_MODEL
    return deployment.bind(
        spec.model_dump(mode="json"),
        fault.model_dump(exclude_unset=True) if fault else None,
        answer_embedder=(config.retrieval.embedder or "") if embed else None,
    )


def _bases(config: CouncilConfig, faults: dict[str, Faults]) -> dict[str, Application]:
    """One deployment per shared base (`Base_<name>`), bound once and named by each of its members."""
    specs = {s.name: s for s in config.specialists}
    groups = by_base(config.specialists)
    on_base = sorted(set(faults) & {n for names in groups.values() for n in names})
    if on_base:
        raise ConfigError(f"build_app args: faults: {on_base} are members of a shared base; inject faults into "
                          "specialists on their own deployments")  # fmt: skip
    apps: dict[str, Application] = {}
    for base, name in base_deployment_names(groups).items():
        members = [specs[n] for n in groups[base]]
        lead = members[0]
        server = BaseServer if lead.engine == "transformers" else AsyncBaseServer
        deployment: Any = serve.deployment(server, name=name, **_replica_options(lead))
        embed = config.aggregator.answers_embedded_by == "members"
        app = deployment.bind(
            name,
            [m.model_dump(mode="json") for m in members],
            answer_embedder=(config.retrieval.embedder or "") if embed else None,
        )
        apps.update(dict.fromkeys(groups[base], app))
    return apps


def build_app(args: dict[str, Any]) -> Application:
    """The council as a Serve application: `import_path: council.serving.app:build_app` in a Serve config.

    `args`: `{config: <council yaml>}` or `{config_dict: {...}}`, optionally `faults` (fault injection for
    resilience tests: `{name: {delay_s: 5} | {error: "boom"}}`) and `env` (ingress environment).
    Everything is validated before any deployment exists; a bad field raises ConfigError naming it.
    """
    try:
        app_args = AppArgs.model_validate(args or {})
    except ValidationError as e:
        raise ConfigError(f"build_app args: {format_validation_error(e)}") from None
    config = load_config(app_args)
    if any(s.adapter for s in config.specialists):
        from council.backends.lora import check_adapters

        check_adapters(config, source=app_args.config or "config_dict")
    names = [s.name for s in config.specialists]
    unknown = sorted(set(app_args.faults) - set(names))
    if unknown:
        raise ConfigError(f"build_app args: faults: unknown specialist(s) {unknown}; known: {names}")

    router = config.router
    # The ingress, the store and the aggregator each take one call per question: size them like the ingress.
    shared: dict[str, Any] = {
        "max_ongoing_requests": router.max_ongoing_requests,
        "max_queued_requests": router.max_queued_requests,
    }
    bases = _bases(config, app_args.faults)
    specialists = {
        s.name: bases[s.name] if s.name in bases else _specialist(s, app_args.faults.get(s.name), config)
        for s in config.specialists
    }
    deploy: Any = serve.deployment  # its overloads hide `.bind` from the type checker
    retrieval = deploy(
        RetrievalServer,
        name=RETRIEVAL,
        num_replicas=1,  # an embedded Chroma folder is one process only
        ray_actor_options={"num_cpus": config.retrieval.num_cpus},
        **shared,
    ).bind(config.retrieval.model_dump(mode="json"))
    aggregator = None
    if config.aggregator.placement == "deployment":
        aggregator = deploy(
            AggregatorServer,
            name=AGGREGATOR,
            num_replicas=1,
            ray_actor_options={"num_cpus": config.aggregator.num_cpus},
            **shared,
        ).bind(config.model_dump(mode="json"))
    ingress_actor: dict[str, Any] = {"num_cpus": router.num_cpus}
    if app_args.env:
        ingress_actor["runtime_env"] = {"env_vars": dict(app_args.env)}
    # serve.ingress() without an app: RouterIngress builds its FastAPI app per replica (__serve_build_asgi_app__).
    ingress_cls: Any = serve.ingress()(RouterIngress)
    ingress = deploy(
        ingress_cls,
        name=INGRESS,
        num_replicas=router.num_replicas,
        ray_actor_options=ingress_actor,
        # A full ingress queue is refused by Serve's proxy before our code runs: say when to retry there.
        backpressure_config={"status_code": 503, "retry_after_s": router.retry_after_s},
        **shared,
    )
    log.info("council app: %d specialists %s, %d on shared bases", len(names), names, len(bases))
    return ingress.bind(config.model_dump(mode="json"), specialists, retrieval, aggregator)
