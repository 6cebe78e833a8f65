"""Coverage of `diffusion-classifiers evaluate`'s 95% intervals, by simulation of a classifier of known error rates.

`evaluate` (`confidence_intervals.intervals_of_metrics`) gives each headline figure a 95% interval: Wilson's for
accuracy, sensitivity and specificity, DeLong's for a binary AUC, DeLong's variance carried over to the average of
one-against-the-rest AUCs for a multi-class AUC, a percentile bootstrap within each class for balanced accuracy,
macro-F1 and a binary task's average precision; the last three and the multi-class AUC's only where every class scored
holds `MIN_CLASS_IMAGES` (10) images or more. Here test sets are drawn from a known model (each image's class logits:
a signal on its true class, the signal set per class so that recall varies by class, plus standard normal noise;
decisions the argmax, scores the softmax probabilities: a binary evaluate ranks by their log-odds, in the same order)
and each figure's interval is checked against the population's figure, computed on a `--population_size` sample
(200,000 images, the setting's class shares) with scikit-learn's definitions (checked against the library's point estimates on every setting's first
draw). Where the library withholds an interval (a class of fewer than 10 images), the interval it would give without
that guard is measured instead: `_class_average_intervals` of the confusion matrix (the bootstrap
`classification_intervals` runs once the guard passes) and `multi_class_auc_interval` of the ranking it was given.

Settings (class counts fixed in every draw, as a stratified split gives them): `ndsb_624` (121 classes, 624 images
shared in proportion to the class sizes of the 30,336 NDSB 2015 plankton images, every class at least 1: 46 classes
of one image, 100 of fewer than 10, as a small stratified split of that long tail gives them), `ndsb_624_at_least_5`
and `ndsb_624_at_least_10` (every class raised to 5 or 10 images: 889 and 1,355 images); `ten_classes_2_each`,
`_5_each`, `_10_each` (10 classes, 2, 5 or 10 images each); `binary_200` (120/80 images, class 1 positive) and
`binary_50` (30/20). Per figure: the coverage of the population's figure (over the draws that gave an interval) with
its Monte-Carlo standard error, on which side the misses fell, how often the library withheld the interval, how often
no interval was given even without the guard, the mean width and the mean estimate. Targets: each (setting, figure)
whose interval the library gives in every draw, coverage >= 0.95 - 2 sqrt(0.95 * 0.05 / draws); those it withholds
are reported without targets (they are why it withholds them). The full run (400 draws a setting: a Monte-Carlo
standard error of 1.1 points at 95%) takes 4.6-5.4 minutes on one CPU thread; `--quick` (20 draws, 50,000 population
images) ~30 s.

    python benchmarks/interval_coverage.py --quick
"""

import math
import time

import numpy as np
from sklearn.metrics import (
    accuracy_score, average_precision_score, balanced_accuracy_score, f1_score, recall_score, roc_auc_score,
)  # fmt: skip

from _common import base_parser, coverage_floor, report, setup, simulation_args, target_entry
from diffusion_classifiers.confidence_intervals import (
    CONFIDENCE_LEVEL, MIN_CLASS_IMAGES, _class_average_intervals, auc_influence, intervals_of_metrics,
    multi_class_auc_interval,
)  # fmt: skip
from diffusion_classifiers.metrics import classification_metrics, finite_ranking, float_array

