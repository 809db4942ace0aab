"""``xelm bundle``: make, inspect, verify, branch and share expert bundles."""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from xelm_cli.bundle.branching import branch as branch_bundle
from xelm_cli.bundle.branching import find_bundles, hmr_branch, hmr_donor
from xelm_cli.bundle.lineage import (
    UNKNOWN_RELATION,
    UNTRAINED,
    Node,
    children,
    graph_json,
    lineage_graph,
    roots,
)
from xelm_cli.bundle.manifest import ROLES
from xelm_cli.bundle.moe import CALIBRATION_TOKENS
from xelm_cli.bundle.seed import NAMED_CONFIGS, init_from_config, init_from_hf
from xelm_cli.bundle.store import (
    Bundle,
    check_output,
    check_role,
    holds_bundles,
    is_bundle,
    verify_bundle,
)
from xelm_cli.common.cli_options import (
    BundleArg,
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    OutDirOpt,
    print_json,
    print_whole,
)
from xelm_cli.common.digest import short
from xelm_cli.common.errors import IntegrityError, UsageError
from xelm_cli.common.progress import byte_progress
from xelm_cli.common.units import parse_byte_size
from xelm_cli.lang.codes import parse_language_list

app = typer.Typer(
    help="Expert bundles: make, inspect, verify, branch and share them.\n\n"
    "Example: xelm bundle branch seed/ --langs tr -o experts/tr",
    no_args_is_help=True,
)
console = Console(soft_wrap=True)

LangsOpt = Annotated[
    str | None, typer.Option("--langs", help="Comma-separated language codes, e.g. ar,tr.")
]


def _summary(bundle: Bundle) -> dict[str, Any]:
    m = bundle.manifest
    return {
        "path": str(bundle.path),
        "id": m.id,
        "name": bundle.name,
        "digest": bundle.digest,
        "role": m.role,
        "languages": m.languages,
        "relation": m.relation,
    }


@app.command()
def init(
    out: OutDirOpt,
    hf: Annotated[
        str | None, typer.Option("--hf", help="Local HF model directory or Hub id.")
    ] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", help=f"Named Llama-style config: {', '.join(NAMED_CONFIGS)}."),
    ] = None,
    tokenizer: Annotated[
        Path | None, typer.Option("--tokenizer", help="Tokenizer directory (with --config).")
    ] = None,
    langs: LangsOpt = None,
    seed: Annotated[int, typer.Option(help="Random seed for --config initialisation.")] = 0,
    revision: Annotated[str | None, typer.Option(help="Hub revision (with --hf).")] = None,
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            "--trust-remote-code", help="Allow the model's own Python code (off by default)."
        ),
    ] = False,
    doc_start: Annotated[
        str | None,
        typer.Option(
            help="Token before every document (a token like '</s>', an id, or 'none'); "
            "default: what the model's tokenizer puts before text (--config: its bos)."
        ),
    ] = None,
    doc_end: Annotated[
        str | None,
        typer.Option(
            help="Token after every document; default: what the tokenizer appends, else its "
            "eos unless that is the start token (--config: its eos)."
        ),
    ] = None,
    convert_pickle: Annotated[
        bool,
        typer.Option(
            "--convert-pickle",
            help="Read a model that has only pytorch_model.bin with torch's weights_only "
            "loader and store it as safetensors (recorded in the lineage).",
        ),
    ] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Make a seed bundle from a HF model, or from a named config plus a tokenizer.

    The manifest records how documents are framed (`framing`: start and end tokens) and
    training, scoring and generation follow it; see spec/bundle-v1.md section 3.5.

    Example: xelm bundle init --config tiny --tokenizer tok/ --langs en,tr -o seed/

    Example: xelm bundle init --hf xglm-564M/ --convert-pickle --langs en,tr -o seed/
    """
    languages = parse_language_list(langs) if langs else []
    if (hf is None) == (config is None):
        raise UsageError("pass exactly one of --hf MODEL or --config NAME")
    if convert_pickle and hf is None:
        raise UsageError("--convert-pickle goes with --hf MODEL (a named config has no weights)")
    local = [Path(p) for p in (hf, tokenizer) if p is not None and Path(p).exists()]
    check_output(out, overwrite=force, inputs=local)  # before the model is loaded
    with byte_progress("hashing", None) as progress:
        if hf is not None:
            bundle = init_from_hf(
                hf,
                out,
                languages=languages,
                revision=revision,
                trust_remote_code=trust_remote_code,
                overwrite=force,
                progress=progress,
                doc_start=doc_start,
                doc_end=doc_end,
                convert_pickle=convert_pickle,
            )
        else:
            if tokenizer is None:
                raise UsageError(
                    "--config needs --tokenizer DIR (train one with `xelm data tokenizer`)"
                )
            assert config is not None
            bundle = init_from_config(
                config,
                tokenizer,
                out,
                languages=languages,
                seed=seed,
                overwrite=force,
                progress=progress,
                doc_start=doc_start,
                doc_end=doc_end,
            )
    _report_written(bundle, as_json)


def _report_written(bundle: Bundle, as_json: bool) -> None:
    if as_json:
        print_json(_summary(bundle))
    else:
        console.print(
            f"wrote {bundle.manifest.role} bundle [bold]{escape(str(bundle.path))}[/] "
            f"({bundle.size / 1e6:.1f} MB, digest {short(bundle.digest)})"
        )


def _report_hmr(bundle: Bundle, donor_bundle: Bundle, as_json: bool) -> None:
    """What ``branch --from`` wrote, and which expert of the pool it branched: the pool may
    hold several, and the donor's expert is the one choice the command made."""
    donor = bundle.manifest.lineage[-1]["donor"]
    if as_json:
        print_json({**_summary(bundle), "donor": donor, "donor_bundle": str(donor_bundle.path)})
        return
    _report_written(bundle, as_json)
    console.print(
        f"branched from [bold]{escape(str(donor_bundle.path))}[/], the expert of donor "
        f"language {donor} ({', '.join(donor_bundle.languages)})"
    )
    if donor_bundle.manifest.relation in UNTRAINED:
        sys.stderr.write(
            f"xelm: note: {donor_bundle.path} has not been trained since its "
            f"{donor_bundle.manifest.relation}: the new expert starts from its parent's weights, "
            f"not a trained donor's (train it first: xelm train {donor_bundle.path} --data "
            "SHARDS --tokens N -o TRAINED)\n"
        )


