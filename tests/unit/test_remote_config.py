"""Remote (engine: openai) members and the chairman in the config: what is required, what is refused, each
error naming its field; a remote member's token budget from its real tokenizer (Hugging Face or tiktoken)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from council.backends.tokens import CHAT_MARGIN_TOKENS, RemoteTokenCounter, load_tokenizer_counter
from council.config import CouncilConfig, SpecialistConfig
from council.errors import ConfigError, ModelLoadError

LEGAL = Path(__file__).resolve().parents[2] / "council" / "demo" / "models" / "legal-1"
OPTIONS = {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "SOME_KEY"}


def remote(name: str = "far", **fields: Any) -> dict[str, Any]:
    member = {"name": name, "model": "gpt-x", "engine": "openai", "tokenizer": str(LEGAL), "context_window": 192}
    return {"engine_options": OPTIONS, **member, **fields}


def council(*members: dict[str, Any], **aggregator: Any) -> dict[str, Any]:
    return {"specialists": [{"name": "near", "model": "x"}, *members], "aggregator": aggregator}


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        CouncilConfig.from_dict(data)
    return str(err.value)


def test_a_remote_member_with_its_tokenizer_and_window_loads() -> None:
    far = CouncilConfig.from_dict(council(remote())).specialist("far")
    assert (far.engine, far.tokenizer, far.context_window) == ("openai", str(LEGAL), 192)
    assert far.engine_options == OPTIONS


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"tokenizer": None}, "specialists.1.tokenizer: engine: openai needs the remote model's tokenizer"),
        ({"context_window": None}, "specialists.1.context_window: engine: openai needs the remote model's context"),
        ({"engine_options": {}}, "specialists.1.engine_options.base_url"),
        ({"engine_options": {**OPTIONS, "base_url": "localhost:8000"}}, "specialists.1.engine_options.base_url"),
        ({"engine_options": {**OPTIONS, "max_retries": -1}}, "specialists.1.engine_options.max_retries"),
        ({"engine_options": {**OPTIONS, "api_key_env": "sk-live-abc"}}, "specialists.1.engine_options.api_key_env"),
        ({"deployment": {"num_gpus": 1}}, "specialists.1.deployment.num_gpus"),
        ({"adapter": "/some/lora"}, "specialists.1.adapter"),
    ],
)
def test_a_bad_remote_member_is_a_config_error_naming_the_field(fields: dict[str, Any], where: str) -> None:
    assert where in error_of(council(remote(**fields)))


def test_both_missing_are_named_at_once() -> None:
    message = error_of(council(remote(tokenizer=None, context_window=None)))
    assert "specialists.1.tokenizer" in message and "specialists.1.context_window" in message


def test_an_api_key_in_the_config_is_refused_without_repeating_it() -> None:
    message = error_of(council(remote(engine_options={**OPTIONS, "api_key": "sk-live-0123456789"})))
    assert "specialists.1.engine_options.api_key" in message and "api_key_env" in message
    assert "sk-live-0123456789" not in message


def test_a_tokenizer_on_a_local_member_is_refused() -> None:
    assert "specialists.1.tokenizer: only engine: openai" in error_of(
        council({"name": "b", "model": "x", "tokenizer": "y"})
    )


def test_a_remote_members_model_is_never_taken_for_a_folder(tmp_path: Path) -> None:
    (tmp_path / "gpt-x").mkdir()  # a folder named like the remote model, beside the YAML
    (tmp_path / "tok").symlink_to(LEGAL)
    (tmp_path / "c.yaml").write_text(
        "specialists:\n  - {name: far, model: gpt-x, engine: openai, tokenizer: tok, context_window: 192,\n"
        "     engine_options: {base_url: 'http://127.0.0.1:9/v1'}}\n"
    )
    far = CouncilConfig.from_yaml(tmp_path / "c.yaml").specialist("far")
    assert far.model == "gpt-x" and far.tokenizer == str((tmp_path / "tok").resolve())


# ---- the chairman ------------------------------------------------------------------------------------------


def test_a_chairman_may_also_be_a_member_and_has_fallbacks_in_order() -> None:
    chair = {"member": "far", "fallback": ["near"], "when": "always"}
    config = CouncilConfig.from_dict(council(remote(), chairman=chair))
    assert config.aggregator.chairman is not None
    assert (config.aggregator.chairman.member, config.aggregator.chairman.fallback) == ("far", ["near"])
    assert config.aggregator.chairman.when == "always"
    assert CouncilConfig.from_dict(council(remote())).aggregator.chairman is None  # optional


@pytest.mark.parametrize(
    ("chair", "where"),
    [
        ({"member": "nobody"}, "aggregator.chairman.member: unknown specialist 'nobody'"),
        ({"member": "far", "fallback": ["ghost"]}, "aggregator.chairman.fallback.0: unknown specialist 'ghost'"),
        ({"member": "far", "fallback": ["far"]}, "aggregator.chairman.fallback.0: 'far' is already the chairman"),
        ({"member": "far", "fallback": ["near", "near"]}, "aggregator.chairman.fallback.1: 'near' is already"),
        ({"member": "far", "when": "sometimes"}, "aggregator.chairman.when"),
        ({"member": "far", "timeout_s": 0}, "aggregator.chairman.timeout_s"),
        ({"fallback": ["far"]}, "aggregator.chairman.member: Field required"),
    ],
)
def test_a_bad_chairman_is_a_config_error_naming_the_field(chair: dict[str, Any], where: str) -> None:
    assert where in error_of(council(remote(), chairman=chair))


# ---- token budgets -----------------------------------------------------------------------------------------


def test_a_hugging_face_tokenizer_counts_a_remote_members_prompt() -> None:
    config = SpecialistConfig.model_validate(remote())
    counter = load_tokenizer_counter(config)
    local = load_tokenizer_counter(SpecialistConfig.model_validate({"name": "l", "model": str(LEGAL)}))
    assert isinstance(counter, RemoteTokenCounter) and counter.context_window == 192
    assert counter.count("the court decides") == local.count("the court decides")
    # No chat template here: the endpoint's own roles and separators get a margin.
    assert counter.prompt_overhead() == local.prompt_overhead() + CHAT_MARGIN_TOKENS


def _bundled_tiktoken() -> Path | None:
    """litellm ships cl100k_base, o200k_base and p50k_base for offline use (a dev dependency)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "litellm_core_utils" / "tokenizers"
    return folder if folder.is_dir() else None