# The images of each of the 121 classes of the NDSB 2015 plankton training set (PlanktonSet 1.0), largest first:
# the files of each class folder of data/ndsb2015_plankton/train, counted (its class_counts.txt lists them too).
NDSB_CLASS_SIZES = (
    1979, 1934, 1189, 1172, 914, 899, 889, 815, 708, 703, 696, 694, 681, 678, 625, 536, 532, 519, 511, 500, 483, 439,
    425, 417, 412, 394, 393, 385, 372, 363, 352, 336, 317, 287, 286, 274, 247, 242, 236, 229, 212, 201, 190, 179, 178,
    175, 174, 173, 170, 158, 153, 150, 141, 136, 135, 132, 131, 128, 127, 123, 114, 113, 113, 108, 108, 106, 96, 96,
    92, 88, 87, 85, 80, 77, 76, 75, 73, 71, 65, 64, 63, 61, 57, 56, 55, 54, 53, 52, 49, 49, 49, 43, 42, 38, 38, 38,
    36, 35, 31, 30, 30, 29, 29, 27, 24, 24, 24, 23, 21, 19, 16, 16, 14, 14, 14, 13, 13, 12, 10, 10, 9,
)  # fmt: skip
NDSB_TEST_IMAGES = 624
SETTINGS = {  # the class counts of every test set: ("ndsb", least images a class) or (classes, images a class)
    "ndsb_624": ("ndsb", 1), "ndsb_624_at_least_5": ("ndsb", 5), "ndsb_624_at_least_10": ("ndsb", 10),
    "ten_classes_2_each": (10, 2), "ten_classes_5_each": (10, 5), "ten_classes_10_each": (10, 10),
    "binary_200": (2, (120, 80)), "binary_50": (2, (30, 20)),
}  # fmt: skip
MULTI_CLASS_FIGURES = ("accuracy", "balanced_accuracy", "macro_f1", "auc")
BINARY_FIGURES = ("accuracy", "sensitivity", "specificity", "balanced_accuracy", "macro_f1", "auc", "average_precision")
# Each class's signal (the logit added on its true class) spread evenly over this range, in an order fixed per number
# of classes: recall from about 16% to 96% of 121 classes, 21% to 82% of 10, 71% and 80% of 2 (noise: standard normal).
SIGNALS = {121: (1.5, 4.5), 10: (0.5, 2.5), 2: (0.8, 1.2)}
LEVEL = CONFIDENCE_LEVEL
DEFAULTS = {"draws": 400, "population_size": 200_000}
QUICK = {"draws": 20, "population_size": 50_000}


def ndsb_test_counts(total: int = NDSB_TEST_IMAGES) -> np.ndarray:
    """`total` images shared among the NDSB classes in proportion to their sizes (largest remainders), every class at
    least one: a class whose share is under one image gets one, the rest is shared among the others."""
    sizes, ones = np.array(NDSB_CLASS_SIZES, dtype=np.float64), np.zeros(len(NDSB_CLASS_SIZES), dtype=bool)
    while True:
        quota = sizes * (total - ones.sum()) / sizes[~ones].sum()
        below = ~ones & (quota < 1)
        if not below.any():
            break
        ones |= below
    counts = np.where(ones, 1, np.floor(quota)).astype(int)
    remainders = np.where(ones, -1.0, quota - np.floor(quota))
    counts[np.argsort(-remainders, kind="stable")[: total - counts.sum()]] += 1
    return counts


def class_counts(setting: str) -> np.ndarray:
    """The images of each class in every test set of `setting`."""
    classes, images = SETTINGS[setting]
    if classes == "ndsb":
        return np.maximum(ndsb_test_counts(), images)
    return np.array(images) if isinstance(images, tuple) else np.full(classes, images)


def signals(num_classes: int) -> np.ndarray:
    """Each class's signal: `SIGNALS`' range spread evenly over the classes, in an order fixed by their number."""
    low, high = SIGNALS[num_classes]
    return np.random.default_rng(num_classes).permutation(np.linspace(low, high, num_classes))


def draw(counts: np.ndarray, rng: np.random.Generator) -> tuple:
    """Labels [N] (`counts[k]` images of class k) and the model's probabilities [N, K]."""
    labels = np.repeat(np.arange(len(counts)), counts)
    logits = rng.normal(0, 1, (len(labels), len(counts)))
    logits[np.arange(len(labels)), labels] += signals(len(counts))[labels]
    logits -= logits.max(1, keepdims=True)  # the softmax in place: a population's [N, 121] array is large
    np.exp(logits, out=logits)
    logits /= logits.sum(1, keepdims=True)
    return labels, logits


