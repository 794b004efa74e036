"""A documented figure from Python: its configuration, the run, and the worst theory/simulation gap.

    python examples/experiment.py [NAME] [--full]

Without ``--full`` the tiny ``fast`` version runs (seconds plus Numba compilation).
"""

import argparse
import json

from symtransfer.figures import EXPERIMENTS, disagreement, experiment_config, run_experiment


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("name", nargs="?", default="phase-diagram", choices=list(EXPERIMENTS))
    parser.add_argument("--full", action="store_true", help="the sizes behind docs/figures (minutes)")
    parser.add_argument("--out", default="experiment-fast")
    args = parser.parse_args(argv)
    fast = not args.full
    print(json.dumps(experiment_config(args.name, fast=fast), indent=1))
    run = run_experiment(args.name, args.out, fast=fast, progress=False)
    print(run)
    for quantity, worst in disagreement(run.rows).items():
        if "z_paired" in worst:
            w = worst["z_paired"]
            print(f"{quantity}: largest paired gap {w['paired_diff']:+.3g} ± {w['paired_diff_sem']:.2g} "
                  f"at {w['panel']}, {w['setting']}, x = {w['x']}")
    return run


if __name__ == "__main__":
    main()
