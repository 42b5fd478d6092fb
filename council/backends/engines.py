"""Which engine a member runs on: the factory over the engine kinds (kept apart from the protocol, which the
engines themselves import)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from council.backends.engine import ENGINE_KINDS, Engine
from council.config import SpecialistConfig
from council.errors import ConfigError


def build_engine(
    config: SpecialistConfig, kind: str = "transformers", options: Mapping[str, Any] | None = None
) -> Engine:
    """The engine `kind` for a member (not started). `options` are that engine's `engine_options`;
    unknown or bad ones raise ConfigError naming the field."""
    if kind == "transformers":
        from council.backends.hf_engine import TransformersEngine

        return TransformersEngine(config, options)
    if kind == "vllm":
        from council.backends.vllm_engine import VLLMEngine

        return VLLMEngine(config, options)
    if kind == "openai":
        from council.backends.openai_engine import OpenAIEngine

        return OpenAIEngine(config, options)
    if kind == "simulated":
        from council.backends.simulated import SimulatedEngine

        return SimulatedEngine(config, options)
    raise ConfigError(f"specialist {config.name}: engine: unknown engine {kind!r}; known: {list(ENGINE_KINDS)}")
