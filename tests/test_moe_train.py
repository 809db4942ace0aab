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


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's model loading raises: what refuses before it passes."""
    from xelm_trainer import loop

    def load_model(*_: object, **__: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loop, "load_model", load_model)


@pytest.mark.usefixtures("no_model_loads")
def test_moe_options_are_refused_for_dense_bundles(
    seed_bundle: Path, moe_shards: Path, tmp_path: Path
) -> None:
    """Refused from the config, before the model loads (under torchrun: before the ranks join)."""
    for options in ({"router_only": True}, {"aux_loss": 0.1}):
        with pytest.raises(UsageError, match="apply to Mixture-of-Experts bundles"):
            train(seed_bundle, moe_shards, tmp_path / "t", **options)
    assert not (tmp_path / "t").exists()


def test_moe_options_are_refused_once_under_torchrun(
    seed_bundle: Path, train_shards: Path, tmp_path: Path
) -> None:
    """2 ranks: one line, not one a rank."""
    from ddp_helpers import xelm_train

    out = tmp_path / "out"
    args = [str(seed_bundle), "--data", str(train_shards), "--tokens", "512", "--block-size"]
    args += ["32", "--batch-size", "2", "--device", "cpu", "--router-only", "-o", str(out)]
    done = xelm_train(args, tmp_path, ranks=2)
    assert done.returncode != 0
    refusal = (
        "xelm: error: --router-only and --aux-loss apply to Mixture-of-Experts bundles "
        "(made with `xelm bundle moe`)"
    )
    assert done.stderr.count("xelm: error:") == 1 and refusal in done.stderr, done.stderr[-3000:]
    assert not out.exists() and not checkpoint_dir(out).exists()


def test_a_config_with_router_logits_is_left_to_the_models_check() -> None:
    """DBRX's config has output_router_logits but no router_aux_loss_coef (its model takes
    the coefficient from ffn_config): the config alone refuses only what no MoE model has."""
    from transformers import DbrxConfig, LlamaConfig
    from xelm_trainer.moe import check_moe_options
    from xelm_trainer.options import TrainOptions

    options = TrainOptions.from_dict({**SMALL_OPTIONS, "router_only": True})
    check_moe_options(DbrxConfig(), options)
    with pytest.raises(UsageError, match="apply to Mixture-of-Experts bundles"):
        check_moe_options(LlamaConfig(), options)


def test_a_resume_with_another_balance_loss_or_router_only_is_refused(
    moe: Bundle, moe_shards: Path, tmp_path: Path
) -> None:
    """aux_loss and router_only change what a run computes: a checkpoint resumes only with the
    same ones; one written before the identity held them resumes at their defaults."""
    killed = train_request(moe.path, moe_shards, tmp_path / "t", checkpoint_every=4)
    with pytest.raises(Killed):
        StopsAt(5).train(killed)
    state = checkpoint_dir(killed.output) / "step-000000004" / "state.json"
    for changed, values in (
        ({"aux_loss": 0.1}, "none, now 0.1"),
        ({"router_only": True}, "False, now True"),
    ):
        other = replace(killed, resume=True, options={**killed.options, **changed})
        refusal = (
            f"cannot resume {state.parent}: the run differs in {next(iter(changed))} "
            f"(checkpoint {values}); use the same inputs and options, or --force to start over"
        )
        with pytest.raises(UsageError, match=f"^{re.escape(refusal)}$"):
            CausalLMTrainer().train(other)
    saved = json.loads(state.read_text())
    for name in ("aux_loss", "router_only"):  # as checkpoints written before they were compared
        del saved["identity"][name]
    state.write_text(json.dumps(saved))
    again = replace(killed, resume=True, options={**killed.options, "aux_loss": 0.1})
    with pytest.raises(UsageError, match=r"differs in aux_loss \(checkpoint none, now 0.1\);"):
        CausalLMTrainer().train(again)
    resumed = CausalLMTrainer().train(replace(killed, resume=True))
    assert resumed.manifest.training["steps"] == 8  # type: ignore[index]


def _tiny_moe(model_type: str, **extra: object) -> torch.nn.Module:
    import transformers

    shape = dict(vocab_size=64, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=2, num_experts_per_tok=1)  # fmt: skip
    config = transformers.AutoConfig.for_model(model_type, **shape, **extra)
    return transformers.AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize(
    ("model_type", "extra", "routers"),
    [
        ("mixtral", {"num_local_experts": 2}, ["model.layers.0.mlp.gate.weight"]),
        ("granitemoe", {"num_local_experts": 2}, ["model.layers.0.block_sparse_moe.router.weight"]),
        (
            "gpt_oss",
            {"num_local_experts": 2, "head_dim": 8},
            ["model.layers.0.mlp.router.weight", "model.layers.0.mlp.router.bias"],
        ),
    ],
)
def test_router_only_trains_the_routers_of_each_moe_family(
    model_type: str, extra: dict[str, object], routers: list[str]
) -> None:
    """GraniteMoE's and GPT-OSS's routers are named otherwise than Mixtral's: router-only left
    them nothing to train (a torch error at the first backward)."""
    from xelm_trainer.moe import configure_moe
    from xelm_trainer.options import TrainOptions

    model = _tiny_moe(model_type, **extra)
    configure_moe(model, TrainOptions.from_dict({**SMALL_OPTIONS, "router_only": True}))
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    # GraniteMoE's router holds its Linear as router.layer in transformers 5.4
    assert [name.replace(".router.layer.", ".router.") for name in trained] == routers


def test_validation_loss_is_the_language_models_whatever_the_config_says() -> None:
    """An imported MoE whose config asks for router logits: validation leaves the load-balancing
    term out (spec/training.md section 3), as for bundles of `xelm bundle moe`."""
    from xelm_trainer.loop import evaluate
    from xelm_trainer.options import TrainOptions

    model = _tiny_moe("mixtral", num_local_experts=2, output_router_logits=True)
    blocks = torch.randint(0, 64, (2, 8)).numpy()
    options = TrainOptions.from_dict({**SMALL_OPTIONS, "batch_size": 2, "block_size": 8})
    got = evaluate(
        model, blocks, options, torch.device("cpu"), torch.autocast("cpu", enabled=False)
    )
    batch = torch.from_numpy(blocks)
    with torch.no_grad():
        logits = model(input_ids=batch, output_router_logits=False).logits
    plain = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 64), batch[:, 1:].reshape(-1)
    )
    assert got == pytest.approx(float(plain), rel=1e-6)


def test_an_infinite_balance_loss_is_refused_up_front() -> None:
    from xelm_trainer.options import TrainOptions

    with pytest.raises(UsageError, match="--aux-loss must be a number of 0 or more, not inf"):
        TrainOptions.from_dict({**SMALL_OPTIONS, "aux_loss": "inf"})


@pytest.mark.usefixtures("no_model_loads")
def test_router_only_without_a_balance_loss_on_top_one_is_refused(
    moe: Bundle, moe_shards: Path, tmp_path: Path
) -> None:
    """Top-1 renormalised: the language-model loss gives the routers no gradient, so with
    --aux-loss 0 the run would write a 'trained' bundle whose routers never moved."""
    with pytest.raises(UsageError, match=r"--router-only --aux-loss 0 on a top-1 MoE trains"):
        train(moe.path, moe_shards, tmp_path / "t", router_only=True, aux_loss=0.0)
    assert not (tmp_path / "t").exists() and not checkpoint_dir(tmp_path / "t").exists()
