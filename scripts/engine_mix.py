"""The seven classic networks run as ``auto`` mixes them (OpenVINO and ONNX Runtime in one process), with ONNX
Runtime's idle threads spinning (its default) or not, alternated round by round in one process; then the same
seven all on OpenVINO. Prints the machine and the median of each.

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 WORKBENCH_ALLOCATOR=system python scripts/engine_mix.py --rounds 8

Asks whether one runtime's threads slow the next model of another (docs/performance.md): ``--mix`` names which
networks run on ONNX Runtime (default: the two auto picked it for on the AVX2-capped EPYC).
"""

from __future__ import annotations

import argparse
import statistics
import time

import onnxruntime as ort
from PIL import Image

from workbench.data.examples import shipped_camvid_images
from workbench.inference.predictor import Predictor
from workbench.system.machine import machine_description

NETWORKS = ("fcn32s", "fcn16s", "fcn8s", "unet", "residual_unet", "tiramisu", "dilated")


def ort_predictors(names: list[str], spinning: bool) -> dict[str, Predictor]:
    """ONNX Runtime predictors whose sessions are made with ``session.intra_op.allow_spinning`` set."""
    original = ort.SessionOptions

    class Options(original):
        def __init__(self):
            super().__init__()
            self.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")

    ort.SessionOptions = Options
    try:
        return {n: Predictor(f"checkpoints/camvid_{n}.json", "cpu", engine="onnxruntime") for n in names}
    finally:
        ort.SessionOptions = original


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--mix", nargs="+", default=["fcn8s", "dilated"])
    args = p.parse_args()
    image = Image.open(shipped_camvid_images()[0]).convert("RGB")
    ov = {n: Predictor(f"checkpoints/camvid_{n}.json", "cpu", engine="openvino") for n in NETWORKS}
    runs = {"auto's mix, ORT spinning": {**ov, **ort_predictors(args.mix, True)},
            "auto's mix, ORT not spinning": {**ov, **ort_predictors(args.mix, False)},
            "all OpenVINO fp32": ov}
    totals: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds + 1):  # the first round warms every model up
        for key, preds in runs.items():
            t = time.perf_counter()
            for n in NETWORKS:
                preds[n].predict(image)
            if r:
                totals[key].append((time.perf_counter() - t) * 1e3)
    print(machine_description())
    for key, values in totals.items():
        print(f"{key}: seven networks {statistics.median(values):.0f} ms (median of {len(values)}, min {min(values):.0f})")


if __name__ == "__main__":
    main()
