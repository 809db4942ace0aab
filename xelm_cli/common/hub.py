"""Whether the Hugging Face Hub answers now: asked once, quickly, before anything that would
otherwise wait through the Hub client's retries (about 25 s) to fail offline."""

import functools

from xelm_cli.common.errors import exception_line

HUB_PROBE_SECONDS = 5


@functools.cache
def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached now, or None when it answers: one request to
    its endpoint through huggingface_hub's own session (its endpoint, proxies and certificates)
    with a short timeout."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_SECONDS)
    except Exception as exc:  # any answer means reachable; no answer, whatever the error, not
        return exception_line(exc, 200)
    return None
