"""Reading a council config: relative paths made absolute, validation errors named by their dotted field path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from council.errors import CouncilError

M = TypeVar("M", bound=BaseModel)
# The error type of a field checked against another model: its context lists (sub-path, message) pairs.
NESTED = "nested_fields"


def resolve_paths(data: Any, base: Path) -> Any:
    """Make specialists' relative `model`/`base`/`adapter` paths (a remote member's `tokenizer`) absolute when they
    exist next to the YAML file, and a relative `retrieval.path` relative to the file's folder.

    Hub ids ("org/name") are left alone unless a folder of that name exists beside the file.
    """
    if not isinstance(data, dict):
        return data
    retrieval = data.get("retrieval")
    if isinstance(retrieval, dict) and isinstance(retrieval.get("path"), str):
        store = Path(retrieval["path"]).expanduser()
        data = {**data, "retrieval": {**retrieval, "path": str(store if store.is_absolute() else base / store)}}
    if not isinstance(data.get("specialists"), list):
        return data
    specs = []
    for spec in data["specialists"]:
        if isinstance(spec, dict):
            spec = dict(spec)
            remote = spec.get("engine") == "openai"  # its `model` names what the endpoint serves, never a folder
            for key in ("tokenizer",) if remote else ("model", "base", "adapter"):
                value = spec.get(key)
                if isinstance(value, str) and not Path(value).is_absolute() and (base / value).exists():
                    spec[key] = str((base / value).resolve())
        specs.append(spec)
    return {**data, "specialists": specs}


def validated(model: type[M], data: Any, source: str, error: type[CouncilError]) -> M:
    """`data` (a mapping) as `model`; else `error` whose message starts with `source` and names each bad field."""
    if not isinstance(data, dict):
        raise error(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise error(f"{source}: {format_validation_error(e)}") from None


def format_validation_error(e: ValidationError) -> str:
    """'specialists.0.name: Field required; router.k: ...' — the dotted field path first."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == NESTED:  # e.g. engine_options checked against its engine's model
            parts += [".".join(p for p in (loc, sub) if p) + f": {msg}" for sub, msg in err["ctx"]["nested"]]
        else:
            parts.append(f"{loc or '(root)'}: {err['msg']}")
    return "; ".join(parts)
