"""PEFT LoRA adapters on disk: their rank, and whether one fits the base it is configured on.

An adapter records the base it was trained on (`base_model_name_or_path` in adapter_config.json), but that path is
the training machine's; what must match is the shape of every module it adapts. Those shapes are read from the
adapter's safetensors header and from the base's module tree built on torch's meta device (no weights loaded).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from council.config import CouncilConfig, SpecialistConfig
from council.errors import ConfigError, ModelLoadError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."


def adapter_config(adapter: str) -> dict[str, Any]:
    """The adapter's adapter_config.json (ModelLoadError naming the folder when it is missing or unreadable)."""
    path = Path(adapter).expanduser() / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"no readable PEFT adapter at {adapter!r} ({CONFIG_FILE}: {e})", details={"path": adapter}
        ) from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: not a PEFT adapter config", details={"path": adapter})
    return data


def lora_rank(adapter: str) -> int:
    """The adapter's LoRA rank `r`."""
    try:
        return int(adapter_config(adapter)["r"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"cannot read the LoRA rank of adapter {adapter!r}: {e}", details={"path": adapter}) from e


def _tensor_shapes(adapter: str) -> dict[str, list[int]]:
    """name -> shape of the adapter's tensors, from the safetensors header alone."""
    path = Path(adapter).expanduser() / WEIGHTS_FILE
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _base_modules(base: str) -> dict[str, Any]:
    """The base's modules by name, built on the meta device from its config (no weights read)."""
    import torch
    from transformers import AutoModelForCausalLM

    from council.backends.tokens import load_model_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(load_model_config(base))
    return dict(model.named_modules())


def mismatch(base: str, adapter: str) -> str | None:
    """Why `adapter` cannot be applied to `base` (a module it adapts is missing or has another shape), or None."""
    shapes = _tensor_shapes(adapter)
    modules = _base_modules(base)
    trained_on = adapter_config(adapter).get("base_model_name_or_path")
    for key, shape in sorted(shapes.items()):
        # A linear layer's lora_A is (r, in), lora_B (out, r); an embedding's lora_embedding_A (r, vocab) and
        # lora_embedding_B (width, r).
        for part, dim in ((".lora_A.", 1), (".lora_B.", 0), (".lora_embedding_A", 1), (".lora_embedding_B", 0)):
            if part not in key:
                continue
            name = key.split(part)[0].removeprefix(_PREFIX)
            module = modules.get(name)
            if module is None:
                return f"it adapts {name!r}, which the base has not (made for {trained_on!r}?)"
            embedding = "embedding" in part
            sizes = ("num_embeddings", "embedding_dim") if embedding else ("in_features", "out_features")
            if not all(hasattr(module, a) for a in sizes):
                kind = "an embedding" if embedding else "a linear layer"
                return (f"it adapts {name!r} as {kind}, which the base's {name} is not "
                        f"(a {type(module).__name__}; made for {trained_on!r}?)")  # fmt: skip
            want = getattr(module, sizes[0] if dim == 1 else sizes[1])
            if shape[dim] != want:
                side = ("vocabulary" if embedding else "input") if dim == 1 else "output"
                return (
                    f"its {name} takes {side} size {shape[dim]}, the base's has {want}: it was made for another base "
                    f"({trained_on!r})"
                )
    return None


def merge(peft_model: Any) -> Any:
    """A PeftModel's LoRA folded into its base's weights (`merge_and_unload`), answering as the unmerged adapter does.

    An embedding LoRA adapts the input side only (in PEFT unmerged, and in vLLM); merged into embeddings the output
    layer shares (tied), it would shift the output side too. So tied output embeddings get their own copy first.
    """
    import torch

    base = peft_model.get_base_model()
    embeddings, head = base.get_input_embeddings(), base.get_output_embeddings()
    shared = getattr(embeddings, "base_layer", embeddings).weight
    head = getattr(head, "base_layer", head)  # the output layer itself, also when a LoRA wraps it
    adapted = bool(getattr(embeddings, "lora_embedding_A", None))  # untie only when the input side changes
    if adapted and head is not None and head.weight is shared:
        head.weight = torch.nn.Parameter(shared.detach().clone(), requires_grad=False)
        for config in {id(c): c for c in (base.config, base.config.get_text_config())}.values():
            config.tie_word_embeddings = False  # also where a multimodal model keeps the flag
    return peft_model.merge_and_unload()


def adapter_problems(spec: SpecialistConfig) -> list[tuple[str, str]]:
    """(field, message) for a member's adapter that is missing, not a PEFT LoRA adapter, or made for another base."""
    if spec.adapter is None or spec.engine == "openai":
        return []
    folder = Path(spec.adapter).expanduser()
    if not (folder / CONFIG_FILE).is_file():
        what = "no such folder" if not folder.exists() else f"no {CONFIG_FILE} in it"
        return [("adapter", f"{spec.adapter!r} is not a PEFT adapter: {what}")]
    if not (folder / WEIGHTS_FILE).is_file():
        return [("adapter", f"{spec.adapter!r} has no {WEIGHTS_FILE}")]
    if str(adapter_config(spec.adapter).get("peft_type", "")).upper() != "LORA":
        return [("adapter", f"{spec.adapter!r} is not a LoRA adapter (peft_type must be LORA)")]
    field = "base" if spec.base is not None else "model"
    if not Path(spec.model).expanduser().exists():
        return []  # a hub id: its shapes are checked when the engine loads it
    why = mismatch(spec.model, spec.adapter)
    return [] if why is None else [("adapter", f"{spec.adapter!r} does not fit `{field}` {spec.model!r}: {why}")]


def check_adapters(config: CouncilConfig, source: str = "config") -> None:
    """ConfigError naming `specialists.N.adapter` for each member whose adapter is missing or fits not its base."""
    problems = [
        f"specialists.{i}.{field}: {message}"
        for i, spec in enumerate(config.specialists)
        for field, message in adapter_problems(spec)
    ]
    if problems:
        raise ConfigError(f"{source}: {'; '.join(problems)}")
