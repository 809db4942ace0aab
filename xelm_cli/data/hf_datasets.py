"""Reading a Hugging Face dataset: one split, loaded from a ``save_to_disk`` directory or
streamed (a Hub id, or a local directory laid out like one), its rows as labelled texts."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xelm_cli.common.errors import FormatError, UsageError, XelmError, exception_line
from xelm_cli.data.hub_errors import hub_refusal, is_network_error
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
    except Exception as exc:  # the Hub's refusal, the network's failure, a broken dataset
        raise _dataset_error(source, kind, exc, loading=True) from None
    if isinstance(loaded, datasets.DatasetDict | datasets.IterableDatasetDict):
        return _pick_split(loaded, split, source)
    return loaded


def _dataset_error(source: str | Path, kind: str, exc: Exception, *, loading: bool) -> XelmError:
    """Why dataset ``source`` (read as ``kind``) did not load (``loading``) or read, as one
    line: the Hub's refusal (gated, not found, no access: ``hub_refusal``) with what to do; the
    network's failure with the way round it; else what the loader said (reading: the data is
    broken, a ``FormatError``)."""
    remote = kind == "hf-hub"
    refused = hub_refusal(exc, str(source)) if remote else None
    if refused is not None:
        return refused
    verb = "load" if loading else "read"
    if is_network_error(exc, remote=remote):
        return UsageError(
            f"cannot {verb} dataset {source!s}: {exception_line(exc)} (offline? run the command "
            "again, or pass a local path: a corpus directory or a save_to_disk dataset)"
        )
    error = UsageError if loading else FormatError
    return error(f"cannot {verb} dataset {source!s}: {exception_line(exc)}")


def _pick_split(splits: Any, split: str | None, source: str | Path) -> Any:
    names = sorted(splits)
    if split is None:
        split = "train" if "train" in splits else (names[0] if len(names) == 1 else None)
    if split not in splits:
        raise UsageError(
            f"dataset {source!s} has splits {', '.join(names)}: choose one with --split"
        )
    return splits[split]


def _read(items: Any, source: str | Path, kind: str) -> Iterator[Any]:
    """``items`` of a dataset, its read errors (a stream reads as it goes) as one line."""
    iterator = iter(items)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except (UsageError, FormatError):
            raise
        except Exception as exc:  # the Hub's, the network's; else Arrow, JSON, gzip: broken data
            raise _dataset_error(source, kind, exc, loading=False) from None
        yield item


def hf_rows(
    source: str | Path,
    kind: str,
    language: str | None,
    split: str | None,
    require_language: bool,
    text_column: str = "text",
    text_column_flag: str | None = None,
) -> Iterator[tuple[str, str | None]]:
    """The text (column ``text_column``) and language of each row of dataset ``source``
    (``language`` where it has none). A dataset without that column is a one-line error naming
    ``text_column_flag``, the caller's way to choose another (``--text-column``), or, where
    the caller has none (None), saying to rename the dataset's own."""
    dataset = load_hf_dataset(source, kind, split=split)
    columns = list(dataset.column_names or [])
    if not columns:  # a stream whose features are not known before its first row
        columns = list(next(iter(_read(dataset.take(1), source, kind)), {}))
    if text_column not in columns:
        way = (
            f"choose one with {text_column_flag}"
            if text_column_flag
            else f"the dataset's text column is not {text_column!r}: rename it to {text_column!r}"
        )
        raise FormatError(
            f"dataset {source!s} has no {text_column!r} column (columns: {', '.join(columns)}); "
            + way
        )
    label_columns = [c for c in LANGUAGE_FIELDS if c in columns]
    wanted = [text_column, *label_columns]
    default = language_code(language) if language else None
    row = 0
    if not label_columns and default is None and require_language:
        raise unlabelled(f"dataset {source!s}")
    for batch in _read(dataset.select_columns(wanted).iter(batch_size=HF_BATCH), source, kind):
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
