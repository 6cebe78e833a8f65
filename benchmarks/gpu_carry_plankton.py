"""The NDSB plankton set (and the FlowCam demo) made small enough to travel to a GPU machine, and unpacked there.

NDSB's 30,336 JPEGs (128 MB) do not fit the 64 MiB a device call carries beside the wheels. `pack` (here) runs the
plankton benchmark's own preprocessing at the GPU preset's size (grey, background made white, aspect-preserving
resize into a white-padded square) on every image and stores the result as uint8 in one compressed `.npz`, with the
FlowCam images as they are. `unpack` (there) writes the images back as PNG class folders; the benchmark reads them
through the same preprocessing, which leaves them unchanged (same size: no resize; white border: background 1),
so the run sees the images of a run on the JPEGs up to the uint8 rounding (at most 1/510 of the range).

    python benchmarks/gpu_carry_plankton.py pack [--image_size 64]        # -> .gpu_plankton/ (carry it)
    python benchmarks/gpu_carry_plankton.py unpack DIR                    # -> DIR/ndsb/<class>/*.png, DIR/flowcam
    python benchmarks/plankton_accuracy.py --preset gpu --data DIR/ndsb --shift_data DIR/flowcam
"""

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import data_path  # noqa: E402
from plankton_accuracy import PRESETS, list_class_folders, preprocessing  # noqa: E402

CARRY_DIR = Path(__file__).parent.parent / ".gpu_plankton"
PACKED = "ndsb_train.npz"


def pack(image_size: int, batch: int = 2048) -> None:
    files, labels, names = list_class_folders(data_path("ndsb2015_plankton", "train"))
    contract = preprocessing(dataclasses.replace(PRESETS["gpu"], image_size=image_size))
    images = np.empty((len(files), image_size, image_size), np.uint8)
    for start in range(0, len(files), batch):
        unit = (contract([str(f) for f in files[start : start + batch]])[:, 0] + 1) / 2
        images[start : start + batch] = (unit * 255).round().clamp(0, 255).byte().numpy()
    CARRY_DIR.mkdir(exist_ok=True)
    relative = np.array([f"{f.parent.name}/{f.stem}.png" for f in files])
    np.savez_compressed(CARRY_DIR / PACKED, images=images, labels=labels, class_names=np.array(names), files=relative)
    shutil.rmtree(CARRY_DIR / "flowcam", ignore_errors=True)
    shutil.copytree(data_path("plankton_flowcam_demo", "images"), CARRY_DIR / "flowcam")
    print(f"{len(files)} images, {len(names)} classes at {image_size} px -> {CARRY_DIR}")


def unpack(out_dir: Path) -> None:
    packed = np.load(CARRY_DIR / PACKED, allow_pickle=False)
    for relative, image in zip(packed["files"], packed["images"]):
        path = out_dir / "ndsb" / str(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    shutil.copytree(CARRY_DIR / "flowcam", out_dir / "flowcam", dirs_exist_ok=True)
    print(f"{len(packed['files'])} images -> {out_dir / 'ndsb'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("pack").add_argument("--image_size", type=int, default=PRESETS["gpu"].image_size)
    commands.add_parser("unpack").add_argument("out_dir", type=Path)
    args = parser.parse_args()
    pack(args.image_size) if args.command == "pack" else unpack(args.out_dir)


if __name__ == "__main__":
    main()
