"""TransformersSpecialist and the tokenizer counter, on a tiny GPT-2 loaded through from_pretrained."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from council.backends.tokens import load_tokenizer_counter
from council.backends.transformers import TransformersSpecialist, cut_at_stop
from council.config import SpecialistConfig
from council.errors import ConfigError, InvalidRequest, ModelLoadError
from council.prompts import get_template
from council.protocols import Specialist, TokenCounter
from council.testing.tiny import build_tiny_gpt2, tiny_specialist_config

ITEMS = [
    ("who founded the guild ?", ["the guild was founded by ilsa merrow ."]),
    ("what ?", []),
    ("a much longer question about the river , the old mill and the bridge ?", ["rain fell .", "ships waited ."]),
    ("rain fell on the harbour town", ["the tide turned in the morning ."]),
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "gpt2")


@pytest.fixture(scope="module")
def spec(tiny_dir: Path) -> TransformersSpecialist:
    return TransformersSpecialist(tiny_specialist_config(tiny_dir, generation={"max_new_tokens": 8, "stop": []}))


def _config(tiny_dir: Path, **overrides: object) -> SpecialistConfig:
    return tiny_specialist_config(tiny_dir, **overrides)


def test_loads_from_saved_folder_and_implements_both_protocols(spec: TransformersSpecialist) -> None:
    assert spec.name == "tiny"
    assert spec.device == "cpu"
    assert spec.context_window == 256  # the model config's n_positions
    assert spec.max_new_tokens == 8
    assert isinstance(spec, Specialist)
    assert isinstance(spec, TokenCounter)
    assert spec.healthy()


def test_missing_folder_is_a_model_load_error_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match="no-such-model") as info:
        TransformersSpecialist(tiny_specialist_config(missing))
    assert info.value.details["path"] == missing


def test_unknown_hub_id_offline_is_a_model_load_error_naming_it() -> None:
    with pytest.raises(ModelLoadError, match="nobody-here/not-a-model"):
        load_tokenizer_counter(tiny_specialist_config("nobody-here/not-a-model"))


def test_batch_returns_one_generation_each_with_exact_prompt_tokens(spec: TransformersSpecialist) -> None:
    out = spec.generate_batch(ITEMS)
    assert len(out) == len(ITEMS)
    lengths = set()
    for (question, passages), gen in zip(ITEMS, out, strict=True):
        prompt = get_template(None).render(question, passages)
        assert gen.prompt_tokens == len(spec.tokenizer(prompt)["input_ids"])
        assert 0 <= gen.completion_tokens <= spec.max_new_tokens
        assert gen.latency_s > 0
        lengths.add(gen.prompt_tokens)
    assert len(lengths) == len(ITEMS)  # really different lengths, so left padding was exercised


def test_batch_equals_one_by_one_greedy(spec: TransformersSpecialist) -> None:
    batched = spec.generate_batch(ITEMS)
    single = [spec.generate_batch([item])[0] for item in ITEMS]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in single]
    assert len({g.text for g in single}) > 1  # the tiny model does react to its prompt


def test_stop_strings_cut_generation(tiny_dir: Path, spec: TransformersSpecialist) -> None:
    prompt = spec.render_prompt(*ITEMS[0])
    full = spec.generate_texts([prompt])[0]
    assert full.completion_tokens == spec.max_new_tokens
    # Stop at the text of the 3rd generated token: generation must end there, and the text before it.
    new_ids = spec._run([spec.encode_prompt(prompt)], spec.max_new_tokens).ids[0]
    pieces = [spec.tokenizer.decode([t]) for t in new_ids[2:]]
    stop = next(p for p in pieces if p.strip() and "\ufffd" not in p)
    stopper = TransformersSpecialist(_config(tiny_dir, generation={"max_new_tokens": 8, "stop": [stop]}))
    cut = stopper.generate_texts([prompt])[0]
    assert stop not in cut.text
    assert cut.completion_tokens < full.completion_tokens
    assert full.text.startswith(cut.text)


def test_cut_at_stop_takes_the_earliest() -> None:
    assert cut_at_stop("abc\ndef.ghi", ["\n", "."]) == "abc"
    assert cut_at_stop("abc", ["\n", ""]) == "abc"


def test_counts_and_overheads_are_sane(spec: TransformersSpecialist) -> None:
    assert spec.count("") == 0
    assert spec.count("the river flows north") == len(spec.tokenizer("the river flows north")["input_ids"])
    empty = get_template(None).render("", [])
    assert spec.prompt_overhead() == len(spec.tokenizer(empty)["input_ids"])
    assert spec.passage_overhead() > 0
    for question, passages in ITEMS:
        estimate = spec.prompt_overhead() + spec.count(question)
        estimate += sum(spec.count(p) + spec.passage_overhead() for p in passages)
        actual = len(spec.encode_prompt(spec.render_prompt(question, passages)))
        # The estimate is a little high (an empty passage and '<no passages>' cost more than they leave).
        assert -len(passages) <= estimate - actual <= 8 + 2 * len(passages)


def test_context_window_override(tiny_dir: Path) -> None:
    spec = TransformersSpecialist(_config(tiny_dir, context_window=64))
    assert spec.context_window == 64
    assert spec.max_prompt_tokens == 64 - spec.max_new_tokens


def test_no_room_for_a_prompt_is_a_config_error(tiny_dir: Path) -> None:
    with pytest.raises(ConfigError, match="max_new_tokens"):
        load_tokenizer_counter(_config(tiny_dir, context_window=16, generation={"max_new_tokens": 16}))


def test_too_long_prompt_is_cut_from_the_left(tiny_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = TransformersSpecialist(_config(tiny_dir, context_window=48))
    passages = ["the river flows north through the valley and the old mill stands beside the bridge ."] * 6
    with caplog.at_level(logging.WARNING, logger="council.backends.transformers"):
        [gen] = spec.generate_batch([("who founded the guild ?", passages)])
    assert gen.prompt_tokens == 48 - spec.max_new_tokens
    assert gen.completion_tokens <= spec.max_new_tokens
    assert any("cut to 40" in r.getMessage() for r in caplog.records)


def test_max_new_tokens_override_keeps_the_window(tiny_dir: Path) -> None:
    spec = TransformersSpecialist(_config(tiny_dir, context_window=48, generation={"stop": []}))
    prompt = spec.render_prompt("who founded the guild ?", ["the river flows north through the valley ."] * 4)
    [gen] = spec.generate_texts([prompt], max_new_tokens=20)
    assert gen.prompt_tokens == 48 - 20 and gen.completion_tokens == 20
    with pytest.raises(InvalidRequest, match="max_new_tokens"):
        spec.generate_texts([prompt], max_new_tokens=48)


def test_sampling_settings_are_honoured(tiny_dir: Path) -> None:
    import torch

    gen = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 6, "stop": []}
    spec = TransformersSpecialist(_config(tiny_dir, generation=gen))
    torch.manual_seed(0)
    first = spec.generate_batch(ITEMS)
    torch.manual_seed(0)
    assert [g.text for g in spec.generate_batch(ITEMS)] == [g.text for g in first]
    assert all(g.completion_tokens <= 6 for g in first)


def test_tokenizer_counter_agrees_without_weights(tiny_dir: Path, spec: TransformersSpecialist) -> None:
    counter = load_tokenizer_counter(spec.config)
    assert isinstance(counter, TokenCounter)
    assert not hasattr(counter, "model")
    assert counter.context_window == spec.context_window
    assert counter.max_new_tokens == spec.max_new_tokens
    assert counter.prompt_overhead() == spec.prompt_overhead()
    assert counter.passage_overhead() == spec.passage_overhead()
    for question, passages in ITEMS:
        assert counter.count(question) == spec.count(question)
        assert counter.render_prompt(question, passages) == spec.render_prompt(question, passages)


async def test_async_generate_matches_the_batch_path(spec: TransformersSpecialist) -> None:
    gen = await spec.generate(*ITEMS[0])
    assert gen.text == spec.generate_batch([ITEMS[0]])[0].text


def test_empty_batch(spec: TransformersSpecialist) -> None:
    assert spec.generate_texts([]) == []


def test_chat_template_renders_through_the_tokenizer(tmp_path: Path) -> None:
    path = build_tiny_gpt2(tmp_path / "chat", chat_template=CHAT_TEMPLATE)
    spec = TransformersSpecialist(tiny_specialist_config(path))
    prompt = spec.render_prompt("who ?", ["a passage ."])
    assert prompt.startswith("<|system|>") and prompt.endswith("<|assistant|>")
    assert "<passage 1> a passage . </passage>" in prompt
    [gen] = spec.generate_batch([("who ?", ["a passage ."])])
    assert gen.prompt_tokens == len(spec.tokenizer(prompt, add_special_tokens=False)["input_ids"])


def test_peft_adapter_is_applied(tmp_path: Path, tiny_dir: Path, spec: TransformersSpecialist) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    # Random (not zero) LoRA weights so that the adapter visibly changes the output.
    lora = LoraConfig(r=4, lora_alpha=64, target_modules=["c_attn"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")
    adapted = TransformersSpecialist(_config(tiny_dir, adapter=str(tmp_path / "adapter"), generation={"stop": []}))
    texts = [g.text for g in adapted.generate_batch(ITEMS)]
    assert texts != [g.text for g in spec.generate_batch(ITEMS)]


def test_missing_adapter_is_a_model_load_error(tmp_path: Path, tiny_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="no-adapter"):
        TransformersSpecialist(_config(tiny_dir, adapter=str(tmp_path / "no-adapter")))
