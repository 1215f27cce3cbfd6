#!/usr/bin/env python3
"""Validation (and training) loss curves of several `recur train` runs in one SVG.

Each run is a directory `recur train --out DIR` wrote, with its `loss.csv` (step, train_loss,
val_loss, val_bpc). Only the standard library: the SVG is written by hand.

Usage:
    python3 bench/plot_curves.py --out curves.svg --title "..." LABEL=DIR [LABEL=DIR ...]
    python3 bench/plot_curves.py --table LABEL=DIR ...   # a Markdown table of the curves

Solid lines are validation loss, dotted lines training loss (the mean over the steps since
the previous evaluation), in nats per character; a dot marks each run's best validation loss.
"""

import argparse
import csv
import sys

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"]


def read_run(path):
    """(steps, train losses, validation losses) of one run's loss.csv."""
    steps, train, val = [], [], []
    with open(f"{path}/loss.csv", newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("val_loss"):
                continue
            steps.append(int(row["step"]))
            train.append(float(row["train_loss"]))
            val.append(float(row["val_loss"]))
    if not steps:
        sys.exit(f"{path}/loss.csv: no evaluated steps")
    return steps, train, val


def svg(runs, title, width=900, height=420):
    left, right, top, bottom = 60, 330, 36, 44
    pw, ph = width - left - right, height - top - bottom
    max_step = max(s[-1] for _, (s, _, _) in runs)
    values = [v for _, (_, t, va) in runs for v in t + va]
    lo, hi = min(values), max(values)
    hi = min(hi, lo + 2.0)  # the first evaluations are far above the rest: clip them
    x = lambda s: left + pw * s / max_step
    y = lambda v: top + ph * (1 - (min(v, hi) - lo) / (hi - lo))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14">{title}</text>',
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="black"/>',
    ]
    for i in range(6):
        v = lo + (hi - lo) * i / 5
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
        out.append(
            f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" '
            'stroke="#ddd"/>'
        )
    for i in range(6):
        s = max_step * i / 5
        out.append(f'<text x="{x(s):.1f}" y="{top + ph + 16}" text-anchor="middle">{s:.0f}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">step</text>')
    out.append(
        f'<text x="14" y="{top + ph / 2}" transform="rotate(-90 14 {top + ph / 2})" '
        'text-anchor="middle">loss, nats per character</text>'
    )
    for k, (label, (steps, train, val)) in enumerate(runs):
        c = COLOURS[k % len(COLOURS)]
        pts = lambda vs: " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in zip(steps, vs))
        out.append(f'<polyline points="{pts(val)}" fill="none" stroke="{c}" stroke-width="2"/>')
        out.append(
            f'<polyline points="{pts(train)}" fill="none" stroke="{c}" stroke-width="1" '
            'stroke-dasharray="2,3"/>'
        )
        b = min(range(len(val)), key=val.__getitem__)
        out.append(f'<circle cx="{x(steps[b]):.1f}" cy="{y(val[b]):.1f}" r="4" fill="{c}"/>')
        ly = top + 14 + 18 * k
        out.append(
            f'<line x1="{left + pw + 12}" y1="{ly - 4}" x2="{left + pw + 32}" y2="{ly - 4}" '
            f'stroke="{c}" stroke-width="2"/>'
        )
        out.append(f'<text x="{left + pw + 38}" y="{ly}">{label} ({val[b]:.3f})</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def table(runs, every):
    labels = [label for label, _ in runs]
    lines = ["| step | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    steps = runs[0][1][0]
    for i, s in enumerate(steps):
        if s % every == 0 or i == len(steps) - 1:
            cells = []
            for _, (st, _, val) in runs:
                cells.append(f"{val[st.index(s)]:.3f}" if s in st else "")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    best = []
    for _, (st, _, val) in runs:
        b = min(range(len(val)), key=val.__getitem__)
        best.append(f"**{val[b]:.3f}** (step {st[b]})")
    lines.append("| best | " + " | ".join(best) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=DIR")
    ap.add_argument("--out", help="the SVG to write")
    ap.add_argument("--title", default="recur train: validation loss")
    ap.add_argument("--table", action="store_true", help="print a Markdown table instead")
    ap.add_argument("--every", type=int, default=100, help="table rows every N steps")
    a = ap.parse_args()
    runs = []
    for r in a.runs:
        label, sep, path = r.partition("=")
        if not sep:
            sys.exit(f"{r}: expected LABEL=DIR")
        runs.append((label, read_run(path)))
    if a.table:
        sys.stdout.write(table(runs, a.every))
    if a.out:
        with open(a.out, "w") as f:
            f.write(svg(runs, a.title))


if __name__ == "__main__":
    main()
