"""tuwen's encoders next to their peers, in one run on one machine (a benchmark, not a test):
HF transformers (PyTorch fp32), ONNX Runtime fp32 and ONNX Runtime dynamic int8, on the same full-size
random model and the same inputs as `cargo bench --bench encoders` (the Teddy sample's first captions,
tokenized with the real vocab and padded to the longest of the batch; 224×224 pixel tensors), then runs
that bench for tuwen's rows.

    python3 -m venv .venv && .venv/bin/pip install torch transformers onnx onnxscript onnxruntime
    .venv/bin/python scripts/export_onnx.py models/random-chinese-clip-vit-base-patch16 out/onnx
    .venv/bin/python scripts/bench_peers.py [--threads 2] [--force]

Refuses to start when the load average says something else runs (other processes distort timings up to 3x).
"""
import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import BertTokenizer, ChineseCLIPModel

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "teddy2024-sample" / "ImageWordData.csv"
MODEL = ROOT / "models" / "random-chinese-clip-vit-base-patch16"
ONNX = ROOT / "out" / "onnx"


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def row(name, threads, text1, text_batch, image1, image_batch):
    return (f"| {name} | {threads} | {statistics.median(text1) * 1e3:.1f} | {64 / text_batch:.1f} | "
            f"{statistics.median(image1) * 1e3:.0f} | {16 / image_batch:.2f} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    if load > 0.6 and not args.force:
        sys.exit(f"the 1-minute load average is {load:.2f}: something else is running (--force to run anyway)")
    torch.set_num_threads(args.threads)

    with open(SAMPLE, encoding="utf-8") as f:
        captions = [r["caption"] for r in csv.DictReader(f)]
    tokenizer = BertTokenizer(str(MODEL / "vocab.txt"))
    encode = lambda texts: tokenizer(texts, padding=True, truncation=True, max_length=52, return_tensors="np")
    singles = [encode([c]) for c in captions[:20]]
    batches = [encode(captions[i:i + 32]) for i in (0, 32)]
    rng = np.random.default_rng(0)
    pixels1 = [rng.standard_normal((1, 3, 224, 224), dtype=np.float32) for _ in range(5)]
    pixels8 = [rng.standard_normal((8, 3, 224, 224), dtype=np.float32) for _ in range(2)]

    print(f"load average {load:.2f} at start, {args.threads} threads, torch {torch.__version__}, onnxruntime {ort.__version__}")
    print()
    print("| engine | threads | ms/text b1 | texts/s b32 | ms/image b1 | images/s b8 |")
    print("|---|---|---|---|---|---|")

    model = ChineseCLIPModel.from_pretrained(MODEL).eval()
    def torch_text(enc):
        ids, mask = torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"])
        h = model.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
        return model.text_projection(h[:, 0, :])

    def torch_image(p):
        return model.visual_projection(model.vision_model(pixel_values=torch.from_numpy(p)).pooler_output)

    with torch.inference_mode():
        torch_text(singles[0]), torch_image(pixels1[0])
        print(row("PyTorch fp32 (transformers)", args.threads,
                  [timed(lambda e=e: torch_text(e)) for e in singles],
                  sum(timed(lambda b=b: torch_text(b)) for b in batches),
                  [timed(lambda p=p: torch_image(p)) for p in pixels1],
                  sum(timed(lambda p=p: torch_image(p)) for p in pixels8)), flush=True)
    del model

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    for name, suffix in [("ONNX Runtime fp32", ""), ("ONNX Runtime dynamic int8", "-int8")]:
        text = ort.InferenceSession(str(ONNX / f"text{suffix}.onnx"), options, providers=["CPUExecutionProvider"])
        vision = ort.InferenceSession(str(ONNX / f"vision{suffix}.onnx"), options, providers=["CPUExecutionProvider"])
        run_text = lambda enc: text.run(None, {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)})
        run_image = lambda p: vision.run(None, {"pixel_values": p})
        run_text(singles[0]), run_image(pixels1[0])
        print(row(name, args.threads,
                  [timed(lambda e=e: run_text(e)) for e in singles],
                  sum(timed(lambda b=b: run_text(b)) for b in batches),
                  [timed(lambda p=p: run_image(p)) for p in pixels1],
                  sum(timed(lambda p=p: run_image(p)) for p in pixels8)), flush=True)
        del text, vision

    print()
    print("tuwen (cargo bench --bench encoders, same inputs, same machine, right after):", flush=True)
    env = dict(os.environ, TUWEN_BENCH_QUICK="1", RAYON_NUM_THREADS=str(args.threads))
    subprocess.run(["cargo", "bench", "--bench", "encoders"], cwd=ROOT, env=env, check=True)


if __name__ == "__main__":
    main()
