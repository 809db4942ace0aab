"""The trainer's optimisation options as spec/training.md section 3 states them: the learning
rate schedule, clipping turned off by 0, weight decay of matrices only, and a warning for a
warm-up that does not end before the run does."""

import json
from pathlib import Path

import pytest
import torch
from conftest import weights
from train_helpers import request
from xelm_trainer import CausalLMTrainer
from xelm_trainer.loop import learning_rate, warmup_note
from xelm_trainer.model_setup import decay_groups
from xelm_trainer.options import TrainOptions

from xelm_cli.common.errors import UsageError
from xelm_cli.plugin.contracts import checkpoint_dir


def rates(total: int, **options: object) -> list[float]:
    resolved = TrainOptions(**{"lr": 1.0, **options})  # type: ignore[arg-type]
    return [learning_rate(step, total, resolved) for step in range(total)]


def test_the_schedules_warm_up_then_decay_towards_0_one_step_past_the_last() -> None:
    assert rates(4) == [1.0, 0.75, 0.5, 0.25]
    assert rates(6, warmup_steps=2) == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert rates(3, schedule="constant", warmup_steps=1) == [1.0, 1.0, 1.0]
    assert rates(4, schedule="cosine") == pytest.approx([1.0, 0.853553, 0.5, 0.146447], abs=1e-6)


def test_weight_decay_leaves_biases_and_norm_scales_alone() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    (one,) = decay_groups(model, 0.0)
    assert len(one["params"]) == 4 and "weight_decay" not in one
    matrices, vectors = decay_groups(model, 0.1)
    assert [tuple(p.shape) for p in matrices["params"]] == [(3, 4)]
    assert matrices["weight_decay"] == 0.1
    assert [tuple(p.shape) for p in vectors["params"]] == [(3,), (3,), (3,)]
    assert vectors["weight_decay"] == 0.0


def test_clip_0_trains_unclipped_and_logs_the_norm(
    seed_bundle: Path, train_shards: Path, tmp_path: Path
) -> None:
    """--clip 0 is no clipping (was a clip to norm 0: every gradient zeroed, nothing learned)."""
    runs = {}
    for clip in (0.0, 1e9):
        out = tmp_path / f"clip-{clip:g}"
        req = request(seed_bundle, train_shards, out, tokens=512, options={"clip": clip})
        CausalLMTrainer().train(req)
        lines = (checkpoint_dir(out) / "metrics.jsonl").read_text().splitlines()
        runs[clip] = (weights(out), [json.loads(line)["grad_norm"] for line in lines])
    unclipped, huge = runs[0.0], runs[1e9]
    seed = weights(seed_bundle)
    assert not torch.equal(unclipped[0]["lm_head.weight"], seed["lm_head.weight"])
    assert all(torch.equal(unclipped[0][name], huge[0][name]) for name in seed)
    assert unclipped[1] == huge[1] and all(norm > 0 for norm in unclipped[1])


def test_a_warm_up_as_long_as_the_run_is_warned_of(
    seed_bundle: Path, train_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    req = request(seed_bundle, train_shards, tmp_path / "out", options={"warmup_steps": 16})
    CausalLMTrainer().train(req)
    assert (
        "xelm: warning: --warmup-steps 16 is not below the run's 16 steps: the learning rate "
        "reaches --lr only at the last step and never decays (warm up for fewer than 16 steps "
        "or raise --tokens)\n"
    ) in capsys.readouterr().err


@pytest.mark.parametrize(
    ("warmup", "schedule", "said"),
    [
        (3, "linear", None),
        (4, "linear", "reaches --lr only at the last step and never decays"),
        (4, "cosine", "reaches --lr only at the last step and never decays"),
        (4, "constant", "reaches --lr only at the last step"),
        (5, "linear", "never reaches --lr"),
    ],
)
def test_the_warm_up_warning_says_whether_the_rate_reaches_lr(
    warmup: int, schedule: str, said: str | None
) -> None:
    """A warm-up of the run's length reaches --lr at its last step (lr (s + 1) / W at s = W - 1,
    before: 'never reaches'); a longer one never does."""
    reached = rates(4, warmup_steps=warmup, schedule=schedule)[-1] == 1.0
    assert reached == (warmup <= 4)
    note = warmup_note(warmup, 4, schedule)
    if said is None:
        assert note is None
    else:
        assert note == (
            f"xelm: warning: --warmup-steps {warmup} is not below the run's 4 steps: the learning "
            f"rate {said} (warm up for fewer than 4 steps or raise --tokens)"
        )


def test_a_resume_on_other_held_out_shards_is_refused(
    seed_bundle: Path, train_shards: Path, valid_shards: Path, tmp_path: Path
) -> None:
    """The validation curve of a resumed run measures one held-out set: other shards (or
    another number of blocks) are refused; a checkpoint written before these were compared
    resumes with any."""
    from dataclasses import replace

    from train_helpers import Killed, StopsAt

    options = {"checkpoint_every": 2, "eval_every": 2}
    req = request(seed_bundle, train_shards, tmp_path / "out", tokens=768, valid=valid_shards,
                  options=options)  # fmt: skip
    with pytest.raises(Killed):
        StopsAt(3).train(req)
    state = checkpoint_dir(req.output) / "step-000000002" / "state.json"
    for changed in (
        replace(req, valid=train_shards, resume=True),
        replace(req, resume=True, options={**req.options, "eval_blocks": 4}),
    ):
        with pytest.raises(UsageError, match=r"the run differs in (valid|eval_blocks) \("):
            CausalLMTrainer().train(changed)
    saved = json.loads(state.read_text())
    for key in ("valid", "eval_blocks"):
        del saved["identity"][key]
    state.write_text(json.dumps(saved))
    resumed = CausalLMTrainer().train(replace(req, valid=train_shards, resume=True))
    assert resumed.manifest.training is not None
    # a run without held-out shards may validate from its resume on
    unvalidated = replace(req, valid=None, output=tmp_path / "later")
    with pytest.raises(Killed):
        StopsAt(3).train(unvalidated)
    later = CausalLMTrainer().train(replace(unvalidated, valid=valid_shards, resume=True))
    record = later.manifest.training
    assert record is not None and [step for step, _ in record["valid_curve"]][-1] == 6


def test_a_negative_seed_is_refused_before_the_model_loads(
    seed_bundle: Path, train_shards: Path, tmp_path: Path
) -> None:
    req = request(seed_bundle, train_shards, tmp_path / "out", options={"seed": -1})
    with pytest.raises(UsageError, match=r"^--seed must not be negative$"):
        CausalLMTrainer().train(req)


def test_a_diverged_run_stops_in_one_line_and_writes_no_bundle(
    seed_bundle: Path, train_shards: Path, tmp_path: Path
) -> None:
    """A loss that is no longer a number ends the run at the step it is logged: nothing with
    NaN weights is written (the manifest's loss curve would not even be JSON)."""
    options = {"lr": 1e8, "log_every": 1, "clip": 0.0, "checkpoint_every": 1000}
    req = request(seed_bundle, train_shards, tmp_path / "out", options=options)
    with pytest.raises(
        UsageError, match=r"^training diverged: the loss is (nan|inf) at step \d+; "
    ):
        CausalLMTrainer().train(req)
    assert not (tmp_path / "out").exists()
