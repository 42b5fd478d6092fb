"""Small causal LMs for the world's question answering: build, encode answer-only batches, train a phase,
probe by exact match, save and load Hugging Face checkpoints. The recipe that uses them: `specialize.py`."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from council.world.exercises import ExerciseMaker, Mixture
from council.world.generator import World

if TYPE_CHECKING:
    import torch
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast


@dataclass(frozen=True)
class ModelShape:
    """Model size. Two layers are the least that can copy from context (match, then copy)."""

    n_layer: int = 2
    # 2x64 never learnt to read (TRAINING.md); 2x128 reads one passage at 83% after 400 steps of READ_ONE.
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 256  # 4 passages plus the question fit in about 180 word tokens
    # GPT-2 2x64 had not learnt to read after 1,050 steps (fresh facts 0-3%): its learnt absolute positions make
    # "look at the words just before" slow to find. Llama's rotary positions make it a relative pattern.
    arch: str = "llama"


@dataclass(frozen=True)
class Phase:
    """One training run: steps, batch, learning rate (warm-up then cosine decay) and the data mixture."""

    steps: int
    batch: int = 16
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    questions: int = 4  # supervised questions per episode (the first in the exact serving format)
    mixture: Mixture = Mixture()


def new_model(shape: ModelShape, tokenizer: PreTrainedTokenizerFast, seed: int) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 sized by `shape`, with the tokenizer's vocabulary and special ids."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    if shape.arch == "llama":
        return _new_llama(shape, tokenizer)
    cfg = GPT2Config(
        vocab_size=len(tokenizer), n_positions=shape.n_positions, n_embd=shape.n_embd,
        n_layer=shape.n_layer, n_head=shape.n_head, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    # Eager attention: with head size 16 and ~150 tokens it trains faster on CPU than SDPA (measured).
    cfg._attn_implementation = "eager"
    return GPT2LMHeadModel(cfg)


def _new_llama(shape: ModelShape, tokenizer: PreTrainedTokenizerFast) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.n_embd, intermediate_size=4 * shape.n_embd,
        num_hidden_layers=shape.n_layer, num_attention_heads=shape.n_head, num_key_value_heads=shape.n_head,
        max_position_embeddings=shape.n_positions, tie_word_embeddings=True, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    cfg._attn_implementation = "eager"
    return LlamaForCausalLM(cfg)


def encode(
    tokenizer: PreTrainedTokenizerFast, episodes: Sequence[Sequence[tuple[str, str]]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask, plus (row, position) of every answer token's prediction and its target.

    An episode is a list of (text, answer) turns; each answer is supervised as ' ' + answer + newline.
    """
    import torch

    seqs: list[list[int]] = []
    rows, cols, targets = [], [], []
    for b, turns in enumerate(episodes):
        seq: list[int] = []
        for text, answer in turns:
            seq += tokenizer(text, add_special_tokens=False)["input_ids"]
            a = tokenizer(" " + answer + "\n", add_special_tokens=False)["input_ids"]
            for tok in a:
                rows.append(b)
                cols.append(len(seq) - 1)
                targets.append(tok)
                seq.append(tok)
        seqs.append(seq)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s)
        mask[b, : len(s)] = 1
    return ids, mask, torch.tensor([rows, cols]), torch.tensor(targets)


def answer_logits(model: GPT2LMHeadModel, ids: torch.Tensor, mask: torch.Tensor, where: torch.Tensor) -> Any:
    """Logits only where an answer token is predicted: the vocabulary projection elsewhere is wasted work."""
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    return model.lm_head(hidden[where[0], where[1]])


