"""Fine-tuning an MoE bundle with the trainer: all weights or the routers only, with the
load-balancing loss in the optimised loss and in the metrics log."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import weights
from train_helpers import SMALL_OPTIONS, Killed, StopsAt
from xelm_trainer import CausalLMTrainer

from xelm_cli.bundle.store import Bundle, verify_bundle
from xelm_cli.common.errors import UsageError
from xelm_cli.plugin.contracts import TrainRequest, checkpoint_dir


def train_request(bundle: Path, shards: Path, out: Path, **options: object) -> TrainRequest:
    return TrainRequest(
        bundle,
        shards,
        out,
        tokens=1024,
        options={**SMALL_OPTIONS, **options},
        command="test",
        languages=["en", "tr"],
    )


def train(bundle: Path, shards: Path, out: Path, **options: object) -> Bundle:
    return CausalLMTrainer().train(train_request(bundle, shards, out, **options))


def aux_losses(out: Path) -> list[float]:
    lines = (checkpoint_dir(out) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["aux_loss"] for line in lines if "loss" in json.loads(line)]


def test_router_only_changes_only_the_routers_and_logs_the_balance_loss(
    moe: Bundle, moe_shards: Path, tmp_path: Path
) -> None:
    trained = train(moe.path, moe_shards, tmp_path / "t", router_only=True)
    assert verify_bundle(trained.path) == []
    before, after = weights(moe.path), weights(trained.path)
    # with top-1 routing the LM loss gives the routers no gradient (the chosen expert's weight
    # is renormalised to 1): they move only through the load-balancing loss
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {f"model.layers.{i}.block_sparse_moe.gate.weight" for i in range(2)}
    losses = aux_losses(tmp_path / "t")
    assert len(losses) == 2 and all(0.99 <= x <= 2.0 for x in losses)  # 1 when balanced
    assert trained.manifest.training["options"]["router_only"] is True  # type: ignore[index]


def test_all_weights_with_a_heavier_balance_loss(
    moe: Bundle, moe_shards: Path, tmp_path: Path
) -> None:
    trained = train(moe.path, moe_shards, tmp_path / "t", aux_loss=0.5)
    before, after = weights(moe.path), weights(trained.path)
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    name = "model.layers.0.block_sparse_moe.experts.1.w2.weight"
    assert not torch.equal(before[name], after[name])
    assert len(aux_losses(tmp_path / "t")) == 2
    assert trained.manifest.training["implementation"]["loss"] == "plain"  # type: ignore[index]


def test_moe_options_are_refused_for_dense_bundles(
    seed_bundle: Path, moe_shards: Path, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="apply to Mixture-of-Experts bundles"):
        train(seed_bundle, moe_shards, tmp_path / "t", router_only=True)
    assert not (tmp_path / "t").exists()


def test_a_resume_with_another_balance_loss_or_router_only_is_refused(
    moe: Bundle, moe_shards: Path, tmp_path: Path
) -> None:
    """aux_loss and router_only change what a run computes: a checkpoint resumes only with the
    same ones; one written before the identity held them resumes at their defaults."""
    killed = train_request(moe.path, moe_shards, tmp_path / "t", checkpoint_every=4)
    with pytest.raises(Killed):
        StopsAt(5).train(killed)
    state = checkpoint_dir(killed.output) / "step-000000004" / "state.json"
    for changed in ({"aux_loss": 0.1}, {"router_only": True}):
        other = replace(killed, resume=True, options={**killed.options, **changed})
        refusal = (
            f"cannot resume {state.parent}: the run differs in {next(iter(changed))}; use the "
            "same inputs and options, or --force to start over"
        )
        with pytest.raises(UsageError, match=f"^{re.escape(refusal)}$"):
            CausalLMTrainer().train(other)
    saved = json.loads(state.read_text())
    for name in ("aux_loss", "router_only"):  # as checkpoints written before they were compared
        del saved["identity"][name]
    state.write_text(json.dumps(saved))
    again = replace(killed, resume=True, options={**killed.options, "aux_loss": 0.1})
    with pytest.raises(UsageError, match="differs in aux_loss;"):
        CausalLMTrainer().train(again)
    resumed = CausalLMTrainer().train(replace(killed, resume=True))
    assert resumed.manifest.training["steps"] == 8  # type: ignore[index]
