#!/usr/bin/env python3
"""Checkpoints as the official Chinese-CLIP code (`cn_clip`) writes them, and cn_clip's own outputs on them.

Run by a developer (not in CI), in a venv with torch, torchvision and the PyPI `cn-clip` installed --no-deps
(plus `six timm`, which its tokenizer and model modules import):

    python3 -m venv .venv && .venv/bin/pip install torch torchvision transformers pillow safetensors six timm
    .venv/bin/pip install --no-deps cn-clip
    .venv/bin/python scripts/make_cn_clip_fixtures.py                  # tests/fixtures/cn_clip (committed)
    .venv/bin/python scripts/make_cn_clip_fixtures.py --released OUT    # the five architectures at their
        released widths (reduced depth) and ViT-B/16 at full size: too large to commit; run the tests on them
        with TUWEN_CN_CLIP_FIXTURES=OUT cargo test --test native cn_clip

Every checkpoint holds random weights (seeded) and says so under `tuwen.random_weights`, a key cn_clip ignores.
manifest.json lists, per checkpoint, cn_clip's `tokenize` ids and `encode_text` output for the fixture texts,
and `encode_image` on `image_transform`'s pixels (stored in pixels-<size>.safetensors) for the fixture images:
generated ones in every mode PIL opens (RGB, L, P with transparency, RGBA, LA, CMYK) and, when ../shared is
there, real images of the Teddy sample in each of its modes.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from cn_clip.clip.model import CLIP
from cn_clip.clip.utils import image_transform, tokenize
from make_fixtures import FIXTURE_TEXTS  # this script's folder is on the path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "teddy2024-sample" / "ImageData"
LABEL = "random weights: a cn_clip-format fixture of scripts/make_cn_clip_fixtures.py (seeded)"
VOCAB = 21128

# The tokenizer tests' texts (make_fixtures.py) and a word of 150 letters: one [UNK] for transformers (100 at
# most), word pieces for cn_clip (200). The "[CLS] 特殊 [SEP]" one is plain text to cn_clip's tokenizer.
TEXTS = FIXTURE_TEXTS + ["x" * 150 + " 长词"]

TEXT_BASE = dict(text_attention_probs_dropout_prob=0.1, text_hidden_act="gelu", text_hidden_dropout_prob=0.1,
                 text_initializer_range=0.02, text_max_position_embeddings=512, text_type_vocab_size=2)


def text_tower(hidden, layers, intermediate):
    return dict(TEXT_BASE, vocab_size=VOCAB, text_hidden_size=hidden, text_num_hidden_layers=layers,
                text_num_attention_heads=hidden // 64, text_intermediate_size=intermediate)


def build(config, seed):
    torch.manual_seed(seed)
    model = CLIP(**config).eval()
    with torch.no_grad():
        # BERT's initialisation (std 0.02) leaves a small random text tower blind to its input: draw the text
        # tower's matrices at 1/√fan-in and its embeddings at 1 instead.
        for name, p in model.bert.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 1 if "embeddings" in name else p.shape[1] ** -0.5)
        # Norms and biases away from 1 and 0, so that a mix-up between them shows.
        for name, p in model.named_parameters():
            if p.dim() == 1 and not name.endswith("class_embedding"):
                p.add_(torch.randn_like(p) * 0.1)
        # BatchNorm running statistics are buffers, not parameters: make them matter too.
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
    return model


def generated_images(out):
    """Non-square images in every mode, with edges and gradients, saved as cn_clip users' files would be."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    h, w = 97, 150
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) % 64) * 4], -1).astype(np.uint8)
    rgb[20:60, 30:90] = [200, 30, 40]
    rgb += rng.integers(0, 20, rgb.shape, dtype=np.uint8)
    base = Image.fromarray(rgb, "RGB")
    alpha = Image.fromarray(((x * 3 + y * 2) % 256).astype(np.uint8), "L")
    files = {}
    files["rgb.png"] = base
    files["l.png"] = base.convert("L")
    rgba = base.copy()
    rgba.putalpha(alpha)
    files["rgba.png"] = rgba
    la = base.convert("L")
    la.putalpha(alpha)
    files["la.png"] = la
    files["p.png"] = base.quantize(colors=23)
    files["small-rgb.png"] = base.resize((41, 29), Image.BICUBIC)
    for name, im in files.items():
        im.save(out / name)
    pt = base.quantize(colors=16)
    pt.info["transparency"] = 3
    pt.save(out / "p-transparent.png", transparency=3)
    base.save(out / "rgb.jpg", quality=92)
    base.convert("CMYK").save(out / "cmyk.jpg", quality=92)
    base.save(out / "anim.gif")
    return sorted(p.name for p in out.iterdir())


