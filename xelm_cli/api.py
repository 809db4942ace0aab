"""The public API: everything a plugin (or a script) may import from xelm, re-exported.

Plugins import this module and nothing else from xelm; if a plugin needs something that is not
here, the API is missing a piece. The contracts are specified in spec/plugin-api.md and defined in
:mod:`xelm_cli.plugin.contracts`; no module of xelm imports this one.
"""

from xelm_cli.bundle.archive import pack_bundle, unpack_bundle
from xelm_cli.bundle.branching import branch, hmr_branch
from xelm_cli.bundle.lineage import graph_json, lineage_graph
from xelm_cli.bundle.merging import merge_average
from xelm_cli.bundle.moe import build_moe
from xelm_cli.bundle.seed import init_from_config, init_from_hf
from xelm_cli.bundle.store import Bundle, BundleWriter, verify_bundle, write_bundle
from xelm_cli.cluster.allocation import Allocation, read_allocation, write_allocation
from xelm_cli.cluster.fitting import cluster
from xelm_cli.cluster.plots import allocation_summary, write_plots
from xelm_cli.common.atomic import atomic_directory, atomic_file, output_lock, write_bytes_atomic
from xelm_cli.common.errors import (
    ArchiveError,
    FormatError,
    IntegrityError,
    PluginError,
    UsageError,
    XelmError,
    exception_line,
)
from xelm_cli.common.progress import stderr_progress
from xelm_cli.common.units import parse_token_count
from xelm_cli.data.corpus import Document, iter_documents, read_documents
from xelm_cli.data.documents import group_documents
from xelm_cli.data.evalsets import (
    EvalSet,
    eval_set_with,
    eval_texts,
    flores_code,
    held_out_split,
    is_hub_dataset,
    known_eval_set,
    language_of_config,
    usable_eval_set,
)
from xelm_cli.data.fetch import fetch as fetch_data
from xelm_cli.data.prepare import prepare, prepare_experts
from xelm_cli.data.recipes import Recipe, load_recipe, shipped_recipes
from xelm_cli.data.sampling import sample_documents, sample_kind, sample_per_language
from xelm_cli.data.shards import Shards
from xelm_cli.data.source_plan import SourceOptions
from xelm_cli.data.sources import DatasetSource, dataset_configs
from xelm_cli.data.tokenizer import train_tokenizer_on_corpus
from xelm_cli.demo import run_demo
from xelm_cli.demo.plan import demo_plan
from xelm_cli.demo.report import read_results, write_report
from xelm_cli.ensemble.create import create_ensemble
from xelm_cli.ensemble.evaluate import evaluate, evaluate_per_shots
from xelm_cli.ensemble.generation import generate_text
from xelm_cli.ensemble.scoring import logits_are_output_layer, pick_device
from xelm_cli.ensemble.weights import (
    Weights,
    check_token_weights,
    check_weights,
    keep_top_k,
    posterior_weights,
    softmax,
)
from xelm_cli.lang.codes import normalize_language, parse_language_list, wanted_form
from xelm_cli.lang.info import language_info
from xelm_cli.lang.typology import (
    distance_matrix,
    feature_set_name,
    feature_vectors,
    rank_donors,
    uriel_code,
)
from xelm_cli.plugin.conformance import TinyExperts, build_tiny_experts
from xelm_cli.plugin.conformance import check as check_plugin
from xelm_cli.plugin.contracts import (
    Assigner,
    ChoiceRequest,
    Clusterer,
    ClusterRequest,
    EvalRequest,
    Evaluator,
    ExpertInfo,
    LanguageModel,
    OutputRouter,
    PreRouter,
    Router,
    ScoredDocument,
    Trainer,
    TrainRequest,
    hookimpl,
)
from xelm_cli.plugin.host import Register, get_registry
from xelm_cli.plugin.options import (
    NoOptions,
    OptionSpec,
    build_options,
    declared_options,
    option,
    options_record,
    parse_options,
)
from xelm_cli.plugin.registry import Registration, Registry
from xelm_cli.training.checkpoints import (
    BlockStream,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
)
from xelm_cli.training.plan_runner import plan_dry_run, run_plan
from xelm_cli.training.planning import make_plan
from xelm_cli.training.positions import (
    declared_positions,
    past_positions_line,
    require_block_fits,
)
from xelm_cli.training.run import train

__all__ = [
    "Allocation",
    "ArchiveError",
    "Assigner",
    "BlockStream",
    "Bundle",
    "BundleWriter",
    "ChoiceRequest",
    "ClusterRequest",
    "Clusterer",
    "DatasetSource",
    "Document",
    "EvalRequest",
    "EvalSet",
    "Evaluator",
    "ExpertInfo",
    "FormatError",
    "IntegrityError",
    "LanguageModel",
    "NoOptions",
    "OptionSpec",
    "OutputRouter",
    "PluginError",
    "PreRouter",
    "Recipe",
    "Register",
    "Registration",
    "Registry",
    "Router",
    "ScoredDocument",
    "Shards",
    "SourceOptions",
    "TinyExperts",
    "TrainRequest",
    "Trainer",
    "UsageError",
    "Weights",
    "XelmError",
    "allocation_summary",
    "atomic_directory",
    "atomic_file",
    "branch",
    "build_moe",
    "build_options",
    "build_tiny_experts",
    "check_plugin",
    "check_token_weights",
    "check_weights",
    "cluster",
    "create_ensemble",
    "dataset_configs",
    "declared_options",
    "declared_positions",
    "demo_plan",
    "distance_matrix",
    "eval_set_with",
    "eval_texts",
    "evaluate",
    "evaluate_per_shots",
    "exception_line",
    "feature_set_name",
    "feature_vectors",
    "fetch_data",
    "flores_code",
    "generate_text",
    "get_registry",
    "graph_json",
    "group_documents",
    "held_out_split",
    "hmr_branch",
    "hookimpl",
    "init_from_config",
    "init_from_hf",
    "is_hub_dataset",
    "iter_documents",
    "keep_top_k",
    "known_eval_set",
    "language_info",
    "language_of_config",
    "lineage_graph",
    "list_checkpoints",
    "load_checkpoint",
    "load_recipe",
    "logits_are_output_layer",
    "make_plan",
    "merge_average",
    "normalize_language",
    "option",
    "options_record",
    "output_lock",
    "pack_bundle",
    "parse_language_list",
    "parse_options",
    "parse_token_count",
    "past_positions_line",
    "pick_device",
    "plan_dry_run",
    "posterior_weights",
    "prepare",
    "prepare_experts",
    "rank_donors",
    "read_allocation",
    "read_checkpoint_state",
    "read_documents",
    "read_results",
    "require_block_fits",
    "run_demo",
    "run_plan",
    "sample_documents",
    "sample_kind",
    "sample_per_language",
    "save_checkpoint",
    "shipped_recipes",
    "softmax",
    "stderr_progress",
    "train",
    "train_tokenizer_on_corpus",
    "unpack_bundle",
    "uriel_code",
    "usable_eval_set",
    "verify_bundle",
    "wanted_form",
    "write_allocation",
    "write_bundle",
    "write_bytes_atomic",
    "write_plots",
    "write_report",
]
