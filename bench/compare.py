#!/usr/bin/env python3
"""Time recur against PyTorch (CPU) on the same shapes, side by side.

For each shape, cell and thread count, times a training step (forward over the whole sequence
plus backpropagation through time of loss = sum(outputs), every weight gradient, f32) as the
median of --steps steps after 3 warm-up steps, in PyTorch and with `recur bench` in turn,
--rounds times, and prints the median times and the median of the rounds' ratios PyTorch time /
recur time (above 1: recur is faster), with the share of the machine's CPU time a hypervisor
took for other guests while the row ran (from /proc/stat; on a shared virtual machine the main
cause of run-to-run drift, and of a second thread that brings little). Then the single-step
inference latency at B=1 at each thread count (PyTorch's LSTMCell/GRUCell/RNNCell under no_grad
against `recur bench --step-latency`).

With --precision bf16 the training steps run with bf16 products: recur's `--precision bf16`
against PyTorch under `torch.autocast("cpu", dtype=torch.bfloat16)`, and recur's own f32 step
in the same rounds, so the table shows both recur's gain over its f32 step and the ratio to
PyTorch in bf16. recur needs a CPU with AVX512_BF16 for it (or RECUR_BF16_KERNEL=portable in
the environment, whose portable kernel gives the same values slowly: for trying, not timing).

Usage:
    cargo build --release
    python3 bench/compare.py [--threads 1 2] [--shapes tiny-batch small ...] [--steps 7]
    python3 bench/compare.py --precision bf16 --shapes medium large --no-latency

PyTorch is optional: without it, only recur's times are printed. To install it:
    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch numpy
and run this script with /tmp/tv/bin/python.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

SHAPES = {
    # name: (B, T, I, H)
    "tiny-batch": (1, 100, 128, 256),
    "small": (32, 64, 64, 128),
    "medium": (64, 100, 256, 256),
    "large": (64, 50, 512, 512),
}
CELLS = ["lstm", "gru", "rnn"]
LATENCY_HIDDEN = [128, 256, 512]
LATENCY_INPUT = 64


def load_torch():
    try:
        import torch  # noqa: F401

        return torch
    except ImportError:
        print(
            "PyTorch is not importable; printing recur's times only. To compare, install it:\n"
            "    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch numpy\n"
            "and run this script with /tmp/tv/bin/python.",
            file=sys.stderr,
        )
        return None


def torch_step_ms(torch, cell, b, t, i, h, threads, steps, precision="f32"):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    model = cls(i, h)
    x = torch.randn(t, b, i)
    times = []
    for k in range(3 + steps):
        t0 = time.perf_counter()
        if precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y, _ = model(x)
                loss = y.float().sum()
        else:
            y, _ = model(x)
            loss = y.sum()
        loss.backward()
        dt = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        if k >= 3:
            times.append(dt)
    return statistics.median(times) * 1e3


def torch_latency_us(torch, cell, h, threads, reps=200):
    torch.set_num_threads(threads)
    cls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[cell]
    m = cls(LATENCY_INPUT, h)
    x = torch.randn(1, LATENCY_INPUT)
    hx = torch.zeros(1, h)
    state = (hx, torch.zeros(1, h)) if cell == "lstm" else hx
    samples = []
    with torch.no_grad():
        for k in range(23):
            t0 = time.perf_counter()
            for _ in range(reps):
                out = m(x, state)
            dt = (time.perf_counter() - t0) / reps
            if k >= 3:
                samples.append(dt)
    del out
    return statistics.median(samples) * 1e6


def settle():
    """Lets PyTorch's OpenMP threads go idle before recur runs: after its last parallel region
    each spins for a while (here up to some milliseconds), and on a machine with two cores one
    spinning thread slows a recur run on two threads (a B=1 step on two threads right after a
    two-thread PyTorch step: 2.1 us, after a pause of 20 ms or more: 1.4 to 1.5 us)."""
    time.sleep(0.1)


def recur_run(binary, args):
    res = subprocess.run([binary, "bench"] + args, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"recur bench {' '.join(args)} failed: {res.stderr.strip()}")
    last = res.stdout.strip().splitlines()[-1]
    return dict(kv.split("=") for kv in last.split())


def recur_cpu(binary):
    """The `cpu:` line recur prints above its figures: the CPU's model, vendor, family and
    model numbers, vector extensions and caches, and the register tiles of this build."""
    res = subprocess.run([binary, "bench", "--sgemm-rate", "16", "--steps", "5"],
                         capture_output=True, text=True)
    lines = [l for l in res.stdout.splitlines() if l.startswith("cpu: ")]
    return lines[0][len("cpu: "):] if lines else "unknown"


def peaks(binary):
    """One core's peak rates through `recur bench --fma-peak` (the best of 200 short trials),
    the ceiling of every rate below, measured in the same run: a line for f32's fused
    multiply-adds, and for the bf16 products of `vdpbf16ps` where the CPU has AVX512_BF16."""
    v = recur_run(binary, ["--fma-peak", "--steps", "200"])
    line = f"f32 {float(v['fma_peak_gflops']):.1f} GFLOP/s"
    if "bf16_peak_gflops" in v:
        line += f", bf16 (vdpbf16ps) {float(v['bf16_peak_gflops']):.1f} GFLOP/s"
    return line


def sgemm_gflops(binary):
    """matrixmultiply's sgemm on 1024^3 at one thread, through `recur bench --sgemm-rate`."""
    return float(recur_run(binary, ["--sgemm-rate", "1024", "--steps", "9"])["sgemm_gflops"])


