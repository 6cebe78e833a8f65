"""The process count `accelerate launch` was asked for, against the one that runs; the mixed precision it asks for.

`accelerate launch --cpu --num_processes 2 script.py` (accelerate 1.15) starts ONE process with the simple launcher:
only `--multi_gpu` goes through torchrun. The script then trains alone and exits 0. The simple launcher tells its
child nothing about the count except that it exports `MASTER_ADDR`/`MASTER_PORT` when asked for more than one
process, so the request is read from the launcher's own command line (Linux `/proc/<parent>/cmdline`).

`accelerate launch --mixed_precision` (or `accelerate config`'s) reaches the script as `ACCELERATE_MIXED_PRECISION`
("no" when neither gives one); a script's own `--mixed_precision` overrides it (`resolve_mixed_precision`).
"""

import os
from typing import List, Optional, Union

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import parse_flag_from_env

from .arguments import MIXED_PRECISIONS

__all__ = [
    "LAUNCHER_PRECISION_VARIABLE",
    "check_one_process",
    "check_world_size",
    "launcher_mixed_precision",
    "launcher_requested_processes",
    "precision_override_warning",
    "resolve_mixed_precision",
]

LAUNCHER_PRECISION_VARIABLE = "ACCELERATE_MIXED_PRECISION"  # what `accelerate launch` passes its precision in

_NUM_PROCESSES_FLAGS = ("--num_processes", "--num-processes")


def check_world_size(state: Union[Accelerator, PartialState]) -> None:
    """Fail before training when the launcher was asked for another number of processes than accelerate runs
    (`state`: the `Accelerator`, or the `PartialState` a script makes before reading its data). A `ValueError`, so
    that a shell command prints it in one line (`cli.run_from_shell`)."""
    requested = _requested_processes()
    if requested is None or requested == state.num_processes:
        return
    usage = f"ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {requested} --num_machines 1"
    if "WORLD_SIZE" not in os.environ:  # the simple launcher
        cause = "the simple launcher starts one process without --multi_gpu"
    elif not parse_flag_from_env("ACCELERATE_USE_CPU") and not torch.cuda.is_available():
        cause = "--multi_gpu on a machine without a GPU: without ACCELERATE_USE_CPU=1 each process trains alone"
    else:
        cause = f"torchrun started {requested} processes (WORLD_SIZE), accelerate joined {state.num_processes}"
    raise ValueError(
        f"accelerate launch was asked for {requested} processes but {state.num_processes} runs ({cause}); on a CPU "
        f"machine use {usage}"
    )


def check_one_process(command: str) -> None:
    """Refuse a command that runs as one process (`probe`, `evaluate`) when `accelerate launch` started several: each
    would run the whole job and write the same output files. Read from torchrun's `WORLD_SIZE`, before any work: the
    simple launcher asked for several processes starts one, which may run."""
    started = int(os.environ.get("WORLD_SIZE", "1"))
    if started > 1:
        raise ValueError(
            f"{command} runs as one process, but accelerate launch started {started}: each would run the whole job "
            f"and write the same files; run it as one process (python / diffusion-classifiers {command} ..., or "
            "accelerate launch --num_processes 1); predict is the command that splits its work across processes"
        )


def _requested_processes() -> Optional[int]:
    if "WORLD_SIZE" in os.environ:  # torchrun (accelerate's --multi_gpu path) states the world size itself
        return int(os.environ["WORLD_SIZE"])
    if "MASTER_ADDR" not in os.environ:  # the simple launcher sets it only for more than one process
        return None
    return launcher_requested_processes(_parent_command_line())


def launcher_requested_processes(command_line: List[str]) -> Optional[int]:
    """`--num_processes N` of an `accelerate launch` command line, before the training script's own arguments;
    None when `command_line` is not `accelerate launch` or does not give the flag."""
    starts = [i for i, token in enumerate(command_line) if token in ("launch", "accelerate.commands.launch")]
    if not starts or not any("accelerate" in token for token in command_line[: starts[0] + 1]):
        return None
    tokens = command_line[starts[0] + 1 :]
    for position, token in enumerate(tokens):
        if token.endswith(".py"):  # the training script: the flags after it are the script's
            return None
        name, _, value = token.partition("=")
        if name in _NUM_PROCESSES_FLAGS:
            value = value or (tokens[position + 1] if position + 1 < len(tokens) else "")
            return int(value) if value.isdigit() else None
    return None


def _parent_command_line() -> List[str]:
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return [token.decode(errors="replace") for token in f.read().split(b"\0") if token]
    except OSError:  # not Linux, or not readable: the request cannot be known
        return []


def launcher_mixed_precision() -> Optional[str]:
    """The mixed precision `accelerate launch` (its `--mixed_precision`, else `accelerate config`'s, else "no") or the
    caller's environment asks for in `ACCELERATE_MIXED_PRECISION`, lowercased as accelerate reads it; None when the
    variable is not set (a plain `python script.py`)."""
    value = os.environ.get(LAUNCHER_PRECISION_VARIABLE, "").strip().lower()
    return value or None


def resolve_mixed_precision(requested: Optional[str]) -> str:
    """The precision a run trains in: the script's `--mixed_precision` when given (`requested`), else the launcher's
    (`launcher_mixed_precision`), else "no" (what accelerate itself decides with `mixed_precision=None`). A launcher's
    precision this loop does not train in ("fp8") is refused, naming the variable and the flag that overrides it."""
    if requested is not None:
        return requested
    launcher = launcher_mixed_precision()
    if launcher is None:
        return "no"
    if launcher not in MIXED_PRECISIONS:
        raise ValueError(
            f"accelerate launch asked for mixed precision {launcher!r} ({LAUNCHER_PRECISION_VARIABLE}, from its "
            f"--mixed_precision or accelerate config), which this library does not train in; launch with one of "
            f"{list(MIXED_PRECISIONS)}, or pass the script's --mixed_precision, which overrides it"
        )
    return launcher


def precision_override_warning(requested: Optional[str]) -> Optional[str]:
    """The warning of a script's `--mixed_precision` (`requested`) that overrides another precision the launcher asked
    for, or None when they agree, either is not given, or the launcher's is "no" (accelerate launch passes "no" when
    neither its flag nor its config names one: `accelerate launch train.py --mixed_precision bf16` is the usual way)."""
    launcher = launcher_mixed_precision()
    if requested is None or launcher in (None, "no", requested):
        return None
    return (
        f"--mixed_precision {requested} overrides accelerate launch's mixed precision {launcher!r} "
        f"({LAUNCHER_PRECISION_VARIABLE}, from its --mixed_precision or accelerate config, \"no\" when neither gives "
        f"one): the run trains in {requested}; leave out the script's flag to train in the launcher's"
    )
