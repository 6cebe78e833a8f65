"""Data at scale: peak memory and images/s of training data loading, feature extraction and `predict`.

On the NDSB 2015 plankton images (`../shared/data/ndsb2015_plankton`: 30,336 variable-size grey JPEGs stored as RGB,
121 classes), seeded random subsets of 1k, 10k and 30k images listed in a CSV, read as 64 px grey:

(a) training data loading: one epoch of the training split (batches of 64, shuffled), from the files to batches in
    the loop: in memory (`load_image_classification_data` decodes everything first, then a `TensorDataset`) vs
    streamed (`streaming_image_classification_data`, decoded on the fly) with 0 and 2 `DataLoader` workers;
(b) feature extraction (a tiny U-Net at 64 px, one block at one timestep, the three splits, as
    `extract_study_features` does): from the in-memory tensors vs from the streamed datasets, whose features go to
    float16 memory maps beyond a 1 MiB budget;
(c) `prediction.predict_files` (already batch-wise) of every image with a tiny U-Net-features pipeline;
(d) the probe grid (`fit_probe_grid`, 2 pairs of 512-wide features, 121 classes, 70/10/20 splits of the N feature
    rows, a fixed number of L-BFGS iterations: memory does not depend on how many) on features in memory (float32
    tensors) vs on disk (the float16 memory maps the extractor writes beyond its budget, read chunk by chunk).

Each measurement runs in a child process forked from this one after the imports, so the libraries' memory is shared
and measured once. Peak memory = the resident set of this process when it forks (interpreter, torch, the libraries:
`baseline_mib`) + the peak, sampled every 0.5 s with psutil, of the memory the child and its DataLoader workers own
(unique set size, summed: pages shared after the fork are not counted twice). images/s = images delivered (to the
loop, to the extractor, to the output file) / wall time from the listing to the last one.

Targets (issue 10): peak memory at 30k <= 1.3 x the 1k figure for streamed training data loading (2 workers), for
`predict` and for the probe grid on features on disk; with 2 workers, streamed loading at least as many images/s as
the in-memory path (at the largest size). For the probe stage images/s counts feature rows.

    python benchmarks/bench_data_scale.py --quick
    nice python benchmarks/bench_data_scale.py --num_threads 1
"""

import csv
import multiprocessing
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from _common import base_parser, data_path, report, setup, target_entry
from diffusion_classifiers import UNetFeatureClassifierPipeline
from diffusion_classifiers.data import load_image_classification_data, streaming_image_classification_data
from diffusion_classifiers.features import DiffusionFeatureExtractor
from diffusion_classifiers.models import LinearProbeHead, unet_config
from diffusion_classifiers.prediction import list_inputs, predict_files
from diffusion_classifiers.probing import fit_probe_grid

SIZES, QUICK_SIZES = [1000, 10000, 30000], [200, 400]
IMAGE_SIZE, BATCH_SIZE = 64, 64
BLOCK, TIMESTEP = "mid_block", 100
FEATURE_BUDGET_BYTES = 2**20
SAMPLE_SECONDS = 0.5  # one sample reads smaps of each process (~10 ms each): cheap enough not to slow the stage
MEMORY_RATIO_TARGET, SPEED_RATIO_TARGET = 1.3, 1.0
# The probe stage: pairs x width of the features (512: a mid block's channels, or a 2x2-pooled 128), its iterations
PROBE_PAIRS, PROBE_WIDTH, PROBE_ITERATIONS = [("mid_block", 100), ("mid_block", 500)], 512, 20
PROBE_SPLITS = {"train": 0.7, "val": 0.1, "test": 0.2}
PROBE_WRITE_ROWS = 4096
MIB = 2**20


# ------------------------------------------------------------------------------------------------------------------
# The data and the model
# ------------------------------------------------------------------------------------------------------------------


def write_subset_csv(root: Path, num_images: int, seed: int, folder: Path) -> Path:
    """A CSV `path,label` of `num_images` images drawn at random (seeded) from the plankton classes' folders."""
    files = sorted(root.glob("*/*.jpg"))
    if num_images > len(files):
        raise ValueError(f"--sizes: {num_images} images asked for, the data set has {len(files)}")
    chosen = sorted(np.random.default_rng(seed).choice(len(files), num_images, replace=False))
    path = folder / f"subset_{num_images}.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label")] + [(str(files[i]), files[i].parent.name) for i in chosen])
    return path


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(**unet_config("tiny", IMAGE_SIZE, 1))


def save_pipeline(class_names: list, folder: Path) -> Path:
    """A U-Net-features pipeline (tiny U-Net, random weights: speed and memory do not depend on them), saved."""
    unet, scheduler = tiny_unet(), DDPMScheduler()
    channels = {b.name: b.channels for b in DiffusionFeatureExtractor(unet, scheduler).blocks}[BLOCK]
    head = LinearProbeHead(channels, len(class_names), class_names=class_names, block=BLOCK, timestep=TIMESTEP)
    UNetFeatureClassifierPipeline(unet=unet, scheduler=scheduler, head=head).save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------------------------------