def _parent(ref: dict[str, str]) -> str:
    """A parent as lineage and init show it: its id, then its digest."""
    return f"{ref['id'][:12]} (digest {short(ref['digest'])})"


@app.command()
def inspect(bundle_dir: BundleArg, as_json: JsonOpt = False) -> None:
    """Show a bundle's manifest: role, languages, lineage, training, files.

    Example: xelm bundle inspect experts/e2 --json
    """
    bundle = Bundle.read(bundle_dir)
    m = bundle.manifest
    if as_json:
        print_json({**_summary(bundle), "manifest": m.raw})
        return
    table = Table(show_header=False, box=None)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    rows = [
        ("path", str(bundle.path)),
        ("name", bundle.name),
        ("id", m.id),
        ("digest", bundle.digest),
        ("role", m.role),
        ("languages", ", ".join(m.languages) or "-"),
        ("format", f"xelm-bundle {m.format_version}, written by xelm {m.created_by.get('xelm')}"),
        ("origin", json.dumps(m.origin)),
        ("made by", f"{m.relation} from " + (", ".join(map(_parent, m.parents)) or "-")),
    ]
    if m.allocation:
        a = m.allocation
        rows.append(
            ("allocation", f"expert {a['expert']} of {a['clusterer']} ({short(a['digest'])})")
        )
    if m.training:
        rows.append(("training", f"{m.training['tokens']:,} tokens, {m.training['steps']:,} steps"))
    rows += [
        ("architecture", m.fingerprints["architecture"]),
        ("tokenizer", m.fingerprints["tokenizer"]),
        ("size", f"{bundle.size / 1e6:.2f} MB in {len(m.files)} files"),
    ]
    for key, value in rows:
        table.add_row(f"[bold]{key}[/]", escape(value))
    print_whole(console, table)
    files = Table("file", "bytes", "sha256")
    for name, entry in sorted(m.files.items()):
        files.add_row(name, f"{entry.size:,}", short(entry.sha256, 16))
    print_whole(console, files)


