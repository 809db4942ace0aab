"""Evaluation sets on the Hugging Face Hub: FLORES-style language codes, and where each set's
text lives (dataset, per-language configuration, splits, column, whether it is gated).

FLORES-200 and the sets built on it (FLORES+, SIB-200, Belebele) name a language by its ISO
639-3 code and script, ``arb_Arab``; xelm names it ``ar``. :func:`flores_code` is the one place
that maps between the two. A set's configuration is a template: ``{flores}`` is replaced by the
FLORES-style code, ``{lang}`` by xelm's code.
"""

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from xelm_cli.common.errors import FormatError, UsageError
from xelm_cli.data.corpus import source_kind
from xelm_cli.data.recipes import parse_lang_map
from xelm_cli.data.sources import (
    SHOWN_CHOICES,
    DatasetSource,
    SourceUnavailable,
    dataset_configs,
    dataset_splits,
    resolve_dataset,
)
from xelm_cli.lang.codes import normalize_language

# The 20 languages of the X-ELM paper, then the other FLORES-200 languages whose ISO 639-1
# code names a macrolanguage: FLORES names the individual language (Arabic is Modern Standard
# Arabic arb, Swahili swh, Persian Western Persian pes, Malay Standard Malay zsm); Korean's
# script is Hang, not langcodes' Kore. Read both ways: pes_Arab is fa.
FLORES_CODES: dict[str, str] = {
    "ar": "arb_Arab",
    "az": "azj_Latn",
    "bg": "bul_Cyrl",
    "de": "deu_Latn",
    "el": "ell_Grek",
    "en": "eng_Latn",
    "es": "spa_Latn",
    "fr": "fra_Latn",
    "he": "heb_Hebr",
    "hi": "hin_Deva",
    "ja": "jpn_Jpan",
    "ko": "kor_Hang",
    "pl": "pol_Latn",
    "ru": "rus_Cyrl",
    "sv": "swe_Latn",
    "sw": "swh_Latn",
    "tr": "tur_Latn",
    "ur": "urd_Arab",
    "vi": "vie_Latn",
    "zh": "zho_Hans",
    "ay": "ayr_Latn",
    "fa": "pes_Arab",
    "ff": "fuv_Latn",
    "ku": "kmr_Latn",
    "lv": "lvs_Latn",
    "mg": "plt_Latn",
    "mn": "khk_Cyrl",
    "ms": "zsm_Latn",
    "ne": "npi_Deva",
    "no": "nob_Latn",
    "om": "gaz_Latn",
    "or": "ory_Orya",
    "ps": "pbt_Arab",
    "qu": "quy_Latn",
    "prs": "prs_Arab",
    "sq": "als_Latn",
    "tl": "tgl_Latn",
    "uz": "uzn_Latn",
    "yi": "ydd_Hebr",
}
_SCRIPT_NAMES = {"Kore": "Hang"}


def flores_code(language: str) -> str:
    """The FLORES-style code of an xelm language code: ``ar`` -> ``arb_Arab``; languages
    outside the table get ISO 639-3 and their likely script (``it`` -> ``ita_Latn``)."""
    import langcodes

    code = normalize_language(language)
    if code in FLORES_CODES:
        return FLORES_CODES[code]
    tag = langcodes.Language.get(code, normalize=False)  # tl is Tagalog (tgl), not fil
    script = tag.script or tag.maximize().script
    if not script:
        raise UsageError(f"no FLORES-style code for {code!r}: its script is unknown")
    return f"{tag.to_alpha3()}_{_SCRIPT_NAMES.get(script, script)}"


@functools.cache
def _flores_languages() -> dict[str, str]:
    return {flores: lang for lang, flores in FLORES_CODES.items()}


def language_of_config(config: str) -> str | None:
    """xelm's code of a per-language configuration (``arb_Arab`` -> ``ar``, ``sw`` -> ``sw``,
    ``zho_Hant`` -> ``zh-Hant``); None for one that names no language (``all_languages``)."""
    if config in _flores_languages():
        return _flores_languages()[config]
    try:
        return normalize_language(config.replace("_", "-"))
    except UsageError:
        return None


