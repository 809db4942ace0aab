"""Sampling text from an ensemble's next-token distribution, combined by its rule.

The experts with non-zero weight run together, each with its own key-value cache; at every
step their next-token distributions combine as eval combines them (spec/ensemble-v1.md
section 3): ``mixture`` sum_e w_e p_e (a pre-router's weights are fixed for the prompt; one
with a ``stride`` routes the text so far again every ``stride`` tokens, as scoring routes
prefixes, and then every expert runs; an output-dependent router's are recomputed from the
tokens so far), ``logits`` softmax(sum_e w_e z_e), ``product`` the same geometric mean with
the previous-token weights of ``mixing.product_weights``. The result is sharpened by the
temperature and sampled (temperature 0: the most likely token). Each running expert keeps its
cache and one vocabulary of log-probabilities, never a prompt's worth: the prompt's tokens are
scored chunk by chunk as scoring scores them (``scoring.target_logprobs``). The
document-start token is never picked (unless it also ends a text): inside a document, which
xelm frames ``start doc end``, it never follows another token, and an undertrained model that
predicts it would repeat it, decoded to nothing. The text of the new tokens is what they add
after the prompt, decoded with it (``Continuation``): the prompt followed by it is the whole
text, a SentencePiece-style word's space included; routers asked about the text so far are
asked about that.

``generate_text`` is ``xelm ensemble generate`` from Python; ``generate`` is its engine, on
opened bundles and a built router.
"""

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xelm_cli.bundle.store import Bundle
from xelm_cli.common.errors import UsageError
from xelm_cli.ensemble.ensemble_file import Member, resolve_ensemble
from xelm_cli.ensemble.mixing import mixture, product_weights
from xelm_cli.ensemble.routing import routing
from xelm_cli.ensemble.runner import EnsembleModel
from xelm_cli.ensemble.scoring import LoadedModel, new_cache, target_logprobs
from xelm_cli.ensemble.weights import check_token_weights
from xelm_cli.lang.codes import normalize_language
from xelm_cli.plugin.contracts import Document, PreRouter, Router, ScoredDocument
from xelm_cli.training.positions import declared_positions

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64 - 1 (and negatives, wrapped)


@dataclass
class Generation:
    text: str  # what the tokens add after the prompt: prompt + text is the whole text
    tokens: list[int]
    experts: list[str]  # names of the experts that ran
    combine: str = "mixture"  # the combination rule of their next-token distributions
    weights: list[list[float]] = field(default_factory=list)  # per generated token


