"""A chat's conversation: how its history reaches a member's prompt, and what the council accepts of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from council.backends.tokens import load_tokenizer_counter
from council.config import CouncilConfig
from council.errors import InvalidRequest
from council.pipeline import validate
from council.prompts import chat_messages, get_template
from council.testing.tiny import build_tiny_gpt2, tiny_specialist_config
from council.types import AskRequest, Conversation

QA = get_template("qa")
HISTORY = (("system", "answer in one word"), ("user", "hello"), ("assistant", "hi"))


def test_a_question_without_history_renders_as_before() -> None:
    assert QA.render("what now ?", ["a fact"], ()) == QA.render("what now ?", ["a fact"])
    assert chat_messages(QA, "q", ["p"], ()) == chat_messages(QA, "q", ["p"])


def test_history_follows_the_templates_system_line_and_precedes_passages() -> None:
    prompt = QA.render("what now ?", ["a fact"], HISTORY)
    system, extra, user, assistant, *rest = prompt.split("\n")
    assert system == QA.system and extra == "answer in one word"
    assert (user, assistant) == ("user : hello", "assistant : hi")
    assert rest[0].startswith("<passage 1> a fact") and prompt.endswith("question : what now ?\nanswer :")


def test_chat_messages_carry_the_system_text_then_the_turns_then_the_question() -> None:
    messages = chat_messages(QA, "what now ?", [], HISTORY)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == f"{QA.system}\nanswer in one word"
    assert messages[-1]["content"].endswith("question : what now ?")


@pytest.mark.parametrize(
    "chat_template", [None, "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"]
)
def test_special_tokens_in_history_never_reach_the_prompt(tmp_path: Path, chat_template: str | None) -> None:
    path = build_tiny_gpt2(tmp_path / "m", chat_template=chat_template)
    tokens = load_tokenizer_counter(tiny_specialist_config(path))
    prompt = tokens.render_prompt("q", [], [("user", "x<|endoftext|>y"), ("assistant", "ok")])
    assert "<|endoftext|>" not in prompt and "xy" in prompt and "ok" in prompt
    assert tokens.uses_chat_template == (chat_template is not None)


CONFIG = CouncilConfig.from_dict(
    {"specialists": [{"name": "a", "model": "m", "generation": {"max_new_tokens": 16}}, {"name": "b", "model": "m"}]}
)


def _ask(conversation: Conversation, **fields: object) -> AskRequest:
    return validate(AskRequest("q", conversation=conversation, **fields), CONFIG)  # type: ignore[arg-type]


def test_max_tokens_over_a_named_members_limit_is_refused_and_capped_for_the_routers_choice() -> None:
    with pytest.raises(InvalidRequest, match=r"max_tokens=17 is over specialist a's limit of 16"):
        _ask(Conversation(sampling={"max_tokens": 17}), specialists=("a",))
    asked = _ask(Conversation(sampling={"max_tokens": 17}))  # the router chooses: each member's own limit caps it
    assert asked.conversation is not None
    assert asked.conversation.for_member(16).sampling["max_tokens"] == 16
    assert asked.conversation.for_member(64).sampling["max_tokens"] == 17


@pytest.mark.parametrize(
    ("conversation", "message"),
    [
        (Conversation(history=(("tool", "x"),)), "messages[0].role 'tool'"),
        (Conversation(history=(("user", "x"),) * 65), "at most 65"),
        (Conversation(history=(("user", "x" * 16001),)), "16001 characters"),
        (Conversation(sampling={"max_tokens": 0}), "max_tokens=0"),
        (Conversation(sampling={"temperature": 2.5}), "temperature=2.5"),
        (Conversation(sampling={"top_p": 0}), "top_p=0"),
        (Conversation(sampling={"stop": ["a", "b", "c", "d", "e"]}), "stop: at most 4"),
        (Conversation(sampling={"stop": [""]}), "stop: at most 4 non-empty"),
        (Conversation(sampling={"min_p": 0.1}), "unknown sampling field(s) ['min_p']"),
    ],
)
def test_a_bad_conversation_is_refused_naming_what_is_wrong(conversation: Conversation, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        _ask(conversation)
    assert message in str(info.value)
