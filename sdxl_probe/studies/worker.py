"""One study run in a fresh process: ``python -m sdxl_probe.studies.worker SPEC VARIANT SEED [--smoke]``.

The local-process and ``accelerate`` launchers start this (:mod:`sdxl_probe.studies.launch`); a user
error prints one line and exits 2, as the CLI does.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from sdxl_probe.errors import ProbeError
    from sdxl_probe.studies.runner import run_one

    parser = argparse.ArgumentParser(prog="python -m sdxl_probe.studies.worker")
    parser.add_argument("spec")
    parser.add_argument("variant")
    parser.add_argument("seed", type=int)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    try:
        action = run_one(args.spec, args.variant, args.seed, smoke=args.smoke, out=args.out,
                         log=lambda m: print(m, flush=True))
    except ProbeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.variant}/seed-{args.seed}: {action}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
