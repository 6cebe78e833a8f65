"""Coverage of `diffusion-classifiers compare`'s 95% intervals, by simulation of two correlated classifiers.

`compare` (`paired_statistics.paired_figures`) gives each figure's difference between two models scored on the same
images (B's less A's) a 95% interval: a paired percentile bootstrap within each class for accuracy, balanced accuracy,
macro-F1, sensitivity and specificity, DeLong's normal interval for the AUC, and the same bootstrap for the mean of each
image's difference of the Brier score and of the log loss (`paired_proper_score_differences`, since 2026-12-07).
Here test sets are drawn from a known population of images scored by two models whose errors correlate (both see a
shared "hardness" noise per image; B is biased toward class 0), and each figure's interval is checked against the
population's difference, computed on a `--population_size` sample (200,000 images) with scikit-learn's definitions of
the figures (checked against the library's point estimates on every setting's first draw).

Settings: `binary_200` (classes 60/40, class 1 positive), `four_class_200` (25% each), `binary_50` (30/20 images); each
with the class counts fixed (stratified: the prior's share of the images) and random (multinomial). Per figure: the
coverage of the population's difference (over the draws that gave an interval) with its Monte-Carlo standard error,
how often the interval holds its own point estimate, how often no interval was given, the mean width, and where a test
applies how often its p-value was below 0.05 (the population differences are not 0: a power, not a size). Targets:
each figure's coverage at 200 images within 2 Monte-Carlo standard errors of 0.95 (>= 0.95 - 2 sqrt(0.95 * 0.05 /
draws)); the 50-image settings are reported without targets (the bootstrap's intervals run narrow on few images).
The full run (1,000 draws a setting) takes ~6 minutes on 2 busy CPU cores; `--quick` (40 draws) ~20 s.

    python benchmarks/paired_comparison_coverage.py --quick
"""

import math
import time

import numpy as np
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, f1_score, log_loss, roc_auc_score

from _common import base_parser, coverage_floor, report, setup, simulation_args, target_entry
from diffusion_classifiers.paired_statistics import paired_figures, paired_proper_score_differences

SETTINGS = {"binary_200": (2, 200), "four_class_200": (4, 200), "binary_50": (2, 50)}  # classes, images
CLASS_COUNTS = ("fixed", "random")
FIGURES = ("accuracy", "balanced_accuracy", "macro_f1", "sensitivity", "specificity", "auc", "brier", "log_loss")
LEVEL, TARGETED_IMAGES = 0.95, 200
DEFAULTS = {"draws": 1000, "population_size": 200_000}
QUICK = {"draws": 40, "population_size": 200_000}


def prior(num_classes: int) -> np.ndarray:
    return np.array([0.6, 0.4]) if num_classes == 2 else np.full(num_classes, 1 / num_classes)


def draw(num_classes: int, num_images: int, rng: np.random.Generator, fixed_counts: bool = True) -> tuple:
    """Labels [N] and the two models' probabilities [N, K]: the class counts the prior's share of `num_images`
    (`fixed_counts`) or multinomial; a shared noise per image (hard images) makes the two models' errors correlate."""
    if fixed_counts:
        labels = np.repeat(np.arange(num_classes), np.round(prior(num_classes) * num_images).astype(int))
    else:
        labels = rng.choice(num_classes, num_images, p=prior(num_classes))
    truth, shared = np.eye(num_classes)[labels], rng.normal(0, 1, (len(labels), num_classes))
    logits_a = 1.2 * truth + shared + 0.6 * rng.normal(0, 1, shared.shape)
    logits_b = 1.0 * truth + shared + 0.5 * rng.normal(0, 1, shared.shape) + np.eye(num_classes)[0] * 0.3  # class 0
    return labels, softmax(logits_a), softmax(logits_b)


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def ranking_scores(probabilities: np.ndarray) -> np.ndarray:
    """What `compare` ranks a model's AUC by: a binary task's log-odds toward class 1, else the probabilities."""
    if probabilities.shape[1] == 2:
        return np.log(probabilities[:, 1]) - np.log(probabilities[:, 0])
    return probabilities


