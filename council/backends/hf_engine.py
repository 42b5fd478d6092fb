"""The transformers engine: the in-process Hugging Face model of `council.backends.transformers` as an `Engine`.

A batch of requests with the same sampling settings is one padded `generate` pass (callers batch in front of
it: `batches_itself` is False). Streaming feeds each new token from the generating thread into the event
loop; `abort` stops a request at its next decoding step (a per-row stopping criterion).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
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
from council.backends.transformers import cut_at_stop
from council.config import SpecialistConfig
from council.engine_options import TransformersOptions
from council.errors import InvalidRequest

if TYPE_CHECKING:
    from council.backends.tokens import TokenizerCounter
    from council.backends.transformers import TransformersSpecialist

log = logging.getLogger(__name__)

__all__ = ["TransformersEngine", "TransformersOptions"]


def _abort_criteria(flags: Sequence[threading.Event]) -> Any:
    """A stopping criterion that ends row i once flags[i] is set (checked after every decoding step)."""
    import torch
    from transformers import StoppingCriteria

    class AbortCriteria(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.tensor([f.is_set() for f in flags], dtype=torch.bool, device=input_ids.device)

    return AbortCriteria()


class _LoopStreamer:
    """A transformers streamer (put/end) that hands each new token to an asyncio queue in the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[list[int] | None]) -> None:
        self._loop = loop
        self._queue = queue
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt itself
            self._prompt_seen = True
            return
        self._loop.call_soon_threadsafe(self._queue.put_nowait, [int(x) for x in value.reshape(-1).tolist()])

    def end(self) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, None)


