"""``python -m robustness [MODELS_DIR]``: measure shift consistency, corruption and frequency
robustness of a models folder's ONNX files and write ``MODELS_DIR/robustness.json``."""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from serving.cli import DefaultsHelpFormatter
from serving.files import update_marked_block
from serving.paths import BUNDLED_MODELS_DIR
from serving.registry import ModelRegistry

from .corruptions import CORRUPTIONS
from .report import (
    RESULTS_FILE,
    Plan,
    ResultsError,
    default_jobs,
    estimate_seconds,
    last_results,
    markdown_table,
    measure_folder,
    plan_for,
)

README_BLOCK = "robustness"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m robustness", description=__doc__,
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("models_dir", nargs="?", type=Path, default=BUNDLED_MODELS_DIR,
                        help="a folder of exported models (with manifest.json)")
    parser.add_argument("--models", help="comma-separated model names (default: every model of the folder)")
    defaults = Plan()
    parser.add_argument("--images", type=int, default=defaults.images,
                        help="test images for the clean and shift figures")
    parser.add_argument("--corruption-images", type=int, default=defaults.corruption_images,
                        help="test images per corruption (spread over the five severities)")
    parser.add_argument("--filter-images", type=int, default=defaults.filter_images,
                        help="test images per filter and radius")
    parser.add_argument("--radii", default=",".join(f"{r:g}" for r in defaults.radii),
                        help="filter radii in frequency bins, comma-separated")
    parser.add_argument("--corruptions", default="all", help=f"comma-separated, or 'all' ({', '.join(CORRUPTIONS)})")
    parser.add_argument("--half-width", type=float, metavar="POINTS",
                        help="size every image count so that each figure of the summary table has a 95 %% interval "
                             "no wider than +-POINTS, at the rates of the folder's last results (50 %% where there "
                             "are none); replaces --images, --corruption-images and --filter-images")
    parser.add_argument("--estimate", action="store_true",
                        help="print the plan and its expected time (from the last run on this kind of machine), "
                             "then stop without measuring")
    parser.add_argument("--jobs", type=int, default=default_jobs(),
                        help="models measured at once, each in its own process (one per four cores)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--data-dir", type=Path, help="the CIFAR-10 folder (default: $HYBRID_DATA_DIR, ../shared/data, ./data)")
    parser.add_argument("--readme", type=Path, help="also rewrite this file's robustness block (e.g. README.md)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def plan_from(args: argparse.Namespace, previous: dict | None) -> Plan:
    """The plan the options ask for; with ``--half-width``, sized from ``previous`` (the last results)."""
    try:
        radii = tuple(float(r) for r in args.radii.split(","))
    except ValueError:
        raise ValueError(f"--radii takes comma-separated numbers, got {args.radii!r}") from None
    corruptions = CORRUPTIONS if args.corruptions == "all" else tuple(c.strip() for c in args.corruptions.split(","))
    plan = Plan(images=args.images, corruption_images=args.corruption_images, filter_images=args.filter_images,
                radii=radii, corruptions=corruptions, seed=args.seed)
    if args.half_width is None:
        return plan
    if not 0 < args.half_width < 50:
        raise ValueError(f"--half-width is in points, between 0 and 50, got {args.half_width:g}")
    return plan_for(args.half_width / 100, previous, plan)


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (commands stay short)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def describe(plan: Plan, models_dir: Path, names: Sequence[str], previous: dict | None) -> str:
    """The plan in words, the command that repeats it, and its expected time (from ``previous``)."""
    lines = [f"plan: {plan.images} images for clean and each shift figure, {plan.corruption_images} per corruption "
             f"({len(plan.corruptions)}), {plan.filter_images} per filter and radius ({len(plan.radii)} radii): "
             f"{plan.evaluations:,} classifications per model",
             f"  the same plan: python -m robustness {shown(models_dir)} --images {plan.images} "
             f"--corruption-images {plan.corruption_images} --filter-images {plan.filter_images}"]
    estimate = estimate_seconds(plan, previous, names)
    if estimate is None:
        lines.append("  expected time: unknown (no earlier run of these models on this kind of machine)")
    else:
        each = ", ".join(f"{name} {seconds / 60:.0f}" for name, seconds in estimate.items())
        lines.append(f"  expected time: {sum(estimate.values()) / 60:.0f} min on one job at the last run's speed "
                     f"({each} min)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if not (args.models_dir / "manifest.json").is_file():
            raise ValueError(f"{args.models_dir} has no manifest.json: pass a folder of exported models")
        # Rows of models whose file changed since included: a retrained model's rates and
        # speed are the best guess of its successor's.
        previous = last_results(args.models_dir, current_only=False)
        plan = plan_from(args, previous)
        names = [n.strip() for n in args.models.split(",")] if args.models else None
        if args.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
        print(describe(plan, args.models_dir, names or ModelRegistry(args.models_dir).names(), previous))
        if args.estimate:
            return 0
        start = time.perf_counter()
        document = measure_folder(args.models_dir, plan, names, args.data_dir, progress=not args.no_progress,
                                  jobs=args.jobs)
    except (ValueError, FileNotFoundError, ResultsError) as error:
        parser.exit(2, f"python -m robustness: {error}\n")
    table = markdown_table(document)
    print(table)
    if args.readme is not None:
        try:
            update_marked_block(args.readme, README_BLOCK, table)
        except (OSError, ValueError) as error:
            parser.exit(2, f"python -m robustness: {args.readme}: {error}\n")
        print(f"updated the {README_BLOCK} block of {args.readme}")
    print(f"\nwrote {args.models_dir / RESULTS_FILE} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