def compared(labels: np.ndarray, probabilities_a: np.ndarray, probabilities_b: np.ndarray) -> dict:
    """`paired_figures` of the two models (class 1 positive in a binary task) and their proper scores' differences, as
    `compare` gives them."""
    num_classes = probabilities_a.shape[1]
    figures = paired_figures(
        labels, probabilities_a.argmax(1), probabilities_b.argmax(1), ranking_scores(probabilities_a),
        ranking_scores(probabilities_b), num_classes, positive_label=1 if num_classes == 2 else None,
    )["figures"]  # fmt: skip
    return figures | paired_proper_score_differences(labels, probabilities_a, probabilities_b)[0]


def differences(labels: np.ndarray, probabilities_a: np.ndarray, probabilities_b: np.ndarray) -> dict:
    """Each figure's difference, B's less A's, by scikit-learn's definitions (the population's, on a large sample)."""
    num_classes = probabilities_a.shape[1]

    def figures(probabilities):
        decisions, scores = probabilities.argmax(1), ranking_scores(probabilities)
        values = {
            "accuracy": np.mean(decisions == labels),
            "balanced_accuracy": balanced_accuracy_score(labels, decisions),
            "macro_f1": f1_score(labels, decisions, average="macro", labels=np.arange(num_classes)),
        }
        if num_classes == 2:
            values["sensitivity"] = np.mean(decisions[labels == 1] == 1)
            values["specificity"] = np.mean(decisions[labels == 0] == 0)
            values["auc"] = roc_auc_score(labels, scores)
        else:
            values["auc"] = np.mean([roc_auc_score(labels == k, scores[:, k]) for k in range(num_classes)])
        classes = np.arange(num_classes)
        values["brier"] = brier_score_loss(labels, probabilities[:, 1] if num_classes == 2 else probabilities,
                                           labels=classes)  # fmt: skip
        values["log_loss"] = log_loss(labels, probabilities, labels=classes)
        return values

    a, b = figures(probabilities_a), figures(probabilities_b)
    return {name: float(b[name] - a[name]) for name in a}


def check_definitions(labels, probabilities_a, probabilities_b, figures: dict) -> None:
    """Refuse to measure coverage against population differences defined otherwise than the library's figures."""
    ours = differences(labels, probabilities_a, probabilities_b)
    for name, value in ours.items():
        if not math.isclose(value, figures[name]["difference"], abs_tol=1e-9):
            raise AssertionError(f"{name}: the library's difference {figures[name]['difference']} is not {value}")


def simulate(num_classes: int, num_images: int, fixed_counts: bool, population: dict, draws: int, rng) -> dict:
    """`draws` test sets of the setting: per figure, the tallies of its intervals against `population`."""
    tallies = {name: new_tally() for name in population}
    for index in range(draws):
        labels, probabilities_a, probabilities_b = draw(num_classes, num_images, rng, fixed_counts)
        figures = compared(labels, probabilities_a, probabilities_b)
        if index == 0:
            check_definitions(labels, probabilities_a, probabilities_b, figures)
        for name, tally in tallies.items():
            add_to_tally(tally, figures[name], population[name])
    return {name: summary(tally, population[name], draws) for name, tally in tallies.items()}


def new_tally() -> dict:
    return {"hits": 0, "inside": 0, "none": 0, "tested": 0, "rejected": 0, "widths": [], "estimates": []}


def add_to_tally(tally: dict, figure: dict, population_difference: float) -> None:
    """Count one draw's `figure` (its interval against the population's difference and its own estimate, its
    p-value against 0.05) into `tally`."""
    if figure.get("p_value") is not None:
        tally["tested"] += 1
        tally["rejected"] += figure["p_value"] < 0.05
    if figure["difference"] is not None:
        tally["estimates"].append(figure["difference"])
    interval = figure["interval"]
    if interval is None:
        tally["none"] += 1
        return
    tally["hits"] += interval[0] <= population_difference <= interval[1]
    tally["inside"] += interval[0] <= figure["difference"] <= interval[1]
    tally["widths"].append(interval[1] - interval[0])


