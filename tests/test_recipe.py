"""docs/recipes/gpu-node.sh end to end with tiny sizes on the CPU: a pickled-only XGLM-style
seed (as facebook/xglm-* ships), a corpus read with its tokenizer, typology experts trained
two at a time, and the ensemble against the dense model; run again, it does nothing new."""

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
import zstandard
from conftest import SHARED_DATA, TEST_LANGS
from transformers import AutoModelForCausalLM, AutoTokenizer, XGLMConfig

from xelm_cli.bundle.store import Bundle, verify_bundle

RECIPE = Path(__file__).resolve().parent.parent / "docs" / "recipes" / "gpu-node.sh"


def pickled_xglm(tokenizer_dir: Path, out: Path) -> Path:
    """A tiny XGLM with only pytorch_model.bin, and the tests' tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = XGLMConfig(
        vocab_size=len(tokenizer), d_model=32, ffn_dim=64, num_layers=2, attention_heads=2,
        max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    out.mkdir(parents=True)
    config.save_pretrained(out)
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    tokenizer.save_pretrained(out)
    return out


def corpus_head(out: Path, lines: int) -> Path:
    out.mkdir(parents=True)
    for lang in TEST_LANGS:
        with open(SHARED_DATA / "corpus" / "train" / f"{lang}.jsonl.zst", "rb") as f:
            reader = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), "utf-8")
            (out / f"{lang}.jsonl").write_text("".join(reader.readline() for _ in range(lines)))
    return out


def run_recipe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(RECIPE)], env=os.environ | env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


def test_the_gpu_node_recipe_runs_end_to_end_tiny(tokenizer_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "node"
    env = {
        "XELM": f"{sys.executable} -m xelm_cli",
        "MODEL": str(pickled_xglm(tokenizer_dir, tmp_path / "xglm")),
        "LANGS": ",".join(TEST_LANGS),
        "CORPUS": str(corpus_head(tmp_path / "corpus", 200)),
        "CAP": "3000",
        "K": "2",
        "BUDGET": "2048",
        "TRAIN_ARGS": "--block-size 32 --batch-size 4 --warmup-steps 2",
        "PARALLEL": "2",
        "EVAL": str(SHARED_DATA / "eval" / "flores200-devtest"),
        "EVAL_LIMIT": "4",
        "OUT": str(out),
    }
    done = run_recipe(env)
    assert done.returncode == 0, done.stderr[-3000:]
    seed = Bundle.read(out / "seed")
    assert seed.manifest.origin["converted"]["loader"] == "torch.load(weights_only)"
    plan = json.loads((out / "plan.json").read_text())
    assert [run["name"] for run in plan["runs"]] == ["expert-0", "expert-1", "dense"]
    for run in plan["runs"]:
        assert verify_bundle(Path(run["output"])) == [], run["name"]
        assert (out / "runs" / "logs" / f"{run['name']}.log").is_file()
    experts = sorted((out / "runs" / "experts").iterdir())
    assert [p.name for p in experts if not p.name.startswith(".")] == ["expert-0", "expert-1"]
    results = json.loads((out / "results.json").read_text())
    names = [system["name"] for system in results["systems"]]
    assert names[0].startswith("ensemble[language]") and len(names) == 4  # + 2 experts, dense
    for system in results["systems"]:
        assert math.isfinite(system["metrics"]["overall"]["perplexity"]), system["name"]

    weights = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    again = run_recipe(env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("skip (done):") == 3
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == weights
