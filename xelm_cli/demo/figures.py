"""The demo report's figures, drawn from ``results`` alone (the paper's Figures 3, 4 and 6, the
typology tree with the experts' lineage, and the adaptation comparison).

Each figure has its own function that returns False (and writes nothing) when the part of
``results`` it needs is absent. Figures are drawn on ``matplotlib.figure.Figure`` objects with
the Agg canvas, so nothing here touches pyplot's global state or the process's backend.
"""

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xelm_cli.common.atomic import atomic_file

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 120
UNIT = 0.25  # figure sizes are whole multiples of this (inches), so pixel sizes are exact
ADAPTATION_SYSTEMS = (("hmr", "HMR"), ("lapt", "LAPT"), ("dense", "dense (before)"))


# ----------------------------------------------------------------------------- results access


def main_system(results: dict[str, Any]) -> str | None:
    """The name of the main X-ELM (``results["main_xelm"]``), or None."""
    main = results.get("main_xelm")
    return main if isinstance(main, str) and main else None


def score_of(table: Any, *keys: str, metric: str = "perplexity") -> float | None:
    """``table[key]...[metric]`` (keys in turn) as a positive finite float, or None when any
    of it is absent or unusable (results of part of a run)."""
    for key in keys:
        table = table.get(key) if isinstance(table, dict) else None
    value = table.get(metric) if isinstance(table, dict) else None
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def perplexity_of(results: dict[str, Any], system: str, lang: str) -> float | None:
    """``results["perplexity"][system][lang]["perplexity"]`` as a positive finite float, or
    None when it is absent or unusable."""
    return score_of(results.get("perplexity"), system, lang)


def perplexity_groups(results: dict[str, Any]) -> list[str]:
    """The groups of Figure 3: the languages, ``overall`` (pooled over every token) and, where
    any system records it, ``mean`` (over languages, the paper's aggregate)."""
    tables = results.get("perplexity", {}).values()
    mean = ["mean"] if any(isinstance(t, dict) and "mean" in t for t in tables) else []
    return [*results.get("languages", []), "overall", *mean]


def expert_languages(results: dict[str, Any]) -> list[list[str]]:
    """The languages of each expert of the main X-ELM, in expert order: from
    ``results["experts"][main]``, else from the typology allocation's ``experts``."""
    experts = results.get("experts", {}).get(main_system(results) or "")
    if not isinstance(experts, list) or not experts:
        experts = results.get("typology", {}).get("experts")
    if not isinstance(experts, list):
        return []
    return [
        [str(lang) for lang in expert.get("languages", [])] if isinstance(expert, dict) else []
        for expert in experts
    ]


def expert_of_language(results: dict[str, Any]) -> dict[str, int]:
    """Each training language -> the index of the main X-ELM's expert that holds it (the first
    such expert, should a language appear twice)."""
    owners: dict[str, int] = {}
    for index, langs in enumerate(expert_languages(results)):
        for lang in langs:
            owners.setdefault(lang, index)
    return owners


def expert_systems(results: dict[str, Any]) -> list[str]:
    """``"{main} expert-0"``, ``"{main} expert-1"``, ... for as long as they are in
    ``results["perplexity"]``."""
    main = main_system(results)
    systems: list[str] = []
    if main is None:
        return systems
    while f"{main} expert-{len(systems)}" in results.get("perplexity", {}):
        systems.append(f"{main} expert-{len(systems)}")
    return systems


