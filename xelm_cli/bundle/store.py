"""Expert bundles: open, verify and write them (normative text: spec/bundle-v1.md).

A bundle is a directory that transformers loads as it is, plus ``xelm.json``. Bundles are
immutable: every write builds a new directory beside the target and renames it into place, and
derived bundles hard-link (or reflink) the files they share with their parent, so a new file is
always a new inode and the parent can never change under its children.
"""

import contextlib
import errno
import fcntl
import math
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from xelm_cli import __version__
from xelm_cli.bundle import verified
from xelm_cli.bundle.fingerprint import (
    TOKENIZER_FILES,
    architecture_fingerprint,
    is_weight_file,
    reading_safetensors,
    tokenizer_fingerprint,
)
from xelm_cli.bundle.framing import Framing, bos_eos
from xelm_cli.bundle.manifest import (
    CARD_NAME,
    MANIFEST_NAME,
    ROLES,
    FileEntry,
    Manifest,
    bundle_schema,
    check_format_version,
    now_iso,
    schema_problems,
)
from xelm_cli.bundle.modelcard import render_model_card
from xelm_cli.common.atomic import (
    PARTIAL_SUFFIX,
    sealed_directory,
    write_last,
)
from xelm_cli.common.digest import sha256_bytes, sha256_file
from xelm_cli.common.errors import (
    FormatError,
    IntegrityError,
    UsageError,
    XelmError,
    exception_line,
)
from xelm_cli.common.jsonio import parse_json_object, pretty_json, short_repr
from xelm_cli.common.outputs import check_replaceable
from xelm_cli.common.progress import transformers_bars_off
from xelm_cli.common.recognise import ARCHIVE, HF_MODEL, SHARDS, TOKENIZER, what_path_is
from xelm_cli.lang.codes import normalize_language

Progress = Callable[[int], None]
MAX_SHARD_SIZE = "2GB"
_FICLONE = 0x40049409  # ioctl number of Linux FICLONE (reflink)
SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
PROBE_TOKENS = 6  # a forward that checks a model: a handful of tokens


def safetensors_elements(files: Iterable[Path]) -> dict[str, int]:
    """The floating-point elements stored in each dtype (``{"bfloat16": n, ...}``) over the
    safetensors ``files``, read from their headers (no tensor data)."""
    elements: dict[str, int] = {}
    for path in files:
        for dtype, count in safetensors_floats(path).values():
            elements[dtype] = elements.get(dtype, 0) + count
    return elements


def safetensors_floats(path: Path) -> dict[str, tuple[str, int]]:
    """Each floating-point tensor of a safetensors file: name -> (dtype, elements), read from
    its header (no tensor data)."""
    from safetensors import safe_open

    found = {}
    with reading_safetensors(path), safe_open(str(path), framework="numpy") as f:
        for name in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
            part = f.get_slice(name)
            dtype = SAFETENSORS_DTYPES.get(part.get_dtype())
            if dtype:
                found[name] = (dtype, math.prod(part.get_shape()))
    return found


def most_elements(elements: dict[str, int]) -> str | None:
    """The dtype of ``elements`` (dtype -> count) that holds the most; None for none."""
    return max(elements, key=lambda dtype: elements[dtype]) if elements else None


def what_else(path: Path) -> str:
    """What the existing non-bundle ``path`` is, where xelm knows it (``what_path_is``), with
    the way to a bundle: `` (...)`` to follow a refusal; "" for anything else."""
    what = what_path_is(path)
    way = {
        ARCHIVE: f"`xelm bundle unpack {path} -o DIR` unpacks it",
        HF_MODEL: f"`xelm bundle init --hf {path}` makes a seed bundle of it",
        SHARDS: "token data, not a model",
        TOKENIZER: "not a model",
    }.get(what or "")
    return f" (it is {what}: {way})" if what and way else f" (it is {what})" if what else ""


def _read_manifest(path: Path) -> tuple[bytes, dict[str, Any]]:
    if not path.is_dir():
        why = f"is not a directory{what_else(path)}" if path.exists() else "does not exist"
        raise UsageError(f"not a bundle: {path} {why}")
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        if holds_bundles(path):
            raise UsageError(
                f"not a bundle: {path} is a directory of bundles: pass its bundles ({path}/*)"
            )
        raise UsageError(f"not a bundle: {path} has no {MANIFEST_NAME}{what_else(path)}")
    if manifest_path.is_symlink():  # its digests would vouch for files of another bundle
        raise IntegrityError(f"{manifest_path}: a symbolic link, not the bundle's own manifest")
    raw = manifest_path.read_bytes()
    return raw, parse_json_object(raw, f"bundle manifest {manifest_path}", unique_keys=True)


