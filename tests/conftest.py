"""Shared test set-up: offline model loading, no telemetry; the tiny models every Ray tier deploys."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

_config: list[pytest.Config] = []


def pytest_configure(config: pytest.Config) -> None:
    _config.append(config)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A test rerun by pytest-rerunfailures shows only "R"; print why its first attempt failed, so a flake
    that passes on its rerun still says what went wrong."""
    terminal = _config[0].pluginmanager.get_plugin("terminalreporter") if _config else None
    if report.outcome != "rerun" or terminal is None:
        return
    crash = getattr(report.longrepr, "reprcrash", None)
    why = crash.message if crash is not None else str(report.longrepr)[-1000:]
    terminal.write_line(f"\nRERUN {report.nodeid} ({report.when}): {why[:2000]}")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three tiny GPT-2 checkpoints (different seeds) saved to disk, loaded through the real path."""
    from council.testing.tiny import build_tiny_gpt2

    base = tmp_path_factory.mktemp("models")
    return [build_tiny_gpt2(base / f"gpt2-{seed}", seed=seed) for seed in range(3)]
