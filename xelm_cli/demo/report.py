"""The demo's report: report.md, results.json and figures, drawn from results alone (so
``xelm report`` can redraw them from results files of separate runs)."""

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xelm_cli.common.atomic import write_bytes_atomic
from xelm_cli.common.errors import FormatError, UsageError
from xelm_cli.common.jsonio import pretty_json, read_json_object, short_repr

RESULTS_FORMAT = "xelm-demo-results"  # spec/demo-results.md
RESULTS_FORMAT_VERSION = 1
# The paper's five largest gains of typology X-ELM over dense (../docs/xelm-method.md, 9)
PAPER_LARGEST_GAINS = ("hi", "zh", "tr", "vi", "ja")
PURITY_HEADERS = ("language", "documents", "shares over experts", "purity", "entropy (bits)",
                  "routed")  # fmt: skip
# A system's perplexity scopes that are not languages: every token pooled, each language once
AGGREGATES = ("overall", "mean")
AGGREGATE_LABELS = {"overall": "overall (pooled)", "mean": "mean over languages"}


def merge(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Results of several runs (or machines) as one: later files add and override keys."""
    merged: dict[str, Any] = {}

    def into(target: dict[str, Any], source: dict[str, Any]) -> None:
        for key, value in source.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                into(target[key], value)
            else:
                target[key] = value

    for result in results:
        into(merged, result)
    return merged


def read_results(paths: Sequence[Path]) -> dict[str, Any]:
    """The demo results files ``paths`` (spec/demo-results.md) merged in order; files without
    ``format`` (written before it) are recognised by their ``perplexity`` and ``languages``."""
    loaded = []
    for path in paths:
        if not path.is_file():  # a path the user typed: usage (exit 2), not a broken format
            raise UsageError(f"results file not found: {path}")
        data = read_json_object(path, "results file")
        ours = data.get("format", RESULTS_FORMAT) == RESULTS_FORMAT
        if not ours or "perplexity" not in data or "languages" not in data:
            raise UsageError(f"{path} is not a results file of xelm demo")
        version = data.get("format_version", 1)  # results of xelm before the field are 1
        if version != RESULTS_FORMAT_VERSION:
            raise FormatError(
                f"{path}: demo results format version {short_repr(version)} is not supported "
                f"by this xelm (reads {RESULTS_FORMAT_VERSION}); upgrade xelm to read it"
            )
        loaded.append(data)
    merged = merge(loaded)
    if "main_xelm" not in merged:
        raise UsageError(
            "the results files name no main X-ELM (main_xelm: the demo writes it when it "
            "evaluates the typology k = 4 ensemble); add the results file of that run"
        )
    return merged


def mean_over_languages(scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The languages' perplexities and bits per byte averaged, each language counting once
    whatever its tokens, as the perplexity evaluator's ``overall.mean_over_languages``: the
    paper's headline aggregate (method section 9), where ``overall`` pools every token."""
    languages = [scope for scope in scores if scope not in AGGREGATES]
    means = {
        metric: statistics.fmean(scores[language][metric] for language in languages)
        for metric in ("perplexity", "bits_per_byte")
    }
    return {**means, "languages": len(languages)}


def with_means(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with the ``mean`` scope (``mean_over_languages``) of every system's
    perplexities and of the adaptation's old-language ones computed from their languages:
    added where results of an older demo lack it, and made again where results merged from
    several files may have replaced some languages; ``results`` itself is left as it is."""

    def filled(tables: dict[str, Any]) -> dict[str, Any]:
        return {
            name: {**table, "mean": mean_over_languages(table)}
            if isinstance(table, dict) and set(table) - set(AGGREGATES)
            else table
            for name, table in tables.items()
        }

    out = {**results, "perplexity": filled(results["perplexity"])}
    adaptation = results.get("adaptation")
    if isinstance(adaptation, dict) and isinstance(adaptation.get("old"), dict):
        out["adaptation"] = {**adaptation, "old": filled(adaptation["old"])}
    return out


def _ppl(results: dict[str, Any], system: str, language: str) -> float:
    value = results["perplexity"].get(system, {}).get(language, {}).get("perplexity")
    return float(value) if value is not None else math.nan


def _count(value: Any) -> str:
    """A number of tokens with thousands separators; ``?`` where the results lack it."""
    return f"{value:,}" if isinstance(value, int) else "?"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


VERDICTS = {True: "supported", False: "NOT supported", None: "inconclusive"}


def claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each claim of the paper this run can test, whether the run supports it, and why. Claims
    on overall perplexity are judged on the paper's aggregate, the mean over languages."""
    results = with_means(results)
    languages = results["languages"]
    main = results["main_xelm"]
    out = []
    dense = {lang: _ppl(results, "dense", lang) for lang in languages}
    xelm = {lang: _ppl(results, f"{main} language", lang) for lang in languages}
    won = [lang for lang in languages if xelm[lang] < dense[lang]]
    lost = [lang for lang in languages if lang not in won]
    evidence = f"lower in {len(won)} of {len(languages)} languages"
    if lost:
        among = [lang for lang in lost if lang in PAPER_LARGEST_GAINS]
        evidence += f" (not in {', '.join(lost)})"
        if among:
            evidence += (
                f"; {', '.join(among)} {'is' if len(among) == 1 else 'are'} among the paper's "
                f"five largest gains ({', '.join(PAPER_LARGEST_GAINS)})"
            )
    out.append(
        {
            "claim": f"X-ELM ({main}, language router) has lower perplexity than the "
            "equal-compute dense model in every language (the paper: every language at k = 4 "
            "and k = 8)",
            "supported": not lost,
            "evidence": evidence,
        }
    )
    tfidf = next((s for s in results["perplexity"] if s.endswith(" tfidf")), None)
    if tfidf:
        typology = f"{main} language"
        typology_mean, tfidf_mean = _ppl(results, typology, "mean"), _ppl(results, tfidf, "mean")
        typology_pooled = _ppl(results, typology, "overall")
        tfidf_pooled = _ppl(results, tfidf, "overall")
        out.append(
            {
                "claim": "typological clustering beats TF-IDF clustering at the same k",
                "supported": typology_mean < tfidf_mean,
                "evidence": f"mean perplexity over languages {typology_mean:.2f} ({main}) vs "
                f"{tfidf_mean:.2f} ({tfidf.removesuffix(' tfidf')}, "
                f"{_tfidf_routing(results)}); pooled over every token {typology_pooled:.2f} vs "
                f"{tfidf_pooled:.2f}",
            }
        )
    adaptation = results.get("adaptation")
    if adaptation:
        new = adaptation["new"]
        better = [
            lang for lang, r in new.items() if r["hmr"]["perplexity"] < r["lapt"]["perplexity"]
        ]
        detail = "; ".join(
            f"{lang}: HMR {r['hmr']['perplexity']:.2f} vs LAPT {r['lapt']['perplexity']:.2f}"
            for lang, r in new.items()
        )
        out.append(
            {
                "claim": "adding a language by HMR (branch the related expert) beats LAPT "
                "(continue the dense model) at equal tokens",
                "supported": len(better) == len(new),
                "evidence": detail,
            }
        )
        old = adaptation["old"]
        same_scores = all(
            old["xelm after"][lang]["perplexity"] == old["xelm before"][lang]["perplexity"]
            for lang in languages
        )
        untouched, intact = _old_experts_intact(adaptation.get("old_experts"))
        dense_old = old["dense"]["mean"]["perplexity"]
        rises = {
            name.removeprefix("lapt-"): old[name]["mean"]["perplexity"]
            for name in old
            if name.startswith("lapt-")
        }
        out.append(
            {
                "claim": "HMR leaves the old languages untouched, while LAPT forgets them",
                "supported": same_scores and untouched
                and all(v > dense_old for v in rises.values()),
                "evidence": ("X-ELM old-language perplexities identical after adding the new "
                             "experts" if same_scores
                             else "X-ELM old-language perplexities changed")
                + f"; {intact}; mean perplexity over the old languages: dense "
                + f"{dense_old:.2f} -> "
                + ", ".join(f"{v:.2f} after LAPT on {lang}" for lang, v in rises.items()),
            }
        )  # fmt: skip
    icl = results.get("icl")
    if icl:
        out.append(_in_context_claim(icl))
    return out


def _tfidf_routing(results: dict[str, Any]) -> str:
    """How the demo's TF-IDF X-ELM was routed (results before ``tfidf_stride``: whole text)."""
    stride = results.get("preset", {}).get("tfidf_stride")
    if stride is None:
        return "TF-IDF router on each sentence's whole text, not c-BTM's prefix routing"
    if stride == 1:
        return "TF-IDF router on the text before every token, as c-BTM"
    return f"TF-IDF router on the text before every {stride}th token"


def _old_experts_intact(record: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether every old expert's files hashed to its manifest after HMR, and the words."""
    if record is None:
        return True, "the old experts' files were not hashed again (results from an older xelm)"
    problems = record.get("problems", [])
    if problems:
        return False, f"an old expert changed on disk: {problems[0]}"
    return True, f"all {record.get('bundles', '?')} old experts' files hash as their manifests say"


def _in_context_claim(icl: dict[str, Any]) -> dict[str, Any]:
    """X-ELM against dense in context. Each accuracy's standard error counts the examples drawn
    (binomial, over every language's examples) and the demonstrations drawn (over runs); the
    run decides only where a model is two standard errors above chance and the two differ by
    more than two standard errors of their difference."""
    dense, xelm = icl["dense"]["overall"], icl["xelm"]["overall"]
    d, x, chance = dense["accuracy"], xelm["accuracy"], dense.get("chance")
    examples = icl["examples"] * max(1, len(icl["dense"].get("languages", {})))

    def stderr(overall: dict[str, Any]) -> float:
        p = overall["accuracy"]
        # the evaluator's (each language's examples apart); results of older runs lack it
        drawn = overall.get("stderr_examples", math.sqrt(p * (1 - p) / examples))
        return math.hypot(drawn, overall["stderr"])

    se_x, se_d = stderr(xelm), stderr(dense)
    se_diff = math.hypot(se_x, se_d)
    evidence = (
        f"accuracy {x:.3f} ± {se_x:.3f} (X-ELM) vs {d:.3f} ± {se_d:.3f} (dense), "
        f"{icl['examples']} examples per language, {_runs(icl['runs'])}"
    )
    supported: bool | None = x > d
    if chance is not None:
        evidence += f"; chance is {chance:.3f}"
        if max(x - 2 * se_x, d - 2 * se_d) <= chance:
            supported = None
            evidence += (
                ": both models are within two standard errors of chance, so this run cannot "
                "tell them apart (the models are too small to learn the task in context)"
            )
    if supported is not None and abs(x - d) <= 2 * se_diff:
        supported = None
        evidence += (
            f"; the difference {x - d:+.3f} is within two standard errors ({2 * se_diff:.3f}), "
            "so this run cannot tell them apart"
        )
    return {
        "claim": f"X-ELM is at least as good as dense in-context ({icl['task']}, "
        f"{icl['shots']}-shot)",
        "supported": supported,  # None: this run cannot tell
        "evidence": evidence,
    }


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _steps_section(results: dict[str, Any]) -> list[str]:
    """Each step's seconds and, for steps that train, the tokens their runs trained and the
    training speed (tokens over the runs' own training seconds; results from before these were
    recorded show the seconds alone)."""
    steps, training = results["steps"], results.get("training", {})
    if not training:
        table = _table(["step", "seconds"], list(steps.items()))
        return [table, "", f"Total: {sum(steps.values()):.0f} s."]
    rows = []
    for name, seconds in steps.items():
        run = training.get(name)
        speed = run["tokens"] / run["seconds"] if run and run["seconds"] > 0 else None
        rows.append([name, seconds, f"{run['tokens']:,}" if run else "",
                     f"{speed:,.0f}" if speed else ""])  # fmt: skip
    tokens = sum(run["tokens"] for run in training.values())
    train_seconds = sum(run["seconds"] for run in training.values())
    return [
        _table(["step", "seconds", "training tokens", "training tokens/s"], rows), "",
        f"Total: {sum(steps.values()):.0f} s, of which {train_seconds:.0f} s training "
        f"{tokens:,} tokens ({tokens / max(train_seconds, 1e-9):,.0f} tokens/s).",
    ]  # fmt: skip


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def perplexity_table(results: dict[str, Any]) -> str:
    systems = [s for s in results["perplexity"] if " expert-" not in s]
    rows = [
        [AGGREGATE_LABELS.get(scope, scope), *(_ppl(results, s, scope) for s in systems)]
        for scope in [*results["languages"], *AGGREGATES]
    ]
    return _table(["language", *systems], rows)


MERGED = (
    ("average", "Averaged model"),
    ("moe", "MoE before fine-tune"),
    ("moe+ft", "MoE after fine-tune"),
)


def _describe(name: str, entry: dict[str, Any], k: Any, top_k: Any) -> str:
    """What one merged system is, from its entry in ``results["merging"]``."""
    if name == "average":
        return f"the uniform parameter average of the {k} experts, no further training"
    if name == "moe":
        return (
            f"each expert's MLP one expert of every MoE layer, other weights averaged, top-"
            f"{entry.get('top_k', '?')} routing, routers from the experts' hidden states on "
            f"{entry.get('gate_text', 'held-out text')} ({entry.get('gate', '?')} gate)"
        )
    aux = entry.get("aux_loss") or []
    balance = (
        f"; load-balancing loss {aux[0]:.2f} at the first logged step, {aux[-1]:.2f} at the last "
        f"({top_k} when perfectly balanced)"
        if aux
        else ""
    )
    return (
        f"that MoE model trained, all weights, for {entry.get('tokens', 0):,} more tokens with "
        f"the load-balancing loss at {entry.get('aux_loss_coefficient', '?')}{balance}"
    )


def merging_section(results: dict[str, Any]) -> list[str]:
    """The main X-ELM's experts as one model (averaged, MoE before and after its fine-tune),
    one sentence each against the ensemble; nothing for results without them."""
    main = results.get("main_xelm")
    merging = results.get("merging")
    ensemble = f"{main} language"
    if not isinstance(merging, dict) or ensemble not in results["perplexity"]:
        return []
    languages = results["languages"]
    k = len(results.get("experts", {}).get(main, [])) or "the"
    reference = _ppl(results, ensemble, "overall")
    top_k = (merging.get("moe") or {}).get("top_k", "the top-k")
    lines = [
        f"## One model from the experts ({main})",
        "",
        f"The X-ELM ensemble ({main}, language router) keeps {k} models and runs the one of "
        "each sentence's language; these rows of the perplexity table are one model each, "
        "built from the same experts and evaluated on the same FLORES sentences "
        "(Branch-Train-Merge's average, Branch-Train-MiX's MoE).",
        "",
    ]
    for name, label in MERGED:
        entry = merging.get(name)
        system = f"{main} {name}"
        if not isinstance(entry, dict) or system not in results["perplexity"]:
            continue
        overall = _ppl(results, system, "overall")
        better = [g for g in languages if _ppl(results, system, g) < _ppl(results, ensemble, g)]
        direction = "lower" if overall < reference else "higher"
        lines.append(
            f"- _{label}_ ({_describe(name, entry, k, top_k)}): overall perplexity {overall:.2f} "
            f"against the ensemble's {reference:.2f}, {direction} by a factor of "
            f"{max(overall, reference) / min(overall, reference):.2f}; lower than the ensemble "
            f"in {len(better)} of {len(languages)} languages."
        )
    tuned = merging.get("moe+ft")
    if isinstance(tuned, dict) and tuned.get("tokens"):
        lines += [
            "",
            f"The fine-tuned MoE has trained on {tuned['tokens']:,} tokens more than the "
            "ensemble and the dense model; `xelm plan --moe-tokens N` splits one budget so that "
            "dense, experts and MoE fine-tune add up to the same total.",
        ]
    return [*lines, ""]


def text_sentence(results: dict[str, Any]) -> str:
    """What was done to the sample text before training and clustering."""
    corpus = results.get("corpus", {})
    target = corpus.get("document_bytes") if isinstance(corpus, dict) else None
    if not target:
        return "Training text: the corpus records as they are (mostly single sentences)."
    sizes, counts = corpus.get("bytes", {}), corpus.get("documents", {})
    clusters = results.get("tfidf_clusters")
    purity = clusters.get("purity") if isinstance(clusters, dict) else None
    clustered = purity or counts  # the clustered languages, not the ones added later
    documents = sum(counts.get(lang, 0) for lang in clustered)
    size = sum(sizes.get(lang, 0) for lang in clustered)
    mean = f", {size / documents:,.0f} bytes on average" if documents else ""
    return (
        "Training text: consecutive records of one language and one source joined into "
        f"documents of about {target:,} bytes{mean} (the sample corpus's records are mostly "
        "single sentences, too short for TF-IDF clustering; longer records stay whole); every "
        "system trains on the same documents."
    )


def purity_section(results: dict[str, Any]) -> list[str]:
    """The TF-IDF clusters' language purity, or nothing for results without it."""
    clusters = results.get("tfidf_clusters", {})
    purity = clusters.get("purity") if isinstance(clusters, dict) else None
    if not purity:
        return []
    k = len(next(iter(purity.values()))["shares"])
    routed = [p.get("eval_routed", "-") for p in purity.values()]
    measured = [r for r in routed if isinstance(r, float | int)]
    rows: list[list[Any]] = [
        [lang, p["documents"], " / ".join(f"{s:.2f}" for s in p["shares"]), p["purity"],
         p["entropy_bits"], share]
        for (lang, p), share in zip(purity.items(), routed, strict=True)
    ]  # fmt: skip
    rows.append(["mean (documents: all)", sum(p["documents"] for p in purity.values()), "",
                 _mean([p["purity"] for p in purity.values()]),
                 _mean([p["entropy_bits"] for p in purity.values()]),
                 _mean(measured) if measured else "-"])  # fmt: skip
    return [
        f"## TF-IDF clusters ({clusters.get('name', 'tfidf')}): language purity",
        "",
        text_sentence(results),
        f"Purity of a language is the share of its training documents in its most common "
        f"cluster (1: all with one expert; {1 / k:.2f}: spread evenly over the {k}); entropy is "
        f"that of its shares in bits (0 to {math.log2(k):.0f}); routed is the share of its "
        "evaluation sentences whose highest-weight expert under the TF-IDF router is that "
        "most common cluster.",
        "",
        _table(PURITY_HEADERS, rows),
        "",
    ]


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    """report.md, results.json and the figures in ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    results = with_means(results)
    results = {"format": RESULTS_FORMAT, "format_version": RESULTS_FORMAT_VERSION, **results,
               "claims": claims(results)}  # fmt: skip
    written = [out / "results.json"]
    write_bytes_atomic(written[0], pretty_json(results))
    from xelm_cli.demo.figures import draw_all

    figures = draw_all(results, out)
    written += figures
    preset = results.get("preset", {})
    lines = [
        f"# xelm demo report (preset {preset.get('name', '?')})",
        "",
        "X-ELM's experiment at small scale on the sample data: a seed LM pre-trained on "
        f"{len(results['languages'])} languages, a dense model continued for B = "
        f"{_count(preset.get('budget'))} tokens, typology X-ELMs with k = "
        f"{', '.join(str(k) for k in preset.get('typology_ks', []))} and a TF-IDF X-ELM with "
        f"k = {preset.get('tfidf_k', '?')} (each expert B/k tokens from the seed), evaluated on "
        f"FLORES-200 devtest ({preset.get('eval_documents', '?')} sentences per language); then "
        "two new languages added by HMR and by LAPT."
        + (
            f" The main X-ELM's experts are also made one model: their parameter average and a "
            f"Mixture-of-Experts model, before and after a {preset.get('moe_tokens', 0):,}-token "
            "fine-tune."
            if results.get("merging")
            else ""
        ),
        "",
        "## The paper's claims",
        "",
        "Claims on overall perplexity are judged on the paper's aggregate, the mean of the "
        "languages' perplexities (each language counts once); the perplexity table also gives "
        "the perplexity pooled over every token (overall), which weighs the languages by their "
        "tokens.",
        "",
    ]
    for claim in results["claims"]:
        verdict = VERDICTS[claim["supported"]]
        lines.append(f"- **{verdict}**: {claim['claim']}. This run: {claim['evidence']}.")
    lines += ["", "## Perplexity (FLORES-200 devtest, lower is better)", "",
              perplexity_table(results), ""]  # fmt: skip
    lines += merging_section(results)
    lines += purity_section(results)
    adaptation = results.get("adaptation")
    if adaptation:
        rows = [
            [lang, r["donor"], r["hmr"]["perplexity"], r["lapt"]["perplexity"],
             r["dense"]["perplexity"]]
            for lang, r in adaptation["new"].items()
        ]  # fmt: skip
        lines += ["## Adding languages: HMR vs LAPT", "",
                  _table(["new language", "donor", "HMR", "LAPT", "dense (before)"], rows), "",
                  "Old languages (overall perplexity, pooled over every token, and the mean "
                  "over languages): "
                  + ", ".join(f"{name} {v['overall']['perplexity']:.2f} "
                              f"(mean {v['mean']['perplexity']:.2f})"
                              for name, v in adaptation["old"].items()) + ".", ""]  # fmt: skip
    icl = results.get("icl")
    if icl:
        rows = [
            [lang, icl["dense"]["languages"][lang]["accuracy"],
             icl["xelm"]["languages"][lang]["accuracy"]]
            for lang in icl["dense"]["languages"]
        ]  # fmt: skip
        rows.append(["overall", icl["dense"]["overall"]["accuracy"],
                     icl["xelm"]["overall"]["accuracy"]])  # fmt: skip
        lines += [f"## In-context: {icl['task']}, {icl['shots']}-shot, {_runs(icl['runs'])} "
                  "(accuracy)", "", _table(["language", "dense", "X-ELM"], rows), ""]  # fmt: skip
    lines += ["## Figures", ""]
    lines += [f"![{f.stem}]({f.name})" for f in figures]
    if results.get("steps"):
        lines += ["", "## Steps", "", *_steps_section(results)]
    lines += ["", "All numbers come from this run (results.json); nothing is tuned per language."]
    report = out / "report.md"
    write_bytes_atomic(report, ("\n".join(lines) + "\n").encode())
    written.insert(0, report)
    return written


def dump(results: dict[str, Any]) -> str:
    return json.dumps(results, indent=2)
