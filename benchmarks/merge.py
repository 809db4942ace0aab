"""Merging experts: `bundle merge` memory, MoE speed, and (with trained experts) quality.

    python benchmarks/merge.py [--hidden 512] [--layers 8] [--ks 2,4,8] [--docs 16]
                               [--experts 'demo-run/typology-k4/expert-*'] [--json]

1. memory: builds 8 experts (random Llama-style decoders of --hidden/--layers with a 4,000-token
   vocabulary, every weight perturbed differently) and, in a fresh process per k, merges the
   first k by uniform parameter averaging: peak growth of the resident set during the merge
   (benchmarks/ensemble.py's sampler) against one expert's weight file (goal: flat in k).
2. speed: an MoE of the first 4 experts (top-1 and top-2, random routers) against one expert,
   the 4-expert ensemble (uniform mixture: all 4 run on every document) and the language-routed
   ensemble (one expert per document), each scoring the same --docs FLORES-200 sentences of the
   experts' languages through the same runner; target tokens per second of a second run in a
   fresh process (load and start-up excluded), and of the first (loads included).
3. quality (with --experts, e.g. the experts of `xelm demo`): FLORES-200 perplexity of each
   system on the experts' languages (MoE routers initialised on 50 held-out corpus documents
   per language), and the MoE's gap to each expert with top-1 routing fixed to that expert on
   its own languages (mean |ln p_MoE - ln p_expert| per token).
"""

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ensemble import DATA, LANGS, PeakMemory  # benchmarks/ensemble.py
from workers import printed_json

FLORES = DATA / "eval" / "flores200-devtest"


def build(work: Path, hidden: int, layers: int, count: int = 8) -> list[Path]:
    import torch

    from xelm_cli.bundle.seed import NAMED_CONFIGS, init_from_config
    from xelm_cli.bundle.store import Bundle, write_bundle
    from xelm_cli.data.tokenizer import train_bpe_tokenizer

    texts = [
        line
        for lang in LANGS
        for line in (FLORES / f"{lang}.txt").read_text().splitlines()[200:600]
    ]
    tokenizer = train_bpe_tokenizer(texts, work / "tok", vocab_size=4000)
    NAMED_CONFIGS["bench"] = dict(
        hidden_size=hidden,
        intermediate_size=64 * round(hidden * 8 / 3 / 64),  # rows of 16-byte multiples (*)
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=512,
    )
    # (*) transformers' default grouped_mm MoE kernel needs them on the CPU
    seed = init_from_config("bench", tokenizer, work / "seed", languages=LANGS)
    model = Bundle.open(seed.path).load_model()
    original = {name: t.clone() for name, t in model.state_dict().items()}
    experts = []
    for e in range(count):
        generator = torch.Generator().manual_seed(e)
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                noise = torch.randn(tensor.shape, generator=generator) * 0.02
                tensor.copy_(original[name] + noise)
        step = {"relation": "train", "parents": [seed.ref]}
        languages = LANGS[2 * e : 2 * e + 2]
        with write_bundle(
            work / f"e{e}",
            role="expert",
            languages=languages,
            parent=seed,
            step=step,
            inherit_weights=False,
        ) as writer:
            writer.save_model(model)
        experts.append(work / f"e{e}")
    return experts


def merge_worker(work: Path, k: int) -> dict[str, float]:
    import torch  # noqa: F401 (imported before measuring, as the CLI has it)

    from xelm_cli.bundle.merging import merge_average

    paths = [work / f"e{e}" for e in range(k)]
    started = time.perf_counter()
    with PeakMemory("cpu") as memory:
        merge_average(paths, work / f"merged-{k}", overwrite=True)
    return {"seconds": time.perf_counter() - started, "peak_growth": memory.growth}


def _systems(paths: list[Path], moes: dict[str, Path]) -> dict[str, Any]:
    from xelm_cli.bundle.store import Bundle
    from xelm_cli.ensemble.routing import build_router
    from xelm_cli.ensemble.runner import EnsembleModel, single_model

    members = [Bundle.read(p) for p in paths]
    return {
        "one expert": lambda: single_model(members[0], "one"),
        "ensemble (uniform mixture)": lambda: EnsembleModel(members, build_router("uniform")),
        "ensemble (language router)": lambda: EnsembleModel(members, build_router("language")),
        **{
            name: (lambda p=p, name=name: single_model(Bundle.read(p), name))
            for name, p in moes.items()
        },
    }


