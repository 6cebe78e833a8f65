"""The README's "targets at a glance": every target of the headline results, read from their JSON files.

    python benchmarks/targets_table.py            # print the table
    python benchmarks/targets_table.py --write    # put it into README.md between its markers
    python benchmarks/targets_table.py --check    # exit 1 when README.md's table differs from the JSON files

The figures are copied by this script only, never by hand, so the README cannot drift from `benchmarks/results/`
(`tests/test_benchmark_options.py` runs `--check`). A row reads the target's `value`, `target` and `met` as the
benchmark recorded them; whether the target is a floor or a ceiling is its `higher_is_better`, or for older records
read from its name, and checked against `met`.
"""

import argparse
import json
import math
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
README = REPO_ROOT / "README.md"
BEGIN, END = "<!-- targets table: begin (benchmarks/targets_table.py --write) -->", "<!-- targets table: end -->"

# the result of record of each benchmark and machine, in the README's order; the others in benchmarks/results/ are
# variants and ablations that its sections discuss
HEADLINE_RESULTS = (
    "unet_features_accuracy",
    "unet_features_bench_label_free_digits_mean",
    "unet_features_bench_label_free_pneumoniamnist_mean",
    "unet_features_bench_extraction",
    "unet_features_bench_extraction_gpu",
    "unet_features_bench_precision_gpu",
    "unet_features_bench_probe",
    "score_sde_bench_likelihood",
    "score_sde_bench_likelihood_gpu",
    "score_sde_bench_elbo",
    "score_sde_accuracy",
    "score_sde_accuracy_3x_steps",
    "score_sde_bench_elbo_settings_pneumoniamnist",
    "score_sde_bench_elbo_settings_fashion_mnist",
    "score_sde_bench_elbo_bias",
    "rc_dit_bench_recipe_1500_steps_3_seeds",
    "rc_dit_bench_recipe_1500_steps_3_seeds_pneumoniamnist",
    "rc_dit_accuracy_pneumoniamnist_3_seeds_rerun_2026_12_06",
    "rc_dit_accuracy_fashion_mnist_3_seeds_rerun_2026_12_06",
    "plankton_accuracy",
    "plankton_accuracy_cpu_1h_3_seeds",
    "bench_data_scale",
    "bench_data_scale_probe",
    "training_speed",
    "training_speed_gpu",
    "training_speed_compiled_gpu",
)

# Headline figures that are not an untouched test figure, marked in the table (benchmarks/RESULTS.md tells each
# story): (result, target or None for all of its targets) -> the note
_RECIPE_ON_VAL = (
    "scored on val, the split the recipe was chosen on: optimistic (the test figures are the rc_dit_accuracy rows); "
    "recorded 2026-12-01 and 12-02, before the few-shot protocol's review (ac1e6ff) and r's saved statistics (1fa91b8) "
    "changed on 2026-12-06, not rerun: the 10-shot rows are of the earlier protocol, which moved every method's "
    "10-shot figures (raw pixels' PneumoniaMNIST prototypes 81.7 -> 78.2% on test, benchmarks/RESULTS.md)"
)
_RULE_SEEN = "the label-free rule (stability on train) was chosen with these test figures seen"
CAVEATS = {
    ("unet_features_accuracy", "label_free_kmeans_vs_raw_pixels_points"): _RULE_SEEN,
    ("unet_features_bench_label_free_digits_mean", None): _RULE_SEEN,
    ("unet_features_bench_label_free_pneumoniamnist_mean", None): _RULE_SEEN,
    ("score_sde_accuracy_3x_steps", None): "the 3x length was run after the default run's test figures were seen "
    "(its val figures improve too)",
    ("rc_dit_bench_recipe_1500_steps_3_seeds", None): _RECIPE_ON_VAL,
    ("rc_dit_bench_recipe_1500_steps_3_seeds_pneumoniamnist", None): _RECIPE_ON_VAL,
    ("score_sde_bench_likelihood_gpu", "fast_max_abs_delta_bpd"): "recorded 2026-11-30 at 48 fast steps, before the "
    "fast step count became the fewest from which every count tried is within the bound (63ee16d, 2026-12-05; the CPU "
    "rows are of that rule: 56 steps); not rerun, no GPU since",
    ("training_speed_compiled_gpu", "unet_library_vs_plain_speedup"): "recorded before the target took the fastest "
    "loop a user can choose (d73573d): this is the uncompiled loop; the same run's compiled loop measured 1.32x "
    "(`cases.unet.speedup_over_plain.library_compiled`)",
}

