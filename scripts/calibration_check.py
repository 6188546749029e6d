"""Score checkpoints' probabilities on their held-out test scenes through ``changedet detect``.

    python scripts/calibration_check.py changedet/weights/s2-rgb.safetensors out/cal/s2-rgb.safetensors

For each checkpoint: the threshold, the pooled test F1 of ``change.tif`` and the calibration of ``probability.tif``
(expected calibration error over 15 bins, Brier score, log loss, mean probability against the changed fraction)
on the test scenes its training config names (``scripts/reproduce.py``'s ``evaluate_test``). The validation
figures of a calibrated checkpoint (``metrics.probability_calibration`` in its JSON) are printed beside them; they
are optimistic, since the calibration was fitted on those scenes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reproduce import evaluate_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    args = parser.parse_args()
    rows = []
    for ckpt in args.checkpoints:
        meta = json.loads(ckpt.with_suffix(".json").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            test = evaluate_test(ckpt, meta["training"]["data"], Path(tmp), args.threads)
        if test is None:
            print(f"{ckpt}: its training config names no test scenes", file=sys.stderr)
            continue
        platt = meta["metrics"].get("probability_calibration")
        rows.append({"checkpoint": str(ckpt), "threshold": meta["threshold"], "test": test,
                     "validation_after": platt["after"] if platt else None})
        pooled = test["pooled"]
        pm = pooled["probability"]
        print(f"{ckpt}: threshold {meta['threshold']:.4f}  test F1 {100 * pooled['f1']:.2f}  "
              f"ECE {100 * pm['ece']:.2f} %  Brier {pm['brier']:.4f}  log loss {pm['nll']:.4f}  "
              f"mean p {100 * pm['mean_probability']:.2f} % vs changed {100 * pm['change_fraction']:.2f} %")
        for name, scene in test["scenes"].items():
            sp = scene["probability"]
            print(f"    {name}: F1 {100 * scene['f1']:.2f}  ECE {100 * sp['ece']:.2f} %  "
                  f"mean p {100 * sp['mean_probability']:.2f} % vs changed {100 * sp['change_fraction']:.2f} %")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
