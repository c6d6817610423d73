"""What the weight average bought in ``--ema-decay`` training runs, from their ``metrics.jsonl``.

    python scripts/ema_report.py runs/finetune/camvid_deeplabv3plus_ema runs/finetune/camvid_residual_unet

prints, per run, the best validation mIoU of the average and of the trained weights, the mean and range of
their difference over the evaluations, and each one's spread (see ``workbench.training.curves.ema_comparison``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from workbench.training.curves import ema_comparison, read_metrics


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    status = 0
    for run in map(Path, argv):
        path = run / "metrics.jsonl"
        if not path.is_file():
            print(f"{run}: no metrics.jsonl", file=sys.stderr)
            status = 2
            continue
        c = ema_comparison(read_metrics(path))
        if c is None:
            print(f"{run}: no evaluation with both the average and the trained weights (was it trained with --ema-decay?)")
            continue
        lo, hi = c["average_minus_trained_range"]
        print(
            f"{run.name}: {c['evaluations']} evaluations; best val mIoU: average {c['best_average']:.2f}, trained "
            f"{c['best_trained']:.2f}; average - trained: mean {c['average_minus_trained_mean']:+.2f} "
            f"({lo:+.2f} to {hi:+.2f}); spread over the evaluations: average {c['spread_average']:.2f}, "
            f"trained {c['spread_trained']:.2f}"
        )
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
