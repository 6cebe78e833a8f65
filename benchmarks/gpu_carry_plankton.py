"""The NDSB plankton set (and the FlowCam demo) made small enough to travel to a GPU machine.

NDSB's 30,336 JPEGs (128 MB) do not fit the 64 MiB a device call carries beside the wheels. `pack` (here) runs the
plankton benchmark's own preprocessing at the GPU preset's size (grey, background made white, aspect-preserving
resize into a white-padded square) on every image and stores the result as uint8 in one compressed `.npz`, with the
FlowCam images as they are. There the benchmark reads the `.npz` itself (`--data`): its preprocessing leaves the
packed images unchanged (same size: no resize; white border: background 1), so the run sees the images of a run on
the JPEGs up to the uint8 rounding (at most 1/510 of the range).

    python benchmarks/gpu_carry_plankton.py pack [--image_size 64]        # -> .gpu_plankton/ (carry it)
    python benchmarks/plankton_accuracy.py --preset gpu --data .gpu_plankton/ndsb_train.npz \
        --shift_data .gpu_plankton/flowcam
"""

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import data_path  # noqa: E402
from plankton_accuracy import PRESETS, list_class_folders, preprocessing  # noqa: E402

CARRY_DIR = Path(__file__).parent.parent / ".gpu_plankton"
PACKED = "ndsb_train.npz"


def pack(image_size: int, source: Path, out_dir: Path, batch: int = 2048) -> None:
    """`source`'s class folders at `image_size` (the benchmark's preprocessing), as uint8, into
    `out_dir`/ndsb_train.npz."""
    files, labels, names = list_class_folders(source)
    contract = preprocessing(dataclasses.replace(PRESETS["gpu"], image_size=image_size))
    images = np.empty((len(files), image_size, image_size), np.uint8)
    for start in range(0, len(files), batch):
        unit = (contract([str(f) for f in files[start : start + batch]])[:, 0] + 1) / 2
        images[start : start + batch] = (unit * 255).round().clamp(0, 255).byte().numpy()
    out_dir.mkdir(exist_ok=True)
    np.savez_compressed(out_dir / PACKED, images=images, labels=labels, class_names=np.array(names))
    print(f"{len(files)} images, {len(names)} classes at {image_size} px -> {out_dir / PACKED}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("pack").add_argument("--image_size", type=int, default=PRESETS["gpu"].image_size)
    args = parser.parse_args()
    pack(args.image_size, data_path("ndsb2015_plankton", "train"), CARRY_DIR)
    shutil.rmtree(CARRY_DIR / "flowcam", ignore_errors=True)
    shutil.copytree(data_path("plankton_flowcam_demo", "images"), CARRY_DIR / "flowcam")


if __name__ == "__main__":
    main()
