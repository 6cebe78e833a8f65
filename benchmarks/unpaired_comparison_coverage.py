"""Coverage of `diffusion-classifiers compare --unpaired`'s 95% intervals, by simulation of two sets of other images.

`compare --unpaired` (`independent_statistics.independent_figures`) gives each figure's difference between two sets
of images scored apart (a model on one site's images and on another's; B's less A's) a 95% interval: Newcombe's
hybrid score interval for accuracy, sensitivity and specificity, each side's within-class bootstrap drawn
independently for balanced accuracy and macro-F1, the two DeLong variances added for the AUC. Here the two models and
the population of `paired_comparison_coverage` score independent test sets, A's images scored by model A and B's,
other images, by model B; each figure's interval is checked against the population's difference (the same 200,000-image
sample and scikit-learn definitions as the paired benchmark). Settings: `binary_200` (200 images a side, classes
60/40, class 1 positive), `four_class_200`, `binary_50` (50 a side), `binary_200_50` (200 against 50); class counts
fixed (the prior's share) or random. Targets: each figure's coverage in the 200-image settings within 2 Monte-Carlo
standard errors of 0.95; the others reported without targets. The full run (1,000 draws a setting) takes ~3 minutes
on 2 busy CPU cores; `--quick` (40 draws) ~20 s.

    python benchmarks/unpaired_comparison_coverage.py --quick
"""

import time

import numpy as np
from _common import base_parser, report, setup, simulation_args
from paired_comparison_coverage import (
    CLASS_COUNTS,
    LEVEL,
    QUICK,
    add_to_tally,
    coverage_targets,
    differences,
    draw,
    new_tally,
    prior,
    ranking_scores,
    say_measured,
    summary,
)

from diffusion_classifiers.independent_statistics import independent_figures

SETTINGS = {"binary_200": (2, 200, 200), "four_class_200": (4, 200, 200), "binary_50": (2, 50, 50),
            "binary_200_50": (2, 200, 50)}  # classes, A's images, B's images  # fmt: skip
TARGETED = ("binary_200", "four_class_200")
FIGURES = ("accuracy", "balanced_accuracy", "macro_f1", "sensitivity", "specificity", "auc")
DEFAULTS = {"draws": 1000, "population_size": 200_000}


def compared(labels_a, probabilities_a, labels_b, probabilities_b) -> dict:
    """`independent_figures` of A's images scored by model A and B's by model B (class 1 positive in a binary task)."""
    num_classes = probabilities_a.shape[1]
    return independent_figures(
        labels_a, probabilities_a.argmax(1), ranking_scores(probabilities_a),
        labels_b, probabilities_b.argmax(1), ranking_scores(probabilities_b),
        num_classes, positive_label=1 if num_classes == 2 else None,
    )["figures"]  # fmt: skip


def simulate(setting: tuple, fixed_counts: bool, population: dict, draws: int, rng) -> dict:
    """`draws` pairs of independent test sets of the setting: per figure, the tallies of its intervals."""
    num_classes, size_a, size_b = setting
    names = [name for name in FIGURES if name in population]
    tallies = {name: new_tally() for name in names}
    for _ in range(draws):
        labels_a, probabilities_a, _ = draw(num_classes, size_a, rng, fixed_counts)  # model A on A's images
        labels_b, _, probabilities_b = draw(num_classes, size_b, rng, fixed_counts)  # model B on other images
        figures = compared(labels_a, probabilities_a, labels_b, probabilities_b)
        for name, tally in tallies.items():
            add_to_tally(tally, figures[name], population[name])
    return {name: summary(tally, population[name], draws) for name, tally in tallies.items()}


def targets(results: dict) -> dict:
    """Each figure's coverage in the `TARGETED` settings, per class counts, against `coverage_floor`."""
    return coverage_targets(results, [name for name in TARGETED if name in results])


def main():
    args = simulation_args(base_parser(__doc__), SETTINGS, DEFAULTS, QUICK, "population differences")
    device = setup(args)
    start, populations, results, seconds = time.perf_counter(), {}, {}, {}
    for setting in args.settings:
        num_classes = SETTINGS[setting][0]
        if num_classes not in populations:  # the paired benchmark's population sample (its seed stream)
            sample = draw(num_classes, args.population_size, np.random.default_rng([args.seed, 1, num_classes]))
            populations[num_classes] = differences(*sample)
        for index, counts in enumerate(CLASS_COUNTS):
            rng = np.random.default_rng([args.seed, 3, *SETTINGS[setting], index])
            began = time.perf_counter()
            measured = simulate(SETTINGS[setting], counts == "fixed", populations[num_classes], args.draws, rng)
            results.setdefault(setting, {})[counts] = measured
            seconds[f"{setting}_{counts}_counts"] = round(time.perf_counter() - began, 1)
            say_measured(setting, counts, args.draws, seconds[f"{setting}_{counts}_counts"], measured)
    figures = {
        "setting": {
            "settings": {name: {"classes": SETTINGS[name][0], "images_a": SETTINGS[name][1],
                                "images_b": SETTINGS[name][2], "prior": prior(SETTINGS[name][0]).tolist()}
                         for name in args.settings},
            "draws": args.draws, "population_size": args.population_size, "level": LEVEL,
            "models": "those of paired_comparison_coverage: model A scores A's test set, model B an independent one",
            "coverage_target": "each figure of the 200-image settings: >= 0.95 - 2 sqrt(0.95 * 0.05 / draws with an "
                               "interval)",
        },  # fmt: skip
        "seed": args.seed,
        "population_differences": {f"{k}_classes": v for k, v in populations.items()},
        "results": results,
        "seconds": seconds,
        "targets": targets(results),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    report("unpaired_comparison_coverage", args, device, figures)


if __name__ == "__main__":
    main()
