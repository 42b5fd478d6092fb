"""Pydantic config models, read from YAML or HTTP; every field says what it is for."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from council.bases import inherit_shared, shared_problems
from council.config_io import NESTED as _NESTED
from council.config_io import format_validation_error, resolve_paths, validated
from council.engine_options import ENGINE_OPTIONS, refuse_simulated
from council.errors import ConfigError
from council.member_options import (
    AutoscalingOptions,
    DeploymentOptions,
    EscalationConfig,
    GenerationOptions,
    StrictModel,
)

__all__ = [
    "AutoscalingOptions",
    "CouncilConfig",
    "DeploymentOptions",
    "EscalationConfig",
    "GenerationOptions",
    "SpecialistConfig",
    "format_validation_error",
    "resolve_paths",
    "validated",
]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SpecialistConfig(StrictModel):
    name: str = Field(description="Unique name; also the OpenAI `model` that talks to this one alone.")
    model: str = Field(
        description="Local checkpoint folder or hub id of the causal LM (or base model); for engine: openai, the "
        "model name the endpoint serves (its `model` field)."
    )
    base: str | None = Field(
        None,
        description="Instead of `model`: the local folder or hub id of a base model this specialist is a LoRA "
        "`adapter` of. All members on one base are served by ONE deployment holding the base once, which applies "
        "each request's adapter (their engine, engine_options, dtype and deployment: the first member's). `model` "
        "is then the base.",
    )
    adapter: str | None = Field(
        None,
        description="PEFT adapter folder: with `model`, merged into that model on the member's own deployment; with "
        "`base`, applied per request on the base's shared deployment.",
    )
    domain: str = Field("general", description="The domain this specialist is strong in.")
    description: str = Field("", description="What it knows; embedded for routing.")
    examples: list[str] = Field(default_factory=list, description="Example questions; embedded for routing.")
    context_window: int | None = Field(None, ge=16, description="Overrides the model config's window.")
    generation: GenerationOptions = Field(default_factory=GenerationOptions, description="Decoding settings.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights dtype; auto = bf16 on CUDA when supported, fp32 on CPU."
    )
    prompt_template: str | None = Field(None, description="Name of a prompt template in council.prompts.")
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions, description="Serve options.")
    engine: Literal["transformers", "vllm", "openai", "simulated"] = Field(
        "transformers",
        description="What runs the model: in-process Hugging Face `generate`, batched by the server "
        "(transformers), vLLM's async engine, which batches continuously itself (vllm; `make vllm` on CPU), or "
        "any OpenAI-compatible endpoint (openai: `vllm serve`, Ray Serve LLM, TGI, Ollama, a hosted API; `model` is "
        "then the name that endpoint serves, and `tokenizer` and `context_window` are required). simulated: an "
        "accelerator-like stand-in for benchmarks and tests (refused unless COUNCIL_ALLOW_SIMULATED_ENGINE=1).",
    )
    engine_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of the engine (council.engine_options: TransformersOptions, VLLMOptions, OpenAIOptions), "
        "checked here.",
    )
    tokenizer: str | None = Field(
        None,
        description="engine: openai only (required there): the remote model's tokenizer, for its token budget: a "
        "local folder or hub id of a Hugging Face tokenizer, or `tiktoken:<encoding>` (e.g. tiktoken:o200k_base).",
    )

    @model_validator(mode="before")
    @classmethod
    def _model_from_base(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("base"), str):
            return data
        if data.get("model", data["base"]) != data["base"]:  # a dumped config repeats the base as its model
            raise PydanticCustomError(_NESTED, "{nested}", {"nested": [(
                "model", "give either a full `model` or a `base` with an `adapter`, not both"
            )]})  # fmt: skip
        return {**data, "model": data["base"]}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"specialist name {v!r} must match {NAME_RE.pattern}")
        return v

    @field_validator("engine_options")
    @classmethod
    def _engine_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        model = ENGINE_OPTIONS.get(info.data.get("engine", ""))
        if model is None:  # a bad `engine` is its own error
            return v
        try:
            model.model_validate(v)
        except ValidationError as e:
            # One error per bad option, each named by its own path below engine_options (format_validation_error).
            nested = [(".".join(str(x) for x in err["loc"]), err["msg"]) for err in e.errors()]
            raise PydanticCustomError(_NESTED, "{nested}", {"nested": nested}) from None
        return v

    @model_validator(mode="after")
    def _remote(self) -> SpecialistConfig:
        # A remote model's token budget needs its real tokenizer and window: no silent character-count guess.
        problems: list[tuple[str, str]] = []
        if self.engine == "openai":
            if self.tokenizer is None:
                problems.append(
                    ("tokenizer", "engine: openai needs the remote model's tokenizer for its token budget: a Hugging "
                     "Face tokenizer folder or hub id, or tiktoken:<encoding> (e.g. tiktoken:o200k_base)")
                )  # fmt: skip
            if self.context_window is None:
                problems.append(("context_window", "engine: openai needs the remote model's context window in tokens"))
            if self.deployment.num_gpus:
                problems.append(("deployment.num_gpus", "a remote member's replica needs no GPU: leave it at 0"))
            if self.adapter is not None:
                problems.append(("adapter", "a remote member serves its own adapters: name it in `model` instead"))
            if self.base is not None:
                problems.append(("base", "a remote member runs on its endpoint, not on a shared base: name its "
                                 "model in `model`"))  # fmt: skip
        elif self.tokenizer is not None:
            problems.append(("tokenizer", f"only engine: openai members take one; a {self.engine} member's tokenizer "
                             "is its model's"))  # fmt: skip
        if self.engine != "openai" and self.base is not None and self.adapter is None:
            problems.append(("adapter", "a member on a `base` is a LoRA adapter of it: name its PEFT adapter folder"))
        if problems:
            raise PydanticCustomError(_NESTED, "{nested}", {"nested": problems})
        return self


class RouterConfig(StrictModel):
    k: int = Field(3, ge=1, description="Specialists asked per question (top-k by route score).")
    min_score: float = Field(-1.0, ge=-1, le=1, description="Specialists scoring below this are not asked.")
    quorum: int = Field(1, ge=1, description="Fewest successful answers for the council to answer at all.")
    member_timeout_s: float = Field(60.0, gt=0, description="A member slower than this counts as failed.")
    early_exit: bool = Field(False, description="Answer once a quorum agrees; cancel the stragglers.")
    max_generations: int = Field(
        24, ge=1, description="Most generations one request may cost (members asked x orderings); beyond: 400."
    )
    max_ongoing_requests: int = Field(200, ge=1, description="Ingress concurrency (it awaits members).")
    max_queued_requests: int = Field(400, ge=-1, description="Ingress queue bound; beyond it Serve answers 503.")
    retry_after_s: float = Field(
        1.0, gt=0, description="Retry-After (seconds) of the 503 Serve answers when the ingress queue is full."
    )
    num_replicas: int = Field(1, ge=1, description="Ingress replicas.")
    num_cpus: float = Field(0.1, ge=0, description="CPUs per ingress replica.")
    escalation: EscalationConfig | None = Field(
        None, description="Ask the top members first, the rest of the top-k only when they do not settle it; None: off."
    )

    @model_validator(mode="after")
    def _first_below_k(self) -> RouterConfig:
        if self.escalation is not None and self.escalation.first >= self.k:
            msg = f"{self.escalation.first} must be below router.k={self.k}: the members asked first are some of the k"
            raise PydanticCustomError(_NESTED, "{nested}", {"nested": [("escalation.first", msg)]})
        return self


class ChunkingOptions(StrictModel):
    max_chars: int = Field(600, ge=50, description="Longest chunk, in characters, split at sentence ends.")
    overlap_sentences: int = Field(0, ge=0, description="Sentences repeated between neighbouring chunks.")


def default_store_path() -> str:
    """$COUNCIL_HOME/chroma, else ~/.council/chroma: one place every process of a user agrees on."""
    home = os.environ.get("COUNCIL_HOME")
    return str(Path(home).expanduser() / "chroma" if home else Path.home() / ".council" / "chroma")


class RetrievalConfig(StrictModel):
    path: str = Field(
        default_factory=lambda: default_store_path(),
        validate_default=True,
        description="Embedded Chroma folder, locked by the one process that opens it (others wait or are refused "
        "with its name). Default: $COUNCIL_HOME/chroma, else ~/.council/chroma — the same for the CLI, Serve "
        "replicas and jobs, whatever their working directory. A relative path is made absolute when the config "
        "is read: in a YAML file relative to that file's folder, else to the working directory.",
    )
    host: str | None = Field(None, description="Chroma server host; when set, HttpClient is used instead.")
    port: int = Field(8001, ge=1, le=65535, description="Chroma server port (not 8000: Serve's default).")
    token_env: str = Field(
        "COUNCIL_CHROMA_TOKEN",
        min_length=1,
        description="The environment variable holding the Chroma server's token (Chroma's token auth, "
        "clusters/chroma-server.sh), sent as a bearer token when `host` is set and the variable is. The token "
        "itself never goes in a config: a Kubernetes secretKeyRef or the node's environment holds it.",
    )
    collection: str = Field("council", description="Chroma collection name.")
    top_n: int = Field(5, ge=1, le=100, description="Chunks retrieved per question.")
    lexical_weight: float = Field(
        0.3, ge=0, le=1, description="Weight of lexical overlap fused with dense similarity (entity names)."
    )
    min_score: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="Chunks whose fused relevance is below this are dropped: a question nothing in the store "
        "answers gets no passages (and a closed-book answer) instead of a near miss to copy from. None: off "
        "(fused scores can be negative, so 0 is a filter too).",
    )
    score_margin: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Keep only chunks within this much of the best one's score (a clear winner comes alone: "
        "small readers answer one passage far better than one among look-alikes). None: off.",
    )
    search_ef: int = Field(
        200,
        ge=1,
        le=10_000,
        description="Chroma's HNSW `ef_search`: how many candidates a query visits. With Chroma's default (100), "
        "eight 183-chunk stores built in different orders each lost 0 to 11 chunks of the exact top 5 over 303 "
        "queries; with 200, none did. Higher: better recall, slower queries. A store made with another value is "
        "changed to this when opened for writing (Chroma applies it when the store is next loaded).",
    )
    chunking: ChunkingOptions = Field(default_factory=ChunkingOptions, description="How documents are split.")
    embedder: str | None = Field(None, description="Sentence-transformers path; default: bundled MiniLM.")
    tenants: list[str] | None = Field(
        None, description="Allowed tenants; when unset, a tenant is known once it has ingested documents."
    )
    max_file_bytes: int = Field(
        20 * 1024 * 1024,
        ge=1,
        description="Ingest refuses a file larger than this (and a Parquet text cell longer), naming the file and "
        "the limit.",
    )
    timeout_s: float = Field(
        30.0,
        gt=0,
        description="A question's retrieval (stored and ephemeral documents) slower than this fails the request "
        "with 504 retrieval_timeout instead of holding it.",
    )
    num_cpus: float = Field(0.2, ge=0, description="CPUs for the retrieval replica.")

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return str(Path(v).expanduser().resolve())


class ChairmanConfig(StrictModel):
    """A member that writes the council's final answer from the members' answers (anonymised and shuffled)."""

    member: str = Field(
        description="The specialist (one of `specialists`) who writes the synthesis. It may also be routed to as an "
        "ordinary member: it then answers like the others first, and later reads its own answer among theirs, "
        "unlabelled, like any other."
    )
    fallback: list[str] = Field(
        default_factory=list, description="Specialists who write it, in order, when the chairman fails or times out."
    )
    when: Literal["agreed", "always"] = Field(
        "agreed",
        description="agreed: only when the members agree (at or above agreement_threshold); always: every time, but "
        "an abstaining council still abstains (the synthesis is then reported beside the abstention, never as the "
        "answer).",
    )
    timeout_s: float | None = Field(
        None, gt=0, description="Longest a chairman may take, per attempt (default: router.member_timeout_s)."
    )


class AggregatorConfig(StrictModel):
    agreement_threshold: float = Field(0.5, ge=0, le=1, description="Below this weighted agreement: abstain.")
    similarity_threshold: float = Field(
        0.9, ge=0, le=1, description="Cosine similarity at which two answers count as the same."
    )
    ordering: Literal["relevance", "edges", "reverse", "random"] = Field(
        "relevance", description="Passage order in the prompt."
    )
    orderings: int = Field(1, ge=1, le=8, description="Orderings asked per member; >1 votes across them.")
    default_budget_tokens: int = Field(512, ge=0, description="Context token budget when a request sets none.")
    num_cpus: float = Field(0.1, ge=0, description="CPUs for the aggregator replica (placement: deployment).")
    placement: Literal["ingress", "deployment"] = Field(
        "ingress",
        description="Where trimming and agreement run: in the ingress process (no network hops; each ingress "
        "replica loads every member's tokenizer, no weights, and shares its embedding passes with routing), or on "
        "their own deployment (AggregatorServer, `num_cpus` above; 2 or more calls to it per question). "
        "bench/framework.py measured the ingress 1.33-1.43x the throughput at 0.67x the CPU per question.",
    )
    answers_embedded_by: Literal["members", "ingress"] = Field(
        "members",
        description="Who embeds the members' answers for agreement. 'members': each specialist's replica, right "
        "after generating, on its own device and in parallel with the others (each replica loads the embedder). "
        "'ingress': the ingress, each answer as it arrives.",
    )
    chairman: ChairmanConfig | None = Field(
        None, description="Optional: a member that writes the final answer from the members' answers (synthesis)."
    )


class HttpConfig(StrictModel):
    # Where Serve listens (host, port) and its request timeout are cluster-wide: they belong to the Serve config's
    # `http_options` (clusters/*.yaml), not to one application's council config.
    max_body_bytes: int = Field(65536, ge=1024, description="Requests with a larger body are refused (413).")
    auth: Literal["keys", "none"] = Field(
        "keys",
        description="keys: callers need a key from COUNCIL_KEYS_FILE or COUNCIL_API_KEY, and with none configured "
        "the app starts only behind a loopback proxy; none: no keys at all, anywhere (logged as a warning).",
    )
    requests_per_minute: float | None = Field(
        None,
        gt=0,
        description="Per-key request rate (a key table entry may set its own); beyond: 429. Counted by each ingress "
        "replica on its own: a key may make up to this x router.num_replicas requests a minute in all.",
    )
    tokens_per_minute: float | None = Field(
        None,
        gt=0,
        description="Per-key generated tokens per minute (a key table entry may set its own); beyond: 429. Per "
        "ingress replica, like requests_per_minute: up to this x router.num_replicas in all.",
    )
    examples: list[str] = Field(
        default_factory=list,
        description="Questions the web page (GET /) offers to ask; none: each specialist's `examples`.",
    )


class CouncilConfig(StrictModel):
    specialists: list[SpecialistConfig] = Field(min_length=1, description="The council's members.")
    router: RouterConfig = Field(default_factory=RouterConfig, description="Routing and fan-out.")
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig, description="The document store.")
    aggregator: AggregatorConfig = Field(default_factory=AggregatorConfig, description="Trim and agree.")
    http: HttpConfig = Field(default_factory=HttpConfig, description="The HTTP API.")

    @field_validator("aggregator")
    @classmethod
    def _chairman(cls, v: AggregatorConfig, info: ValidationInfo) -> AggregatorConfig:
        chair = v.chairman
        specialists = info.data.get("specialists")
        if chair is None or specialists is None:  # bad specialists are their own error
            return v
        names = [s.name for s in specialists]
        problems: list[tuple[str, str]] = []
        if chair.member not in names:
            problems.append(("chairman.member", f"unknown specialist {chair.member!r}; known: {names}"))
        for i, name in enumerate(chair.fallback):
            if name not in names:
                problems.append((f"chairman.fallback.{i}", f"unknown specialist {name!r}; known: {names}"))
            elif name == chair.member or name in chair.fallback[:i]:
                problems.append((f"chairman.fallback.{i}", f"{name!r} is already the chairman or an earlier fallback"))
        if problems:
            raise PydanticCustomError(_NESTED, "{nested}", {"nested": problems})
        return v

    @model_validator(mode="before")
    @classmethod
    def _inherit_base_settings(cls, data: Any) -> Any:
        if isinstance(data, dict) and "specialists" in data:
            return {**data, "specialists": inherit_shared(data["specialists"])}
        return data

    @model_validator(mode="after")
    def _bases(self) -> CouncilConfig:
        problems = shared_problems(self.specialists)
        if problems:
            raise PydanticCustomError(_NESTED, "{nested}", {"nested": problems})
        return self

    @model_validator(mode="after")
    def _consistent(self) -> CouncilConfig:
        names = [s.name for s in self.specialists]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"specialist names must be unique, repeated: {dupes}")
        if "council" in names:
            raise ValueError("'council' is reserved for the whole council's model name")
        if self.router.quorum > len(names):
            raise ValueError(f"router.quorum={self.router.quorum} exceeds the {len(names)} specialists")
        return self

    def specialist(self, name: str) -> SpecialistConfig:
        for s in self.specialists:
            if s.name == name:
                return s
        raise KeyError(name)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "config") -> CouncilConfig:
        """Validate a dict read from a file or a Serve config; a failure raises ConfigError naming each bad field by
        its dotted path. Simulated members are refused here unless allowed (replicas re-validate with
        `model_validate`, which does not ask)."""
        config = validated(cls, data, source, ConfigError)
        refuse_simulated(((s.name, s.engine) for s in config.specialists), source)
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> CouncilConfig:
        """Load a YAML file; relative model paths are resolved against the file's folder."""
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text())
        except OSError as e:
            raise ConfigError(f"{p}: cannot read config: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        return cls.from_dict(resolve_paths(data, p.parent), source=str(p))
