"""`xelm demo`: X-ELM's experiment, small, end to end, resumable.

Every step writes its outputs atomically and then a record ``steps/NAME.json`` (its result and
how long it took); a re-run skips the steps that have a record, and a training run killed
half-way resumes from its last checkpoint. ``demo.json``, written before the first step,
records the preset and the data that made the folder: another one is refused (folder.py). A run
holds the folder's lock (``output_lock``) from start to end: a second run of it is refused.
"""

import functools
import json
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xelm_cli.bundle.branching import branch, hmr_branch
from xelm_cli.bundle.store import Bundle, is_bundle, verify_bundle
from xelm_cli.cluster.allocation import read_allocation
from xelm_cli.cluster.fitting import cluster
from xelm_cli.common.atomic import output_lock, write_bytes_atomic
from xelm_cli.common.errors import XelmError
from xelm_cli.common.jsonio import pretty_json, read_json_object
from xelm_cli.common.progress import stderr_console
from xelm_cli.common.units import duration
from xelm_cli.data.corpus import read_documents
from xelm_cli.data.shards import MANIFEST_NAME as SHARDS_MANIFEST
from xelm_cli.data.shards import Shards
from xelm_cli.demo.data import check_data
from xelm_cli.demo.documents import purity_of_counts, sampled_documents
from xelm_cli.demo.folder import check_data_of, check_folder, record_folder
from xelm_cli.demo.plan import demo_plan, runner_span_tokens
from xelm_cli.demo.presets import MOE_TOP_K, NEW_LANGUAGES, TRAIN_LANGUAGES, Preset
from xelm_cli.ensemble.routing import build_router
from xelm_cli.ensemble.runner import EnsembleModel, ScoreCache, single_model
from xelm_cli.ensemble.scoring import pick_device
from xelm_cli.plugin.contracts import EvalRequest, checkpoint_dir
from xelm_cli.plugin.host import get_registry
from xelm_cli.plugin.options import as_flags
from xelm_cli.plugin.registry import Kind
from xelm_cli.training.plan_runner import PlanRunner, device_groups, raise_failures
from xelm_cli.training.run import DEFAULT_TRAINER
from xelm_cli.training.run import train as train_bundle

ALL_LANGUAGES = (*TRAIN_LANGUAGES, *NEW_LANGUAGES)


def hash_again(bundles: Sequence[Path]) -> dict[str, Any]:
    """Every problem ``xelm bundle verify`` finds in ``bundles``, their files hashed again.

    HMR copies share their donors' files (hard links), so after adding languages the old
    experts are hashed anew: their perplexities alone come from the score cache and would be
    identical however their files had changed."""
    return {
        "bundles": len(bundles),
        "problems": [f"{path}: {problem}" for path in bundles for problem in verify_bundle(path)],
    }


# the plugins the demo runs, by kind: what its results record as their provenance
DEMO_PLUGINS: dict[Kind, tuple[str, ...]] = {
    "clusterer": ("typology", "tfidf"),
    "trainer": ("causal-lm",),
    "router": ("uniform", "language", "posterior", "tfidf"),
    "evaluator": ("perplexity", "icl"),
}


def plugins_used() -> dict[str, dict[str, dict[str, Any]]]:
    """``{kind: {name: {name, plugin, distribution, version}}}`` of the plugins the demo runs."""
    registry = get_registry()
    return {
        f"{kind}s": {name: registry.get(kind, name).provenance for name in names}
        for kind, names in DEMO_PLUGINS.items()
    }


def write_jsonl(path: Path, texts: Sequence[str], language: str) -> None:
    """``{"text", "lang"}`` records, one per line, written atomically."""
    lines = [json.dumps({"text": t, "lang": language}, ensure_ascii=False) for t in texts]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())


@dataclass(frozen=True)
class TfidfClusters:
    """The TF-IDF X-ELM ready to train: each expert's (branch, shards, output, languages)."""

    allocation: Path
    assigner: Any
    experts: list[tuple[Path, Path, Path, list[str]]]
    sizes: list[int]  # training documents per cluster
    purity: dict[str, dict[str, Any]]


def check_run(preset: Preset, out: Path, device: str | None) -> None:
    """Refuse before any work a run folder made by another preset and a device that cannot
    run here (``device`` None or ``auto``: CUDA if present, else the CPU)."""
    check_folder(out, preset)
    pick_device(None if device == "auto" else device)


