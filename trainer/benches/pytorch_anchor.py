#!/usr/bin/env python3
"""PyTorch anchor for issue 19: per-image inference time of the four presets in PyTorch f32.

    python3 trainer/benches/pytorch_anchor.py [--rounds 15] [--batch 128]

Builds the presets' architectures exactly as `ArchSpec::preset` in trainer/src/nn/spec.rs
lists them (input 28x28x1, 10 classes; PyTorch's NCHW layout), with PyTorch's default random
initialisation (seed 0) and MNIST-shaped random inputs in [0, 1]. One thread
(`torch.set_num_threads(1)`), eval mode, `torch.inference_mode()`, eager execution (no
`torch.compile`, no TorchScript). For each preset it prints the per-image time at batch
`--batch` (one forward pass of the whole batch, divided by the batch size) and for a single
image: after a warm-up, each of `--rounds` rounds times enough forward passes to last about
0.1 s, and the figure is the median over rounds of the mean time per pass. Weights and
inputs being random changes no timing: these ops have no data-dependent paths.

Compare with `iocane_int8_batch/PRESET` and `iocane_int8/PRESET` of the same session's
`cargo bench --workspace --bench vs_tract` run (docs/RESULTS.md, session 9).
"""

import argparse
import statistics
import time

import torch
from torch import nn

# trainer/src/nn/spec.rs, `ArchSpec::preset` (classes = 10, input 28x28x1).
PRESETS = {
    "mlp": lambda: nn.Sequential(
        nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)
    ),
    "cnn-s": lambda: nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(7 * 7 * 16, 10),
    ),
    "cnn-m": lambda: nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 64, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    ),
    "dwcnn": lambda: nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.ReLU6(),
        nn.Conv2d(8, 16, 1),
        nn.ReLU6(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16),
        nn.ReLU6(),
        nn.Conv2d(16, 32, 1),
        nn.ReLU6(),
        nn.Flatten(),
        nn.Linear(7 * 7 * 32, 10),
    ),
}


def per_pass_seconds(model, x, rounds, warmup_s=0.3, round_s=0.1):
    """Median over `rounds` of the mean wall time of one `model(x)`, after `warmup_s` of runs."""
    end = time.perf_counter() + warmup_s
    calls = 0
    while time.perf_counter() < end:
        model(x)
        calls += 1
    per_call = warmup_s / max(calls, 1)
    reps = max(1, int(round_s / per_call))
    means = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x)
        means.append((time.perf_counter() - t0) / reps)
    return statistics.median(means)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}, mkldnn {torch.backends.mkldnn.is_available()}"
    )
    print(f"| preset | PyTorch f32, one image | PyTorch f32 batch {args.batch}, per image |")
    print("|---|---|---|")
    for name, build in PRESETS.items():
        model = build().eval()
        with torch.inference_mode():
            one = torch.rand(1, 1, 28, 28)
            batch = torch.rand(args.batch, 1, 28, 28)
            assert model(batch).shape == (args.batch, 10)
            t1 = per_pass_seconds(model, one, args.rounds)
            tb = per_pass_seconds(model, batch, args.rounds) / args.batch
        print(f"| `{name}` | {t1 * 1e6:.2f} us | {tb * 1e6:.2f} us |", flush=True)


if __name__ == "__main__":
    main()
