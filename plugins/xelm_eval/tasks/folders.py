"""Tasks with one folder per language (SIB-200, XCOPA)."""

from pathlib import Path
from typing import ClassVar

from xelm_cli.api import UsageError

from .base import Split, Task
from .files import file_language


class FolderPerLanguage(Task):
    """A task with one folder per language holding one file per split."""

    FILES: ClassVar[dict[str, tuple[str, ...]]]  # split -> file names, "{lang}" replaced

    def _path(self, folder: Path, raw: str, split: Split) -> Path | None:
        for pattern in self.FILES[split]:
            path = folder / pattern.format(lang=raw)
            if path.is_file():
                return path
        return None

    def _holds_data(self, root: Path) -> bool:
        return any(self._path(folder, folder.name, "eval") for folder in self._folders(root))

    @staticmethod
    def _folders(root: Path) -> list[Path]:
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _scan_languages(self) -> dict[str, str]:
        languages: dict[str, str] = {}
        for folder in self._folders(self.root):
            if self._path(folder, folder.name, "eval"):
                languages.setdefault(file_language(folder.name, str(folder)), folder.name)
        return languages

    def _split_file(self, raw: str, split: Split) -> Path:
        path = self._path(self.root / raw, raw, split)
        if path is None:
            wanted = " or ".join(
                str(self.root / raw / p.format(lang=raw)) for p in self.FILES[split]
            )
            raise UsageError(f"{self.name}: missing file {wanted}")
        return path
