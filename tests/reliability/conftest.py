"""Reliability tests without Ray (ingest, tenant isolation, prompt fences): ray.init raises here.

They share one pytest process with tests/serve, whose session fixture owns the only local Ray.
"""

import pytest


@pytest.fixture(autouse=True)
def _forbid_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def _refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("tests/reliability must not start Ray; Ray-backed reliability tests live in tests/serve")

    monkeypatch.setattr(ray, "init", _refuse)
