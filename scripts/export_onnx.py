"""Exports a Chinese-CLIP model directory (HF layout) to ONNX, one file per tower, fp32 and dynamic int8.

The peers in the benchmarks run these files: onnxruntime-web in the browser (benches/browser-peers.mjs) and
ONNX Runtime natively. The towers compute exactly what tuwen computes: text = projected last-layer [CLS],
image = projected post-LN [CLS].

    python3 -m venv .venv && .venv/bin/pip install torch transformers onnx onnxscript onnxruntime
    .venv/bin/python scripts/export_onnx.py models/random-chinese-clip-vit-base-patch16 out/onnx
"""
import sys
from pathlib import Path

import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from transformers import ChineseCLIPModel

CONTEXT = 52


class Text(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        hidden = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        e = self.model.text_projection(hidden[:, 0, :])
        return e / e.norm(dim=-1, keepdim=True)


class Vision(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        pooled = self.model.vision_model(pixel_values=pixel_values).pooler_output
        e = self.model.visual_projection(pooled)
        return e / e.norm(dim=-1, keepdim=True)


def main(model_dir: str, out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = ChineseCLIPModel.from_pretrained(model_dir).eval()
    size = model.config.vision_config.image_size
    towers = {
        "text": (Text(model), (torch.ones(1, CONTEXT, dtype=torch.long), torch.ones(1, CONTEXT, dtype=torch.long)),
                 ["input_ids", "attention_mask"]),
        "vision": (Vision(model), (torch.zeros(1, 3, size, size),), ["pixel_values"]),
    }
    for name, (module, inputs, names) in towers.items():
        fp32 = out_dir / f"{name}.onnx"
        # Texts are padded to the longest of their batch (as tuwen does), so the length is dynamic too.
        axes = {n: ({0: "batch", 1: "tokens"} if name == "text" else {0: "batch"}) for n in names} | {"embedding": {0: "batch"}}
        with torch.no_grad():
            torch.onnx.export(module, inputs, fp32, input_names=names, output_names=["embedding"],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        int8 = out_dir / f"{name}-int8.onnx"
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        print(f"{fp32} ({fp32.stat().st_size / 1e6:.1f} MB), {int8} ({int8.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