def summary(tally: dict, population_difference: float, draws: int) -> dict:
    with_interval = draws - tally["none"]
    coverage = tally["hits"] / with_interval if with_interval else None
    return {
        "population_difference": population_difference,
        "coverage": coverage,
        "coverage_mc_standard_error": math.sqrt(coverage * (1 - coverage) / with_interval) if with_interval else None,
        "draws_with_interval": with_interval,
        "point_estimate_inside": tally["inside"] / with_interval if with_interval else None,
        "no_interval_rate": tally["none"] / draws,
        "mean_interval_width": float(np.mean(tally["widths"])) if tally["widths"] else None,
        "mean_difference": float(np.mean(tally["estimates"])) if tally["estimates"] else None,
        "p_value_below_0_05_rate": tally["rejected"] / tally["tested"] if tally["tested"] else None,
        "draws_with_p_value": tally["tested"],
    }


def targets(results: dict) -> dict:
    """Each figure's coverage at `TARGETED_IMAGES` images, per setting and class counts, against `coverage_floor`."""
    return coverage_targets(results, [setting for setting in results if SETTINGS[setting][1] == TARGETED_IMAGES])


def coverage_targets(results: dict, targeted: list) -> dict:
    """The `targeted` settings' figures' coverages, per class counts, each against `coverage_floor` of its draws with
    an interval (this benchmark's and `unpaired_comparison_coverage`'s)."""
    entries = {}
    for setting in targeted:
        for counts, by_figure in results[setting].items():
            for name, figure in by_figure.items():
                floor = coverage_floor(figure["draws_with_interval"], LEVEL) if figure["draws_with_interval"] else None
                entries[f"coverage_{setting}_{counts}_counts_{name}"] = target_entry(figure["coverage"], floor)
    return entries


def say_measured(setting: str, counts: str, draws: int, seconds: float, measured: dict) -> None:
    """A setting's line of progress: its draws, time and each figure's coverage."""
    print(f"{setting}, class counts {counts}: {draws} draws, {seconds} s; "
          + ", ".join(f"{name} {f['coverage']:.3f}" for name, f in measured.items()
                      if f["coverage"] is not None), flush=True)  # fmt: skip


def main():
    args = simulation_args(base_parser(__doc__), SETTINGS, DEFAULTS, QUICK, "population differences")
    device = setup(args)
    start, populations, results, seconds = time.perf_counter(), {}, {}, {}
    for setting in args.settings:
        num_classes, num_images = SETTINGS[setting]
        if num_classes not in populations:
            sample = draw(num_classes, args.population_size, np.random.default_rng([args.seed, 1, num_classes]))
            populations[num_classes] = differences(*sample)
        for index, counts in enumerate(CLASS_COUNTS):
            rng = np.random.default_rng([args.seed, 2, num_classes, num_images, index])
            began = time.perf_counter()
            measured = simulate(num_classes, num_images, counts == "fixed", populations[num_classes], args.draws, rng)
            results.setdefault(setting, {})[counts] = measured
            seconds[f"{setting}_{counts}_counts"] = round(time.perf_counter() - began, 1)
            say_measured(setting, counts, args.draws, seconds[f"{setting}_{counts}_counts"], measured)
    figures = {
        "setting": {
            "settings": {name: {"classes": SETTINGS[name][0], "images": SETTINGS[name][1],
                                "prior": prior(SETTINGS[name][0]).tolist()} for name in args.settings},
            "draws": args.draws, "population_size": args.population_size, "level": LEVEL,
            "models": "logits: A 1.2 onehot + shared + 0.6 noise, B 1.0 onehot + shared + 0.5 noise + 0.3 on class 0 "
                      "(shared, noise: standard normal per image and class); decisions argmax; AUC ranked by the "
                      "binary log-odds toward class 1, else the probabilities",
            "coverage_target": "each figure at 200 images: >= 0.95 - 2 sqrt(0.95 * 0.05 / draws with an interval)",
        },  # fmt: skip
        "seed": args.seed,
        "population_differences": {f"{k}_classes": v for k, v in populations.items()},
        "results": results,
        "seconds": seconds,
        "targets": targets(results),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    report("paired_comparison_coverage", args, device, figures)


if __name__ == "__main__":
    main()
