"""The `engine_options` of each engine kind: pydantic only, so that the config can check them when it loads.

The engines (`council.backends.hf_engine`, `council.backends.vllm_engine`) read the same models; a member's
`engine_options` that its engine does not take are a ConfigError naming `specialists.N.engine_options.<field>`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from council.errors import ConfigError

__all__ = [
    "ALLOW_SIMULATED_ENV",
    "ENGINE_KINDS",
    "ENGINE_OPTIONS",
    "NO_LOCAL_MODEL",
    "OpenAIOptions",
    "SimulatedOptions",
    "TransformersOptions",
    "VLLMOptions",
    "refuse_simulated",
]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TransformersOptions(BaseModel):
    """`engine_options` of the transformers engine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stuck_after_s: float | None = Field(
        None, gt=0, description="A forward pass running longer fails check_health (default: deployment.stuck_after_s)."
    )


class VLLMOptions(BaseModel):
    """`engine_options` of the vLLM engine. Anything else of `AsyncEngineArgs` goes in `engine_args`.

    vLLM's `max_model_len` is the member's `context_window` (the budget trims to it), `dtype` its `dtype` and
    `model` its `model`: they are set in the member's config, not here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kv_cache_gib: int = Field(1, ge=1, description="CPU only: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE).")
    cpu_threads_bind: str = Field(
        "nobind",
        min_length=1,
        description="CPU only: VLLM_CPU_OMP_THREADS_BIND: 'nobind' (with omp_num_threads), 'auto', or core ids "
        "such as '0-3'.",
    )
    omp_num_threads: int | None = Field(
        1, ge=1, description="CPU only: OMP_NUM_THREADS of the engine's worker (None: inherit this process's)."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPU only: share of the GPU's memory.")
    enforce_eager: bool | None = Field(
        None, description="No compilation / CUDA graphs; default: True on CPU (compiling costs minutes), else False."
    )
    max_num_seqs: int | None = Field(None, ge=1, description="Most sequences decoded at once (vLLM's default).")
    max_num_batched_tokens: int | None = Field(None, ge=1, description="Most tokens per scheduler step.")
    enable_prefix_caching: bool | None = Field(None, description="Reuse the KV cache of shared prompt prefixes.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine spans.")
    seed: int = Field(0, description="The engine's base seed (requests may set their own).")
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Further AsyncEngineArgs fields, passed through as given (names checked when the engine starts).",
    )


class OpenAIOptions(BaseModel):
    """`engine_options` of the openai engine: any OpenAI-compatible chat endpoint.

    The member's `model` is the name the endpoint serves; its `tokenizer` and `context_window` size its budget;
    `generation` (max_new_tokens, temperature, top_p, stop) is sent with every request. The API key is never
    written here: it is read, when the member's replica starts, from the environment variable `api_key_env` names.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(
        description="The endpoint's OpenAI API root, e.g. http://127.0.0.1:8000/v1 (vllm serve), "
        "http://127.0.0.1:11434/v1 (Ollama), https://openrouter.ai/api/v1."
    )
    api_key_env: str | None = Field(
        None,
        description="NAME of the environment variable that holds the API key (set it where the replicas run). "
        "None: the endpoint takes no key (a local vllm serve or Ollama).",
    )
    timeout_s: float = Field(60.0, gt=0, description="Longest one attempt may take (the member timeout still cuts).")
    max_retries: int = Field(
        2, ge=0, le=10, description="Retries after a 408/409/429/5xx answer or a connection error or timeout."
    )
    backoff_s: float = Field(0.5, gt=0, description="First retry's wait; doubled each retry, with jitter.")
    max_backoff_s: float = Field(
        20.0,
        gt=0,
        description="Longest wait before a retry. A Retry-After the endpoint sends is honoured up to this; a longer "
        "one fails the request at once, saying so.",
    )
    max_concurrency: int = Field(8, ge=1, description="Requests this member's replica has in flight at the endpoint.")

    api_key: None = Field(None, exclude=True, description="Refused: a key is never written into a config.")

    @field_validator("api_key", mode="before")
    @classmethod
    def _no_key(cls, v: Any) -> None:
        if v is not None:
            raise ValueError(
                "never write a key into a config: put it in an environment variable and name that variable in "
                "api_key_env"
            )
        return None

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {v!r}")
        return v.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError("api_key_env is the NAME of an environment variable (letters, digits, _), not a key")
        return v


class SimulatedOptions(BaseModel):
    """`engine_options` of the simulated engine (`council.backends.simulated`): an accelerator-like member for
    benchmarks and tests, answering after `base_s + per_request_s * batch + per_token_s * tokens` seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_s: float = Field(0.2, ge=0, description="Seconds every batch takes, whatever its size (a forward pass).")
    per_request_s: float = Field(0.0, ge=0, description="Seconds each request of a batch adds.")
    per_token_s: float = Field(0.0, ge=0, description="Seconds each generated token adds (the batch's longest).")
    max_batch: int = Field(32, ge=1, le=4096, description="Most requests one batch takes; the rest wait.")
    completion_tokens: int | None = Field(
        None, ge=1, description="Tokens each answer counts as generated (default: the request's max_tokens)."
    )
    answer: str | None = Field(None, description="Every answer's text (default: a word drawn from the prompt's hash).")
    per_member_answers: bool = Field(False, description="Draw each member's answer with its name: they disagree.")


ALLOW_SIMULATED_ENV = "COUNCIL_ALLOW_SIMULATED_ENGINE"
# Engine kinds whose replica holds no model of its own (a remote endpoint; the simulated stand-in): the ingress embeds
# their answers, and the in-process council (council.local) cannot run them.
NO_LOCAL_MODEL = ("openai", "simulated")


def refuse_simulated(members: Iterable[tuple[str, str]], source: str) -> None:
    """Refuse (name, engine) members on the simulated engine unless ALLOW_SIMULATED_ENV=1: it answers without a
    model, and a council YAML or Serve app that names it by mistake would serve made-up answers."""
    fake = [name for name, engine in members if engine == "simulated"]
    if fake and os.environ.get(ALLOW_SIMULATED_ENV) != "1":
        raise ConfigError(
            f"{source}: specialists {fake}: engine: simulated answers without a model (benchmarks and tests only); "
            f"set {ALLOW_SIMULATED_ENV}=1 to allow it"
        )


# The engine kinds a member may name (`engine:` in its config) and the options model of each.
ENGINE_OPTIONS: dict[str, type[BaseModel]] = {
    "transformers": TransformersOptions,
    "vllm": VLLMOptions,
    "openai": OpenAIOptions,
    "simulated": SimulatedOptions,
}
ENGINE_KINDS = tuple(ENGINE_OPTIONS)
