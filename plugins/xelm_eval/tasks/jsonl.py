"""Any multiple-choice task already written as prompts, in JSON lines."""

from pathlib import Path

from xelm_cli.api import FormatError, UsageError

from .base import Split, Task
from .files import file_language, read_jsonl
from .items import Example, Prompt


class JsonlTask(Task):
    """Either ``ROOT/{lang}/test.jsonl`` (evaluated) with ``ROOT/{lang}/train.jsonl``
    (demonstrations), or a single file, ``ROOT/{lang}.jsonl`` or a folder holding only one of
    the two, which is both evaluated and the demonstration pool (an example is never its own
    demonstration). Each line is ``{"context": str, "choices": [str, ...], "label": int}``:
    choice ``i`` is scored as the continuation of ``context``, so a choice usually starts with a
    space; at least two choices, none empty; ``label`` indexes the correct one."""

    name = "jsonl"
    layout = "{lang}/test.jsonl (with {lang}/train.jsonl for demonstrations) or {lang}.jsonl"

    def _sources(self, root: Path) -> dict[str, tuple[Path | None, Path | None]]:
        """{language as spelled: (evaluated file, demonstration file or None if shared)}."""
        sources: dict[str, tuple[Path | None, Path | None]] = {}
        for path in sorted(root.iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir():
                test, train = path / "test.jsonl", path / "train.jsonl"
                if test.is_file():
                    sources[path.name] = (test, train if train.is_file() else None)
                elif train.is_file():
                    sources[path.name] = (train, None)
            elif path.is_file() and path.suffix == ".jsonl":
                if path.stem in sources:
                    raise UsageError(
                        f"jsonl: both {path} and the folder {root / path.stem} hold language "
                        f"{path.stem!r}; keep one"
                    )
                sources[path.stem] = (path, None)
        return sources

    def _holds_data(self, root: Path) -> bool:
        return bool(self._sources(root))

    def _scan_languages(self) -> dict[str, str]:
        languages: dict[str, str] = {}
        for raw, (path, _) in self._sources(self.root).items():
            languages.setdefault(file_language(raw, str(path)), raw)
        return languages

    def shares_demos(self, raw: str) -> bool:
        return self._sources(self.root)[raw][1] is None

    def _read_files(self, raw: str, split: Split) -> tuple[list[Example], str]:
        evaluated, demos = self._sources(self.root)[raw]
        path = evaluated if split == "eval" or demos is None else demos
        assert path is not None
        examples = []
        for line, record in read_jsonl(path):
            where = f"{path}:{line}"
            context, choices, label = (record.get(k) for k in ("context", "choices", "label"))
            if not isinstance(context, str):
                raise FormatError(f"{where}: 'context' must be a string")
            if (
                not isinstance(choices, list)
                or len(choices) < 2
                or not all(isinstance(c, str) and c for c in choices)
            ):
                raise FormatError(
                    f"{where}: 'choices' must be a list of two or more non-empty strings"
                )
            if (
                not isinstance(label, int)
                or isinstance(label, bool)
                or not 0 <= label < len(choices)
            ):
                raise FormatError(
                    f"{where}: 'label' must be an integer from 0 to {len(choices) - 1}"
                )
            examples.append(Example({"context": context, "choices": choices}, label, where))
        return examples, str(path)

    def prompt(self, example: Example, protocol: str, language: str) -> Prompt:
        return Prompt(example.fields["context"], tuple(example.fields["choices"]), example.label)
