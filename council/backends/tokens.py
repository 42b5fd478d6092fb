"""A specialist's own tokenizer: loading it, rendering its prompts and counting tokens (no weights)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from council.backends.tiktoken_tokenizer import TIKTOKEN_PREFIX
from council.config import SpecialistConfig
from council.errors import ConfigError, ModelLoadError
from council.prompts import (
    chairman_messages,
    chairman_prompt,
    chat_messages,
    get_template,
    marker_pattern,
    strip_markers,
)

log = logging.getLogger(__name__)

# Config attributes that hold a model's context window, in the order model families use them.
_WINDOW_ATTRS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")


def looks_local(source: str) -> bool:
    """True when `source` names a folder rather than a hub id ('org/name' has exactly one slash)."""
    if Path(source).expanduser().exists():
        return True
    return source.startswith(("/", ".", "~", os.sep)) or source.count("/") > 1


@contextmanager
def loading(what: str, source: str) -> Iterator[None]:
    """Turn any failure to load `source` (missing folder, unknown hub id, bad files) into ModelLoadError."""
    if looks_local(source) and not Path(source).expanduser().exists():
        raise ModelLoadError(f"cannot load {what}: no such folder {source!r}", details={"path": source})
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as e:  # transformers raises OSError, ValueError, HF hub errors, ... for a bad source
        raise ModelLoadError(f"cannot load {what} from {source!r}: {e}", details={"path": source}) from e


def load_tokenizer(source: str) -> Any:
    """The tokenizer of `source`, prepared for batched generation (left padding, a pad token)."""
    from transformers import AutoTokenizer

    with loading("tokenizer", source):
        tokenizer = AutoTokenizer.from_pretrained(str(Path(source).expanduser()) if looks_local(source) else source)
    if tokenizer.pad_token is None:
        # Causal LMs often ship without a pad token; eos is safe because padding is masked out.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model_config(source: str) -> Any:
    """The model's config (architecture only, no weights)."""
    from transformers import AutoConfig

    with loading("model config", source):
        return AutoConfig.from_pretrained(str(Path(source).expanduser()) if looks_local(source) else source)