def recur_step_ms(binary, cell, b, t, i, h, threads, steps, precision="f32"):
    out = recur_run(
        binary,
        ["--cell", cell, "--batch", str(b), "--seq-len", str(t), "--input", str(i),
         "--hidden", str(h), "--threads", str(threads), "--steps", str(steps),
         "--precision", precision],
    )
    return float(out["ms_per_step"])


def recur_latency_us(binary, cell, h, threads):
    out = recur_run(
        binary,
        ["--cell", cell, "--step-latency", "--input", str(LATENCY_INPUT), "--hidden", str(h),
         "--threads", str(threads)],
    )
    return float(out["us_per_step"])


def cpu_ticks():
    """The machine's CPU time counters (all CPUs) from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def stolen(before, after):
    """The share of the CPU time between two readings of cpu_ticks() that a hypervisor gave to
    other machines ("steal"), as a percentage string; "-" where it is not known. On a shared
    virtual machine this is what moves the figures most from one run to the next."""
    if before is None or after is None or len(before) < 8:
        return "-"
    d = [y - x for x, y in zip(before, after)]
    return f"{100 * d[7] / sum(d):.0f}%" if sum(d) > 0 else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recur", default=os.path.join("target", "release", "recur"),
                    help="path to the recur binary (default target/release/recur)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--cells", nargs="+", default=CELLS, choices=CELLS)
    ap.add_argument("--steps", type=int, default=7, help="timed steps (at least 5)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="times each comparison is repeated, PyTorch and recur in turn; the "
                         "ratio printed is the median of the rounds' ratios (default 3)")
    ap.add_argument("--no-latency", action="store_true", help="skip the single-step latency")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                    help="the training steps' products: f32, or bf16 against PyTorch's autocast "
                         "and recur's own f32 step (see above)")
    ap.add_argument("--no-training", action="store_true",
                    help="skip the training steps (time only the single-step latency)")
    a = ap.parse_args()
    if a.no_training:
        a.shapes = []
    if a.steps < 5:
        raise SystemExit("--steps must be at least 5")
    if a.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if not os.path.exists(a.recur):
        raise SystemExit(f"{a.recur} not found: run `cargo build --release` first")
    torch = load_torch()
    if torch is not None:
        print(f"# PyTorch {torch.__version__}", flush=True)
    print(f"# CPU: {recur_cpu(a.recur)}", flush=True)
    print(f"# one core's peak before the runs: {peaks(a.recur)}", flush=True)

    bf16 = a.precision == "bf16"
    if a.shapes and bf16:
        print("| shape | cell | threads | PyTorch bf16 ms | recur f32 ms | recur bf16 ms "
              "| recur f32 / bf16 | PyTorch bf16 / recur bf16 | CPU stolen |")
        print("|---|---|---|---|---|---|---|---|---|", flush=True)
    elif a.shapes:
        print("| shape | cell | threads | PyTorch ms | recur ms | PyTorch / recur | CPU stolen |")
        print("|---|---|---|---|---|---|---|", flush=True)
    large_gflops = {}
    for shape in a.shapes:
        b, t, i, h = SHAPES[shape]
        for cell in a.cells:
            for th in a.threads:
                # PyTorch and recur in turn, round after round: a drift in the machine's speed
                # then hits both sides of a round alike, and the median ratio discounts the rest.
                # On the large shape at one thread each round also times the reference sgemm
                # right after recur, so the share of it is taken within a round too.
                pts, rcs, sgs, r32 = [], [], [], []
                ticks = cpu_ticks()
                for _ in range(a.rounds):
                    if torch and pts is not None:
                        try:
                            pts.append(torch_step_ms(torch, cell, b, t, i, h, th, a.steps,
                                                     a.precision))
                        except RuntimeError as e:
                            # oneDNN's bf16 RNN primitives need a CPU with bf16 support.
                            print(f"# PyTorch {cell} in {a.precision} failed: "
                                  f"{str(e).splitlines()[0]}", file=sys.stderr)
                            pts = None
                        settle()
                    rcs.append(recur_step_ms(a.recur, cell, b, t, i, h, th, a.steps,
                                             a.precision))
                    if bf16:
                        r32.append(recur_step_ms(a.recur, cell, b, t, i, h, th, a.steps))
                    if shape == "large" and th == 1:
                        sgs.append(sgemm_gflops(a.recur))
                steal = stolen(ticks, cpu_ticks())
                rc = statistics.median(rcs)
                if bf16:
                    own = statistics.median(f / r for f, r in zip(r32, rcs))
                    pt, ratio = "-", "-"
                    if torch and pts:
                        pt = f"{statistics.median(pts):.2f}"
                        ratio = f"{statistics.median(p / r for p, r in zip(pts, rcs)):.2f}"
                    print(f"| {shape} | {cell} | {th} | {pt} | {statistics.median(r32):.2f} "
                          f"| {rc:.2f} | {own:.2f} | {ratio} | {steal} |", flush=True)
                elif torch:
                    pt = statistics.median(pts)
                    ratio = statistics.median(p / r for p, r in zip(pts, rcs))
                    print(f"| {shape} | {cell} | {th} | {pt:.2f} | {rc:.2f} | {ratio:.2f} "
                          f"| {steal} |", flush=True)
                else:
                    print(f"| {shape} | {cell} | {th} | - | {rc:.2f} | - | {steal} |",
                          flush=True)
                if sgs and not bf16:
                    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
                    flops = 3 * t * 2 * b * (i + h) * gates * h
                    rates = [flops / (r / 1e3) / 1e9 for r in rcs]
                    share = statistics.median(g / sg for g, sg in zip(rates, sgs))
                    large_gflops[cell] = (statistics.median(rates), statistics.median(sgs), share)

    if large_gflops:
        # The reference: matrixmultiply's sgemm on 1024^3, one thread, timed in the same rounds.
        print()
        print("| large, 1 thread | recur GFLOP/s | sgemm 1024^3 GFLOP/s | recur / sgemm |")
        print("|---|---|---|---|")
        for cell, (g, sg, share) in large_gflops.items():
            print(f"| {cell} | {g:.1f} | {sg:.1f} | {100 * share:.0f}% |", flush=True)

    if not a.no_latency:
        latency(a, torch)
    print(f"\n# one core's peak after the runs: {peaks(a.recur)}", flush=True)


def latency(a, torch):
    """The single-step latency table."""
    print()
    print("| single step, B=1, I=64 | H | threads | PyTorch cell us | recur us | PyTorch / recur |")
    print("|---|---|---|---|---|---|", flush=True)
    for cell in a.cells:
        for h in LATENCY_HIDDEN:
            for th in a.threads:
                pts, rcs = [], []
                for _ in range(a.rounds):
                    if torch:
                        pts.append(torch_latency_us(torch, cell, h, th))
                        settle()
                    rcs.append(recur_latency_us(a.recur, cell, h, th))
                rc = statistics.median(rcs)
                if torch:
                    pt = statistics.median(pts)
                    ratio = statistics.median(p / r for p, r in zip(pts, rcs))
                    print(f"| {cell} | {h} | {th} | {pt:.1f} | {rc:.2f} | {ratio:.2f} |", flush=True)
                else:
                    print(f"| {cell} | {h} | {th} | - | {rc:.2f} | - |", flush=True)


if __name__ == "__main__":
    main()
