#!/usr/bin/env python3
"""Generates tuwen's parity fixtures with the Hugging Face reference implementation.

Run once by a developer (not in CI): needs torch, transformers and pillow, plus ../shared (the released
config/vocab and the Teddy 2024 sample). Everything it writes lands in tests/fixtures/:

  tiny/                 a small random Chinese-CLIP in the released HF layout (config.json, vocab.txt,
                        preprocessor_config.json, model.safetensors) and reference.json: token ids and
                        embeddings computed by transformers' ChineseCLIPModel for fixture texts and images
  tiny-bin/             the same model saved as pytorch_model.bin
  images/               small generated images in every colour mode and format tuwen must read
  real_vocab.json       HF BertTokenizer ids on the real vocab: edge cases in full, the sample's captions as
                        sha256 of their ids (the competition data is not redistributed here)
  sample_reference.json the tiny model's embedding of every sample image, from the HF processor's pixels
  sample_pixels.safetensors  HF processor pixel tensors of one sample image per colour mode

    python3 -m venv .venv && .venv/bin/pip install torch transformers pillow safetensors
    .venv/bin/python scripts/make_fixtures.py
"""
import csv
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

RANDOM_LABEL = "random weights: the tiny test fixture of scripts/make_fixtures.py (seeded)"
from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPModel
from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
REAL = SHARED / "chinese-clip-vit-base-patch16"
SAMPLE = SHARED / "data" / "teddy2024-sample"
OUT = ROOT / "tests" / "fixtures"
CONTEXT = 52

EDGE_TEXTS = [
    "",
    "，。！？、；：“”‘’（）《》",
    "!!!...???",
    "iPhone 15 Pro 发布会 2023年9月13日",
    "ＡＢＣ全角字母１２３和全角数字",
    "我爱北京天安门😀🎉",
    "Café naïve résumé 法语重音",
    "   多个   空格\t制表符\n换行  ",
    "[CLS] 特殊 [SEP] 记号 [MASK]",
    "超长文本" * 40,
    "unbelievably tokenization 词片 wordpiece",
    "《绿色北京》摄影大赛胡子<人名>作品",
]
FIXTURE_TEXTS = EDGE_TEXTS + [
    "一只猫坐在窗台上晒太阳",
    "海边的日落与帆船",
    "红烧肉的家常做法",
    "雪山下的湖泊",
]


def read_captions():
    with open(SAMPLE / "ImageWordData.csv", encoding="utf-8-sig", newline="") as f:
        return [(r["image_id"], r["caption"]) for r in csv.DictReader(f)]


def ids_digest(ids):
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()