def context_window_of(model_config: Any, source: str = "model") -> int:
    """The model's context window in tokens, read from whichever attribute its family uses."""
    configs = [model_config, getattr(model_config, "text_config", None)]
    for cfg in configs:
        for attr in _WINDOW_ATTRS:
            value = getattr(cfg, attr, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                return value
    raise ModelLoadError(f"{source}: the model config states no context window; set `context_window`")


class TokenizerCounter:
    """`TokenCounter` over a specialist's own tokenizer; also renders its prompts exactly as it will see them."""

    def __init__(self, config: SpecialistConfig, tokenizer: Any, model_config: Any) -> None:
        self.config = config
        self.name = config.name
        self.tokenizer = tokenizer
        self.template = get_template(config.prompt_template)
        self.max_new_tokens = config.generation.max_new_tokens
        self._overheads: dict[int, int] = {}
        # The tokenizer turns these strings into special tokens wherever they appear: passages are untrusted
        # text and must not carry an end-of-text or a chat role marker into the prompt.
        self._markers = marker_pattern(
            [*tokenizer.all_special_tokens, *(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)]
        )
        self.context_window = config.context_window or context_window_of(model_config, config.model)
        if self.context_window <= self.max_new_tokens:
            raise ConfigError(
                f"specialist {config.name}: generation.max_new_tokens={self.max_new_tokens} leaves no room "
                f"for a prompt in a context window of {self.context_window} tokens"
            )

    @property
    def uses_chat_template(self) -> bool:
        """Whether prompts go through the tokenizer's own chat template."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt that still leaves room for `max_new_tokens`."""
        return self.context_window - self.max_new_tokens

    def render_prompt(self, question: str, passages: Sequence[str], history: Sequence[tuple[str, str]] = ()) -> str:
        """The full prompt text: the chat template when the tokenizer has one, else the named plain template.
        `history`: a chat's system messages and earlier turns, (role, text) in order. The question, the history
        and the passages are all untrusted: none may carry a special token (an end of text, a role marker)."""
        question = strip_markers(question, self._markers)
        passages, history = self._clean(passages, history)
        if not self.uses_chat_template:
            return self.template.render(question, passages, history)
        return self._chat_prompt(chat_messages(self.template, question, passages, history))

    def render_messages(
        self, question: str, passages: Sequence[str], history: Sequence[tuple[str, str]] = ()
    ) -> list[dict[str, str]]:
        """The same request as chat messages (system: the fenced-passages instruction; user: passages and
        question), for engines that send messages, not prompts (openai). Cleaned as `render_prompt` cleans."""
        question = strip_markers(question, self._markers)
        passages, history = self._clean(passages, history)
        return chat_messages(self.template, question, passages, history)

    def render_chairman(
        self,
        question: str,
        passages: Sequence[str],
        answers: Sequence[str],
        history: Sequence[tuple[str, str]] = (),
    ) -> tuple[str, list[dict[str, str]]]:
        """A chairman's request (council.prompts.chairman_messages): its prompt as this model sees it, and as
        chat messages. The members' answers are untrusted text like passages."""
        passages, history = self._clean(passages, history)
        answers = [strip_markers(a, self._markers) for a in answers]
        messages = chairman_messages(self.template, question, passages, answers, history)
        if not self.uses_chat_template:
            return chairman_prompt(self.template, question, passages, answers, history), messages
        return self._chat_prompt([dict(m) for m in messages]), messages

    def _clean(
        self, passages: Sequence[str], history: Sequence[tuple[str, str]]
    ) -> tuple[list[str], list[tuple[str, str]]]:
        return (
            [strip_markers(p, self._markers) for p in passages],
            [(role, strip_markers(text, self._markers)) for role, text in history],
        )

    def _chat_prompt(self, messages: list[dict[str, str]]) -> str:
        try:
            return str(self._apply_chat_template(messages))
        except Exception:  # some chat templates refuse a system role: fold it into the first user turn
            system, *rest = messages
            first = next(i for i, m in enumerate(rest) if m["role"] == "user")
            rest[first] = {"role": "user", "content": f"{system['content']}\n{rest[first]['content']}"}
            return str(self._apply_chat_template(rest))

    def _apply_chat_template(self, messages: list[dict[str, str]]) -> Any:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a rendered prompt as the model gets them (a chat template already holds its specials)."""
        ids = self.tokenizer(prompt, add_special_tokens=not self.uses_chat_template)["input_ids"]
        return list(ids)

    def count(self, text: str) -> int:
        """Tokens `text` costs with this tokenizer, without special tokens."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_overhead(self) -> int:
        """Tokens of the prompt with an empty question and no passages (specials included)."""
        return self._empty_prompt_tokens(0)

    def passage_overhead(self) -> int:
        """Most tokens one more (empty) passage adds: an upper bound for passages numbered 1 to 99."""
        return max(0, *(self._empty_prompt_tokens(k + 1) - self._empty_prompt_tokens(k) for k in (0, 1, 9)))

    def _empty_prompt_tokens(self, n_passages: int) -> int:
        # Cached: the budget code asks for overheads on every request.
        if n_passages not in self._overheads:
            prompt = self.render_prompt("", [""] * n_passages)
            self._overheads[n_passages] = len(self.encode_prompt(prompt))
        return self._overheads[n_passages]


def load_tokenizer_counter(config: SpecialistConfig) -> TokenizerCounter:
    """A TokenCounter for `config` that loads only the tokenizer and model config, never the weights (a remote
    member: its declared `tokenizer` and `context_window`, see RemoteTokenCounter)."""
    if config.engine == "openai":
        return load_remote_counter(config)
    return TokenizerCounter(config, load_tokenizer(config.model), load_model_config(config.model))


# ---------------------------------------------------------------- remote members (engine: openai)

# A remote member's budget uses its model's real tokenizer (Hugging Face, or a tiktoken encoding) and its declared
# context window; no weights, no model config. The endpoint applies its own chat template, which we cannot see:
# with a Hugging Face tokenizer that has one we count through it (the endpoint most likely uses the same); else
# the plain template's rendering is counted, plus this margin for the roles and separators the endpoint adds
# (OpenAI documents about 3 tokens per message and 3 to prime the reply).
CHAT_MARGIN_TOKENS = 12


class RemoteTokenCounter(TokenizerCounter):
    """`TokenizerCounter` of a remote member: its declared window; a margin for the endpoint's chat template."""

    def __init__(self, config: SpecialistConfig, tokenizer: Any) -> None:
        super().__init__(config, tokenizer, model_config=None)  # context_window is declared (config checks it)

    def prompt_overhead(self) -> int:
        margin = 0 if self.uses_chat_template else CHAT_MARGIN_TOKENS
        return super().prompt_overhead() + margin


def load_remote_counter(config: SpecialistConfig) -> RemoteTokenCounter:
    """The token counter of a remote (engine: openai) member, from its `tokenizer` field."""
    source = config.tokenizer
    if source is None or config.context_window is None:  # SpecialistConfig refuses this; be clear anyway
        raise ModelLoadError(f"specialist {config.name}: a remote member needs `tokenizer` and `context_window`")
    if source.startswith(TIKTOKEN_PREFIX):
        from council.backends.tiktoken_tokenizer import load_tiktoken

        tokenizer: Any = load_tiktoken(source[len(TIKTOKEN_PREFIX) :])
    else:
        tokenizer = load_tokenizer(source)
    return RemoteTokenCounter(config, tokenizer)
