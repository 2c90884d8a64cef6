"""Segment a corpus of images over many processes, GPUs or machines with ``torchrun`` + ``torch.distributed``.

    torchrun --nproc-per-node 4 -m pvtv2_fast.distributed IMAGES_OR_DIRS... --weights DIR --out DIR \\
        [--tile 1024 --stride 768 --tile-batch 2] [--output labels|logits|probs] [--fast]
    # several machines: torchrun --nnodes 2 --node-rank R --rdzv-endpoint HOST:PORT ... (same arguments)

Nothing beyond torch is needed (``torchrun`` ships with it; the process group is gloo on CPU, NCCL with GPUs,
each local rank on its own GPU). Every rank lists the same sorted inputs and takes every ``world_size``-th image
(rank r: images r, r + world, …), so each image is segmented and written by exactly one process; outputs are
written under a temporary name and renamed into place (:func:`pvtv2_fast.segmentation.segment_file`), so a
crash never leaves a partial file. A failed image (unreadable, too small, out of memory) is reported and the
rest go on; the exit status is 1 if any image failed. A rerun skips images whose outputs all exist
(``--overwrite`` to redo them), so rerunning after a crash finishes only what is missing. Rank 0 prints one
summary line per rank (written / skipped / failed) and the failures.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

import torch


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="torchrun ... -m pvtv2_fast.distributed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--weights", required=True, help="segmentation checkpoint folder, file or hub id")
    parser.add_argument("--out", required=True, help="output folder (shared by all ranks)")
    parser.add_argument("--tile", type=int, default=0, help="sliding-window tile size (0: whole image)")
    parser.add_argument("--stride", type=int, default=0, help="sliding-window stride (default 3/4 of the tile)")
    parser.add_argument("--tile-batch", type=int, default=1, help="sliding-window tiles per forward")
    parser.add_argument("--output", choices=["labels", "logits", "probs"], default="labels")
    parser.add_argument("--fast", action="store_true", help="use the fused kernels")
    parser.add_argument("--overwrite", action="store_true", help="redo images whose outputs exist")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads per process (default: the CPU count / processes on this machine)",
    )
    return parser.parse_args(argv)


def _setup() -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; joins the process group when launched by torchrun with several ranks."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def main(argv: Optional[List[str]] = None) -> int:
    import torch.distributed as dist

    from . import PvtV2ForSemanticSegmentation
    from .segmentation import collect_images, output_paths, segment_files

    args = parse_args(argv)
    rank, world, device = _setup()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // local_world))
    out = Path(args.out)
    paths = sorted(collect_images(args.inputs), key=str)
    mine = paths[rank::world]
    todo = [p for p in mine if args.overwrite or not all(q.exists() for q in output_paths(out, p.stem, args.output))]
    written: List[str] = []
    errors: List[str] = []
    if todo:
        try:
            model = PvtV2ForSemanticSegmentation.from_pretrained(args.weights, fast=args.fast, device=device)
        except (OSError, ValueError) as e:  # a rank that cannot load the model fails all its images, loudly
            errors = [f"{p}: cannot load the model ({e})" for p in todo]
        else:
            files, errors = segment_files(
                model,
                todo,
                out,
                mode="slide" if args.tile else "whole",
                tile=args.tile,
                stride=args.stride or args.tile * 3 // 4,
                output=args.output,
                tile_batch=args.tile_batch,
                progress=rank == 0,
            )
            written = sorted({str(f) for f in files})
    for message in errors:
        print(f"[rank {rank}] {message}", file=sys.stderr, flush=True)
    report = dict(
        rank=rank, images=len(mine), skipped=len(mine) - len(todo), failed=len(errors), files=written, errors=errors
    )
    reports = [report]
    if world > 1:
        reports = [None] * world
        dist.all_gather_object(reports, report)
    failed = sum(r["failed"] for r in reports)
    if rank == 0:
        for r in reports:
            print(
                f"rank {r['rank']}: {r['images']} images, {r['images'] - r['skipped'] - r['failed']} segmented "
                f"({len(r['files'])} files), {r['skipped']} skipped (done before), {r['failed']} failed"
            )
        print(f"total: {sum(r['images'] for r in reports)} images, {failed} failed; outputs in {out}")
    if world > 1:
        dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
