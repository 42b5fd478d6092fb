"""The `engine_options` of each engine kind: pydantic only, so that the config can check them when it loads.

The engines (`council.backends.hf_engine`, `council.backends.vllm_engine`) read the same models; a member's
`engine_options` that its engine does not take are a ConfigError naming `specialists.N.engine_options.<field>`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ENGINE_KINDS", "ENGINE_OPTIONS", "TransformersOptions", "VLLMOptions"]


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


# The engine kinds a member may name (`engine:` in its config) and the options model of each.
ENGINE_OPTIONS: dict[str, type[BaseModel]] = {"transformers": TransformersOptions, "vllm": VLLMOptions}
ENGINE_KINDS = tuple(ENGINE_OPTIONS)
