"""Reading a Hugging Face dataset: one split, loaded from a ``save_to_disk`` directory or
streamed (a Hub id, or a local directory laid out like one), its rows as labelled texts."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xelm_cli.common.errors import FormatError, UsageError, exception_line
from xelm_cli.data.labels import LANGUAGE_FIELDS, language_code, record_label, unlabelled

HF_BATCH = 1000


def load_hf_dataset(source: str | Path, kind: str, *, split: str | None = None) -> Any:
    """One split of a Hugging Face dataset of ``kind`` (see ``corpus.source_kind``): a
    ``datasets.Dataset`` for a ``save_to_disk`` directory; for a Hub id or a local directory
    laid out like one, an ``IterableDataset`` (streamed: nothing is downloaded or converted
    beyond what is read)."""
    import datasets

    try:
        if kind == "hf-disk":
            loaded = datasets.load_from_disk(str(source))
        else:
            loaded = datasets.load_dataset(str(source), split=split, streaming=True)
    except (ConnectionError, OSError) as exc:
        where = "the Hugging Face Hub" if kind == "hf-hub" else str(source)
        raise UsageError(
            f"cannot load dataset {source!s} from {where}: {exception_line(exc)} "
            "(offline? pass a local path: a corpus directory or a save_to_disk dataset)"
        ) from None
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise UsageError(f"cannot load dataset {source!s}: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict | datasets.IterableDatasetDict):
        return _pick_split(loaded, split, source)
    return loaded


def _pick_split(splits: Any, split: str | None, source: str | Path) -> Any:
    names = sorted(splits)
    if split is None:
        split = "train" if "train" in splits else (names[0] if len(names) == 1 else None)
    if split not in splits:
        raise UsageError(
            f"dataset {source!s} has splits {', '.join(names)}: choose one with --split"
        )
    return splits[split]


def _read(items: Any, source: str | Path) -> Iterator[Any]:
    """``items`` of a dataset, its read errors (a stream reads as it goes) as one line."""
    iterator = iter(items)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except (ConnectionError, TimeoutError) as exc:
            raise UsageError(
                f"cannot read dataset {source!s}: {exception_line(exc)} (offline? run the "
                "command again, or pass a local copy)"
            ) from None
        except (UsageError, FormatError):
            raise
        except Exception as exc:  # Arrow, JSON, gzip: the data is broken
            raise FormatError(f"cannot read dataset {source!s}: {exception_line(exc)}") from None
        yield item


def hf_rows(
    source: str | Path,
    kind: str,
    language: str | None,
    split: str | None,
    require_language: bool,
    text_column: str = "text",
) -> Iterator[tuple[str, str | None]]:
    """The text (column ``text_column``) and language of each row of dataset ``source``
    (``language`` where it has none)."""
    dataset = load_hf_dataset(source, kind, split=split)
    columns = list(dataset.column_names or [])
    if not columns:  # a stream whose features are not known before its first row
        columns = list(next(iter(_read(dataset.take(1), source)), {}))
    if text_column not in columns:
        raise FormatError(
            f"dataset {source!s} has no {text_column!r} column (columns: {', '.join(columns)}); "
            "choose one with --text-column"
        )
    label_columns = [c for c in LANGUAGE_FIELDS if c in columns]
    wanted = [text_column, *label_columns]
    default = language_code(language) if language else None
    row = 0
    if not label_columns and default is None and require_language:
        raise unlabelled(f"dataset {source!s}")
    for batch in _read(dataset.select_columns(wanted).iter(batch_size=HF_BATCH), source):
        texts = batch[text_column]
        for index, text in enumerate(texts):
            row += 1
            if not isinstance(text, str):
                raise FormatError(f"dataset {source!s} row {row}: {text_column!r} is not a string")
            label = record_label({c: batch[c][index] for c in label_columns})
            code = None if label is None else label[1]
            if label is not None and not isinstance(code, str):
                raise FormatError(f"dataset {source!s} row {row}: '{label[0]}' is not a string")
            if not code and default is None and require_language:
                raise unlabelled(f"dataset {source!s} row {row}")
            try:
                yield text, language_code(code) if code else default
            except UsageError as exc:
                raise FormatError(f"dataset {source!s} row {row}: {exc}") from None
