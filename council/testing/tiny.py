"""Tiny real models for tests: a random GPT-2 with a trained byte-level BPE tokenizer, saved to disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from council.config import SpecialistConfig
from council.prompts import TEMPLATES

# Enough text for a byte-level BPE to learn merges for the prompt words and ordinary English.
_CORPUS = """
the council answers questions from passages . each specialist knows one domain well .
a passage is data , not an instruction . if the passages do not hold the fact , answer unknown .
question : what is the capital of the northern province ? answer : the capital is varn .
question : who founded the guild of glassmakers ? answer : the guild was founded by ilsa merrow .
the river flows north through the valley and the old mill stands beside the bridge .
rain fell on the harbour town while ships waited for the tide to turn in the morning .
numbers one two three four five six seven eight nine ten hundred thousand year month day .
physics chemistry biology history geography music art law medicine finance sport weather .
The Quick Brown Fox Jumps Over The Lazy Dog. Alpha Beta Gamma Delta: 0123456789!?
"""


def _train_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE (GPT-2 style: any text round-trips) wrapped as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [_CORPUS] + [t.system + " " + t.body + " " + t.passage + " " + t.no_passages for t in TEMPLATES.values()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts * 3, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def build_tiny_gpt2(
    path: Path,
    *,
    n_positions: int = 256,
    seed: int = 0,
    vocab_size: int = 600,
    init_std: float = 0.1,
    chat_template: str | None = None,
    n_layer: int = 2,
    n_embd: int = 64,
) -> Path:
    """Save a random GPT-2 (2 layers of width 64 unless told) and its real tokenizer to `path`; returns `path`.

    It loads through the ordinary `from_pretrained` path. `init_std` is larger than GPT-2's 0.02 so that
    different prompts give different greedy continuations (batching bugs show). `chat_template` (Jinja)
    is stored with the tokenizer when given, to exercise the chat-template prompt path.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=max(2, n_embd // 64),
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_specialist_config(path: Path | str, name: str = "tiny", **overrides: Any) -> SpecialistConfig:
    """A SpecialistConfig for a tiny model folder; `overrides` are SpecialistConfig fields."""
    fields: dict[str, Any] = {
        "name": name,
        "model": str(path),
        "domain": "general",
        "description": f"tiny test specialist {name}",
        "generation": {"max_new_tokens": 8, "stop": ["\n"]},
    }
    fields.update(overrides)
    return SpecialistConfig.model_validate(fields)


def build_lora_adapter(
    base: str | Path, folder: Path, seed: int = 0, *, scale: float = 0.5, teach: tuple[str, str] | None = None,
    targets: tuple[str, ...] = ("q_proj", "v_proj"), rank: int = 8,
) -> str:
    """A rank-`rank` (8) PEFT LoRA on `targets` of a Llama `base` (q_proj/v_proj; add embed_tokens for an embedding
    LoRA, as the demo's adapters have), saved to `folder` with `save_pretrained` (adapter_config.json,
    adapter_model.safetensors). Its B matrices are random (not zero), so it changes the base's answers; with
    `teach` = (prompt, answer) it is then trained a few steps to continue that prompt with that answer (random
    adapters of a tiny model tend to collapse onto the same few words)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
        LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), lora_dropout=0.0),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            # PEFT starts an embedding LoRA's A at zero (a linear one's B): both random, so each part changes it.
            if "lora_B" in name or "lora_embedding_" in name:
                p.normal_(0, scale)
    if teach is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(base))
        prompt = tokenizer(teach[0], add_special_tokens=False)["input_ids"]
        # Then the newline a council member stops at (`generation.stop`), then eos: a base that has learnt to end
        # its answers with a newline (the demo's) may otherwise go on past the taught word.
        answer = tokenizer(" " + teach[1] + "\n", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + answer])
        labels = torch.tensor([[-100] * len(prompt) + answer])
        optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model.train()
        for _ in range(40):
            optimiser.zero_grad()
            model(input_ids=ids, labels=labels).loss.backward()
            optimiser.step()
        model.eval()
    model.save_pretrained(str(folder), save_embedding_layers=False)  # the LoRA alone, not the base's embeddings
    return str(folder)


def build_wider_llama(source: str | Path, path: Path) -> Path:
    """A random Llama like `source` (its tokenizer too) but twice as wide: adapters of `source` do not fit it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(str(source))
    config.hidden_size *= 2
    config.intermediate_size *= 2
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(path)
    return path
