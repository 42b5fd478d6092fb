"""Specialists that are adapters of one shared base: which settings they share and how they are grouped.

A specialist with `base:` + `adapter:` is a LoRA adapter served by the ONE deployment of its base; every member on
that base shares the settings of that deployment (`SHARED`). The first member on a base sets them; a later member
may leave them out (it inherits them) or repeat them, but not set them differently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

# What one deployment of a base has once for all its members: the engine holding the weights and its replicas.
SHARED = ("engine", "engine_options", "dtype", "deployment")


class OnBase(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def base(self) -> str | None: ...


def inherit_shared(specialists: Any) -> Any:
    """Raw specialist dicts, each member on a base given the first same-base member's `SHARED` settings it lacks."""
    if not isinstance(specialists, list):
        return specialists
    first: dict[str, dict[str, Any]] = {}
    out = []
    for spec in specialists:
        base = spec.get("base") if isinstance(spec, dict) else None
        if isinstance(base, str):
            if base in first:
                spec = {**{k: v for k, v in first[base].items() if k in SHARED}, **spec}
            else:
                first[base] = spec
        out.append(spec)
    return out


def shared_problems(specialists: Sequence[Any]) -> list[tuple[str, str]]:
    """(field path, message) for each member on a base whose shared settings differ from the first member's."""
    first: dict[str, Any] = {}
    problems = []
    for i, spec in enumerate(specialists):
        if spec.base is None:
            continue
        lead = first.setdefault(spec.base, spec)
        for key in SHARED:
            if lead is not spec and getattr(spec, key) != getattr(lead, key):
                problems.append((
                    f"specialists.{i}.{key}",
                    f"differs from {lead.name}'s, which is on the same base {spec.base!r}: the members of a base share "
                    f"one deployment and its {', '.join(SHARED)}; leave it out here (it is inherited) or repeat it",
                ))  # fmt: skip
    return problems


def by_base(specialists: Iterable[OnBase]) -> dict[str, list[str]]:
    """base -> the names of its members, in config order (members without a base are left out)."""
    groups: dict[str, list[str]] = {}
    for spec in specialists:
        if spec.base is not None:
            groups.setdefault(spec.base, []).append(spec.name)
    return groups


def base_deployment_names(bases: Iterable[str]) -> dict[str, str]:
    """base -> its Serve deployment name, `Base_<last path part>` (a number added when two would collide)."""
    names: dict[str, str] = {}
    for base in bases:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "-", base.rstrip("/").split("/")[-1]) or "model"
        name, n = f"Base_{stem}", 2
        while name in names.values():
            name, n = f"Base_{stem}-{n}", n + 1
        names[base] = name
    return names


def multiplexed(limit: int | None, members: int) -> bool:
    """Whether a base's replicas load its members' adapters on demand (more members than one replica holds)."""
    return limit is not None and limit < members
