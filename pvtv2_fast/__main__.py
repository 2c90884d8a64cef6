"""Command line: ``python -m pvtv2_fast info``, ``classify IMAGE... --weights DIR_OR_ID`` and
``segment IMAGE_OR_DIR... --weights DIR_OR_ID --out DIR [--tile 1024 --stride 768 --tile-batch N]
[--output labels|logits|probs] [--fast]`` and
``export --weights DIR_OR_ID --out FILE.onnx [--task ...] [--check]`` (ONNX, dynamic batch, height and width).

Batches finish: an image that cannot be used (unreadable or truncated file, unsupported mode or value range,
more pixels than --max-pixels, smaller than the model's minimum input) is reported on stderr and skipped, the
others are processed, and a summary at the end lists every failed image with its reason.

Exit status: 0 every image done; 1 some images failed (the others were written); 2 usage error or an error
before any image (bad arguments, missing files, weights that do not load); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import torch

from .preprocessing import DEFAULT_MAX_PIXELS

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
# What one image may raise and still let the batch go on: bad files and values (OSError, ValueError — ImageError,
# the model's minimum-size check), and running out of memory on one large image (host or GPU).
_PER_IMAGE_ERRORS = (OSError, ValueError, MemoryError, torch.OutOfMemoryError)


def count_macs(model: torch.nn.Module, size: int = 224) -> float:
    """Multiply-accumulates of one forward at size×size (what the PVTv2 paper reports as "GFLOPs")."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, model.config.num_channels, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2


