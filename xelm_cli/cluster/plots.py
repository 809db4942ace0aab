"""An allocation as a language x expert matrix, its summary, and its figures (``xelm cluster
show``, the demo's report): the heatmap of the paper's Figure 5 and the typology tree."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xelm_cli.cluster.allocation import Allocation, as_allocation
from xelm_cli.common.atomic import atomic_file
from xelm_cli.common.errors import FormatError, UsageError
from xelm_cli.common.outputs import check_replaceable, has_magic


def allocation_matrix(allocation: Allocation) -> tuple[list[str], np.ndarray, bool]:
    """Languages, the language x expert matrix, and whether it holds document shares
    (``language_shares``) rather than 0/1 membership from the experts' languages."""
    shares = allocation.language_shares
    if shares:
        languages = sorted(shares)
        matrix = np.array([shares[lang] for lang in languages], dtype=np.float64)
        return languages, matrix, True
    languages = allocation.languages
    matrix = np.zeros((len(languages), allocation.k))
    for expert, langs in enumerate(allocation.experts):
        for lang in langs:
            matrix[languages.index(lang), expert] = 1.0
    return languages, matrix, False


def allocation_summary(allocation: Allocation | str | Path) -> dict[str, Any]:
    """What ``xelm cluster show --json`` prints: the allocation's path, clusterer, k and each
    expert's languages; of one with document shares, also ``language_shares``,
    ``language_purity`` (each language's largest share) and ``mean_purity``."""
    allocation = as_allocation(allocation)
    languages, matrix, has_shares = allocation_matrix(allocation)
    summary: dict[str, Any] = {
        "path": str(allocation.path),
        "clusterer": allocation.clusterer,
        "k": allocation.k,
        "experts": [{"index": i, "languages": langs} for i, langs in enumerate(allocation.experts)],
    }
    if has_shares:
        summary["language_shares"] = {
            lang: row.tolist() for lang, row in zip(languages, matrix, strict=True)
        }
        summary["language_purity"] = dict(zip(languages, matrix.max(axis=1).tolist(), strict=True))
        summary["mean_purity"] = round(float(matrix.max(axis=1).mean()), 6)  # not 0.834127000001
    return summary


def _save_figure(figure: Any, path: Path) -> None:
    with atomic_file(path, overwrite=True) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_heatmap(allocation: Allocation, path: Path) -> None:
    """The language x expert allocation (the paper's Figure 5)."""
    import matplotlib.pyplot as plt

    languages, matrix, has_shares = allocation_matrix(allocation)
    height = max(2.5, 0.3 * len(languages) + 1.2)
    figure, axes = plt.subplots(figsize=(max(3.5, 0.55 * allocation.k + 2.5), height))
    image = axes.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(allocation.k), [str(i) for i in range(allocation.k)])
    axes.set_yticks(range(len(languages)), languages)
    axes.set_xlabel("expert")
    axes.set_ylabel("language")
    axes.set_title(f"{allocation.clusterer} allocation, k={allocation.k}")
    label = "share of the language's documents" if has_shares else "language in expert"
    figure.colorbar(image, ax=axes, label=label)
    _save_figure(figure, path)
    plt.close(figure)


def tree_linkage(allocation: Allocation) -> tuple[list[str], np.ndarray] | None:
    """The typology tree as (leaf labels, scipy linkage matrix), or None when there is none."""
    tree = allocation.raw.get("tree")
    if not isinstance(tree, dict):
        return None
    leaves, linkage = tree.get("leaves"), tree.get("linkage")
    try:
        matrix = np.asarray(linkage, dtype=np.float64)
    except (TypeError, ValueError):
        raise FormatError(f"{allocation.path}: 'tree.linkage' must be a number matrix") from None
    if matrix.size == 0:  # one leaf: no merges, and [] reads as shape (0,)
        matrix = matrix.reshape(0, 4)
    if not isinstance(leaves, list) or matrix.shape != (len(leaves) - 1, 4):
        raise FormatError(
            f"{allocation.path}: 'tree' needs 'leaves' (n languages) and an (n-1) x 4 'linkage'"
        )
    from scipy.cluster.hierarchy import is_valid_linkage

    if len(leaves) > 1 and not is_valid_linkage(matrix):
        raise FormatError(f"{allocation.path}: 'tree.linkage' is not a scipy linkage matrix")
    return [str(leaf) for leaf in leaves], matrix