def make_images(dst: Path):
    """Deterministic images in the modes tuwen must convert (L, LA, P with transparency, RGBA, CMYK, RGB)."""
    dst.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:240, 0:320]
    rgb = np.stack([(x * 255 // 319), (y * 255 // 239), ((x + y) * 255 // 558)], -1).astype(np.uint8)
    rgb[60:180, 100:220] = [200, 30, 40]
    base = Image.fromarray(rgb, "RGB")
    base.save(dst / "rgb.jpg", quality=92)
    base.save(dst / "rgb.png")
    base.save(dst / "rgb.bmp")
    base.save(dst / "rgb.webp", lossless=True)
    base.resize((97, 301), Image.BICUBIC).convert("L").save(dst / "gray.png")
    la = base.convert("LA")
    la.putalpha(Image.fromarray((x * 255 // 319).astype(np.uint8)))
    la.save(dst / "gray_alpha.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray((y * 255 // 239).astype(np.uint8)))
    rgba.save(dst / "rgba.png")
    pal = base.quantize(16)
    pal.info["transparency"] = 0
    pal.save(dst / "palette_transparent.png", transparency=0)
    base.quantize(32).save(dst / "palette.gif")
    base.convert("CMYK").save(dst / "cmyk.jpg", quality=95)


def tokenize(tok, text):
    return tok(text, max_length=CONTEXT, truncation=True)["input_ids"]


def main():
    if not REAL.is_dir() or not SAMPLE.is_dir():
        sys.exit(f"needs {REAL} and {SAMPLE}")
    torch.manual_seed(0)
    captions = read_captions()
    real_tok = BertTokenizer(str(REAL / "vocab.txt"))

    # Real-vocab token ids (tokenizer parity on the real vocabulary).
    real = {
        "edge_cases": [{"text": t, "ids": tokenize(real_tok, t)} for t in EDGE_TEXTS],
        "captions": {iid: {"len": len(ids), "sha256": ids_digest(ids)}
                     for iid, cap in captions for ids in [tokenize(real_tok, cap)]},
    }
    (OUT / "real_vocab.json").write_text(json.dumps(real, ensure_ascii=False, indent=1))

    # Tiny vocab: the specials block plus every token the texts above use, in the real vocab's order.
    real_vocab = (REAL / "vocab.txt").read_text(encoding="utf-8").split("\n")
    if real_vocab[-1] == "":
        real_vocab.pop()
    used = set()
    for text in FIXTURE_TEXTS + [c for _, c in captions]:
        used.update(real_tok.tokenize(text))
    tiny_vocab = real_vocab[:106] + [t for t in real_vocab[106:] if t in used]

    tiny = OUT / "tiny"
    tiny.mkdir(parents=True, exist_ok=True)
    (tiny / "vocab.txt").write_text("\n".join(tiny_vocab) + "\n", encoding="utf-8")
    config = ChineseCLIPConfig(
        projection_dim=32,
        text_config=dict(vocab_size=len(tiny_vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           image_size=224, patch_size=16),
    )
    model = ChineseCLIPModel(config).eval()
    # HF's init leaves norms at 1/0 and is nearly input-blind at this size: draw every parameter so the
    # fixture exercises each tensor and different inputs give clearly different embeddings.
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else 1
            std = 1.0 / np.sqrt(fan_in) if p.dim() > 1 else 0.1
            p.copy_(torch.randn_like(p) * std + (1.0 if "norm" in name.lower() and name.endswith("weight") else 0.0))
    model.save_pretrained(tiny)
    # Label the fixture as random, like `tuwen init-random` does: every output made from it must say so.
    weights = load_file(tiny / "model.safetensors")
    save_file(weights, tiny / "model.safetensors", metadata={"format": "pt", "tuwen.random_weights": RANDOM_LABEL})
    shutil.copy(REAL / "preprocessor_config.json", tiny / "preprocessor_config.json")
    tiny_bin = OUT / "tiny-bin"
    tiny_bin.mkdir(exist_ok=True)
    torch.save(model.state_dict(), tiny_bin / "pytorch_model.bin")
    for f in ["config.json", "vocab.txt", "preprocessor_config.json"]:
        shutil.copy(tiny / f, tiny_bin / f)

    tok = BertTokenizer(str(tiny / "vocab.txt"))
    proc = ChineseCLIPImageProcessorPil.from_pretrained(str(REAL))

    def text_embeddings(texts):
        enc = tok(texts, max_length=CONTEXT, truncation=True, padding="max_length", return_tensors="pt")
        with torch.no_grad():
            f = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output
        return torch.nn.functional.normalize(f, dim=-1).numpy()

    def pixels(paths):
        return proc([Image.open(p) for p in paths], return_tensors="pt")["pixel_values"]

    def image_embeddings(pix):
        out = []
        with torch.no_grad():
            for i in range(0, len(pix), 16):
                f = model.get_image_features(pixel_values=pix[i:i + 16]).pooler_output
                out.append(torch.nn.functional.normalize(f, dim=-1))
        return torch.cat(out).numpy()

    make_images(OUT / "images")
    parity_images = ["rgb.jpg", "rgb.png", "rgb.bmp", "rgb.webp", "gray.png", "gray_alpha.png", "rgba.png",
                     "palette_transparent.png", "palette.gif", "cmyk.jpg"]
    img_emb = image_embeddings(pixels([OUT / "images" / f for f in parity_images]))
    txt_emb = text_embeddings(FIXTURE_TEXTS)
    reference = {
        "generator": "scripts/make_fixtures.py with transformers " + __import__("transformers").__version__,
        "texts": [{"text": t, "ids": tokenize(tok, t), "embedding": e.tolist()} for t, e in zip(FIXTURE_TEXTS, txt_emb)],
        "images": [{"file": f, "embedding": e.tolist()} for f, e in zip(parity_images, img_emb)],
    }
    (tiny / "reference.json").write_text(json.dumps(reference, ensure_ascii=False, indent=1))

    # The real sample through the HF processor: every image's embedding, one pixel tensor per colour mode.
    files = [iid for iid, _ in captions]
    pix = pixels([SAMPLE / "ImageData" / f for f in files])
    emb = image_embeddings(pix)
    (OUT / "sample_reference.json").write_text(json.dumps(
        {f: e.tolist() for f, e in zip(files, emb)}, indent=0))
    by_mode = {}
    for i, f in enumerate(files):
        im = Image.open(SAMPLE / "ImageData" / f)
        by_mode.setdefault(im.mode, []).append((im.size[0] * im.size[1], i, f))
    keep = {}
    for mode, items in by_mode.items():
        items.sort()
        for _, i, f in {items[0], items[-1]}:
            keep[f] = pix[i].contiguous()
    save_file(keep, OUT / "sample_pixels.safetensors")
    sims = emb @ emb.T
    off = sims[~np.eye(len(emb), dtype=bool)]
    print(f"sample image embeddings: mean off-diagonal cosine {off.mean():.3f}, max {off.max():.3f}")
    print("kept pixel tensors:", sorted(keep))


if __name__ == "__main__":
    main()
