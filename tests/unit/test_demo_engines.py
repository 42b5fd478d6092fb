"""`--engine vllm`: the demo council with some members moved to vLLM, as a transformation of its config."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from council.cli import app as cli
from council.config import CouncilConfig
from council.demo.engines import DEMO_VLLM_OPTIONS, app_args, on_vllm, pick_vllm_members, with_engine
from council.demo.run import DEMO_CONFIG, demo_setup, with_vllm_members
from council.errors import ConfigError
from council.serving.app import SELF_BATCHING_MAX_ONGOING, build_app
from council.serving.specialist import AsyncSpecialistServer, SpecialistServer


@pytest.fixture(scope="module")
def demo() -> CouncilConfig:
    return CouncilConfig.from_yaml(DEMO_CONFIG)


@pytest.fixture
def have_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The transformation never imports vllm: only whether it could is asked."""
    monkeypatch.setattr("council.backends.vllm_engine.vllm_available", lambda: True)


@pytest.mark.parametrize(
    ("choice", "members"),
    [
        (None, ["legal-1", "finance-1"]),  # the default: 2, one per domain beside a transformers twin
        ("3", ["legal-1", "finance-1", "medical-1"]),
        ("4", ["legal-1", "finance-1", "medical-1", "legal-2"]),
        ("medical-2, legal-1", ["medical-2", "legal-1"]),
        ("all", ["legal-1", "legal-2", "finance-1", "finance-2", "medical-1", "medical-2"]),
    ],
)
def test_which_members_go_on_vllm(demo: CouncilConfig, choice: str | None, members: list[str]) -> None:
    assert pick_vllm_members(demo, choice) == members


@pytest.mark.parametrize(
    ("choice", "fragment"), [("0", "1 to 6"), ("7", "1 to 6"), ("legal-9", "legal-9"), (",", "unknown")]
)
def test_a_bad_choice_of_members_is_a_config_error(demo: CouncilConfig, choice: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        pick_vllm_members(demo, choice)


def test_the_chosen_members_change_engine_and_nothing_else_changes(demo: CouncilConfig) -> None:
    moved = on_vllm(demo, ["legal-1", "finance-1"])
    for before, after in zip(demo.specialists, moved.specialists, strict=True):
        if before.name in ("legal-1", "finance-1"):
            assert after.engine == "vllm" and after.engine_options == DEMO_VLLM_OPTIONS
            assert after.model_copy(update={"engine": "transformers", "engine_options": {}}) == before
        else:
            assert after == before and after.engine == "transformers"
    assert moved.model_copy(update={"specialists": demo.specialists}) == demo
    assert demo.specialist("legal-1").engine == "transformers"  # the loaded config is left alone


def test_the_switched_demo_builds_vllm_members_as_async_servers_that_take_many_requests(
    demo: CouncilConfig, have_vllm: None
) -> None:
    moved, members = with_engine(demo, "vllm")
    built = build_app(app_args(moved))
    _, specialists = built._bound_deployment.init_args[:2]
    deployments: dict[str, Any] = {name: a._bound_deployment for name, a in specialists.items()}
    for name, d in deployments.items():
        on_vllm = name in members
        assert d.func_or_class is (AsyncSpecialistServer if on_vllm else SpecialistServer)
        assert d.init_args[0]["engine"] == ("vllm" if on_vllm else "transformers")
        # Left unset by the demo config, so Serve's default follows the engine (the round trip keeps it unset).
        assert d.max_ongoing_requests == (SELF_BATCHING_MAX_ONGOING if on_vllm else 16), name
        assert d.ray_actor_options["num_cpus"] == 0.1


def test_the_demo_setup_says_which_members_run_on_vllm(have_vllm: None) -> None:
    setup = with_vllm_members(demo_setup(DEMO_CONFIG), "vllm", "legal-2")
    assert "on vLLM: legal-2;" in setup.note and "legal-1, finance-1" in setup.note
    assert set(setup.app_args) == {"config_dict"}
    plain = demo_setup(DEMO_CONFIG)
    assert with_vllm_members(plain, "transformers", None) is plain


def test_without_vllm_the_switch_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("council.backends.vllm_engine.vllm_available", lambda: False)
    result = CliRunner().invoke(cli, ["demo", "--engine", "vllm", "--once"])
    assert result.exit_code == 1
    assert "make vllm" in result.output and "Traceback" not in result.output
    serve = CliRunner().invoke(cli, ["serve", "--engine", "vllm"])
    assert serve.exit_code == 1 and "make vllm" in serve.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--engine", "vllm", "--in-process"], "in-process council runs transformers only"),
        (["--vllm-members", "2"], "--vllm-members goes with --engine vllm"),
        (["--engine", "vllm", "--vllm-members", "nobody"], "unknown member"),
    ],
)
def test_switch_misuse_is_one_clear_line(args: list[str], fragment: str, have_vllm: None) -> None:
    result = CliRunner().invoke(cli, ["demo", "--once", *args])
    assert result.exit_code == 1
    assert fragment in result.output.replace("\n", " "), result.output
