"""A member that is a PEFT LoRA adapter over a base: the vLLM engine serves it as a LoRARequest (the base stays
unmerged), the transformers engine merges it; greedy answers agree, and differ from the base's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from council.backends.engine import EngineRequest, Sampling
from council.backends.hf_engine import TransformersEngine
from council.backends.vllm_engine import VLLMEngine
from council.config import SpecialistConfig
from council.testing.tiny import build_lora_adapter
from tests.engines.conftest import requires_vllm
from tests.engines.prompts import demo_prompts

pytestmark = [pytest.mark.vllm, requires_vllm]
in_module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def adapted(legal: SpecialistConfig, tmp_path_factory: pytest.TempPathFactory) -> SpecialistConfig:
    adapter = build_lora_adapter(legal.model, tmp_path_factory.mktemp("lora") / "legal-lora")
    return legal.model_copy(update={"name": "legal-lora", "adapter": adapter})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vllm(adapted: SpecialistConfig) -> AsyncIterator[VLLMEngine]:
    engine = VLLMEngine(adapted, {"kv_cache_gib": 1})
    await engine.start()
    yield engine
    await engine.shutdown()


@in_module_loop
async def test_adapter_answers_equal_the_merged_transformers_model(
    vllm: VLLMEngine, adapted: SpecialistConfig, legal: SpecialistConfig
) -> None:
    args = vllm.engine_args()
    assert (args.enable_lora, args.max_lora_rank, args.max_loras) == (True, 8, 1)
    hf, base = TransformersEngine(adapted), TransformersEngine(legal)
    await hf.start()
    await base.start()
    eight = Sampling(max_tokens=8, ignore_eos=True)
    prompts = demo_prompts(hf.tokens, n=3)
    want = [o.text.split() for o in await hf.generate([EngineRequest(p, eight) for p in prompts])]
    got = [o.text.split() for o in await vllm.generate([EngineRequest(p, eight) for p in prompts])]
    plain = [o.text.split() for o in await base.generate([EngineRequest(p, eight) for p in prompts])]
    assert got == want
    assert got != plain  # the adapter is in use
