"""``python -m bench.memory_probe '<spec json>'``: peak memory of one forward of one candidate, in a fresh process;
with ``"process": true`` in the spec, the whole process's resident memory instead (:func:`process_memory`).

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
from bench.harness import _rss_kib, measure_forward_peak


def main() -> None:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    if spec.get("process"):
        print("PROCESS_MB " + " ".join(f"{v:.0f}" for v in process_memory(spec)))
        return
    run, _ = build(spec)
    if spec.get("warmup", True):
        with torch.inference_mode():
            run()
    print(f"PEAK_BYTES {measure_forward_peak(run, spec.get('device', 'cpu')):.0f}")


def process_memory(spec: dict) -> tuple:
    """The whole process as a user runs it: resident MB once the candidate is built (the model loaded, nothing run),
    peak resident MB after ``spec["forwards"]`` forwards (compiles included), and the peak of the inference mode's
    compile process (0 when none ran; getrusage's children figure would count what a forked child inherits)."""
    run, _ = build(spec)
    loaded = _rss_kib("VmRSS") / 1024
    with torch.no_grad():
        for _ in range(spec.get("forwards", 3)):
            run()
    wrapper = getattr(run, "inference_model", None)
    signatures = wrapper.compiled_signatures if wrapper is not None else []  # none for the torch.compile engine
    child = max((s["compile_process_mb"] or 0.0 for s in signatures), default=0.0)
    return loaded, _rss_kib("VmHWM") / 1024, child


if __name__ == "__main__":
    main()
