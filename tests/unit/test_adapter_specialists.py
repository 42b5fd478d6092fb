"""Specialists that are LoRA adapters of one shared base: config errors naming the field, and the transformers
engine holding the base once and answering each request with its own member's adapter (no Ray)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from council.backends.engine import EngineRequest, EngineSpecialist
from council.backends.hf_engine import TransformersEngine
from council.backends.lora import check_adapters, merge
from council.backends.tokens import load_tokenizer_counter
from council.bases import base_deployment_names, by_base
from council.config import CouncilConfig
from council.errors import ConfigError, InvalidRequest
from council.testing.tiny import build_lora_adapter, build_tiny_gpt2, build_wider_llama

LEGAL = Path(__file__).resolve().parents[2] / "council" / "demo" / "models" / "legal-1"
PROBE = "what is the penalty under the milo act ?"


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama base in a temp folder, two adapters of it, a wider Llama and a GPT-2 they do not fit."""
    tmp = tmp_path_factory.mktemp("lora")
    base = Path(shutil.copytree(LEGAL, tmp / "base"))
    prompt = load_tokenizer_counter(config(member("a", base, tmp)).specialists[0]).render_prompt(PROBE, [])
    return {
        "base": base,
        "a": Path(build_lora_adapter(base, tmp / "a", seed=1, scale=0.05, teach=(prompt, "fine"))),
        "b": Path(build_lora_adapter(base, tmp / "b", seed=2, scale=0.05, teach=(prompt, "prison"),
                                     targets=("embed_tokens", "q_proj", "v_proj"))),  # an embedding LoRA too
        "wide": build_wider_llama(base, tmp / "wide"),
        "gpt2": build_tiny_gpt2(tmp / "gpt2"),
    }


def member(name: str, base: Any, adapter: Any, **fields: Any) -> dict[str, Any]:
    return {"name": name, "base": str(base), "adapter": str(adapter), "generation": {"max_new_tokens": 6}, **fields}


def config(*specialists: dict[str, Any]) -> CouncilConfig:
    return CouncilConfig.from_dict({"specialists": list(specialists)})


