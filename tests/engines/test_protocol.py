"""The Engine protocol with a fake engine (no model, no Ray), the fault wrapper, and options validation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from council.backends.engine import (
    Engine,
    EngineDead,
    EngineDelta,
    EngineOutput,
    EngineRequest,
    Sampling,
    fit_prompt,
    render_chat,
)
from council.backends.engines import build_engine
from council.backends.faulty import Faults, FaultyEngine
from council.backends.hf_engine import TransformersEngine
from council.backends.tokens import TokenizerCounter, load_tokenizer_counter
from council.backends.vllm_engine import VLLMEngine
from council.config import SpecialistConfig
from council.errors import ConfigError, InvalidRequest


class FakeEngine:
    """Answers with the prompt's words reversed, one word per step (`step_s` apart); implements `Engine`."""

    kind = "fake"
    batches_itself = True

    def __init__(self, config: SpecialistConfig, step_s: float = 0.01) -> None:
        self.name = config.name
        self.config = config
        self.step_s = step_s
        self._tokens = load_tokenizer_counter(config)
        self._started = False
        self._dead = False
        self._running: dict[str, asyncio.Event] = {}

    @property
    def ready(self) -> bool:
        return self._started and not self._dead

    @property
    def tokens(self) -> TokenizerCounter:
        return self._tokens

    @property
    def context_window(self) -> int:
        return self._tokens.context_window

    @property
    def default_sampling(self) -> Sampling:
        return Sampling.from_generation(self.config.generation)

    async def start(self) -> None:
        self._started = True

    async def generate(self, requests: Sequence[EngineRequest]) -> list[EngineOutput]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, request: EngineRequest) -> EngineOutput:
        t0 = time.perf_counter()
        text, n, reason, prompt = "", 0, None, 0
        async for d in self.stream(request):
            text, n, reason, prompt = text + d.text, d.completion_tokens, d.finish_reason, d.prompt_tokens or 0
        assert reason is not None
        return EngineOutput(request.request_id, text, prompt, n, reason, time.perf_counter() - t0)

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        if not self.ready:
            raise EngineDead("not ready")
        aborted = self._running.setdefault(request.request_id, asyncio.Event())
        words = request.prompt.split()[::-1][: request.sampling.max_tokens]
        try:
            for i, w in enumerate(words):
                await asyncio.sleep(self.step_s)
                if aborted.is_set():
                    yield EngineDelta(request.request_id, "", i, "abort", self._tokens.count(request.prompt))
                    return
                yield EngineDelta(request.request_id, (" " if i else "") + w, i + 1)
            reason = "length" if len(words) == request.sampling.max_tokens else "stop"
            yield EngineDelta(request.request_id, "", len(words), reason, self._tokens.count(request.prompt))
        finally:
            self._running.pop(request.request_id, None)

    async def abort(self, request_id: str) -> None:
        if request_id in self._running:
            self._running[request_id].set()

    def num_running(self) -> int:
        return len(self._running)

    async def check_health(self) -> None:
        if not self.ready:
            raise EngineDead("fake engine is dead")

    async def shutdown(self) -> None:
        self._dead = True

    def info(self) -> dict[str, Any]:
        return {"engine": self.kind, "name": self.name}


@pytest.fixture
async def fake(legal: SpecialistConfig) -> AsyncIterator[FakeEngine]:
    engine = FakeEngine(legal)
    await engine.start()
    yield engine
    await engine.shutdown()


def test_every_engine_implements_the_protocol(legal: SpecialistConfig) -> None:
    # Constructing an engine loads nothing (no weights, no vLLM import): cheap to check here.
    for engine in (FakeEngine(legal), TransformersEngine(legal), VLLMEngine(legal), FaultyEngine(FakeEngine(legal))):
        assert isinstance(engine, Engine), type(engine).__name__
    assert TransformersEngine(legal).batches_itself is False  # @serve.batch in front of it
    assert VLLMEngine(legal).batches_itself is True  # continuous batching inside: nothing in front