def train_phase(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, maker: ExerciseMaker, phase: Phase, desc: str,
    every: tuple[int, Callable[[int], None]] | None = None,
) -> list[float]:
    """Train with answer-only cross-entropy and AdamW; returns the loss of every step.

    `every=(n, fn)` calls fn(step) every n steps (the general phase logs its reading accuracy that way).
    """
    import torch
    from tqdm import tqdm

    params = [p for p in model.parameters() if p.requires_grad]  # a LoRA trains its adapter alone
    opt = torch.optim.AdamW(params, lr=phase.lr, weight_decay=phase.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, phase))
    model.train()
    losses: list[float] = []
    bar = tqdm(range(phase.steps), desc=desc, mininterval=5.0)
    for step in bar:
        if every and step and step % every[0] == 0:
            model.eval()
            every[1](step)
            model.train()
        ids, mask, where, target = encode(tokenizer, [maker.episode(phase.questions) for _ in range(phase.batch)])
        loss = torch.nn.functional.cross_entropy(answer_logits(model, ids, mask, where), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}", refresh=False)
    model.eval()
    return losses


def _lr_factor(step: int, phase: Phase) -> float:
    if step < phase.warmup:
        return (step + 1) / phase.warmup
    progress = (step - phase.warmup) / max(1, phase.steps - phase.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def exact_match(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, pairs: Sequence[tuple[str, str]], batch: int = 64
) -> float:
    """Share of pairs whose greedy answer is exactly the gold one (teacher-forced argmax = greedy decoding)."""
    import torch

    right = 0
    with torch.no_grad():
        for i in range(0, len(pairs), batch):
            ids, mask, where, target = encode(tokenizer, [[p] for p in pairs[i : i + batch]])
            ok = (answer_logits(model, ids, mask, where).argmax(-1) == target).long()
            per_row = torch.zeros(len(ids), dtype=torch.long).index_add_(0, where[0], 1 - ok)
            right += int((per_row == 0).sum())
    return right / max(1, len(pairs))


def save_checkpoint(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, out: Path, meta: dict) -> Path:
    """A standard HF folder in fp16; generation stops at the newline token as well as at eos."""
    import copy

    out.mkdir(parents=True, exist_ok=True)
    half = copy.deepcopy(model).half()
    newline = tokenizer.convert_tokens_to_ids("\n")
    half.generation_config.eos_token_id = [tokenizer.eos_token_id, newline]
    half.generation_config.pad_token_id = tokenizer.pad_token_id
    half.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(meta, indent=1, default=str))
    return out


def load_checkpoint(path: str | Path) -> tuple[Any, Any]:
    """Load a checkpoint in fp32 (CPU matmuls in fp16 are slow)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path)


def probe_pairs(
    world: World, split: str, *, passages: int, held_out: bool | None = None, domains: Sequence[str] = (),
    entities: set[str] | None = None, limit: int = 100, seed: int = 0,
) -> list[tuple[str, str]]:
    """(prompt, gold) for a world's questions: the gold passage (when `passages` > 0) among distractors."""
    from council.prompts import get_template

    rng = random.Random(seed)
    docs = {d.id: d for d in world.documents}
    qs = [
        q for q in world.questions(split, held_out)
        if (not domains or q.domain in domains) and (entities is None or q.entity in entities)
    ]
    qs = rng.sample(qs, min(limit, len(qs)))
    out = []
    for q in qs:
        chosen = [docs[q.doc_id]] if passages and q.doc_id and q.split != "unanswerable" else []
        others = [d for d in world.documents if d.domain == q.domain and d.id != q.doc_id]
        chosen += rng.sample(others, passages - len(chosen)) if passages else []
        rng.shuffle(chosen)
        out.append((get_template("qa").render(q.question, [d.text for d in chosen]), q.answer))
    return out


def count_params(model: GPT2LMHeadModel, *, embeddings: bool = True) -> int:
    """Parameters of a model; without embeddings, the ones every token's forward pass multiplies through."""
    n = sum(p.numel() for p in model.parameters())
    if not embeddings:
        n -= int(model.get_input_embeddings().weight.numel())  # type: ignore[operator]
        wpe = getattr(model.base_model, "wpe", None)
        n -= wpe.weight.numel() if wpe is not None else 0
    return n
