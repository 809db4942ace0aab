"""`xelm plan` estimates: memory against a measured CPU training step, refusal of a batch that
cannot fit with the largest that would, run times from a measured run."""

import json
import os
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SHARED_DATA, train_tokenizer
from torch.utils._python_dispatch import TorchDispatchMode

from xelm_cli.bundle.seed import NAMED_CONFIGS, init_from_config
from xelm_cli.bundle.store import Bundle
from xelm_cli.cli import run
from xelm_cli.cluster.allocation import write_allocation
from xelm_cli.common.units import duration
from xelm_cli.training.estimates import (
    ModelShape,
    largest_batch,
    moe_shapes,
    parse_size,
    training_memory,
)

FLORES = SHARED_DATA / "eval" / "flores200-devtest"  # held-out text for the language gate

# The thread count the measurements below were made with (it moves the peak: allocator arenas,
# oneDNN scratch memory), whatever the machine or its environment would choose
TWO_THREADS = {"OMP_NUM_THREADS": "2"}

# Peak resident memory of two fp32 training steps of `model`, above the level after two steps
# of a tiny model (torch's allocator, threads and kernels set up): the start of both scripts.
PEAK_OF_STEPS = """
import gc, json, sys, threading, time
import psutil, torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig
from xelm_trainer.lean_loss import use_lean_loss

def steps(model, batch):
    optimizer = torch.optim.AdamW(model.parameters())
    for _ in range(2):
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

def peak_of_steps(prepared, make_model, batch_shape):
    small = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    steps(prepared(AutoModelForCausalLM.from_config(small)), torch.randint(0, 64, (1, 16)))
    gc.collect()
    process = psutil.Process()
    base = peak = process.memory_info().rss
    running = True
    def sample():
        nonlocal peak
        while running:
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.0005)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    model = prepared(make_model())
    steps(model, torch.randint(0, model.config.vocab_size, batch_shape))
    running = False
    thread.join()
    return peak - base
"""

# A bundle's model (chunked loss) at batch argv[2] x argv[3] with attention argv[4].
MEASURE = (
    PEAK_OF_STEPS
    + """
from xelm_cli.bundle.store import Bundle

def lean(model):
    use_lean_loss(model)
    return model

bundle = Bundle.open(sys.argv[1])
load = lambda: bundle.load_model(dtype=torch.float32, attn_implementation=sys.argv[4])
print(json.dumps(peak_of_steps(lean, load, (int(sys.argv[2]), int(sys.argv[3])))))
"""
)