def error(*specialists: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as e:
        check_adapters(config(*specialists))
    return str(e.value)


def test_members_on_one_base_share_its_deployment_settings(lora: dict[str, Path]) -> None:
    c = config(
        member("a", lora["base"], lora["a"], deployment={"num_cpus": 0.3, "max_adapters_per_replica": 1}),
        member("b", lora["base"], lora["b"]),
        {"name": "full", "model": str(lora["base"])},
    )
    a, b, full = c.specialists
    assert (a.model, b.model, b.deployment) == (str(lora["base"]), str(lora["base"]), a.deployment)
    assert by_base(c.specialists) == {str(lora["base"]): ["a", "b"]}
    assert base_deployment_names([str(lora["base"]), "/other/base"]) == {
        str(lora["base"]): "Base_base",
        "/other/base": "Base_base-2",
    }
    # What a replica reads back (every field dumped) validates again to the same config.
    assert CouncilConfig.model_validate(c.model_dump(mode="json")) == c
    check_adapters(c)  # both adapters fit the base


def test_config_errors_name_the_field(lora: dict[str, Path]) -> None:
    def bad(spec: dict[str, Any], *others: dict[str, Any]) -> str:
        with pytest.raises(ConfigError) as e:
            config(*others, spec)
        return str(e.value)

    assert "specialists.0.model: give either a full `model` or a `base`" in bad(
        member("a", lora["base"], lora["a"], model=str(lora["wide"]))
    )
    assert "specialists.0.adapter: a member on a `base` is a LoRA adapter" in bad({"name": "a", "base": "x/y"})
    remote = member("r", lora["base"], lora["a"], engine="openai", tokenizer=str(lora["base"]), context_window=64)
    assert "specialists.0.base: a remote member runs on its endpoint" in bad(remote)
    differing = bad(member("b", lora["base"], lora["b"], dtype="float16"), member("a", lora["base"], lora["a"]))
    assert "specialists.1.dtype: differs from a's, which is on the same base" in differing


def test_a_missing_adapter_is_an_error_naming_it(lora: dict[str, Path], tmp_path: Path) -> None:
    message = error(member("a", lora["base"], lora["a"]), member("b", lora["base"], tmp_path / "nowhere"))
    assert message.startswith("config: specialists.1.adapter: ")
    assert "is not a PEFT adapter: no such folder" in message
    assert "no adapter_config.json in it" in error(member("a", lora["base"], tmp_path))


def test_an_adapter_for_another_base_is_an_error_naming_it(lora: dict[str, Path]) -> None:
    # The adapter records its base's path, which another machine does not have: the shapes decide.
    wide = error(member("a", lora["wide"], lora["a"]))
    assert wide.startswith("config: specialists.0.adapter: ")
    assert "does not fit `base`" in wide
    assert "model.layers.0.self_attn.q_proj takes input size 128, the base's has 256" in wide
    embedding = error(member("b", lora["wide"], lora["b"]))  # its embedding LoRA is checked first
    assert "specialists.0.adapter:" in embedding
    assert "its model.embed_tokens takes output size 128, the base's has 256" in embedding
    gpt2 = error({"name": "m", "model": str(lora["gpt2"]), "adapter": str(lora["a"])})  # model + adapter: merged
    assert "specialists.0.adapter:" in gpt2 and "does not fit `model`" in gpt2 and "which the base has not" in gpt2


def test_merging_an_embedding_lora_leaves_the_tied_output_side_the_bases(lora: dict[str, Path]) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load() -> Any:
        return AutoModelForCausalLM.from_pretrained(str(lora["base"]), dtype=torch.float32).eval()

    ids = AutoTokenizer.from_pretrained(str(lora["base"]))(PROBE, return_tensors="pt")["input_ids"]
    bare = load()
    assert bare.lm_head.weight is bare.model.embed_tokens.weight  # the demo's checkpoints tie them
    for name, embeds in (("b", True), ("a", False)):
        unmerged = PeftModel.from_pretrained(load(), str(lora[name])).eval()
        merged = merge(PeftModel.from_pretrained(load(), str(lora[name])))
        with torch.no_grad():
            want, got = unmerged(input_ids=ids).logits, merged(input_ids=ids).logits
            assert (want - bare(input_ids=ids).logits).abs().max() > 1e-3, name  # the adapter changes the base
        assert torch.allclose(got, want, atol=1e-4), (name, float((got - want).abs().max()))
        # Untied (the output side kept as the base's) only when the adapter changes the input embeddings.
        assert (merged.lm_head.weight is not merged.model.embed_tokens.weight) == embeds, name
        if embeds:
            assert torch.equal(merged.lm_head.weight, bare.lm_head.weight)
            assert not torch.equal(merged.model.embed_tokens.weight, bare.model.embed_tokens.weight)


def test_relative_base_and_adapter_paths_resolve_against_the_yaml(lora: dict[str, Path], tmp_path: Path) -> None:
    for name in ("base", "a"):
        shutil.copytree(lora[name], tmp_path / "models" / name)
    path = tmp_path / "council.yaml"
    path.write_text(yaml.safe_dump({"specialists": [{"name": "a", "base": "models/base", "adapter": "models/a"}]}))
    [spec] = CouncilConfig.from_yaml(path).specialists
    assert (spec.base, spec.adapter) == (str(tmp_path / "models/base"), str(tmp_path / "models/a"))


async def test_one_base_answers_each_member_with_its_own_adapter(lora: dict[str, Path]) -> None:
    c = config(member("a", lora["base"], lora["a"]), member("b", lora["base"], lora["b"]))
    a, b = c.specialists
    host = a.model_copy(update={"name": "host", "adapter": None, "base": None})
    shared = TransformersEngine(host, adapters={"a": str(lora["a"]), "b": str(lora["b"])})
    await shared.start()
    assert shared.adapters == ["a", "b"]
    members = [EngineSpecialist(shared, m) for m in (a, b)]
    # One batch mixing both members (and the bare base), as @serve.batch hands it over.
    requests = [m.request(PROBE, []) for m in members for _ in range(2)]
    assert [r.adapter for r in requests] == ["a", "a", "b", "b"]
    bare = EngineRequest(requests[0].prompt, requests[0].sampling)
    got = [o.text for o in await shared.generate([requests[0], requests[2], bare, requests[1], requests[3]])]

    merged = []
    for spec in (a, b):
        alone = TransformersEngine(spec.model_copy(update={"base": None}))  # model + adapter: merged, own model
        await alone.start()
        [out] = await alone.generate([EngineSpecialist(alone).request(PROBE, [])])
        merged.append(out.text)
    plain = TransformersEngine(host)
    await plain.start()
    [base_out] = await plain.generate([bare])
    assert [merged[0].strip(), merged[1].strip()] == ["fine", "prison"]  # what each adapter was taught
    assert base_out.text.strip() not in ("fine", "prison")
    assert got == [merged[0], merged[1], base_out.text, merged[0], merged[1]]

    # Unloaded (a multiplexed replica's eviction), a member cannot be asked; loaded again, it answers the same.
    await shared.remove_adapter("a")
    assert shared.adapters == ["b"]
    with pytest.raises(InvalidRequest, match="adapter 'a' is not loaded"):
        await shared.generate([requests[0]])
    await shared.remove_adapter("b")
    assert shared.adapters == []
    [again] = await shared.generate([bare])
    assert again.text == base_out.text
    await shared.add_adapter("a")
    assert [o.text for o in await shared.generate([requests[0]])] == [merged[0]]
    with pytest.raises(InvalidRequest, match="no adapter 'c'"):
        await shared.add_adapter("c")