@app.command()
def verify(
    bundles: Annotated[
        list[str], typer.Argument(help="Bundle directories (or quoted globs).", show_default=False)
    ],
    as_json: JsonOpt = False,
) -> None:
    """Check every file's size and sha256, the schema and the fingerprints; exit 4 on a problem
    (2 when a path does not exist).

    Example: xelm bundle verify experts/*
    """
    from xelm_cli.ensemble.members import expand_paths

    paths = expand_paths(bundles)
    for path in paths:
        if not path.exists():  # a mistyped path, not a damaged bundle
            raise UsageError(f"not a bundle: {path} does not exist")
        if not is_bundle(path) and holds_bundles(path):  # a usage slip, not a damaged bundle
            raise UsageError(
                f"{path} is a directory of bundles, not a bundle: verify its bundles ({path}/*)"
            )
    report = {}
    for path in paths:
        total = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) if path.is_dir() else 0
        with byte_progress(f"verifying {path.name}", total) as progress:
            report[str(path)] = verify_bundle(path, progress)
    if as_json:
        print_json({"ok": not any(report.values()), "bundles": report})
    else:
        for path_str, problems in report.items():
            if problems:
                for problem in problems:
                    console.print(
                        f"[red]FAIL[/] {escape(f'{path_str}: {problem}')}", highlight=False
                    )
            else:
                console.print(f"[green]OK[/]   {escape(path_str)}", highlight=False)
    failed = sum(1 for p in report.values() if p)
    if failed:
        raise IntegrityError(f"{failed} of {len(report)} bundles failed verification")


def _render(node: Node, kids: dict[str, list[Node]], tree: Tree, seen: set[str]) -> None:
    label = (
        f"[bold]{escape(node.name)}[/] {node.role} {escape(str(node.languages))}"
        if node.present
        else f"[dim]{node.id[:12]} (not in this set)[/]"
    )
    relation = "relation unknown" if node.relation == UNKNOWN_RELATION else node.relation
    label += f" [dim]{relation} {short(node.digest)}[/]"
    if node.digest in seen:
        tree.add(label + " [dim](shown above)[/]")
        return
    seen.add(node.digest)
    branch = tree.add(label)
    for child in kids[node.digest]:
        _render(child, kids, branch, seen)


@app.command()
def lineage(
    bundles: Annotated[
        list[Path], typer.Argument(help="Bundles, or directories of bundles.", show_default=False)
    ],
    as_json: JsonOpt = False,
) -> None:
    """Draw the family tree of a set of bundles from their manifests (a directory: every bundle
    below it, a plan's runs/ whole).

    Example: xelm bundle lineage seed/ runs/
    """
    found = [find_bundles([path], deep=True) for path in bundles]
    for path, there in zip(bundles, found, strict=True):
        if not there:  # an empty or mistyped folder: not an empty family tree
            raise UsageError(
                f"no bundles in {path} nor below it: pass bundle directories, or "
                "the folders that hold them"
            )
    nodes = lineage_graph([bundle for there in found for bundle in there])
    if as_json:
        print_json(graph_json(nodes))
        return
    kids, seen = children(nodes), set[str]()
    tree = Tree("bundles", hide_root=True)
    for root in roots(nodes):
        _render(root, kids, tree, seen)
    print_whole(console, tree)