def generate_text(
    members: Member | Sequence[Member],
    prompt: str,
    *,
    router: str | None = None,
    router_options: Mapping[str, Any] | None = None,
    combine: str | None = None,
    language: str | None = None,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """Continue ``prompt`` with the ensemble of ``members``; the record ``xelm ensemble
    generate --json`` prints: ``prompt``, ``text`` (the continuation), ``tokens``, ``experts``
    (the names of those that ran), ``combine`` (the rule that combined them) and ``weights``
    (theirs, per generated token; the product rule's are its previous-token weights).

    ``members``: bundle directories (or :class:`Bundle` objects, or quoted globs such as
    ``"experts/*"``), or one ensemble file; ``router`` and ``router_options``: the registered
    router and its options (default: the ensemble file's, else ``language``); ``combine``:
    ``mixture``, ``logits`` or ``product`` (default: the ensemble file's, else ``mixture``);
    ``language``: the prompt's (the language router needs it); ``temperature`` 0 picks the
    most likely token. The document-start token is never generated (unless it also ends a
    text, as XGLM's ``</s>`` does).

    Example: ``generate_text("experts/*", "Bugün", router="language", language="tr")``
    """
    check_sampling(max_new_tokens, temperature, seed)  # before the members' (slower) checks
    spec = resolve_ensemble(members, router=router, router_options=router_options, combine=combine)
    result = generate(
        spec.members,
        spec.built_router(),
        prompt,
        combine=spec.combine,
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
        "combine": result.combine,
        "weights": result.weights,
    }


def check_sampling(max_new_tokens: int, temperature: float, seed: int = 0) -> None:
    if max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    if not (temperature >= 0 and np.isfinite(temperature)):
        raise UsageError("--temperature must be a finite number >= 0")
    if not 0 <= seed <= MAX_SEED:  # what torch's generator takes
        raise UsageError(f"--seed must be from 0 to {MAX_SEED} (2**64 - 1), not {seed}")


def check_positions(members: Sequence[Bundle], prompt_tokens: int, max_new_tokens: int) -> None:
    """The prefix token, the prompt's tokens and the new tokens but the last (which no expert
    reads: nothing comes after it) must fit the positions the members declare: past a learned
    table (GPT-2) the model indexes out of it, past rotary positions it runs on positions it
    never saw."""
    declared = [p for p in (declared_positions(m.path) for m in members) if p is not None]
    needed = 1 + prompt_tokens + max_new_tokens - 1  # the last new token: never read
    if not declared or needed <= min(declared):
        return
    positions = min(declared)
    room = positions - prompt_tokens  # new tokens that fit after this prompt
    way_out = (
        f"pass --max-new-tokens {room} or less, or shorten the prompt"
        if room >= 1
        else f"shorten the prompt to at most {positions - 1} tokens"
    )
    raise UsageError(
        f"the prompt's {prompt_tokens:,} tokens, its prefix token and --max-new-tokens "
        f"{max_new_tokens:,} need {needed:,} positions (the last new token is never read); "
        f"the model has {positions:,}: {way_out}"
    )


@dataclass
class _RunningExpert:
    """One expert as generation runs it: its key-value cache, ln p of the next token over the
    vocabulary (V,), and ln p of each token so far after the prefix token (what an
    output-dependent router and the product rule weigh)."""

    model: LoadedModel
    cache: Any
    next_logprobs: Any
    history: np.ndarray


def generate(
    members: Sequence[Bundle],
    router: Router,
    prompt: str,
    *,
    combine: str = "mixture",
    language: str | None = None,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    seed: int = 0,
    device: str | None = None,
) -> Generation:
    """Continue ``prompt`` (in ``language``, for the routers that need it) with the
    ``members`` that ``router`` gives weight, their next-token distributions combined by
    ``combine`` (``mixture``, ``logits`` or ``product``): at most ``max_new_tokens`` tokens,
    fewer when one ends the text, sampled at ``temperature`` (0: the most likely) from
    ``seed``, on ``device`` (default: CUDA when present, else the CPU).

    Returns the :class:`Generation`: the continuation's text and tokens, the names of the
    experts that ran, and their weights for each generated token. The document-start token is
    never picked (see the module's docstring)."""
    import torch

    check_sampling(max_new_tokens, temperature, seed)
    runner = EnsembleModel(members, router, combine, device=device, name="generate")
    document = Document(prompt, language)
    prompt_ids = runner.encode(prompt)
    ids = [runner.bos, *prompt_ids]
    prompt_tokens = len(prompt_ids)
    after = Continuation(runner.tokenizer, prompt_ids)
    stride = _stride(runner.router)
    routed = document
    if stride is not None:  # before the first new token, the last position routed on
        last = prompt_tokens - prompt_tokens % stride
        routed = _prefix(runner, document, prompt_tokens, last, [], after)
    fixed = _route_prompt(runner, routed)
    # None: an output-dependent router weighs each step; with a stride, any expert may get
    # weight on a later prefix, so all run
    chosen = _experts_to_run(None if stride else fixed, len(members))
    prior = fixed[chosen] if fixed is not None else None
    check_positions(members, prompt_tokens, max_new_tokens)
    generator = torch.Generator().manual_seed(seed)
    result = Generation("", [], [runner.experts[e].name for e in chosen], combine)
    stops = set().union(*(runner.framing.stops(runner.tokenizer, m.path) for m in members))
    never = _never_generated(runner.framing.start, stops)
    models: list[LoadedModel] = []
    try:
        models += (runner.load_expert(e) for e in chosen)
        with torch.inference_mode():
            experts = [_read_prompt(model, ids) for model in models]
            for step in range(max_new_tokens):
                position = prompt_tokens + step  # of the next token among the target tokens
                if stride is not None and step and position % stride == 0:
                    prefix = _prefix(
                        runner, document, prompt_tokens, position, result.tokens, after
                    )
                    prior = runner.route_one(prefix)
                weights = _next_token_weights(
                    runner, document, prior, result.tokens, experts, after
                )
                logprobs = combined_logprobs(combine, weights, [e.next_logprobs for e in experts])
                token = _pick(_without(logprobs, never), temperature, generator)
                result.tokens.append(token)
                result.weights.append([float(w) for w in weights])
                if token in stops or step == max_new_tokens - 1:
                    break  # no expert reads the last token: nothing comes after it
                for expert in experts:
                    _read_token(expert, token)
    finally:
        for model in models:
            runner.free_expert(model)
    result.text = after(result.tokens)
    return result


class Continuation:
    """The text that new tokens add after a prompt (its ids ``prompt_ids``, without the prefix
    token), so that the prompt followed by it is the whole text: the prompt's ids and the new
    ones are decoded together, and the text after the decoded prompt is taken. Decoding the new
    tokens on their own loses what the tokenizer's decoder does only at the start of a text: a
    SentencePiece-style (Metaspace) decoder, XGLM's and Llama's, strips the space of a first
    "▁hello", so "hello" + "▁hello" would read "hellohello". Special tokens are skipped.

    Where the decoded prompt does not begin the whole decoding (a decoder's clean-up of spaces
    that joins the prompt's last character to the first new one, "a ." read "a."), the new
    tokens are decoded on their own, and a first token that starts a word ("▁world") keeps the
    space its decoding lost."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.prompt_ids = [int(i) for i in prompt_ids]
        self.prompt = self._decode(self.prompt_ids)

    def __call__(self, tokens: Sequence[int]) -> str:
        if not tokens:
            return ""
        whole = self._decode([*self.prompt_ids, *tokens])
        if whole.startswith(self.prompt):
            return whole[len(self.prompt) :]
        return self._alone(tokens)

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def _alone(self, tokens: Sequence[int]) -> str:
        text = self._decode(tokens)
        special = set(self.tokenizer.all_special_ids)
        first = next((int(t) for t in tokens if int(t) not in special), None)
        piece = self.tokenizer.convert_ids_to_tokens(first) if first is not None else None
        word_start = isinstance(piece, str) and piece.startswith("\u2581")  # "▁"
        if word_start and not text[:1].isspace():
            text = " " + text
        return text


def _route_prompt(runner: EnsembleModel, document: Document) -> np.ndarray | None:
    """The router's weights for the prompt (``runner.route_one``; for a router with a stride,
    the prompt's prefix it is asked about). A prompt without a language that the router
    refuses, but would route with one, is refused naming ``--lang``: the router's own message
    speaks of documents, which generation has none of."""
    try:
        return runner.route_one(document)
    except UsageError as refusal:
        if document.language is None and _routes_with_a_language(runner, document.text):
            raise UsageError(
                f"router {runner.router.name!r} needs the prompt's language and it has none: "
                "pass --lang CODE (language= from Python), or a router that needs none "
                "(--router posterior)"
            ) from refusal
        raise


def _routes_with_a_language(runner: EnsembleModel, text: str) -> bool:
    """Whether the router routes ``text`` once it is given one of the experts' languages."""
    languages = dict.fromkeys(language for e in runner.experts for language in e.languages)
    for language in languages:
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # a probe: the router's notes
                runner.route_one(Document(text, language))  # would name a language not given
        except UsageError:
            continue
        return True
    return False


def _stride(router: Router) -> int | None:
    """The stride of a pre-router that routes prefixes (c-BTM); None for any other router."""
    return int(router.stride) if isinstance(router, PreRouter) and router.stride else None


def _prefix(
    runner: EnsembleModel,
    document: Document,
    prompt_tokens: int,
    position: int,
    tokens: Sequence[int],
    after: Continuation | None = None,
) -> Document:
    """The text before target token ``position`` (counted from 0 over the prompt's
    ``prompt_tokens`` tokens, then the new ``tokens``), in the prompt's language: what a router
    with a stride is asked about, cut where scoring cuts it (spec/ensemble-v1.md section 3), at
    the first character of a prompt token or after the text the new tokens before it add to
    the prompt (``after``, the prompt's :class:`Continuation`; built here when not given)."""
    if position >= prompt_tokens:
        if after is None:
            after = Continuation(runner.tokenizer, runner.encode(document.text))
        text = document.text + after(tokens[: position - prompt_tokens])
    else:
        offsets = runner.encode_documents([document.text], offsets=True).offsets
        assert offsets is not None
        text = document.text[: offsets[0][position][0]]
    return Document(text, document.language)


def _never_generated(start: int | None, stops: set[int]) -> int | None:
    """The token generation never picks: the document-start token, unless there is none or it
    also ends a text (XGLM frames documents ``</s> doc </s>``)."""
    return None if start is None or start in stops else start


def _without(logprobs: Any, token: int | None) -> Any:
    """``logprobs`` with ``token`` impossible (ln p = -inf); the others keep their values, so
    sampling renormalises over them."""
    if token is None:
        return logprobs
    masked = logprobs.clone()
    masked[token] = float("-inf")
    return masked


def _experts_to_run(fixed: np.ndarray | None, count: int) -> list[int]:
    """The experts with non-zero weight; every one for an output-dependent router (``fixed``
    None)."""
    if fixed is None:
        return list(range(count))
    return [int(e) for e in np.flatnonzero(fixed > 0)]


def _read_prompt(model: LoadedModel, ids: list[int]) -> _RunningExpert:
    """``model`` after one pass over the prefix token and the prompt (``ids``), its cache
    filled. The prompt's tokens are scored from the states a chunk of positions at a time
    (``target_logprobs``), and only the last position's log-probabilities are kept: no
    (len(ids), V) table stays, nor exists whole in float64."""
    import torch

    cache = new_cache(model.model)
    states = _states(model, cache, ids)
    targets = torch.tensor(ids[1:], dtype=torch.long)
    history = target_logprobs([model], [1.0], [states[:-1]], targets).numpy()
    return _RunningExpert(model, cache, _last_logprobs(model, states), history)


def _read_token(expert: _RunningExpert, token: int) -> None:
    """Record ``token``'s ln p in the expert's history and run it on the token."""
    expert.history = np.append(expert.history, float(expert.next_logprobs[token]))
    states = _states(expert.model, expert.cache, [token])
    expert.next_logprobs = _last_logprobs(expert.model, states)


def _states(model: LoadedModel, cache: Any, ids: list[int]) -> Any:
    """The model's states (len(ids), H) on ``ids`` after those in ``cache``, which takes them
    in: hidden states, or logits for a model whose logits are not its output layer's
    (``LoadedModel.states``)."""
    import torch

    inputs = torch.tensor([ids], device=model.device)
    return model.states(inputs, None, cache)[0][0]


def _last_logprobs(model: LoadedModel, states: Any) -> Any:
    """ln p of the next token over the vocabulary (V,) after the last of ``states``, in
    float64 on the CPU, in a tensor of its own."""
    import torch

    return torch.log_softmax(model.logits(states[-1:])[0], dim=-1).cpu().double()


def _next_token_weights(
    runner: EnsembleModel,
    document: Document,
    prior: np.ndarray | None,
    tokens: list[int],
    experts: Sequence[_RunningExpert],
    after: Continuation,
) -> np.ndarray:
    """The running experts' weights (k,) for the next token: an output-dependent router's
    (``prior`` None) from the ``tokens`` generated so far (their text ``after`` the prompt),
    the product rule's previous-token weights, else the router's ``prior`` for the prompt."""
    history = [e.history for e in experts]
    if prior is None:
        text = document.text + after(tokens)
        return _output_weights(runner, text, document.language, history)
    if runner.combine == "product":
        return product_weights(_with_next_token(history), prior)[:, -1]
    return prior


def _with_next_token(history: Sequence[np.ndarray]) -> np.ndarray:
    """L (k, T + 1): each expert's log-probabilities of the tokens so far, and a placeholder
    column for the token about to be chosen (its weights depend only on the columns before)."""
    return np.stack([np.append(h, 0.0) for h in history])


def _output_weights(
    runner: EnsembleModel,
    text: str,
    language: str | None,
    history: Sequence[np.ndarray],
) -> np.ndarray:
    """An output-dependent router's weights (k,) for the next token, on ``text``: the prompt
    and what the tokens so far add to it."""
    router = runner.output_router()
    stacked = _with_next_token(history)
    with routing(router) as plugin:
        returned = router.route_tokens(
            ScoredDocument(Document(text, language), stacked), runner.experts
        )
    token_weights = check_token_weights(returned, stacked.shape, router.name, plugin)
    return token_weights[:, -1]


def combined_logprobs(combine: str, weights: np.ndarray, logprobs: Sequence[Any]) -> Any:
    """ln p(v) over the vocabulary for the next token under rule ``combine``, from the experts'
    ln p_e(v) (``logprobs``: k tensors of shape (V,)) and their ``weights`` (k,) for this step
    (for ``product``, already its previous-token weights)."""
    import torch

    stacked = torch.stack(list(logprobs))
    if combine == "mixture":
        return torch.from_numpy(mixture(stacked.numpy(), weights))
    # logits and product: ln p_e = z_e - logsumexp(z_e), a constant per expert that the
    # softmax cancels, so log_softmax(sum_e w_e ln p_e) = log_softmax(sum_e w_e z_e)
    return torch.log_softmax(torch.from_numpy(np.ascontiguousarray(weights)) @ stacked, dim=-1)


def _pick(logprobs: Any, temperature: float, generator: Any) -> int:
    """The most likely token (temperature 0), else one sampled from the distribution
    sharpened by the temperature. The most likely token's ln p is taken off before dividing,
    so it stays 0 however small the temperature: a tiny one makes the others' -inf (picking
    the most likely token), never every token's (NaN)."""
    import torch

    if temperature == 0:
        return int(torch.argmax(logprobs))
    probabilities = torch.softmax((logprobs - logprobs.max()) / temperature, dim=-1)
    return int(torch.multinomial(probabilities, 1, generator=generator))