def test_a_tiktoken_encoding_counts_a_remote_members_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _bundled_tiktoken()
    if folder is None:
        pytest.skip("no bundled tiktoken files (litellm) here")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(folder))
    counter = load_tokenizer_counter(SpecialistConfig.model_validate(remote(tokenizer="tiktoken:o200k_base")))
    assert counter.count("hello world") == 2
    # Special-token text inside untrusted passages is stripped before the prompt is rendered.
    prompt = counter.render_prompt("q", ["a <|endoftext|> b"])
    assert "<|endoftext|>" not in prompt and counter.prompt_overhead() > CHAT_MARGIN_TOKENS


def test_a_tiktoken_encoding_that_cannot_be_fetched_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tiktoken.load

    def offline(*args: object, **kwargs: object) -> bytes:
        raise ConnectionError("no route to host")  # what tiktoken's download meets on an offline machine

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    with pytest.raises(ModelLoadError) as err:
        load_tokenizer_counter(SpecialistConfig.model_validate(remote(tokenizer="tiktoken:r50k_base")))
    assert "'r50k_base'" in str(err.value) and "TIKTOKEN_CACHE_DIR" in str(err.value)
    with pytest.raises(ModelLoadError, match="unknown tiktoken encoding 'nope'"):
        load_tokenizer_counter(SpecialistConfig.model_validate(remote(tokenizer="tiktoken:nope")))