def expert_colours(n: int) -> list[str]:
    """``n`` distinct colours (hex) for experts, the same in every figure."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    palette = colormaps["tab10" if n <= 10 else "tab20"]
    return [to_hex(palette(i % palette.N)) for i in range(n)]


def figure_inches(name: str, results: dict[str, Any]) -> tuple[float, float]:
    """The size (width, height) in inches of figure ``name`` (the file's stem) for ``results``.
    Sizes are multiples of ``UNIT``, so the PNG is exactly ``size * DPI`` pixels."""
    n_langs = max(1, len(results.get("languages", [])))
    n_experts = max(1, len(expert_systems(results)), len(expert_languages(results)))
    n_new = len(results.get("adaptation", {}).get("new", {}))
    n_series = max(3, len(perplexity_series(results)))
    n_groups = max(n_langs + 1, len(perplexity_groups(results)))
    sizes = {
        "perplexity": (max(6.0, (0.45 + 0.1 * n_series) * n_groups + 1.5), 4.5),
        "gain_vs_data": (7.5, 5.0),
        "expert_heatmap": (max(6.0, 0.6 * n_langs + 3.0), max(3.0, 0.55 * n_experts + 1.75)),
        "typology_tree": (
            max(7.0, 0.5 * n_langs + 2.0),
            4.5 + max(1.75, 0.45 * max(n_experts, n_new) + 0.75),
        ),
        "adaptation": (11.0, 4.5),
    }
    width, height = sizes[name]
    return math.ceil(width / UNIT) * UNIT, math.ceil(height / UNIT) * UNIT


# ------------------------------------------------------------------------------- drawing aids


def _new_figure(name: str, results: dict[str, Any], **kwargs: Any) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figure_inches(name, results), dpi=DPI, layout="constrained", **kwargs)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: "Figure", path: Path) -> None:
    with atomic_file(path, overwrite=True) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)


def _wide_range(values: list[float]) -> bool:
    """True when the values span more than a factor of 20 (then a log axis reads better)."""
    return bool(values) and max(values) / min(values) > 20


def _grouped_bars(
    axes: "Axes",
    groups: list[str],
    series: list[tuple[str, list[float | None]]],
    colours: list[str],
) -> None:
    """One group of bars per entry of ``groups``; a None value leaves its bar out."""
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for s, ((label, values), colour) in enumerate(zip(series, colours, strict=True)):
        offset = (s - (len(series) - 1) / 2) * width
        shown = [(i, v) for i, v in enumerate(values) if v is not None]
        axes.bar(
            [x[i] + offset for i, _ in shown],
            [v for _, v in shown],
            width,
            label=label,
            color=colour,
        )
    axes.set_xticks(x, groups)


# ----------------------------------------------------------------------------------- figures


PERPLEXITY_SERIES = (  # (system suffix after the main X-ELM's name, label, colour)
    ("language", "X-ELM {main}", "#1f77b4"),
    ("posterior", "posterior", "#ff7f0e"),
    ("average", "averaged model", "#2ca02c"),
    ("moe", "MoE", "#d62728"),
    ("moe+ft", "MoE fine-tuned", "#9467bd"),
)


def perplexity_series(results: dict[str, Any]) -> list[tuple[str, str, list[float | None]]]:
    """The bars of Figure 3 as (label, colour, perplexity per group of ``perplexity_groups``):
    dense, the main X-ELM and, where present, its posterior ensemble, averaged model and MoE
    models."""
    main = main_system(results)
    candidates = [("dense", "dense", "#7f7f7f")]
    if main is not None:
        candidates += [
            (f"{main} {suffix}", label.format(main=main), colour)
            for suffix, label, colour in PERPLEXITY_SERIES
        ]
    groups = perplexity_groups(results)
    return [
        (label, colour, [perplexity_of(results, system, group) for group in groups])
        for system, label, colour in candidates
        if system in results.get("perplexity", {})
    ]


def draw_perplexity(results: dict[str, Any], path: Path) -> bool:
    """Figure 3: per-language perplexity of dense, X-ELM (top-1 by language) and, where
    present, the posterior-weighted ensemble and the experts merged into one model."""
    languages = list(results.get("languages", []))
    groups = perplexity_groups(results)
    bars = perplexity_series(results)
    series = [(label, values) for label, _, values in bars]
    if not languages or not series or all(v is None for _, vs in series for v in vs):
        return False
    figure = _new_figure("perplexity", results)
    axes = figure.add_subplot()
    _grouped_bars(axes, groups, series, [colour for _, colour, _ in bars])
    values = [v for _, vs in series for v in vs if v is not None]
    if _wide_range(values):
        axes.set_yscale("log")
    axes.axvline(len(languages) - 0.5, color="black", linestyle=":", linewidth=0.8)
    aggregates = {"overall": "overall\n(pooled)", "mean": "mean over\nlanguages"}
    axes.set_xticks(range(len(groups)), [aggregates.get(g, g) for g in groups])
    axes.set_xlabel("language (FLORES-200 devtest)")
    axes.set_ylabel("perplexity (lower is better)")
    axes.set_title("Perplexity per language: dense, X-ELM and the experts merged")
    figure.legend(loc="outside lower center", ncols=len(series))  # clear of the bars
    axes.grid(axis="y", alpha=0.3)
    _save(figure, path)
    return True


def draw_gain_vs_data(results: dict[str, Any], path: Path) -> bool:
    """Figure 4: relative perplexity gain of X-ELM over dense against the language's training
    tokens."""
    main = main_system(results)
    tokens = results.get("training_tokens", {})
    if main is None or not isinstance(tokens, dict):
        return False
    owners = expert_of_language(results)
    colours = expert_colours(max(owners.values(), default=0) + 1)
    points = []
    for lang in results.get("languages", []):
        dense = perplexity_of(results, "dense", lang)
        xelm = perplexity_of(results, f"{main} language", lang)
        count = tokens.get(lang)
        if dense is None or xelm is None or not isinstance(count, int | float) or count <= 0:
            continue
        points.append((lang, float(count), (dense - xelm) / dense * 100))
    if not points:
        return False
    figure = _new_figure("gain_vs_data", results)
    axes = figure.add_subplot()
    for lang, count, gain in points:
        colour = colours[owners[lang]] if lang in owners else "#333333"
        axes.scatter([count], [gain], color=colour, s=40, zorder=3)
        axes.annotate(lang, (count, gain), xytext=(4, 4), textcoords="offset points", fontsize=9)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_xlabel("tokens of the language in the training shards (log scale)")
    axes.set_ylabel("perplexity gain of X-ELM over dense (%)")
    axes.set_title(f"Gain of {main} over dense vs the language's data")
    axes.grid(alpha=0.3)
    _save(figure, path)
    return True


def draw_expert_heatmap(results: dict[str, Any], path: Path) -> bool:
    """Figure 6: each expert's perplexity relative to the seed's, per language (below 1: the
    expert improved on the seed); the expert's own languages are outlined."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    systems = expert_systems(results)
    languages = list(results.get("languages", []))
    if not systems or not languages or "seed" not in results.get("perplexity", {}):
        return False
    ratios = np.full((len(systems), len(languages)), np.nan)
    for col, lang in enumerate(languages):
        seed = perplexity_of(results, "seed", lang)
        for row, system in enumerate(systems):
            expert = perplexity_of(results, system, lang)
            if expert is not None and seed is not None:
                ratios[row, col] = expert / seed
    if np.isnan(ratios).all():
        return False
    own = expert_languages(results)
    own += [[] for _ in range(len(systems) - len(own))]
    figure = _new_figure("expert_heatmap", results)
    axes = figure.add_subplot()
    low, high = float(np.nanmin(ratios)), float(np.nanmax(ratios))
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(low, 0.99), vmax=max(high, 1.01))
    image = axes.imshow(np.ma.masked_invalid(ratios), cmap="RdBu_r", norm=norm, aspect="auto")
    for row in range(len(systems)):
        for col, lang in enumerate(languages):
            value = ratios[row, col]
            mine = lang in own[row]
            if mine:
                axes.add_patch(
                    Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", lw=2.5)
                )
            text = "n/a" if np.isnan(value) else f"{value:.2f}"
            dark = not np.isnan(value) and abs(float(norm(value)) - 0.5) > 0.3
            axes.text(
                col, row, text, ha="center", va="center", fontsize=8,
                color="white" if dark else "black", fontweight="bold" if mine else "normal",
            )  # fmt: skip
    labels = [
        f"expert-{i} ({','.join(own[i])})" if own[i] else f"expert-{i}" for i in range(len(systems))
    ]
    axes.set_xticks(range(len(languages)), languages)
    axes.set_yticks(range(len(systems)), labels)
    axes.set_xlabel("evaluation language (outlined: the expert's own languages)")
    axes.set_title(f"{main_system(results)}: expert perplexity / seed perplexity")
    figure.colorbar(image, ax=axes, label="ratio to the seed (< 1: better than the seed)")
    _save(figure, path)
    return True


