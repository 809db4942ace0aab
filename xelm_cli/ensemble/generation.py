"""Sampling text from an ensemble's mixed next-token distribution.

The experts with non-zero weight run together, each with its own key-value cache; at every
step the next-token distribution is sum_e w_e p_e (a pre-router's weights are fixed for the
prompt, an output-dependent router's are recomputed from the tokens so far), then sharpened
by the temperature and sampled (temperature 0: the most likely token).

``generate_text`` is ``xelm ensemble generate`` from Python; ``generate`` is its engine, on
opened bundles and a built router.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xelm_cli.bundle.store import Bundle
from xelm_cli.common.errors import UsageError
from xelm_cli.ensemble.ensemble_file import Member, resolve_ensemble
from xelm_cli.ensemble.routing import build_router
from xelm_cli.ensemble.runner import EnsembleModel
from xelm_cli.ensemble.scoring import LoadedModel, with_cache
from xelm_cli.ensemble.weights import check_token_weights
from xelm_cli.lang.codes import normalize_language
from xelm_cli.plugin.contracts import Document, Router, ScoredDocument


@dataclass
class Generation:
    text: str
    tokens: list[int]
    experts: list[str]  # names of the experts that ran
    weights: list[list[float]] = field(default_factory=list)  # per generated token


def generate_text(
    members: Member | Sequence[Member],
    prompt: str,
    *,
    router: str | None = None,
    router_options: Mapping[str, Any] | None = None,
    language: str | None = None,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """Continue ``prompt`` with the ensemble of ``members``; the record ``xelm ensemble
    generate --json`` prints: ``prompt``, ``text`` (the continuation), ``tokens``, ``experts``
    (the names of those that ran) and ``weights`` (theirs, per generated token).

    ``members``: bundle directories (or :class:`Bundle` objects, or quoted globs such as
    ``"experts/*"``), or one ensemble file; ``router`` and ``router_options``: the registered
    router and its options (default: the ensemble file's, else ``language``); ``language``: the
    prompt's (the language router needs it); ``temperature`` 0 picks the most likely token.

    Example: ``generate_text("experts/*", "Bugün", router="language", language="tr")``
    """
    check_sampling(max_new_tokens, temperature)  # before the members' (slower) checks
    spec = resolve_ensemble(members, router=router, router_options=router_options)
    result = generate(
        spec.members,
        build_router(spec.router, spec.router_options),
        prompt,
        language=normalize_language(language) if language else None,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        device=device,
    )
    return {
        "prompt": prompt,
        "text": result.text,
        "tokens": result.tokens,
        "experts": result.experts,
        "weights": result.weights,
    }


def check_sampling(max_new_tokens: int, temperature: float) -> None:
    if max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    if not (temperature >= 0 and np.isfinite(temperature)):
        raise UsageError("--temperature must be a finite number >= 0")


def generate(
    members: Sequence[Bundle],
    router: Router,
    prompt: str,
    *,
    language: str | None = None,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    seed: int = 0,
    device: str | None = None,
) -> Generation:
    import torch
    from transformers import DynamicCache

    check_sampling(max_new_tokens, temperature)
    runner = EnsembleModel(members, router, device=device, name="generate")
    document = Document(prompt, language)
    fixed = runner.route_one(document)  # None: an output-dependent router weighs each step
    chosen = (
        [int(e) for e in np.flatnonzero(fixed > 0)]
        if fixed is not None
        else list(range(len(members)))
    )
    ids = [runner.bos, *runner.encode(prompt)]
    generator = torch.Generator().manual_seed(seed)
    models: list[LoadedModel] = [runner.load_expert(e) for e in chosen]
    result = Generation("", [], [runner.experts[e].name for e in chosen])
    stops = runner.framing.stops(runner.tokenizer)
    with torch.inference_mode():
        caches, last_logprobs, history = [], [], []
        for model in models:
            cache = DynamicCache()
            logits = (
                model.model(
                    input_ids=torch.tensor([ids], device=model.device),
                    **with_cache(model.model, cache),
                )
                .logits[0]
                .float()
            )
            logprobs = torch.log_softmax(logits, dim=-1).cpu().double()
            caches.append(cache)
            last_logprobs.append(logprobs[-1])
            targets = torch.tensor(ids[1:], dtype=torch.long)
            history.append(logprobs[:-1].gather(1, targets[:, None])[:, 0].numpy())
        for _ in range(max_new_tokens):
            if fixed is not None:
                weights = fixed[chosen]
            else:
                router = runner.output_router()
                stacked = np.stack([np.append(h, 0.0) for h in history])
                text = prompt + runner.tokenizer.decode(result.tokens)
                token_weights = check_token_weights(
                    router.route_tokens(
                        ScoredDocument(Document(text, language), stacked), runner.experts
                    ),
                    stacked.shape,
                    router.name,
                )
                weights = token_weights[:, -1]
            mixed = sum(
                float(w) * torch.exp(lp) for w, lp in zip(weights, last_logprobs, strict=True)
            )
            assert isinstance(mixed, torch.Tensor)
            if temperature == 0:
                token = int(torch.argmax(mixed))
            else:
                scaled = torch.exp(torch.log(mixed.clamp_min(1e-300)) / temperature)
                token = int(torch.multinomial(scaled / scaled.sum(), 1, generator=generator))
            result.tokens.append(token)
            result.weights.append([float(w) for w in weights])
            if token in stops:
                break
            for index, model in enumerate(models):
                history[index] = np.append(history[index], float(last_logprobs[index][token]))
                logits = (
                    model.model(
                        input_ids=torch.tensor([[token]], device=model.device),
                        **with_cache(model.model, caches[index]),
                    )
                    .logits[0, -1]
                    .float()
                )
                last_logprobs[index] = torch.log_softmax(logits, dim=-1).cpu().double()
    for model in models:
        runner.free_expert(model)
    result.text = runner.tokenizer.decode(result.tokens, skip_special_tokens=True)
    return result
