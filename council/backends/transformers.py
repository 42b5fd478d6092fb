"""A council member backed by a Hugging Face causal LM: batched, left-padded, greedy by default."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from council.backends.engine import sequence_confidence
from council.backends.tokens import (
    TokenizerCounter,
    load_model_config,
    load_tokenizer,
    load_tokenizer_counter,
    loading,
)
from council.config import SpecialistConfig
from council.errors import InvalidRequest
from council.types import Generation

log = logging.getLogger(__name__)

__all__ = ["Rows", "TransformersSpecialist", "cut_at_stop", "load_tokenizer_counter"]

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the earliest of the stop strings."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def pick_device() -> str:
    """'cuda' when a GPU is visible to this process, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(requested: str, device: str) -> Any:
    """The torch dtype for the weights: fp32 on CPU always; on CUDA the config's, `auto` = bf16 if supported."""
    import torch

    if device != "cuda":
        return torch.float32
    if requested == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, _DTYPES[requested])


def load_causal_lm(config: SpecialistConfig, device: str, dtype: Any) -> Any:
    """The model (with its PEFT adapter merged in when one is configured), on `device`, in eval mode."""
    from transformers import AutoModelForCausalLM

    model: Any
    with loading("model", config.model):
        model = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype)
    if config.adapter:
        from peft import PeftModel

        with loading("adapter", config.adapter):
            model = PeftModel.from_pretrained(model, config.adapter)
        if hasattr(model, "merge_and_unload"):  # LoRA-style adapters fold into the weights: faster decoding
            from council.backends.lora import merge

            model = merge(model)
    return model.to(device).eval()


@dataclass(frozen=True)
class Rows:
    """What one `generate` pass produced, per row: the new token ids (padding after a stop included) and the
    model's log-probability of each of them (raw logits, before any sampling warper)."""

    ids: list[list[int]]
    logprobs: list[list[float]]


