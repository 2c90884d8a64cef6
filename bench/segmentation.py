"""Segmentation end to end vs resolution: extra peak memory and time of image → labels ``(H, W)``.

Candidates (Segformer configs, 150 labels, random weights, fp32, batch 1, whole-image inference):

* ``labels``: this library, ``fast=True``, ``segment(model, x, output="labels")`` (folded decode head with the fused
  ``upsample_accumulate``, streamed bands through the fused ``upsample_argmax``);
* ``unstreamed``: the same fast model through :func:`pvtv2_fast.segmentation.segment_reference` (unfolded head,
  full-size logits) + ``argmax`` — the path before streaming;
* ``transformers``: ``SegformerForSemanticSegmentation`` + ``F.interpolate`` + ``argmax`` (up to 2048²: its eager
  N×M attention needs ~64 GB at 4096²);
* ``backbone``: the ``fast=True`` encoder alone (the floor the whole path is compared with).

One fresh process per point (``--child``): the extra peak resident memory of the first call (VmHWM reset just
before it, glibc's mmap threshold pinned so freed tensors return to the OS), and the median time over the calls
(3 below 2048², 2 at 2048², 1 above). Written as Markdown + a memory / time vs pixels plot.

    python -m bench.segmentation [--points b0:512,1024,2048,4096,8192 b2:1024,2048,4096] [--impls ...] [--out PATH]
        [--add]   # measure some points again / more points, keeping the others of the report at --out
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.harness import (
    RESULTS,
    FreshProcessTimeout,
    machine_line,
    markdown_table,
    measure_forward_peak,
    run_fresh,
    write_markdown,
)

IMPLS = ["labels", "unstreamed", "transformers", "backbone"]
MAX_SIZE = {"transformers": 2048, "unstreamed": 2048}
# MiT encoders (Segformer): mlp ratio 4 in every stage, decoder width D.
SEGFORMER = {
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
}
NUM_LABELS = 150
DEFAULT_POINTS = ["b0:512,1024,2048,4096,8192", "b2:1024,2048,4096"]


def _build(impl: str, preset: str, size: int):
    """``(thunk image → labels, input)`` for one candidate in this process."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    cfg = dict(SEGFORMER[preset], num_labels=NUM_LABELS)
    if impl == "transformers":
        import transformers

        model = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(**cfg)).eval()

        def run():
            logits = model(pixel_values=x).logits
            return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False).argmax(1)

        return run
    from pvtv2_fast import PvtV2Config, PvtV2ForSemanticSegmentation
    from pvtv2_fast.segmentation import segment, segment_reference

    config = PvtV2Config(mlp_ratios=[4, 4, 4, 4], layer_norm_eps=1e-5, **cfg)
    model = PvtV2ForSemanticSegmentation(config, fast=True).eval()
    if impl == "labels":
        return lambda: segment(model, x, output="labels")
    if impl == "unstreamed":
        return lambda: segment_reference(model, x).argmax(1)
    if impl == "backbone":
        return lambda: model.pvt_v2(x, output_hidden_states=True)
    raise ValueError(f"unknown impl {impl!r}")


def child(spec: dict) -> None:
    run = _build(spec["impl"], spec["preset"], spec["size"])
    size = spec["size"]
    calls = 3 if size < 2048 else 2 if size == 2048 else 1
    times = []
    start = time.perf_counter()
    peak = measure_forward_peak(run)
    times.append(time.perf_counter() - start)
    for _ in range(calls - 1):
        start = time.perf_counter()
        with torch.inference_mode():
            run()
        times.append(time.perf_counter() - start)
    print("RESULT " + json.dumps(dict(peak=peak, seconds=statistics.median(times))))


def measure(spec: dict, timeout: float = 3600) -> dict:
    """One point in a fresh process: ``{"peak": bytes, "seconds": median}`` (nan on failure or timeout)."""
    nan = dict(peak=float("nan"), seconds=float("nan"))
    try:
        value = run_fresh(
            ["bench.segmentation", "--child", json.dumps(spec)], "RESULT ", timeout, f"segmentation probe {spec}"
        )
    except FreshProcessTimeout as e:
        sys.stderr.write(f"{e}\n")
        return nan
    return nan if value is None else json.loads(value)


def parse_points(items):
    """``["b0:512,2048", ...]`` → ``[("b0", 512), ("b0", 2048), ...]``."""
    points = []
    for item in items:
        preset, _, sizes = item.partition(":")
        if preset not in SEGFORMER or not sizes:
            raise SystemExit(f"point {item!r}: expected PRESET:SIZE[,SIZE...] with PRESET in {list(SEGFORMER)}")
        points += [(preset, int(s)) for s in sizes.split(",")]
    return points


