"""Generative classification cost: the ELBO with shared noise + a stopping rule chosen on val vs the exhaustive protocol.

All arms score Fashion-MNIST test images with the same class-conditional U-Net (`train_score_sde_unet`, trained inside
the benchmark on the training split downsampled to 16 px for CPU time) by the denoising error of
`likelihood.denoising_error_scores`, and predict the class with the smallest error:

- exhaustive (the published protocol): every class x every timestep of an even grid of `--exhaustive_timesteps`, with
  INDEPENDENT noise per class (one call per class with its own per-image seeds); NFE = K T.
- pruned (the previous default of this benchmark): the SAME noise and timesteps for every class (common random
  numbers) and fixed pruning stages (Li et al. 2023), `--pruning`.
- adaptive: shared noise, then a stopping rule chosen on val images: which timesteps, in which order (every
  stratum in spread order, or the `M` strata that separate the classes best on val, best first:
  `likelihood.rank_timestep_strata`), pruning stages, then a per-image sequential test that eliminates each class
  once its paired errors are settled above the leader's (successive elimination; with two classes the binary early
  stop). The rule is the cheapest (mean NFE) among a grid whose val accuracy is within `--max_val_loss_points` of a
  val reference (`--select_against`: the exhaustive shared-noise run, the default, a steady bar since it is paired
  with every rule and more accurate; or the exhaustive protocol itself on val, what the target compares with on
  test, but on a few hundred val images a noisy and low reference); every rule of the grid is replayed from ONE
  exhaustive shared-noise run on val (`likelihood.replay_stopping_rule`), no test image is seen.

Reported on the test images: NFE/image, images/s (side by side in one run), accuracy, the paired accuracy difference
exhaustive - adaptive with its 95% confidence interval (normal approximation over images), agreement.
Targets (issue 15 item 3): >= 10x fewer NFE than the exhaustive protocol at <= 1 point accuracy loss, on >= 1,000
test images.

    python benchmarks/score_sde_bench_elbo.py --quick
"""

import itertools
import json
import math
import tempfile
import time

import numpy as np
import torch

from _common import base_parser, data_path, median_seconds, report, setup, target_entry, training_arguments
from diffusion_classifiers.data import load_image_classification_data, stratified_subset_indices
from diffusion_classifiers.likelihood import denoising_error_scores, rank_timestep_strata, replay_stopping_rule
from diffusion_classifiers.likelihood.denoising_error import first_early_stop_look
from diffusion_classifiers.training import train_score_sde_unet

FIRST_STAGES = [None] + [[(count, keep)] for count in (1, 2, 3, 5) for keep in (2, 3, 4)]
CONFIDENCES = (0.9, 0.95, 0.99, 0.995, 0.999)
TIMESTEPS_PER_CHECK = (1, 2, 5)
INFORMATIVE_FRACTIONS = (0.2, 0.3, 0.4, 0.6, 1.0)  # of the strata, ranked on val; None = all in spread order