def speed_worker(paths: list[Path], moes: dict[str, Path], system: str, docs: int) -> dict:
    from xelm_cli.bundle.store import Bundle
    from xelm_cli.data.corpus import read_documents

    languages = [x for p in paths for x in Bundle.read(p).languages]
    documents = read_documents(FLORES, languages=languages, limit=docs)
    make = _systems(paths, moes)[system]
    timings = []
    for _ in range(2):  # first: loads and start-up included; second: warm
        model = make()
        started = time.perf_counter()
        scored = model.score_documents(documents)
        timings.append(time.perf_counter() - started)
    tokens = sum(len(s) for s in scored)
    return {"tokens": tokens, "cold_seconds": timings[0], "seconds": timings[1]}


def run_worker(*args: str) -> dict[str, Any]:
    return dict(printed_json([sys.executable, __file__, "--worker", json.dumps(args)]))


def build_moes(paths: list[Path], work: Path, gate: str, **options: Any) -> dict[str, Path]:
    from xelm_cli.bundle.moe import build_moe

    moes = {}
    for top_k in (1, 2):
        out = work / f"moe-top{top_k}-{gate}"
        build_moe(paths, out, top_k=top_k, gate=gate, overwrite=True, **options)
        moes[f"MoE top-{top_k} ({gate} gate)"] = out
    return moes


def forced_gap(moe: Path, experts: list[Path], docs: int) -> list[dict[str, Any]]:
    """Per expert: mean |ln p_MoE - ln p_expert| per token on its own languages with every
    token routed to that expert, and both perplexities."""
    import torch

    from xelm_cli.bundle.store import Bundle
    from xelm_cli.data.corpus import read_documents

    model = Bundle.read(moe).load_model().eval()
    rows = []
    for e, path in enumerate(experts):
        bundle = Bundle.read(path)
        dense = bundle.load_model().eval()
        tokenizer = bundle.load_tokenizer()
        for layer in model.model.layers:
            gate = layer.mlp.gate

            def forward(hidden: Any, gate: Any = gate, e: int = e) -> tuple[Any, Any, Any]:
                n = hidden.reshape(-1, gate.weight.shape[1]).shape[0]
                zeros = torch.zeros(n, gate.weight.shape[0])
                return zeros, torch.ones(n, 1), torch.full((n, 1), e)

            gate.forward = forward
        gaps, nll_moe, nll_dense, tokens = 0.0, 0.0, 0.0, 0
        for doc in read_documents(FLORES, languages=bundle.languages, limit=docs):
            ids = [tokenizer.bos_token_id, *tokenizer(doc.text, add_special_tokens=False).input_ids]
            x = torch.tensor([ids])
            with torch.no_grad():
                a = torch.log_softmax(model(x).logits[0, :-1].double(), -1)
                b = torch.log_softmax(dense(x).logits[0, :-1].double(), -1)
            target = torch.tensor(ids[1:])[:, None]
            la, lb = a.gather(1, target)[:, 0], b.gather(1, target)[:, 0]
            gaps += float((la - lb).abs().sum())
            nll_moe -= float(la.sum())
            nll_dense -= float(lb.sum())
            tokens += len(ids) - 1
        rows.append(
            {
                "expert": bundle.name,
                "languages": bundle.languages,
                "mean_abs_logprob_gap": gaps / tokens,
                "moe_forced_perplexity": math.exp(nll_moe / tokens),
                "expert_perplexity": math.exp(nll_dense / tokens),
            }
        )
    return rows


def quality(
    experts: list[Path],
    work: Path,
    docs: int,
    finetune: tuple[Path, str] | None = None,
    baselines: Sequence[Path] = (),
) -> dict[str, Any]:
    from xelm_cli.api import EvalRequest
    from xelm_cli.bundle.merging import merge_average
    from xelm_cli.bundle.store import Bundle
    from xelm_cli.ensemble.results import build_evaluator
    from xelm_cli.ensemble.runner import single_model

    languages = [x for p in experts for x in Bundle.read(p).languages]
    # routers initialised on held-out corpus text, not on the FLORES sentences evaluated
    calibration = str(DATA / "corpus" / "valid")
    moes = build_moes(experts, work, "language", calibration=calibration, calibration_limit=50)
    averaged = merge_average(experts, work / "averaged", overwrite=True)
    systems = _systems(experts, moes)
    systems["averaged (uniform)"] = lambda: single_model(averaged, "averaged")
    for path in baselines:
        systems[path.name] = lambda path=path: single_model(Bundle.read(path), path.name)
    request = EvalRequest(data=str(FLORES), languages=tuple(languages), limit=docs)
    evaluator = build_evaluator("perplexity", request)
    perplexity = {}
    for name, make in systems.items():
        if name == "one expert":
            continue
        metrics = evaluator.evaluate(make())
        perplexity[name] = metrics["overall"]["perplexity"]
    gap = forced_gap(moes["MoE top-1 (language gate)"], experts, docs)
    if finetune is not None:  # (shards, tokens): BTX's fine-tune of the top-2 MoE
        shards, tokens = finetune
        trained = Bundle.read(experts[0]).manifest.training or {}
        settings = trained.get("options", {})
        for mode, flags in (("all weights", []), ("routers only", ["--router-only"])):
            out = work / f"moe-ft-{len(flags)}"
            command = [
                sys.executable, "-m", "xelm_cli", "train", str(moes["MoE top-2 (language gate)"]),
                "--data", str(shards), "--tokens", str(tokens), "-o", str(out), "--force",
                "--block-size", str(settings.get("block_size", 128)),
                "--batch-size", str(settings.get("batch_size", 8)),
                "--lr", str(settings.get("lr", 1e-4)), *flags,
            ]  # fmt: skip
            subprocess.run(command, check=True, capture_output=True)
            name = f"MoE top-2 after {tokens} tokens ({mode})"
            perplexity[name] = evaluator.evaluate(single_model(Bundle.read(out), name))["overall"][
                "perplexity"
            ]
    return {"perplexity": perplexity, "forced_top1_gap": gap}


