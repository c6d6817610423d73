"""Measure each checkpoint's bf16 fast-path label agreement with fp32 eager and pin fp32 where it is too low.

On every 24th image of the test split (no labels are read: this is a numerical check, not a score; the
darker test sequences give less confident predictions, hence more near-ties, than val), the app's fast
path in bf16 (folded BN, channels_last, bf16 autocast) is compared with the fp32 eager model. Where fewer
than 99.5% of pixels get the same label, or fewer than 98.5% on any one image
(``workbench.inference.parity.parity_holds``), the manifest gets ``"inference": {"precision": "fp32", ...}``,
which ``Predictor(precision="auto")`` (the app) honours (``workbench.inference.predictor.checkpoint_precision``).
The app runs bf16 for speed, so the model is also timed both ways at 360x480 (as the leaderboard's CPU ms, median of
10 runs): where bf16 is not faster on this CPU (large transposed convolutions, e.g. FCN-32s's 64x64 one,
have no fast bf16 kernel here) fp32 is pinned too; otherwise ``"precision": "auto"``. The measured agreement
and both latencies are recorded either way.

    python scripts/check_bf16_parity.py checkpoints/camvid_*.json [--write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import workbench  # noqa: E402
import torch  # noqa: E402

from workbench.inference.timing import time_model  # noqa: E402
from workbench.io.manifest import Manifest  # noqa: E402
from workbench.inference.parity import PARITY_OVERALL, PARITY_WORST_IMAGE, label_agreement, parity_holds  # noqa: E402
from workbench.paths import resolve_data_root  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifests", nargs="+", type=Path)
    p.add_argument("--write", action="store_true", help="record the result in the manifests")
    a = p.parse_args()
    for path in a.manifests:
        man = Manifest.read(path)
        ds = man.dataset_name
        images = sorted((resolve_data_root() / ds / "test").glob("*.png"))[::24]
        model, _ = workbench.load_checkpoint(path)
        agree = label_agreement(model, images, precision="bf16")
        overall = sum(agree) / len(agree)
        x = torch.zeros(1, man.in_chans, 360, 480)
        ms = {p: statistics.median(time_model(model, x, torch.device("cpu"), p, warmup=2, repeats=10)) for p in ("fp32", "bf16")}
        # only an fp32 pin changes what "auto" runs
        precision = "auto" if parity_holds(agree) and ms["bf16"] < ms["fp32"] else "fp32"
        print(f"{path.name}: bf16 labels agree with fp32 on {100 * overall:.2f}% of pixels ({len(images)} test images, worst "
              f"{100 * min(agree):.2f}%); {ms['bf16']:.0f} ms in bf16, {ms['fp32']:.0f} ms in fp32 -> {precision}")
        if a.write:
            raw = json.loads(path.read_text())
            raw["inference"] = {
                "precision": precision,
                "bf16_label_agreement": round(overall, 5),
                "bf16_worst_image_agreement": round(min(agree), 5),
                "threshold": PARITY_OVERALL,
                "worst_image_threshold": PARITY_WORST_IMAGE,
                "cpu_latency_ms": {p: round(v, 1) for p, v in ms.items()},
            }
            path.write_text(json.dumps(raw, indent=2) + "\n")


if __name__ == "__main__":
    main()