def _say(message: str) -> None:
    """A line on stderr that does not break a tqdm progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


class Batch:
    """Runs a batch image by image: ``with batch.image(path): ...`` reports and swallows a per-image failure
    (and prints the image's warnings once each), ``batch.finish()`` prints the summary and gives the exit status."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.failed: List[Tuple[str, str]] = []

    @contextlib.contextmanager
    def image(self, path: str | Path) -> Iterator[None]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                yield
            except _PER_IMAGE_ERRORS as e:
                reason = _reason(e)
                self.failed.append((str(path), reason))
                _say(f"{path}: skipped: {reason}")
        for message in dict.fromkeys(str(w.message) for w in caught):  # once each, in order
            _say(f"{path}: warning: {message}")

    def finish(self) -> int:
        if not self.failed:
            return EXIT_OK
        lines = [f"{len(self.failed)} of {self.total} images failed:"]
        lines += [f"  {path}: {reason}" for path, reason in self.failed]
        _say("\n".join(lines))
        return EXIT_SOME_FAILED


def _reason(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return f"no such file ({error.filename or error})"
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return f"out of memory ({error})" if str(error) else "out of memory"
    text = " ".join(str(error).split())  # one line, whatever the library's message looked like
    return text or type(error).__name__


def cmd_info(args: argparse.Namespace) -> int:
    from . import PvtV2Config, PvtV2ForImageClassification, min_input_size, preset_names, stage_sizes

    rows = [
        "| preset | params (M) | GFLOPs (MACs) @224² | stage maps @224² (C×H×W) | min input |",
        "|---|---|---|---|---|",
    ]
    for name in preset_names():
        config = PvtV2Config.from_preset(name, num_labels=1000)
        model = PvtV2ForImageClassification(config).eval()
        stages = ", ".join(f"{c}×{h}×{w}" for c, (h, w) in zip(config.hidden_sizes, stage_sizes(config, 224, 224)))
        rows.append(
            f"| {name} | {model.num_parameters() / 1e6:.2f} | {count_macs(model, 224) / 1e9:.2f} | "
            f"{stages} | {min_input_size(config)}² |"
        )
    print("\n".join(rows))
    return EXIT_OK


def cmd_classify(args: argparse.Namespace) -> int:
    from . import PvtV2ForImageClassification
    from .preprocessing import PvtV2ImageProcessor, load_image

    model = PvtV2ForImageClassification.from_pretrained(args.weights, fast=args.fast)
    processor = (
        PvtV2ImageProcessor.from_pretrained(args.weights)
        if not str(args.weights).endswith((".pth", ".pt", ".bin", ".safetensors"))
        else PvtV2ImageProcessor()
    )
    batch = Batch(len(args.images))
    for path in args.images:
        with batch.image(path):
            image = load_image(path, max_pixels=args.max_pixels)
            with torch.no_grad():
                logits = model(processor(image)["pixel_values"]).logits[0]
            probs = logits.softmax(-1)
            top = probs.topk(min(args.top, probs.numel()))
            print(path)
            for p, i in zip(top.values.tolist(), top.indices.tolist()):
                print(f"  {p:7.4f}  {model.config.id2label.get(i, str(i))}")
    return batch.finish()


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import PvtV2ForSemanticSegmentation, segmentation
    from .checkpoint import CheckpointMismatchError

    try:
        model = PvtV2ForSemanticSegmentation.from_pretrained(args.weights, fast=args.fast)
    except CheckpointMismatchError as e:
        if any(k.startswith("decode_head.") for k in e.missing):
            raise ValueError(
                f"{args.weights} is not a semantic-segmentation checkpoint (it has no decode_head "
                f"weights); pass a Segformer / PvtV2ForSemanticSegmentation checkpoint"
            ) from None
        raise
    paths = segmentation.collect_images(args.inputs)
    if not paths:
        print("error: no images found", file=sys.stderr)
        return EXIT_ERROR
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # an unusable --out fails here, before any image (exit 2)
    mode = "slide" if args.tile else "whole"
    tile = args.tile or 0
    stride = args.stride or max(1, tile * 3 // 4)
    written: List[Path] = []
    stems = {}  # output stem → the input that used it: two inputs named alike must not overwrite each other
    batch = Batch(len(paths))
    for path in tqdm(paths, desc="segment", unit="image", disable=len(paths) < 2 or args.no_progress):
        with batch.image(path):
            if path.stem in stems:
                raise ValueError(
                    f"its outputs {path.stem}_* would overwrite those of {stems[path.stem]}; "
                    f"rename one of them or segment them into different --out folders"
                )
            stems[path.stem] = path
            written += segmentation.segment_file(
                model,
                path,
                out,
                mode,
                args.output,
                tile,
                stride,
                args.tile_batch,
                progress=not args.no_progress,
                max_pixels=args.max_pixels,
            )
    print(f"wrote {len(written)} files to {args.out}")
    return batch.finish()


EXPORT_TASKS = {
    "classification": "PvtV2ForImageClassification",
    "segmentation": "PvtV2ForSemanticSegmentation",
    "backbone": "PvtV2Backbone",
    "base": "PvtV2Model",
}


def cmd_export(args: argparse.Namespace) -> int:
    import pvtv2_fast

    from .export import check_onnx, export_onnx

    model = getattr(pvtv2_fast, EXPORT_TASKS[args.task]).from_pretrained(args.weights)
    path = export_onnx(
        model,
        args.out,
        height=args.height,
        width=args.width,
        dynamic=not args.static,
        opset=args.opset,
        dynamo=args.dynamo,
    )
    shape = "fixed" if args.static else "dynamic batch, height and width"
    print(f"wrote {path} ({EXPORT_TASKS[args.task]}, {shape}, example {args.height}×{args.width})")
    if args.check:
        sizes = [(args.height, args.width)] if args.static else [(args.height, args.width), (97, 131), (61, 45)]
        err = check_onnx(path, model, sizes=sizes)
        print(f"ONNX Runtime vs PyTorch at {sizes}: max abs difference {err:.2e}")
        if err > args.tolerance:
            print(f"error: difference above {args.tolerance}", file=sys.stderr)
            return EXIT_SOME_FAILED
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- argument parsing
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _pixel_limit(text: str) -> Optional[int]:
    """``--max-pixels``: a pixel count (``300000000``, ``3e8``); 0 means no limit."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels (e.g. 3e8; 0: no limit), got {text!r}") from None
    if not (0 <= value < float("inf") and value == int(value)):  # NaN fails the comparison too
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels ≥ 0 (0: no limit), got {text!r}")
    return int(value) or None


def _add_max_pixels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-pixels",
        type=_pixel_limit,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"skip (and report) images with more than N pixels; default {DEFAULT_MAX_PIXELS} "
        f"(16384², 1.5× the 179 Mpx at which PIL refuses images); 0: no limit",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pvtv2_fast", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="presets table: parameters, GFLOPs at 224², stage shapes")
    info.set_defaults(func=cmd_info)
    classify = sub.add_parser("classify", help="top-k labels for images")
    classify.add_argument("images", nargs="+")
    classify.add_argument("--weights", required=True, help="checkpoint folder, file or hub id")
    classify.add_argument("--top", type=_positive_int, default=5, help="how many labels to print (default 5)")
    classify.add_argument("--fast", action="store_true", help="use the fused kernels")
    _add_max_pixels(classify)
    classify.set_defaults(func=cmd_classify)
    seg = sub.add_parser("segment", help="label and overlay PNGs for images or folders of images")
    seg.add_argument("inputs", nargs="+", help="image files and/or folders")
    seg.add_argument("--weights", required=True, help="segmentation checkpoint folder, file or hub id")
    seg.add_argument("--out", required=True, help="output folder")
    seg.add_argument(
        "--tile",
        type=_positive_int,
        default=None,
        help="sliding-window tile size in pixels (default: the whole image in one forward)",
    )
    seg.add_argument(
        "--stride",
        type=_positive_int,
        default=None,
        help="sliding-window stride, at most --tile (default 3/4 of the tile)",
    )
    seg.add_argument(
        "--output",
        choices=["labels", "logits", "probs"],
        default="labels",
        help="labels: <name>_labels.png + <name>_overlay.png; logits / probs: <name>_<output>.npy "
        "(num_labels, H, W) float32, streamed to disk",
    )
    seg.add_argument(
        "--tile-batch", type=_positive_int, default=1, help="sliding-window tiles per forward (one row of tiles)"
    )
    seg.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (over images, and over the bands / tiles of images above 4 megapixels)",
    )
    seg.add_argument("--fast", action="store_true", help="use the fused kernels")
    _add_max_pixels(seg)
    seg.set_defaults(func=cmd_segment)
    exp = sub.add_parser("export", help="ONNX file with dynamic batch, height and width")
    exp.add_argument("--weights", required=True, help="checkpoint folder, file or hub id")
    exp.add_argument("--out", required=True, help="output .onnx file")
    exp.add_argument("--task", choices=list(EXPORT_TASKS), default="classification")
    exp.add_argument("--height", type=_positive_int, default=224, help="example input height")
    exp.add_argument("--width", type=_positive_int, default=224, help="example input width")
    exp.add_argument("--static", action="store_true", help="fix batch, height and width to the example's")
    exp.add_argument("--opset", type=_positive_int, default=None)
    exp.add_argument("--dynamo", action="store_true", help="torch.export-based exporter (needs onnxscript)")
    exp.add_argument("--check", action="store_true", help="compare with PyTorch in ONNX Runtime at odd sizes")
    exp.add_argument("--tolerance", type=float, default=1e-4)
    exp.set_defaults(func=cmd_export)
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks argparse cannot express; each failure is a usage error (exit 2) before any model is loaded."""
    if args.command == "segment":
        if args.stride is not None and args.tile is None:
            parser.error("segment: --stride needs --tile (without it the whole image is one forward)")
        if args.stride is not None and args.stride > args.tile:
            parser.error(
                f"segment: --stride ({args.stride}) must be at most --tile ({args.tile}): "
                f"a larger stride leaves pixels no tile covers"
            )
    inputs = {"classify": "images", "segment": "inputs"}.get(args.command)
    if inputs:
        missing = [p for p in getattr(args, inputs) if not Path(p).exists()]
        if missing:
            parser.error(f"{args.command}: no such file or folder: {', '.join(missing)}")


def main(argv: Optional[List[str]] = None) -> int:
    from PIL import Image

    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    # PIL's decompression-bomb guard is process-wide: the CLI owns the process, so it lifts the guard and applies
    # --max-pixels (checked from the header, before decoding) instead; restored for in-process callers.
    saved_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return args.func(args)
    except (OSError, ValueError) as e:  # library errors with clear messages: CheckpointError, FileNotFoundError, ...
        print(f"error: {_reason(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit


if __name__ == "__main__":
    sys.exit(main())