def merge_rounds(linkage: np.ndarray, n_leaves: int) -> np.ndarray:
    """The linkage with each merge's height set to its round (1 + the higher child's round).

    The greedy pairing can merge at a smaller distance in a later round, so heights drawn as
    distances would cross; rounds always rise, and the distances stay in the allocation.
    """
    rounds = np.zeros(n_leaves + len(linkage))
    result = linkage.copy()
    for j, (a, b, _, _) in enumerate(linkage):
        rounds[n_leaves + j] = 1 + max(rounds[int(a)], rounds[int(b)])
        result[j, 2] = rounds[n_leaves + j]
    return result


def plot_dendrogram(allocation: Allocation, path: Path) -> bool:
    """The typology tree; False (nothing written) when the allocation has no tree, or one of
    a single language (nothing to draw)."""
    found = tree_linkage(allocation)
    if found is None or len(found[0]) < 2:
        return False
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from scipy.cluster.hierarchy import dendrogram

    leaves, linkage = found
    figure, axes = plt.subplots(figsize=(max(4.0, 0.45 * len(leaves) + 1.5), 4.0))
    dendrogram(merge_rounds(linkage, len(leaves)), labels=leaves, ax=axes, color_threshold=0)
    axes.set_title(f"typology tree ({len(leaves)} languages)")
    axes.set_ylabel("merge round")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    _save_figure(figure, path)
    plt.close(figure)
    return True


PLOTS = ("heatmap.png", "dendrogram.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_plot_folder(directory: Path, inputs: Sequence[Path] = ()) -> None:
    """Refuse, in one line, a --plot folder the plots must not be written to: a file, a folder
    inside a bundle or inside the allocation (``inputs``), or one whose heatmap.png /
    dendrogram.png is not a plot (a folder, another file): only those two files are written,
    each replacing an earlier plot."""
    if directory.exists() and not directory.is_dir():
        raise UsageError(
            f"--plot {directory} is a file, not a folder: give a folder for the plots "
            "(heatmap.png, dendrogram.png), e.g. --plot plots/"
        )
    for name in PLOTS:
        check_replaceable(
            directory / name,
            overwrite=True,
            inputs=inputs,
            own=lambda path: has_magic(path, PNG_MAGIC),
            kind="a PNG plot",
            folder=False,
            what="a plot",
        )


def write_plots(allocation: Allocation | str | Path, directory: str | Path) -> list[Path]:
    """heatmap.png, and dendrogram.png for an allocation with a tree of two languages or more,
    written (each whole) into ``directory``, where an earlier dendrogram.png is removed when
    this allocation has none; the paths written."""
    import matplotlib

    allocation, directory = as_allocation(allocation), Path(directory)
    check_plot_folder(directory, [allocation.path])
    matplotlib.use("Agg")
    tree_linkage(allocation)  # refuse a malformed tree before writing anything
    allocation_matrix(allocation)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"--plot {directory}: cannot make the folder ({exc.strerror or exc}); "
            "give another folder"
        ) from None
    written = [directory / "heatmap.png"]
    plot_heatmap(allocation, written[0])
    dendrogram = directory / "dendrogram.png"
    if plot_dendrogram(allocation, dendrogram):
        written.append(dendrogram)
    else:  # another allocation's tree must not stand beside this heatmap (a plot: checked)
        dendrogram.unlink(missing_ok=True)
    return written
