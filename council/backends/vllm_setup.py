"""What a vLLM engine starts with, apart from the engine: its CPU environment, where its weights are, LoRA ranks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from council.backends.lora import lora_rank
from council.errors import ModelLoadError

# LoRA ranks vLLM accepts for max_lora_rank.
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@contextlib.contextmanager
def scoped_env(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the engine's start-up (its worker processes inherit them), then restore."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_source(source: str) -> str:
    """A local folder as an absolute path; a hub id as is, or (with HF_HUB_OFFLINE) its cached snapshot folder."""
    from council.backends.tokens import looks_local

    if looks_local(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise ModelLoadError(f"cannot load model: no such folder {source!r}", details={"path": source})
        return str(path.resolve())
    if not _offline():
        return source
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(source, local_files_only=True))
    except Exception as e:
        raise ModelLoadError(
            f"cannot load model {source!r}: HF_HUB_OFFLINE is set and it is not in the local cache ({e})",
            details={"path": source},
        ) from e


def max_lora_rank(adapters: Sequence[str]) -> int:
    """The smallest max_lora_rank vLLM accepts that holds every adapter's rank."""
    r = max(lora_rank(a) for a in adapters)
    return next((x for x in _LORA_RANKS if x >= r), r)