# The measurements (each in a forked child)
# ------------------------------------------------------------------------------------------------------------------


def load_in_memory(job: dict) -> dict:
    return load_image_classification_data(
        job["csv"], image_size=IMAGE_SIZE, num_channels=1, class_names=job["class_names"], seed=job["seed"]
    )


def load_streamed(job: dict) -> dict:
    return streaming_image_classification_data(
        job["csv"], num_channels=1, image_size=IMAGE_SIZE, class_names=job["class_names"], seed=job["seed"]
    )


def training_loading(job: dict) -> int:
    """One shuffled epoch of the training split, in batches, as the training loop reads it."""
    if job["mode"] == "in_memory":
        train = load_in_memory(job)["train"]
        dataset = TensorDataset(train.images, train.labels)
    else:
        dataset = load_streamed(job)["train"]
    workers = job["workers"]
    loader = DataLoader(
        dataset, batch_size=BATCH_SIZE, sampler=RandomSampler(dataset, generator=torch.Generator().manual_seed(0)),
        num_workers=workers, persistent_workers=workers > 0,
    )  # fmt: skip
    return sum(len(images) for images, _ in loader)


def feature_extraction(job: dict) -> int:
    extractor = DiffusionFeatureExtractor(tiny_unet(), DDPMScheduler())
    splits = load_in_memory(job) if job["mode"] == "in_memory" else load_streamed(job)
    count = 0
    for split in splits.values():
        images = split.images if job["mode"] == "in_memory" else split
        features = extractor.extract(
            images, [BLOCK], [TIMESTEP], batch_size=BATCH_SIZE, progress_bar={"disable": True},
            num_workers=job["workers"], max_memory_bytes=None if job["mode"] == "in_memory" else FEATURE_BUDGET_BYTES,
        )  # fmt: skip
        count += len(features[(BLOCK, TIMESTEP)])
    return count


def prediction(job: dict) -> int:
    pipe = UNetFeatureClassifierPipeline.from_pretrained(job["pipeline"])
    output = Path(job["work_dir"]) / f"predictions_{job['num_images']}.csv"
    summary = predict_files(pipe, list_inputs(job["csv"]), output, batch_size=BATCH_SIZE, overwrite=True, progress_bar=False)
    return summary.predicted


def probe_features(job: dict, num_classes: int):
    """Seeded class-dependent features `split -> pair -> [n, PROBE_WIDTH]` (float32 tensors in memory, or float16
    memory maps written a block of rows at a time, never held whole) and their labels `split -> [n]`."""
    rng = np.random.default_rng(job["seed"])
    num_rows = job["num_images"]
    labels_all = rng.integers(0, num_classes, num_rows)
    centres = rng.normal(size=(num_classes, PROBE_WIDTH)).astype(np.float32)
    bounds = np.cumsum([0] + [round(fraction * num_rows) for fraction in PROBE_SPLITS.values()])
    bounds[-1] = num_rows
    features, labels = {}, {}
    for split, start, stop in zip(PROBE_SPLITS, bounds[:-1], bounds[1:]):
        labels[split], features[split] = labels_all[start:stop], {}
        for i, pair in enumerate(PROBE_PAIRS):
            blocks = (
                centres[labels[split][row : row + PROBE_WRITE_ROWS]]
                + 4 * rng.standard_normal((min(PROBE_WRITE_ROWS, stop - start - row), PROBE_WIDTH), dtype=np.float32)
                for row in range(0, stop - start, PROBE_WRITE_ROWS)
            )
            if job["mode"] == "in_memory":
                features[split][pair] = torch.from_numpy(np.concatenate(list(blocks)))
                continue
            path = Path(job["work_dir"]) / f"probe_{num_rows}_{split}_{i}.float16"
            with open(path, "wb") as handle:  # written through a file, not a map: no page stays resident here
                for values in blocks:
                    values.astype(np.float16).tofile(handle)
            features[split][pair] = np.memmap(path, np.float16, "r", shape=(stop - start, PROBE_WIDTH))
    return features, labels


def probe_grid(job: dict) -> int:
    features, labels = probe_features(job, len(job["class_names"]))
    with warnings.catch_warnings():  # max_iter is reached on purpose: memory does not depend on the iteration count
        warnings.simplefilter("ignore", UserWarning)
        fit_probe_grid(
            features["train"], labels["train"], features["val"], labels["val"], features["test"], labels["test"],
            num_classes=len(job["class_names"]), max_iter=PROBE_ITERATIONS, progress_bar={"disable": True},
            device="cpu",  # as every stage here: the host's data path (a GPU's context would add to the memory read)
        )  # fmt: skip
    return job["num_images"]