def sample_images(per_mode=2):
    if not SAMPLE.is_dir():
        print(f"note: {SAMPLE} is absent: no real images in the fixture", file=sys.stderr)
        return []
    by_mode = {}
    for path in sorted(SAMPLE.iterdir()):
        with Image.open(path) as im:
            by_mode.setdefault(im.mode, [])
            if len(by_mode[im.mode]) < per_mode and max(im.size) < 1500:
                by_mode[im.mode].append(path.name)
    return [n for names in by_mode.values() for n in names]


def reference(model, images, pixels_by_size):
    size = model.visual.input_resolution
    transform = image_transform(size)
    out = {}
    with torch.no_grad():
        ids = tokenize(TEXTS)
        text = model.encode_text(ids)
        out["token_ids"] = [[int(t) for t in row if t != 0] for row in ids]
        out["text_embeddings"] = (text / text.norm(dim=-1, keepdim=True)).tolist()
        if images is not None:
            pixels = pixels_by_size.setdefault(size, {})
            for key, path in images:
                if key not in pixels:
                    with Image.open(path) as im:
                        pixels[key] = transform(im).contiguous()
            batch = torch.stack([pixels[key] for key, _ in images])
            emb = model.encode_image(batch)
            emb = emb / emb.norm(dim=-1, keepdim=True)
            out["image_embeddings"] = {key: e.tolist() for (key, _), e in zip(images, emb)}
    out["image_size"] = size
    return out


def optimizer_state(model):
    """One AdamW step on a random batch, as cn_clip's training leaves its optimizer; the image tower frozen
    (cn_clip's --freeze-vision), so that the state stays small."""
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if not n.startswith("visual.")], lr=1e-5, weight_decay=0.001)
    size = model.visual.input_resolution
    loss = model.encode_text(tokenize(TEXTS[-3:-1])).sum() + model.encode_image(torch.randn(2, 3, size, size)).sum()
    loss.backward()
    opt.step()
    opt.zero_grad()
    return opt.state_dict()


def save(path, state_dict, prefix="", **extra):
    checkpoint = dict(extra)
    checkpoint["state_dict"] = {prefix + k: v for k, v in state_dict.items()}
    checkpoint["tuwen.random_weights"] = LABEL
    torch.save(checkpoint, path)
    return path.name


def write(out, manifest, pixels_by_size):
    for size, pixels in pixels_by_size.items():
        save_file(pixels, out / f"pixels-{size}.safetensors")
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False))


def images_for(out, names, samples):
    return [(n, out / "images" / n) for n in names] + [(f"sample:{n}", SAMPLE / n) for n in samples]


def small(out):
    out.mkdir(parents=True, exist_ok=True)
    names = generated_images(out / "images")
    images = images_for(out, names, sample_images())
    pixels = {}
    manifest = {"texts": TEXTS, "images": [k for k, _ in images], "checkpoints": [], "bad": {}}

    vit = dict(embed_dim=64, image_resolution=32, vision_layers=1, vision_width=128, vision_patch_size=8,
               **text_tower(64, 2, 256))
    model = build(vit, 1)
    # The word-embedding rows no fixture text uses are zero: the file compresses to the rows that matter.
    used = sorted({t for row in tokenize(TEXTS).tolist() for t in row})
    with torch.no_grad():
        keep = torch.zeros(VOCAB, dtype=torch.bool)
        keep[used] = True
        model.bert.embeddings.word_embeddings.weight[~keep] = 0
    ref = reference(model, images, pixels)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt = optimizer_state(build(vit, 1))
    file = save(out / "vit-finetuned.pt", state, "module.", epoch=3, step=120, name="teddy-finetune", optimizer=opt)
    manifest["checkpoints"].append(dict(ref, file=file, architecture="ViT (width 128, patch 8, 32 px) + RoBERTa (width 64, 2 layers)"))

    # fp16, no `module.`: cn_clip's fp32 model of the same fp16 weights is the reference.
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict({k: v.float() for k, v in half.items()})
    file = save(out / "vit-fp16.pt", half)
    manifest["checkpoints"].append(dict(reference(model, images, pixels), file=file, architecture="ViT (width 128, patch 8, 32 px) + RoBERTa (width 64, 2 layers)"))

    rn = dict(embed_dim=64, image_resolution=32, vision_layers=[1, 1, 1, 1], vision_width=8, vision_patch_size=None,
              **text_tower(64, 1, 256))
    model = build(rn, 2)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[~keep] = 0
    sd = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    file = save(out / "rn50-fp16.pt", sd, "module.", epoch=1, step=10, name="rn50")
    manifest["checkpoints"].append(dict(reference(model, images, pixels), file=file, architecture="RN50 + RoBERTa (width 64, 1 layer)"))

    bad(out / "bad", manifest)
    write(out, manifest, pixels)