def test_sampling_from_a_members_generation_config(legal: SpecialistConfig) -> None:
    s = Sampling.from_generation(legal.generation)
    assert (s.max_tokens, s.greedy, s.stop) == (8, True, ("\n",))
    s2 = Sampling.from_generation(legal.generation, max_tokens=1, temperature=0.7, seed=3, stop=["."])
    assert (s2.max_tokens, s2.temperature, s2.seed, s2.stop, s2.greedy) == (1, 0.7, 3, (".",), False)
    with pytest.raises(ValueError, match="max_tokens"):
        Sampling(max_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(max_tokens=1, top_p=0)


def test_output_to_generation_strips() -> None:
    g = EngineOutput("r", " greta sato ", 30, 3, "stop", 0.1).to_generation()
    assert (g.text, g.prompt_tokens, g.completion_tokens) == ("greta sato", 30, 3)


async def test_fake_stream_and_generate_agree(fake: FakeEngine) -> None:
    req = EngineRequest("one two three four", Sampling(max_tokens=3))
    deltas = [d async for d in fake.stream(req)]
    assert [d.text for d in deltas] == ["four", " three", " two", ""]
    assert deltas[-1].finished and deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == 3
    [out] = await fake.generate([EngineRequest(req.prompt, req.sampling)])
    assert out.text == "".join(d.text for d in deltas) and out.finish_reason == "length"
    assert fake.num_running() == 0


async def test_fake_abort_ends_the_stream(fake: FakeEngine) -> None:
    req = EngineRequest(" ".join(f"w{i}" for i in range(50)), Sampling(max_tokens=50))
    seen = []
    async for d in fake.stream(req):
        seen.append(d)
        if len(seen) == 2:
            assert fake.num_running() == 1
            await fake.abort(req.request_id)
    assert seen[-1].finish_reason == "abort" and len(seen) == 3
    assert fake.num_running() == 0
    await fake.abort("no-such-request")  # unknown ids are a no-op


async def test_fake_health_fails_once_dead(fake: FakeEngine) -> None:
    await fake.check_health()
    await fake.shutdown()
    with pytest.raises(EngineDead):
        await fake.check_health()


def test_build_engine_refuses_an_unknown_kind(legal: SpecialistConfig) -> None:
    with pytest.raises(ConfigError, match="engine: unknown engine 'tgi'"):
        build_engine(legal, "tgi")


@pytest.mark.parametrize(
    ("kind", "options", "field"),
    [
        ("vllm", {"kv_cache_gb": 1}, "engine_options.kv_cache_gb"),  # a typo: unknown options are refused
        ("vllm", {"kv_cache_gib": 0}, "engine_options.kv_cache_gib"),
        ("vllm", {"max_num_seqs": "many"}, "engine_options.max_num_seqs"),
        ("vllm", {"max_model_len": 64}, "engine_options.max_model_len"),  # the member's context_window is that
        ("vllm", {"gpu_memory_utilization": 1.5}, "engine_options.gpu_memory_utilization"),
        ("transformers", {"stuck_after": 5}, "engine_options.stuck_after"),
    ],
)
def test_bad_engine_options_name_the_field(legal: SpecialistConfig, kind: str, options: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_engine(legal, kind, options)
    assert field in str(err.value) and "legal-1" in str(err.value)


def test_render_chat_without_a_chat_template(legal: SpecialistConfig) -> None:
    tokens = load_tokenizer_counter(legal)
    assert not tokens.uses_chat_template
    text = render_chat(tokens, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "who ?"}])
    assert text == "system : be brief\nuser : who ?\nassistant :"


def test_fit_prompt_cuts_from_the_left() -> None:
    assert fit_prompt([1, 2, 3, 4], 6, 3) == [2, 3, 4]
    assert fit_prompt([1, 2], 6, 3) == [1, 2]
    with pytest.raises(InvalidRequest, match="max_tokens=6"):
        fit_prompt([1], 6, 6)


async def test_faulty_delay_and_error(fake: FakeEngine) -> None:
    req = EngineRequest("a b", Sampling(max_tokens=2))
    slow = FaultyEngine(fake, {"delay_s": 0.2})
    t0 = time.perf_counter()
    [out] = await slow.generate([req])
    assert time.perf_counter() - t0 >= 0.2 and out.text == "b a"
    failing = FaultyEngine(fake, Faults(error="boom"))
    with pytest.raises(RuntimeError, match="boom"):
        await failing.generate([req])
    with pytest.raises(RuntimeError, match="boom"):
        [d async for d in failing.stream(req)]
    assert failing.injected["failed"] == 2
    await failing.check_health()  # a failing request is not a dead engine
    assert failing.info()["faults"] == {"error": "boom"}


async def test_faulty_hang_fails_health_while_wedged(fake: FakeEngine) -> None:
    wedged = FaultyEngine(fake, {"hang_s": 1.0, "stuck_after_s": 0.3})
    task = asyncio.create_task(wedged.generate([EngineRequest("a b", Sampling(max_tokens=2))]))
    await asyncio.sleep(0.5)
    with pytest.raises(EngineDead, match="forward pass has run"):
        await wedged.check_health()
    [out] = await task
    assert out.text == "b a"
    await wedged.check_health()  # the hang is over
    with pytest.raises(EngineDead, match="unhealthy"):
        await FaultyEngine(fake, {"unhealthy": True}).check_health()


async def test_engine_specialist_is_the_councils_specialist(fake: FakeEngine) -> None:
    from council.backends.engine import EngineSpecialist
    from council.protocols import Specialist

    member = EngineSpecialist(fake)
    assert isinstance(member, Specialist) and member.name == "legal-1"
    req = member.request("who ?", ["p"], max_tokens=2, stop=["x"], temperature=None)
    assert req.prompt == fake.tokens.render_prompt("who ?", ["p"])
    assert (req.sampling.max_tokens, req.sampling.stop, req.sampling.greedy) == (2, ("x",), True)
    g = await member.generate("who ?", [])
    prompt = fake.tokens.render_prompt("who ?", [])
    assert g.text == " ".join(prompt.split()[::-1][:8])  # the fake's answer, with the member's 8 tokens
    assert g.completion_tokens == 8
    batch = await member.generate_batch([("who ?", []), ("what ?", ["p"])])
    assert len(batch) == 2


def test_engine_modules_import_no_vllm_torch_or_ray() -> None:
    """vLLM (and torch) load only when an engine starts: the package works without vllm installed."""
    import subprocess
    import sys

    mods = "council.backends.engine, council.backends.hf_engine, council.backends.vllm_engine, council.backends.faulty"
    code = f"import {mods}, sys; print(sorted(m for m in ('vllm', 'torch', 'ray', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