@dataclass(frozen=True)
class WayOut:
    """How the user of an evaluation set chooses another configuration, split or column: the
    end of the one-line error naming a missing one (``{title}``, ``{splits}``, ``{columns}``
    are the set's). By default only the languages are the user's to choose (an in-context
    task's dataset); :func:`eval_set_with` gives a set chosen by ``--eval-arg`` options.
    ``{template}`` is the configuration template that names the dataset's configurations
    (``{flores}``, ``{lang}``) where it is not the set's own, else ``TEMPLATE``."""

    config: str = "choose the languages with --langs"
    split: str = "{title} reads splits {splits}: pass a copy of the dataset that has them"
    column: str = "{title} reads columns {columns}: pass a copy of the dataset that has them"


EVAL_ARG_WAY_OUT = WayOut(
    config="choose the languages with --langs, or the configuration with "
    "--eval-arg config={template} (and a language's own code in it with --eval-arg "
    "lang_map=he=iw,...)",
    split="choose them with --eval-arg split=NAME[,NAME...]",
    column="choose it with --eval-arg text_column=NAME",
)


@dataclass(frozen=True)
class EvalSet:
    """Where an evaluation set's text lives on the Hub."""

    dataset: str
    title: str
    config: str  # template: {flores} or {lang}
    splits: tuple[str, ...]  # read in this order (a --limit keeps the first documents)
    text_column: str
    licence: str
    gated: bool = False
    overrides: tuple[tuple[str, str], ...] = ()  # xelm code -> configuration, where it differs
    codes: tuple[tuple[str, str], ...] = ()  # xelm code -> the dataset's {lang}, where it differs
    columns: tuple[str, ...] = ()  # what every row holds besides text_column
    way_out: WayOut = WayOut()

    def config_for(self, language: str) -> str:
        code = normalize_language(language)
        overridden = dict(self.overrides)
        if code in overridden:
            return overridden[code]
        theirs = dict(self.codes).get(code, code)
        return self.config.replace("{flores}", flores_code(code)).replace("{lang}", theirs)

    def source(self, language: str, split: str) -> DatasetSource:
        return DatasetSource(
            self.dataset,
            config=self.config_for(language),
            split=split,
            text_column=self.text_column,
            language=normalize_language(language),
        )

    def languages(self, configs: list[str] | None = None) -> dict[str, str]:
        """{xelm code: configuration} of the dataset's configurations that name a language;
        ``configs``: the configurations if the caller has listed them (else they are listed,
        a Hub request)."""
        if configs is None:
            configs = dataset_configs(self.dataset)
        found = ((language_of_config(c), c) for c in configs)
        return {language: config for language, config in found if language}

    def check_languages(self, languages: Iterable[str], configs: list[str] | None = None) -> None:
        """One line naming the first of ``languages`` whose configuration the dataset lacks,
        with the languages (and configurations) it has; ``configs`` as for :meth:`languages`."""
        if configs is None:
            configs = dataset_configs(self.dataset)
        for language in languages:
            self._check_config(self.config_for(language), configs, normalize_language(language))

    def _check_config(self, config: str, configs: list[str], language: str | None = None) -> None:
        if config not in configs:
            asked = f"{config!r} for language {language}" if language else repr(config)
            raise UsageError(
                f"{self.dataset} has no configuration {asked} (it has "
                f"{_shown_configs(configs)}); {self._way_out('config', configs)}"
            )

    def rows(self, config: str, split: str) -> Iterator[dict[str, Any]]:
        """Every row of one configuration and split; a split the dataset lacks, or a first row
        without the set's columns, is one line naming it and the choices."""
        source = DatasetSource(self.dataset, config=config, split=split)
        rows = source.rows()
        try:
            first = next(rows, None)
        except SourceUnavailable:
            raise
        except UsageError:
            self._explain(source)
            raise
        if first is None:
            return
        wanted = (self.text_column, *self.columns)
        missing = [column for column in wanted if column not in first]
        if missing:
            raise UsageError(
                f"{source.describe()} has no column {missing[0]!r} (its columns: "
                f"{', '.join(first)}); {self._way_out('column')}"
            )
        yield first
        yield from rows

    def _explain(self, source: DatasetSource) -> None:
        """A missing configuration or split of ``source`` as one line naming the choices (an
        error of another kind is the caller's to report)."""
        assert source.config is not None
        self._check_config(source.config, dataset_configs(self.dataset))
        try:
            splits = dataset_splits(self.dataset, source.config)
        except Exception:  # listing failed too: the caller reports what reading said
            return
        if source.split not in splits:
            raise UsageError(
                f"{source.describe()}: no split {source.split!r} (it has {', '.join(splits)}); "
                f"{self._way_out('split')}"
            ) from None

    def _way_out(self, what: str, configs: Iterable[str] = ()) -> str:
        text: str = getattr(self.way_out, what)
        fitting = config_template(configs)
        return text.format(
            title=self.title,
            splits=", ".join(self.splits),
            columns=", ".join((self.text_column, *self.columns)),
            template=fitting if fitting and fitting != self.config else "TEMPLATE",
        )


