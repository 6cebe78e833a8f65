"""SIGTERM: a scheduler's notice that a training run must end (SLURM's time limit or preemption, `scancel`, a
Kubernetes eviction, `kill`). The run stops after its current step with a final `checkpoint-N`, the loss files and the
model, as when `--max_train_minutes` runs out, and `--resume_from_checkpoint latest` continues it. Schedulers send
SIGKILL a grace period later (SLURM's KillWait, 30 s by default; Kubernetes' terminationGracePeriodSeconds): the step and the
checkpoint have to fit in it. A second SIGTERM acts as it would without this (the process ends at once).

Every process of a distributed run stops at the same step: a signal received by any of them stops all. DataLoader
workers ignore SIGTERM while their process trains (SLURM signals every process of a job, workers included), so that
none dies under it before it has saved; after, they end on SIGTERM again, as `multiprocessing` ends them at exit.
"""

import ctypes
import functools
import multiprocessing
import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from accelerate import Accelerator

__all__ = ["StopSignal", "pop_signal_that_stopped_training"]

_stopped_by: Optional[str] = None  # the process-wide record `run_from_shell` reads for the exit status


class StopSignal:
    """While `listening()`, SIGTERM is recorded instead of ending the process; `received_anywhere` says whether any
    process of the run has received it; `worker_init_fn` is the DataLoader workers' (see the module's docstring)."""

    def __init__(self):
        self.received: Optional[str] = None
        # shared with the loader's worker processes, which it tells whether to leave SIGTERM to this one
        self.listening_now = multiprocessing.RawValue(ctypes.c_bool, False)

    @contextmanager
    def listening(self) -> Iterator[None]:
        global _stopped_by
        _stopped_by = None  # this run's, not an earlier one's in the same process
        if threading.current_thread() is not threading.main_thread():  # Python lets only the main thread set handlers
            yield
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous is None:  # a handler set outside Python, which Python cannot set back: the default's
            previous = signal.SIG_DFL

        def record(signum, frame):  # no output here: the interrupted code may be writing to the same stream
            self.received = signal.Signals(signum).name
            signal.signal(signal.SIGTERM, previous)  # a second one is not held back

        signal.signal(signal.SIGTERM, record)
        self.listening_now.value = True
        try:
            yield
        finally:
            self.listening_now.value = False
            signal.signal(signal.SIGTERM, previous)

    @property
    def worker_init_fn(self) -> Callable[[int], None]:
        return functools.partial(_leave_sigterm_to_the_main_process, self.listening_now)

    def received_anywhere(self, accelerator: Accelerator) -> bool:
        if accelerator.num_processes == 1:
            return self.received is not None
        received = torch.tensor([float(self.received is not None)], device=accelerator.device)
        return bool(accelerator.gather(received).max().item())

    def record_stop(self) -> str:
        """The run stopped for this signal (or another process's): recorded for the exit status of the command."""
        global _stopped_by
        _stopped_by = self.received or signal.SIGTERM.name
        return _stopped_by


def _leave_sigterm_to_the_main_process(main_listening: ctypes.c_bool, worker_id: int) -> None:
    """A loader worker ignores SIGTERM while its main process listens for it; after, SIGTERM ends it as by default
    (a worker that ignored it would hang `multiprocessing`'s exit, which terminates its daemon processes and waits)."""

    def on_sigterm(signum, frame):
        if main_listening.value:
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


def pop_signal_that_stopped_training() -> Optional[str]:
    """The name of the signal that stopped a training run in this process since the last call (None when none did)."""
    global _stopped_by
    stopped_by, _stopped_by = _stopped_by, None
    return stopped_by
