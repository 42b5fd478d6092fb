"""Which engine a member runs on: the factory over the engine kinds (kept apart from the protocol, which the
engines themselves import)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from council.backends.engine import ENGINE_KINDS, Engine
from council.config import SpecialistConfig
from council.errors import ConfigError


def build_engine(
    config: SpecialistConfig,
    kind: str = "transformers",
    options: Mapping[str, Any] | None = None,
    adapters: Mapping[str, str] | None = None,
    *,
    load_adapters: bool = True,
    slots: int | None = None,
) -> Engine:
    """The engine `kind` for a member (not started). `options` are that engine's `engine_options`;
    unknown or bad ones raise ConfigError naming the field. `adapters` (name -> LoRA folder): the members sharing
    this base, `load_adapters` and `slots` as TransformersEngine / VLLMEngine take them."""
    if kind == "transformers":
        from council.backends.hf_engine import TransformersEngine

        return TransformersEngine(config, options, adapters, load_adapters=load_adapters)
    if kind == "vllm":
        from council.backends.vllm_engine import VLLMEngine

        return VLLMEngine(config, options, adapters, load_adapters=load_adapters, slots=slots)
    if kind == "openai":
        from council.backends.openai_engine import OpenAIEngine

        if adapters:
            raise ConfigError(f"specialist {config.name}: base: a remote member cannot hold adapters")
        return OpenAIEngine(config, options)
    if kind == "simulated":
        from council.backends.simulated import SimulatedEngine

        return SimulatedEngine(config, options)
    raise ConfigError(f"specialist {config.name}: engine: unknown engine {kind!r}; known: {list(ENGINE_KINDS)}")