def check_role(role: str) -> None:
    """Refuse a bundle role the format does not know, naming the ones it does."""
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")


def is_hidden(path: str | Path) -> bool:
    """Whether ``path`` names a hidden entry (``.NAME``): a writer's temporary
    (``.NAME.*.partial``), checkpoints (``.NAME.ckpt``), never a bundle to discover."""
    name = Path(path).name
    return name.startswith(".") and name != ".."


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a bundle directory (has a manifest) with a name that is not hidden
    (a killed writer's ``.NAME.*.partial`` may hold a manifest); nothing is read or checked."""
    return not is_hidden(path) and (Path(path) / MANIFEST_NAME).is_file()


def holds_bundles(path: Path) -> bool:
    """Whether ``path`` is a directory, not itself a bundle, with bundles directly in it
    (``runs/experts``): given where a bundle was expected, its bundles were meant."""
    return path.is_dir() and not is_bundle(path) and any(is_bundle(c) for c in path.iterdir())


def loading_problem(info: dict[str, Any]) -> str | None:
    """How the weights ``from_pretrained(output_loading_info=True)`` read do not fit the model
    (``2 missing keys (lm_head.weight, ...)``), which transformers only logs, filling in random
    weights; None when they fit. Tied weights a checkpoint legitimately omits are not missing."""
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(kind):
            names = sorted(map(str, info[kind]))
            return f"{len(names)} {kind.replace('_', ' ')} ({names[0][:100]}, ...)"
    return None


def causal_lm_class(config: Any) -> Any:
    """The transformers class ``AutoModelForCausalLM`` builds for ``config``; None for a
    config it has no class for (a model with its own code)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    mapping: Any = MODEL_FOR_CAUSAL_LM_MAPPING
    return mapping.get(type(config), None)


def _kept_in_float32(config: Any) -> list[str]:
    """The names (parts of tensor names) that the config's causal-LM class keeps in float32
    whatever dtype it is loaded in (``_keep_in_fp32_modules``): left as stored by
    ``Bundle.read_weights``, for ``from_pretrained`` to treat as it does from the files."""
    model_class = causal_lm_class(config)
    groups = ("_keep_in_fp32_modules", "_keep_in_fp32_modules_strict")
    return [name for group in groups for name in getattr(model_class, group, None) or []]


def load_causal_lm(source: str | Path, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """``AutoModelForCausalLM.from_pretrained(source, **kwargs)`` without transformers' progress
    bars (xelm's own are on stderr), and its loading information (see :func:`loading_problem`)."""
    from transformers import AutoModelForCausalLM

    with transformers_bars_off():
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            source, output_loading_info=True, **kwargs
        )
    return loaded


def probe_ids(model: Any) -> Any:
    """The input of a short forward that checks how a model computes: ``PROBE_TOKENS`` token
    ids (0, 1, ... modulo its vocabulary) as a batch of one, on the model's device."""
    import torch

    device = next(model.parameters()).device
    return torch.arange(PROBE_TOKENS, device=device)[None] % model.config.vocab_size


@dataclass
class Bundle:
    """An opened bundle. ``digest`` (sha256 of ``xelm.json``) is its content identity."""

    ROLES: ClassVar[tuple[str, ...]] = ROLES  # a manifest's roles (spec/bundle-v1.md)

    path: Path
    manifest: Manifest
    digest: str

    def __fspath__(self) -> str:
        """Its directory: a bundle goes wherever a path to one does (``Path(bundle)``)."""
        return os.fspath(self.path)

    @classmethod
    def read(cls, path: str | Path) -> "Bundle":
        """The bundle's manifest only, checked against the schema; files are not looked at."""
        path = Path(path)
        raw, data = _read_manifest(path)
        return cls(path, Manifest.from_dict(data, what=str(path)), sha256_bytes(raw))

    @classmethod
    def of(cls, bundle: "Bundle | str | Path") -> "Bundle":
        """``bundle`` itself, or :meth:`read` of that directory (as a Python caller names a
        bundle: the object or its path)."""
        return bundle if isinstance(bundle, Bundle) else cls.read(bundle)

    @classmethod
    def open(
        cls, path: str | Path, *, verify: bool = True, progress: Progress | None = None
    ) -> "Bundle":
        """Open a bundle: check every file's presence and size, and with ``verify`` its sha256
        (files unchanged since an earlier verification are not hashed again: bundle.verified).
        """
        bundle = cls.read(path)
        bundle.check_files(hash_files=verify, progress=progress)
        return bundle

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def name(self) -> str:
        return self.manifest.name or self.path.name

    @property
    def languages(self) -> list[str]:
        return list(self.manifest.languages)

    @property
    def ref(self) -> dict[str, str]:
        """How other manifests point at this bundle."""
        return {"id": self.id, "digest": self.digest}

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self.manifest.files.values())

    def file_problems(
        self,
        *,
        hash_files: bool = True,
        progress: Progress | None = None,
        use_cache: bool = True,
    ) -> list[str]:
        """Missing, changed, unlisted or non-regular files, one line each.

        With ``hash_files``, files whose stat signature is the one remembered from an earlier
        verification are not hashed again unless ``use_cache`` is false.
        """
        problems = []
        if self.manifest.edited:
            problems.append(
                f"{MANIFEST_NAME}: edited after it was written (content_digest differs)"
            )
        remembered = verified.remembered(self.digest, self.path) if hash_files else {}
        known = remembered if use_cache else {}
        matched: dict[str, verified.Signature] = {}
        started = verified.now_ns()
        for name, entry in sorted(self.manifest.files.items()):
            file = self.path / name
            try:
                info = file.lstat()
            except FileNotFoundError:
                problems.append(f"{name}: missing")
                continue
            except OSError as exc:
                problems.append(f"{name}: cannot be read ({exc.strerror or exc})")
                continue
            if not stat.S_ISREG(info.st_mode):
                problems.append(f"{name}: not a regular file")
            elif info.st_size != entry.size:
                problems.append(f"{name}: size {info.st_size} bytes, manifest says {entry.size}")
            elif hash_files:
                sig = verified.signature(info)
                if known.get(name) == sig:
                    if progress:
                        progress(entry.size)  # verified before, unchanged since
                elif sha256_file(file, progress) != entry.sha256:
                    problems.append(f"{name}: sha256 does not match the manifest (content changed)")
                    continue
                matched[name] = sig
        listed = set(self.manifest.files) | {MANIFEST_NAME}
        for child in sorted(self.path.iterdir()):
            if child.name not in listed:
                problems.append(f"{child.name}: not listed in the manifest")
        if hash_files and not problems:
            verified.remember(self.digest, self.path, matched, started, remembered)
        return problems

    def fingerprint_problems(self) -> list[str]:
        problems = []
        for kind, compute in (
            ("architecture", architecture_fingerprint),
            ("tokenizer", tokenizer_fingerprint),
        ):
            try:
                actual = compute(self.path)
            except FormatError as exc:
                problems.append(f"{kind} fingerprint: {exc}")
                continue
            if actual != self.manifest.fingerprints[kind]:
                problems.append(f"{kind} fingerprint does not match the files")
        return problems

    def _code_key(self) -> str:
        """What names this bundle's own code, byte for byte: the SHA-256 of the canonical form
        of ``{file name: sha256}`` over its ``.py`` files, read from the files themselves."""
        from xelm_cli.common.jsonio import canonical_json

        code = {f.name: sha256_file(f) for f in sorted(self.path.glob("*.py"))}
        return sha256_bytes(canonical_json(code)).removeprefix("sha256:")

    def trust_code(self) -> None:
        """Trust this bundle's own code (its ``.py`` files, as they are now) on this machine:
        bundles that hold the same code and record ``source.trust_remote_code`` may run it
        (``runs_trusted_code``). ``bundle init --trust-remote-code`` calls it: the user asked."""
        marker = self._trust_marker()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{self.path}\n", encoding="utf-8")

    def _trust_marker(self) -> Path:
        """The file whose presence says this machine trusted this bundle's code."""
        return verified.cache_root().parent / "trusted-code" / self._code_key()

    def runs_trusted_code(self) -> bool:
        """Whether loading this bundle runs its own code: its line was made with ``bundle init
        --trust-remote-code`` (its init step's ``source.trust_remote_code``), its configs'
        ``auto_map`` name classes of its own ``.py`` files (never another repository's, which
        transformers would fetch from the Hub), and this very code was trusted on this machine
        (``trust_code``): the record alone is not enough, being whatever the bundle's writer
        put there."""
        if self.manifest.origin.get("trust_remote_code") is not True:
            return False
        code = sorted(f.name for f in self.path.glob("*.py"))
        refs: list[tuple[str, str]] = []
        for name in ("config.json", "tokenizer_config.json"):
            path = self.path / name
            data = parse_json_object(path.read_bytes(), str(path)) if path.is_file() else {}
            auto_map = data.get("auto_map") or {}
            entries = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
            for entry in entries:  # a class, or [slow, fast] tokenizer classes (or null)
                classes = entry if isinstance(entry, list) else [entry]
                refs += [(name, str(ref)) for ref in classes if ref]
        if not refs:
            return False  # nothing of its own to run (a merge into a known architecture)
        for name, ref in refs:  # "module.Class", the module one of the bundle's .py files
            if f"{ref.rpartition('.')[0]}.py" not in code:
                raise FormatError(
                    f"{self.path}: {name} names code outside the bundle ({ref[:100]}); "
                    "xelm runs only a bundle's own code"
                )
        if not self._trust_marker().is_file():
            raise FormatError(
                f"{self.path}: runs its own code ({', '.join(code)}), which was not trusted on "
                "this machine; `xelm bundle init --hf MODEL --trust-remote-code` of the model "
                "it came from trusts it"
            )
        return True

    def load_config(self) -> Any:
        """The model's config (``AutoConfig``), with the bundle's own code when
        ``runs_trusted_code``: no weights read, no files verified."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.path, trust_remote_code=self.runs_trusted_code())

    def load_model(
        self, *, verify: bool = True, trust_remote_code: bool = False, **kwargs: Any
    ) -> Any:
        """The model, via ``AutoModelForCausalLM.from_pretrained`` (safetensors only), running
        the bundle's own code with ``trust_remote_code`` or when ``runs_trusted_code``."""
        if verify:
            self.check_files()
        trust = trust_remote_code or self.runs_trusted_code()
        wants_info = kwargs.pop("output_loading_info", False)
        with self._load_errors("model"):
            model, info = load_causal_lm(
                self.path, use_safetensors=True, trust_remote_code=trust, **kwargs
            )
        problem = loading_problem(info)
        if problem:
            raise FormatError(f"{self.path}: the weights do not fit the model's config: {problem}")
        return (model, info) if wants_info else model

    def read_weights(self, dtype: Any) -> dict[str, Any]:
        """The model's tensors from its safetensors files (checked first, as by ``load_model``),
        the floating-point ones in ``dtype`` but for those its class keeps in float32, for
        ``model_from_weights``. Safe on a background thread while another computes: it touches
        no process-wide torch state. (Not pinned: torch caches freed pinned memory, rounded up
        to powers of two, which for large experts would keep gigabytes of the host's memory.)"""
        from safetensors import safe_open

        self.check_files()
        keep = _kept_in_float32(self.load_config())
        weights = {}
        for path in sorted(self.path.glob("*.safetensors")):
            with reading_safetensors(path), safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                    tensor = f.get_tensor(name)
                    if tensor.is_floating_point() and not any(k in name for k in keep):
                        tensor = tensor.to(dtype)
                    weights[name] = tensor
        return weights

    def model_from_weights(self, weights: dict[str, Any], dtype: Any) -> Any:
        """``load_model(dtype=dtype, verify=False)`` built from ``weights`` (``read_weights``)
        instead of the files, on this thread: transformers sets the process-wide default dtype
        while it builds a model. A bundle that runs its own code is loaded from its files."""
        config = self.load_config()
        model_class = causal_lm_class(config)
        if self.runs_trusted_code() or model_class is None:
            return self.load_model(dtype=dtype, verify=False)
        with self._load_errors("model"), transformers_bars_off():
            model, info = model_class.from_pretrained(
                None, config=config, state_dict=weights, dtype=dtype, output_loading_info=True
            )
        problem = loading_problem(info)
        if problem:
            raise FormatError(f"{self.path}: the weights do not fit the model's config: {problem}")
        return model

    def stored_dtypes(self) -> dict[str, str]:
        """Each floating-point tensor's stored dtype by name (``{"model.norm.weight":
        "float32", ...}``), read from the safetensors headers."""
        found: dict[str, str] = {}
        for path in sorted(self.path.glob("*.safetensors")):
            found |= {name: dtype for name, (dtype, _) in safetensors_floats(path).items()}
        return found

    def weights_dtype(self) -> str:
        """The floating dtype most of the weights are stored in (``bfloat16``, ``float32``, ...),
        read from the safetensors headers."""
        dtype = most_elements(safetensors_elements(sorted(self.path.glob("*.safetensors"))))
        if dtype is None:
            raise FormatError(f"{self.path}: no floating-point weights")
        return dtype

    def framing(self, tokenizer: Any = None) -> Framing:
        """How documents are framed for this model (xelm_cli.bundle.framing): the recorded framing,
        or ``bos doc eos`` of its tokenizer for a bundle written before the field existed."""
        recorded = self.manifest.framing
        if recorded is not None:
            return Framing.from_record(recorded)
        return bos_eos(tokenizer if tokenizer is not None else self.load_tokenizer(verify=False))

    def load_tokenizer(self, *, verify: bool = True, trust_remote_code: bool = False) -> Any:
        """The tokenizer, via ``AutoTokenizer.from_pretrained``, running the bundle's own code
        with ``trust_remote_code`` or when ``runs_trusted_code``."""
        from transformers import AutoTokenizer

        if verify:
            self.check_files()
        trust = trust_remote_code or self.runs_trusted_code()
        with self._load_errors("tokenizer"):
            return AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust)

    @contextlib.contextmanager
    def _load_errors(self, what: str) -> Iterator[None]:
        """transformers raises many kinds of exceptions for files it cannot use (bad configs,
        hostile safetensors headers, remote code refused): one line naming the bundle."""
        try:
            yield
        except XelmError:
            raise
        except Exception as exc:
            raise FormatError(
                f"{self.path}: cannot load the {what}: {exception_line(exc, with_type=True)}"
            ) from None

    def check_files(
        self, *, hash_files: bool = True, progress: Progress | None = None, use_cache: bool = True
    ) -> None:
        """Raise IntegrityError naming the first file problem (see ``file_problems``)."""
        problems = self.file_problems(hash_files=hash_files, progress=progress, use_cache=use_cache)
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise IntegrityError(
                f"{self.path}: {problems[0]}{more}; run `xelm bundle verify {self.path}`"
            )


