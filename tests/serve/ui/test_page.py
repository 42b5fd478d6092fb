"""The web page (`GET /`) in a real headless Chromium against the real demo council on local Serve.

One app for the module: the packaged demo council (its six trained members, the demo's questions as the page's
examples) under its own route prefix, with a key table of two keys, so every test goes through the page's key
handling; it is deleted at the end of the module. What the page shows is checked against what the API answers
for the same request (greedy decoding: the same answer twice).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from council.config import CouncilConfig
from council.credentials import KEYS_FILE_ENV, table_entry
from council.demo.run import DEMO_CONFIG, demo_world, pick_questions
from council.world.generator import Question

APP, PREFIX = "council_page", "/page"
ADMIN, ACME = "ck-page-admin-7f3a", "ck-page-acme-19c2"
WAIT_S = 90
BROKEN = "medical-2"


@dataclass(frozen=True)
class Demo:
    url: str
    questions: list[Question]
    documents: dict[str, str]

    def ask(self, body: dict[str, Any], key: str = ADMIN) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"}
        return requests.post(self.url + "/v1/council", json=body, headers=headers, timeout=90)

    def kind(self, split: str) -> Question:
        return next(q for q in self.questions if q.split == split)


def _config(store: Path, examples: list[str]) -> dict[str, Any]:
    """The demo council as council/demo/council.yaml has it, sized for a shared 2-core box."""
    demo = CouncilConfig.from_yaml(DEMO_CONFIG).model_dump(mode="json", exclude_unset=True)
    small = {"num_cpus": 0.05, "max_batch_size": 8, "batch_wait_timeout_s": 0.02}
    return {
        **demo,
        "specialists": [{**s, "deployment": small} for s in demo["specialists"]],
        "router": {**demo.get("router", {}), "num_cpus": 0.05, "member_timeout_s": 60},
        "retrieval": {**demo.get("retrieval", {}), "path": str(store), "num_cpus": 0.05},
        "aggregator": {**demo.get("aggregator", {}), "num_cpus": 0.05},
        "http": {"examples": examples},
    }


@pytest.fixture(scope="module")
def demo(serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    from ray import serve

    from council.serving.app import build_app

    tmp = tmp_path_factory.mktemp("page")
    keys = tmp / "keys.yaml"
    entries = [table_entry("page-admin", ADMIN, ["*"], ["admin"]), table_entry("acme-reader", ACME, ["acme"], ["read"])]
    keys.write_text(yaml.safe_dump({"keys": entries}))
    world = demo_world()
    questions = pick_questions(world, 2)  # what `council demo` asks, and so offers on its page
    config = _config(tmp / "store", [q.question for q in questions])
    # One member broken on purpose (fault injection), so that a medical question shows a failed member's card.
    faults = {BROKEN: {"error": "injected failure"}}
    app = build_app({"config_dict": config, "env": {KEYS_FILE_ENV: str(keys)}, "faults": faults})
    t0 = time.perf_counter()
    serve.run(app, name=APP, route_prefix=PREFIX)
    print(f"\nthe demo council deployed for the page in {time.perf_counter() - t0:.1f}s")
    try:
        medical = next(q for q in world.questions("trained", held_out=False) if q.domain == "medical")
        yield Demo(serve_url + PREFIX, [*questions, medical], {d.id: d.text for d in world.documents})
    finally:
        serve.delete(APP)


class Page:
    """The page in the browser, by what a person sees and does: fields by their labels' ids, buttons, cards."""

    def __init__(self, driver: Any, url: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.url = driver, url
        self.wait = WebDriverWait(driver, WAIT_S)

    def open(self, key: str | None = None) -> Page:
        self.driver.get(self.url + "/")
        self.driver.execute_script("sessionStorage.clear()")
        self.driver.get(self.url + "/")
        if key is not None:
            self.until_visible("key-panel")
            self.type("key", key)
            self.find("key-form").submit()
            self.wait.until(lambda d: "tenants:" in self.text("who") or not self.find("error").get_attribute("hidden"))
        return self

    def find(self, id_: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, id_)

    def text(self, id_: str) -> str:
        return str(self.find(id_).text)

    def type(self, id_: str, value: str) -> None:
        field = self.find(id_)
        field.clear()
        if value:
            field.send_keys(value)

    def until_visible(self, id_: str) -> Any:
        return self.wait.until(lambda d: self.find(id_) if self.find(id_).is_displayed() else None)

    def ask(self, question: str, documents: str = "") -> None:
        self.type("question", question)
        if documents:
            self.find("options").click()  # <details>: open it to reach the field
            self.type("documents", documents)
        self.find("ask").click()

    def cards(self) -> dict[str, Any]:
        from selenium.webdriver.common.by import By

        return {c.get_attribute("data-member"): c for c in self.driver.find_elements(By.CSS_SELECTOR, "#members .card")}

    def verdict(self) -> None:
        self.until_visible("verdict")

    def screenshot(self, path: Path) -> Path:
        """The whole page as a PNG (the window stretched to the page's height for the shot)."""
        width, height = self.driver.get_window_size().values()
        full = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(width, max(height, full))
        try:
            self.driver.save_screenshot(str(path))
        finally:
            self.driver.set_window_size(width, height)
        return path


@pytest.fixture
def page(browser: Any, demo: Demo) -> Page:
    return Page(browser, demo.url)


def test_a_question_fills_every_members_card_then_the_council_answers_with_its_agreement(
    page: Page, demo: Demo, tmp_path: Path
) -> None:
    q = demo.kind("trained")
    want = demo.ask({"question": q.question}).json()
    page.open(ADMIN)
    assert "page-admin" in page.text("who")
    examples = {b.text: b for b in page.find("examples").find_elements("tag name", "button")}
    assert list(examples) == [d.question for d in demo.questions[:-1]]  # the demo's questions, offered on its page
    examples[q.question].click()  # asks it
    page.verdict()
    assert page.find("question").get_attribute("value") == q.question
    cards = page.cards()
    assert sorted(cards) == sorted(m["name"] for m in want["members"])  # every member asked, one card each
    for m in want["members"]:
        card = cards[m["name"]]
        assert m["answer"] in card.text and "answered" in card.text and f"{m['route_score']:.3f}" in card.text
        assert f"{m['completion_tokens']} answer tokens" in card.text and "tokens (relevance)" in card.text
    assert page.text("answer") == want["answer"] == q.answer  # the demo's trained member knows it
    assert float(page.find("agreement").get_attribute("value")) == pytest.approx(want["agreement"])  # the gauge
    assert page.text("agreement-value") == f"{want['agreement']:.2f}" and "answered" in page.text("badges")
    assert page.text("entropy") == f"{want['entropy']:.3f}"
    first = page.find("clusters").find_elements("tag name", "li")[0].text
    assert first.startswith("the answer's cluster:") and all(n in first for n in want["clusters"][0])
    assert q.question in page.text("curl") and "/page/v1/council" in page.text("curl")
    shot = page.screenshot(tmp_path / "page.png")
    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot: {shot}")


def test_an_unanswerable_question_shows_the_abstained_badge(page: Page, demo: Demo) -> None:
    from selenium.webdriver.common.keys import Keys

    q = demo.kind("unanswerable")
    want = demo.ask({"question": q.question}).json()
    assert want["abstained"], want  # the demo council abstains on a question nobody knows
    page.open(ADMIN)
    page.type("question", q.question + Keys.ENTER)  # the keyboard alone: Enter in the question asks it
    page.verdict()
    assert "abstained" in page.text("badges") and page.text("answer") == want["answer"]


def test_a_failed_member_shows_its_error_and_the_answer_is_degraded(page: Page, demo: Demo) -> None:
    q = demo.questions[-1]  # a medical question: both medical members are asked, one of them broken
    want = demo.ask({"question": q.question}).json()
    assert BROKEN in [m["name"] for m in want["members"]] and want["degraded"]
    page.open(ADMIN)
    page.ask(q.question)
    page.verdict()
    broken = page.cards()[BROKEN]
    # The API's redacted error (code, reason, incident id), never the member's exception text.
    shown = next(m for m in want["members"] if m["name"] == BROKEN)
    assert shown["error_code"] == "member_error" and shown["incident"]
    assert "error" in broken.get_attribute("class") and "member_error" in broken.text
    assert "injected failure" not in broken.text
    assert "degraded" in page.text("badges") and page.text("answer") == want["answer"]


def test_a_pasted_document_is_a_source_the_members_read_and_the_snippets_ask_the_same(
    page: Page, demo: Demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = demo.kind("fresh")
    gold = demo.documents[q.doc_id or ""]
    want = demo.ask({"question": q.question, "documents": [{"text": gold, "source": "pasted-1"}]}).json()
    page.open(ADMIN)
    page.ask(q.question, documents=gold)
    page.verdict()
    assert page.text("answer") == want["answer"]
    table = page.text("sources")
    assert "pasted-1 (this request)" in table and f"{want['sources'][0]['score']:.3f}" in table
    assert "kept" in table
    print(f"\nscreenshot: {page.screenshot(tmp_path / 'sources.png')}")
    # The snippets are the same request: run as they are shown, they get the same answer.
    monkeypatch.setenv("COUNCIL_API_KEY", ADMIN)
    namespace: dict[str, Any] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(page.text("python"), namespace)
    assert namespace["answer"].answer == want["answer"]
    out = subprocess.run(["bash", "-c", page.text("curl")], capture_output=True, text=True, timeout=90, check=True)
    assert json.loads(out.stdout)["answer"] == want["answer"]


def test_an_empty_question_shows_the_apis_error_message(page: Page, demo: Demo) -> None:
    r = demo.ask({"question": ""})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    page.open(ADMIN)
    page.ask("")
    page.until_visible("error")
    assert page.text("error") == f"Error 400: {message}"
    assert page.cards() == {}


def test_with_keys_configured_the_page_refuses_to_ask_without_one_and_lists_only_the_keys_tenants(
    page: Page, demo: Demo
) -> None:
    page.open()
    page.until_visible("key-panel")
    page.ask(demo.kind("trained").question)
    page.until_visible("error")
    assert "needs an API key" in page.text("error") and page.cards() == {}
    assert page.find("result").get_attribute("hidden") is not None  # nothing was asked
    page.open("ck-wrong")
    page.until_visible("error")
    r = requests.get(demo.url + "/ui/session", headers={"Authorization": "Bearer ck-wrong"}, timeout=30)
    assert page.text("error") == f"Error 401: {r.json()['error']['message']}"
    page.open(ACME)
    options = page.find("tenant").find_elements("tag name", "option")
    assert [o.get_attribute("value") for o in options] == ["acme", "public"]
    assert page.driver.execute_script("return sessionStorage.getItem('council.key')") == ACME
    page.find("forget").click()
    page.until_visible("key-panel")
    assert page.driver.execute_script("return sessionStorage.getItem('council.key')") is None