def config_template(configs: Iterable[str]) -> str | None:
    """The configuration template whose names ``configs`` are: ``{flores}`` for FLORES-style
    names (``eng_Latn``), ``{lang}`` for xelm's codes (``en``); None for neither."""
    for config in configs:
        language = language_of_config(config)
        if language == config:
            return "{lang}"
        if language and config == FLORES_CODES.get(language):
            return "{flores}"
    return None


def _shown_configs(configs: list[str]) -> str:
    """Configurations with the language each names, where that differs: ``ar (arb_Arab)``."""
    shown = []
    for config in configs[:SHOWN_CHOICES]:
        language = language_of_config(config)
        shown.append(config if language in (None, config) else f"{language} ({config})")
    more = len(configs) - SHOWN_CHOICES
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "") or "none"


FLORES_PLUS = EvalSet(
    dataset="openlanguagedata/flores_plus",
    title="FLORES+ devtest",
    config="{flores}",
    splits=("devtest",),
    text_column="text",
    licence="CC BY-SA 4.0",
    gated=True,
    overrides=(("zh", "cmn_Hans"),),  # FLORES+ names Mandarin cmn, FLORES-200 zho
)
SIB200_TEXT = EvalSet(
    dataset="Davlan/sib200",
    title="the FLORES-200 sentences of SIB-200 (test, validation, train: 1004 per language)",
    config="{flores}",
    splits=("test", "validation", "train"),
    text_column="text",
    licence="CC BY-SA 4.0",
)
EVAL_SETS: dict[str, EvalSet] = {s.dataset: s for s in (FLORES_PLUS, SIB200_TEXT)}


def known_eval_set(data: str) -> EvalSet | None:
    """The evaluation set a Hub id names, or a local copy of one (a directory whose last two
    path components are the id: ``mirror/Davlan/sib200``)."""
    if data in EVAL_SETS:
        return EVAL_SETS[data]
    parts = Path(data).parts
    return EVAL_SETS.get("/".join(parts[-2:])) if len(parts) >= 2 else None


def is_hub_dataset(data: str) -> bool:
    """Whether ``data`` names a dataset read through ``datasets``: a Hub id (owner/name that
    is no local path) or a local directory laid out like a Hub dataset repository."""
    return source_kind(data) in ("hf-hub", "hf-dir")


def is_local_copy(dataset: str) -> bool:
    """Whether ``dataset`` is read from a local directory (itself, or a mirror's copy)."""
    return Path(resolve_dataset(dataset)).is_dir()


def has_hub_token() -> bool:
    """Whether a Hugging Face token is configured (``HF_TOKEN`` or ``hf auth login``)."""
    from huggingface_hub import get_token

    return get_token() is not None


HELD_OUT_SPLITS = ("test", "validation", "dev", "devtest")


