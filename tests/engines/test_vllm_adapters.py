"""Two members that are LoRA adapters of one base on ONE vLLM engine: one `LoRARequest` each, requests for both
in one `generate` call (they batch together in vLLM's scheduler), each answered as its adapter merged into the
base answers in plain transformers; an adapter dropped from the engine (a multiplexed replica's eviction) is
refused until it is added again."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from council.backends.engine import EngineRequest, Sampling
from council.backends.hf_engine import TransformersEngine
from council.backends.tokens import load_tokenizer_counter
from council.backends.vllm_engine import VLLMEngine
from council.config import SpecialistConfig
from council.errors import InvalidRequest
from council.testing.tiny import build_lora_adapter
from tests.engines.conftest import requires_vllm
from tests.engines.prompts import demo_prompts

pytestmark = [pytest.mark.vllm, requires_vllm]
in_module_loop = pytest.mark.asyncio(loop_scope="module")
# The demo's stop string: vLLM also ends on the checkpoint's eos list ("\n" among them), HF on its eos token.
EIGHT = Sampling(max_tokens=8, stop=("\n",))


@pytest.fixture(scope="module")
def shared(
    legal: SpecialistConfig, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SpecialistConfig, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("vllm-lora")
    base = shutil.copytree(legal.model, tmp / "base")
    host = legal.model_copy(update={"name": "host", "model": str(base)})
    [prompt, *_] = demo_prompts(load_tokenizer_counter(host), n=3)
    # b adapts the input embeddings as well (as the demo's adapters do): vLLM batches it with a's plain LoRA.
    targets = {"a": ("q_proj", "v_proj"), "b": ("embed_tokens", "q_proj", "v_proj")}
    adapters = {
        n: build_lora_adapter(base, tmp / n, seed=i, scale=0.05, teach=(prompt, word), targets=targets[n])
        for i, (n, word) in enumerate((("a", "fine"), ("b", "prison")))
    }
    return host, adapters


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vllm(shared: tuple[SpecialistConfig, dict[str, str]]) -> AsyncIterator[VLLMEngine]:
    host, adapters = shared
    engine = VLLMEngine(host, {"kv_cache_gib": 1}, adapters)
    await engine.start()
    yield engine
    await engine.shutdown()


@in_module_loop
async def test_two_adapters_on_one_vllm_engine_answer_as_each_merged_model(
    vllm: VLLMEngine, shared: tuple[SpecialistConfig, dict[str, str]]
) -> None:
    host, adapters = shared
    args = vllm.engine_args()
    assert (args.enable_lora, args.max_loras, args.max_lora_rank) == (True, 2, 8)
    want = {}
    for name, path in adapters.items():
        merged = TransformersEngine(host.model_copy(update={"adapter": path}))
        await merged.start()
        prompts = demo_prompts(merged.tokens, n=3)
        want[name] = [o.text.split() for o in await merged.generate([EngineRequest(p, EIGHT) for p in prompts])]
    assert [want["a"][0], want["b"][0]] == [["fine"], ["prison"]]  # what each was taught on the first prompt
    mixed = [EngineRequest(p, EIGHT, adapter=n) for p in prompts for n in ("a", "b")]  # one call, both adapters
    got = [o.text.split() for o in await vllm.generate(mixed)]
    assert got[0::2] == want["a"] and got[1::2] == want["b"]

    await vllm.remove_adapter("a")
    assert vllm.adapters == ["b"]
    with pytest.raises(InvalidRequest, match="adapter 'a' is not loaded"):
        await vllm.generate([mixed[0]])
    await vllm.add_adapter("a")
    assert [o.text.split() for o in await vllm.generate(mixed[:2])] == [want["a"][0], want["b"][0]]