@pytest.fixture(scope="module")
def wide_seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seed whose activations dominate the memory of a step (3.4M parameters)."""
    root = tmp_path_factory.mktemp("estimates")
    NAMED_CONFIGS["estimate-test"] = dict(
        hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1024,
    )  # fmt: skip
    try:
        tokenizer = train_tokenizer(root / "tok")
        init_from_config("estimate-test", tokenizer, root / "seed", languages=["en", "tr"])
    finally:
        del NAMED_CONFIGS["estimate-test"]
    return root / "seed"


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_memory_estimate_is_within_a_quarter_of_a_measured_cpu_step(
    wide_seed: Path, attention: str
) -> None:
    """Measured here (2 cores): sdpa 0.59 GB for an estimate of 0.64, eager 0.79 for 0.78."""
    shape = ModelShape.of(Bundle.open(wide_seed))
    assert (shape.layers, shape.hidden, shape.intermediate, shape.heads) == (4, 256, 704, 4)
    estimate = training_memory(shape, 8, 512, cuda=False, attention=attention).total
    measured = json.loads(
        subprocess.run(
            [sys.executable, "-c", MEASURE, str(wide_seed), "8", "512", attention],
            check=True, capture_output=True, text=True, env=os.environ | TWO_THREADS,
        ).stdout.splitlines()[-1]
    )  # fmt: skip
    assert 0.8 < measured / estimate < 1.25, (measured, estimate)


def test_eager_attention_keeps_each_layers_scores_and_probabilities() -> None:
    """By hand, a micro-batch of 8 x 512 tokens (4,096), 4 layers, h = 256, i = 704, 4 heads:
    eager attention keeps batch x heads x 512^2 scores and as many probabilities per layer,
    2 x 4 heads x 512 per token and layer, in the compute dtype (fp32 on the CPU, bf16 under
    CUDA's autocast); the CPU's SDPA keeps its fp32 probabilities only, CUDA's none."""
    shape = ModelShape(3_000_000, 1000 * 256, 4, 256, 704, 1000, 4)
    tokens, layers = 8 * 512, 4

    def activations(**options: Any) -> int:
        return training_memory(shape, 8, 512, **options).activations

    # per token and layer: e (10h + 5i) + 8h, plus the attention matrix; 8h once per token
    plain_cpu, plain_cuda = 4 * (2560 + 3520) + 2048, 2 * (2560 + 3520) + 2048
    assert activations(cuda=False, attention="eager") == tokens * (
        layers * (plain_cpu + 2 * 4 * 4 * 512) + 2048
    )  # 708,837,376 bytes
    assert activations(cuda=False) == tokens * (layers * (plain_cpu + 4 * 4 * 512) + 2048)
    assert activations(cuda=True, attention="eager") == tokens * (
        layers * (plain_cuda + 2 * 2 * 4 * 512) + 2048
    )
    assert activations(cuda=True) == activations(cuda=True, attention="flash_attention_2")
    assert activations(cuda=True) == tokens * (layers * plain_cuda + 2048)
    # checkpointed: 4h per token and layer plus one layer's full activations, eager matrix too
    assert activations(cuda=False, attention="eager", gradient_checkpointing=True) == tokens * (
        4 * 256 * layers + plain_cpu + 2 * 4 * 4 * 512 + 2048
    )
    eager_fits = largest_batch(shape, 512, parse_size("1GB"), cuda=False, attention="eager")[0]
    assert eager_fits < largest_batch(shape, 512, parse_size("1GB"), cuda=False)[0]


def test_the_plan_states_the_attention_its_estimate_assumes(
    capsys: pytest.CaptureFixture[str], wide_seed: Path, shards: Path, tmp_path: Path
) -> None:
    shape = ModelShape.of(Bundle.open(wide_seed))
    args = _plan(tmp_path, wide_seed, shards, "--memory", "80GB")
    for attention, assumed in (("auto", "sdpa"), ("sdpa", "sdpa"), ("eager", "eager")):
        train_args = f"--block-size 512 --batch-size 8 --device cpu --attention {attention}"
        assert run([*args, "--train-args", train_args, "--json"]) == 0
        estimate = json.loads(capsys.readouterr().out)["estimate"]
        expected = training_memory(shape, 8, 512, cuda=False, attention=assumed)
        assert estimate["attention"] == assumed
        assert estimate["memory"] == expected.as_dict()
    assert run([*args, "--train-args", train_args]) == 0
    out = capsys.readouterr().out
    assert f"activations {expected.activations / 1e9:.2f} with eager attention, loss" in out


def test_a_block_past_the_seeds_positions_is_noted_once_and_estimated_as_the_runs_train(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    """The tiny seed declares 1,024 positions, the trainer's default block: a block of 2,048
    runs its rotary positions past them, and `xelm train` notes that and trains 2,048-token
    blocks. The plan says so once, and its memory estimate is of the block the runs train
    with."""
    shape = ModelShape.of(Bundle.open(seed_bundle))
    args = _plan(tmp_path, seed_bundle, shards, "--memory", "80GB", "--json")
    assert run([*args, "--train-args", "--device cpu --block-size 2048"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[0] == (
        "xelm: warning: --block-size 2,048 is longer than the 1,024 positions the model declares "
        "(max_position_embeddings): training runs past them; pass --train-args "
        '"--block-size 1024" (or less) unless you mean to'
    )
    assert err.count("positions the model declares") == 1
    estimate = json.loads(out)["estimate"]
    assert (estimate["block_size"], estimate["positions"]) == (2048, 1024)
    assert estimate["memory"] == training_memory(shape, 8, 2048, cuda=False).as_dict()
    assert run([*args, "--train-args", "--device cpu"]) == 0  # the default block: no note
    assert "positions the model declares" not in capsys.readouterr().err


def test_durations_read_in_seconds_minutes_or_hours() -> None:
    assert [duration(s) for s in (0.04, 6, 89.4, 90, 5399, 5400, 36_000)] == [
        "0 s", "6 s", "89 s", "1.5 min", "90.0 min", "1.5 h", "10.0 h",
    ]  # fmt: skip


def test_short_runs_show_their_time_in_seconds(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    """A plan of a few thousand tokens: each run takes seconds, shown as such (not 0.0 min)."""
    measured, _ = _timed_run(seed_bundle, shards, tmp_path)
    capsys.readouterr()
    args = _plan(tmp_path, seed_bundle, shards, "--measured", str(measured), "--parallel", "2")
    args[args.index("--budget") + 1] = "4K"
    args += ["--train-args", "--block-size 32 --batch-size 4"]  # steps of 128 tokens
    assert run([*args, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    seconds = [entry["seconds"] for entry in plan["runs"]]
    assert all(0 < s < 90 for s in seconds), seconds
    assert run(args) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if "expert-0" in line and "│" in line]
    assert f"{seconds[0]:.0f} s" in table[0] and "min" not in table[0]
    together = plan["side_by_side"]
    assert f"about {together['seconds']:.0f} s instead of " in out


def test_the_chunked_loss_lets_a_bigger_batch_fit_at_a_256k_vocabulary() -> None:
    shape = ModelShape(1_700_000_000, 256_008 * 2048, 24, 2048, 8192, 256_008, 16)
    plain = training_memory(shape, 8, 2048, cuda=True, lean_loss=False)
    lean = training_memory(shape, 8, 2048, cuda=True)
    assert plain.loss == 8 * 2048 * 256_008 * 12  # 50.3 GB: fp32 log-softmax and two gradients
    assert lean.loss < plain.loss / 10
    limit = parse_size("80GB")
    lean_fits = largest_batch(shape, 2048, limit, cuda=True)[0]
    plain_fits = largest_batch(shape, 2048, limit, cuda=True, lean_loss=False)[0]
    assert lean_fits > plain_fits >= 1


# XGLM-1.7B: 24 layers of 50,358,272 parameters (attention 4 x (2048^2 + 2048), fc1 and fc2
# 2 x 2048 x 8192 + 8192 + 2048, two norms 4 x 2048), then the tied embedding 256,008 x 2048
# and the final norm 2 x 2048: 1,732,907,008 in all (transformers' XGLMConfig on the meta device)
XGLM_1_7B = ModelShape(1_732_907_008, 256_008 * 2048, 24, 2048, 8192, 256_008, 16, 50_358_272)


class _LiveTensors(TorchDispatchMode):
    """The bytes of the tensors that operations made and that are still alive, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.storages: set[int] = set()  # counted once however many tensors share one

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else [out]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() in self.storages or not storage.nbytes():
                continue
            self.storages.add(storage.data_ptr())
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(tensor, self._free, storage.data_ptr(), storage.nbytes())
        return out

    def _free(self, pointer: int, size: int) -> None:
        self.storages.discard(pointer)
        self.live -= size


@pytest.mark.parametrize("autocast", [True, False], ids=["bf16-autocast", "fp32"])
def test_the_plain_loss_peaks_at_the_bytes_a_logit_the_estimate_counts(autocast: bool) -> None:
    # the model's loss (transformers' ForCausalLMLoss) on logits of a tiny output layer, the
    # logits dropped before the backward as the trainer drops its output's
    from transformers.loss.loss_utils import ForCausalLMLoss

    rows, vocab = 2048, 32_000
    head = torch.nn.Linear(4, vocab, bias=False)
    states = torch.randn(1, rows, 4, requires_grad=True)
    labels = torch.randint(0, vocab, (1, rows))
    shape = ModelShape(4 * vocab, 0, 1, 4, 16, vocab, 1)
    counted = training_memory(shape, 1, rows, cuda=autocast, lean_loss=False).loss / (rows * vocab)
    tracked = _LiveTensors()
    with tracked, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = head(states)
        loss = ForCausalLMLoss(logits, labels, vocab)
        del logits
        loss.backward()
    assert counted == 12
    assert tracked.peak / (rows * vocab) == pytest.approx(counted, rel=0.03)


class _WeightCasts(TorchDispatchMode):
    """The parameters (by name) that are copied to bf16 while the mode is on."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.names = {p.data_ptr(): name for name, p in model.named_parameters()}
        self.cast: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16:
            name = self.names.get(args[0].data_ptr())
            if name:
                self.cast.append(name)
        return func(*args, **kwargs)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_autocast_copies_every_weight_but_an_untied_input_embedding(tied: bool) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=500, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         tie_word_embeddings=tied)  # fmt: skip
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 500, (2, 16))
    casts = _WeightCasts(model)
    with casts, torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids).loss.backward()
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    linears = {f"{n}.weight" for n in linears} - ({"lm_head.weight"} if tied else set())
    embedding = {"model.embed_tokens.weight"} if tied else set()  # the head's, when tied
    assert sorted(casts.cast) == sorted(linears | embedding)  # each once; norms never
    parameters = dict(model.named_parameters())
    n = sum(p.numel() for p in parameters.values())
    e = model.get_input_embeddings().weight.numel()
    shape = ModelShape(n, e, 2, 32, 64, 500, 2, tied=tied)
    counted = training_memory(shape, 1, 16, cuda=True).weights - 4 * n  # the bf16 copies
    copied = sum(parameters[name].numel() for name in casts.cast)
    norms = sum(p.numel() for name, p in parameters.items() if "norm" in name)
    assert counted == 2 * (copied + norms)  # over by the norms' weights alone (a few h)


def test_a_bundle_with_two_vocabulary_matrices_is_untied(seed_bundle: Path, tmp_path: Path) -> None:
    from test_seed_fidelity import FAMILIES

    from xelm_cli.bundle.seed import init_from_hf

    assert ModelShape.of(Bundle.read(seed_bundle)).tied is False  # embed_tokens and lm_head
    gpt2 = init_from_hf(str(FAMILIES["gpt2"][0](tmp_path / "hf")), tmp_path / "b", languages=["en"])
    assert ModelShape.of(gpt2).tied is True  # one wte, the head's too


def test_fsdp_shards_the_model_states_and_gathers_the_root_and_one_layer() -> None:
    """By hand, XGLM-1.7B at 8 x 2048 under FSDP over 8 ranks: each holds N/8 = 216,613,376
    parameters' fp32 weights, gradients and AdamW moments, plus the gathered weights of the
    root unit (embedding and final norm, 524,308,480) and one decoder layer's gathered weights
    (in bf16: FSDP's mixed-precision policy on CUDA, so autocast makes no copies of them) and
    gradients (50,358,272); the activations and the loss stay as without it."""
    whole = training_memory(XGLM_1_7B, 8, 2048, cuda=True)
    sharded = training_memory(XGLM_1_7B, 8, 2048, cuda=True, shards=8)
    gathered = 524_308_480 + 50_358_272  # 574,666,752
    assert sharded.weights == 4 * 216_613_376 + 2 * gathered  # 2,015,787,008
    assert sharded.gradients == 4 * (216_613_376 + 50_358_272)  # 1,067,886,592
    assert sharded.optimizer == 8 * 216_613_376
    assert (sharded.activations, sharded.loss) == (whole.activations, whole.loss)
    # 88.9 GB unsharded does not fit on 80 GB (6 sequences do); 62.5 GB sharded does (10 do)
    assert round(whole.total / 1e9, 1) == 88.9 and round(sharded.total / 1e9, 1) == 62.5
    limit = parse_size("80GB")
    assert largest_batch(XGLM_1_7B, 2048, limit, cuda=True)[0] == 6
    assert largest_batch(XGLM_1_7B, 2048, limit, cuda=True, shards=8)[0] == 10


# Rank 0 of 8 (a fake process group: no-op collectives, real buffers) of FSDP over a 58M-
# parameter Llama (argv[2] llama) or a GPT-2 (gpt2) whose weights dominate, with the chunked
# loss or the plain one (argv[1]). Blocks over 64 KiB come from mmap and go back on free, so
# the full model the ranks shard does not stay in glibc's heap.
MEASURE_FSDP = (
    PEAK_OF_STEPS
    + """
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore
from xelm_trainer.distributed import shard

def sharded(model):
    if sys.argv[1] == "lean":
        use_lean_loss(model)
    return shard(model)  # as the trainer wraps it

dist.init_process_group("fake", rank=0, world_size=8, store=FakeStore())
config = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1408,
                     num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                     tie_word_embeddings=False)
if sys.argv[2] == "gpt2":  # decoder layers at transformer.h, not model.layers
    config = GPT2Config(vocab_size=32000, n_embd=512, n_layer=8, n_head=8, n_positions=128)
make = lambda: AutoModelForCausalLM.from_config(config)
print(json.dumps(peak_of_steps(sharded, make, (1, 128))))
"""
)


# Llama layer: attention 4 x 512^2, MLP 3 x 512 x 1408, two norms; root: embedding and output
# layer 2 x 32,000 x 512, final norm 512
LLAMA_LAYER = 4 * 512**2 + 3 * 512 * 1408 + 2 * 512  # 3,212,288
# GPT-2 layer: 12 x 512^2 weights, 13 x 512 biases and norms; root: token embedding (tied with
# the output layer) 32,000 x 512, positions 128 x 512, final norm 2 x 512
GPT2_LAYER = 12 * 512**2 + 13 * 512  # 3,152,384
FSDP_SHAPES = {
    "llama": ModelShape(8 * LLAMA_LAYER + 2 * 32000 * 512 + 512, 32000 * 512, 8, 512, 1408,
                        32000, 8, LLAMA_LAYER),
    "gpt2": ModelShape(8 * GPT2_LAYER + 32000 * 512 + 128 * 512 + 2 * 512, 32000 * 512, 8, 512,
                       2048, 32000, 8, GPT2_LAYER),
}  # fmt: skip


@pytest.mark.parametrize(
    ("family", "loss"), [("llama", "lean"), ("llama", "plain"), ("gpt2", "lean")]
)
def test_fsdp_estimate_is_within_a_quarter_of_a_measured_rank(family: str, loss: str) -> None:
    """Measured here (2 cores): Llama 0.43 GB for an estimate of 0.43 with the chunked loss,
    0.38 for 0.38 with the plain one (counting the root unit's gradients too: 0.56 and 0.51;
    one layer gathered and no root: 0.30 and 0.25); GPT-2, its blocks sharded one by one too
    (they were one unit with the whole model: 1.5x the estimate), 0.38 GB for 0.34."""
    shape = FSDP_SHAPES[family]
    estimate = training_memory(shape, 1, 128, cuda=False, lean_loss=loss == "lean", shards=8)
    measured = json.loads(
        subprocess.run(
            [sys.executable, "-c", MEASURE_FSDP, loss, family], check=True, capture_output=True,
            text=True, env=os.environ | TWO_THREADS | {"MALLOC_MMAP_THRESHOLD_": "65536"},
        ).stdout.splitlines()[-1]
    )  # fmt: skip
    assert 0.8 < measured / estimate.total < 1.25, (measured, estimate.total)


def test_a_bundles_decoder_layers_are_counted_from_its_tensors(wide_seed: Path) -> None:
    """The wide seed's layer: attention 4 x 256^2, MLP 3 x 256 x 704, two norms 2 x 256; the
    rest (embedding, untied output layer, final norm) is the root unit FSDP keeps gathered."""
    shape = ModelShape.of(Bundle.open(wide_seed))
    assert shape.layer_parameters == 4 * 256**2 + 3 * 256 * 704 + 2 * 256  # 803,328
    root = shape.parameters - 4 * shape.layer_parameters
    assert root == 2 * shape.vocab * 256 + 256
    two = training_memory(shape, 8, 512, cuda=False, shards=2)
    assert two.weights == 4 * (shape.parameters // 2 + root + shape.layer_parameters)


def test_the_plan_shards_the_estimate_over_the_ranks_of_fsdp(
    capsys: pytest.CaptureFixture[str], wide_seed: Path, shards: Path, tmp_path: Path
) -> None:
    """--fsdp in --train-args with --nproc-per-node 4: the estimate is of one rank's shard, a
    batch that fits only sharded is planned, and a refusal names the largest batch that fits
    sharded; --fsdp on one device (which `xelm train` refuses) is refused first."""
    shape = ModelShape.of(Bundle.open(wide_seed))
    whole = training_memory(shape, 2, 512, cuda=False)
    sharded = training_memory(shape, 2, 512, cuda=False, shards=4)
    limit = (whole.total + sharded.total) // 2
    args = _plan(tmp_path, wide_seed, shards, "--memory", str(limit))
    train_args = "--block-size 512 --device cpu --batch-size"
    assert run([*args, "--train-args", f"{train_args} 2", "--nproc-per-node", "4"]) == 2
    assert "sharded" not in capsys.readouterr().err  # DDP: every rank holds the whole model
    ddp = training_memory(shape, 2, 512, cuda=False, ddp=True)
    assert ddp.gradients == 2 * whole.gradients  # and its gradients twice: DDP's buckets
    unlimited = _plan(tmp_path, wide_seed, shards, "--train-args", f"{train_args} 2", "--json")
    assert run([*unlimited, "--nproc-per-node", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["estimate"]["memory"] == ddp.as_dict()
    fsdp = [*args, "--nproc-per-node", "4", "--train-args", f"{train_args} 2 --fsdp"]
    assert run([*fsdp, "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)["estimate"]
    assert (estimate["ranks"], estimate["fsdp"]) == (4, True)
    assert estimate["memory"] == sharded.as_dict()
    assert run(fsdp) == 0
    out = capsys.readouterr().out
    assert f"needs about {sharded.total / 1e9:.2f} GB (weights" in out
    assert " on each of 4 FSDP ranks on the CPU (--device cpu)" in " ".join(out.split())
    assert "xelm train-all plan.json --only I --nproc-per-node 4)" in out
    fits = largest_batch(shape, 512, limit, cuda=False, shards=4)[0]
    assert run([*fsdp[:-1], f"{train_args} {fits + 1} --fsdp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "GB sharded over 4 ranks on the CPU (--device cpu)" in err
    # the largest that fits whose micro-batch on the 4 ranks divides the step of fits + 1
    whole = max(b for b in range(1, fits + 1) if (fits + 1) % b == 0)
    step = (fits + 1) * 512 * 4
    assert f"at steps of {step:,} tokens is --batch-size {whole} --global-batch {step} " in err
    assert run([*args, "--train-args", f"{train_args} 2 --fsdp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --nproc-per-node N" in err


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> Path:
    """Token shards of the test languages, with the seed's tokenizer."""
    from corpus_helpers import corpus_slice

    from xelm_cli.data.prepare import prepare

    root = tmp_path_factory.mktemp("plan-shards")
    prepare(corpus_slice("train", 100, root / "corpus"), seed_bundle, root / "shards")
    return root / "shards"


def _plan(tmp_path: Path, seed: Path, shards: Path, *extra: str) -> list[str]:
    alloc = tmp_path / "alloc.json"
    if not alloc.exists():
        write_allocation(alloc, clusterer="typology", experts=[["en"], ["tr"]])
    return ["plan", "--budget", "1M", "--allocation", str(alloc), "--seed-bundle", str(seed),
            "--data", str(shards), "-o", str(tmp_path / "runs"), *extra]  # fmt: skip


def _timed_run(seed_bundle: Path, shards: Path, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A short `xelm train` of the seed on this machine, and its training record (timed)."""
    measured = tmp_path / "measured"
    args = ["train", str(seed_bundle), "--data", str(shards), "--block-size", "32",
            "--batch-size", "4", "--tokens", "1024", "-o", str(measured)]  # fmt: skip
    assert run(args) == 0
    record = Bundle.open(measured).manifest.training
    assert record is not None and record["seconds"] > 0
    return measured, record


def test_a_batch_that_cannot_fit_is_refused_with_the_largest_that_would(
    capsys: pytest.CaptureFixture[str], wide_seed: Path, shards: Path, tmp_path: Path
) -> None:
    shape = ModelShape.of(Bundle.open(wide_seed))
    limit = parse_size("1GB")
    fits, estimate = largest_batch(shape, 512, limit, cuda=False)
    assert estimate.total <= limit < training_memory(shape, fits + 1, 512, cuda=False).total
    args = _plan(tmp_path, wide_seed, shards, "--memory", "1GB")
    cpu = "--block-size 512 --device cpu --batch-size"
    assert run([*args, "--train-args", f"{cpu} {fits}"]) == 0
    capsys.readouterr()
    step = fits * (fits + 1) * 512  # a step of whole micro-batches of fits + 1 and of fits
    assert run([*args, "--train-args", f"{cpu} {fits + 1} --global-batch {step}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith(
        f"the largest that fits at --global-batch {step} is --batch-size {fits} in --train-args\n"
    )
    tiny = _plan(tmp_path, wide_seed, shards, "--memory", "10MB", "--train-args", "--device cpu")
    assert run(tiny) == 2
    assert "not even --batch-size 1 fits" in capsys.readouterr().err


def test_run_times_scale_a_measured_runs_flops(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    wide_seed: Path,
    shards: Path,
    tmp_path: Path,
) -> None:
    """Timings on this shared 2-core machine vary 2-7x between runs, so the test checks the
    arithmetic: a run of N parameters and T tokens takes the measured run's setup (loading,
    before its loop) and then 6NT / (the measured run's 6N'T'/s')."""
    measured, record = _timed_run(seed_bundle, shards, tmp_path)
    capsys.readouterr()
    assert run(_plan(tmp_path, wide_seed, shards, "--measured", str(measured), "--json")) == 0
    plan = json.loads(capsys.readouterr().out)
    n, n_measured = (ModelShape.of(Bundle.open(b)).parameters for b in (wide_seed, measured))
    assert plan["estimate"]["parameters"] == n
    timed = record[plan["estimate"]["measured_time"]]  # wall_seconds (an older record: seconds)
    seconds_per_token = timed / record["tokens"] * n / n_measured
    setup = record["setup_seconds"]
    assert 0 < setup < 60
    for entry in plan["runs"]:  # experts 61 steps of 8,192 tokens each, the dense run both
        assert entry["seconds"] == pytest.approx(setup + entry["tokens"] * seconds_per_token)
    assert run(_plan(tmp_path, wide_seed, shards, "--measured", str(seed_bundle))) == 2
    assert "holds no timed training run" in capsys.readouterr().err


def test_run_times_scale_the_measured_runs_wall_time_and_say_which_time(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    """A training record's `seconds` are its steps' alone; `wall_seconds`, from its loop's
    start, add validation and checkpoints (in the audit's exaggerated run 286 s against 9.67):
    the plan scales `wall_seconds`, or, in a record without them (an older xelm's), `seconds`,
    and says which. Here the record's times are set by hand: 2 s of steps, 8 s in all, 1.5 s
    of setup before the loop, once per run (none in an older record)."""
    measured, record = _timed_run(seed_bundle, shards, tmp_path)
    capsys.readouterr()
    manifest = measured / "xelm.json"
    args = _plan(tmp_path, seed_bundle, shards, "--measured", str(measured))
    for times, timed in (({"seconds": 2.0, "wall_seconds": 8.0, "setup_seconds": 1.5},
                          "wall_seconds"), ({"seconds": 2.0}, "seconds")):  # fmt: skip
        data = json.loads(manifest.read_text())
        data["training"] = {
            k: v for k, v in data["training"].items() if k not in ("wall_seconds", "setup_seconds")
        }
        data["training"] |= times
        manifest.write_text(json.dumps(data))
        assert run([*args, "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert plan["estimate"]["measured_time"] == timed
        dense = next(entry for entry in plan["runs"] if entry["name"] == "dense")
        # the same model as the measured run: T tokens take T / its tokens times its time
        setup = times.get("setup_seconds", 0.0)
        assert dense["seconds"] == pytest.approx(setup + 999_424 / record["tokens"] * times[timed])
        assert run(args) == 0
        out = capsys.readouterr().out
        said = f"run times: at the FLOP/s of {measured} over its "
        if timed == "wall_seconds":
            said += "wall time (wall_seconds: validation and checkpoints included)"
        else:
            said += "steps' time (seconds; its training record has no wall_seconds): they leave"
        assert said in out
    assert run(_plan(tmp_path, seed_bundle, shards, "--json")) == 0
    assert json.loads(capsys.readouterr().out)["estimate"]["measured_time"] is None


def test_run_times_scale_from_the_measured_runs_devices_to_each_runs(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    """The measured run's FLOP/s are those of the devices it trained on (its record's
    hardware.world_size; none recorded: 1): a run planned on 4 devices goes 4/w as fast."""
    measured, record = _timed_run(seed_bundle, shards, tmp_path)
    manifest = measured / "xelm.json"
    args = _plan(tmp_path, seed_bundle, shards, "--measured", str(measured), "--json")
    for world_size in (2, None):
        data = json.loads(manifest.read_text())
        data["training"]["wall_seconds"] = 8.0
        data["training"]["setup_seconds"] = 0.0
        data["training"]["hardware"].pop("world_size", None)
        if world_size:
            data["training"]["hardware"]["world_size"] = world_size
        manifest.write_text(json.dumps(data))
        capsys.readouterr()
        assert run([*args, "--nproc-per-node", "4"]) == 0
        dense = next(e for e in json.loads(capsys.readouterr().out)["runs"] if e["name"] == "dense")
        alone = dense["tokens"] / record["tokens"] * 8.0  # on the measured run's devices
        assert dense["seconds"] == pytest.approx(alone * (world_size or 1) / 4)


def test_a_cuda_device_this_machine_lacks_is_estimated_at_the_memory_given(
    capsys: pytest.CaptureFixture[str],
    seed_bundle: Path,
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plan made on a machine without the GPU that will train: --device cuda in --train-args
    is estimated as CUDA at --memory, and without --memory refused in one line asking for it
    (not a crash asking torch for a GPU)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = _plan(tmp_path, seed_bundle, shards, "--train-args", "--device cuda --block-size 32")
    assert run(args) == 2
    assert capsys.readouterr().err == (
        "xelm: error: the runs train on CUDA (--device in --train-args), which this machine "
        "lacks: give the memory of the GPU that will train with --memory (e.g. 80GB)\n"
    )
    assert run([*args, "--memory", "80GB", "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)["estimate"]
    shape = ModelShape.of(Bundle.open(seed_bundle))
    assert (estimate["device"], estimate["memory_limit"]) == ("cuda", 80_000_000_000)
    assert estimate["memory_usable"] == 76_000_000_000  # less CUDA's reserve
    assert estimate["memory"] == training_memory(shape, 8, 32, cuda=True).as_dict()


def test_every_run_is_whole_steps_so_the_experts_train_what_the_dense_run_trains(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    """`xelm train` trains whole steps (here 8 x 512 = 4,096 tokens): the plan gives each of
    the 2 experts 20K rounded down (4 steps, 16,384) and the dense run their sum, not the 40K
    budget (which `xelm train` would have cut to 9 steps, 36,864, unequal to the experts')."""
    args = [*_plan(tmp_path, seed_bundle, shards), "--train-args", "--block-size 512"]
    args[args.index("1M")] = "40K"
    assert run([*args, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["step_tokens"] == 4096 and plan["budget"] == 40_000
    tokens = {entry["name"]: entry["tokens"] for entry in plan["runs"]}
    assert tokens == {"expert-0": 16_384, "expert-1": 16_384, "dense": 32_768}
    for entry in plan["runs"]:
        assert entry["commands"][-1][-3:-2] == [str(entry["tokens"])]  # --tokens N -o OUT
    assert run(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "experts together: 32,768 tokens; dense: 32,768 tokens; every run is whole steps of "
        "4,096 tokens, 7,232 of the budget are left untrained"
    ) in out
    args[args.index("40K")] = "8K"
    assert run(args) == 2
    err = capsys.readouterr().err
    assert err == (
        "xelm: error: --budget 8,000 gives each of 2 experts less than one step of 4,096 "
        "tokens: raise --budget or make a step smaller: --global-batch, or --batch-size x "
        "--block-size, in --train-args, or fewer --nproc-per-node\n"
    )
    assert run([*args, "--moe-tokens", "4096"]) == 2  # of 8K, 4K left: 2K an expert
    assert capsys.readouterr().err.startswith(
        "xelm: error: --budget 8,000 less --moe-tokens 4,096 gives each of 2 experts less than "
        "one step of 4,096 tokens: raise --budget (or lower --moe-tokens) or make a step smaller"
    )
    args[args.index("--block-size 512")] = "--block-size 512 --global-batch 6000"
    assert run(args) == 2
    assert capsys.readouterr().err == (
        "xelm: error: --train-args: --global-batch 6,000 must be a multiple of one micro-batch "
        "(--batch-size x --block-size = 4,096 tokens)\n"
    )


def test_moe_tokens_come_from_the_experts_share_so_dense_and_moe_cost_the_budget(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    """Branch-Train-MiX's accounting: with --moe-tokens M the experts share B - M, the averaged
    model costs what they cost, the MoE adds its M-token fine-tune and totals what the dense
    run trains: B, each run rounded down to whole steps of 8 x 1024 tokens (400K is 48
    steps, 393,216 tokens; 200K is 24)."""
    measured, record = _timed_run(seed_bundle, shards, tmp_path)
    capsys.readouterr()
    plan_args = _plan(
        tmp_path, seed_bundle, shards, "--moe-tokens", "200K", "--measured", str(measured)
    )
    assert run([*plan_args, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["budget"] == 1_000_000 and plan["moe_tokens"] == 200_000
    tokens = {entry["name"]: entry["tokens"] for entry in plan["runs"]}
    assert tokens == {"expert-0": 393_216, "expert-1": 393_216, "dense": 983_040,
                      "average": 0, "moe": 196_608}  # fmt: skip
    assert plan["step_tokens"] == 8192
    assert tokens["expert-0"] + tokens["expert-1"] + tokens["moe"] == tokens["dense"]
    runs = tmp_path / "runs"
    experts = [str(runs / "experts" / f"expert-{i}") for i in range(2)]
    by_name = {entry["name"]: entry for entry in plan["runs"]}
    assert by_name["average"]["commands"] == [
        ["xelm", "bundle", "merge", *experts, "--method", "average", "-o", str(runs / "average")]
    ]
    build, tune = by_name["moe"]["commands"]
    assert build == ["xelm", "bundle", "moe", *experts, "--top-k", "2", "--gate", "random",
                     "-o", str(runs / "moe-init")]  # fmt: skip
    # every run's steps are the plan's, on however many devices train-all gives it
    assert tune == ["xelm", "train", str(runs / "moe-init"), "--data", str(shards),
                    "--global-batch", "8192", "--aux-loss", "0.01", "--tokens", "196608",
                    "-o", str(runs / "moe")]  # fmt: skip
    assert all(
        command[command.index("--global-batch") + 1] == "8192"
        for entry in plan["runs"] for command in entry["commands"] if command[1] == "train"
    )  # fmt: skip
    assert by_name["moe"]["after"] == ["expert-0", "expert-1"]
    # memory counts every MLP the MoE holds; time the two that top-2 routing runs per token
    shape = ModelShape.of(Bundle.open(seed_bundle))
    mlp = 3 * shape.hidden * shape.intermediate * shape.layers
    assert by_name["moe"]["parameters"] == shape.parameters + mlp + 2 * shape.hidden * shape.layers
    n_measured = ModelShape.of(Bundle.open(measured)).parameters
    timed = record[plan["estimate"]["measured_time"]]
    seconds_per_parameter_token = timed / record["tokens"] / n_measured
    active = shape.parameters + mlp + 2 * shape.hidden * shape.layers
    assert by_name["moe"]["seconds"] == pytest.approx(
        record["setup_seconds"] + 196_608 * active * seconds_per_parameter_token
    )
    assert by_name["dense"]["seconds"] == pytest.approx(
        record["setup_seconds"] + 983_040 * shape.parameters * seconds_per_parameter_token
    )

    assert run([*plan_args, "--moe-calibration", str(FLORES), "--moe-aux-loss", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "MoE: 786,432 + 196,608 fine-tune = 983,040 tokens" in out
    assert "every run is whole steps of 8,192 tokens, 16,960 of the budget are left" in out
    assert f"--top-k 2 --gate language --calibration {FLORES} -o" in out
    assert "--aux-loss 0.1 --tokens 196608 -o" in out

    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    assert run(["train-all", str(plan_file), "--only", "4", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = [["xelm", "bundle", "moe"], ["xelm", "train", str(runs / "moe-init")]]
    assert [line.split()[:3] for line in lines] == expected

    assert run(_plan(tmp_path, seed_bundle, shards, "--moe-tokens", "1M")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--moe-tokens 1,000,000 must be below --budget" in err


def test_the_moe_runs_memory_is_checked_with_every_expert_held_and_the_plain_loss(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    """The MoE of the 2 experts holds both MLPs a layer, runs 2 a token (top-2) and trains
    with transformers' loss (the trainer's chunked loss has no load-balancing term): under a
    limit between its memory and a dense-size run's, the plan is refused naming the moe run
    and its largest batch."""
    shape = ModelShape.of(Bundle.open(seed_bundle))
    held, _ = moe_shapes(shape, 2, 2)
    moe_run: dict[str, Any] = {"cuda": False, "lean_loss": False, "mlps_per_token": 2}
    dense = training_memory(shape, 16, 32, cuda=False).total
    moe = training_memory(held, 16, 32, **moe_run).total
    one_mlp = training_memory(held, 16, 32, cuda=False, lean_loss=False).total
    assert moe - one_mlp == 16 * 32 * shape.layers * 4 * 5 * shape.intermediate  # by hand
    limit = (dense + moe) // 2
    assert dense < limit < moe
    fits, _ = largest_batch(held, 32, limit, **moe_run)
    assert 1 <= fits < 16
    args = _plan(tmp_path, seed_bundle, shards, "--memory", str(limit), "--json")
    train_args = "--block-size 32 --device cpu --batch-size"
    assert run([*args, "--train-args", f"{train_args} 16"]) == 0  # the dense-size runs fit
    capsys.readouterr()
    assert run([*args, "--moe-tokens", "200K", "--train-args", f"{train_args} 16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "xelm: error: the moe run (2 MLPs a layer, 2 a token, the plain loss): a batch of 16 x "
        "32 tokens "
    )
    whole = max(b for b in range(1, fits + 1) if 16 % b == 0)  # micro-batches of the step
    assert f"; the largest that fits at steps of 512 tokens is --batch-size {whole} " in err
    assert run([*args, "--moe-tokens", "200K", "--train-args", f"{train_args} {fits}"]) == 0
    by_name = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)["runs"]}
    expected = training_memory(held, fits, 32, **moe_run)
    assert by_name["moe"]["memory"] == expected.as_dict()
    shown = [a for a in args if a != "--json"]
    assert run([*shown, "--moe-tokens", "200K", "--train-args", f"{train_args} {fits}"]) == 0
    needs = f"(2 MLPs a layer); the same micro-batch needs about {expected.total / 1e9:.2f} GB;"
    assert needs in capsys.readouterr().out


def test_parallel_estimates_train_all_side_by_side_in_its_order(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, shards: Path, tmp_path: Path
) -> None:
    """--parallel 2 on the BTX plan: dense (983,040 tokens, the 1M budget in whole steps) and
    expert-0 start, expert-1 follows expert-0, the MoE waits for both experts, so the plan ends
    at max(dense, 2 experts + MoE), by hand from each run's estimated seconds; in tokens, the
    dense run's instead of twice that in turn."""
    measured, _ = _timed_run(seed_bundle, shards, tmp_path)
    capsys.readouterr()
    args = _plan(tmp_path, seed_bundle, shards, "--moe-tokens", "200K", "--measured", str(measured))
    assert run([*args, "--parallel", "2", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    seconds = {entry["name"]: entry["seconds"] for entry in plan["runs"]}
    expected = max(seconds["dense"], seconds["expert-0"] + seconds["expert-1"] + seconds["moe"])
    estimate = plan["side_by_side"]
    assert estimate["runs_at_a_time"] == 2 and estimate["tokens"] == 983_040
    assert estimate["seconds"] == pytest.approx(expected)
    assert estimate["one_after_another"] == {
        "tokens": 1_966_080, "seconds": pytest.approx(sum(seconds.values())),
    }  # fmt: skip
    assert run([*args, "--parallel", "2"]) == 0
    out = capsys.readouterr().out
    # a CPU plan: runs side by side share the machine's cores (--parallel, not --devices)
    assert "2 runs at a time (xelm train-all --parallel 2): the time of 983,040 tokens" in out
    assert (
        f"about {duration(expected)} instead of {duration(sum(seconds.values()))}, if the runs "
        "do not slow each other (on a CPU they share its cores)"
    ) in out
    assert run([*args, "--parallel", "2", "--memory", "80GB", "--train-args", "--device cuda"]) == 0
    out = capsys.readouterr().out
    assert "2 runs at a time (xelm train-all --devices with 2 groups)" in out
    assert "each run on a device of its own" in out
    assert run([*args, "--parallel", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("--parallel must be at least 1, not 0\n")


def test_side_by_side_length_follows_the_runners_order_and_finds_cycles() -> None:
    from xelm_cli.training.plan_runner import side_by_side_length

    def runs(*specs: tuple[str, int, list[str]]) -> list[dict[str, Any]]:
        return [{"name": name, "tokens": tokens, "after": after} for name, tokens, after in specs]

    plan = runs(("a", 5, []), ("b", 3, []), ("c", 3, []), ("d", 1, ["b"]), ("e", 4, ["d"]))
    tokens = lambda run: run["tokens"]  # noqa: E731
    assert side_by_side_length(plan, 1, tokens) == 16
    # two at a time: a [0,5], b [0,3], then c is first in order and ready: c [3,6],
    # d [5,6] (b ended), e [6,10] after d
    assert side_by_side_length(plan, 2, tokens) == 10
    assert side_by_side_length(plan, 5, tokens) == 8  # b, d, e in a chain
    looped = runs(("a", 1, ["b"]), ("b", 1, ["a"]), ("c", 1, []))
    assert side_by_side_length(looped, 2, tokens) is None
    assert side_by_side_length(runs(("a", 1, ["elsewhere"])), 1, tokens) == 1
