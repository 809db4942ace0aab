"""Running text is scored in length-sorted batches within a token budget, with a bounded share
of that budget as padding."""

import numpy as np

from xelm_cli.ensemble.scoring import MAX_BATCH_PADDING, Segment, length_batches


def _segments(lengths: list[int]) -> list[Segment]:
    return [Segment(i, 0, [1] * n, 0) for i, n in enumerate(lengths)]


def _shape(batches: list[list[Segment]]) -> list[list[int]]:
    return [[len(s.tokens) for s in batch] for batch in batches]


def test_batches_hold_each_segment_once_within_budget_and_padding() -> None:
    rng = np.random.default_rng(3)
    lengths = [int(n) for n in rng.integers(2, 300, 2000)]
    budget = 4096
    batches = length_batches(_segments(lengths), budget)
    assert sorted(s.sequence for batch in batches for s in batch) == list(range(len(lengths)))
    for batch in batches:
        width = len(batch[0].tokens)  # the longest first
        assert all(len(s.tokens) <= width for s in batch)
        padded = width * len(batch)
        assert padded <= budget or len(batch) == 1
        assert padded - sum(len(s.tokens) for s in batch) <= MAX_BATCH_PADDING * budget


def test_padding_is_bounded_by_the_budget_not_by_a_batchs_own_size() -> None:
    """A few long documents of spread lengths share a batch while their padding is within a
    tenth of a full batch (100 of 1,000 positions): 100, 70, 70 pad 60, a share of their own
    300 positions that split them before; a 10 after them would pad 150."""
    batches = length_batches(_segments([100, 70, 70, 10, 10]), 1000)
    assert _shape(batches) == [[100, 70, 70], [10, 10]]
    # a full batch: 30 of 10 and 8 of 5 pad 40 of 400 positions; a ninth 5 would pad 45
    batches = length_batches(_segments([10] * 30 + [5] * 10), 400)
    assert _shape(batches) == [[10] * 30 + [5] * 8, [5] * 2]