_PICKLE_SUFFIXES = (".bin", ".pt", ".pkl")  # spec 1.2: pickle-based files MUST NOT appear
_ONE_PARENT = ("branch", "train", "hmr-branch")
_WEIGHTED = ("merge", "average")


def rule_problems(data: dict[str, Any]) -> list[str]:
    """Breaches of the spec's MUST rules that the schema cannot express, in a manifest that is
    valid against the schema: one line each, naming the member and the spec section."""
    problems = []
    files = data["files"]
    for name in sorted(files):
        if name.endswith(_PICKLE_SUFFIXES):
            problems.append(
                f"files/{name}: a pickle-based file; weights must be safetensors (spec 1.2)"
            )
    if CARD_NAME not in files:
        problems.append(f"files: {CARD_NAME}, the model card, is not listed (spec 6)")
    problems += _repeated_languages(data["languages"])
    first_parents: dict[str, int] = {}  # step i's first parent is what step i-1 made
    for i, step in enumerate(data["lineage"]):
        relation, parents = step["relation"], step["parents"]
        if parents and (j := first_parents.setdefault(parents[0]["digest"], i)) != i:
            problems.append(
                f"lineage/{i}: its first parent is lineage/{j}'s too; every step makes "
                "another bundle (spec 3.2)"
            )
        if i == 0 and relation != "init":
            problems.append(f"lineage/0: the first step is {relation!r}, not 'init' (spec 3.2)")
        elif i > 0 and relation == "init":
            problems.append(f"lineage/{i}: 'init' after the first step (spec 3.2)")
        if relation in _ONE_PARENT and len(parents) != 1:
            problems.append(
                f"lineage/{i}: {relation!r} with {len(parents)} parents, not one (spec 3.2)"
            )
        weights = step.get("weights")
        if relation in _WEIGHTED and weights is not None:
            if len(weights) != len(parents):
                problems.append(
                    f"lineage/{i}/weights: {len(weights)} weight(s) for {len(parents)} parents "
                    "(spec 3.2)"
                )
            elif not math.isclose(math.fsum(weights), 1.0, abs_tol=1e-6):
                problems.append(
                    f"lineage/{i}/weights: they sum to {math.fsum(weights):.6g}, not 1 (spec 3.2)"
                )
    return problems


