"""A member's `engine` and `engine_options` are checked when the config loads: a bad option names its field."""

from __future__ import annotations

import pytest

from council.config import CouncilConfig
from council.errors import ConfigError


def _config(**member: object) -> dict[str, object]:
    return {"specialists": [{"name": "a", "model": "x"}, {"name": "b", "model": "x", **member}]}


def test_the_default_engine_is_transformers_without_options() -> None:
    member = CouncilConfig.from_dict(_config()).specialists[1]
    assert (member.engine, member.engine_options) == ("transformers", {})


def test_good_engine_options_are_kept_as_given() -> None:
    member = CouncilConfig.from_dict(_config(engine="vllm", engine_options={"kv_cache_gib": 2})).specialists[1]
    assert (member.engine, member.engine_options) == ("vllm", {"kv_cache_gib": 2})


@pytest.mark.parametrize(
    ("member", "where"),
    [
        ({"engine": "vllm", "engine_options": {"kv_cache_gb": 1}}, "specialists.1.engine_options.kv_cache_gb"),
        ({"engine": "vllm", "engine_options": {"kv_cache_gib": 0}}, "specialists.1.engine_options.kv_cache_gib"),
        ({"engine": "vllm", "engine_options": {"max_model_len": 64}}, "specialists.1.engine_options.max_model_len"),
        ({"engine_options": {"kv_cache_gib": 1}}, "specialists.1.engine_options.kv_cache_gib"),  # not transformers'
        ({"engine": "tgi"}, "specialists.1.engine:"),
    ],
)
def test_a_bad_engine_or_option_is_a_config_error_naming_it(member: dict[str, object], where: str) -> None:
    with pytest.raises(ConfigError) as err:
        CouncilConfig.from_dict(_config(**member))
    assert where in str(err.value), err.value
