"""Shared fixtures: a real tokenizer trained on sample text, real tiny bundles, installed
plugin fixtures, and the shards, MoE bundles and tiny experts that several modules test with."""

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

# Before xelm_cli (and typer, rich, transformers) is imported, for this process and the
# subprocesses it starts: the terminal's settings would change the help and error text that
# tests compare (typer reads TERMINAL_WIDTH, rich consoles COLUMNS, when they are created), and
# Hugging Face caches (transformers copies remote code into HF_HOME when it is imported) go
# to a fresh temporary directory, not the user's.
for name in ("COLUMNS", "LINES", "TERMINAL_WIDTH", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE"):
    os.environ.pop(name, None)
for name in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_MODULES_CACHE"):  # would override HF_HOME
    os.environ.pop(name, None)
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="xelm-tests-hf-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
# A suite started with SIGINT ignored (nohup, `pytest &` in a script) passes that on to the
# commands its tests interrupt: they are to get Ctrl-C as from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from xelm_cli.data.tokenizer import train_bpe_tokenizer  # noqa: E402
from xelm_cli.plugin import host  # noqa: E402
from xelm_cli.plugin.registry import Registry  # noqa: E402

if TYPE_CHECKING:
    from xelm_cli.bundle.store import Bundle
    from xelm_cli.plugin.conformance import TinyExperts

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data, or (on a machine without it: benchmarks/gpu.py's cuda-tests section) a folder
# holding the parts the tests read
SHARED_DATA = Path(os.environ.get("XELM_TEST_DATA") or ROOT.parent / "shared" / "data")
FIXTURES = Path(__file__).parent / "fixtures"
TEST_LANGS = ("en", "tr", "ar", "ru")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Remembered verifications go to a temporary cache, not the user's (subprocesses too)."""
    os.environ["XELM_CACHE_DIR"] = str(tmp_path_factory.mktemp("xelm-cache"))
    # progress lines in logs every minute would land in the stderr that tests compare whole
    # when a step runs long on a slow machine; tests/test_progress_log.py turns them on
    os.environ["XELM_PROGRESS_SECONDS"] = "0"


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A registry of the installed plugins alone (XELM_PLUGINS unset), fresh for the test and
    dropped after it: tests that register plugins in-process use it (``pytestmark``)."""
    monkeypatch.delenv(host.PLUGINS_ENV, raising=False)
    host.reset_registry()
    yield
    host.reset_registry()


def weights(bundle: Path) -> dict[str, torch.Tensor]:
    return load_file(str(bundle / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    """Whether two bundles hold the same tensors, bit for bit."""
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[name], wb[name]) for name in wa)


def flip_byte(path: Path, keep_mtime: bool = False) -> None:
    """Change one byte in the middle, keeping the size (and with ``keep_mtime`` the mtime)."""
    info = path.stat()
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(info.st_size // 2)
        byte = f.read(1)
        f.seek(info.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    path.chmod(info.st_mode & 0o777)
    if keep_mtime:
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def sample_texts() -> list[str]:
    """Real multilingual text (UDHR) from ../shared/data, a few languages."""
    texts = []
    for lang in TEST_LANGS:
        path = SHARED_DATA / "eval" / "udhr" / f"{lang}.txt"
        texts += [line for line in path.read_text().splitlines() if line.strip()]
    return texts


def train_tokenizer(out: Path, vocab_size: int = 320) -> Path:
    return train_bpe_tokenizer(sample_texts(), out, vocab_size=vocab_size)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tok")


@pytest.fixture(scope="session")
def seed_bundle(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A tiny randomly initialised seed bundle. Session-wide: tests must not modify it."""
    from xelm_cli.bundle.seed import init_from_config

    out = tmp_path_factory.mktemp("bundles") / "seed"
    init_from_config("tiny", tokenizer_dir, out, languages=list(TEST_LANGS))
    return out


def xelm(
    *args: object, sites: Sequence[Path], plugins: str | None = None, timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m xelm_cli`` with the given plugin sites (from ``install``) on its path."""
    env = {k: v for k, v in os.environ.items() if k not in (host.PLUGINS_ENV, "XELM_DEBUG")}
    inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    env["PYTHONPATH"] = os.pathsep.join([*(str(site) for site in sites), *inherited])
    if plugins is not None:
        env[host.PLUGINS_ENV] = plugins
    return subprocess.run(
        [sys.executable, "-m", "xelm_cli", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def installed_sites(
    monkeypatch: pytest.MonkeyPatch, sites: Sequence[Path], packages: Sequence[str] = ()
) -> Iterator[Registry]:
    """The plugin sites importable in this process and their entry points in a fresh registry;
    afterwards the registry forgotten and ``packages`` unimported."""
    monkeypatch.delenv(host.PLUGINS_ENV, raising=False)
    for site in sites:
        monkeypatch.syspath_prepend(str(site))
    host.reset_registry()
    yield host.get_registry()
    host.reset_registry()
    for name in [m for m in sys.modules if m.split(".")[0] in packages]:
        del sys.modules[name]


def install(fixture: str, target: Path) -> Path:
    """pip-install a fixture distribution into ``target`` (built from a copy: no build/ litter)."""
    source = target.parent / f"{fixture}-src"
    shutil.copytree(FIXTURES / fixture, source)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-index",
            "--no-build-isolation",
            "--no-deps",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


@pytest.fixture(scope="session")
def hello_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install("xelm-hello-plugin", tmp_path_factory.mktemp("hello") / "site")


@pytest.fixture(scope="session")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install("xelm-broken-plugin", tmp_path_factory.mktemp("broken") / "site")


# --- fixtures of several modules: each module builds its own (scope "module") -------------------


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> Path:
    """Shards of the first 400 training documents of each test language, with the seed's
    tokenizer (6000 tokens at most a language)."""
    from corpus_helpers import corpus_slice

    from xelm_cli.data.prepare import prepare

    root = tmp_path_factory.mktemp("train")
    source = corpus_slice("train", 400, root / "corpus")
    prepare(source, seed_bundle, root / "shards", token_caps=6000)
    return root / "shards"


@pytest.fixture(scope="module")
def valid_shards(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> Path:
    """Shards of the first 100 validation documents of each test language (1500 tokens at
    most a language)."""
    from corpus_helpers import corpus_slice

    from xelm_cli.data.prepare import prepare

    root = tmp_path_factory.mktemp("valid")
    source = corpus_slice("valid", 100, root / "corpus")
    prepare(source, seed_bundle, root / "shards", token_caps=1500)
    return root / "shards"


@pytest.fixture(scope="module")
def expert_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 120 training documents of each test language: what the TF-IDF expert tests
    fit their allocations on and prepare each expert's shards from."""
    from corpus_helpers import corpus_slice

    return corpus_slice("train", 120, tmp_path_factory.mktemp("expert-corpus") / "corpus")


@pytest.fixture(scope="module")
def moe_experts(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> list[Path]:
    """An English and a Turkish expert whose MLPs differ."""
    from merge_helpers import mlp_experts

    experts = mlp_experts(seed_bundle, tmp_path_factory.mktemp("moe-experts"), ("en", "tr"))
    return [expert.path for expert in experts]


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory, moe_experts: list[Path]) -> "Bundle":
    """The MoE of ``moe_experts``, top-1 of a random gate."""
    from xelm_cli.bundle.moe import build_moe

    out = tmp_path_factory.mktemp("moe-train") / "moe"
    return build_moe(moe_experts, out, top_k=1, gate="random")


@pytest.fixture(scope="module")
def moe_shards(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> Path:
    """Shards of the first 100 training documents of each test language (3000 tokens at most
    a language), for the MoE fine-tuning tests."""
    from corpus_helpers import corpus_slice

    from xelm_cli.data.prepare import prepare

    root = tmp_path_factory.mktemp("moe-shards")
    prepare(
        corpus_slice("train", 100, root / "corpus"), seed_bundle, root / "shards", token_caps=3000
    )
    return root / "shards"


@pytest.fixture(scope="module")
def tiny_experts(tmp_path_factory: pytest.TempPathFactory) -> "TinyExperts":
    """The conformance checks' tiny experts and their corpus, for the evaluator, router and
    plugin check tests."""
    from xelm_cli.plugin import conformance

    return conformance.build_tiny_experts(tmp_path_factory.mktemp("contract") / "experts")
