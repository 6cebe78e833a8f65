"""SIGTERM: a scheduler's notice that a training run must end (SLURM's time limit or preemption, `scancel`, a
Kubernetes eviction, `kill`); Ctrl-C (SIGINT): a person's. The run stops after its current step with a final
`checkpoint-N`, the loss files and the model, as when `--max_train_minutes` runs out, and `--resume_from_checkpoint
latest` continues it. Schedulers send SIGKILL a grace period later (SLURM's KillWait, 30 s by default; Kubernetes'
terminationGracePeriodSeconds): the step and the checkpoint have to fit in it. A second SIGTERM or Ctrl-C acts as it
would without this (the process ends at once; Ctrl-C's `KeyboardInterrupt`).

Every process of a distributed run stops at the same step: a signal received by any of them stops all. DataLoader
workers ignore both signals while their process trains (SLURM signals every process of a job, workers included, and a
terminal's Ctrl-C the whole foreground process group), so that none dies under them before the last step's batches are
read and the run saved; after, they end on them again, as `multiprocessing` ends them at exit."""

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
STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_CTRL_C_NOTICE = b"\nCtrl-C: the run stops after this step with a checkpoint (Ctrl-C again stops it at once)\n"


class StopSignal:
    """While `listening()`, SIGTERM and SIGINT are recorded instead of ending the process; `received_anywhere` names
    the signal any process of the run has received; `worker_init_fn` is the DataLoader workers' (see the module's
    docstring)."""

    def __init__(self):
        self.received: Optional[str] = None
        # shared with the loader's worker processes, which it tells whether to leave the signals to this one
        self.listening_now = multiprocessing.RawValue(ctypes.c_bool, False)

    @contextmanager
    def listening(self) -> Iterator[None]:
        global _stopped_by
        _stopped_by = None  # this run's, not an earlier one's in the same process
        if threading.current_thread() is not threading.main_thread():  # Python lets only the main thread set handlers
            yield
            return
        previous = {number: _settable(signal.getsignal(number)) for number in STOPPING_SIGNALS}
        # a signal this process was started to ignore (a shell's background job ignores Ctrl-C) stays ignored (review)
        previous = {number: handler for number, handler in previous.items() if handler is not signal.SIG_IGN}

        def record(signum, frame):
            self.received = self.received or signal.Signals(signum).name
            signal.signal(signum, previous[signum])  # a second one is not held back
            if signum == signal.SIGINT:  # unbuffered: the interrupted code may be writing to sys.stderr
                os.write(2, _CTRL_C_NOTICE)

        for number in previous:
            signal.signal(number, record)
        self.listening_now.value = True
        try:
            yield
        finally:
            self.listening_now.value = False
            for number, handler in previous.items():
                signal.signal(number, handler)

    @property
    def worker_init_fn(self) -> Callable[[int], None]:
        return functools.partial(_leave_signals_to_the_main_process, self.listening_now)

    def received_anywhere(self, accelerator: Accelerator) -> Optional[str]:
        """The name of the signal this process, or any other of the run, has received (None while none has)."""
        if accelerator.num_processes == 1:
            return self.received
        number = signal.Signals[self.received].value if self.received else 0
        gathered = accelerator.gather(torch.tensor([number], device=accelerator.device))
        received = [int(n) for n in gathered.tolist() if n]
        if received and self.received is None:
            self.received = signal.Signals(received[0]).name
        return self.received

    @property
    def name(self) -> str:
        """The signal that stops the run (SIGTERM where none was recorded)."""
        return self.received or signal.SIGTERM.name

    def record_stop(self) -> str:
        """The run stopped for this signal (or another process's): recorded for the exit status of the command."""
        global _stopped_by
        _stopped_by = self.name
        return _stopped_by


def _settable(handler):
    """A handler `signal.signal` can set back: one set outside Python reads as None, and is the default's."""
    return signal.SIG_DFL if handler is None else handler


def _leave_signals_to_the_main_process(main_listening: ctypes.c_bool, worker_id: int) -> None:
    """A loader worker ignores SIGTERM and SIGINT while its main process listens for them; after, they end it as by
    default (a worker that ignored SIGTERM would hang `multiprocessing`'s exit, which terminates its daemon processes
    and waits; torch's worker loop ends quietly on SIGINT's `KeyboardInterrupt`)."""

    def on_signal(signum, frame):
        if main_listening.value:
            return
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for number in STOPPING_SIGNALS:
        signal.signal(number, on_signal)


def pop_signal_that_stopped_training() -> Optional[str]:
    """The name of the signal that stopped a training run in this process since the last call (None when none did)."""
    global _stopped_by
    stopped_by, _stopped_by = _stopped_by, None
    return stopped_by
