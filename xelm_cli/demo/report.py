"""The demo's report: report.md, results.json and figures, drawn from results alone (so
``xelm report`` can redraw them from results files of separate runs)."""

import functools
import json
import math
import os
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xelm_cli.common.atomic import PARTIAL_SUFFIX, fsync_dir, output_lock, write_bytes_atomic
from xelm_cli.common.errors import FormatError, UsageError
from xelm_cli.common.jsonio import pretty_json, read_json_object, short_repr
from xelm_cli.common.outputs import check_replaceable, json_format
from xelm_cli.demo.figures import (
    ADAPTATION_SYSTEMS,
    FIGURES,
    draw_all,
    perplexity_of,
    score_of,
)

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


def is_demo_results(data: object) -> bool:
    """Whether ``data`` is what a demo's results.json holds (those written before ``format``
    are recognised by their ``perplexity`` and ``languages``)."""
    return (
        isinstance(data, dict)
        and data.get("format", RESULTS_FORMAT) == RESULTS_FORMAT
        and "perplexity" in data
        and "languages" in data
    )


def read_results(paths: str | Path | Sequence[str | Path]) -> dict[str, Any]:
    """The demo results files ``paths`` (one, or a list; spec/demo-results.md) merged in order;
    files without ``format`` (written before it) are recognised by their ``perplexity`` and
    ``languages``."""
    loaded = []
    for path in map(Path, [paths] if isinstance(paths, str | Path) else paths):
        if not path.is_file():  # a path the user typed: usage (exit 2), not a broken format
            raise UsageError(f"results file not found: {path}")
        data = read_json_object(path, "results file")
        if not is_demo_results(data):
            raise UsageError(
                f"{path} is not a results file of xelm demo: pass a demo run's "
                "report/results.json (spec/demo-results.md); `xelm ensemble eval` results are "
                "its own tables"
            )
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
    paper's headline aggregate (method section 9), where ``overall`` pools every token. Each
    metric is averaged over the languages that have it; ``languages`` counts those with a
    perplexity."""
    languages = [scope for scope in scores if scope not in AGGREGATES]
    values = {
        metric: [v for lang in languages if (v := score_of(scores, lang, metric=metric))]
        for metric in ("perplexity", "bits_per_byte")
    }
    means = {metric: statistics.fmean(known) for metric, known in values.items() if known}
    return {**means, "languages": len(values["perplexity"])}


def with_means(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with the ``mean`` scope (``mean_over_languages``) of every system's
    perplexities and of the adaptation's old-language ones computed from their languages:
    added where results of an older demo lack it, and made again where results merged from
    several files may have replaced some languages; ``results`` itself is left as it is."""

    def filled(tables: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for name, table in tables.items():
            mean = mean_over_languages(table) if isinstance(table, dict) else {}
            out[name] = {**table, "mean": mean} if mean.get("languages") else table
        return out

    out = {**results, "perplexity": filled(results["perplexity"])}
    adaptation = results.get("adaptation")
    if isinstance(adaptation, dict) and isinstance(adaptation.get("old"), dict):
        out["adaptation"] = {**adaptation, "old": filled(adaptation["old"])}
    return out


def _common(tables: Sequence[Any], languages: Sequence[str]) -> dict[str, list[float]]:
    """Each of ``languages`` that every one of ``tables`` scores -> their perplexities on it,
    in order: a claim compares systems on these alone (results may cover part of a run)."""
    common = {}
    for lang in languages:
        row = [value for table in tables if (value := score_of(table, lang)) is not None]
        if len(row) == len(tables):
            common[lang] = row
    return common


def _column_means(rows: dict[str, list[float]]) -> list[float]:
    """Each system's mean over the languages of ``_common``'s rows."""
    return [statistics.fmean(column) for column in zip(*rows.values(), strict=True)]


def _left_out(languages: Sequence[str], compared: dict[str, Any]) -> str:
    """``; LANGS left out (not scored for both)`` for the languages a claim could not compare."""
    missing = [lang for lang in languages if lang not in compared]
    return f"; {', '.join(missing)} left out (not scored for both)" if missing else ""


def _part(results: dict[str, Any], key: str) -> dict[str, Any]:
    """``results[key]``, or nothing where the results lack it (or hold something else)."""
    part = results.get(key)
    return part if isinstance(part, dict) else {}


def _trained(results: dict[str, Any], step: str, asked: Any) -> Any:
    """The tokens the runs of ``step`` trained (``xelm train`` rounds to whole steps), else
    ``asked`` (results from before the demo recorded them)."""
    return _part(_part(results, "training"), step).get("tokens", asked)


def finetune_tokens(results: dict[str, Any]) -> Any:
    """The tokens the MoE's fine-tune trained, else what it asked (older results)."""
    asked = _part(_part(results, "merging"), "moe+ft").get("tokens")
    return _trained(results, "moe-finetune", asked or _part(results, "preset").get("moe_tokens"))


def _count(value: Any) -> str:
    """A number of tokens with thousands separators; ``?`` where the results lack it."""
    return f"{value:,}" if isinstance(value, int) else "?"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


VERDICTS = {True: "supported", False: "NOT supported", None: "inconclusive"}
ICL_SYSTEMS = (("dense", "dense"), ("xelm", "X-ELM"))  # results["icl"] keys, report columns


def claim_line(claim: dict[str, Any]) -> str:
    """A claim as report.md and ``xelm demo`` give it: its verdict, what it says, the evidence."""
    verdict = VERDICTS[claim["supported"]]
    return f"- **{verdict}**: {claim['claim']}. This run: {claim['evidence']}."


def claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each claim of the paper this run can test, whether the run supports it, and why. Claims
    on overall perplexity are judged on the paper's aggregate, the mean over languages. A
    claim is judged on the languages both its sides score, and left out where there are none
    (results of part of a run)."""
    results = with_means(results)
    found = [_every_language(results), _typology_against_tfidf(results),
             *_adaptation_claims(results.get("adaptation"), results["languages"])]  # fmt: skip
    icl = results.get("icl")
    if isinstance(icl, dict) and None not in [_accuracy(icl, s, "overall") for s, _ in ICL_SYSTEMS]:
        found.append(_in_context_claim(icl))
    return [claim for claim in found if claim is not None]


def _every_language(results: dict[str, Any]) -> dict[str, Any] | None:
    """The main X-ELM against dense, language by language."""
    languages, main, table = results["languages"], results["main_xelm"], results["perplexity"]
    pairs = _common([table.get(f"{main} language"), table.get("dense")], languages)
    if not pairs:
        return None
    lost = [lang for lang, (xelm, dense) in pairs.items() if not xelm < dense]
    evidence = f"lower in {len(pairs) - len(lost)} of {len(pairs)} languages"
    if lost:
        among = [lang for lang in lost if lang in PAPER_LARGEST_GAINS]
        evidence += f" (not in {', '.join(lost)})"
        if among:
            evidence += (
                f"; {', '.join(among)} {'is' if len(among) == 1 else 'are'} among the paper's "
                f"five largest gains ({', '.join(PAPER_LARGEST_GAINS)})"
            )
    return {
        "claim": f"X-ELM ({main}, language router) has lower perplexity than the "
        "equal-compute dense model in every language (the paper: every language at k = 4 "
        "and k = 8)",
        "supported": not lost,
        "evidence": evidence + _left_out(languages, pairs),
    }


def _typology_against_tfidf(results: dict[str, Any]) -> dict[str, Any] | None:
    """The main X-ELM against the TF-IDF X-ELM on the mean over the languages both score."""
    languages, main, table = results["languages"], results["main_xelm"], results["perplexity"]
    tfidf = next((s for s in table if s.endswith(" tfidf")), None)
    if tfidf is None:
        return None
    systems = (f"{main} language", tfidf)
    pairs = _common([table.get(system) for system in systems], languages)
    if not pairs:
        return None
    typology_mean, tfidf_mean = _column_means(pairs)
    evidence = (
        f"mean perplexity over languages {typology_mean:.2f} ({main}) vs {tfidf_mean:.2f} "
        f"({tfidf.removesuffix(' tfidf')}, {_tfidf_routing(results)})"
    )
    typology_pooled, tfidf_pooled = (score_of(table, s, "overall") for s in systems)
    if typology_pooled and tfidf_pooled:
        evidence += f"; pooled over every token {typology_pooled:.2f} vs {tfidf_pooled:.2f}"
    return {
        "claim": "typological clustering beats TF-IDF clustering at the same k",
        "supported": typology_mean < tfidf_mean,
        "evidence": evidence + _left_out(languages, pairs),
    }


def _adaptation_claims(adaptation: Any, languages: Sequence[str]) -> list[dict[str, Any] | None]:
    """HMR against LAPT on the new languages, and what adding them did to the old ones."""
    if not isinstance(adaptation, dict):
        return []
    new = _part(adaptation, "new")
    tables = [{lang: r.get(name) for lang, r in new.items() if isinstance(r, dict)}
              for name in ("hmr", "lapt")]  # fmt: skip
    pairs = _common(tables, list(new))
    better = {
        "claim": "adding a language by HMR (branch the related expert) beats LAPT "
        "(continue the dense model) at equal tokens",
        "supported": all(hmr < lapt for hmr, lapt in pairs.values()),
        "evidence": "; ".join(f"{lang}: HMR {hmr:.2f} vs LAPT {lapt:.2f}"
                              for lang, (hmr, lapt) in pairs.items())
        + _left_out(list(new), pairs),
    }  # fmt: skip
    return [better if pairs else None, _forgetting_claim(adaptation, languages)]


def _forgetting_claim(
    adaptation: dict[str, Any], languages: Sequence[str]
) -> dict[str, Any] | None:
    """The X-ELM's old-language perplexities before and after adding the new experts, and the
    dense model's mean over the old languages against each LAPT model's."""
    old = _part(adaptation, "old")
    same = _common([old.get("xelm before"), old.get("xelm after")], languages)
    lapts = [name for name in old if name.startswith("lapt-")]
    compared = _common([old.get(name) for name in ("dense", *lapts)], languages)
    if not same or not lapts or not compared:
        return None
    same_scores = all(before == after for before, after in same.values())
    untouched, intact = _old_experts_intact(adaptation.get("old_experts"))
    dense_old, *rises = _column_means(compared)
    return {
        "claim": "HMR leaves the old languages untouched, while LAPT forgets them",
        "supported": same_scores and untouched and all(v > dense_old for v in rises),
        "evidence": ("X-ELM old-language perplexities identical after adding the new experts"
                     if same_scores else "X-ELM old-language perplexities changed")
        + _left_out(languages, same)
        + f"; {intact}; mean perplexity over the old languages: dense {dense_old:.2f} -> "
        + ", ".join(f"{v:.2f} after LAPT on {name.removeprefix('lapt-')}"
                    for name, v in zip(lapts, rises, strict=True))
        + _left_out(languages, compared),
    }  # fmt: skip


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


def _accuracy(icl: dict[str, Any], system: str, language: str) -> float | None:
    """``icl[system]["overall"]["accuracy"]``, or ``["languages"][language]["accuracy"]``;
    None where the results lack it."""
    entry = icl.get(system)
    for key in ("overall",) if language == "overall" else ("languages", language):
        entry = entry.get(key) if isinstance(entry, dict) else None
    value = entry.get("accuracy") if isinstance(entry, dict) else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


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


def _cell(value: Any) -> str:
    """A number as the report gives it; ``-`` for None (not in these results)."""
    return f"{value:.2f}" if isinstance(value, float) else "-" if value is None else str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
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


def _runs(count: Any) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def perplexity_table(results: dict[str, Any]) -> str:
    systems = [s for s in results["perplexity"] if " expert-" not in s]
    rows = [
        [AGGREGATE_LABELS.get(scope, scope), *(perplexity_of(results, s, scope) for s in systems)]
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
        f"that MoE model trained, all weights, for {_count(entry.get('tokens'))} more tokens with "
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
    languages, table = results["languages"], results["perplexity"]
    k = len(results.get("experts", {}).get(main, [])) or "the"
    reference = perplexity_of(results, ensemble, "overall")
    top_k = (merging.get("moe") or {}).get("top_k", "the top-k")
    tuned = merging.get("moe+ft")
    if isinstance(tuned, dict):
        merging = {**merging, "moe+ft": {**tuned, "tokens": finetune_tokens(results)}}
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
        overall = perplexity_of(results, system, "overall")
        pairs = _common([table[system], table[ensemble]], languages)
        against = []
        if overall and reference:
            direction = "lower" if overall < reference else "higher"
            factor = max(overall, reference) / min(overall, reference)
            against.append(
                f"overall perplexity {overall:.2f} against the ensemble's {reference:.2f}, "
                f"{direction} by a factor of {factor:.2f}"
            )
        if pairs:
            better = [lang for lang, (one, ensemble_ppl) in pairs.items() if one < ensemble_ppl]
            against.append(f"lower than the ensemble in {len(better)} of {len(pairs)} languages")
        said = f": {'; '.join(against)}" if against else ""
        lines.append(f"- _{label}_ ({_describe(name, entry, k, top_k)}){said}.")
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


REPORT, RESULTS = "report.md", "results.json"


def is_report_folder(path: Path) -> bool:
    """Whether ``path`` is a report folder :func:`write_report` wrote (its results.json)."""
    directory = path.is_dir() and not path.is_symlink()
    return directory and json_format(path / RESULTS) == RESULTS_FORMAT


def check_report_output(
    out: str | Path, *, overwrite: bool = False, inputs: Sequence[str | Path] = ()
) -> None:
    """Refuse, in one line and before ``inputs`` (the results files) are read, a report folder
    that must not be written: inside a bundle, an input or a folder holding one, an existing
    report without ``overwrite``, and anything but a report or an empty folder. A report's own
    results.json is no input it must keep: ``xelm report R/results.json -o R --force`` redraws
    report R in place (the results are read before anything is written)."""
    if is_report_folder(Path(out)):
        own_results = Path(out).resolve() / RESULTS
        inputs = [path for path in inputs if Path(path).resolve() != own_results]
    check_replaceable(
        out, overwrite=overwrite, inputs=inputs, own=is_report_folder, kind="a report"
    )


def write_report(results: dict[str, Any], out: Path, *, overwrite: bool = False) -> list[Path]:
    """report.md, results.json and the figures in ``out``; returns the files written.

    Everything is drawn in a staging folder inside ``out`` first and then put in place, so a
    failure (results a figure cannot draw, say) leaves an earlier report as it was; the figures
    of an earlier report that this one does not draw go, other files in ``out`` stay. ``out``
    is refused as :func:`check_report_output` says: an earlier report is replaced only with
    ``overwrite``, a folder of other things (a bundle, say) never."""
    out = Path(out)
    if not is_demo_results(results):
        raise UsageError(
            "write_report takes a demo's results (spec/demo-results.md): read_results(PATH) of "
            "a demo run's report/results.json, or run_demo's; `xelm ensemble eval` results are "
            "their own tables"
        )
    check_report_output(out, overwrite=overwrite)
    results = with_means(results)
    results = {"format": RESULTS_FORMAT, "format_version": RESULTS_FORMAT_VERSION, **results,
               "claims": claims(results)}  # fmt: skip
    # named as atomic.py names the temporaries of report.md: the next writer removes one that a
    # killed run left
    staged = functools.partial(
        tempfile.TemporaryDirectory, suffix=PARTIAL_SUFFIX, prefix=f".{REPORT}.", dir=out
    )
    with output_lock(out / REPORT), staged() as tmp:
        staging = Path(tmp)
        figures = [path.name for path in draw_all(results, staging)]
        write_bytes_atomic(staging / RESULTS, pretty_json(results))
        write_bytes_atomic(staging / REPORT, report_text(results, figures).encode())
        for name in [*figures, RESULTS, REPORT]:  # report.md last: it shows the figures
            os.replace(staging / name, out / name)
        for name, _ in FIGURES:
            if name not in figures:  # an earlier report's, of data these results lack
                (out / name).unlink(missing_ok=True)
        fsync_dir(out)
    return [out / REPORT, out / RESULTS, *(out / name for name in figures)]


def report_text(results: dict[str, Any], figures: Sequence[str]) -> str:
    """report.md of ``results`` (with their claims), showing the figure files ``figures``."""
    preset = results.get("preset", {})
    lines = [
        f"# xelm demo report (preset {preset.get('name', '?')})",
        "",
        "X-ELM's experiment at small scale on the sample data: a seed LM pre-trained on "
        f"{len(results['languages'])} languages, a dense model continued for B = "
        f"{_count(_trained(results, 'dense', preset.get('budget')))} tokens, typology X-ELMs "
        f"with k = {', '.join(str(k) for k in preset.get('typology_ks', []))} and a TF-IDF "
        f"X-ELM with k = {preset.get('tfidf_k', '?')} (each expert B/k tokens from the seed"
        f"{_xelm_totals(results)}), evaluated on FLORES-200 devtest "
        f"({preset.get('eval_documents', '?')} sentences per language); then two new languages "
        "added by HMR and by LAPT."
        + (
            f" The main X-ELM's experts are also made one model: their parameter average and a "
            f"Mixture-of-Experts model, before and after a {_count(finetune_tokens(results))}-"
            "token fine-tune."
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
        *map(claim_line, results["claims"]),
        "",
        "## Perplexity (FLORES-200 devtest, lower is better)",
        "",
        perplexity_table(results),
        "",
        *merging_section(results),
        *purity_section(results),
        *adaptation_section(results.get("adaptation")),
        *in_context_section(results.get("icl")),
        "## Figures",
        "",
        *(f"![{Path(name).stem}]({name})" for name in figures),
    ]
    if results.get("steps"):
        lines += ["", "## Steps", "", *_steps_section(results)]
    lines += ["", "All numbers come from this run (results.json); nothing is tuned per language."]
    return "\n".join(lines) + "\n"


def _xelm_totals(results: dict[str, Any]) -> str:
    """``; each X-ELM N in all`` (or each X-ELM's total): the tokens their experts trained,
    which rounds each run to whole steps; nothing for results without training records."""
    totals = {name: run.get("tokens") for name, run in results.get("training", {}).items()
              if name.startswith(("typology-k", "tfidf-k")) and isinstance(run, dict)}  # fmt: skip
    if len(set(totals.values())) == 1:
        return f"; each X-ELM {_count(next(iter(totals.values())))} in all"
    return "; in all: " + ", ".join(f"{n} {_count(v)}" for n, v in totals.items()) if totals else ""


def adaptation_section(adaptation: Any) -> list[str]:
    """HMR against LAPT on each new language, and the old languages' perplexities."""
    if not isinstance(adaptation, dict):
        return []
    new, old = _part(adaptation, "new"), _part(adaptation, "old")
    lines = ["## Adding languages: HMR vs LAPT", ""]
    if new:
        rows = [[lang, r.get("donor", "?"), *(score_of(r, key) for key, _ in ADAPTATION_SYSTEMS)]
                for lang, r in new.items() if isinstance(r, dict)]  # fmt: skip
        headers = ["new language", "donor", *(label for _, label in ADAPTATION_SYSTEMS)]
        lines += [_table(headers, rows), ""]
    if old:
        lines += ["Old languages (overall perplexity, pooled over every token, and the mean "
                  "over languages): "
                  + ", ".join(f"{name} {_cell(score_of(v, 'overall'))} "
                              f"(mean {_cell(score_of(v, 'mean'))})"
                              for name, v in old.items()) + ".", ""]  # fmt: skip
    return lines


def in_context_section(icl: Any) -> list[str]:
    """Each language's in-context accuracy of dense and of the X-ELM, and overall."""
    if not isinstance(icl, dict):
        return []
    languages = {lang: None for system, _ in ICL_SYSTEMS
                 for lang in _part(_part(icl, system), "languages")}  # fmt: skip
    rows = [[lang, *(_accuracy(icl, system, lang) for system, _ in ICL_SYSTEMS)]
            for lang in [*languages, "overall"]]  # fmt: skip
    return [f"## In-context: {icl.get('task', '?')}, {icl.get('shots', '?')}-shot, "
            f"{_runs(icl.get('runs', '?'))} (accuracy)", "",
            _table(["language", *(label for _, label in ICL_SYSTEMS)], rows), ""]  # fmt: skip


def dump(results: dict[str, Any]) -> str:
    return json.dumps(results, indent=2)
