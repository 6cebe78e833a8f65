"""Shared benchmark helpers: the data folder, training budgets, the supervised CNN baseline, targets, timing, the
record of where and how a figure was measured, and the results writer.

Every benchmark prints its record as ONE JSON line, last; a full (non `--quick`) run also writes it to
`benchmarks/results/<name>.json`, so each stored figure carries the exact command, machine, versions and date.
Its targets are `figures["targets"] = {name: {"value": x, "target": y, "met": bool}}` (`target_entry`).
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Sequence

import torch
from threadpoolctl import threadpool_info, threadpool_limits

if TYPE_CHECKING:  # imported where used: the speed benchmarks need no trainer
    from diffusion_classifiers.training import TrainingArguments

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_path(*parts: str) -> Path:
    """`../shared/data/<parts>`, where the benchmarks' data sets live (outside this repository); raises, naming the
    path, when it is missing."""
    path = DATA_ROOT.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"benchmark data: expected {path} (the shared data folder next to this repository), but it does not exist"
        )
    return path


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a small run (< 60 s on 2 CPU cores); writes no file")
    parser.add_argument("--device", default=None, help="torch device; defaults to cuda when available")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--num_threads", type=int, default=None, help="CPU threads of torch and BLAS (scikit-learn); default: theirs"
    )
    parser.add_argument("--output", default=None, help="results file of a full run; default results/<benchmark>.json")
    return parser


def setup(args: argparse.Namespace) -> torch.device:
    """Apply the common flags; returns the device to run on."""
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
        threadpool_limits(limits=args.num_threads)  # numpy/scipy BLAS, used by scikit-learn
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def training_arguments(
    output_dir: str, max_train_steps: int, learning_rate: float, lr_warmup_steps: int, seed: int,
    train_batch_size: int = 64, use_ema: bool = False,
) -> "TrainingArguments":  # fmt: skip
    """The `TrainingArguments` of a benchmark run: its budget, the loop's defaults otherwise, one checkpoint (the
    last; `output_dir` is a temporary folder)."""
    from diffusion_classifiers.training import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        train_batch_size=train_batch_size,
        max_train_steps=max_train_steps,
        learning_rate=learning_rate,
        lr_warmup_steps=lr_warmup_steps,
        checkpointing_steps=max_train_steps,
        use_ema=use_ema,
        seed=seed,
    )


@dataclass
class CNNBaseline:
    probs: torch.Tensor  # (N, K) class probabilities on the test images, on the CPU
    info: dict  # train_supervised_cnn's: num_parameters, selected_step, val_accuracy_by_step, final_loss
    train_seconds: float
    test_seconds: float


def cnn_baseline(
    train, val, test, output_dir: str, widths: Sequence[int], max_train_steps: int, train_batch_size: int,
    learning_rate: float, seed: int, augment: bool = False, device: torch.device = torch.device("cpu"),
) -> CNNBaseline:  # fmt: skip
    """The supervised baseline: a `SupervisedCNN` trained on `train` with its checkpoint chosen on `val` (test plays
    no part), then run on `test`."""
    from diffusion_classifiers.training import predict_proba, train_supervised_cnn

    start = time.perf_counter()
    model, info = train_supervised_cnn(
        train.images, train.labels, val.images, val.labels, train.num_classes, output_dir,
        max_train_steps=max_train_steps, train_batch_size=train_batch_size, learning_rate=learning_rate, seed=seed,
        augment=augment, widths=widths,
    )  # fmt: skip
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    probs = predict_proba(model.to(device), test.images)
    return CNNBaseline(probs, info, train_seconds, time.perf_counter() - start)


def target_entry(value: float, target: float, higher_is_better: bool = True) -> dict:
    """One entry of `figures["targets"]`: the measured `value`, the `target` it must reach (at least, or at most
    when not `higher_is_better`) and whether it does."""
    value, target = float(value), float(target)
    return {"value": value, "target": target, "met": value >= target if higher_is_better else value <= target}


@contextmanager
def timed(walls: dict, stage: str):
    """Record the wall time of a stage in `walls[stage]` (seconds)."""
    start = time.perf_counter()
    yield
    walls[stage] = round(time.perf_counter() - start, 1)


def median_seconds(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Dict[str, float]:
    """Median wall time of each function. The functions run round-robin, so that load from other processes on a
    shared machine hits every variant alike; `warmup` untimed rounds come first; CUDA is synchronised."""

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    times = {name: [] for name in fns}
    for round_index in range(warmup + repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def environment(device: torch.device) -> dict:
    """Machine, package versions and UTC date of a measurement."""
    import diffusers
    import numpy
    import sklearn

    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],  # other processes on a shared machine slow every variant
        "torch_num_threads": torch.get_num_threads(),
        "blas_threads": [info["num_threads"] for info in threadpool_info()],
        "torch_device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": numpy.__version__,
        },
    }


def report(name: str, args: argparse.Namespace, device: torch.device, figures: dict) -> dict:
    """Print the record as the last line; on a full run also write it atomically to `args.output`, by default
    `results/<name>.json`."""
    record = {
        "benchmark": name,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "quick": bool(args.quick),
        "environment": environment(device),
        "figures": figures,
    }
    if not args.quick:
        output = Path(args.output or RESULTS_DIR / f"{name}.json")
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=output.parent, suffix=".tmp", delete=False) as f:
            json.dump(record, f, indent=2)
        os.replace(f.name, output)  # never leaves a half-written result behind
    print(json.dumps(record), flush=True)
    return record
