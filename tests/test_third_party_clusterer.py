"""A third-party clusterer (tests/fixtures/xelm-chunks-clusterer, pip-installed, entry point
``chunks``) with declared options: used from Python through ``xelm_cli.api.cluster`` and its
own ``fit``, and from the command line through the ``xelm cluster chunks`` xelm builds for it."""

import json
from collections.abc import Callable, Iterator
from dataclasses import make_dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import install, installed_sites, xelm

from xelm_cli.api import Clusterer, PluginError, UsageError, hookimpl, option, write_allocation
from xelm_cli.cli import run
from xelm_cli.cluster.assigning import expert_documents
from xelm_cli.data.source_plan import SourceOptions
from xelm_cli.plugin import host

LANGS = "tr,en,ru,ar,de"
PROVENANCE = {
    "name": "chunks",
    "plugin": "chunks",
    "distribution": "xelm-chunks-clusterer",
    "version": "0.1.0",
}


@pytest.fixture(scope="module")
def chunks_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install("xelm-chunks-clusterer", tmp_path_factory.mktemp("chunks") / "site")


@pytest.fixture
def installed(chunks_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The package importable and its entry point visible in this process."""
    with installed_sites(monkeypatch, [chunks_site], ["xelm_chunks"]):
        yield


def corpus(root: Path) -> Path:
    """Documents per language: en 3, tr 2, ar 1."""
    root.mkdir()
    for lang, count in (("en", 3), ("tr", 2), ("ar", 1)):
        (root / f"{lang}.txt").write_text("".join(f"{lang} document {i}\n" for i in range(count)))
    return root


# ---------------------------------------------------------------- Python


def test_python_cluster_uses_the_declared_options(installed: None, tmp_path: Path) -> None:
    from xelm_cli.api import UsageError, cluster, read_allocation

    allocation = cluster("chunks", k=2, output=tmp_path / "a.json", languages=LANGS)
    assert allocation.experts == [["ar", "de", "en"], ["ru", "tr"]]
    assert allocation.raw["chunks"] == {"reverse": False, "min_documents": 1}
    assert allocation.provenance == PROVENANCE
    assert read_allocation(tmp_path / "a.json").digest == allocation.digest

    # an option as a Python value or as text; data and min_documents together
    reverse = cluster(
        "chunks", k=2, output=tmp_path / "b.json", languages=["tr", "en", "ar"], reverse=True
    )
    assert reverse.experts == [["tr", "en"], ["ar"]]
    by_data = cluster(
        "chunks",
        k=1,
        output=tmp_path / "c.json",
        data=corpus(tmp_path / "corpus"),
        min_documents="2",
    )
    assert by_data.experts == [["en", "tr"]]

    with pytest.raises(UsageError) as caught:
        cluster("chunks", k=2, output=tmp_path / "d.json", languages=LANGS, reverse="maybe")
    assert str(caught.value) == ("clusterer 'chunks': option 'reverse' expects bool, not 'maybe'")
    with pytest.raises(UsageError, match=r"^clusterer 'chunks' has no option 'revers' "):
        cluster("chunks", k=2, output=tmp_path / "d.json", languages=LANGS, revers=True)
    with pytest.raises(UsageError) as caught:  # the keyword, not the command's -k
        cluster("chunks", k=0, output=tmp_path / "d.json", languages=LANGS)
    assert str(caught.value) == "k must be a whole number of experts, at least 1, not 0"
    with pytest.raises(UsageError, match=r"option 'min_documents' must be at least 1, not 0"):
        cluster("chunks", k=2, output=tmp_path / "d.json", languages=LANGS, min_documents=0)
    with pytest.raises(UsageError, match=r"a.json already exists; choose another path or pass"):
        cluster("chunks", k=2, output=tmp_path / "a.json", languages=LANGS)
    assert not (tmp_path / "d.json").exists()
    # the fixture reads request.force, the earlier name of request.overwrite
    replaced = cluster("chunks", k=5, output=tmp_path / "a.json", languages=LANGS, overwrite=True)
    assert replaced.k == 5


def test_its_own_fit_and_assigner_through_the_contract(installed: None, tmp_path: Path) -> None:
    from xelm_cli.api import ClusterRequest, Document, get_registry

    clusterer = get_registry().get("clusterer", "chunks").obj
    options = clusterer.Options(reverse=True)
    request = ClusterRequest(
        output=tmp_path / "a.json", k=2, languages=("ar", "en"), options=options
    )
    allocation = clusterer().fit(request)
    assert allocation.experts == [["en"], ["ar"]]
    # None reads as the declared defaults
    plain = clusterer().fit(ClusterRequest(output=tmp_path / "b.json", k=2, languages=("ar", "en")))
    assert plain.experts == [["ar"], ["en"]]
    assigner = clusterer.assigner(allocation)
    assert assigner.assign([Document("x", "ar"), Document("y", "en")]).tolist() == [1, 0]


# ---------------------------------------------------------------- command line


def test_cli_flags_and_cluster_arg_from_the_declaration(chunks_site: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    result = xelm(
        "cluster", "chunks", "--langs", LANGS, "-k", "2", "-o", str(out), "--reverse", "--json",
        sites=[chunks_site],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["clusterer"] == "chunks" and summary["k"] == 2
    assert [e["languages"] for e in summary["experts"]] == [["tr", "ru", "en"], ["de", "ar"]]
    written = json.loads(out.read_text())
    assert written["chunks"]["reverse"] is True and written["provenance"]["clusterer"] == PROVENANCE

    data = corpus(tmp_path / "corpus")
    result = xelm(
        "cluster", "chunks", str(data), "-k", "1", "-o", str(tmp_path / "b.json"),
        "--cluster-arg", "min_documents=3", sites=[chunks_site],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "en" in result.stdout and "wrote " in result.stdout
    assert json.loads((tmp_path / "b.json").read_text())["experts"][0]["languages"] == ["en"]
    result = xelm(
        "cluster", "chunks", str(data), "-k", "1", "-o", str(tmp_path / "c.json"),
        "--min-documents", "2", sites=[chunks_site],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "c.json").read_text())["experts"][0]["languages"] == ["en", "tr"]


def test_the_qualified_name_is_a_command_too(chunks_site: Path, tmp_path: Path) -> None:
    """`xelm cluster DIST:NAME` runs the registration the qualified name selects, as --router
    DIST:NAME does (spec/plugin-api.md 5): the same allocation as the plain name's; `xelm cluster
    --help` lists the plain name alone, the one that selects it."""
    written = []
    for name in ("chunks", "xelm-chunks-clusterer:chunks"):
        out = tmp_path / f"{name.replace(':', '-')}.json"
        result = xelm("cluster", name, "--langs", LANGS, "-k", "2", "-o", out, "--json",
                      sites=[chunks_site])  # fmt: skip
        assert result.returncode == 0, result.stderr
        written.append(json.loads(out.read_text())["experts"])
    assert written[0] == written[1]
    listed = xelm("cluster", "--help", sites=[chunks_site]).stdout
    assert " chunks " in listed and "xelm-chunks-clusterer:chunks" not in listed


def test_cli_errors_are_one_line_and_help_is_derived(
    chunks_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "a.json"
    args = ["cluster", "chunks", "--langs", LANGS, "-k", "2", "-o", str(out)]
    result = xelm(*args, "--min-documents", "0", sites=[chunks_site])
    assert (result.returncode, result.stderr) == (
        2,
        "xelm: error: clusterer 'chunks': option 'min_documents' must be at least 1, not 0\n",
    )
    result = xelm(*args, "--cluster-arg", "colour=blue", sites=[chunks_site])
    assert (result.returncode, result.stderr) == (
        2,
        "xelm: error: clusterer 'chunks' has no option 'colour' (its options: reverse, "
        "min_documents)\n",
    )
    result = xelm("cluster", "chunks", "-k", "2", "-o", str(out), sites=[chunks_site])
    assert result.returncode == 2
    assert result.stderr == (
        "xelm: error: no languages to group: pass --langs or a corpus with enough documents\n"
    )
    result = xelm("cluster", "chunks", "--langs", LANGS, "-o", str(out), sites=[chunks_site])
    assert (result.returncode, result.stderr) == (
        2,
        "xelm: error: xelm cluster chunks needs -k N, the number of experts\n",
    )
    assert not out.exists()
    monkeypatch.setenv("COLUMNS", "200")  # help lines unwrapped
    monkeypatch.setenv("TERMINAL_WIDTH", "200")
    result = xelm("cluster", "chunks", "--help", sites=[chunks_site])
    assert result.returncode == 0
    text = result.stdout
    assert "Example: xelm cluster chunks --langs ar,en,ru,tr -k 2 -o alloc.json --reverse" in text
    assert "--reverse" in text and "--no-reverse" not in text and "--min-documents" in text
    assert "With DATA: leave out languages with fewer documents. [default: 1]" in text
    assert "--cluster-arg" in text


# ---------------------------------------------------------------- reading DATA


def test_reading_flags_are_refused_for_a_clusterer_that_does_not_read_data_with_them(
    installed: None, chunks_site: Path, tmp_path: Path
) -> None:
    """chunks reads DATA with iter_documents and no ``request.reading`` (no ``reads_data``):
    ``--config`` and the others would be ignored, so they are refused."""
    from xelm_cli.api import cluster

    data = corpus(tmp_path / "corpus")
    with pytest.raises(UsageError) as caught:
        reading = SourceOptions(language="tr")
        cluster("chunks", k=1, output=tmp_path / "a.json", data=data, reading=reading)
    assert str(caught.value) == (
        "clusterer 'chunks' does not read data with reading=SourceOptions(language=...): drop it"
    )  # the Python keywords, as the command names its flags
    refusal = "clusterer 'chunks' does not read DATA with --config: drop it"
    result = xelm(
        "cluster", "chunks", str(data), "-k", "1", "-o", str(tmp_path / "a.json"),
        "--config", "{lang}", "--langs", "en,tr", sites=[chunks_site],
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (2, f"xelm: error: {refusal}\n")
    assert not (tmp_path / "a.json").exists()


class NamedPlugin:
    """An in-process plugin registering one clusterer whose one option is named like a reading
    flag, ``named-OPTION`` (a name of its own: xelm adds a clusterer's command once a process)."""

    def __init__(self, option_name: str) -> None:
        self.option_name = option_name
        self.name = "named-" + option_name.replace("_", "-")

    @hookimpl
    def register_clusterers(self, register: Any) -> None:
        class Named(Clusterer):
            """One expert of every language.

            Example: xelm cluster named-split --langs en,tr -k 1 -o alloc.json
            """

            name = self.name
            Options = make_dataclass(
                "Options",
                [(self.option_name, str, option("x", help="Named like a reading flag."))],
                frozen=True,
            )

            def fit(self, request: Any) -> Any:
                experts = [list(request.languages)]
                return write_allocation(
                    request.output, clusterer=self.name, experts=experts, overwrite=request.force
                )

            @classmethod
            def assigner(cls, allocation: Any) -> Any:
                raise UsageError("named has no assigner")

        register(self.name, Named)


@pytest.mark.usefixtures("isolated_registry")
@pytest.mark.parametrize(
    "option_name",
    ["reading", "split", "lang", "config", "data_dir", "lang_map", "text_column", "revision"],
)
def test_an_option_named_like_a_reading_flag_is_refused(
    option_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its flag and Python keyword say how to read DATA: the option could never be set so."""
    from xelm_cli.api import cluster

    plugin = NamedPlugin(option_name)
    host.reset_registry(host.load_registry(extra_plugins=[("named", plugin)]))
    refusal = (
        f"clusterer {plugin.name!r} declares option {option_name!r}, a name xelm keeps for reading "
        "DATA (reading, split, lang, config, data_dir, lang_map, text_column, revision); its "
        "plugin must rename the option"
    )
    out = tmp_path / "a.json"
    with pytest.raises(PluginError) as caught:
        cluster(plugin.name, k=1, output=out, languages="en,tr")
    assert str(caught.value) == refusal
    assert run(["cluster", plugin.name, "--langs", "en,tr", "-k", "1", "-o", str(out)]) == 6
    assert capsys.readouterr().err == f"xelm: error: {refusal}\n"
    assert not out.exists()


@pytest.mark.usefixtures("isolated_registry")
def test_an_option_named_language_is_a_clusterers_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``language`` is a field of ``SourceOptions`` but no reading flag (that is ``--lang``) and
    no keyword of ``cluster()`` any more: a clusterer may declare it, set by keyword and flag."""
    from xelm_cli.api import cluster

    plugin = NamedPlugin("language")
    host.reset_registry(host.load_registry(extra_plugins=[("named", plugin)]))
    alloc = cluster(plugin.name, k=1, output=tmp_path / "a.json", languages="en,tr", language="y")
    assert alloc.experts == [["en", "tr"]]
    argv = ["cluster", plugin.name, "--langs", "en,tr", "-k", "1", "--language", "y"]
    assert run([*argv, "-o", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "b.json").exists()


Written = tuple[Path, list[list[str]]]  # where a clusterer's fit writes, and its experts


class OneClusterer:
    """An in-process plugin registering clusterer ``name``, whose fit writes the allocation
    ``write(request)`` says: where, and which experts (with no assigner)."""

    def __init__(
        self,
        name: str,
        write: Callable[[Any], Written],
        plugin: str = "",
        assigns_documents: bool = False,
    ) -> None:
        self.name = name
        self.write = write
        self.plugin = plugin  # the name it is loaded under, for its assigner's refusal
        self.assigns_documents = assigns_documents

    @hookimpl
    def register_clusterers(self, register: Any) -> None:
        write, plugin = self.write, self.plugin

        class Plain(Clusterer):
            """Writes what the test's function says.

            Example: xelm cluster NAME --langs en,tr -k 2 -o alloc.json
            """

            name = self.name
            assigns_documents = self.assigns_documents

            def fit(self, request: Any) -> Any:
                out, experts = write(request)
                return write_allocation(out, clusterer=self.name, experts=experts, overwrite=True)

            @classmethod
            def assigner(cls, allocation: Any) -> Any:
                raise UsageError(f"{cls.name} of plugin {plugin} has no assigner")

        register(self.name, Plain)


def careless(what: str) -> OneClusterer:
    """``careless-WHAT``: one expert of every language, whatever -k asks, written to the
    requested output (``k``) or beside it (``path``)."""

    def write(request: Any) -> Written:
        out = request.output if what == "k" else request.output.with_name("other.json")
        return out, [["en", "tr"]]

    return OneClusterer(f"careless-{what}", write)


@pytest.mark.usefixtures("isolated_registry")
@pytest.mark.parametrize(
    ("what", "refusal"),
    [
        ("k", "clusterer 'careless-k' (plugin 'careless') fit() wrote 1 expert for -k 2; this "
         "is a bug in the clusterer (or it should refuse -k it cannot meet, with a UsageError)"),
        ("path", "clusterer 'careless-path' (plugin 'careless') fit() wrote {other}, not the "
         "requested output {out} (write_allocation(request.output, ...)); this is a bug in the "
         "clusterer"),
    ],
)  # fmt: skip
def test_an_allocation_other_than_the_one_asked_for_is_the_clusterers_bug(
    what: str, refusal: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`xelm cluster` reports success only for the allocation it was asked for: -k experts at
    -o; another is one line naming the clusterer and its plugin (exit 6)."""
    from xelm_cli.api import cluster

    plugin = careless(what)
    host.reset_registry(host.load_registry(extra_plugins=[("careless", plugin)]))
    out = tmp_path / "alloc.json"
    refusal = refusal.format(other=tmp_path / "other.json", out=out)
    with pytest.raises(PluginError) as caught:
        cluster(plugin.name, k=2, output=out, languages="en,tr")
    assert str(caught.value) == refusal
    assert not out.exists()  # no allocation of 1 expert left where 2 were asked for
    argv = ["cluster", plugin.name, "--langs", "en,tr", "-k", "2", "-o", str(out)]
    assert run(argv) == 6
    assert capsys.readouterr().err == f"xelm: error: {refusal}\n"


def raising(request: Any) -> Written:
    return {}["boom"]  # type: ignore[no-any-return]


@pytest.mark.usefixtures("isolated_registry")
def test_a_bug_in_a_third_party_clusterers_fit_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not xelm's internal error (exit 70): the clusterer and its plugin, exit 6, as for
    routers and evaluators; nothing is written."""
    from xelm_cli.api import cluster

    host.reset_registry(
        host.load_registry(extra_plugins=[("raising", OneClusterer("fit-bug", raising))])
    )
    refusal = (
        "clusterer 'fit-bug' (plugin 'raising') failed while fitting: KeyError: 'boom'; this is "
        "a bug in the clusterer (XELM_DEBUG=1 shows the traceback)"
    )
    out = tmp_path / "alloc.json"
    with pytest.raises(PluginError) as caught:
        cluster("fit-bug", k=1, output=out, languages="en,tr")
    assert str(caught.value) == refusal
    assert run(["cluster", "fit-bug", "--langs", "en,tr", "-k", "1", "-o", str(out)]) == 6
    assert capsys.readouterr().err == f"xelm: error: {refusal}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.usefixtures("isolated_registry")
def test_a_bug_in_xelms_own_clusterers_fit_stays_an_internal_error(tmp_path: Path) -> None:
    from xelm_cli.api import cluster
    from xelm_cli.plugin.registry import FIRST_PARTY_DISTRIBUTION, Registration, Registry

    loaded = host.load_registry(
        extra_plugins=[("raising", OneClusterer("fit-bug", raising))], entry_points=False
    )
    cls = loaded.get("clusterer", "fit-bug").obj
    registry = Registry()
    registry.add(
        Registration("fit-bug", "clusterer", cls, "typology", "", FIRST_PARTY_DISTRIBUTION, "0")
    )
    host.reset_registry(registry)
    with pytest.raises(KeyError, match="boom"):
        cluster("fit-bug", k=1, output=tmp_path / "alloc.json", languages="en,tr")


def same_name(where: str) -> OneClusterer:
    """``same-name``: an expert a language, in the order given (``first``) or reversed
    (``last``), which tells which registration ran."""

    def write(request: Any) -> Written:
        experts = [[lang] for lang in request.languages]
        return request.output, experts if where == "first" else experts[::-1]

    # only first's assigns documents: which one a check asked shows in what it refuses
    return OneClusterer("same-name", write, plugin=where, assigns_documents=where == "first")


@pytest.mark.usefixtures("isolated_registry")
def test_a_name_two_plugins_register_is_run_by_its_qualified_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plain name is refused naming both; `xelm cluster first:same-name` and
    `last:same-name` run each, and `xelm cluster --help` lists both."""
    plugins = [(where, same_name(where)) for where in ("first", "last")]
    host.reset_registry(host.load_registry(extra_plugins=plugins))
    args = ["--langs", "en,tr", "-k", "2", "-o"]
    assert run(["cluster", "same-name", *args, str(tmp_path / "plain.json")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (  # after the loading's warning
        "xelm: error: clusterer 'same-name' is registered by two plugins: plugin first and "
        "plugin last; choose one as first:same-name or last:same-name"
    )
    for where, order in (("first", [["en"], ["tr"]]), ("last", [["tr"], ["en"]])):
        out = tmp_path / f"{where}.json"
        assert run(["cluster", f"{where}:same-name", *args, str(out)]) == 0
        assert [e["languages"] for e in json.loads(out.read_text())["experts"]] == order
    capsys.readouterr()
    run(["cluster", "--help"])
    listed = capsys.readouterr().out
    assert "first:same-name" in listed and "last:same-name" in listed
    # each allocation reaches its own writer's assigner (its recorded provenance qualifies the
    # name), not the refusal of the plain name
    for where in ("first", "last"):
        with pytest.raises(UsageError, match=f"^same-name of plugin {where} has no assigner$"):
            expert_documents(tmp_path / f"{where}.json", 0)


@pytest.mark.usefixtures("isolated_registry")
def test_an_expert_of_a_name_two_plugins_register_is_checked_by_its_own_clusterer(
    tmp_path: Path, seed_bundle: Path, train_shards: Path
) -> None:
    """A bundle branched from first:same-name's allocation records the clusterer's provenance
    in its allocation reference (bundle-v1 3.1), so `xelm train` asks first's clusterer whether
    it assigns documents (it does: the shards of every document are refused) and last's expert
    trains past that check; a reference without provenance (a bundle written before 1.2) is the
    plain name's refusal naming both."""
    from xelm_cli.api import Bundle, branch, cluster
    from xelm_cli.cluster.assigning import assigns_documents
    from xelm_cli.training.run import expert_languages

    plugins = [(where, same_name(where)) for where in ("first", "last")]
    host.reset_registry(host.load_registry(extra_plugins=plugins))
    experts = {}
    for where in ("first", "last"):
        alloc = tmp_path / f"{where}.json"
        cluster(f"{where}:same-name", k=2, output=alloc, languages="en,tr")
        expert = tmp_path / f"expert-{where}"
        branch(seed_bundle, expert, allocation=alloc, expert=0)
        reference = Bundle.read(expert).manifest.allocation
        assert reference is not None
        assert reference["provenance"] == {
            "name": "same-name", "plugin": where, "distribution": None, "version": None,
        }  # fmt: skip
        experts[where] = (expert, reference)
    assert assigns_documents(experts["first"][1]) and not assigns_documents(experts["last"][1])
    first, last = experts["first"][0], experts["last"][0]
    with pytest.raises(UsageError, match="whose same-name clusterer assigns documents"):
        expert_languages(first, train_shards, ())
    assert expert_languages(last, train_shards, ()) == ()
    bare = {k: v for k, v in experts["first"][1].items() if k != "provenance"}
    with pytest.raises(UsageError, match="registered by two plugins"):
        assigns_documents(bare)
