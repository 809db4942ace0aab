"""Fine-tuning an MoE bundle under `torchrun --nproc-per-node 2` (gloo; DDP, and FSDP with
--fsdp) against one process with the same global batch: all weights, the routers only (the rest
frozen), and routers that leave an expert without tokens (transformers keeps a layer's experts
in one 3D parameter, so an idle expert is a zero slice of its gradient, not a parameter DDP
waits for in vain).

One block per micro-batch on both sides: the load-balancing loss is a per-micro-batch statistic
(token fractions x mean router probabilities), so only then do the two runs average the same
per-block losses (2 ranks x 4 micro-batches of 1 block, or 1 process x 8 of 1 block)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import weights
from ddp_helpers import TOLERANCE, max_difference, xelm_train
from xelm_trainer import CausalLMTrainer

from xelm_cli.bundle.moe import build_moe
from xelm_cli.bundle.store import Bundle, verify_bundle
from xelm_cli.plugin.contracts import TrainRequest, checkpoint_dir

OPTIONS = {"block_size": 32, "batch_size": 1, "global_batch_tokens": 256, "lr": 3e-3}
OPTIONS |= {"log_every": 1, "seed": 1, "device": "cpu"}
TOKENS = 1024  # 4 steps of 8 blocks


def cli_args(options: dict[str, object]) -> list[str]:
    args = []
    for name, value in options.items():
        flag = "--global-batch" if name == "global_batch_tokens" else f"--{name.replace('_', '-')}"
        args += [flag] if value is True else [flag, str(value)]
    return args


def metrics(out: Path, key: str) -> list[float]:
    lines = (checkpoint_dir(out) / "metrics.jsonl").read_text().splitlines()
    return [row[key] for row in map(json.loads, lines) if key in row]


@pytest.fixture(scope="module")
def idle_expert_moe(
    tmp_path_factory: pytest.TempPathFactory,
    moe_experts: list[Path],
) -> Bundle:
    """Zero routers: top-1 of equal probabilities is expert 0 for every token, so expert 1
    gets no token on either rank until the load-balancing loss moves the routers."""
    out = tmp_path_factory.mktemp("moe-uniform") / "moe"
    uniform = build_moe(moe_experts, out, top_k=1, gate="uniform")
    model = uniform.load_model()
    chosen: list[torch.Tensor] = []
    for layer in model.model.layers:
        layer.mlp.gate.register_forward_hook(lambda _, __, output: chosen.append(output[2]))
    with torch.no_grad():
        model(input_ids=torch.arange(64).view(2, 32))
    assert all(not indices.any() for indices in chosen)
    return uniform


CASES = {  # id: (MoE fixture, trainer options)
    "router-only": ("moe", {"router_only": True}),
    "all-weights": ("moe", {"aux_loss": 0.5}),
    "idle-expert": ("idle_expert_moe", {"aux_loss": 0.5}),
    "fsdp-router-only": ("moe", {"router_only": True, "fsdp": True}),
    "fsdp-all-weights": ("moe", {"aux_loss": 0.5, "fsdp": True}),
}


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_fine_tune_an_moe_like_one_process(
    case: str,
    moe_shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    fixture, mode = CASES[case]
    trained: Bundle = request.getfixturevalue(fixture)
    two_ranks, single = tmp_path / "two-ranks", tmp_path / "single"
    args = [str(trained.path), "--data", str(moe_shards), "--langs", "en,tr"]
    args += ["--tokens", str(TOKENS)]
    done = xelm_train([*args, *cli_args(OPTIONS | mode), "-o", str(two_ranks)], tmp_path, ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    unsharded = {name: value for name, value in mode.items() if name != "fsdp"}
    options = OPTIONS | unsharded
    single_run = TrainRequest(
        trained.path, moe_shards, single, TOKENS, options=options, languages=["en", "tr"]
    )
    CausalLMTrainer().train(single_run)

    assert verify_bundle(two_ranks) == []
    diff = max_difference(two_ranks, single)
    print(f"max abs weight difference, MoE {case}, 2 ranks vs one process: {diff:.3g}")
    assert diff < TOLERANCE, diff
    before, after = weights(trained.path), weights(two_ranks)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    routers = {f"model.layers.{i}.block_sparse_moe.gate.weight" for i in range(2)}
    if mode.get("router_only"):
        assert changed == routers  # the frozen experts and attention stayed as they were
    else:
        assert (
            routers < changed and "model.layers.1.block_sparse_moe.experts.0.w1.weight" in changed
        )

    balance = [torch.tensor(metrics(out, "aux_loss")) for out in (two_ranks, single)]
    assert len(balance[0]) == 4 and all(0.99 <= x <= 2.0 for x in balance[0])  # 1: balanced
    assert torch.allclose(balance[0], balance[1], atol=1e-5), balance  # the mean over ranks
    records = [Bundle.open(path).manifest.training or {} for path in (two_ranks, single)]
    assert [r["hardware"]["world_size"] for r in records] == [2, 1]
    for option in ("router_only", "fsdp"):
        assert records[0]["options"][option] is bool(mode.get(option))