def held_out_split(evalset: EvalSet, languages: str | Sequence[str]) -> tuple[EvalSet, str | None]:
    """``evalset`` reading the first held-out split (:data:`HELD_OUT_SPLITS`) that the
    configurations of all ``languages`` have, with a note naming it when it is not the set's
    own; ``evalset`` as it is when they share none of them, or their splits cannot be listed
    (reading it then names the splits there are: never the training text unasked)."""
    shared = list(HELD_OUT_SPLITS)
    for language in [languages] if isinstance(languages, str) else languages:
        try:
            splits = dataset_splits(evalset.dataset, evalset.config_for(language))
        except Exception:  # listing failed: reading reports what is there, or what went wrong
            return evalset, None
        shared = [split for split in shared if split in splits]
    if not shared or (shared[0],) == evalset.splits:
        return evalset, None
    note = (
        f"{evalset.dataset} has no {evalset.splits[0]} split: reading its {shared[0]} split "
        "(--eval-arg split=NAME chooses another)"
    )
    return replace(evalset, splits=(shared[0],)), note


def usable_eval_set(chosen: EvalSet) -> tuple[EvalSet, str | None]:
    """``chosen``, or SIB-200's FLORES text when ``chosen`` is gated, not on this machine, and
    no token is configured; the second value says why it fell back (None if it did not)."""
    if not chosen.gated or is_local_copy(chosen.dataset) or has_hub_token():
        return chosen, None
    note = (
        f"{chosen.dataset} is gated and no Hugging Face token is set: evaluating on "
        f"{SIB200_TEXT.title} ({SIB200_TEXT.dataset}) instead; for {chosen.title}, accept its "
        "terms on its Hub page, then `hf auth login` or set HF_TOKEN"
    )
    return SIB200_TEXT, note


def eval_set_with(base: EvalSet, options: dict[str, Any]) -> EvalSet:
    """``base`` with ``config``, ``split`` (comma-separated) or ``text_column`` replaced, and
    with ``lang_map`` (``he=iw,en=en-multi``) the dataset's codes put in the configuration's
    ``{lang}`` where they differ from xelm's; its errors name those options (``--eval-arg``)
    as the way to choose another."""
    changes: dict[str, Any] = {"way_out": EVAL_ARG_WAY_OUT}
    if "config" in options:
        changes["config"] = str(options["config"])
        changes["overrides"] = ()
    if "lang_map" in options:
        template = changes.get("config", base.config)
        if "{lang}" not in template:
            raise UsageError(
                f"--eval-arg lang_map= puts a dataset's codes in a configuration's {{lang}}; "
                f"{base.dataset}'s is {template!r}: give --eval-arg config=... with {{lang}} too"
            )
        mapping = parse_lang_map(str(options["lang_map"]), "--eval-arg lang_map=")
        changes["codes"] = tuple(sorted(mapping.items()))
    if "split" in options:
        changes["splits"] = tuple(s.strip() for s in str(options["split"]).split(",") if s)
    if "text_column" in options:
        changes["text_column"] = str(options["text_column"])
    return replace(base, **changes)


def eval_texts(evalset: EvalSet, language: str, limit: int | None = None) -> Iterator[str]:
    """The non-empty texts of one language, split after split, at most ``limit``."""
    count = 0
    config = evalset.config_for(language)
    for split in evalset.splits:
        for number, row in enumerate(evalset.rows(config, split), 1):
            text = row[evalset.text_column]
            if not isinstance(text, str):
                raise FormatError(
                    f"{evalset.dataset} [{config}/{split}] row {number}: "
                    f"{evalset.text_column!r} is not text ({type(text).__name__})"
                )
            if not text.strip():
                continue
            if limit is not None and count >= limit:
                return
            count += 1
            yield text


__all__ = [
    "EVAL_ARG_WAY_OUT",
    "EVAL_SETS",
    "FLORES_CODES",
    "FLORES_PLUS",
    "SIB200_TEXT",
    "EvalSet",
    "WayOut",
    "config_template",
    "eval_set_with",
    "eval_texts",
    "flores_code",
    "has_hub_token",
    "is_hub_dataset",
    "known_eval_set",
    "language_of_config",
    "usable_eval_set",
]
