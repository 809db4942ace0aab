"""What went wrong reading a dataset from the Hugging Face Hub, by the error's type and HTTP
status: a refusal (gated, not found, no such revision, no access) with the one line that says
what to do, or the network's failure (worth running again). Shared by the streamed sources
(``xelm_cli.data.sources``) and a dataset given as a corpus (``xelm_cli.data.hf_datasets``)."""

from xelm_cli.common.errors import UsageError

MIRROR_VARIABLE = "XELM_HUB_MIRROR"
OFFLINE_MODE = "OfflineModeIsEnabled"  # huggingface_hub's error while HF_HUB_OFFLINE is set

# Errors of the HTTP clients under huggingface_hub, datasets and fsspec (by class name: none of
# them is imported for this) that mean the network failed, not the data: a connection refused,
# reset or timed out, or a response cut short mid-stream.
NETWORK_ERRORS = frozenset(
    {
        "TransportError",  # httpx / httpx2: ConnectError, ReadError, RemoteProtocolError, ...
        "TimeoutException",  # httpx / httpx2
        "ChunkedEncodingError",  # requests
        "ConnectionError",  # requests (the built-in one is also caught by type)
        "Timeout",  # requests
        "ProtocolError",  # urllib3: "Connection broken"
        "ReadTimeoutError",  # urllib3
        "IncompleteRead",  # http.client, urllib3
        "ClientConnectionError",  # aiohttp
        "ClientPayloadError",  # aiohttp: "Response payload is not completed"
        "ServerDisconnectedError",  # aiohttp
    }
)
TRANSIENT_STATUSES = (408, 429)  # and 5xx: the server's trouble, not the request's


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors that led to it (``raise ... from``, or raised while handling)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        cause = current.__cause__
        if cause is None and not current.__suppress_context__:
            cause = current.__context__
        current = cause
    return chain


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of an HTTP error (huggingface_hub's ``HfHubHTTPError``, httpx's
    ``HTTPStatusError``, requests' ``HTTPError``: a ``response`` with ``status_code``;
    aiohttp's ``ClientResponseError``: ``status``); None for any other error."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status is None and type(exc).__name__ == "ClientResponseError":
        status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def hub_refusal(
    exc: BaseException, dataset: str, *, revision: str | None = None, where: str | None = None
) -> UsageError | None:
    """The Hub's refusal to give ``dataset`` (``where``: the part of it read) as the one line
    that says what to do, judged on ``exc`` and the errors that led to it (``datasets`` raises
    ``DatasetNotFoundError`` from huggingface_hub's error); None when ``exc`` is no refusal
    (network errors, and the Hub's 429 and 5xx answers, pass). By type, then HTTP status:
    gated (``GatedRepoError``) -> accept its terms and log in; a revision not found ->
    ``--revision``; a data file not found (404) -> ``--revision``; a dataset not found (404,
    or 401 for a private one) -> its name, or log in; 401/403 otherwise -> log in."""
    chain = causes(exc)
    names = set().union(*map(_names, chain))
    statuses = {status for status in map(http_status, chain) if status is not None}
    said = " ".join(str(error) for error in chain).lower()
    not_found = "DatasetNotFoundError" in names or 404 in statuses
    gated = any("DatasetNotFoundError" in _names(e) and "gated" in str(e).lower() for e in chain)
    if "GatedRepoError" in names or gated:  # (not the Hub's "private or gated" of a 401)
        return UsageError(
            f"cannot load dataset {dataset}: it is gated on the Hugging Face Hub: accept its "
            "terms on its page, then log in (`hf auth login`) or set HF_TOKEN"
        )
    says_revision = "revision '" in said or "revision not found" in said  # not a URL's /revision/
    if "RevisionNotFoundError" in names or (not_found and says_revision):
        return no_revision(dataset, revision)
    if 404 in statuses and "EntryNotFoundError" in names and "DatasetNotFoundError" not in names:
        return UsageError(
            f"cannot read {where or dataset}: one of its files is not on the Hugging Face Hub "
            "(404); check --revision, or pass a local copy"
        )
    if not_found or "RepositoryNotFoundError" in names:
        again = " and --revision" if revision else ""
        return UsageError(
            f"cannot load dataset {dataset}: not a local directory, and not found on the Hub "
            f"(or private: log in with `hf auth login` or set HF_TOKEN); check the name{again}, "
            "or pass a local copy"
        )
    refused = statuses & {401, 403}
    if refused:
        return UsageError(
            f"cannot load dataset {dataset}: the Hugging Face Hub refused access "
            f"({min(refused)}): log in (`hf auth login`) or set HF_TOKEN, and accept the "
            "dataset's terms on its page if it is gated"
        )
    return None


def no_revision(dataset: str, revision: str | None) -> UsageError:
    asked = f"revision {revision!r}" if revision else "the revision asked for"
    return UsageError(
        f"cannot load dataset {dataset}: it has no {asked} on the Hugging Face Hub; "
        "check --revision (a branch, tag or commit of the dataset)"
    )


def is_network_error(exc: BaseException, *, remote: bool = True) -> bool:
    """Whether ``exc`` (or an error that led to it) is the network's failure: a connection or
    timeout error, an HTTP client's transport error (``NETWORK_ERRORS``), an HTTP answer of a
    busy or failing server (``TRANSIENT_STATUSES``, 5xx), or, reading a ``remote`` dataset, a
    compressed file that ended early (``EOFError``: its download was cut short). A refusal
    (401, 403, 404: ``hub_refusal``) is not."""
    for error in causes(exc):
        if isinstance(error, (ConnectionError, TimeoutError)) or _names(error) & NETWORK_ERRORS:
            return True
        status = http_status(error)
        if status is not None and (status in TRANSIENT_STATUSES or status >= 500):
            return True
        if remote and isinstance(error, EOFError):
            return True
    return False


def without_the_hub(dataset: str, exc: BaseException) -> str:
    """The way out when the Hub did not answer for ``dataset`` (``exc``): HF_HUB_OFFLINE unset
    when that is why (nothing is read from the Hub while it is set), else the same command
    again; or a local copy where ``resolve_dataset`` looks for one."""
    copy = f"or {local_copies([dataset])}"
    if offline_mode(exc):
        return f"HF_HUB_OFFLINE is set: unset it to read from the Hub, {copy}"
    return f"offline? run the same command again to continue, {copy}"


def local_copies(datasets: list[str]) -> str:
    """The way to read ``datasets`` without the Hub: where ``resolve_dataset`` looks."""
    what = "a copy of it" if len(datasets) == 1 else "copies of them"
    where = ", ".join(f"{d}/" for d in datasets)
    return f"set {MIRROR_VARIABLE} to a folder holding {what} as {where}"


def offline_mode(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error that caused it, is huggingface_hub's refusal to go online
    (``OfflineModeIsEnabled``: HF_HUB_OFFLINE is set), or says so (datasets names it in a
    ConnectionError of its own, "Couldn't reach ... on the Hub (OfflineModeIsEnabled)")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if type(exc).__name__ == OFFLINE_MODE or f"({OFFLINE_MODE})" in str(exc):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
