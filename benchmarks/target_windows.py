"""Where the "within 0.05 dB of the best grid point" targets of the imaging benchmarks can be
met: for each recorded grid, the grid points within 0.05 dB of the best *training* PSNR and
those within 0.05 dB of the best *validation* PSNR, and how many points are in both.

    python benchmarks/target_windows.py [--tv benchmarks/results/tv_vs_skimage.json]
        [--elastic-net benchmarks/results/elastic_net_vs_grid.json ...]

It reads the JSON that ``tv_vs_skimage.py`` (part ``learn``, the 61-point grid) and
``elastic_net_vs_grid.py`` (the 15×15 grid, with its validation landscape) wrote, and runs no
solver. A tuner that sees only the training images aims at the training optimum; when no grid
point is within 0.05 dB of both optima, a weight within 0.05 dB of the validation-best point
is out of its reach, whatever its accuracy (the grid's own training pick included).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

TOL_DB = 0.05


def _window(values):
    values = np.asarray(values, dtype=float)
    return values >= np.nanmax(values) - TOL_DB


def tv_rows(path):
    rows = []
    for r in json.loads(Path(path).read_text()).get("learn", []):
        w = np.asarray(r["grid61_weights"])
        train, val = _window(r["grid61_train_psnr"]), _window(r["grid61_val_psnr"])
        rows.append(
            {
                "benchmark": "tv_vs_skimage learn",
                "case": f"σ={r['sigma']} {r['size']}²",
                "train_window": f"w ∈ [{w[train].min():.4f}, {w[train].max():.4f}]",
                "val_window": f"w ∈ [{w[val].min():.4f}, {w[val].max():.4f}]",
                "points_in_both": int((train & val).sum()),
                "learned": f"w = {r['learned_weight']:.4f}",
                "val_gap_of_grid_train_pick_db": r["grid61_best_val_psnr"]
                - r["grid61_train_pick_val_psnr"],
            }
        )
    return rows


def elastic_net_rows(path):
    d = json.loads(Path(path).read_text())
    rows = []
    for name, op in d.get("operators", {}).items():
        g = op.get("grid", {})
        land = g.get("validation_landscape")
        if land is None:  # runs with --no-oracle score only the training pick on validation
            continue
        tr, va = np.asarray(g["train_psnr"], float), np.asarray(land, float)
        train, val = _window(tr), _window(va)
        kt = np.unravel_index(np.nanargmax(tr), tr.shape)
        rows.append(
            {
                "benchmark": f"elastic_net_vs_grid {op.get('size', d.get('size'))}²",
                "case": name,
                "train_window": f"{int(train.sum())} of {tr.size} points",
                "val_window": f"{int(val.sum())} of {va.size} points",
                "points_in_both": int((train & val).sum()),
                "learned": "",
                "val_gap_of_grid_train_pick_db": float(np.nanmax(va) - va[kt]),
            }
        )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tv", default="benchmarks/results/tv_vs_skimage.json")
    ap.add_argument(
        "--elastic-net",
        nargs="*",
        default=[
            "benchmarks/results/elastic_net_vs_grid.json",
            "benchmarks/results/elastic_net_vs_grid_128.json",
            "benchmarks/results/elastic_net_vs_grid_256.json",
        ],
    )
    args = ap.parse_args(argv)
    rows = tv_rows(args.tv) if Path(args.tv).exists() else []
    for p in args.elastic_net:
        if Path(p).exists():
            rows += elastic_net_rows(p)
    head = [
        "benchmark",
        "case",
        f"within {TOL_DB} dB of best train",
        f"within {TOL_DB} dB of best val",
        "in both",
        "learned",
        "val: best − grid's train pick (dB)",
    ]
    table = [
        [
            r["benchmark"],
            r["case"],
            r["train_window"],
            r["val_window"],
            str(r["points_in_both"]),
            r["learned"],
            f"{r['val_gap_of_grid_train_pick_db']:.3f}",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
    for line in [head, ["-" * w for w in widths], *table]:
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))


if __name__ == "__main__":
    main()