def memory_and_speed(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    built = sorted(work.glob("e[0-9]"))
    experts = built if len(built) == 8 else build(work, args.hidden, args.layers)
    size = (experts[0] / "model.safetensors").stat().st_size
    report: dict[str, Any] = {"expert_mb": size / 1e6, "merge": [], "speed": {}}
    for k in [int(k) for k in args.ks.split(",")]:
        measured = run_worker("merge", str(work), str(k))
        report["merge"].append(
            {"k": k, "peak_growth_vs_expert": measured["peak_growth"] / size, **measured}
        )
    four = experts[:4]
    moes = build_moes(four, work, "random")
    for system in _systems(four, moes):
        job = json.dumps(
            [[str(p) for p in four], {n: str(p) for n, p in moes.items()}, system, args.docs]
        )
        measured = run_worker("speed", job)
        measured["tokens_per_second"] = measured["tokens"] / measured["seconds"]
        measured["cold_tokens_per_second"] = measured["tokens"] / measured["cold_seconds"]
        report["speed"][system] = measured
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--ks", default="2,4,8")
    parser.add_argument("--docs", type=int, default=16, help="FLORES sentences per language")
    parser.add_argument("--experts", help="quoted glob of trained experts for the quality part")
    parser.add_argument("--finetune", help="token shards to fine-tune the top-2 MoE on")
    parser.add_argument("--finetune-tokens", default="64K")
    parser.add_argument("--baseline", action="append", default=[], help="bundle to evaluate too")
    parser.add_argument("--skip-speed", action="store_true", help="quality only")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--work", help="keep the built models here (default: a temporary dir)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = json.loads(args.worker)
        if kind == "merge":
            result = merge_worker(Path(rest[0]), int(rest[1]))
        else:
            paths, moes, system, docs = json.loads(rest[0])
            result = speed_worker([Path(p) for p in paths], moes, system, docs)
        print(json.dumps(result))
        return
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        if not args.skip_speed:
            report.update(memory_and_speed(work, args))
        if args.experts:
            finetune = (Path(args.finetune), args.finetune_tokens) if args.finetune else None
            report["quality"] = quality(
                [Path(p) for p in sorted(glob.glob(args.experts))],
                work,
                args.docs,
                finetune,
                [Path(p) for p in args.baseline],
            )
    if args.json:
        print(json.dumps(report, indent=2))
        return
    if "merge" in report:
        print(f"one expert: {report['expert_mb']:.1f} MB")
    for row in report.get("merge", []):
        print(
            f"merge k={row['k']}: peak growth {row['peak_growth'] / 1e6:.1f} MB = "
            f"{row['peak_growth_vs_expert']:.3f} x one expert, {row['seconds']:.1f} s"
        )
    for name, row in report.get("speed", {}).items():
        print(
            f"{name:>28}: {row['tokens_per_second']:8.0f} tokens/s warm, "
            f"{row['cold_tokens_per_second']:8.0f} with loading ({row['tokens']} tokens)"
        )
    if "quality" in report:
        for name, value in report["quality"]["perplexity"].items():
            print(f"{name:>28}: perplexity {value:.2f}")
        for row in report["quality"]["forced_top1_gap"]:
            print(
                f"forced top-1 to {row['expert']} {row['languages']}: mean |gap| "
                f"{row['mean_abs_logprob_gap']:.4f} nats/token, perplexity "
                f"{row['moe_forced_perplexity']:.2f} vs expert {row['expert_perplexity']:.2f}"
            )


if __name__ == "__main__":
    main()
