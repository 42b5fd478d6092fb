"""A few training steps of the specialize job, in-process (no Ray), give checkpoints HF loads and generates with."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from council.config import CouncilConfig
from council.jobs.specialize import Phase, Plan, main, specialize
from council.prompts import get_template

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("specialize")
    plan = replace(
        Plan(), reading_warmup=Phase(steps=2, batch=4), general=Phase(steps=4, batch=4), branch=Phase(steps=2, batch=4),
        probe=False,
    )
    specialize(plan, out, only=("legal-1", "generalist"))
    return out


def test_checkpoints_load_with_auto_classes_and_generate(trained: Path) -> None:
    for name in ("legal-1", "generalist"):
        path = trained / "models" / name
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        prompt = get_template("qa").render("what is the penalty under the kavo act ?", [])
        ids = tok(prompt, return_tensors="pt")
        assert tok.unk_token_id not in ids["input_ids"][0].tolist()
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=3, do_sample=False)
        assert out.shape[1] > ids["input_ids"].shape[1]
        assert json.loads((path / "training.json").read_text())["name"] == name


def test_council_yaml_is_a_valid_council_config(trained: Path) -> None:
    cfg = CouncilConfig.from_yaml(trained / "council.yaml")
    assert len(cfg.specialists) == 6
    assert all(s.generation.stop == ["\n"] and s.model.endswith(f"models/{s.name}") for s in cfg.specialists)
    report = json.loads((trained / "training-report.json").read_text())
    assert {m["name"] for m in report["members"]} == {"legal-1", "generalist"}


def test_main_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--world-seed" in capsys.readouterr().out
