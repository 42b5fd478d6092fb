"""Specialists as LoRA adapters on one shared base: attach a PEFT LoRA to a base model, save it as a PEFT
adapter folder, load it back over its base (merged, for evaluation). The recipe that uses it: `specialize.py`."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Closed-book recall lives mostly in the MLP (a key-value memory); attention must still route the entity's
# name to it and keep reading passages, so both are adapted (TRAINING.md, "Specialists as adapters").
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
# The input embeddings too: the shared phase never has to tell one entity's name from another's (it copies names
# from passages), so their embeddings come out nearly alike (cosine 0.97) and no projection can key a fact on
# them; a full branch retrains them, a LoRA of the projections alone learnt finance's facts not at all. Only the
# input side is adapted (the tied output embeddings stay the base's, as vLLM applies an embedding LoRA).
EMBEDDING = ("embed_tokens",)


@dataclass(frozen=True)
class LoraPlan:
    """One LoRA adapter per specialist over the shared base: rank, scaling, dropout, adapted modules, rate."""

    rank: int = 32
    alpha: int = 64
    dropout: float = 0.0  # memorising facts: dropout only slows it down
    target_modules: tuple[str, ...] = EMBEDDING + ATTENTION + MLP
    # A low-rank update moves the weights less per step than full fine-tuning at the same rate: the full
    # branches' 1e-3 is raised (LoRA's usual practice).
    lr: float = 3e-3

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora target_modules is empty: name the projections to adapt (e.g. q_proj down_proj)")
        if self.lr <= 0:
            raise ValueError(f"lora lr must be > 0, got {self.lr}")


def attach(model: Any, lora: LoraPlan) -> Any:
    """`model` wrapped as a PeftModel with a fresh LoRA on `lora.target_modules`; only the LoRA trains.

    A target module the model does not have is an error naming it (PEFT would only say none matched).
    """
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in lora.target_modules if t not in present]
    if missing:
        raise ValueError(f"lora target_modules {missing} are not modules of this model (it has e.g. "
                         f"{sorted(present & set(EMBEDDING + ATTENTION + MLP)) or sorted(present)[:8]})")
    cfg = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
        bias="none", task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(model, cfg)


def base_digest(base_dir: Path) -> str:
    """sha256 of the base's weights: an adapter records which base it was trained over."""
    h = hashlib.sha256()
    with open(Path(base_dir) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_adapter(peft_model: Any, out: Path, base_dir: Path, meta: dict) -> Path:
    """A PEFT adapter folder (adapter_config.json + adapter_model.safetensors, fp16 like the full checkpoints)
    and training.json. The config's base_model_name_or_path is the base's path relative to the adapter."""
    out.mkdir(parents=True, exist_ok=True)
    half = copy.deepcopy(peft_model).half()
    half.peft_config["default"].base_model_name_or_path = str(Path(base_dir).resolve())
    # An embedding LoRA's own A and B only: PEFT would also save the base's whole embedding matrix.
    half.save_pretrained(out, save_embedding_layers=False)
    config_path = out / "adapter_config.json"  # relative once saved: PEFT reads the base's config while saving
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = os.path.relpath(base_dir, out)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "README.md").unlink(missing_ok=True)  # PEFT's empty model-card template; training.json says it all
    meta = {**meta, "base": os.path.relpath(base_dir, out), "base_sha256": base_digest(base_dir)}
    (out / "training.json").write_text(json.dumps(meta, indent=1, default=str))
    return out


def load_merged(base_dir: str | Path, adapter_dir: str | Path) -> Any:
    """The base (fp32) with the adapter merged into its weights: a plain transformers model."""
    from peft import PeftModel

    from council.backends.lora import merge
    from council.jobs.lm import load_checkpoint

    base, _ = load_checkpoint(base_dir)
    return merge(PeftModel.from_pretrained(base, str(adapter_dir))).eval()


def lora_params(peft_model: Any) -> int:
    """Trainable (LoRA) parameters of a PeftModel."""
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def folder_bytes(path: Path) -> int:
    """Bytes on disk of a folder's files (a checkpoint or an adapter)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
