"""`--max_train_minutes`: the wall-clock budget of a training run, and the learning-rate schedule fitted to it.

A run cut by its budget would otherwise stop in mid-schedule: a cosine schedule laid out over `max_train_steps`
that the budget lets reach only a third of them ends with its learning rate still near the peak, and the model (and
its EMA) is that of a run that never annealed. With `--fit_lr_schedule_to_budget` (the default) the warmup runs on
steps, as planned, and the rest of the schedule on whichever is further along, the steps or the clock, so that it
reaches its end value at the deadline; a run that reaches `max_train_steps` first follows the schedule step by step
as without a budget.
"""

import time
from typing import Callable, Optional

import torch
from accelerate import Accelerator
from accelerate.scheduler import AcceleratedScheduler
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["ScheduleOnTheClock", "TrainingBudget", "restore_step_rates"]


class TrainingBudget:
    """A wall-clock budget of `minutes` counted from its creation (`clock()` in seconds; None: no budget).

    `fraction_used` is the same on every process (the largest over processes), so that no process waits in a
    collective for one that has stopped, and every process sets the same learning rate."""

    def __init__(self, minutes: Optional[float], clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.start = clock()
        self.seconds = None if minutes is None else 60.0 * minutes

    def fraction_used(self, accelerator: Accelerator) -> float:
        """The share of the budget spent so far (0.0 without a budget); 1.0 or more once it has run out."""
        if self.seconds is None:
            return 0.0
        spent = torch.tensor([(self.clock() - self.start) / self.seconds], device=accelerator.device)
        # the largest over processes by gather: `reduce(..., "max")` sums on accelerate < 1.14
        return float(accelerator.gather(spent).max().item())


def set_learning_rates(lr_scheduler: AcceleratedScheduler, position: int) -> None:
    """Give every parameter group the rate of `position` on its schedule (a LambdaLR, as diffusers' `get_scheduler`
    builds), without moving the schedule's own position."""
    schedule = lr_scheduler.scheduler
    if not isinstance(schedule, LambdaLR):
        raise TypeError(f"expected a LambdaLR schedule (diffusers' get_scheduler), got {type(schedule).__name__}")
    rates = [base * factor(position) for base, factor in zip(schedule.base_lrs, schedule.lr_lambdas)]
    for group, rate in zip(schedule.optimizer.param_groups, rates):
        group["lr"] = rate
    schedule._last_lr = rates  # what `get_last_lr` shows (the progress bar, trackers)


def restore_step_rates(lr_scheduler: AcceleratedScheduler) -> None:
    """After resuming: the rate of the steps made. The optimizer state of a checkpoint written by a run whose schedule
    followed the clock holds the clock's rate, which the schedule's step count does not give back."""
    set_learning_rates(lr_scheduler, lr_scheduler.scheduler.last_epoch)


class ScheduleOnTheClock:
    """Sets a prepared learning-rate schedule's rate to that of the point the budget has reached, when further on.

    The warmup runs on steps. Once it is over, the clock takes over from the point it has reached: the rest of the
    schedule is spread over the rest of the budget, so the time spent before (setting up, compiling, loading, a slow
    first step) moves neither the warmup nor the decay. The schedule's own position (`last_epoch`, saved in every
    checkpoint) keeps counting steps: a resumed run starts again from the rate of the steps made
    (`restore_step_rates`) and spreads the rest of the schedule over its own budget (a new cycle of a cosine, as in
    warm restarts). `catch_up` is called after `lr_scheduler.step()` on every optimizer step, with the same
    `fraction_used` on every process; it never moves the rate back along the schedule."""

    def __init__(self, lr_scheduler: AcceleratedScheduler, schedule_length: int, warmup_length: int):
        self.lr_scheduler = lr_scheduler
        self.length = schedule_length
        self.warmup = warmup_length
        self.taken_over_at = None  # (fraction of the budget used, schedule position) when the clock took over

    def catch_up(self, fraction_used: float) -> None:
        position = self.lr_scheduler.scheduler.last_epoch
        if self.taken_over_at is None:
            if position >= self.warmup:
                self.taken_over_at = (fraction_used, position)
            return
        used_then, position_then = self.taken_over_at
        if used_then >= 1.0:  # the budget ran out before the clock could take over: the run stops at this step
            return
        share = min((fraction_used - used_then) / (1.0 - used_then), 1.0)
        clock_position = round(position_then + share * (self.length - position_then))
        if clock_position > position:
            set_learning_rates(self.lr_scheduler, clock_position)
