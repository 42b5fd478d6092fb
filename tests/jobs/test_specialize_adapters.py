"""A few steps of `specialize --adapters`, in-process: PEFT adapters that load over their base and change it,
and the adapter council's YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file

from council.config import CouncilConfig
from council.jobs.lm import load_checkpoint
from council.jobs.lora import LoraPlan, attach, load_merged
from council.jobs.specialize import main
from council.prompts import get_template

pytestmark = pytest.mark.timeout(120)

STEPS = ["--warmup-steps", "2", "--general-steps", "3", "--branch-steps", "3", "--batch", "4", "--no-probe"]
PROMPT = get_template("qa").render("what is the penalty under the kavo act ?", [])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adapters")
    # lr 0.05: three steps must move the adapter's output away from the base's; rank 4 keeps it small.
    args = ["--out", str(out), "--adapters", "--lora-rank", "4", "--lora-alpha", "8", "--lora-lr", "0.05",
            "--only", "legal-1", "medical-2", *STEPS]  # fmt: skip
    assert main(args) == 0
    return out


def last_logits(model: torch.nn.Module, tok: object) -> torch.Tensor:
    ids = tok(PROMPT, return_tensors="pt")  # type: ignore[operator]
    with torch.no_grad():
        return model(**ids).logits[0, -1]


def test_adapters_are_peft_folders_that_change_their_base(trained: Path) -> None:
    base_dir = trained / "runs" / "general"
    base, tok = load_checkpoint(base_dir)
    before = last_logits(base, tok)
    outputs = {}
    for name in ("legal-1", "medical-2"):
        folder = trained / "adapters" / name
        assert sorted(p.name for p in folder.iterdir()) == [
            "adapter_config.json", "adapter_model.safetensors", "training.json",
        ]
        cfg = json.loads((folder / "adapter_config.json").read_text())
        assert (cfg["r"], cfg["lora_alpha"], cfg["peft_type"]) == (4, 8, "LORA")
        assert set(cfg["target_modules"]) == set(LoraPlan().target_modules)
        assert (folder / cfg["base_model_name_or_path"]).resolve() == base_dir.resolve()
        tensors = load_file(folder / "adapter_model.safetensors")
        assert any(k.endswith("embed_tokens.lora_embedding_A") for k in tensors), sorted(tensors)[:4]
        assert not [k for k in tensors if "lora" not in k]  # the LoRA alone, not the base's embedding matrix
        fresh, _ = load_checkpoint(base_dir)
        model = PeftModel.from_pretrained(fresh, str(folder)).eval()
        outputs[name] = last_logits(model, tok)
        assert (outputs[name] - before).abs().max() > 1e-3, f"{name}'s adapter leaves the base's output unchanged"
        with model.disable_adapter():  # the same model without its adapter is the base again
            assert torch.allclose(last_logits(model, tok), before, atol=1e-5)
        merged = load_merged(base_dir, folder)
        assert torch.allclose(last_logits(merged, tok), outputs[name], atol=1e-3)
    assert (outputs["legal-1"] - outputs["medical-2"]).abs().max() > 1e-3
    meta = json.loads((trained / "adapters" / "legal-1" / "training.json").read_text())
    assert meta["name"] == "legal-1" and meta["steps"] == 3 and 0 < meta["lora_params"] < meta["params"] / 4


def test_adapter_council_yaml_names_base_and_adapter(trained: Path) -> None:
    data = yaml.safe_load((trained / "adapters.yaml").read_text())
    rows = {r["name"]: r for r in data["specialists"]}
    assert list(rows) == ["legal-1", "medical-2"]  # the adapters that exist, in the council's order
    assert all("model" not in r for r in rows.values())
    assert rows["legal-1"]["base"] == "runs/general" and rows["legal-1"]["adapter"] == "adapters/legal-1"
    cfg = CouncilConfig.from_dict(data)
    assert [s.name for s in cfg.specialists] == list(rows)
    report = json.loads((trained / "adapters-report.json").read_text())
    assert [m["name"] for m in report["members"]] == ["legal-1", "medical-2"]
    assert not (trained / "council.yaml").exists() and not (trained / "models").exists()


def test_adapters_refuse_the_generalist_and_unknown_target_modules(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="generalist has its own shape"):
        main(["--out", str(tmp_path), "--adapters", "--only", "generalist", *STEPS])
    base, _ = load_checkpoint(Path(__file__).resolve().parents[2] / "council" / "demo" / "general")
    with pytest.raises(ValueError, match=r"\['c_attn'\] are not modules of this model"):
        attach(base, LoraPlan(target_modules=("q_proj", "c_attn")))
    with pytest.raises(ValueError, match="lora rank must be >= 1, got 0"):
        LoraPlan(rank=0)
