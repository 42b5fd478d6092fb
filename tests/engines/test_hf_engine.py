"""The transformers engine on the demo's legal-1 checkpoint: today's answers, real streaming, abort, health."""

from __future__ import annotations

import asyncio

import pytest

from council.backends.engine import EngineDead, EngineRequest, Sampling
from council.backends.hf_engine import TransformersEngine
from council.config import SpecialistConfig
from tests.engines.prompts import demo_prompts

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_answers_equal_todays_specialist(hf: TransformersEngine) -> None:
    """The engine's greedy answers are exactly those of TransformersSpecialist.generate_texts (today's path)."""
    assert hf.ready and hf._model is not None
    prompts = demo_prompts(hf.tokens)
    outs = await hf.generate([EngineRequest(p, hf.default_sampling) for p in prompts])
    today = hf._model.generate_texts(prompts)
    assert [o.to_generation().text for o in outs] == [g.text for g in today]
    assert [o.completion_tokens for o in outs] == [g.completion_tokens for g in today]
    assert [o.prompt_tokens for o in outs] == [g.prompt_tokens for g in today]
    assert {o.finish_reason for o in outs} == {"stop"}
    assert any(o.text.strip() not in ("", "unknown") for o in outs)  # the checkpoint does answer some


async def test_stream_yields_tokens_as_they_come(hf: TransformersEngine) -> None:
    prompt = demo_prompts(hf.tokens)[0]
    req = EngineRequest(prompt, Sampling(max_tokens=12))  # no stop string: a multi-token answer
    deltas, running_at_first = [], None
    async for d in hf.stream(req):
        if running_at_first is None:
            running_at_first = hf.num_running()
        deltas.append(d)
    assert running_at_first == 1  # the first delta came while the request was still generating
    assert len([d for d in deltas if d.text]) > 1
    assert deltas[-1].finished and not any(d.finished for d in deltas[:-1])
    [out] = await hf.generate([EngineRequest(prompt, Sampling(max_tokens=12))])
    assert "".join(d.text for d in deltas) == out.text
    assert deltas[-1].completion_tokens == out.completion_tokens and deltas[-1].finish_reason == out.finish_reason
    assert hf.num_running() == 0


async def test_abort_stops_a_stream(hf: TransformersEngine) -> None:
    req = EngineRequest(demo_prompts(hf.tokens)[0], Sampling(max_tokens=150))
    last = None
    async for d in hf.stream(req):
        if last is None:
            assert hf.num_running() == 1
            await hf.abort(req.request_id)
        last = d
    assert last is not None and last.finish_reason == "abort" and last.completion_tokens < 150
    assert hf.num_running() == 0


async def test_cancelling_generate_aborts(hf: TransformersEngine) -> None:
    req = EngineRequest(demo_prompts(hf.tokens)[0], Sampling(max_tokens=150))
    task = asyncio.create_task(hf.generate([req]))
    while hf.num_running() == 0:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hf.num_running() == 0


async def test_max_tokens_one_gives_one_token(hf: TransformersEngine) -> None:
    [out] = await hf.generate([EngineRequest(demo_prompts(hf.tokens)[0], Sampling(max_tokens=1))])
    assert out.completion_tokens == 1 and out.finish_reason == "length" and out.text.strip()


async def test_health_and_shutdown(legal: SpecialistConfig) -> None:
    engine = TransformersEngine(legal)
    with pytest.raises(EngineDead, match="not started"):
        await engine.check_health()
    await engine.start()
    await engine.check_health()
    assert engine.info()["device"] == "cpu" and engine.context_window == 192
    await engine.shutdown()
    with pytest.raises(EngineDead, match="shut down"):
        await engine.check_health()
    with pytest.raises(EngineDead):
        await engine.generate([EngineRequest("x", Sampling(max_tokens=1))])
