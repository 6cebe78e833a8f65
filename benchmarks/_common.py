"""Shared benchmark helpers: timing, the record of where and how a figure was measured, and the results writer.

Every benchmark prints its record as ONE JSON line, last; a full (non `--quick`) run also writes it to
`benchmarks/results/<name>.json`, so each stored figure carries the exact command, machine, versions and date.
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
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from threadpoolctl import threadpool_info, threadpool_limits

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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
        output = Path(getattr(args, "output", None) or RESULTS_DIR / f"{name}.json")
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=output.parent, suffix=".tmp", delete=False) as f:
            json.dump(record, f, indent=2)
        os.replace(f.name, output)  # never leaves a half-written result behind
    print(json.dumps(record), flush=True)
    return record
