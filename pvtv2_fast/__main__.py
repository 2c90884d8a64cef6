"""Command line: ``python -m pvtv2_fast info``, ``classify IMAGE... --weights DIR_OR_ID``,
``segment IMAGE_OR_DIR... --weights DIR_OR_ID --out DIR [--tile 1024 --stride 768] [--fast]`` and
``export --weights DIR_OR_ID --out FILE.onnx [--task ...] [--check]``."""

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
                                    stride=args.stride or (args.tile or 0) * 3 // 4)
    for message in errors:
        print(message, file=sys.stderr)
    print(f"wrote {len(written)} files to {args.out}")
    return 1 if errors else 0


EXPORT_TASKS = {"classification": "PvtV2ForImageClassification", "segmentation": "PvtV2ForSemanticSegmentation",
                "backbone": "PvtV2Backbone", "base": "PvtV2Model"}


def cmd_export(args: argparse.Namespace) -> int:
    import pvtv2_fast

    from .export import check_onnx, export_onnx

    model = getattr(pvtv2_fast, EXPORT_TASKS[args.task]).from_pretrained(args.weights)
    path = export_onnx(model, args.out, height=args.height, width=args.width, dynamic=not args.static,
                       opset=args.opset, dynamo=args.dynamo)
    shape = "fixed" if args.static else "dynamic batch, height and width"
    print(f"wrote {path} ({EXPORT_TASKS[args.task]}, {shape}, example {args.height}×{args.width})")
    if args.check:
        sizes = [(args.height, args.width)] if args.static else [(args.height, args.width), (97, 131), (61, 45)]
        err = check_onnx(path, model, sizes=sizes)
        print(f"ONNX Runtime vs PyTorch at {sizes}: max abs difference {err:.2e}")
        if err > args.tolerance:
            print(f"error: difference above {args.tolerance}", file=sys.stderr)
            return 1
    return 0


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
    seg.add_argument("--fast", action="store_true", help="use the fused kernels")
    seg.set_defaults(func=cmd_segment)
    exp = sub.add_parser("export", help="ONNX file with dynamic batch, height and width")
    exp.add_argument("--weights", required=True, help="checkpoint folder, file or hub id")
    exp.add_argument("--out", required=True, help="output .onnx file")
    exp.add_argument("--task", choices=list(EXPORT_TASKS), default="classification")
    exp.add_argument("--height", type=int, default=224, help="example input height")
    exp.add_argument("--width", type=int, default=224, help="example input width")
    exp.add_argument("--static", action="store_true", help="fix batch, height and width to the example's")
    exp.add_argument("--opset", type=int, default=None)
    exp.add_argument("--dynamo", action="store_true", help="torch.export-based exporter (needs onnxscript)")
    exp.add_argument("--check", action="store_true", help="compare with PyTorch in ONNX Runtime at odd sizes")
    exp.add_argument("--tolerance", type=float, default=1e-4)
    exp.set_defaults(func=cmd_export)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
