"""A request's fields checked against the council's config, once, for every caller (HTTP, handles, jobs, local).

The first bad field is named; limits bound what one request may cost (characters, documents, members x orderings,
chat history and decoding settings).
"""

from __future__ import annotations

import re

from council.config import CouncilConfig
from council.errors import InvalidRequest
from council.retrieval import check_tenant
from council.types import CHAT_ROLES, ORDERINGS, SAMPLING_FIELDS, AskRequest, Conversation

MAX_QUESTION_CHARS = 4000
MAX_DOCUMENTS = 32
MAX_DOCUMENT_CHARS = 20000
# All of a request's documents together: each is chunked and embedded on the one retrieval replica.
MAX_DOCUMENTS_TOTAL_CHARS = 64000
# A chat request's messages before its question (system messages, earlier turns).
MAX_HISTORY_MESSAGES = 64
MAX_HISTORY_CHARS = 16000
MAX_STOP_STRINGS = 4
# Control characters other than tab/newline carry no meaning in a question and confuse tokenizers.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")



def validate(req: AskRequest, config: CouncilConfig) -> AskRequest:
    """Check a request's fields and name the first bad one; returns it with the question cleaned."""
    if not isinstance(req.question, str) or not req.question.strip():
        raise InvalidRequest("question must be a non-empty string")
    question = _CONTROL.sub(" ", req.question).strip()
    if not question:  # only control characters: nothing left to ask
        raise InvalidRequest("question must be a non-empty string")
    if len(question) > MAX_QUESTION_CHARS:
        raise InvalidRequest(f"question is {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")
    n = len(config.specialists)
    if req.k is not None and not 1 <= req.k <= n:
        raise InvalidRequest(f"k={req.k} is out of range: the council has {n} specialists, so 1 <= k <= {n}")
    check_tenant(req.tenant)
    if req.budget_tokens is not None and req.budget_tokens < 0:
        raise InvalidRequest(f"budget_tokens={req.budget_tokens} must be >= 0")
    if req.ordering is not None and req.ordering not in ORDERINGS:
        raise InvalidRequest(f"unknown ordering {req.ordering!r}; choose one of {list(ORDERINGS)}")
    if req.orderings is not None and not 1 <= req.orderings <= 8:
        raise InvalidRequest(f"orderings={req.orderings} is out of range 1..8")
    if len(req.documents) > MAX_DOCUMENTS:
        raise InvalidRequest(f"{len(req.documents)} documents given; at most {MAX_DOCUMENTS} per request")
    for i, doc in enumerate(req.documents):
        if not isinstance(doc.text, str) or not doc.text.strip() or len(doc.text) > MAX_DOCUMENT_CHARS:
            raise InvalidRequest(f"documents[{i}].text must be 1..{MAX_DOCUMENT_CHARS} characters")
    total = sum(len(doc.text) for doc in req.documents)
    if total > MAX_DOCUMENTS_TOTAL_CHARS:
        raise InvalidRequest(
            f"documents hold {total} characters in all; the limit is {MAX_DOCUMENTS_TOTAL_CHARS} per request"
        )
    if req.specialists is not None and len(req.specialists) > n:
        raise InvalidRequest(f"specialists: {len(req.specialists)} named; the council has {n}")
    if req.escalation and req.specialists is not None:
        raise InvalidRequest(
            "escalation: true asks the routed top members first, but this request names its specialists (all of "
            "them are asked): leave out one or the other"
        )
    asked = len(set(req.specialists)) if req.specialists else min(req.k or config.router.k, n)
    generations = asked * (req.orderings or config.aggregator.orderings)
    if generations > config.router.max_generations:
        raise InvalidRequest(
            f"this request costs {generations} generations ({asked} members x orderings); the limit is "
            f"{config.router.max_generations} (router.max_generations)",
            details={"generations": generations, "limit": config.router.max_generations},
        )
    if req.conversation is not None:
        _check_conversation(req.conversation, req, config)
    return AskRequest(**{**req.__dict__, "question": question})


def _check_conversation(conv: Conversation, req: AskRequest, config: CouncilConfig) -> None:
    """A chat request's history and decoding settings; max_tokens over a named member's limit is refused (the
    router's own choices are capped to theirs instead, see `Conversation.for_member`)."""
    if len(conv.history) > MAX_HISTORY_MESSAGES:
        raise InvalidRequest(f"messages: {len(conv.history) + 1} given; at most {MAX_HISTORY_MESSAGES + 1}")
    for i, (role, _) in enumerate(conv.history):
        if role not in CHAT_ROLES:
            raise InvalidRequest(f"messages[{i}].role {role!r} is not one of {list(CHAT_ROLES)}")
    chars = sum(len(text) for _, text in conv.history)
    if chars > MAX_HISTORY_CHARS:
        raise InvalidRequest(
            f"messages before the last user message hold {chars} characters; the limit is {MAX_HISTORY_CHARS}"
        )
    s = conv.sampling
    unknown = sorted(set(s) - set(SAMPLING_FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown sampling field(s) {unknown}; known: {list(SAMPLING_FIELDS)}")
    if s.get("temperature") is not None and not 0 <= s["temperature"] <= 2:
        raise InvalidRequest(f"temperature={s['temperature']} is out of range 0..2")
    if s.get("top_p") is not None and not 0 < s["top_p"] <= 1:
        raise InvalidRequest(f"top_p={s['top_p']} is out of range (0, 1]")
    stop = s.get("stop") or ()
    if len(stop) > MAX_STOP_STRINGS or not all(isinstance(x, str) and x for x in stop):
        raise InvalidRequest(f"stop: at most {MAX_STOP_STRINGS} non-empty strings, got {list(stop)!r}")
    max_tokens = s.get("max_tokens")
    if max_tokens is None:
        return
    if max_tokens < 1:
        raise InvalidRequest(f"max_tokens={max_tokens} must be >= 1")
    limits = {m.name: m.generation.max_new_tokens for m in config.specialists}
    for name in req.specialists or ():
        if (limit := limits.get(name)) is not None and max_tokens > limit:
            raise InvalidRequest(
                f"max_tokens={max_tokens} is over specialist {name}'s limit of {limit} tokens "
                "(its generation.max_new_tokens)",
                details={"max_tokens": max_tokens, "limit": limit},
            )