def _repeated_languages(tags: list[str]) -> list[str]:
    """Two tags of one language (``he`` and ``iw``): which one a reader keeps would decide
    what the bundle is for. A tag xelm does not know is left to the schema's pattern."""
    seen: dict[str, str] = {}
    problems = []
    for tag in tags:
        with contextlib.suppress(UsageError):
            code = normalize_language(tag)
            if code in seen:
                problems.append(
                    f"languages: {short_repr(seen[code])} and {short_repr(tag)} are one "
                    "language (spec 3)"
                )
            seen.setdefault(code, tag)
    return problems


def verify_bundle(path: str | Path, progress: Progress | None = None) -> list[str]:
    """Every problem with a bundle, in this order: format, schema and the spec's other rules
    for the manifest; files and digests; fingerprints (when the files are intact). A manifest
    that breaks the schema stops there: nothing else can be read from it."""
    path = Path(path)
    if is_hidden(path) and path.name.endswith(PARTIAL_SUFFIX):
        return [
            "a writer's temporary folder (its write was killed, or is still running), not a "
            "bundle: write the bundle again"
        ]
    try:
        raw, data = _read_manifest(path)
        check_format_version(data, str(path))
    except (UsageError, FormatError) as exc:
        return [str(exc)]
    problems = schema_problems(data)
    if problems:
        return problems
    bundle = Bundle(path, Manifest.from_dict(data, str(path)), sha256_bytes(raw))
    problems = rule_problems(data)
    broken_files = bundle.file_problems(progress=progress, use_cache=False)
    return problems + (broken_files or bundle.fingerprint_problems())


