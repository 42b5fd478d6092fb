"""The simulated engine: accelerator-like members for benchmarks (batch time formula, no CPU held, batching,
deterministic answers, abort), its options, and the refusal of a council YAML or Serve app that names it."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from council.backends.engine import Engine, EngineRequest, Sampling
from council.backends.engines import build_engine
from council.backends.simulated import SimulatedEngine
from council.config import CouncilConfig, SpecialistConfig
from council.engine_options import ALLOW_SIMULATED_ENV
from council.errors import ConfigError

DEMO = Path(__file__).resolve().parents[2] / "council" / "demo"


def simulated(legal: SpecialistConfig, name: str = "sim", **options: object) -> SpecialistConfig:
    return legal.model_copy(update={"name": name, "engine": "simulated", "engine_options": dict(options)})


@pytest_asyncio.fixture
async def sim(legal: SpecialistConfig) -> AsyncIterator[SimulatedEngine]:
    engine = SimulatedEngine(simulated(legal, base_s=0.3, per_request_s=0.001, max_batch=32))
    await engine.start()
    yield engine
    await engine.shutdown()


def req(prompt: str, max_tokens: int = 8) -> EngineRequest:
    return EngineRequest(prompt, Sampling(max_tokens=max_tokens))


def test_it_is_an_engine_that_batches_itself(legal: SpecialistConfig) -> None:
    engine = build_engine(simulated(legal), "simulated", {"base_s": 0.1})
    assert isinstance(engine, Engine) and isinstance(engine, SimulatedEngine)
    assert engine.batches_itself is True
    assert engine.batch_time_s(4, 10) == pytest.approx(0.1)
    e2 = SimulatedEngine(simulated(legal, base_s=0.05, per_request_s=0.01, per_token_s=0.002))
    assert e2.batch_time_s(4, 10) == pytest.approx(0.05 + 0.04 + 0.02)


async def test_a_batch_takes_its_time_without_holding_the_cpu(sim: SimulatedEngine) -> None:
    cpu0, t0 = time.process_time(), time.perf_counter()
    outs = await sim.generate([req(f"question {i}") for i in range(40)])
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    # 40 requests, at most 32 per batch: two batches, each 0.3 s + 1 ms per request.
    assert sim.batches == [32, 8]
    assert wall >= sim.batch_time_s(32, 8) + sim.batch_time_s(8, 8) - 0.01
    assert cpu < 0.25 * wall, f"{cpu:.3f} s of CPU in {wall:.3f} s: the engine held the CPU while 'generating'"
    assert all(o.finish_reason == "stop" and o.completion_tokens == 8 and o.text for o in outs)
    assert sim.num_running() == 0


async def test_requests_arriving_together_share_a_batch(sim: SimulatedEngine) -> None:
    t0 = time.perf_counter()
    outs = await asyncio.gather(*(sim.generate([req(f"q{i}")]) for i in range(10)))
    wall = time.perf_counter() - t0
    assert sim.batches == [10] and len(outs) == 10
    assert wall < 2 * sim.batch_time_s(10, 8), "ten concurrent callers were not batched together"


async def test_answers_are_deterministic_and_agree_across_members(legal: SpecialistConfig) -> None:
    a, b = SimulatedEngine(simulated(legal, "a", base_s=0)), SimulatedEngine(simulated(legal, "b", base_s=0))
    c = SimulatedEngine(simulated(legal, "c", base_s=0, per_member_answers=True))
    fixed = SimulatedEngine(simulated(legal, "d", base_s=0, answer="forty two", completion_tokens=3))
    prompts = [f"what is the penalty under act {i} ?" for i in range(20)]
    for e in (a, b, c, fixed):
        await e.start()
    try:
        out_a = [o.text for o in await a.generate([req(p) for p in prompts])]
        out_b = [o.text for o in await b.generate([req(p) for p in prompts])]
        out_c = [o.text for o in await c.generate([req(p) for p in prompts])]
        assert out_a == out_b and out_a == [o.text for o in await a.generate([req(p) for p in prompts])]
        assert len(set(out_a)) > 1  # the question picks the answer
        assert sum(x != y for x, y in zip(out_a, out_c, strict=True)) > 0  # per-member answers disagree
        [f] = await fixed.generate([req("anything", max_tokens=8)])
        assert (f.text, f.completion_tokens) == ("forty two", 3)
    finally:
        for e in (a, b, c, fixed):
            await e.shutdown()


async def test_abort_ends_a_waiting_request_and_stream_yields_the_answer(sim: SimulatedEngine) -> None:
    slow = asyncio.ensure_future(sim.generate([req("first")]))
    await asyncio.sleep(0.05)  # "first" is on the device; the next one waits for the next batch
    waiting = asyncio.ensure_future(sim.generate([req("second")]))
    await asyncio.sleep(0.01)
    rid = next(r for r, p in sim._running.items() if p.request.prompt == "second")
    await sim.abort(rid)
    [out] = await waiting
    assert (out.finish_reason, out.text, out.completion_tokens) == ("abort", "", 0)
    assert (await slow)[0].finish_reason == "stop"
    assert sim.batches == [1]  # the aborted request never ran

    deltas = [d async for d in sim.stream(req("streamed"))]
    assert deltas[-1].finished and deltas[-1].finish_reason == "stop"
    assert "".join(d.text for d in deltas) == sim.answer_for("streamed")
    assert sim.num_running() == 0


@pytest.mark.parametrize(
    ("options", "field"),
    [({"base": 0.2}, "engine_options.base"), ({"max_batch": 0}, "engine_options.max_batch"),
     ({"base_s": -1}, "engine_options.base_s")],
)
def test_bad_options_name_the_field(legal: SpecialistConfig, options: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_engine(simulated(legal), "simulated", options)
    assert field in str(err.value) and "sim" in str(err.value)


def _yaml_with_a_simulated_member(tmp_path: Path) -> Path:
    data = yaml.safe_load((DEMO / "council.yaml").read_text())
    data["specialists"][0].update(engine="simulated", engine_options={"base_s": 0.01})
    data["specialists"][0]["model"] = str(DEMO / data["specialists"][0]["model"])
    path = tmp_path / "council.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_yaml_naming_it_is_refused_unless_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _yaml_with_a_simulated_member(tmp_path)
    monkeypatch.delenv(ALLOW_SIMULATED_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"engine: simulated answers without a model.*{ALLOW_SIMULATED_ENV}=1"):
        CouncilConfig.from_yaml(path)
    monkeypatch.setenv(ALLOW_SIMULATED_ENV, "1")
    assert CouncilConfig.from_yaml(path).specialists[0].engine == "simulated"


def test_a_serve_app_naming_it_is_refused_unless_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from council.serving.app import build_app

    path = _yaml_with_a_simulated_member(tmp_path)
    monkeypatch.setenv(ALLOW_SIMULATED_ENV, "1")
    data = CouncilConfig.from_yaml(path).model_dump(mode="json")
    monkeypatch.delenv(ALLOW_SIMULATED_ENV)
    assert os.environ.get(ALLOW_SIMULATED_ENV) is None
    with pytest.raises(ConfigError, match="config_dict: specialists \\['legal-1'\\]: engine: simulated"):
        build_app({"config_dict": data})