def _tree(results: dict[str, Any]) -> tuple[list[str], np.ndarray] | None:
    """The typology tree of ``results["typology"]`` as (leaves, linkage), or None without one."""
    typology = results.get("typology")
    if not isinstance(typology, dict) or not isinstance(typology.get("tree"), dict):
        return None
    from xelm_cli.cluster.allocation import Allocation
    from xelm_cli.cluster.plots import tree_linkage

    experts = [e.get("languages", []) for e in typology.get("experts", []) if isinstance(e, dict)]
    allocation = Allocation(
        str(typology.get("clusterer", "typology")), experts, "", Path("results[typology]"), typology
    )
    found = tree_linkage(allocation)  # FormatError for a malformed tree
    if found is None or len(found[0]) < 2:
        return None
    return found


def _leaves_below(linkage: np.ndarray, n_leaves: int) -> list[frozenset[int]]:
    """For each node of the tree (leaves, then merges), the leaf ids below it."""
    below = [frozenset([i]) for i in range(n_leaves)]
    for a, b, _, _ in linkage:
        below.append(below[int(a)] | below[int(b)])
    return below


def _draw_dendrogram(
    axes: "Axes", results: dict[str, Any], leaves: list[str], linkage: Any
) -> None:
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator
    from scipy.cluster.hierarchy import dendrogram

    from xelm_cli.cluster.plots import merge_rounds

    owners = expert_of_language(results)
    experts = expert_languages(results)
    colours = expert_colours(len(experts))
    by_round = merge_rounds(linkage, len(leaves))
    below = _leaves_below(linkage, len(leaves))

    def link_colour(node: int) -> str:
        indices = {owners.get(leaves[leaf]) for leaf in below[node]}
        index = next(iter(indices)) if len(indices) == 1 else None
        return colours[index] if index is not None else "#555555"

    dendrogram(by_round, labels=leaves, ax=axes, link_color_func=link_colour, leaf_font_size=11)
    for label in axes.get_xticklabels():
        index = owners.get(label.get_text())
        if index is not None:
            label.set_color(colours[index])
            label.set_fontweight("bold")
    # The cut that gives the experts: above the highest merge that stays inside one expert.
    groups = [
        frozenset(leaves.index(lang) for lang in langs if lang in leaves) for langs in experts
    ]
    inside = [by_round[j, 2] for j in range(len(by_round)) if below[len(leaves) + j] in groups]
    if inside and len(experts) > 1:
        axes.axhline(max(inside) + 0.5, color="black", linestyle="--", linewidth=0.8)
    axes.set_ylabel("merge round")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(f"Typology tree of the {len(leaves)} training languages, coloured by expert")
    handles = [
        Patch(color=colours[i], label=f"expert-{i}: {', '.join(langs)}")
        for i, langs in enumerate(experts)
    ]
    if handles:
        axes.legend(handles=handles, fontsize=8, loc="upper right", title="experts (cut: --)")


