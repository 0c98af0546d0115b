"""tuwen's CPU engine next to ONNX Runtime dynamic int8, in one run (a benchmark, not a test).

The CPU's speed drifts on shared machines (2x between days, 20 % within minutes), so the engines alternate
(ORT, tuwen, ORT, …, --rounds tuwen runs), each measured for the same seconds per shape, and each round's ratio
is taken against the mean of the ORT runs on either side of it. Inputs: 52-token texts (ids drawn at random; the
encoder's cost does not depend on which tokens) and 224x224 pixels, batch 1 and 32 texts, 1 and 8 images.

    .venv/bin/python scripts/export_onnx.py models/random-chinese-clip-vit-base-patch16 out/onnx
    cargo build --release --example profile_encoders
    .venv/bin/python scripts/bench_cpu.py [--threads 2] [--rounds 2]
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


def median_time(f, seconds):
    """Median seconds per call of `f` over at least `seconds` (two warm-up calls first, at least 3 timed)."""
    f()
    f()
    times = []
    begin = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - begin < seconds:
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# (measure, tower, batch, seconds per measurement): each engine gets the same time per measurement.
SHAPES = [("text b1", "text", 1, 4), ("text b32", "text", 32, 8), ("image b1", "vision", 1, 5), ("image b8", "vision", 8, 10)]


def ort_sessions(threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    text = ort.InferenceSession(str(ONNX / "text-int8.onnx"), options, providers=["CPUExecutionProvider"])
    vision = ort.InferenceSession(str(ONNX / "vision-int8.onnx"), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)

    def inputs(tower, batch):
        if tower == "vision":
            return {"pixel_values": rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)}
        x = rng.integers(100, 20000, (batch, 52)).astype(np.int64)
        x[:, 0], x[:, -1] = 101, 102
        return {"input_ids": x, "attention_mask": np.ones((batch, 52), np.int64)}

    def run():
        out = {}
        for key, tower, batch, seconds in SHAPES:
            session, feed = (text if tower == "text" else vision), inputs(tower, batch)
            out[key] = median_time(lambda: session.run(None, feed), seconds)
        return out

    return run


def tuwen_run(threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = {}
    for key, tower, batch, seconds in SHAPES:
        model = MODEL / f"tuwen-q8_0-{tower}.gguf"
        line = subprocess.run([str(PROFILE), str(model), tower, str(batch), str(seconds)], env=env, check=True,
                              capture_output=True, text=True).stdout
        out[key] = float(re.search(r"([0-9.]+) ms per batch", line).group(1)) / 1e3
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="tuwen runs, each between two ONNX Runtime runs")
    args = parser.parse_args()
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, {args.threads} threads, onnxruntime {ort.__version__}, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    # ORT, tuwen, ORT, tuwen, …, ORT: the machine's drift reaches both engines alike; each round's ratio is
    # taken against the mean of the ORT runs on either side of it.
    ort_run = ort_sessions(args.threads)
    orts, tuwens = [ort_run()], []
    for _ in range(args.rounds):
        tuwens.append(tuwen_run(args.threads))
        orts.append(ort_run())
    batch = {key: n for key, _, n, _ in SHAPES}
    print()
    print("| measure | ONNX Runtime int8 (median of runs) | tuwen q8_0 (median of runs) | tuwen ÷ ORT (throughput), per round | median |")
    print("|---|---|---|---|---|")
    for key, *_ in SHAPES:
        if batch[key] == 1:
            unit = lambda s: f"{s * 1e3:.1f} ms"
        else:
            unit = lambda s, n=batch[key]: f"{n / s:.2f}/s"
        ratios = [(orts[i][key] + orts[i + 1][key]) / 2 / t[key] for i, t in enumerate(tuwens)]
        ort_all, tuwen_all = [o[key] for o in orts], [t[key] for t in tuwens]
        print(f"| {key} | {unit(statistics.median(ort_all))} ({', '.join(unit(v) for v in ort_all)}) "
              f"| {unit(statistics.median(tuwen_all))} ({', '.join(unit(v) for v in tuwen_all)}) "
              f"| {', '.join(f'{r:.2f}×' for r in ratios)} | {statistics.median(ratios):.2f}× |")


if __name__ == "__main__":
    main()
