"""Command line: ``python -m pvtv2_fast info``, ``classify IMAGE... --weights DIR_OR_ID`` and
``segment IMAGE_OR_DIR... --weights DIR_OR_ID --out DIR [--tile 1024 --stride 768 --tile-batch N]
[--output labels|logits|probs] [--fast]``."""

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


def cmd_segment(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import PvtV2ForSemanticSegmentation
    from .checkpoint import CheckpointMismatchError
    from .segmentation import collect_images, segment_files

    try:
        model = PvtV2ForSemanticSegmentation.from_pretrained(args.weights, fast=args.fast)
    except CheckpointMismatchError as e:
        if any(k.startswith("decode_head.") for k in e.missing):
            raise ValueError(f"{args.weights} is not a semantic-segmentation checkpoint (it has no decode_head "
                             f"weights); pass a Segformer / PvtV2ForSemanticSegmentation checkpoint") from None
        raise
    paths = collect_images(args.inputs)
    if not paths:
        print("error: no images found", file=sys.stderr)
        return 2
    mode = "slide" if args.tile else "whole"
    written, errors = segment_files(model, paths, Path(args.out), mode=mode, tile=args.tile or 0,
                                    stride=args.stride or (args.tile or 0) * 3 // 4, output=args.output,
                                    tile_batch=args.tile_batch, progress=not args.no_progress)
    for message in errors:
        print(message, file=sys.stderr)
    print(f"wrote {len(written)} files to {args.out}")
    return 1 if errors else 0


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
    seg = sub.add_parser("segment", help="label and overlay PNGs for images or folders of images")
    seg.add_argument("inputs", nargs="+", help="image files and/or folders")
    seg.add_argument("--weights", required=True, help="segmentation checkpoint folder, file or hub id")
    seg.add_argument("--out", required=True, help="output folder")
    seg.add_argument("--tile", type=int, default=0, help="sliding-window tile size (0: whole image)")
    seg.add_argument("--stride", type=int, default=0, help="sliding-window stride (default 3/4 of the tile)")
    seg.add_argument("--output", choices=["labels", "logits", "probs"], default="labels",
                     help="labels: <name>_labels.png + <name>_overlay.png; logits / probs: <name>_<output>.npy "
                          "(num_labels, H, W) float32, streamed to disk")
    seg.add_argument("--tile-batch", type=int, default=1, help="sliding-window tiles per forward (one row of tiles)")
    seg.add_argument("--no-progress", action="store_true", help="no progress bars (over images, and over the "
                     "bands / tiles of images above 4 megapixels)")
    seg.add_argument("--fast", action="store_true", help="use the fused kernels")
    seg.set_defaults(func=cmd_segment)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
