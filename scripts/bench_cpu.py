"""tuwen's CPU engine next to ONNX Runtime dynamic int8, in one run (a benchmark, not a test).

The CPU's speed drifts on shared machines (2x between days, 20 % within minutes), so ORT runs before and after
tuwen and the ratio is taken against the mean of the two. Inputs: 52-token texts (ids drawn at random; the
encoder's cost does not depend on which tokens) and 224x224 pixels, batch 1 and 32 texts, 1 and 8 images.

    .venv/bin/python scripts/export_onnx.py models/random-chinese-clip-vit-base-patch16 out/onnx
    cargo build --release --example profile_encoders
    .venv/bin/python scripts/bench_cpu.py [--threads 2]
"""
import argparse
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "random-chinese-clip-vit-base-patch16"
ONNX = ROOT / "out" / "onnx"
PROFILE = ROOT / "target" / "release" / "examples" / "profile_encoders"


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def median_time(f, runs):
    f()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ort_run(threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    text = ort.InferenceSession(str(ONNX / "text-int8.onnx"), options, providers=["CPUExecutionProvider"])
    vision = ort.InferenceSession(str(ONNX / "vision-int8.onnx"), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)

    def ids(batch):
        x = rng.integers(100, 20000, (batch, 52)).astype(np.int64)
        x[:, 0], x[:, -1] = 101, 102
        return {"input_ids": x, "attention_mask": np.ones((batch, 52), np.int64)}

    t1, t32 = ids(1), ids(32)
    p1 = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
    p8 = rng.standard_normal((8, 3, 224, 224), dtype=np.float32)
    return {
        "text b1": median_time(lambda: text.run(None, t1), 20),
        "text b32": median_time(lambda: text.run(None, t32), 3),
        "image b1": median_time(lambda: vision.run(None, {"pixel_values": p1}), 5),
        "image b8": median_time(lambda: vision.run(None, {"pixel_values": p8}), 3),
    }


def tuwen_run(threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = {}
    for key, tower, batch, seconds in [("text b1", "text", 1, 5), ("text b32", "text", 32, 8),
                                       ("image b1", "vision", 1, 5), ("image b8", "vision", 8, 10)]:
        model = MODEL / f"tuwen-q8_0-{tower}.gguf"
        line = subprocess.run([str(PROFILE), str(model), tower, str(batch), str(seconds)], env=env, check=True,
                              capture_output=True, text=True).stdout
        out[key] = float(re.search(r"([0-9.]+) ms per batch", line).group(1)) / 1e3
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, {args.threads} threads, onnxruntime {ort.__version__}, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    before = ort_run(args.threads)
    tuwen = tuwen_run(args.threads)
    after = ort_run(args.threads)
    batch = {"text b1": 1, "text b32": 32, "image b1": 1, "image b8": 8}
    print()
    print("| measure | ORT int8 before | tuwen q8_0 | ORT int8 after | tuwen ÷ ORT (throughput) |")
    print("|---|---|---|---|---|")
    for key in before:
        ort_mean = (before[key] + after[key]) / 2
        if batch[key] == 1:
            unit = lambda s: f"{s * 1e3:.1f} ms"
        else:
            unit = lambda s, n=batch[key]: f"{n / s:.2f}/s"
        print(f"| {key} | {unit(before[key])} | {unit(tuwen[key])} | {unit(after[key])} | {ort_mean / tuwen[key]:.2f}× |")


if __name__ == "__main__":
    main()
