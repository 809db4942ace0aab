"""The bundle's README.md: a Hugging Face model card generated from the manifest."""

import json
from typing import TYPE_CHECKING

from xelm_cli.common.digest import short

if TYPE_CHECKING:
    from xelm_cli.bundle.manifest import Manifest

# Hub vocabulary for how a model relates to its base model.
_HUB_RELATION = {
    "branch": "finetune",
    "train": "finetune",
    "hmr-branch": "finetune",
    "average": "merge",
    "merge": "merge",
}


def _yaml_list(key: str, values: list[str]) -> list[str]:
    return [f"{key}:", *(f"- {json.dumps(v)}" for v in values)] if values else []


def hub_base_model(manifest: "Manifest") -> str | None:
    """The Hub id this bundle descends from, if its line started from a Hub model."""
    origin = manifest.origin
    if manifest.relation == "init" or origin.get("kind") != "hf" or not origin.get("hub"):
        return None
    return str(origin["model"])


def render_model_card(manifest: "Manifest") -> str:
    front = ["library_name: transformers", *_yaml_list("language", manifest.languages)]
    base = hub_base_model(manifest)
    if base:
        front += [
            f"base_model: {json.dumps(base)}",
            f"base_model_relation: {_HUB_RELATION.get(manifest.relation, 'finetune')}",
        ]
    front += _yaml_list("tags", ["xelm", "x-elm", f"xelm-{manifest.role}"])

    origin = manifest.origin
    source = origin.get("model") or f"config `{origin.get('name', '?')}` (random initialisation)"
    languages = ", ".join(manifest.languages) or "none recorded"
    lines = [
        "---",
        *front,
        "---",
        "",
        f"# {manifest.name or manifest.id}",
        "",
        f"An xelm **{manifest.role}** bundle: a cross-lingual expert language model (X-ELM) "
        "component. This directory loads with `transformers` as it is; `xelm.json` is its "
        "manifest (format `xelm-bundle`, spec/bundle-v1.md).",
        "",
        f"- Languages: {languages}",
        f"- Bundle id: `{manifest.id}`",
        f"- Origin: {source}",
    ]
    if manifest.allocation:
        a = manifest.allocation
        lines.append(
            f"- Allocation: expert {a['expert']} of the `{a['clusterer']}` clusterer "
            f"(allocation `{short(a['digest'])}`)"
        )
    if manifest.training:
        t = manifest.training
        lines.append(f"- Training: {t['tokens']:,} tokens in {t['steps']:,} steps")
    lines += ["", "## Lineage", "", "| step | relation | parents | details |", "|---|---|---|---|"]
    for i, step in enumerate(manifest.lineage):
        parents = ", ".join(f"`{p['id'][:12]}` (`{short(p['digest'])}`)" for p in step["parents"])
        details = ", ".join(
            f"{k}={v}" for k, v in step.items() if k in ("donor", "language", "method", "weights")
        )
        lines.append(f"| {i} | {step['relation']} | {parents or '-'} | {details or '-'} |")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/bundle")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/bundle")',
        "```",
        "",
        "Check its integrity first with `xelm bundle verify path/to/this/bundle`.",
        "",
    ]
    return "\n".join(lines)