@app.command()
def branch(
    out: OutDirOpt,
    parent: Annotated[
        Path | None, typer.Argument(help="Bundle to branch.", show_default=False)
    ] = None,
    allocation: Annotated[
        Path | None, typer.Option(help="Allocation file (with --expert).")
    ] = None,
    expert: Annotated[int | None, typer.Option(help="Expert index in the allocation.")] = None,
    langs: LangsOpt = None,
    role: Annotated[
        str, typer.Option(help=f"Role of the new bundle: {', '.join(ROLES)}.")
    ] = "expert",
    pool: Annotated[
        list[Path] | None,
        typer.Option(
            "--from", help="HMR: bundles (or a directory of them) to pick the donor's expert from."
        ),
    ] = None,
    donor: Annotated[str | None, typer.Option(help="HMR: seen language closest to --lang.")] = None,
    lang: Annotated[str | None, typer.Option(help="HMR: the new language.")] = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Branch a bundle into a new expert; weight files are hard links, so it costs nothing.

    The HMR form (hierarchical multi-round training: a new language's expert starts from the
    expert of a related language already seen, the donor) takes --from, --donor and --lang.

    Examples:
      xelm bundle branch seed/ --allocation alloc.json --expert 2 -o experts/e2
      xelm bundle branch --from experts/ --donor tr --lang az -o branches/az

    Next (HMR): train the branch on the new language's shards, then ensemble it with the
    other experts: xelm train branches/az --data shards/ --tokens 20M -o experts/az;
    xelm ensemble eval experts/* --router language --data DIR.
    """
    check_role(role)
    if pool:
        if parent is not None or allocation is not None or langs:
            raise UsageError(
                "the HMR form (--from/--donor/--lang) takes no PARENT, --allocation or --langs"
            )
        if not donor or not lang:
            raise UsageError("the HMR form needs --donor LANG and --lang NEW_LANG")
        donor_bundle = hmr_donor(pool, donor, lang, out)  # read before anything is written
        bundle = hmr_branch([donor_bundle.path], donor, lang, out, overwrite=force)
        _report_hmr(bundle, donor_bundle, as_json)
        return
    else:
        if parent is None:
            raise UsageError("pass the PARENT bundle to branch, or --from POOL for the HMR form")
        if donor or lang:
            raise UsageError("--donor and --lang belong to the HMR form: use them with --from POOL")
        bundle = branch_bundle(
            parent,
            out,
            languages=langs,
            allocation=allocation,
            expert=expert,
            role=role,
            overwrite=force,
        )
    _report_written(bundle, as_json)


@app.command()
def pack(
    bundle_dir: BundleArg,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Archive path (default: NAME.xelm.tar.zst here)."),
    ] = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Pack a verified bundle into one reproducible .xelm.tar.zst file for sharing.

    Example: xelm bundle pack experts/az -o az.xelm.tar.zst
    """
    from xelm_cli.bundle.archive import default_archive_name, pack_bundle

    bundle = Bundle.read(bundle_dir)
    target = output or Path(default_archive_name(bundle))
    with byte_progress(f"packing {bundle.name}", bundle.size) as progress:
        path = pack_bundle(bundle_dir, target, overwrite=force, progress=progress)
    size = path.stat().st_size
    if as_json:
        print_json({"archive": str(path), "bytes": size, "bundle": _summary(bundle)})
        return
    console.print(f"wrote {path} ({size / 1e6:.1f} MB)", markup=False)


@app.command()
def unpack(
    archive: Annotated[Path, typer.Argument(help="A .xelm.tar.zst archive.", show_default=False)],
    out: OutDirOpt,
    max_size: Annotated[
        str, typer.Option(help="Refuse archives that unpack to more than this (500G, 1T, 2TiB).")
    ] = "1T",
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Unpack an archive safely and verify every digest before the bundle appears.

    Example: xelm bundle unpack az.xelm.tar.zst -o experts/az
    """
    from xelm_cli.bundle.archive import check_archive, unpack_bundle

    check_archive(archive)  # unpack_bundle checks it too; its size is the progress total
    with byte_progress(f"unpacking {archive.name}", archive.stat().st_size) as progress:
        bundle = unpack_bundle(
            archive,
            out,
            overwrite=force,
            max_bytes=parse_byte_size(max_size, "--max-size"),
            progress=progress,
        )
    _report_written(bundle, as_json)


ExpertsArg = Annotated[
    list[str],
    typer.Argument(help="Expert bundles (paths or quoted globs).", show_default=False),
]


@app.command()
def merge(
    experts: ExpertsArg,
    out: OutDirOpt,
    method: Annotated[
        str, typer.Option(help="How to merge: average (parameter averaging).")
    ] = "average",
    weights: Annotated[
        str | None,
        typer.Option(
            help="Weights in the experts' order (0.5,0.3,0.2) or NAME=W pairs; scaled to sum "
            "to 1 (0.3,0.3 averages equally), as recorded in the lineage."
        ),
    ] = None,
    prior: Annotated[
        Path | None,
        typer.Option(help="Ensemble file whose calibrated posterior prior gives the weights."),
    ] = None,
    language: Annotated[
        str | None,
        typer.Option(
            "--lang",
            "--language",
            help="Weights for one language from the allocation (with --allocation).",
        ),
    ] = None,
    allocation: Annotated[
        Path | None, typer.Option(help="The experts' allocation file (with --lang).")
    ] = None,
    role: Annotated[
        str | None,
        typer.Option(
            help=f"Role of the result ({', '.join(ROLES)}); default dense, or expert with --lang."
        ),
    ] = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Average experts' parameters into one bundle (uniform weights unless one source is given).

    The experts must share architecture, tokenizer and seed. Tensors are streamed one at a
    time (each file hashed as it is written): memory stays within about 3.5 times one bf16
    tensor (an fp32 sum, one input, the result) whatever k and the model size.

    Examples:
      xelm bundle merge experts/* -o averaged/
      xelm bundle merge experts/e0 experts/e1 --weights 0.7,0.3 -o avg/
      xelm bundle merge experts/* --prior ens.json -o avg/
      xelm bundle merge experts/* --lang tr --allocation alloc.json -o avg-tr/
    """
    from xelm_cli.bundle.merging import expert_paths, merge_average

    if method != "average":
        raise UsageError(
            f"unknown merge method {method!r}: use average (`xelm bundle moe` builds a "
            "mixture-of-experts model)"
        )
    with byte_progress("merging", None) as progress:
        bundle = merge_average(
            experts,
            out,
            weights=weights,
            prior=prior,
            language=language,
            allocation=allocation,
            role=role,
            overwrite=force,
            progress=progress,
        )
    chosen = bundle.manifest.lineage[-1]["weights"]
    if as_json:
        print_json({**_summary(bundle), "weights": chosen})
        return
    _report_written(bundle, as_json)
    if weights is not None:
        source = "from --weights"
    elif prior is not None:
        source = f"the calibrated prior of {prior}"
    elif language is not None:
        source = f"{bundle.manifest.lineage[-1]['language']}'s row of {allocation}"
    else:
        source = "uniform"
    console.print(
        escape(
            f"weights ({source}): "
            + ", ".join(
                f"{path} {weight:.4g}"
                for path, weight in zip(expert_paths(experts), chosen, strict=True)
            )
        ),
        highlight=False,
    )


@app.command()
def moe(
    experts: ExpertsArg,
    out: OutDirOpt,
    top_k: Annotated[int, typer.Option("--top-k", help="Experts per token.")] = 2,
    gate: Annotated[
        str,
        typer.Option(
            help="Router initialisation: random (small random rows: tokens spread over the "
            "experts), language (mean hidden state of each expert's languages, needs "
            "--calibration) or uniform (zero rows: equal weights, and under --top-k below the "
            "experts every token ties, so the same top-k take all until training splits them)."
        ),
    ] = "random",
    calibration: Annotated[
        str | None,
        typer.Option(
            help="Held-out labelled corpus for --gate language (e.g. FLORES dev); of each "
            f"document, the first {CALIBRATION_TOKENS:,} tokens (at most the experts' "
            "context) are run."
        ),
    ] = None,
    calibration_limit: Annotated[
        int, typer.Option(help="Calibration documents per language.")
    ] = 50,
    weights: Annotated[
        str | None,
        typer.Option(help="Weights for averaging the non-expert parameters (default uniform)."),
    ] = None,
    shared_from: Annotated[
        Path | None,
        typer.Option(
            help="Take attention, norms and embeddings from this bundle instead (the seed the "
            "experts were branched from)."
        ),
    ] = None,
    allocation: Annotated[
        Path | None,
        typer.Option(
            help="With --gate language: the allocation the experts were branched from; each "
            "expert is calibrated on the documents it assigns to the expert's cluster (needed "
            "to tell apart TF-IDF experts, which share their languages)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed for --gate random.")] = 0,
    device: DeviceOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Build one Mixture-of-Experts model from experts: each expert's MLP becomes an MoE expert.

    Llama/Mistral experts become MixtralForCausalLM, Qwen2/Qwen3 experts Qwen2Moe/Qwen3Moe;
    attention, norms and embeddings are averaged (or taken from the seed). The result loads in
    plain transformers and records every expert as a parent. --gate language runs each expert
    over its languages' calibration text on --device, in batches (with --allocation, over
    the part of that text the allocation gives its cluster).

    Example: xelm bundle moe experts/* --gate language --calibration dev/ --device cuda -o moe/
    """
    from xelm_cli.bundle.merging import parse_weights
    from xelm_cli.bundle.moe import build_moe
    from xelm_cli.ensemble.members import expand_paths

    paths = expand_paths(experts)
    check_output(out, overwrite=force, inputs=paths)  # build_moe checks all its inputs again
    chosen = parse_weights(weights, [Bundle.read(p) for p in paths]) if weights else None
    with byte_progress("building the MoE model", None) as progress:
        bundle = build_moe(
            paths,
            out,
            top_k=top_k,
            gate=gate,
            calibration=calibration,
            calibration_limit=calibration_limit,
            weights=chosen,
            shared_from=shared_from,
            seed=seed,
            device=device,
            allocation=allocation,
            overwrite=force,
            progress=progress,
        )
    _report_written(bundle, as_json)
