"""`--max_train_minutes`: the wall-clock budget of a training run, and the learning-rate schedule fitted to it.

A run cut by its budget would otherwise stop in mid-schedule: a cosine schedule laid out over `max_train_steps`
that the budget lets reach only a third of them ends with its learning rate still near the peak, and the model (and
its EMA) is that of a run that never annealed. With `--fit_lr_schedule_to_budget` (the default) the schedule runs
on whichever is further along, the steps or the clock, so that it reaches its end value at the deadline; a run that
reaches `max_train_steps` first follows the schedule step by step as without a budget.
"""

import time
from typing import Callable, Optional

import torch
from accelerate import Accelerator
from accelerate.scheduler import AcceleratedScheduler
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["ScheduleOnTheClock", "TrainingBudget"]


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
        return float(accelerator.reduce(spent, reduction="max").item())

    def expired(self, accelerator: Accelerator) -> bool:
        return self.fraction_used(accelerator) >= 1.0


class ScheduleOnTheClock:
    """Sets a prepared learning-rate schedule's rate to that of the point the budget has reached, when further on.

    The schedule's own position (`last_epoch`, saved in every checkpoint) keeps counting steps: a resumed run starts
    again from the rate of the steps made and spreads the rest of the schedule over its own budget (a new cycle of a
    cosine, as in warm restarts), not from the end of the schedule the first run's clock reached. `catch_up` is
    called after `lr_scheduler.step()` on every optimizer step; it never moves the rate back along the schedule."""

    def __init__(self, lr_scheduler: AcceleratedScheduler, schedule_length: int):
        self.schedule = lr_scheduler.scheduler
        if not isinstance(self.schedule, LambdaLR):
            raise TypeError(f"expected a LambdaLR schedule (diffusers' get_scheduler), got {type(self.schedule).__name__}")
        self.start = self.schedule.last_epoch
        self.length = schedule_length
        self._set_learning_rates(self.start)  # the optimizer of a resumed checkpoint holds the clock's last rate

    def catch_up(self, fraction_used: float) -> None:
        clock_position = round(self.start + min(fraction_used, 1.0) * (self.length - self.start))
        if clock_position > self.schedule.last_epoch:
            self._set_learning_rates(clock_position)

    def _set_learning_rates(self, position: int) -> None:
        rates = [base * factor(position) for base, factor in zip(self.schedule.base_lrs, self.schedule.lr_lambdas)]
        for group, rate in zip(self.schedule.optimizer.param_groups, rates):
            group["lr"] = rate
        self.schedule._last_lr = rates  # what `get_last_lr` shows (the progress bar, trackers)