STAGES = {
    "training_loading": training_loading, "feature_extraction": feature_extraction, "predict": prediction,
    "probe": probe_grid,
}  # fmt: skip


def _child(job: dict, connection) -> None:
    torch.set_num_threads(job["num_threads"])
    start = time.perf_counter()
    images = STAGES[job["stage"]](job)
    connection.send({"images": images, "seconds": time.perf_counter() - start})
    connection.close()


def _owned_bytes(process: psutil.Process) -> int:
    """Unique set size of a process and its children (their own pages; shared ones are the baseline's)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_full_info().uss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure(job: dict, baseline_bytes: int) -> dict:
    """Run `job` in a forked child; its images/s and peak memory (baseline + sampled peak of the owned pages)."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(job, sender))
    child.start()
    process, peak = psutil.Process(child.pid), [0]

    def sample():
        while child.is_alive():
            peak[0] = max(peak[0], _owned_bytes(process))
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = receiver.recv()
    child.join()
    sampler.join()
    if child.exitcode:
        raise RuntimeError(f"the {job['stage']} measurement of {job} failed (exit code {child.exitcode})")
    return {
        "images": result["images"],
        "seconds": round(result["seconds"], 2),
        "images_per_s": round(result["images"] / result["seconds"], 1),
        "peak_mib": round((baseline_bytes + peak[0]) / MIB, 1),
        "owned_peak_mib": round(peak[0] / MIB, 1),
    }


# ------------------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------------------


def variants(workers: list) -> dict:
    """`stage -> [(mode, workers)]` measured at every size."""
    streamed = [("streaming", w) for w in workers]
    return {
        "training_loading": [("in_memory", 0), *streamed],
        "feature_extraction": [("in_memory", 0), *streamed],
        "predict": [("files", 0)],
        "probe": [("in_memory", 0), ("on_disk", 0)],
    }


def targets(results: dict, sizes: list, workers: list) -> dict:
    """The targets of the stages measured."""
    small, large = str(sizes[0]), str(sizes[-1])

    def peak_ratio(runs: dict) -> dict:
        return target_entry(runs[large]["peak_mib"] / runs[small]["peak_mib"], MEMORY_RATIO_TARGET, False)

    entries = {}
    if results.get("training_loading"):
        fast, loading = f"streaming_workers_{max(workers)}", results["training_loading"]
        entries[f"training_loading_{fast}_peak_{large}_over_{small}"] = peak_ratio(loading[fast])
        entries[f"training_loading_{fast}_images_per_s_over_in_memory_at_{large}"] = target_entry(
            loading[fast][large]["images_per_s"] / loading["in_memory_workers_0"][large]["images_per_s"],
            SPEED_RATIO_TARGET,
        )
    if results.get("predict"):
        entries[f"predict_peak_{large}_over_{small}"] = peak_ratio(results["predict"]["files_workers_0"])
    if results.get("probe"):
        entries[f"probe_on_disk_peak_{large}_over_{small}"] = peak_ratio(results["probe"]["on_disk_workers_0"])
    return entries


def main():
    parser = base_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="default 1000 10000 30000; --quick 200 400")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers of the streamed path")
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES), help="the stages measured")
    args = parser.parse_args()
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    workers = [2] if args.quick and args.workers == [0, 2] else args.workers  # quick: the target's configuration
    device = setup(args)
    root = data_path("ndsb2015_plankton", "train")
    class_names = sorted(folder.name for folder in root.iterdir() if folder.is_dir())

    results = {stage: {} for stage in args.stages}
    with tempfile.TemporaryDirectory() as work_dir:
        pipeline = save_pipeline(class_names, Path(work_dir) / "pipeline")
        baseline = psutil.Process().memory_info().rss
        for size in sizes:
            csv_path = write_subset_csv(root, size, args.seed, Path(work_dir))
            for stage, runs in variants(workers).items():
                if stage not in args.stages:
                    continue
                for mode, num_workers in runs:
                    job = dict(
                        stage=stage, mode=mode, workers=num_workers, csv=str(csv_path), class_names=class_names,
                        seed=args.seed, num_images=size, pipeline=str(pipeline), work_dir=work_dir,
                        num_threads=torch.get_num_threads(),
                    )  # fmt: skip
                    figures = measure(job, baseline)
                    results[stage].setdefault(f"{mode}_workers_{num_workers}", {})[str(size)] = figures
                    print(stage, mode, num_workers, size, figures, flush=True)
    report(
        "bench_data_scale",
        args,
        device,
        {
            "image_size": IMAGE_SIZE,
            "batch_size": BATCH_SIZE,
            "sizes": sizes,
            "baseline_mib": round(baseline / MIB, 1),
            "results": results,
            "targets": targets(results, sizes, workers),
        },
    )


if __name__ == "__main__":
    main()