class TransformersSpecialist(TokenizerCounter):
    """Implements both `Specialist` (async generate) and `TokenCounter` (its own tokenizer's counts)."""

    def __init__(self, config: SpecialistConfig) -> None:
        super().__init__(config, load_tokenizer(config.model), load_model_config(config.model))
        self.device = pick_device()
        self.dtype = pick_dtype(config.dtype, self.device)
        self.model = load_causal_lm(config, self.device, self.dtype)
        self._stopping = self._stop_criteria()
        # One forward pass at a time: Serve batches requests, and threads would only fight over the cores.
        self._lock = threading.Lock()
        log.info("specialist %s: %s on %s (%s)", self.name, config.model, self.device, self.dtype)

    def _stop_criteria(self) -> Any:
        # Built once: StopStringCriteria preprocesses the whole vocabulary.
        from transformers import StoppingCriteriaList, StopStringCriteria

        stops = [s for s in self.config.generation.stop if s]
        return StoppingCriteriaList([StopStringCriteria(self.tokenizer, stops)]) if stops else None

    async def generate(self, question: str, passages: Sequence[str]) -> Generation:
        """Answer one question from its passages (runs the batch path in a worker thread)."""
        [generation] = await asyncio.to_thread(self.generate_batch, [(question, passages)])
        return generation

    def generate_batch(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[Generation]:
        """Answer several (question, passages) pairs in one padded forward batch."""
        return self.generate_texts([self.render_prompt(q, p) for q, p in items])

    def generate_texts(self, prompts: Sequence[str], *, max_new_tokens: int | None = None) -> list[Generation]:
        """Generate for already-rendered prompts; one Generation each, in order."""
        if not prompts:
            return []
        start = time.perf_counter()
        max_new = max_new_tokens or self.max_new_tokens
        if max_new >= self.context_window:
            raise InvalidRequest(f"max_new_tokens={max_new} leaves no room in a {self.context_window}-token window")
        ids = [self._fit(self.encode_prompt(p), self.context_window - max_new) for p in prompts]
        rows = self._run(ids, max_new)
        latency = time.perf_counter() - start
        return [
            self._finish(row, lp, len(prompt), latency)
            for row, lp, prompt in zip(rows.ids, rows.logprobs, ids, strict=True)
        ]

    def healthy(self) -> bool:
        """Whether a one-token generation works."""
        try:
            self.generate_texts(["ok"], max_new_tokens=1)
            return True
        except Exception:
            log.exception("specialist %s failed its health check", self.name)
            return False

    def _fit(self, ids: list[int], limit: int) -> list[int]:
        # Cut from the left: the question sits at the end of the prompt and must survive.
        if len(ids) <= limit:
            return ids
        log.warning(
            "specialist %s: prompt of %d tokens cut to %d to fit a %d-token window with the answer",
            self.name, len(ids), limit, self.context_window,
        )  # fmt: skip
        return ids[-limit:]

    def _run(
        self,
        ids: list[list[int]],
        max_new_tokens: int,
        *,
        stopping: Any = None,
        sampling: dict[str, Any] | None = None,
        streamer: Any = None,
        adapters: Sequence[str | None] = (),
    ) -> Rows:
        """Left-pad, generate, and return each row's new tokens (padding after a stop included) with their
        log-probabilities.

        `stopping` / `sampling` replace the config's stop criteria / sampling kwargs (the engine's per-request
        settings); `streamer` is a transformers streamer fed each new token; `adapters`: per row, the loaded LoRA
        adapter it runs under (None: the bare model) — PEFT's mixed-batch inference, one pass for them all."""
        import torch

        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)
        with self._lock, torch.inference_mode():
            out = self.model.generate(
                **self._adapter_rows(adapters, len(ids)),
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                stopping_criteria=self._stopping if stopping is None else stopping,
                pad_token_id=pad,
                eos_token_id=self.tokenizer.eos_token_id,
                streamer=streamer,
                return_dict_in_generate=True,
                output_logits=True,  # raw logits per step: the chosen tokens' probabilities (confidence)
                **(self._sampling() if sampling is None else sampling),
            )
            new = out.sequences[:, width:]
            # (rows, steps): log-softmax of each step's raw logits, read at the token chosen at that step.
            logits = torch.stack(out.logits, dim=1)[:, : new.shape[1]].float()
            chosen = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        return Rows([row.tolist() for row in new.cpu()], [row.tolist() for row in chosen.cpu()])

    # -- LoRA adapters over this (unmerged) model, one active per pass (a PeftModel once one is loaded) ----------

    @property
    def adapters(self) -> list[str]:
        """Names of the adapters loaded over this model."""
        return list(getattr(self.model, "peft_config", {}) or {})

    def load_adapter(self, name: str, path: str) -> None:
        """Load a PEFT adapter under `name` (the base's weights stay as they are)."""
        from peft import PeftModel

        with loading("adapter", path), self._lock:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
            self.model.to(self.device).eval()

    def delete_adapter(self, name: str) -> None:
        """Unload the adapter `name`; the bare model once none is left."""
        with self._lock:
            if self.adapters == [name]:
                self.model = self.model.unload()  # the LoRA layers out, the base's weights untouched
            else:
                self.model.delete_adapter(name)

    def _adapter_rows(self, adapters: Sequence[str | None], rows: int) -> dict[str, Any]:
        # Called under the lock. Measured on the 2-core box (8 rows, 2 adapters): one mixed pass took 0.5x the
        # time of one pass per adapter, with the same greedy answers.
        loaded = self.adapters
        wanted = list(adapters) or [None] * rows
        missing = sorted({a for a in wanted if a is not None and a not in loaded})
        if missing:
            what = f"adapter {missing[0]!r} is" if len(missing) == 1 else f"adapters {missing} are"
            raise InvalidRequest(f"specialist {self.name}: {what} not loaded; loaded: {loaded}")
        if not loaded:
            return {}
        return {"adapter_names": [a if a is not None else "__base__" for a in wanted]}

    def _sampling(self) -> dict[str, Any]:
        g = self.config.generation
        if not g.do_sample:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": g.temperature, "top_p": g.top_p}

    def ended_at(self, new_ids: Sequence[int]) -> int:
        """How many of `new_ids` count: those before the first eos/pad (a finished row is filled with pad)."""
        ends = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        return next((i for i, t in enumerate(new_ids) if t in ends), len(new_ids))

    def _finish(self, new_ids: list[int], logprobs: list[float], prompt_tokens: int, latency: float) -> Generation:
        n = self.ended_at(new_ids)
        text = self.tokenizer.decode(new_ids[:n], skip_special_tokens=True)
        text = cut_at_stop(text, self.config.generation.stop).strip()
        return Generation(
            text=text, prompt_tokens=prompt_tokens, completion_tokens=n, latency_s=latency,
            confidence=sequence_confidence(logprobs, n),
        )  # fmt: skip
