"""The ingress through `serve.get_app_handle`, the raw contract `council.Client` builds on."""

from __future__ import annotations

import pytest
from ray import serve

from council.errors import InvalidRequest
from council.serving.ray_errors import unwrap
from council.types import CouncilAnswer
from tests.serve.conftest import SPECIALISTS, App


def test_handle_ask_returns_the_answer_dict(council_app: App) -> None:
    handle = serve.get_app_handle(council_app.name)
    body = handle.options(method_name="ask").remote({"question": "Who signed the treaty?", "k": 2}).result(timeout_s=60)
    answer = CouncilAnswer.from_dict(body)
    assert len(answer.members) == 2 and answer.route is not None


def test_handle_bad_input_raises_the_council_error(council_app: App) -> None:
    handle = serve.get_app_handle(council_app.name)
    with pytest.raises(Exception) as info:
        handle.options(method_name="ask").remote({"question": "", "k": 1}).result(timeout_s=60)
    assert isinstance(unwrap(info.value), InvalidRequest)


def test_handle_models_and_status(council_app: App) -> None:
    handle = serve.get_app_handle(council_app.name)
    assert handle.options(method_name="models").remote().result(timeout_s=30) == ["council", *SPECIALISTS]
    status = handle.options(method_name="status").remote().result(timeout_s=30)
    assert status["app"] == council_app.name and status["status"] == "RUNNING"
    assert all(d["replicas"].get("RUNNING") == 1 for d in status["deployments"].values())