def _draw_lineage(axes: "Axes", results: dict[str, Any]) -> None:
    """seed -> expert-i for every expert, and expert-i -> hmr-<new> for every new language,
    branching from the expert that holds its donor language."""
    experts = expert_languages(results)
    owners = expert_of_language(results)
    colours = expert_colours(len(experts))
    new = results.get("adaptation", {}).get("new", {})
    axes.set_axis_off()
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_title(
        "Lineage: seed → expert-i → hmr-<new language> (branched from its donor's expert)"
    )
    box = {"boxstyle": "round,pad=0.3", "linewidth": 1.2}
    seed = axes.text(
        0.04, 0.5, "seed", ha="left", va="center", fontsize=10,
        bbox={**box, "facecolor": "#eeeeee", "edgecolor": "black"},
    )  # fmt: skip

    def rows(n: int) -> list[float]:
        return [0.5] if n == 1 else [0.9 - 0.8 * i / (n - 1) for i in range(n)]

    def arrow(parent: Any, child: Any, colour: str) -> None:
        axes.annotate(
            "", xy=(0.0, 0.5), xycoords=child, xytext=(1.0, 0.5), textcoords=parent,
            arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.2, "shrinkA": 6,
                        "shrinkB": 6},
        )  # fmt: skip

    nodes = []
    for i, (langs, y) in enumerate(zip(experts, rows(len(experts)), strict=True)):
        node = axes.text(
            0.3, y, f"expert-{i} ({','.join(langs)})", ha="left", va="center", fontsize=9,
            bbox={**box, "facecolor": "white", "edgecolor": colours[i]},
        )  # fmt: skip
        arrow(seed, node, colours[i])
        nodes.append(node)
    children = [
        (str(lang), str(entry.get("donor")), owners.get(str(entry.get("donor"))))
        for lang, entry in new.items()
        if isinstance(entry, dict)
    ]
    orphans = [child for child in children if child[2] is None or child[2] >= len(nodes)]
    for j, (lang, donor, _) in enumerate(orphans):  # the donor is in no expert: no parent
        axes.text(
            0.72, 0.05 + 0.1 * j, f"hmr-{lang} (donor {donor}): donor in no expert",
            ha="left", va="center", fontsize=9,
        )  # fmt: skip
    expert_rows = rows(len(experts))
    for index, node in enumerate(nodes):  # each expert's HMR children, around its own row
        mine = [(lang, donor) for lang, donor, parent in children if parent == index]
        for j, (lang, donor) in enumerate(mine):
            y = min(0.95, max(0.05, expert_rows[index] - (j - (len(mine) - 1) / 2) * 0.16))
            child = axes.text(
                0.72, y, f"hmr-{lang} (donor {donor})", ha="left", va="center", fontsize=9,
                bbox={**box, "facecolor": colours[index], "alpha": 0.25,
                      "edgecolor": colours[index]},
            )  # fmt: skip
            arrow(node, child, colours[index])