class TransformersEngine(ConfiguredEngine):
    """`Engine` over a `TransformersSpecialist` (HF `generate`, left-padded batches)."""

    kind = "transformers"
    batches_itself = False

    def __init__(
        self,
        config: SpecialistConfig,
        options: Mapping[str, Any] | None = None,
        adapters: Mapping[str, str] | None = None,
        *,
        load_adapters: bool = True,
    ) -> None:
        """`adapters`: name -> PEFT LoRA folder of the members sharing this (unmerged) base: each request runs
        under its own (`EngineRequest.adapter`). `load_adapters`: load them all at start; False: one by one with
        `add_adapter` (a multiplexed replica)."""
        self.config = config
        self.name = config.name
        self.adapter_paths = dict(adapters or {})
        self._preload = load_adapters
        self.options = parse_options(TransformersOptions, options, config.name)
        self.stuck_after_s = self.options.stuck_after_s or config.deployment.stuck_after_s
        self._model: TransformersSpecialist | None = None
        self._counter: TokenizerCounter | None = None
        self._closed = False
        self._flags: dict[str, threading.Event] = {}  # request id -> abort flag, for requests in flight
        self._passes: dict[int, float] = {}  # forward passes in flight: ticket -> start (monotonic)
        self._passes_lock = threading.Lock()
        self._tickets = itertools.count()
        self._stop_criteria: dict[tuple[str, ...], Any] = {}
        self._suspect: str | None = None  # set by a failed pass: check_health tries the model again
        self.cpu_ms = 0  # CPU milliseconds the forward-pass threads spent in `generate` (SpecialistServer.stats)

    @classmethod
    def from_specialist(cls, specialist: TransformersSpecialist, options: Mapping[str, Any] | None = None) -> Any:
        """An engine (already started) over a loaded model."""
        engine = cls(specialist.config, options)
        engine._model = specialist
        return engine

    # -- life cycle -------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._model is not None and not self._closed

    async def start(self) -> None:
        await asyncio.to_thread(self.load)

    def load(self) -> None:
        """`start` in the calling thread (a constructor that must return with the model loaded)."""
        if self._closed:
            raise EngineDead(f"engine {self.name} was shut down")
        if self._model is None:
            from council.backends.transformers import TransformersSpecialist

            model = TransformersSpecialist(self.config)
            for name, path in self.adapter_paths.items() if self._preload else ():
                model.load_adapter(name, path)
            self._model = model

    # -- the members' adapters --------------------------------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        """The adapters loaded right now."""
        return self._model.adapters if self._model is not None else []

    async def add_adapter(self, name: str) -> None:
        """Load the adapter of member `name` (one of `adapter_paths`); a no-op when it is loaded."""
        model = self._live()
        if name not in self.adapter_paths:
            raise InvalidRequest(f"engine {self.name}: no adapter {name!r}; known: {sorted(self.adapter_paths)}")
        if name not in model.adapters:
            await asyncio.to_thread(model.load_adapter, name, self.adapter_paths[name])

    async def remove_adapter(self, name: str) -> None:
        """Unload the adapter of member `name` (after the pass running now, if any)."""
        model = self._live()
        if name in model.adapters:
            await asyncio.to_thread(model.delete_adapter, name)

    async def shutdown(self) -> None:
        self._closed = True
        for flag in self._flags.values():
            flag.set()
        self._model = None

    # -- what the council reads -------------------------------------------------------------------------------

    @property
    def tokens(self) -> TokenizerCounter:
        # Once loaded, the model is its own counter; before start, the tokenizer alone (no weights).
        return self._model if self._model is not None else super().tokens

    def info(self) -> dict[str, Any]:
        m = self._model
        return {
            "engine": self.kind,
            "name": self.name,
            "model": self.config.model,
            "adapters": self.adapters,
            "device": str(m.device) if m else None,
            "dtype": str(m.dtype) if m else None,
            "context_window": self.context_window,
            "max_new_tokens": self.tokens.max_new_tokens,
        }

    def num_running(self) -> int:
        return len(self._flags)

    # -- requests ---------------------------------------------------------------------------------------------

    async def generate(self, requests: Sequence[EngineRequest]) -> list[EngineOutput]:
        """One `generate` pass per group of requests with equal sampling settings, in a worker thread; requests for
        different adapters of the base share it (PEFT's mixed-batch inference)."""
        self._live()
        groups: dict[Sampling, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.sampling, []).append(i)
        outputs: list[EngineOutput | None] = [None] * len(requests)
        flags = self._register(requests)
        try:
            for sampling, idxs in groups.items():
                batch = [requests[i] for i in idxs]
                done = await asyncio.to_thread(self._pass, batch, sampling, [flags[i] for i in idxs], None)
                for i, out in zip(idxs, done, strict=True):
                    outputs[i] = out
        finally:
            self._unregister(requests)
        return [o for o in outputs if o is not None]

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        self._live()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[int] | None] = asyncio.Queue()
        [flag] = self._register([request])
        task = asyncio.ensure_future(
            asyncio.to_thread(self._pass, [request], request.sampling, [flag], _LoopStreamer(loop, queue))
        )
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # an abandoned stream's error is not lost
        emitted, new_ids, finished = "", [], False
        hold = max((len(s) for s in request.sampling.stop), default=1) - 1  # a stop string may be forming
        try:
            while (item := await queue.get()) is not None:
                new_ids.extend(item)
                text = self._text(new_ids, request.sampling.stop)
                ready = text[: len(text) - hold] if hold else text
                if len(ready) > len(emitted) and ready.startswith(emitted):
                    yield EngineDelta(request.request_id, ready[len(emitted) :], len(new_ids))
                    emitted = ready
            [out] = await task
            rest = out.text[len(emitted) :] if out.text.startswith(emitted) else ""
            finished = True
            yield EngineDelta(
                request.request_id, rest, out.completion_tokens, out.finish_reason, prompt_tokens=out.prompt_tokens
            )
        finally:
            if not finished:
                flag.set()  # the consumer went away: stop decoding at the next step
            self._unregister([request])

    async def abort(self, request_id: str) -> None:
        flag = self._flags.get(request_id)
        if flag is not None:
            flag.set()

    async def check_health(self) -> None:
        """Fails when shut down, when a forward pass has run past `stuck_after_s` (a wedged model), or when a
        pass failed and a one-token generation fails too."""
        if not self.ready:
            raise EngineDead(f"engine {self.name} is {'shut down' if self._closed else 'not started'}")
        with self._passes_lock:
            oldest = min(self._passes.values(), default=None)
        if oldest is not None and (stuck := time.monotonic() - oldest) > self.stuck_after_s:
            raise EngineDead(f"engine {self.name}: a forward pass has run {stuck:.0f}s (> {self.stuck_after_s:g}s)")
        if self._suspect is None:
            return
        probe = EngineRequest("ok", Sampling(max_tokens=1))
        try:
            await self.generate([probe])
        except Exception as e:
            raise EngineDead(f"engine {self.name} is not usable: {self._suspect} (probe: {e})") from e
        self._suspect = None

    # -- internals --------------------------------------------------------------------------------------------

    def _live(self) -> TransformersSpecialist:
        if self._model is None or self._closed:
            raise EngineDead(f"engine {self.name} is {'shut down' if self._closed else 'not started'}")
        return self._model

    def _register(self, requests: Sequence[EngineRequest]) -> list[threading.Event]:
        flags = []
        for r in requests:
            if r.request_id in self._flags:
                raise InvalidRequest(f"request id {r.request_id!r} is already running")
            flags.append(self._flags.setdefault(r.request_id, threading.Event()))
        return flags

    def _unregister(self, requests: Sequence[EngineRequest]) -> None:
        for r in requests:
            self._flags.pop(r.request_id, None)

    def _stops(self, stop: tuple[str, ...]) -> list[Any]:
        # Built once per set of stop strings: StopStringCriteria preprocesses the whole vocabulary.
        if not stop:
            return []
        if stop not in self._stop_criteria:
            from transformers import StopStringCriteria

            self._stop_criteria[stop] = StopStringCriteria(self._live().tokenizer, list(stop))
        return [self._stop_criteria[stop]]

    @staticmethod
    def _sampling_kwargs(s: Sampling) -> dict[str, Any]:
        # ignore_eos: min_new_tokens keeps eos from being chosen before max_tokens.
        extra = {"min_new_tokens": s.max_tokens} if s.ignore_eos else {}
        if s.greedy:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, **extra}
        return {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p, **extra}

    def _pass(
        self, requests: Sequence[EngineRequest], sampling: Sampling, flags: Sequence[threading.Event], streamer: Any
    ) -> list[EngineOutput]:
        """One forward `generate` for requests sharing `sampling` (runs in a worker thread)."""
        from transformers import StoppingCriteriaList

        model = self._live()
        start = time.perf_counter()
        ids = [fit_prompt(model.encode_prompt(r.prompt), model.context_window, sampling.max_tokens) for r in requests]
        criteria = StoppingCriteriaList([*self._stops(sampling.stop), _abort_criteria(flags)])
        ticket = next(self._tickets)
        with self._passes_lock:
            self._passes[ticket] = time.monotonic()
        try:
            if sampling.seed is not None and not sampling.greedy:
                import torch

                torch.manual_seed(sampling.seed)  # one seed per pass: requests sharing a pass share the stream
            cpu = time.thread_time()
            rows = model._run(
                ids,
                sampling.max_tokens,
                stopping=criteria,
                sampling=self._sampling_kwargs(sampling),
                streamer=streamer,
                adapters=[r.adapter for r in requests],
            )
            self.cpu_ms += round((time.thread_time() - cpu) * 1000)
        except Exception as e:
            self._suspect = f"{type(e).__name__}: {e}"
            raise
        finally:
            with self._passes_lock:
                del self._passes[ticket]
        latency = time.perf_counter() - start
        return [
            self._finish(r, row, lp, len(p), sampling, flag.is_set(), latency)
            for r, row, lp, p, flag in zip(requests, rows.ids, rows.logprobs, ids, flags, strict=True)
        ]

    def _ended(self, new_ids: Sequence[int]) -> int:
        return self._live().ended_at(new_ids)

    def _text(self, new_ids: Sequence[int], stop: tuple[str, ...]) -> str:
        n = self._ended(new_ids)
        text = self._live().tokenizer.decode(list(new_ids[:n]), skip_special_tokens=True)
        return cut_at_stop(text, stop)

    def _finish(
        self,
        request: EngineRequest,
        new_ids: list[int],
        logprobs: list[float],
        prompt_tokens: int,
        sampling: Sampling,
        aborted: bool,
        latency: float,
    ) -> EngineOutput:
        n = self._ended(new_ids)
        text = self._live().tokenizer.decode(new_ids[:n], skip_special_tokens=True)
        cut = cut_at_stop(text, sampling.stop)
        reason: FinishReason
        if aborted:
            reason = "abort"
        elif n < len(new_ids) or len(cut) < len(text) or n < sampling.max_tokens:
            reason = "stop"
        else:
            reason = "length"
        return EngineOutput(
            request.request_id, cut, prompt_tokens, n, reason, latency, confidence=sequence_confidence(logprobs, n)
        )


if TYPE_CHECKING:  # mypy checks that the class implements the Engine protocol

    def _implements_engine(engine: TransformersEngine) -> Engine:
        return engine
