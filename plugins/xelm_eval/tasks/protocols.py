"""How a candidate is scored: the protocols.

- ``paper`` (the X-ELM authors): English template words for every language; a candidate's
  score is its mean token log-likelihood (the lowest mean NLL wins).
- ``harness`` (lm-evaluation-harness): label words translated where the harness translates
  them (XNLI's "right", "Yes", "Also", "No"; XCOPA's connectives); a candidate's score is its
  summed log-likelihood (the highest wins).
"""

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from xelm_cli.api import UsageError

PROTOCOLS: dict[str, str] = {
    "paper": "mean token log-likelihood of each candidate, English template words (the lowest "
    "mean NLL wins)",
    "harness": "summed log-likelihood of each candidate, translated label words where "
    "lm-evaluation-harness translates them (the highest wins)",
}


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`, else a one-line UsageError."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r}; choose {' or '.join(PROTOCOLS)}")
    return protocol


def choice_score(logprobs: ArrayLike, protocol: str) -> float:
    """A candidate's score, higher is better: its mean token log-probability under ``paper``
    (minus the mean NLL), its summed log-probability under ``harness``."""
    values = np.asarray(logprobs, dtype=np.float64)
    if values.size == 0:
        raise ValueError("a candidate has no tokens")
    return float(values.mean() if check_protocol(protocol) == "paper" else values.sum())


def predict(choice_logprobs: Sequence[ArrayLike], protocol: str) -> int:
    """The index of the best candidate (the first one on a tie)."""
    return int(np.argmax([choice_score(lp, protocol) for lp in choice_logprobs]))
