"""The data flags every script shares (`--dataset`, `--class_names`, `--image_size`, `--num_channels`, `--window`,
`--bits_stored`, `--val_fraction`, `--test_fraction`, `--resize_mode`, `--pad_value`, `--normalize_background`,
`--transparency_fill`, `--image_column`, `--label_column`, `--streaming`, `--no_verify_images`, `--unlabeled`),
`json_object_arg`, the type of the commands' `--pipeline_kwargs`, and `number_in`, the type of a numeric flag refused
at parse time when out of its range.

Kept apart from the readers, which import torch, so that a script's `--help` answers at once.
"""

import argparse
import json
from typing import Any, Callable

from .windows import WINDOW_NAMES
from .split_record import SPLIT_DEFAULTS, SPLIT_RECORD_NAME

# what `--image_size` None reads at (`data.DEFAULT_FOLDER_SIZE`, written out: the readers import torch)
NATIVE_SIZE_UNLESS_FILES = "32 px for digits, image folders and CSVs of paths, else the data's own size"

__all__ = [
    "add_class_names_arg",
    "add_column_args",
    "add_data_args",
    "add_split_args",
    "columns_from_args",
    "json_object_arg",
    "number_in",
]


def add_class_names_arg(parser: Any) -> None:
    parser.add_argument(
        "--class_names", nargs="+", default=None, metavar="NAME",
        help="a CSV's classes (or a .npz's, in label order): a label not among them is refused by name, where "
        "without them a typo would become a class of its own; an image folder or a saved dataset names its own, "
        "which these may only repeat, in their order (default: %(default)s, the labels found)",
    )  # fmt: skip


def add_column_args(parser: Any) -> None:
    """`--image_column` and `--label_column`: the columns of a saved `datasets` folder that has several Image or
    ClassLabel columns (read by [`columns_from_args`])."""
    parser.add_argument(
        "--image_column", default=None,
        help="a saved datasets folder's Image column, when it has several (default: %(default)s, its one Image column)",
    )  # fmt: skip
    parser.add_argument(
        "--label_column", default=None,
        help="a saved datasets folder's ClassLabel column, when it has several (CIFAR-100's fine_label and "
        "coarse_label) (default: %(default)s, its one ClassLabel column)",
    )  # fmt: skip


def columns_from_args(args: Any) -> dict[str, str | None]:
    """`image_column` and `label_column` from the flags of [`add_column_args`] (None where a parser has none)."""
    return {name: getattr(args, name, None) for name in ("image_column", "label_column")}


def add_data_args(parser: Any, image_size: int | None = None, streaming: bool = False, unlabeled: bool = False) -> Any:
    """The `--dataset`, `--class_names`, `--image_size`, `--num_channels`, `--window`, `--bits_stored`, `--val_fraction`,
    `--test_fraction`, `--resize_mode`, `--pad_value`, `--normalize_background`, `--transparency_fill`, `--image_column`
    and `--label_column` flags every script shares (read by [`load_data_from_args`]), with `streaming` the
    `--streaming` flag (read by `data.streaming_data_from_args`) of scripts whose trainer takes a dataset, and with
    `unlabeled` the `--unlabeled` flag of label-free trainers."""
    parser.add_argument(
        "--dataset", default="digits",
        help="'digits', a MedMNIST .npz, an IDX folder, an image folder (DICOM included), a .csv of "
        "path,label[,patient_id] or a folder a datasets Dataset / DatasetDict was saved to (default: %(default)s)",
    )  # fmt: skip
    add_class_names_arg(parser)
    size_default = "%(default)s" if image_size is not None else "%(default)s: " + NATIVE_SIZE_UNLESS_FILES
    parser.add_argument(
        "--image_size", type=number_in("[1, inf)", int), default=image_size,
        help=f"resize to this size (default: {size_default})",
    )  # fmt: skip
    parser.add_argument(
        "--num_channels", type=int, default=None, choices=[1, 3], help="1 or 3 (default: %(default)s, the dataset's)"
    )
    parser.add_argument(
        "--window", nargs="+", default=None, metavar="WINDOW",
        help=f"DICOM files: 1 or 3 windows, one channel each, each a name ({', '.join(WINDOW_NAMES)}) or a pair "
        "CENTER WIDTH in the files' modality values, HU for CT (--window brain subdural bone; --window 40 80); saved "
        "with the model (default: %(default)s, each file's own WindowCenter/Width, 'file')",
    )  # fmt: skip
    parser.add_argument(
        "--bits_stored", type=int, default=None,
        help="16-bit PNG / TIFF: the bit depth of the stored values (e.g. 12), the same for every file; saved with the "
        "model (default: %(default)s, each file's maximum rounded up to whole bits)",
    )  # fmt: skip
    add_split_args(parser)
    if unlabeled:
        parser.add_argument(
            "--unlabeled", action="store_true",
            help="--dataset is an image folder of unlabeled images: every image file in it and its subfolders (class "
            "folders or not) is read and trained on, none carved for val or test (a probe or evaluation then reads "
            "labelled data of its own, checked against these images' fingerprints) (default: %(default)s, class "
            "folders, carved into train / val / test)",
        )  # fmt: skip
    parser.add_argument(
        "--resize_mode", default="stretch",
        help="how images meet --image_size: 'stretch', 'pad' (aspect ratio kept, padded with --pad_value: elongated "
        "plankton) or 'crop'; checked by ImagePreprocessing before any image is read; saved with the model "
        "(default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--pad_value", type=float, default=-1.0,
        help="the fill of --resize_mode pad on the [-1, 1] scale: -1 black (X-rays, CT), 1 white (bright-field "
        "images: plankton on a light field; the default would frame them in black bars) (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--normalize_background", action="store_true",
        help="divide each bright-field image by the median of its border pixels, so grey and white instrument "
        "fields both become white (FlowCam vs in-situ cameras); saved with the model",
    )  # fmt: skip
    parser.add_argument(
        "--transparency_fill", type=float, default=None,
        help="composite the transparent pixels of PNG / GIF / TIFF cutouts onto this grey level of the [-1, 1] scale "
        "(1 white, -1 black), before any other step; saved with the model (default: alpha discarded, a transparent "
        "pixel read as the colour stored under it, as models trained before the flag existed read it)",
    )  # fmt: skip
    add_column_args(parser)
    if streaming:
        parser.add_argument(
            "--streaming", action="store_true",
            help="decode the images of an image folder, CSV or saved datasets folder only when a batch needs them "
            "(data larger than memory; --dataloader_num_workers decode in parallel); needs --num_channels (3 "
            "windows given with --window: 3); --image_size defaults to 32 (default: %(default)s, every image decoded "
            "into memory first)",
        )  # fmt: skip
        parser.add_argument(
            "--no_verify_images", action="store_true",
            help="with --streaming, do not read every image (train, val and test) once before training (each process "
            "its share, by --dataloader_num_workers workers; about one epoch's decoding, again on every resume): a "
            "file damaged past its header then stops the run when its batch is read, and the model records no "
            "fingerprints of its training images (evaluate and probe then cannot check their test images against "
            "them), also when only its resume skips the reading",
        )  # fmt: skip
    return parser