class Payload:
    """What a malicious checkpoint would carry: unpickling it with torch.load(weights_only=False) runs a command."""

    def __reduce__(self):
        return (os.system, ("touch tuwen-pickle-ran",))


def bad(out, manifest):
    out.mkdir(parents=True, exist_ok=True)
    tiny = dict(embed_dim=64, image_resolution=16, vision_layers=1, vision_width=64, vision_patch_size=8,
                **dict(text_tower(64, 1, 64), vocab_size=8, text_max_position_embeddings=52))
    sd = {k: v.half() for k, v in build(tiny, 3).state_dict().items()}
    torch.save({"state_dict": sd, "extra": Payload()}, out / "code.pt")
    missing = {k: v for k, v in sd.items() if k != "bert.encoder.layer.0.output.dense.weight"}
    torch.save({"state_dict": missing}, out / "missing.pt")
    torch.save({"state_dict": dict(sd, **{"visual.transformer.resblocks.0.attn.gate": torch.zeros(4)})}, out / "extra.pt")
    openai = {"token_embedding.weight": torch.zeros(8, 16), "positional_embedding": torch.zeros(4, 16),
              "visual.conv1.weight": torch.zeros(16, 3, 8, 8), "transformer.resblocks.0.ln_1.weight": torch.zeros(16)}
    torch.save(openai, out / "openai-clip.pt")
    manifest["bad"] = {
        "code.pt": "posix.system",
        "missing.pt": "bert.encoder.layer.0.output.dense.weight",
        "extra.pt": "visual.transformer.resblocks.0.attn.gate",
        "openai-clip.pt": "not a Chinese-CLIP checkpoint",
    }


RELEASED = {
    # name: vision config, text tower (hidden, layers, intermediate)
    "ViT-B-16": (dict(embed_dim=512, image_resolution=224, vision_width=768, vision_patch_size=16), (768, 3072)),
    "ViT-L-14": (dict(embed_dim=768, image_resolution=224, vision_width=1024, vision_patch_size=14), (768, 3072)),
    "ViT-L-14-336": (dict(embed_dim=768, image_resolution=336, vision_width=1024, vision_patch_size=14), (768, 3072)),
    "ViT-H-14": (dict(embed_dim=1024, image_resolution=224, vision_width=1280, vision_patch_size=14, vision_head_width=80), (1024, 4096)),
}


def released(out, depth, full_vit_b):
    out.mkdir(parents=True, exist_ok=True)
    names = generated_images(out / "images")
    images = images_for(out, names, sample_images(1))
    pixels = {}
    manifest = {"texts": TEXTS, "images": [k for k, _ in images], "checkpoints": [], "bad": {}}
    runs = [(name, vision, text, depth) for name, (vision, text) in RELEASED.items()]
    if full_vit_b:
        runs.append(("ViT-B-16-full", RELEASED["ViT-B-16"][0], RELEASED["ViT-B-16"][1], 12))
    for i, (name, vision, (hidden, inter), layers) in enumerate(runs):
        config = dict(vision, vision_layers=layers, **text_tower(hidden, layers, inter))
        model = build(config, 10 + i)
        ref = reference(model, images, pixels)
        file = save(out / f"{name}.pt", {k: v.half() for k, v in model.state_dict().items()}, "module.", epoch=1, step=1, name=name)
        # The reference of an fp16 file: cn_clip's fp32 model of the same fp16 weights.
        model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
        ref = reference(model, images, pixels)
        manifest["checkpoints"].append(dict(ref, file=file, architecture=name))
        print(f"{name}: {os.path.getsize(out / file) >> 20} MB", file=sys.stderr)
    write(out, manifest, pixels)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--released", type=Path, help="write the released-width fixtures here instead")
    parser.add_argument("--depth", type=int, default=2, help="layers per tower for --released")
    parser.add_argument("--full-vit-b", action="store_true", help="with --released: ViT-B/16 at full size too")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.released:
        released(args.released, args.depth, args.full_vit_b)
    else:
        small(ROOT / "tests" / "fixtures" / "cn_clip")


if __name__ == "__main__":
    main()
