"""The optimizer of the train step (SPEC §7): AdamW with linear warmup, cosine decay to a
floor and global-norm clipping; also used by the toy package's supervised training."""

import dataclasses
import math

import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup, cosine decay and global-norm clipping (SPEC §7).

    total_steps: optimizer steps of the whole run (the cosine ends there).
    warmup_steps: when set, wins over warmup_ratio; else ceil(warmup_ratio · total_steps).
    final_lr_fraction: the cosine decays to final_lr_fraction · learning_rate.
    max_grad_norm: global-norm clip; None disables it.
    micro_batches: gradient accumulation inside one train step; the optimizer sees one update.
    """

    total_steps: int
    learning_rate: float = 1e-5
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int | None = None
    warmup_ratio: float = 0.05
    final_lr_fraction: float = 0.1
    max_grad_norm: float | None = 1.0
    micro_batches: int = 1

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(
                f"warmup_steps must be in [0, total_steps={self.total_steps}), "
                f"got {self.warmup_steps}"
            )
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if self.micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {self.micro_batches}")

    @property
    def num_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        # Snap float error (0.05·100 = 5.000000000000001) before the ceil; keep one decay step.
        steps = math.ceil(round(self.warmup_ratio * self.total_steps, 9))
        return min(steps, self.total_steps - 1)


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
    """0 → lr linearly over the warmup, then cosine to final_lr_fraction·lr at total_steps.

    Step 0 has lr 0 when there is a warmup (as optax and HF); the value stays at the final
    lr past total_steps.
    """
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.num_warmup_steps,
        decay_steps=config.total_steps,
        end_value=config.learning_rate * config.final_lr_fraction,
    )


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on `learning_rate_schedule(config)`."""
    adamw = optax.adamw(
        learning_rate_schedule(config),
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
    if config.max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw)
