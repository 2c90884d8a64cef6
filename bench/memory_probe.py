"""``python -m bench.memory_probe '<spec json>'``: peak memory of one forward of one candidate, in a fresh process.

One warm-up forward runs first unless the spec says ``"warmup": false`` (``torch.compile`` compiles there); the
peak of the measured forward is reported.
glibc's mmap threshold is pinned (see ``bench.harness.peak_memory_subprocess``) so freed tensors go back to the
OS and the second forward's peak is its own, not hidden by the allocator's cache (nor by pvtv2_fast's CPU block
cache, emptied before the measured forward).
"""

import json
import sys

import torch

from bench.candidates import build
from bench.harness import measure_forward_peak


def main() -> None:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    run, _ = build(spec)
    if spec.get("warmup", True):
        with torch.inference_mode():
            run()
    print(f"PEAK_BYTES {measure_forward_peak(run, spec.get('device', 'cpu')):.0f}")


if __name__ == "__main__":
    main()
