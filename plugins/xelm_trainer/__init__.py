"""xelm's causal-LM trainer: continue training a bundle on packed documents of its languages.

This module stays light (hooks run on every ``xelm`` invocation); torch is imported by
``loop`` only when a run starts.
"""

from typing import ClassVar

from xelm_cli.api import Bundle, Register, Trainer, TrainRequest, hookimpl

from .options import TrainOptions


class CausalLMTrainer(Trainer):
    """Continue training a causal LM on packed ``bos doc eos`` blocks of its languages."""

    name: ClassVar[str] = "causal-lm"
    Options: ClassVar[type] = TrainOptions  # the declaration `xelm train` derives its flags from

    def train(self, request: TrainRequest) -> Bundle:
        from .loop import TrainingRun

        return TrainingRun().train(request)


@hookimpl
def register_trainers(register: Register) -> None:
    register(CausalLMTrainer.name, CausalLMTrainer)