def draw_typology_tree(results: dict[str, Any], path: Path) -> bool:
    """The typology tree (by merge round) with leaves coloured by expert, and below it each
    expert's and each HMR expert's lineage."""
    found = _tree(results)
    if found is None:
        return False
    leaves, linkage = found
    figure = _new_figure("typology_tree", results)
    tree_height = 4.5 / figure_inches("typology_tree", results)[1]
    top, bottom = figure.subplots(2, 1, height_ratios=[tree_height, 1 - tree_height])
    _draw_dendrogram(top, results, leaves, linkage)
    _draw_lineage(bottom, results)
    _save(figure, path)
    return True


def _label_bars(axes: "Axes", container: Any) -> None:
    axes.bar_label(container, fmt="%.2f", fontsize=8, padding=2)


def draw_adaptation(results: dict[str, Any], path: Path) -> bool:
    """Left: perplexity on each new language for HMR, LAPT and the dense model before
    adaptation. Right: overall perplexity on the old languages (forgetting)."""
    adaptation = results.get("adaptation")
    if not isinstance(adaptation, dict):
        return False
    new = {k: v for k, v in adaptation.get("new", {}).items() if isinstance(v, dict)}
    old = {
        name: value["overall"]["perplexity"]
        for name, value in adaptation.get("old", {}).items()
        if isinstance(value, dict) and isinstance(value.get("overall"), dict)
        and isinstance(value["overall"].get("perplexity"), int | float)
    }  # fmt: skip
    panels: list[Callable[[Axes], None]] = []

    def draw_new(axes: "Axes") -> None:
        languages = list(new)
        series = []
        for key, label in ADAPTATION_SYSTEMS:
            values = []
            for lang in languages:
                value = new[lang].get(key, {}).get("perplexity")
                values.append(float(value) if isinstance(value, int | float) else None)
            series.append((label, values))
        _grouped_bars(axes, languages, series, ["#2ca02c", "#9467bd", "#7f7f7f"])
        for container in axes.containers:
            _label_bars(axes, container)
        if _wide_range([v for _, vs in series for v in vs if v is not None and v > 0]):
            axes.set_yscale("log")
        axes.set_xticks(
            range(len(languages)),
            [f"{lang}\n(donor {new[lang].get('donor', '?')})" for lang in languages],
        )
        axes.set_xlabel("new language")
        axes.set_ylabel("perplexity (lower is better)")
        axes.set_title("New languages: HMR vs LAPT")
        axes.legend(fontsize=9)
        axes.grid(axis="y", alpha=0.3)
        axes.margins(y=0.12)

    def draw_old(axes: "Axes") -> None:
        names = list(old)
        colours = ["#1f77b4" if name.startswith("xelm") else "#7f7f7f" for name in names]
        bars = axes.bar(range(len(names)), [old[name] for name in names], color=colours)
        _label_bars(axes, bars)
        axes.set_xticks(range(len(names)), names, rotation=20, ha="right")
        axes.set_ylabel("overall perplexity on the old languages")
        axes.set_title("Forgetting: old languages before / after adding new ones")
        axes.grid(axis="y", alpha=0.3)
        axes.margins(y=0.12)

    if new:
        panels.append(draw_new)
    if old:
        panels.append(draw_old)
    if not panels:
        return False
    figure = _new_figure("adaptation", results)
    all_axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for panel, axes in zip(panels, all_axes, strict=True):
        panel(axes)
    _save(figure, path)
    return True


FIGURES: tuple[tuple[str, Callable[[dict[str, Any], Path], bool]], ...] = (
    ("perplexity.png", draw_perplexity),
    ("gain_vs_data.png", draw_gain_vs_data),
    ("expert_heatmap.png", draw_expert_heatmap),
    ("typology_tree.png", draw_typology_tree),
    ("adaptation.png", draw_adaptation),
)


def draw_all(results: dict[str, Any], out: Path) -> list[Path]:
    """Draw every figure whose data is in ``results`` into ``out``; returns the files written,
    in the order of ``FIGURES``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in FIGURES:
        if draw(results, out / name):
            written.append(out / name)
    return written