def train_model(train, preset: str, steps: int, seed: int, device: torch.device):
    """A class-conditional U-Net trained `steps` steps of 64 images; returns it and the training seconds."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as output_dir:
        args = training_arguments(output_dir, steps, 2e-3, min(50, steps // 10), seed)
        unet, _, _ = train_score_sde_unet(args, train.images, train.labels, num_classes=train.num_classes, preset=preset)
    return unet.to(device).eval(), time.perf_counter() - start


def exhaustive_scores(unet, images, num_classes: int, num_timesteps: int, weighting: str, seed: int, batch_size: int):
    """Every class at every timestep, independent noise per class: one call per class, each image with its own seed
    for that class. Returns scores `[N, K]` and NFE per image."""
    columns, nfe = [], 0
    for c in range(num_classes):
        seeds = np.random.SeedSequence(seed, spawn_key=(c,)).generate_state(len(images)).tolist()
        result = denoising_error_scores(unet, images, [c], num_timesteps=num_timesteps, weighting=weighting,
                                        seed=seeds, max_batch_size=batch_size)
        columns.append(result.scores[:, 0])
        nfe = nfe + result.nfe_per_image
    return torch.stack(columns, 1), nfe


def candidate_rules(num_classes: int, num_timesteps: int, timesteps_per_check=TIMESTEPS_PER_CHECK):
    """Stopping rules to choose from: the timesteps (all in spread order, or the `informative_strata` best-ranked
    ones, best first), an optional first pruning stage, then successive elimination."""
    counts = [None] + sorted({max(2, round(f * num_timesteps)) for f in INFORMATIVE_FRACTIONS})
    for count, first, confidence, per_check in itertools.product(counts, FIRST_STAGES, CONFIDENCES, timesteps_per_check):
        scored = count or num_timesteps
        stops = first is not None or first_early_stop_look(per_check) < scored  # else refused: a no-op early stop
        if stops and (first is None or (first[0][1] < num_classes and first[0][0] < scored)):
            yield dict(informative_strata=count, pruning=first, early_stop_confidence=confidence,
                       timesteps_per_check=per_check)


def rule_arguments(rule: dict, ranked_strata) -> dict:
    """The keyword arguments of `denoising_error_scores` / `replay_stopping_rule` for a rule of `candidate_rules`."""
    arguments = {key: value for key, value in rule.items() if key != "informative_strata"}
    count = rule["informative_strata"]
    return arguments | {"timestep_strata": None if count is None else ranked_strata[:count]}


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of images whose best-scoring class is their label."""
    return float((scores.argmax(1) == labels).float().mean())


def replay_rules(val_exhaustive, val_labels, ranked_strata, quick: bool) -> list:
    """Val accuracy and mean NFE of every candidate rule, replayed from the exhaustive shared-noise run on val (with
    `quick`, one look per timestep only: a third of the grid)."""
    num_classes, num_timesteps = val_exhaustive.errors.shape[1:]
    table = []
    for rule in candidate_rules(num_classes, num_timesteps, TIMESTEPS_PER_CHECK[:1] if quick else TIMESTEPS_PER_CHECK):
        replayed = replay_stopping_rule(val_exhaustive, **rule_arguments(rule, ranked_strata))
        table.append({"rule": rule, "val_accuracy": accuracy(replayed.scores, val_labels),
                      "val_nfe_per_image": float(replayed.nfe_per_image.float().mean())})
    return table


def cheapest_within(table, reference: float, max_loss_points: float):
    """The cheapest rule (mean NFE) whose val accuracy is within `max_loss_points` of the `reference` val accuracy;
    None if none is."""
    eligible = [row for row in table if 100 * (reference - row["val_accuracy"]) <= max_loss_points]
    return min(eligible, key=lambda row: (row["val_nfe_per_image"], -row["val_accuracy"]), default=None)


def choose_rule(table, reference: float, max_loss_points: float) -> dict:
    """`cheapest_within` the bar; none within: the most accurate rule."""
    chosen = cheapest_within(table, reference, max_loss_points)
    return chosen or max(table, key=lambda row: (row["val_accuracy"], -row["val_nfe_per_image"]))


def cheapest_per_strata_choice(table, reference: float, max_loss_points: float) -> dict:
    """For each timestep choice (spread order, or the best M), the cheapest rule within the bar: what ranking the
    timesteps bought on val."""
    groups = {}
    for row in table:
        groups.setdefault(str(row["rule"]["informative_strata"] or "all_spread_order"), []).append(row)
    cheapest = {key: cheapest_within(rows, reference, max_loss_points) for key, rows in groups.items()}
    return {key: row for key, row in cheapest.items() if row is not None}


def paired_difference(correct_a: torch.Tensor, correct_b: torch.Tensor) -> dict:
    """Accuracy of a minus accuracy of b on the same images, in points, with a 95% normal confidence interval."""
    difference = (correct_a.double() - correct_b.double()).numpy()
    mean, standard_error = difference.mean(), difference.std(ddof=1) / math.sqrt(len(difference))
    return {"points": 100 * mean, "ci95_points": [100 * (mean - 1.96 * standard_error), 100 * (mean + 1.96 * standard_error)],
            "images": len(difference)}