def new_bundle_id() -> str:
    return uuid.uuid4().hex


def link_or_copy(src: Path, dst: Path) -> str:
    """Share ``src``'s content at ``dst``: hard link, else reflink, else copy; says which."""
    try:
        os.link(src, dst)
        return "hardlink"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            return "reflink"
        except OSError:
            pass
    shutil.copyfile(src, dst)
    return "copy"


def _written_by_save_model(name: str) -> bool:
    return is_weight_file(name) or name in ("config.json", "generation_config.json")


def _stamp(info: os.stat_result) -> tuple[int, int, int]:
    """What tells that a file is still the one whose digest was taken: a replacement has another
    inode, a rewrite another size or modification time (linking or chmod change neither)."""
    return (info.st_ino, info.st_size, info.st_mtime_ns)


class BundleWriter:
    """Files of a bundle being written; becomes a bundle when its ``write_bundle`` block ends.

    What ``with write_bundle(...) as writer`` yields (exported by ``xelm_cli.api``): in the
    block, ``directory`` (the temporary directory), ``save_model``, ``save_tokenizer``,
    ``write_bytes`` and ``remove`` write its files; after it, ``result`` is the new
    :class:`Bundle` (None until the block has ended).
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.result: Bundle | None = None
        # Files whose digests are known without reading them, with their stamp at the time:
        # those shared with the parent (what makes branching O(1) in model size) and those
        # hashed as they were written (record_written).
        self._known: dict[str, tuple[FileEntry, tuple[int, int, int]]] = {}
        self._linked: dict[str, verified.Relink] = {}  # the parent's files hard-linked here
        self._manifest: bytes | None = None  # xelm.json, once finish() has made it

    def inherit(self, parent: Bundle, names: Iterable[str]) -> None:
        for name in names:
            source, target = parent.path / name, self.directory / name
            before = verified.signature(source.lstat())
            if link_or_copy(source, target) == "hardlink":
                after = target.lstat()
                self._known[name] = (parent.manifest.files[name], _stamp(after))
                self._linked[name] = (before, verified.signature(after))

    def record_written(self, entries: dict[str, FileEntry]) -> None:
        """Digests of files just written into the bundle, hashed as they were written
        (tensor_stream.write_sharded): finish() takes them instead of reading the files back,
        unless a file was replaced or rewritten since."""
        for name, entry in entries.items():
            self._known[name] = (entry, _stamp((self.directory / name).stat()))

    def remove(self, predicate: Callable[[str], bool]) -> None:
        """Drop files (e.g. inherited weights) before writing their replacements."""
        for child in list(self.directory.iterdir()):
            if predicate(child.name):
                child.unlink()
                self._known.pop(child.name, None)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.remove(lambda n: n == name)  # never write through a link into the parent's file
        (self.directory / name).write_bytes(data)

    def save_model(self, model: Any) -> None:
        """Write ``model``'s config and safetensors weights, replacing any inherited ones."""
        self.remove(_written_by_save_model)
        with transformers_bars_off():
            self._save_apart(
                lambda folder: model.save_pretrained(folder, max_shard_size=MAX_SHARD_SIZE)
            )

    def save_tokenizer(self, tokenizer: Any) -> None:
        self.remove(lambda n: n in TOKENIZER_FILES)
        if isinstance(getattr(tokenizer, "chat_template", None), dict):
            # several named templates: transformers would write the extra ones into a folder
            # (additional_chat_templates/), and a bundle holds only files: keep them all in
            # tokenizer_config.json, which every transformers version reads
            self._save_apart(
                lambda folder: tokenizer.save_pretrained(folder, save_jinja_files=False)
            )
        else:
            self._save_apart(tokenizer.save_pretrained)

    def _save_apart(self, save: Callable[[Path], object]) -> None:
        """Run ``save(folder)`` (a ``save_pretrained``) in a new empty folder, then move what it
        wrote into the bundle. A rename replaces an inherited hard link; the save itself would
        open the link for writing (transformers copies a model's own code over an existing
        file) and so change the parent bundle's file."""
        scratch = Path(tempfile.mkdtemp(prefix=".save.", dir=self.directory))
        try:
            save(scratch)
            for produced in sorted(scratch.iterdir()):
                os.replace(produced, self.directory / produced.name)
                self._known.pop(produced.name, None)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _file_entries(self, progress: Progress | None) -> dict[str, FileEntry]:
        entries = {}
        for child in sorted(self.directory.iterdir()):
            info = child.lstat()
            if not stat.S_ISREG(info.st_mode):
                raise FormatError(f"bundle may hold only regular files; {child.name} is not one")
            if child.name in (MANIFEST_NAME, CARD_NAME):
                continue
            known = self._known.get(child.name)
            if known and known[1] == _stamp(info) and known[0].size == info.st_size:
                entries[child.name] = known[0]
            else:
                entries[child.name] = FileEntry(sha256_file(child, progress), info.st_size)
        return entries

    def finish(
        self,
        *,
        role: str,
        languages: list[str],
        lineage: list[dict[str, Any]],
        name: str,
        allocation: dict[str, Any] | None,
        training: dict[str, Any] | None,
        progress: Progress | None,
        framing: dict[str, Any] | None = None,
    ) -> Manifest:
        files = self._file_entries(progress)
        manifest = Manifest(
            id=new_bundle_id(),
            name=name,
            role=role,
            languages=languages,
            lineage=lineage,
            files=files,
            fingerprints={
                "architecture": architecture_fingerprint(self.directory),
                "tokenizer": tokenizer_fingerprint(self.directory),
            },
            allocation=allocation,
            training=training,
            framing=framing,
            created_by={"xelm": __version__},
            created_at=now_iso(),
        )
        card = render_model_card(manifest).encode()
        (self.directory / CARD_NAME).unlink(missing_ok=True)
        (self.directory / CARD_NAME).write_bytes(card)
        manifest.files[CARD_NAME] = FileEntry(sha256_bytes(card), len(card))
        data = manifest.to_dict()
        problems = schema_problems(data) or rule_problems(data)
        if problems:  # a bug or bad input upstream: never write a bundle that would not verify
            raise FormatError(f"refusing to write an invalid manifest: {problems[0]}")
        for child in self.directory.iterdir():
            if stat.S_IMODE(child.lstat().st_mode) != 0o444:
                child.chmod(0o444)  # immutable by convention; hard links share this mode
        self._manifest = pretty_json(data)  # written by seal(), once the rest is on disk
        return manifest

    def seal(self) -> None:
        """Write ``xelm.json``, the file that makes the directory a bundle: after every other
        file is on disk (write_bundle calls it right before the directory's rename), through
        a temporary name, so a writer killed at any point leaves no directory with a
        manifest whose files are incomplete (spec section 2)."""
        if self._manifest is None:
            raise RuntimeError("BundleWriter.seal() before finish()")
        write_last(self.directory, MANIFEST_NAME, self._manifest)


