"""Command line: ``python -m pvtv2_fast info`` and ``python -m pvtv2_fast classify IMAGE... --weights DIR_OR_ID``."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import torch


def count_macs(model: torch.nn.Module, size: int = 224) -> float:
    """Multiply-accumulates of one forward at size×size (what the PVTv2 paper reports as "GFLOPs")."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, model.config.num_channels, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2


def cmd_info(args: argparse.Namespace) -> int:
    from . import PvtV2Config, PvtV2ForImageClassification, min_input_size, preset_names, stage_sizes

    rows = ["| preset | params (M) | GFLOPs (MACs) @224² | stage maps @224² (C×H×W) | min input |", "|---|---|---|---|---|"]
    for name in preset_names():
        config = PvtV2Config.from_preset(name, num_labels=1000)
        model = PvtV2ForImageClassification(config).eval()
        stages = ", ".join(f"{c}×{h}×{w}" for c, (h, w) in zip(config.hidden_sizes, stage_sizes(config, 224, 224)))
        rows.append(f"| {name} | {model.num_parameters() / 1e6:.2f} | {count_macs(model, 224) / 1e9:.2f} | "
                    f"{stages} | {min_input_size(config)}² |")
    print("\n".join(rows))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError

    from . import PvtV2ForImageClassification
    from .preprocessing import PvtV2ImageProcessor

    model = PvtV2ForImageClassification.from_pretrained(args.weights, fast=args.fast)
    processor = PvtV2ImageProcessor.from_pretrained(args.weights) if not str(args.weights).endswith(
        (".pth", ".pt", ".bin", ".safetensors")) else PvtV2ImageProcessor()
    status = 0
    for path in args.images:
        try:
            image = Image.open(path)
            image.load()
        except (OSError, UnidentifiedImageError) as e:
            print(f"{path}: cannot read image ({e})", file=sys.stderr)
            status = 1
            continue
        with torch.no_grad():
            logits = model(processor(image)["pixel_values"]).logits[0]
        probs = logits.softmax(-1)
        top = probs.topk(min(args.top, probs.numel()))
        print(path)
        for p, i in zip(top.values.tolist(), top.indices.tolist()):
            print(f"  {p:7.4f}  {model.config.id2label.get(i, str(i))}")
    return status


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pvtv2_fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="presets table: parameters, GFLOPs at 224², stage shapes")
    info.set_defaults(func=cmd_info)
    classify = sub.add_parser("classify", help="top-k labels for images")
    classify.add_argument("images", nargs="+")
    classify.add_argument("--weights", required=True, help="checkpoint folder, file or hub id")
    classify.add_argument("--top", type=int, default=5)
    classify.add_argument("--fast", action="store_true", help="use the fused kernels")
    classify.set_defaults(func=cmd_classify)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