def population_figures(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """Every figure by scikit-learn's definitions (the population's, on a large sample; class 1 positive of two)."""
    decisions, num_classes = probabilities.argmax(1), probabilities.shape[1]
    values = {
        "accuracy": accuracy_score(labels, decisions),
        "balanced_accuracy": balanced_accuracy_score(labels, decisions),
        "macro_f1": f1_score(labels, decisions, average="macro", labels=np.arange(num_classes)),
    }
    if num_classes == 2:
        values["sensitivity"] = recall_score(labels, decisions, pos_label=1)
        values["specificity"] = recall_score(labels, decisions, pos_label=0)
        values["auc"] = roc_auc_score(labels, probabilities[:, 1])
        values["average_precision"] = average_precision_score(labels, probabilities[:, 1])
    else:
        values["auc"] = roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    return {name: float(value) for name, value in values.items()}


def evaluated(labels: np.ndarray, probabilities: np.ndarray, full: bool = False) -> tuple:
    """The metrics and intervals `evaluate` reports of a test set (`evaluation._scored_metrics`: decisions the argmax,
    the probabilities what the AUC ranks by; class 1 positive of two). A multi-class AUC is the library's
    `auc_influence`'s (`classification_metrics`' scikit-learn loop over 121 classes took 1 s a draw) unless `full`;
    `check_metrics` compares the two on each setting's first draw."""
    positive_label = 1 if probabilities.shape[1] == 2 else None
    decisions, ranking = probabilities.argmax(1), probabilities if full or positive_label is not None else None
    metrics = classification_metrics(labels, decisions, probs=ranking, positive_label=positive_label)
    if ranking is None:
        metrics["auc"] = auc_influence(labels, finite_ranking(float_array(probabilities)))[0]
    return metrics, intervals_of_metrics(metrics, labels, probabilities)


def withheld(intervals: dict, name: str) -> bool:
    """Whether the library gave `name` no interval for a class of fewer than `MIN_CLASS_IMAGES` images."""
    return intervals[name] is None and f"fewer than {MIN_CLASS_IMAGES} images" in intervals["methods"][name]


def unguarded_interval(name: str, metrics: dict, labels: np.ndarray, probabilities: np.ndarray, cache: dict):
    """The interval the library withheld, as it would compute it past the guard: `_class_average_intervals` of the
    confusion matrix (what `classification_intervals` runs for balanced accuracy and macro-F1 once every class holds
    10 images; once a draw, kept in `cache`) or `multi_class_auc_interval` of the ranking `intervals_of_metrics` hands
    on."""
    if name in ("balanced_accuracy", "macro_f1"):
        if "class_averages" not in cache:
            confusion = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
            cache["class_averages"] = _class_average_intervals(confusion, LEVEL)
        return cache["class_averages"][name]
    if name == "auc" and probabilities.shape[1] > 2:
        return multi_class_auc_interval(labels, finite_ranking(float_array(probabilities)), level=LEVEL)
    raise AssertionError(f"{name}: no unguarded interval here")


def check_metrics(labels: np.ndarray, probabilities: np.ndarray, metrics: dict) -> None:
    """Refuse to measure coverage against population figures defined otherwise than the library's figures, or with
    metrics other than `evaluate`'s (`classification_metrics` given the probabilities)."""
    full = evaluated(labels, probabilities, full=True)[0]
    for name, value in population_figures(labels, probabilities).items():
        same = math.isclose(value, full[name], abs_tol=1e-9) and math.isclose(metrics[name], full[name], abs_tol=1e-12)
        if not same:
            raise AssertionError(f"{name}: the library's figure {full[name]} (here {metrics[name]}) is not "
                                 f"scikit-learn's {value}")  # fmt: skip
    if {k: v for k, v in metrics.items() if k != "auc"} != {k: v for k, v in full.items() if k != "auc"}:
        raise AssertionError("the metrics differ from classification_metrics' given the probabilities")


def check_unguarded(labels: np.ndarray, probabilities: np.ndarray, metrics: dict, intervals: dict) -> None:
    """Refuse to stand `unguarded_interval` in for the library's where it differs from one the library gave."""
    for name in ("balanced_accuracy", "macro_f1", "auc"):
        if (probabilities.shape[1] > 2 or name != "auc") and not withheld(intervals, name):
            given, ours = intervals[name], unguarded_interval(name, metrics, labels, probabilities, {})
            if given != ours:
                raise AssertionError(f"{name}: the unguarded interval {ours} is not the library's {given}")


def simulate(counts: np.ndarray, population: dict, draws: int, rng: np.random.Generator) -> dict:
    """`draws` test sets of `counts` images a class: per figure, the tallies of its intervals against `population`."""
    tallies = {name: {"below": 0, "above": 0, "inside": 0, "none": 0, "withheld": 0, "widths": [], "estimates": []}
               for name in population}  # fmt: skip
    for index in range(draws):
        labels, probabilities = draw(counts, rng)
        metrics, intervals, cache = *evaluated(labels, probabilities), {}
        if index == 0:
            check_metrics(labels, probabilities, metrics)
            check_unguarded(labels, probabilities, metrics, intervals)
        for name, tally in tallies.items():
            interval = intervals[name]
            if withheld(intervals, name):
                tally["withheld"] += 1
                interval = unguarded_interval(name, metrics, labels, probabilities, cache)
            tally["estimates"].append(metrics[name])
            if interval is None:
                tally["none"] += 1
                continue
            tally["below"] += population[name] < interval[0]
            tally["above"] += population[name] > interval[1]
            tally["inside"] += interval[0] <= metrics[name] <= interval[1]
            tally["widths"].append(interval[1] - interval[0])
    return {name: summary(tally, population[name], draws) for name, tally in tallies.items()}


def summary(tally: dict, population_value: float, draws: int) -> dict:
    with_interval = draws - tally["none"]
    coverage = 1 - (tally["below"] + tally["above"]) / with_interval if with_interval else None
    return {
        "population_value": population_value,
        "coverage": coverage,
        "coverage_mc_standard_error": math.sqrt(coverage * (1 - coverage) / with_interval) if with_interval else None,
        "draws_with_interval": with_interval,
        "population_below_interval_rate": tally["below"] / with_interval if with_interval else None,
        "population_above_interval_rate": tally["above"] / with_interval if with_interval else None,
        "point_estimate_inside": tally["inside"] / with_interval if with_interval else None,
        "library_withheld_rate": tally["withheld"] / draws,
        "no_interval_rate": tally["none"] / draws,
        "mean_interval_width": float(np.mean(tally["widths"])) if tally["widths"] else None,
        "mean_estimate": float(np.mean(tally["estimates"])),
    }


def targets(results: dict) -> dict:
    """Each figure's coverage against `coverage_floor`, per setting, where the library gave its interval in every
    draw (never withheld it)."""
    entries = {}
    for setting, by_figure in results.items():
        for name, figure in by_figure.items():
            if figure["library_withheld_rate"] == 0:
                floor = coverage_floor(figure["draws_with_interval"], LEVEL) if figure["draws_with_interval"] else None
                entries[f"coverage_{setting}_{name}"] = target_entry(figure["coverage"], floor)
    return entries


def population_sample(counts: np.ndarray, size: int, rng: np.random.Generator) -> tuple:
    """About `size` images of the model with the class shares of `counts` (each class at least 1)."""
    return draw(np.maximum(np.round(counts / counts.sum() * size).astype(int), 1), rng)


def main():
    args = simulation_args(base_parser(__doc__), SETTINGS, DEFAULTS, QUICK, "population figures")
    device = setup(args)
    start, populations, results, seconds = time.perf_counter(), {}, {}, {}
    for setting in args.settings:
        index, counts = list(SETTINGS).index(setting), class_counts(setting)
        began = time.perf_counter()
        sample = population_sample(counts, args.population_size, np.random.default_rng([args.seed, 1, index]))
        populations[setting] = population_figures(*sample)
        del sample
        rng = np.random.default_rng([args.seed, 2, index])
        results[setting] = simulate(counts, populations[setting], args.draws, rng)
        seconds[setting] = round(time.perf_counter() - began, 1)
        print(f"{setting}: {args.draws} draws, {seconds[setting]} s; " + ", ".join(
            f"{name} {f['coverage']:.3f}" for name, f in results[setting].items() if f["coverage"] is not None
        ), flush=True)  # fmt: skip
    figures = {
        "setting": {
            "settings": {
                name: {"classes": len(class_counts(name)), "images": int(class_counts(name).sum()),
                       "least_images_a_class": int(class_counts(name).min()),
                       "classes_of_one_image": int((class_counts(name) == 1).sum()),
                       "classes_under_min_class_images": int((class_counts(name) < MIN_CLASS_IMAGES).sum()),
                       "class_counts": class_counts(name).tolist()}
                for name in args.settings
            },
            "ndsb_class_sizes": list(NDSB_CLASS_SIZES),
            "draws": args.draws, "population_size": args.population_size, "level": LEVEL,
            "min_class_images": MIN_CLASS_IMAGES,
            "model": "logits: a signal on the true class + standard normal noise per image and class, each class's "
                     "signal spread evenly over a range (121 classes 1.5-4.5, 10 classes 0.5-2.5, 2 classes 0.8-1.2) "
                     "in an order fixed per number of classes; decisions argmax; scores (what the AUC and average "
                     "precision rank by) the softmax probabilities; class 1 positive of two",
            "withheld_intervals": "where the library withholds an interval (a class under min_class_images), the "
                                  "coverage is that of the interval it would give past its guard: "
                                  "_class_average_intervals of the confusion matrix (balanced accuracy, macro-F1), "
                                  "multi_class_auc_interval of the ranking (multi-class AUC)",
            "coverage_target": "each figure the library gives an interval of in every draw: >= 0.95 - 2 sqrt(0.95 * "
                               "0.05 / draws with an interval)",
        },  # fmt: skip
        "seed": args.seed,
        "population_figures": populations,
        "results": results,
        "seconds": seconds,
        "targets": targets(results),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    report("interval_coverage", args, device, figures)


if __name__ == "__main__":
    main()