def run(points, out: Path, impls=IMPLS, timeout: float = 3600, add: bool = False) -> str:
    """Measure every (preset, size, impl) point in a fresh process and write the report. ``add``: keep the points
    of an earlier report at ``out`` (its ``.json``) that this run does not measure."""
    from tqdm import tqdm

    results = load(out) if add else {}
    todo = [(p, s, i) for p, s in points for i in impls if s <= MAX_SIZE.get(i, 10**9)]
    for preset, size, impl in tqdm(todo, desc="segmentation vs resolution", unit="run"):
        results[(preset, size, impl)] = measure(dict(impl=impl, preset=preset, size=size), timeout)
    return report(results, out)


def load(out: Path) -> dict:
    path = out.with_suffix(".json")
    if not path.exists():
        return {}
    return {
        (r["preset"], r["size"], r["impl"]): dict(peak=r["peak"], seconds=r["seconds"])
        for r in json.loads(path.read_text())
    }


def report(results: dict, out: Path) -> str:
    """``{(preset, size, impl): {"peak", "seconds"}}`` → ``out``.md / .png / .json; returns the Markdown."""
    order = {p: i for i, p in enumerate(SEGFORMER)}
    points = sorted({(p, s) for p, s, _ in results}, key=lambda ps: (order[ps[0]], ps[1]))
    impls = [i for i in IMPLS if any(k[2] == i for k in results)]
    rows = []
    for preset, size in points:
        theirs = results.get((preset, size, "transformers"), {}).get("seconds", float("nan"))
        for impl in impls:
            if (preset, size, impl) in results:
                r = results[(preset, size, impl)]
                rows.append([preset, f"{size}²", impl, r["peak"] / 2**30, r["seconds"], theirs / r["seconds"]])
    spec = " ".join(f"{p}:{','.join(str(s) for q, s in points if q == p)}" for p in dict.fromkeys(q for q, _ in points))
    text = (
        f"# Segmentation end to end vs resolution (CPU, fp32, batch 1, {NUM_LABELS} labels, whole image)\n\n"
        f"Machine: {machine_line()}. Extra peak: what image → labels adds to the resident set (fresh process "
        f"per point, first call). Time: median of 3 calls below 2048², 2 at 2048², 1 above. `labels` = "
        f'`segment(fast model, x, output="labels")`; `unstreamed` = unfolded head + full-size logits + argmax '
        f"on the same fast encoder; `transformers` = SegformerForSemanticSegmentation + interpolate + argmax "
        f"(≤ 2048²); `backbone` = the fast encoder alone. Speed-up = transformers' time / this row's.\n"
        f"Reproduce: `python -m bench.segmentation --points {spec}`\n\n"
        + markdown_table(["Segformer", "input", "path", "extra peak GB", "seconds", "speed-up vs transformers"], rows)
        + "\n"
    )
    write_markdown(out, text)
    out.with_suffix(".json").write_text(
        json.dumps([dict(preset=p, size=s, impl=i, **r) for (p, s, i), r in sorted(results.items())], indent=1)
    )
    plot(results, points, impls, out.with_suffix(".png"))
    return text


def plot(results, points, impls, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(dict.fromkeys(p for p, _ in points))
    fig, axes = plt.subplots(2, len(presets), figsize=(6 * len(presets), 8), squeeze=False)
    for col, preset in enumerate(presets):
        sizes = [s for p, s in points if p == preset]
        for impl in impls:
            pts = [
                (s * s / 1e6, results[(preset, s, impl)])
                for s in sizes
                if results.get((preset, s, impl), {}).get("peak", float("nan")) > 0
            ]  # nan: failed or timed out
            if not pts:
                continue
            axes[0][col].plot([p for p, _ in pts], [r["peak"] / 2**30 for _, r in pts], marker="o", label=impl)
            axes[1][col].plot([p for p, _ in pts], [r["seconds"] for _, r in pts], marker="o", label=impl)
        axes[0][col].set_ylabel("extra peak memory (GiB)")
        axes[1][col].set_ylabel("seconds")
        axes[0][col].set_title(f"Segformer-{preset}: image → labels")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xlabel("megapixels")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", nargs="+", default=DEFAULT_POINTS, help="PRESET:SIZE[,SIZE...] (square inputs)")
    parser.add_argument("--impls", nargs="+", default=IMPLS, choices=IMPLS)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per point")
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_segmentation")
    parser.add_argument("--add", action="store_true", help="keep the earlier report's other points (its .json)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    print(run(parse_points(args.points), args.out, args.impls, args.timeout, args.add))


if __name__ == "__main__":
    main()