def check_output(
    out: str | Path, *, overwrite: bool = False, inputs: Iterable[str | Path] = ()
) -> None:
    """Refuse, in one line and before any input is read, an output directory that a bundle
    writer must not write (the shared check of every bundle writer: init, branch, merge, moe,
    train, unpack):

    - ``out`` inside a bundle (spec section 1: a bundle holds no folders);
    - ``out`` that is, holds or lies inside one of ``inputs`` (what the command reads);
    - an existing ``out`` without ``overwrite``; with it, anything but a bundle (a folder with
      ``xelm.json``) or an empty folder, and the current directory or a folder above it.

    The shared output check (:func:`xelm_cli.common.outputs.check_replaceable`) with a bundle
    as the writer's own kind: the ``--force`` hint only where ``--force`` would be accepted.
    """
    check_replaceable(
        out,
        overwrite=overwrite,
        inputs=inputs,
        own=lambda path: path.is_dir() and (path / MANIFEST_NAME).is_file(),
        kind="a bundle",
        unlike=f"a folder but no bundle (it has no {MANIFEST_NAME})",
    )


def _manifest_name(name: str | None, out: Path) -> str:
    """The new manifest's ``name``: ``name``, refused when longer than the format allows, or by
    default the output folder's name cut to that length (a file system allows longer ones)."""
    limit: int = bundle_schema()["properties"]["name"]["maxLength"]
    if not name:
        return out.name[:limit]
    if len(name) > limit:
        raise UsageError(
            f"bundle name {short_repr(name)} has {len(name)} characters; "
            f"a bundle's name has at most {limit} characters"
        )
    return name