# words of a target's name that make it a ceiling (value <= target), for records written before targets carried
# `higher_is_better`; every other target is a floor
CEILING_WORDS = ("error", "delta", "loss", "gap", "wall_seconds", "peak", "cnn_minus")


def is_ceiling(name: str, target: dict) -> bool:
    if "higher_is_better" in target:
        return not target["higher_is_better"]
    return any(word in name for word in CEILING_WORDS)


def format_number(name: str, value) -> str:
    if value is None:
        return "not measured"
    if not math.isfinite(value):
        return str(value)
    if name.endswith("_points"):
        return f"{value:.1f}" if "abs_" in name else f"{value:+.1f}"
    if name.endswith("mfu"):
        return f"{100 * value:.1f}%"
    if "speedup" in name or "_over_" in name:
        return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"
    if name.startswith("wall_seconds"):
        return f"{value / 60:.1f} min"
    if name.endswith("same_chosen_pair"):
        return "yes" if value == 1 else "no"
    if value == 0 or (abs(value) >= 1 and float(value).is_integer()):
        return f"{value:g}"
    return f"{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"


def machine(result: dict) -> str:
    environment = result["environment"]
    gpu = environment.get("gpu")
    if gpu:
        return gpu["name"] if isinstance(gpu, dict) else str(gpu)
    return f"CPU, {environment['cpu_count']} cores"


def run_of(result: dict) -> str:
    """When a result was measured and on which code: its date and commit (`+` where the work tree differed), or that
    it records none (results measured before the records named their commit)."""
    environment = result["environment"]
    commit = (environment.get("code") or {}).get("git_commit")
    dirty = "+" if (environment.get("code") or {}).get("git_dirty") else ""
    return f"{environment['date_utc'][:10]}, {commit[:7] + dirty if commit else 'commit not recorded'}"


def check_direction(stem: str, name: str, target: dict) -> None:
    """The recorded `met` agrees with the direction read from the name (a target it cannot read is an error)."""
    value, bound, met = target["value"], target["target"], target["met"]
    if value is None or met is None:
        return
    ceiling = is_ceiling(name, target)
    if (value <= bound if ceiling else value >= bound) != met:
        raise ValueError(f"{stem}.json: target {name!r} records met={met} for {value} against {bound}; "
                         f"expected a {'ceiling' if ceiling else 'floor'}")


def caveat(stem: str, name: str) -> str | None:
    return CAVEATS.get((stem, name), CAVEATS.get((stem, None)))


def rows(stem: str, notes: list) -> list:
    """The table's rows of result `stem`; each caveat's note is added to `notes` once and marked by its number."""
    result = json.loads((RESULTS / f"{stem}.json").read_text())
    table = []
    for name, target in result["figures"]["targets"].items():
        check_direction(stem, name, target)
        met = {True: "met", False: "**not met**", None: "not measured"}[target["met"]]
        if "met_on_seeds" in target:
            met += f" ({target['met_on_seeds']} seeds)"
        note = caveat(stem, name)
        if note is not None:
            if note not in notes:
                notes.append(note)
            met += f" ({notes.index(note) + 1})"
        bound = ("<= " if is_ceiling(name, target) else ">= ") + format_number(name, target["target"])
        if name.endswith("same_chosen_pair"):
            bound = "yes"
        value = format_number(name, target["value"])
        table.append(f"| `{stem}` | {machine(result)} | {run_of(result)} | `{name}` | {value} | {bound} | {met} |")
    return table


def targets_table() -> str:
    lines = ["| result (`benchmarks/results/`) | machine | run (date, commit) | target | value | required | status |",
             "| --- | --- | --- | --- | ---: | ---: | --- |"]
    notes = []
    for stem in HEADLINE_RESULTS:
        lines.extend(rows(stem, notes))
    lines += [""] + [f"({number}) {note}." for number, note in enumerate(notes, start=1)]
    return "\n".join(lines)


def readme_with_table(readme: str, table: str) -> str:
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise ValueError(f"expected one pair of markers {BEGIN!r} ... {END!r}, in that order, in README.md")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="Write the table into README.md between its markers.")
    mode.add_argument("--check", action="store_true", help="Exit 1 if README.md's table is not the JSON files'.")
    args = parser.parse_args(argv)
    table = targets_table()
    if not (args.write or args.check):
        print(table)
        return 0
    readme = README.read_text()
    updated = readme_with_table(readme, table)
    if args.write:
        README.write_text(updated)
        return 0
    if updated != readme:
        print("README.md's targets table differs from benchmarks/results/: run benchmarks/targets_table.py --write",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
