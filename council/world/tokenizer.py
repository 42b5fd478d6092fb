"""A word-level tokenizer that covers every world: each entity name, value word and template word is one token."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from council.prompts import TEMPLATES, UNKNOWN
from council.world.schema import fixed_words, name_pool

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, UNK, EOS = "[PAD]", "[UNK]", "[EOS]"
NEWLINE = "\n"
# Words, digits, newlines and single punctuation marks are the pieces; spaces separate them.
PIECE_RE = r"\n|[a-z0-9]+|[^\sa-z0-9]"
MAX_PASSAGE_INDEX = 32


def vocabulary() -> list[str]:
    """The fixed vocabulary in a stable order: specials, newline, template words, schema words, names."""
    template_text = " ".join(
        " ".join((t.system, t.passage, t.body, t.no_passages)) for t in TEMPLATES.values()
    )
    words = set(re.findall(PIECE_RE, template_text.replace("\n", " ").lower()))
    words |= fixed_words() | {UNKNOWN, "(", ")", "/", "<", ">", ".", ",", "?", ":", "'", "-", "!"}
    words |= {str(i) for i in range(MAX_PASSAGE_INDEX + 1)}
    # transformers' StopStringCriteria probes every tokenizer with this word: it must not be [UNK].
    words.add("abcdef")
    words -= {"{", "}", "i", "text", "system", "passages", "question"} - _needed(template_text)
    ordered = [PAD, UNK, EOS, NEWLINE] + sorted(words) + [n for n in name_pool() if n not in words]
    return list(dict.fromkeys(ordered))


def _needed(template_text: str) -> set[str]:
    # Placeholder names like {question} vanish on render, but the same word may also be literal text.
    rendered = " ".join(
        t.render("question", ["text"]) + t.render("question", []) for t in TEMPLATES.values()
    )
    return set(re.findall(PIECE_RE, rendered.lower()))


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The world tokenizer as a transformers fast tokenizer (pad, unk and eos set; lowercases input)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE_RE), behavior="removed", invert=True)
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, unk_token=UNK, eos_token=EOS, padding_side="left"
    )
    fast.model_max_length = 256
    return fast