def _shards_of(path: Path, expert: dict[str, Any]) -> Shards | None:
    """The shards at ``path`` if they hold ``expert``'s documents (``Allocation.reference``)."""
    try:
        if (path / SHARDS_MANIFEST).is_file() and (shards := Shards.open(path)).expert == expert:
            return shards
    except XelmError:  # damaged: made again
        pass
    return None


class Demo:
    """One demo run in ``out``: the steps, their records, and the results they add up to."""

    def __init__(
        self,
        preset: Preset,
        data: Path,
        out: Path,
        device: str | None = None,
        devices: str | None = None,
    ) -> None:
        check_run(preset, out, device)
        check_data(data, preset)
        check_data_of(out, data)
        self.preset = preset
        self.data = data
        self.out = out
        self.device = device
        # GPUs to train the seed on at once, then the other runs side by side; refused now,
        # not after the seed's training
        self.devices: list[str] = [str(d) for d in device_groups(devices, 1, 1)] if devices else []
        self.records = out / "steps"
        self.results: dict[str, Any] = {}
        self.cache = ScoreCache()
        self.index = 0
        # (tokens, seconds, devices) of the current step's training runs
        self._trained: list[tuple[int, float, int]] = []
        self._flores: dict[tuple[str, ...], Any] = {}  # perplexity evaluators by languages

    # ------------------------------------------------------------------ step bookkeeping

    def step(self, name: str, work: Callable[[], Any]) -> Any:
        self.index += 1
        record = self.records / f"{name}.json"
        if record.is_file():
            before = read_json_object(record, "step record")
            stderr_console.print(
                f"[{self.index:>2}] {name}: done before ({before['seconds']:.1f} s)"
            )
            self._record(name, before)
            return before["result"]
        stderr_console.print(f"[{self.index:>2}] {name} ...")
        started = time.perf_counter()
        self._trained = []
        result = work()
        seconds = round(time.perf_counter() - started, 2)
        done: dict[str, Any] = {"seconds": seconds, "result": result}
        if self._trained:  # what its training runs record: the plan's speed (plan.py)
            done["training"] = {
                "tokens": sum(tokens for tokens, _, _ in self._trained),
                "seconds": round(sum(s for _, s, _ in self._trained), 3),
                "device_seconds": round(sum(s * n for _, s, n in self._trained), 3),
            }
        self.records.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(record, pretty_json(done))
        remaining = self._remaining(name, done)
        stderr_console.print(f"[{self.index:>2}] {name}: {seconds:.1f} s{remaining}")
        self._record(name, done)
        return result

    def _record(self, name: str, done: dict[str, Any]) -> None:
        self.results.setdefault("steps", {})[name] = done["seconds"]
        if "training" in done:
            self.results.setdefault("training", {})[name] = done["training"]

    def _remaining(self, name: str, done: dict[str, Any]) -> str:
        """After a training step: the training left and its time at the speed reached so far
        (with --devices, once after the seed's: the other runs side by side; they are all
        trained by the side-by-side step)."""
        if "training" not in done or (self.devices and name != "seed"):
            return ""
        plan = demo_plan(self.preset, self.out)
        if plan.remaining_seconds is None or not plan.remaining_tokens:
            return ""
        if self.devices:
            sizes = {step.step: step.parameters for step in plan.steps}
            span = runner_span_tokens(self.preset, len(self.devices), sizes)
            assert plan.tokens_per_second is not None
            return (
                f" ({plan.tokens_per_second:,.0f} training tokens/s per device so far; the "
                f"other runs side by side on {len(self.devices)} devices: the time of "
                f"{span:,} tokens, about {duration(span / plan.tokens_per_second)})"
            )
        return (
            f" ({plan.tokens_per_second:,.0f} training tokens/s so far; "
            f"{plan.remaining_tokens:,} tokens left to train: about "
            f"{duration(plan.remaining_seconds)})"
        )

    def _count_training(self, bundle: Path) -> None:
        training = Bundle.read(bundle).manifest.training or {}
        devices = int(training.get("hardware", {}).get("world_size", 1))
        self._trained.append(
            (int(training.get("tokens", 0)), float(training.get("seconds", 0)), devices)
        )

    def train(
        self,
        bundle: Path,
        data: Path,
        out: Path,
        tokens: int,
        languages: Sequence[str],
        **options: Any,
    ) -> str:
        """Train ``bundle`` into ``out`` with the preset's training options and ``options``
        (resuming a killed run); the new bundle's digest. The training record's command is the
        `xelm train` command line that trains the same bundle (the one --devices runs)."""
        if not is_bundle(out):
            resume = checkpoint_dir(out).exists()
            command = self._train_command(bundle, data, out, tokens, languages, **options)
            train_bundle(
                bundle,
                data=data,
                tokens=tokens,
                output=out,
                languages=languages,
                resume=resume,
                command=shlex.join([*command, "--resume"] if resume else command),
                **{**self.preset.train, "device": self.device or "auto", **options},
            )
        self._count_training(out)
        return Bundle.read(out).digest

    # ------------------------------------------------------------------ the experiment

    def run(self) -> dict[str, Any]:
        """Run (or resume) every step, holding the folder's lock; the results."""
        with output_lock(self.out):  # a second run of the folder is refused at once
            check_data_of(self.out, self.data)  # again: a run may have finished a step since
            return self._steps()

    def _steps(self) -> dict[str, Any]:
        p = self.preset
        record_folder(self.out, p, self.data)
        self.results.update(
            preset=p.as_dict(),
            data=str(self.data),
            languages=list(TRAIN_LANGUAGES),
            new_languages=dict(NEW_LANGUAGES),
        )
        corpus = self.out / "corpus"
        self.results["corpus"] = self.step("corpus", lambda: self.sample_corpus(corpus))
        tokenizer = self.out / "tokenizer"
        self.step("tokenizer", lambda: self.make_tokenizer(corpus, tokenizer))
        shards = self.out / "shards"
        self.results["training_tokens"] = self.step(
            "shards", lambda: self.prepare(corpus, tokenizer, shards)
        )
        seed = self.out / "seed"
        self.step("seed", lambda: self.make_seed(tokenizer, shards, seed))
        if self.devices:
            self.step("side-by-side", lambda: self.side_by_side(seed, shards))
        dense = self.out / "dense"
        self.step("dense", lambda: self.train(seed, shards, dense, p.equal_budget, TRAIN_LANGUAGES))
        experts: dict[str, list[Path]] = {}
        for k in p.typology_ks:
            name = f"typology-k{k}"
            experts[name] = [
                Path(path)
                for path in self.step(
                    name, functools.partial(self.typology_experts, seed, shards, k)
                )
            ]
        tfidf_name = f"tfidf-k{p.tfidf_k}"
        tfidf = self.step(tfidf_name, lambda: self.tfidf_experts(seed, corpus, tokenizer))
        experts[tfidf_name] = [Path(path) for path in tfidf["experts"]]
        self.results["tfidf_clusters"] = {
            "name": tfidf_name,
            "cluster_documents": tfidf["cluster_documents"],
            "purity": tfidf.get("purity", {}),
        }
        main = f"typology-k{self.preset.main_k}"
        self.results["main_xelm"] = main
        self.results["perplexity"] = self.step(
            "evaluate", lambda: self.evaluate(seed, dense, experts, main, tfidf)
        )
        self.merging(main, experts[main], shards)
        self.results["adaptation"] = self.step(
            "adapt", lambda: self.adapt(dense, experts[main], shards)
        )
        self.results["icl"] = self.step("icl", lambda: self.icl(dense, experts[main]))
        self.results["typology"] = read_json_object(
            self.out / main / "allocation.json", "allocation"
        )
        self.results["experts"] = {
            name: [
                {"name": b.name, "languages": b.languages, "digest": b.digest}
                for b in map(Bundle.read, paths)
            ]
            for name, paths in experts.items()
        }
        self.results["provenance"] = plugins_used()
        # the whole run's: its steps' recorded seconds, those of earlier invocations included
        self.results["seconds"] = round(sum(self.results["steps"].values()), 1)
        return self.results

    def sample_corpus(self, corpus: Path) -> dict[str, Any]:
        """A random sample of about ``corpus_bytes`` of training text per language, in
        documents of about ``document_bytes`` built from consecutive records of one source
        (documents.group_records); every arm trains on this sample, and the TF-IDF clusterer
        is fitted on documents from it."""
        target = self.preset.document_bytes
        sizes, counts = {}, {}
        for language in ALL_LANGUAGES:
            source = self.data / "corpus" / "train" / f"{language}.jsonl.zst"
            chosen = sampled_documents(source, language, target, self.preset.corpus_bytes)
            write_jsonl(corpus / f"{language}.jsonl", chosen, language)
            sizes[language] = sum(len(text.encode()) for text in chosen)
            counts[language] = len(chosen)
        short = {lang: size for lang, size in sizes.items() if size < self.preset.corpus_bytes}
        if short:  # the runs then read the same text several times
            stderr_console.print(
                f"note: preset {self.preset.name} asks {self.preset.corpus_bytes / 1e6:g} MB of "
                f"training text per language; {self.data} has less in {len(short)}: "
                + ", ".join(f"{lang} {size / 1e6:.1f} MB" for lang, size in short.items())
                + f" (more: xelm data fetch --size {self.preset.corpus_bytes // 10**6}M -o DIR, "
                "then --data DIR)"
            )
        return {"document_bytes": target, "bytes": sizes, "documents": counts}

    def make_tokenizer(self, corpus: Path, out: Path) -> dict[str, Any]:
        from xelm_cli.data.tokenizer import train_tokenizer_on_corpus

        trained = train_tokenizer_on_corpus(
            corpus, out, vocab_size=self.preset.vocab_size, languages=list(ALL_LANGUAGES),
            overwrite=True,
        )  # fmt: skip
        return {"vocab_size": trained.vocab_size, "path": str(trained.path)}

    def prepare(self, corpus: Path, tokenizer: Path, shards: Path) -> dict[str, int]:
        from xelm_cli.data.prepare import prepare
        from xelm_cli.data.shards import Shards

        prepare(corpus, tokenizer, shards, languages=list(ALL_LANGUAGES), overwrite=True)
        opened = Shards.open(shards)
        return {lang: opened.stats[lang].tokens for lang in ALL_LANGUAGES}

    def make_seed(self, tokenizer: Path, shards: Path, seed: Path) -> str:
        from xelm_cli.bundle.seed import NAMED_CONFIGS, init_from_config

        init = self.out / "seed-init"
        if not is_bundle(init):
            NAMED_CONFIGS[f"demo-{self.preset.name}"] = dict(self.preset.model)
            init_from_config(
                f"demo-{self.preset.name}", tokenizer, init, languages=list(TRAIN_LANGUAGES),
                overwrite=True,
            )  # fmt: skip
        ranks = self.preset.seed_ranks(len(self.devices))
        if ranks > 1 and not is_bundle(seed):
            self._train_seed_on_devices(init, shards, seed, ranks)
        return self.train(init, shards, seed, self.preset.seed_tokens, TRAIN_LANGUAGES)

    def _train_seed_on_devices(self, init: Path, shards: Path, seed: Path, ranks: int) -> None:
        """The seed's run under torchrun on the first ``ranks`` of --devices (DDP) at the
        preset's batch, each rank a 1/ranks share of its micro-batch."""
        p = self.preset
        share = {"batch_size": int(p.train["batch_size"]) // ranks,
                 "global_batch_tokens": p.batch_tokens}  # fmt: skip
        run = self._run("seed", init, shards, seed, p.seed_tokens, TRAIN_LANGUAGES, **share)
        group: list[str | None] = [",".join(self.devices[:ranks])]
        raise_failures(PlanRunner({"runs": [run]}, [run], group, nproc_per_node=ranks).run())

    def typology_experts(self, seed: Path, shards: Path, k: int) -> list[str]:
        paths = []
        for start, out, languages in self.typology_branches(seed, k):
            self.train(start, shards, out, self.preset.equal_budget // k, languages)
            paths.append(str(out))
        return paths

    def typology_branches(self, seed: Path, k: int) -> list[tuple[Path, Path, list[str]]]:
        """(branch, output, languages) of each expert of the typology X-ELM with k experts:
        its allocation and branches made, if they were not."""
        root = self.out / f"typology-k{k}"
        allocation = root / "allocation.json"
        if allocation.is_file():
            alloc = read_allocation(allocation)
        else:
            root.mkdir(parents=True, exist_ok=True)
            alloc = cluster(
                "typology", k=k, output=allocation, languages=TRAIN_LANGUAGES, overwrite=True
            )
        experts = []
        for expert, languages in enumerate(alloc.experts):
            start = root / f"branch-{expert}"
            if not is_bundle(start):
                branch(seed, start, allocation=alloc, expert=expert, overwrite=True)
            experts.append((start, root / f"expert-{expert}", list(languages)))
        return experts

    def side_by_side(self, seed: Path, shards: Path) -> dict[str, str]:
        """Every training run after the seed's, one per device group at a time (``xelm
        train-all``'s runner), each as soon as the runs it waits for have ended
        (``Preset.runs``: the adaptation runs after the model each continues, the MoE's
        fine-tune after the experts it is built from); the steps that follow find them
        trained."""
        commands = self._commands(seed, shards)
        runs = [commands[run.name] | {"after": list(run.after)}
                for run in self.preset.runs() if run.step != "seed"]  # fmt: skip
        outcomes = PlanRunner({"runs": runs}, runs, list(self.devices)).run()
        raise_failures(outcomes)
        return {outcome.name: outcome.status for outcome in outcomes}

    def _commands(self, seed: Path, shards: Path) -> dict[str, dict[str, Any]]:
        """Each training run after the seed's as a run of a plan, by name: its commands
        (branches, allocations and the TF-IDF clusters' shards made first)."""
        p, dense = self.preset, self.out / "dense"
        runs = [self._run("dense", seed, shards, dense, p.equal_budget, TRAIN_LANGUAGES)]
        branches = {k: self.typology_branches(seed, k) for k in p.typology_ks}
        for k, experts in branches.items():
            for expert, (start, out, languages) in enumerate(experts):
                name = f"typology-k{k}-expert-{expert}"
                runs.append(self._run(name, start, shards, out, p.equal_budget // k, languages))
        tfidf = self.tfidf_clusters(seed, self.out / "corpus", self.out / "tokenizer")
        for expert, (start, data, out, languages) in enumerate(tfidf.experts):
            name = f"tfidf-k{p.tfidf_k}-expert-{expert}"
            runs.append(self._run(name, start, data, out, p.equal_budget // p.tfidf_k, languages))
        main = [out for _, out, _ in branches[p.main_k]]
        runs += [*self._adaptation_runs(dense, main, shards), self._moe_run(main, shards)]
        return {run["name"]: run for run in runs}

    def _adaptation_runs(
        self, dense: Path, experts: list[Path], shards: Path
    ) -> list[dict[str, Any]]:
        """For each new language, LAPT (continuing the dense model) and HMR (branching the
        donor's expert among ``experts``): what the adapt step trains."""
        runs, tokens, root = [], self.preset.adapt_tokens, self.out / "adapt"
        sources = [arg for out in experts for arg in ("--from", str(out))]
        for language, donor in NEW_LANGUAGES.items():
            lapt = self._run(f"lapt-{language}", dense, shards, root / f"lapt-{language}",
                             tokens, [language])  # fmt: skip
            start = root / f"hmr-{language}-branch"
            hmr = self._run(f"hmr-{language}", start, shards, root / f"hmr-{language}",
                            tokens, [language])  # fmt: skip
            hmr["commands"].insert(0, ["xelm", "bundle", "branch", *sources, "--donor", donor,
                                       "--lang", language, "-o", str(start)])  # fmt: skip
            runs += [lapt, hmr]
        return runs

    def _moe_run(self, experts: list[Path], shards: Path) -> dict[str, Any]:
        """The MoE built from ``experts`` (as the moe step builds it) and its fine-tune (as
        the moe-finetune step trains it)."""
        p, root = self.preset, self.out / f"typology-k{self.preset.main_k}"
        moe, text = root / "moe", self.gate_text()[0]
        run = self._run("moe-finetune", moe, shards, root / "moe-ft", p.moe_tokens,
                        TRAIN_LANGUAGES, **self.moe_training)  # fmt: skip
        build = ["xelm", "bundle", "moe", *map(str, experts), "--top-k", str(MOE_TOP_K),
                 "--gate", "language", "--calibration", str(text),
                 "--calibration-limit", str(p.eval_documents), "-o", str(moe)]  # fmt: skip
        run["commands"].insert(0, build)
        return run

    @property
    def moe_training(self) -> dict[str, Any]:
        """The MoE fine-tune's options beyond the preset's: the load-balancing loss, logged
        four times (the first and last are recorded)."""
        p = self.preset
        return {
            "aux_loss": p.moe_aux_loss,
            "log_every": max(1, p.moe_tokens // p.batch_tokens // 4),
        }

    def _run(
        self,
        name: str,
        bundle: Path,
        data: Path,
        out: Path,
        tokens: int,
        languages: Sequence[str],
        **options: Any,
    ) -> dict[str, Any]:
        """One run of a plan (spec/training.md section 7): its `xelm train` command."""
        command = self._train_command(bundle, data, out, tokens, languages, **options)
        return {"name": name, "output": str(out), "tokens": tokens, "commands": [command]}

    def _train_command(
        self,
        bundle: Path,
        data: Path,
        out: Path,
        tokens: int,
        languages: Sequence[str],
        **options: Any,
    ) -> list[str]:
        """`xelm train` with the preset's training options (and ``options``) as the trainer
        declares their flags."""
        trainer = get_registry().get("trainer", DEFAULT_TRAINER).obj
        flags = as_flags(trainer, {**self.preset.train, **options})
        if self.device:
            flags.append(f"--device={self.device}")
        return ["xelm", "train", str(bundle), "--data", str(data), "--tokens", str(tokens),
                "--langs", ",".join(languages), *flags, "-o", str(out)]  # fmt: skip

    def tfidf_experts(self, seed: Path, corpus: Path, tokenizer: Path) -> dict[str, Any]:
        """c-BTM's clusters: fit TF-IDF k-means on sample documents, assign every training
        document, and train expert i on its cluster's documents only."""
        clusters = self.tfidf_clusters(seed, corpus, tokenizer)
        self.add_eval_routing(clusters.assigner, clusters.purity)
        paths = []
        for start, shards, out, languages in clusters.experts:
            self.train(
                start, shards, out, self.preset.equal_budget // len(clusters.experts), languages
            )
            paths.append(str(out))
        return {
            "experts": paths,
            "allocation": str(clusters.allocation),
            "cluster_documents": clusters.sizes,
            "purity": clusters.purity,
        }

    def tfidf_clusters(self, seed: Path, corpus: Path, tokenizer: Path) -> TfidfClusters:
        """The TF-IDF X-ELM before training: its allocation fitted, every training document
        assigned, each cluster's documents prepared into shards and its branch made (what
        was done before is reused)."""
        from xelm_cli.data.prepare import prepare_experts

        k = self.preset.tfidf_k
        root = self.out / f"tfidf-k{k}"
        allocation = root / "allocation"
        if allocation.exists():
            alloc = read_allocation(allocation)
        else:
            alloc = cluster(
                "tfidf",
                k=k,
                output=allocation,
                languages=TRAIN_LANGUAGES,
                data=corpus,
                overwrite=True,
                max_docs_per_language=self.preset.tfidf_documents,
            )
        # an older xelm's shards there do not record the expert: xelm train refuses them
        found = [_shards_of(root / f"shards-{e}", alloc.reference(e)) for e in range(k)]
        shards = [opened for opened in found if opened is not None]
        if len(shards) < k:
            # one read of the corpus, each document embedded once, for every expert's shards
            made = prepare_experts(corpus, tokenizer, root / "shards-{expert}", allocation=alloc,
                                   overwrite=True)  # fmt: skip
            shards = [result.shards for result in made]
        # every training document is in its expert's shards: the clusters' sizes are theirs
        counts = [opened.manifest["languages"] for opened in shards]
        documents = {
            language: [int(c.get(language, {}).get("documents", 0)) for c in counts]
            for language in TRAIN_LANGUAGES
        }
        experts = []
        for expert in range(k):
            languages = [lang for lang, row in documents.items() if row[expert]]
            start = root / f"branch-{expert}"
            if not is_bundle(start):
                branch(seed, start, allocation=alloc, expert=expert, overwrite=True)
            experts.append((start, root / f"shards-{expert}", root / f"expert-{expert}", languages))
        sizes = [sum(row[e] for row in documents.values()) for e in range(k)]
        assigner = get_registry().get("clusterer", "tfidf").obj.assigner(alloc)
        return TfidfClusters(allocation, assigner, experts, sizes, purity_of_counts(documents))

    def add_eval_routing(self, assigner: Any, purity: dict[str, dict[str, Any]]) -> None:
        """Add to each language's purity the share of its evaluation sentences whose
        highest-weight expert under the tfidf router (argmin of the distance to the centroid
        plus the allocation's offset, as the training documents were assigned) is the one that
        holds most of its training documents."""
        flores = read_documents(
            self.data / "eval" / "flores200-devtest",
            languages=TRAIN_LANGUAGES,
            limit=self.preset.eval_documents,
        )
        routed = assigner.assign_texts([d.text for d in flores])  # the router's top-1
        for language, entry in purity.items():
            mine = [int(c) for d, c in zip(flores, routed, strict=True) if d.language == language]
            if mine:
                entry["eval_routed"] = round(mine.count(entry["cluster"]) / len(mine), 4)

    # ------------------------------------------------------------------ evaluation

    def _perplexity(
        self, model: EnsembleModel, languages: Sequence[str]
    ) -> dict[str, dict[str, float]]:
        """Per-language perplexity and bits per byte on FLORES-200 devtest, ``overall``
        (pooled over every token) and ``mean`` (over languages, the paper's aggregate)."""
        from xelm_cli.ensemble.results import build_evaluator

        key = tuple(languages)
        if key not in self._flores:
            request = EvalRequest(
                data=str(self.data / "eval" / "flores200-devtest"),
                languages=key,
                limit=self.preset.eval_documents,
            )
            self._flores[key] = build_evaluator("perplexity", request)
        metrics = self._flores[key].evaluate(model)
        mean = metrics["overall"]["mean_over_languages"]  # the evaluator's, each language once
        scopes = {**metrics["languages"], "overall": metrics["overall"], "mean": mean}
        return {
            scope: {"perplexity": m["perplexity"], "bits_per_byte": m["bits_per_byte"]}
            | ({"languages": m["languages"]} if scope == "mean" else {})
            for scope, m in scopes.items()
        }

    def _model(
        self, paths: Sequence[Path], router: str, name: str, **options: Any
    ) -> EnsembleModel:
        members = [Bundle.read(path) for path in paths]
        return EnsembleModel(
            members, build_router(router, options), name=name, device=self.device, cache=self.cache
        )

    def _single(self, path: Path, name: str) -> EnsembleModel:
        return single_model(Bundle.read(path), name, device=self.device, cache=self.cache)

    def evaluate(
        self,
        seed: Path,
        dense: Path,
        experts: dict[str, list[Path]],
        main: str,
        tfidf: dict[str, Any],
    ) -> dict[str, Any]:
        systems: dict[str, EnsembleModel] = {
            "seed": self._single(seed, "seed"),
            "dense": self._single(dense, "dense"),
        }
        for name, paths in experts.items():
            if name.startswith("typology"):
                systems[f"{name} language"] = self._model(paths, "language", name)
        systems[f"{main} posterior"] = self._model(experts[main], "posterior", main)
        tfidf_name = next(name for name in experts if name.startswith("tfidf"))
        systems[f"{tfidf_name} tfidf"] = self._model(
            experts[tfidf_name],
            "tfidf",
            tfidf_name,
            allocation=tfidf["allocation"],
            stride=self.preset.tfidf_stride,
        )
        for index, path in enumerate(experts[main]):
            systems[f"{main} expert-{index}"] = self._single(path, f"expert-{index}")
        return {name: self._perplexity(model, TRAIN_LANGUAGES) for name, model in systems.items()}

    # ------------------------------------------------------------------ one model from the experts

    def merging(self, main: str, experts: list[Path], shards: Path) -> None:
        """The main X-ELM's experts as one model: their parameter average, and the
        Mixture-of-Experts model built from them before and after a short fine-tune of all its
        weights with the load-balancing loss; each a step, evaluated on the same FLORES
        documents as every other system (rows ``{main} average``, ``{main} moe``,
        ``{main} moe+ft`` of the perplexity table)."""
        root = self.out / main
        average, moe, tuned = root / "average", root / "moe", root / "moe-ft"
        done = {
            "average": self.step("average", lambda: self.average(experts, average)),
            "moe": self.step("moe", lambda: self.moe(experts, moe)),
            "moe+ft": self.step("moe-finetune", lambda: self.moe_finetune(moe, shards, tuned)),
        }
        merged = self.results.setdefault("merging", {})
        for name, result in done.items():
            self.results["perplexity"][f"{main} {name}"] = result.pop("perplexity")
            merged[name] = result

    def average(self, experts: list[Path], out: Path) -> dict[str, Any]:
        """The experts' uniform parameter average (xelm bundle merge --method average)."""
        from xelm_cli.bundle.merging import merge_average

        if not is_bundle(out):
            merge_average(experts, out, overwrite=True)
        bundle = Bundle.read(out)
        return {
            "bundle": str(out),
            "digest": bundle.digest,
            "weights": [1 / len(experts)] * len(experts),
            "tokens": 0,
            "perplexity": self._perplexity(self._single(out, "average"), TRAIN_LANGUAGES),
        }

    def gate_text(self) -> tuple[Path, str]:
        """Held-out text for the MoE's language gate: NTREX-128 when ``--data`` has it for
        every training language (news, not the FLORES sentences evaluated on), else the
        demo's training sample (then not held out: the report says which)."""
        ntrex = self.data / "eval" / "ntrex128"
        if all((ntrex / f"{lang}.txt").is_file() for lang in TRAIN_LANGUAGES):
            return ntrex, "ntrex128"
        return self.out / "corpus", "training sample"

    def moe(self, experts: list[Path], out: Path) -> dict[str, Any]:
        """Branch-Train-MiX: each expert's MLP becomes one expert of every MoE layer, the
        other weights averaged; top-2 routing, routers from each expert's mean hidden state
        on held-out text in its languages (xelm bundle moe --gate language)."""
        from xelm_cli.bundle.moe import build_moe

        text, source = self.gate_text()
        if not is_bundle(out):
            build_moe(
                experts, out, top_k=MOE_TOP_K, gate="language", calibration=text,
                calibration_limit=self.preset.eval_documents, device=self.device, overwrite=True,
            )  # fmt: skip
        return {
            "bundle": str(out),
            "digest": Bundle.read(out).digest,
            "top_k": MOE_TOP_K,
            "gate": "language",
            "gate_text": source,
            "tokens": 0,
            "perplexity": self._perplexity(self._single(out, "moe"), TRAIN_LANGUAGES),
        }

    def moe_finetune(self, moe: Path, shards: Path, out: Path) -> dict[str, Any]:
        """The MoE model trained (all weights) for the preset's ``moe_tokens`` on every
        training language, with the load-balancing loss at ``moe_aux_loss``; the balance
        loss of the first and last logged steps is recorded (transformers' load-balancing loss:
        the top-k when perfectly balanced, more when the routers favour some experts)."""
        p = self.preset
        # the balance loss logged four times, first and last kept
        digest = self.train(moe, shards, out, p.moe_tokens, TRAIN_LANGUAGES, **self.moe_training)
        metrics = checkpoint_dir(out) / "metrics.jsonl"
        logged = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        aux = [m["aux_loss"] for m in logged if "aux_loss" in m]
        return {
            "bundle": str(out),
            "digest": digest,
            "tokens": self._trained[-1][0],  # as trained: whole steps of moe_tokens
            "aux_loss_coefficient": p.moe_aux_loss,
            "aux_loss": [aux[0], aux[-1]] if aux else [],
            "perplexity": self._perplexity(self._single(out, "moe+ft"), TRAIN_LANGUAGES),
        }

    def adapt(self, dense: Path, experts: list[Path], shards: Path) -> dict[str, Any]:
        """HMR (branch the donor's expert, train on the new language) against LAPT (continue
        the dense model) at equal tokens; perplexity on the new language and on the old ones."""
        result: dict[str, Any] = {"new": {}, "old": {}}
        old_before = self._perplexity(self._model(experts, "language", "xelm"), TRAIN_LANGUAGES)
        result["old"]["xelm before"] = old_before
        result["old"]["dense"] = self._perplexity(self._single(dense, "dense"), TRAIN_LANGUAGES)
        hmr_experts = []
        for language, donor in NEW_LANGUAGES.items():
            start = self.out / "adapt" / f"hmr-{language}-branch"
            if not is_bundle(start):
                hmr_branch(experts, donor, language, start, overwrite=True)
            hmr = self.out / "adapt" / f"hmr-{language}"
            self.train(start, shards, hmr, self.preset.adapt_tokens, [language])
            lapt = self.out / "adapt" / f"lapt-{language}"
            self.train(dense, shards, lapt, self.preset.adapt_tokens, [language])
            hmr_experts.append(hmr)
            result["new"][language] = {
                "donor": donor,
                "donor expert": Bundle.read(start).manifest.parents[0]["id"],
                **{
                    name: self._perplexity(self._single(path, name), [language])[language]
                    for name, path in (("hmr", hmr), ("lapt", lapt), ("dense", dense))
                },
            }
            result["old"][f"lapt-{language}"] = self._perplexity(
                self._single(lapt, f"lapt-{language}"), TRAIN_LANGUAGES
            )
        after = self._model([*experts, *hmr_experts], "language", "xelm+hmr")
        result["old"]["xelm after"] = self._perplexity(after, TRAIN_LANGUAGES)
        result["old_experts"] = hash_again(experts)
        return result

    def icl(self, dense: Path, experts: list[Path]) -> dict[str, Any]:
        from xelm_cli.ensemble.results import build_evaluator

        request = EvalRequest(
            data=str(self.data / "tasks" / "sib200"),
            languages=TRAIN_LANGUAGES,
            limit=self.preset.icl_examples,
            task="sib200",
            shots=self.preset.icl_shots,
            runs=self.preset.icl_runs,
        )
        evaluator = build_evaluator("icl", request)
        return {
            "task": "sib200",
            "shots": self.preset.icl_shots,
            "runs": self.preset.icl_runs,
            "examples": self.preset.icl_examples,
            "dense": evaluator.evaluate(self._single(dense, "dense")),
            "xelm": evaluator.evaluate(self._model(experts, "language", "xelm")),
        }
