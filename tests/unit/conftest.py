"""Unit tests never start Ray: ray.init raises here (Ray Serve's own unit tests do the same)."""

import pytest


@pytest.fixture(autouse=True)
def _forbid_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return

    def _refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unit tests must not start Ray; put this test under tests/serve or tests/jobs")

    monkeypatch.setattr(ray, "init", _refuse)
