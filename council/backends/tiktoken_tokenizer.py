"""A tiktoken encoding as the tokenizer of a remote member (OpenAI models): `tokenizer: tiktoken:<encoding>`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from council.errors import ModelLoadError

TIKTOKEN_PREFIX = "tiktoken:"


@dataclass(frozen=True)
class _Added:
    content: str
    special: bool = True


class TiktokenTokenizer:
    """The part of a Hugging Face tokenizer's interface that `TokenizerCounter` uses, over a tiktoken encoding.

    Special-token strings in text are counted as ordinary text (`disallowed_special=()`), never refused: the counter
    strips them from untrusted text before it renders a prompt.
    """

    chat_template = None

    def __init__(self, encoding: Any) -> None:
        self.encoding = encoding
        self.name = str(encoding.name)
        self.all_special_tokens = sorted(encoding.special_tokens_set)
        self.added_tokens_decoder: dict[int, _Added] = {}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.encoding.encode(text, disallowed_special=())}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self.encoding.decode(ids))


def load_tiktoken(name: str) -> TiktokenTokenizer:
    """The tiktoken encoding `name` (e.g. o200k_base). tiktoken downloads an encoding on first use and caches it
    in $TIKTOKEN_CACHE_DIR: a host without internet needs the file there already (see the error)."""
    try:
        import tiktoken
    except ImportError as e:
        raise ModelLoadError(
            f"tokenizer: tiktoken:{name} needs the tiktoken package (pip install 'council[openai]'): {e}"
        ) from e
    try:
        encoding = tiktoken.get_encoding(name)
    except ValueError:  # an unknown name
        raise ModelLoadError(
            f"tokenizer: unknown tiktoken encoding {name!r}; known: {tiktoken.list_encoding_names()}"
        ) from None
    except Exception as e:  # the download failed: no network, a proxy, a firewall
        cache = os.environ.get("TIKTOKEN_CACHE_DIR") or "(unset)"
        raise ModelLoadError(
            f"tokenizer: cannot load tiktoken encoding {name!r}: tiktoken fetches it from the internet on first use "
            f"and that failed ({type(e).__name__}). Put the encoding's file in a folder and point TIKTOKEN_CACHE_DIR "
            f"at it where the replicas run (TIKTOKEN_CACHE_DIR is {cache}), or name a Hugging Face tokenizer instead",
            details={"tokenizer": f"{TIKTOKEN_PREFIX}{name}"},
        ) from None
    return TiktokenTokenizer(encoding)
