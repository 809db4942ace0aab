"""xelm's causal-LM trainer: continue training a bundle on packed documents of its languages.

This module stays light (hooks run on every ``xelm`` invocation); torch is imported by
``loop`` only when a run starts.
"""

from typing import Any, ClassVar

from xelm_cli.api import Bundle, Register, Trainer, TrainRequest, hookimpl

from .options import TrainOptions


class CausalLMTrainer(Trainer):
    """Continue training a causal LM on packed ``bos doc eos`` blocks of its languages."""

    name: ClassVar[str] = "causal-lm"
    Options: ClassVar[type] = TrainOptions  # the declaration `xelm train` derives its flags from

    def train(self, request: TrainRequest) -> Bundle:
        from .loop import TrainingRun

        return TrainingRun().train(request)

    @classmethod
    def check_options(cls, options: dict[str, Any], *, world_size: int = 1) -> None:
        TrainOptions.from_dict({**options, "world_size": world_size})


@hookimpl
def register_trainers(register: Register) -> None:
    register(CausalLMTrainer.name, CausalLMTrainer)