def main():
    parser = base_parser(__doc__)
    parser.add_argument("--preset", default=None, help="U-Net preset; default tiny with --quick, else small")
    parser.add_argument("--image_size", type=int, default=16)
    parser.add_argument("--train_steps", type=int, default=None, help="default 20 with --quick, else 500")
    parser.add_argument("--num_images", type=int, default=None, help="test images scored; default 10 quick, else 1000")
    parser.add_argument("--first_test_image", type=int, default=0,
                        help="index of the first test image scored: a later run can score images no earlier run saw")
    parser.add_argument("--val_images", type=int, default=None,
                        help="stratified val images the stopping rule is chosen on; default 20 quick, else 400")
    parser.add_argument("--exhaustive_timesteps", type=int, default=None,
                        help="timesteps of the exhaustive protocol and at most of every rule; default 10 quick, else 50")
    parser.add_argument("--select_against", default="shared_noise", choices=["shared_noise", "protocol"],
                        help="val reference of the rule choice: the exhaustive shared-noise run (the default: paired "
                             "with every rule, so a steady bar) or the exhaustive protocol (independent noise per "
                             "class, what the target compares with; noisier on val; one more exhaustive pass over val)")
    parser.add_argument("--max_val_loss_points", type=float, default=0.5,
                        help="a rule is eligible if its val accuracy is at most this below the --select_against reference")
    parser.add_argument("--pruning", default=None,
                        help='fixed pruning arm, JSON [[T_1, k_1], ...]; default [[2, 3], [3, 1]] quick, else [[5, 3], [15, 1]]')
    parser.add_argument("--weighting", default="uniform", choices=["uniform", "elbo"])
    parser.add_argument("--batch_size", type=int, default=500, help="samples per U-Net call")
    args = parser.parse_args()
    preset = args.preset or ("tiny" if args.quick else "small")
    train_steps = args.train_steps or (20 if args.quick else 500)
    num_images = args.num_images or (10 if args.quick else 1000)
    val_images = args.val_images or (20 if args.quick else 400)
    num_timesteps = args.exhaustive_timesteps or (10 if args.quick else 50)
    pruning = [tuple(stage) for stage in json.loads(args.pruning or ("[[2, 3], [3, 1]]" if args.quick else "[[5, 3], [15, 1]]"))]
    device = setup(args)

    splits = load_image_classification_data(str(data_path("fashion_mnist")), image_size=args.image_size, seed=args.seed)
    unet, train_seconds = train_model(splits["train"], preset, train_steps, args.seed, device)
    val = splits["val"].subset(stratified_subset_indices(splits["val"].labels, val_images, args.seed))
    if args.first_test_image + num_images > len(splits["test"]):
        parser.error(f"--first_test_image {args.first_test_image} + --num_images {num_images} exceeds the "
                     f"{len(splits['test'])} test images")
    test = splits["test"].subset(range(args.first_test_image, args.first_test_image + num_images))
    num_classes = test.num_classes
    score = dict(weighting=args.weighting, seed=args.seed, max_batch_size=args.batch_size)

    start = time.perf_counter()
    val_exhaustive = denoising_error_scores(unet, val.images, num_classes, num_timesteps=num_timesteps, **score)
    val_accuracy = {"shared_noise": accuracy(val_exhaustive.scores, val.labels)}
    if args.select_against == "protocol":
        protocol_scores, _ = exhaustive_scores(unet, val.images, num_classes, num_timesteps, args.weighting, args.seed,
                                               args.batch_size)
        val_accuracy["protocol"] = accuracy(protocol_scores, val.labels)
    ranked_strata = rank_timestep_strata(val_exhaustive, val.labels)
    table = replay_rules(val_exhaustive, val.labels, ranked_strata, args.quick)
    chosen = {name: choose_rule(table, reference, args.max_val_loss_points) for name, reference in val_accuracy.items()}
    selection_seconds = time.perf_counter() - start
    adaptive_arms = {"adaptive": args.select_against}  # the arm of the targets, then the other bar if measured
    adaptive_arms |= {f"adaptive_{name}_bar": name for name in val_accuracy if name != args.select_against}

    results = {}

    def exhaustive():
        results["exhaustive"] = exhaustive_scores(unet, test.images, num_classes, num_timesteps, args.weighting,
                                                  args.seed, args.batch_size)

    def shared(name, **stopping):
        def run():
            out = denoising_error_scores(unet, test.images, num_classes, **score, **stopping)
            results[name] = out.scores, out.nfe_per_image
        return run

    seconds = median_seconds(
        {"exhaustive": exhaustive,
         "pruned": shared("pruned", num_timesteps=sum(t for t, _ in pruning), pruning=pruning)}
        | {arm: shared(arm, num_timesteps=num_timesteps, **rule_arguments(chosen[bar]["rule"], ranked_strata))
           for arm, bar in adaptive_arms.items()},
        repeats=1, warmup=0,
    )
    predictions = {name: scores.argmax(1) for name, (scores, _) in results.items()}
    correct = {name: p == test.labels for name, p in predictions.items()}
    test_accuracy = {name: float(c.float().mean()) for name, c in correct.items()}
    nfe = {name: float(n.float().mean()) for name, (_, n) in results.items()}
    arms = ["pruned", *adaptive_arms]
    loss = {name: paired_difference(correct["exhaustive"], correct[name]) for name in arms}
    figures = {
        "setting": {
            "data": f"Fashion-MNIST, {args.image_size} px (bilinear, antialiased from 28 px)",
            "preset": preset, "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "train_steps": train_steps, "train_batch_size": 64, "train_images_seen": 64 * train_steps,
            "train_seconds": train_seconds, "test_images": num_images, "first_test_image": args.first_test_image,
            "val_images": val_images,
            "num_classes": num_classes, "weighting": args.weighting, "exhaustive_timesteps": num_timesteps,
            "pruning_stages": pruning, "batch_size": args.batch_size,
        },
        "selection_on_val": {
            "exhaustive_shared_noise_val_accuracy": val_accuracy["shared_noise"],
            "exhaustive_protocol_val_accuracy": val_accuracy.get("protocol"), "select_against": args.select_against, "max_val_loss_points": args.max_val_loss_points,
            "chosen": chosen[args.select_against], "rules_tried": len(table), "seconds": selection_seconds,
            "chosen_per_bar": {arm: chosen[bar] | {"bar": bar} for arm, bar in adaptive_arms.items()},
            "strata_ranked_on_val": ranked_strata, "ranked_strata_times": [
                float(val_exhaustive.timesteps[0, val_exhaustive.strata.tolist().index(s)]) for s in ranked_strata],
            "cheapest_rule_per_strata_choice": cheapest_per_strata_choice(table, val_accuracy[args.select_against],
                                                                          args.max_val_loss_points),
            "cheapest_rules_tried": sorted(table, key=lambda row: row["val_nfe_per_image"])[:10],
        },
        "nfe_per_image": nfe,
        "nfe_reduction": {name: nfe["exhaustive"] / nfe[name] for name in arms},
        "adaptive_nfe_per_image_quantiles": {
            q: float(results["adaptive"][1].float().quantile(q)) for q in (0.5, 0.9, 0.99)},
        "seconds": seconds,
        "images_per_s": {name: num_images / s for name, s in seconds.items()},
        "speedup": {name: seconds["exhaustive"] / seconds[name] for name in arms},
        "accuracy": test_accuracy,
        "accuracy_loss_vs_exhaustive": loss,
        "agreement_with_exhaustive": {
            name: float((predictions["exhaustive"] == predictions[name]).float().mean()) for name in arms},
    }
    figures["targets"] = {  # >= 10x fewer NFE at <= 1 point of accuracy loss, on >= 1,000 test images
        "adaptive_nfe_reduction": target_entry(figures["nfe_reduction"]["adaptive"], 10),
        "adaptive_accuracy_loss_points": target_entry(loss["adaptive"]["points"], 1, higher_is_better=False),
        "test_images": target_entry(num_images, 1000),
    }
    report("score_sde_bench_elbo", args, device, figures)


if __name__ == "__main__":
    main()