def add_split_args(parser: Any, from_model: bool = False) -> None:
    """`--val_fraction` and `--test_fraction`, the splits carved when the data has none (with `--seed`). With
    `from_model` (the commands that read a trained model) they default to the model's record (`data_splits.json`), so
    its test images are none it was trained on."""
    def default(name: str) -> tuple[float | None, str]:
        if from_model:
            return None, f"as the model's {SPLIT_RECORD_NAME} records, else {SPLIT_DEFAULTS[name]}"
        return SPLIT_DEFAULTS[name], "%(default)s"

    val_default, val_shown = default("val_fraction")
    test_default, test_shown = default("test_fraction")
    parser.add_argument(
        "--val_fraction", type=number_in("(0, 1)"), default=val_default,
        help=f"the share of the images left after the test split that is carved for val when the data has no val "
        f"split, patients kept on one side (default: {val_shown})",
    )  # fmt: skip
    parser.add_argument(
        "--test_fraction", type=number_in("(0, 1)"), default=test_default,
        help=f"the share of all images carved for test when the data has no test split (default: {test_shown}); a "
        "small cohort of P patients needs fractions of at least 1 / P",
    )  # fmt: skip


def json_object_arg(text: str) -> dict:
    """An argparse `type`: `text` read as a JSON object; anything else refused (argparse names the flag) with an
    example of the form, so `{method: 'likelihood'}` reads as what it is, not as "invalid loads value"."""
    example = """'{"method": "likelihood"}' (names and strings in double quotes, the whole in single quotes)"""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid JSON ({error}); expected a JSON object, e.g. {example}"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, e.g. {example}, got {text!r}")
    return value


def seed_argument(text: str) -> int:
    """An argparse `type` for a `--seed`: an integer numpy's generator takes (`validation.is_seed`; QA: `--seed -1`
    ended in numpy's "expected non-negative integer", naming no flag; a seed past 2**32 - 1 failed once the features
    were extracted)."""
    from ..validation import SEED_LIMIT  # torch comes with it: imported when a command runs, not for --help

    return number_in(f"[0, {SEED_LIMIT - 1}]", int)(text)


def number_in(interval: str, kind: type = float) -> Callable[[str], Any]:
    """An argparse `type`: a `kind` number (float or int) in `interval`, written as in mathematics ("[0, 1)",
    "(0, inf)", "[1, inf)"); anything else is refused while the flags are parsed, before any work (argparse names the
    flag)."""
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        above = value is not None and (value > low if interval[0] == "(" else value >= low)
        below = value is not None and (value < high if interval[-1] == ")" else value <= high)
        if not (above and below):  # NaN is neither
            raise argparse.ArgumentTypeError(f"expected {noun} in {interval}, got {text!r}")
        return value

    return parse
