"""Run the benchmarks and assemble benchmarks/RESULTS.md.

    python -m benchmarks.run                 # every benchmark, full runs
    python -m benchmarks.run --only export   # one of them
    python -m benchmarks.run --assemble      # only rebuild RESULTS.md

Each benchmark module writes its own section to benchmarks/results/; this
runner concatenates them, in a fixed order, under a common header.
tfmot and tf_keras (the `bench` extra) run only in subprocesses.
"""

import argparse
import importlib
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = [
    "export",
    "pruning",
    "qat",
    "distillation",
    "transfer",
    "channel_pruning",
]
# Result files in RESULTS.md order: a benchmark with parts writes one file
# per part (`--part`), so a part can be re-run alone.
SECTIONS = [
    "export",
    "pruning",
    "qat",
    "qat_mobilenet",
    "distillation",
    "distillation_timing",
    "transfer",
    "transfer_caching",
    "channel_pruning",
    "channel_pruning_recipe",
    "ptq",
    "backends",
    "zoo",
]


def assemble():
    parts = [
        "# keras_slim benchmark results\n",
        "Every figure below was measured by the command named in its "
        "section, on a 2-core x86 machine without a GPU. Ratios are "
        "measured side by side in one run; medians over repeats where "
        "stated. Figures that miss their goal are reported as measured.\n",
    ]
    folder = os.path.join(HERE, "results")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    ordered = [f"{n}.md" for n in SECTIONS if f"{n}.md" in names]
    ordered += [n for n in names if n.endswith(".md") and n not in ordered]
    for name in ordered:
        with open(os.path.join(folder, name)) as f:
            parts.append(f.read().strip() + "\n")
    with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
        f.write("\n".join(parts))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", action="append", choices=ORDER)
    parser.add_argument("--assemble", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not args.assemble:
        for name in args.only or ORDER:
            module = importlib.import_module(f"benchmarks.{name}")
            module.main(["--quick"] if args.quick else [])
    assemble()


if __name__ == "__main__":
    main()