@contextlib.contextmanager
def write_bundle(
    out: str | Path,
    *,
    role: str,
    languages: list[str],
    step: dict[str, Any],
    parent: Bundle | None = None,
    name: str | None = None,
    allocation: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    overwrite: bool = False,
    inherit_weights: bool = True,
    progress: Progress | None = None,
    framing: Framing | None = None,
) -> Iterator[BundleWriter]:
    """Write a new bundle at ``out`` atomically: a context manager yielding a
    :class:`BundleWriter`, whose ``result`` is the new bundle once the block has ended::

        with write_bundle(out, role="expert", languages=["tr"], step=step, parent=parent) as w:
            w.save_model(model)
        return w.result

    ``step`` is the lineage step that makes this bundle (relation, parents, details); with a
    ``parent`` the new bundle starts as links to all of the parent's files (without its weights
    and config when ``inherit_weights`` is false: a trainer writes its own, and on another file
    system a link would be a copy) and continues its lineage, and its ``framing`` unless one is
    given, but not its allocation reference (pass ``allocation=parent.manifest.allocation`` to
    keep it: a merge or an MoE built from experts is no expert of theirs). ``languages`` are
    stored normalised (``tur`` as ``tr``), without repeats. The manifest's name is ``name``
    (refused before anything is written when longer than the format allows) or ``out``'s folder
    name cut to that length. On any exception nothing is left at ``out``.

    ``out`` is refused as :func:`check_output` says, with the parent as an input; commands
    call :func:`check_output` with all their inputs themselves, before they read them.
    ``xelm.json`` is written last, once every other file is on disk, right before the
    directory is renamed into place.
    """
    out = Path(out)
    sources = [parent.path] if parent is not None else []
    check_output(out, overwrite=overwrite, inputs=sources)
    manifest_name = _manifest_name(name, out)
    languages = list(dict.fromkeys(normalize_language(code) for code in languages))
    lineage = [*(parent.manifest.lineage if parent else []), {**step, "at": now_iso()}]
    writer: BundleWriter | None = None

    def seal(_: Path) -> None:
        check_output(out, overwrite=overwrite, inputs=sources)  # still so, after the writing
        assert writer is not None
        writer.seal()

    with sealed_directory(out, overwrite=overwrite, last=seal) as tmp:
        writer = BundleWriter(tmp)
        if parent is not None:
            shared = [
                name
                for name in parent.manifest.files
                if name != CARD_NAME and (inherit_weights or not _written_by_save_model(name))
            ]
            writer.inherit(parent, shared)
        yield writer
        writer.finish(
            role=role,
            languages=languages,
            lineage=lineage,
            name=manifest_name,
            allocation=allocation,
            training=training,
            progress=progress,
            framing=framing.record() if framing else parent.manifest.framing if parent else None,
        )
    if parent is not None:
        verified.relinked(parent.digest, parent.path, writer._linked)
    writer.result = Bundle.open(out, verify=False)
