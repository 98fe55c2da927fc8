"""Picks `conformance.canonical.MODELS`: a few drawn models that together run every op refimpl
implements, hit every kink and show every wrong derivative rule of the catalogue (in both
dtypes, on the first batch; see `canonical.reach`), so that they show in the canonical cases,
whatever the seed of a run.

    .venv/bin/python scripts/pick_canonical_models.py [--examples 4000]

Draws model specs with a fixed seed, measures what each reaches (`canonical.reach`), and covers
the union greedily (the most not yet covered first, then the fewest parameters). Writes them,
with what they cover, to conformance/canonical_models.json, and prints what nothing covered.
tests/test_canonical.py checks that the stored models still cover what they were picked for.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, settings

from conformance import models, mutants
from conformance.canonical import MODELS_FILE, reach
from conformance.spec_strategies import model_specs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=4000)
    args = parser.parse_args()
    drawn: list[tuple[models.ModelSpec, frozenset[str]]] = []

    @settings(
        max_examples=args.examples,
        database=None,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(model_specs())
    def draw(spec: models.ModelSpec) -> None:
        drawn.append((spec, reach(spec)))

    draw()
    wanted = (
        set(models.ALL_OPS)
        | set(models.KINKS)
        | {f"mutant:{m.name}" for m in mutants.AUTOGRAD_MUTANTS + mutants.THOROUGH_MUTANTS}
    )
    covered: set[str] = set()
    chosen: list[models.ModelSpec] = []
    size = lambda s: sum(math.prod(shape) for shape in s.parameter_shapes().values())
    while True:
        spec, gain = max(
            ((s, r & wanted - covered) for s, r in drawn),
            key=lambda pair: (len(pair[1]), -size(pair[0])),
        )
        if not gain:
            break
        chosen.append(spec)
        covered |= gain
    data = {
        "picked_by": f"scripts/pick_canonical_models.py --examples {args.examples}",
        "covers": sorted(covered),
        "models": [spec.to_json() for spec in chosen],
    }
    MODELS_FILE.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(
        f"{len(chosen)} models written to {MODELS_FILE}; not covered by "
        f"{args.examples} drawn models: {sorted(wanted - covered) or 'nothing'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
