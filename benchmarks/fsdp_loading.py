"""Host memory of FSDP's loading phase: rank 0 alone reading the seed vs every rank reading it.

    python benchmarks/fsdp_loading.py [--layers 12] [--hidden 1024] [--ranks 2]
                                      [--seed-dtype float32|bfloat16] [--work DIR]

Writes a seed bundle of a Llama-style model built from a config (about 160M parameters at the
defaults, stored in fp32 or, as most published seeds are, bf16), then runs the trainer
(`--fsdp`, CPU, gloo) under torchrun twice: once as it
runs (``Sharding.from_main``: rank 0 reads the weights, the other ranks build the model on the
meta device and receive their shards), once with every rank reading the whole model (the way
before). Each rank stops after the trainer's setup (model loaded and sharded, optimiser built)
and reports its memory: the resident set when setup began (torch and transformers imported)
and its peak during setup (``ru_maxrss``; file pages of a safetensors file it mapped count
here), its anonymous memory (``RssAnon``) then and at its peak (sampled every 5 ms: the
private copies;
an fp32 seed read into fp32 on the CPU stays in the mapped file, shared by the ranks, while a bf16
seed is converted into private fp32 copies). glibc returns freed blocks over 64 KiB at once
(``MALLOC_MMAP_THRESHOLD_``), so the peaks are of what a rank held, not of its heap's growth.
"""

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # before transformers is imported

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LANGS = ["en", "de"]
MODES = {"once": "rank 0 reads", "everywhere": "every rank reads"}


def setup(work: Path, layers: int, hidden: int, dtype: str) -> tuple[Path, Path, int]:
    """The seed bundle and shards of a few thousand tokens; the model's parameter count."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from xelm_cli.bundle.seed import init_from_hf
    from xelm_cli.data.prepare import prepare
    from xelm_cli.data.tokenizer import train_bpe_tokenizer

    texts = [line for lang in LANGS for line in (DATA / "eval" / "udhr" / f"{lang}.txt")
             .read_text().splitlines() if line.strip()]  # fmt: skip
    tokenizer_dir = train_bpe_tokenizer(texts, work / "tok", vocab_size=4000)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers, num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    parameters = sum(p.numel() for p in model.parameters())
    model.to(getattr(torch, dtype)).save_pretrained(work / "hf")
    tokenizer.save_pretrained(work / "hf")
    del model
    seed = init_from_hf(work / "hf", work / "seed", languages=LANGS).path
    shutil.rmtree(work / "hf")
    corpus = work / "corpus"
    corpus.mkdir()
    for lang in LANGS:
        source = DATA / "corpus" / "valid" / f"{lang}.jsonl.zst"
        (corpus / source.name).symlink_to(source.resolve())
    prepare(corpus, seed, work / "shards", token_caps=20000)
    return seed, work / "shards", parameters


def measure(seed: Path, shards: Path, out: Path, mode: str, ranks: int) -> list[dict[str, Any]]:
    """Every rank's memory record of one run under torchrun."""
    report = out.with_suffix(".memory")
    report.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks)]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(29500 + os.getpid() % 1000)]
    command += [__file__, "--rank-run", mode, str(seed), str(shards), str(out), str(report)]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env |= {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"the {mode} run failed:\n{done.stderr[-3000:]}")
    return [json.loads((report / f"rank-{r}.json").read_text()) for r in range(ranks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--seed-dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--work", type=Path, help="keep the files here (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="xelm-fsdp-loading-"))
    try:
        seed, shards, parameters = setup(work, args.layers, args.hidden, args.seed_dtype)
        print(f"model: {parameters / 1e6:.0f}M parameters, {parameters * 4 / 2**20:.0f} MiB in "
              f"fp32; seed stored in {args.seed_dtype}; {args.ranks} ranks")  # fmt: skip
        runs = {mode: measure(seed, shards, work / mode, mode, args.ranks) for mode in MODES}
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print_table(runs)


def print_table(runs: dict[str, list[dict[str, Any]]]) -> None:
    """Per rank, in MiB: RSS at the start of setup and its peak, the same of anonymous memory;
    then new / old of the peaks and of the growths (peak - start)."""
    print("rank  loading            RSS: start   peak  growth   anon: start   peak  growth")
    for rank in range(len(runs["once"])):
        for mode, label in MODES.items():
            r = runs[mode][rank]
            print(f"{rank:>4}  {label:<17} {r['start']:>11.0f} {r['peak']:>6.0f} "
                  f"{r['peak'] - r['start']:>7.0f} {r['anon']:>13.0f} {r['peak_anon']:>6.0f} "
                  f"{r['peak_anon'] - r['anon']:>7.0f}")  # fmt: skip
        old, new = runs["everywhere"][rank], runs["once"][rank]
        ratios = [new[k] / old[k] for k in ("peak", "peak_anon")]
        growths = [(new[p] - new[s]) / (old[p] - old[s])
                   for p, s in (("peak", "start"), ("peak_anon", "anon"))]  # fmt: skip
        print(f"{rank:>4}  new / old          {'':>11} {ratios[0]:>6.2f} {growths[0]:>7.2f} "
              f"{'':>13} {ratios[1]:>6.2f} {growths[1]:>7.2f}")  # fmt: skip


# --- under torchrun -------------------------------------------------------------------------------


def status_mib(field: str) -> float:
    """A ``/proc/self/status`` line (``VmRSS``, ``RssAnon``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


class PeakSampler(threading.Thread):
    """The largest ``RssAnon`` seen while it runs, read every 5 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.done = status_mib("RssAnon"), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, status_mib("RssAnon"))

    def stop(self) -> float:
        self.done.set()
        self.join()
        return max(self.peak, status_mib("RssAnon"))


class Loaded(Exception):
    pass


def rank_run(mode: str, seed: str, shards: str, out: str, report: str) -> None:
    from xelm_trainer.distributed import Sharding
    from xelm_trainer.loop import TrainingRun

    from xelm_cli.api import TrainRequest

    class SetupOnly(TrainingRun):
        def sharding(self, options: Any, device: torch.device) -> Sharding | None:
            sharding = super().sharding(options, device)
            assert sharding is not None
            return replace(sharding, from_main=mode == "once")

        def setup(self, *args: Any) -> NoReturn:
            start, anon, sampler = status_mib("VmRSS"), status_mib("RssAnon"), PeakSampler()
            sampler.start()
            super().setup(*args)
            record = {"start": start, "anon": anon, "peak_anon": sampler.stop()}
            record["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rank = os.environ["RANK"]
            (Path(report) / f"rank-{rank}.json").write_text(json.dumps(record))
            raise Loaded

    options = {"fsdp": True, "device": "cpu", "block_size": 32, "batch_size": 1}
    request = TrainRequest(Path(seed), Path(shards), Path(out), 10**4, options=options)
    with contextlib.suppress(Loaded):
        SetupOnly().train(request)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--rank-run"]:
        rank_run(*sys.argv[2:])
    else:
        main()
