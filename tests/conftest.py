"""Shared test set-up: offline model loading, no telemetry, the test run's own Ray token and store folder;
the tiny models every Ray tier deploys."""

import atexit
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# LiteLLM (a real client in tests/serve/test_chat.py) would fetch its model cost map from the network first.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _own_ray_token() -> Path:
    """A Ray auth token for this test run only, in a temp folder; Ray reads it from RAY_AUTH_TOKEN_PATH.

    Ray 2.60's `ray start --head` with RAY_AUTH_MODE=token refuses to start without a token, and a local
    `ray.init()` creates ~/.ray/auth_token when none exists. Every Ray process of the suite (local Serve, the
    heads the job tests start, their workers) inherits these variables, so the suite never reads, creates or
    overwrites the user's ~/.ray/auth_token, and passes on a machine that has none.
    """
    folder = Path(tempfile.mkdtemp(prefix="council-ray-auth-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "auth_token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path


RAY_TOKEN_PATH = _own_ray_token()
os.environ["RAY_AUTH_TOKEN_PATH"] = str(RAY_TOKEN_PATH)
os.environ.pop("RAY_AUTH_TOKEN", None)  # a token value in the environment would win over the path
os.environ["RAY_AUTH_MODE"] = "token"  # production keeps token auth on; so does every test cluster
# A config that names no store uses $COUNCIL_HOME/chroma: the suite's own, never the user's ~/.council.
_COUNCIL_HOME = Path(tempfile.mkdtemp(prefix="council-home-"))
atexit.register(shutil.rmtree, _COUNCIL_HOME, ignore_errors=True)
os.environ["COUNCIL_HOME"] = str(_COUNCIL_HOME)

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


@pytest.fixture(scope="session")
def local_yaml_app() -> dict:
    """The application entry of clusters/local.yaml, checked against Serve's own config schema."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "clusters" / "local.yaml").read_text())
    schema = ServeDeploySchema.model_validate(data)
    assert len(schema.applications) == 1
    entry: dict = schema.applications[0].model_dump()
    return entry
