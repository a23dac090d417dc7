"""The README's gallery: figures made by running invcal's own commands.

    python benchmarks/gallery.py [--out benchmarks/results/gallery] [--keep DIR]

Runs, each in a fresh process as a user would (``python -m invcal ...``), in a temporary folder:

1. ``invcal reconstruct coins_noisy.png`` — scikit-image's ``coins`` photo (303×384, gray; no
   other script or test uses it) plus N(0, 0.08²) noise (seed 0), clipped to [0, 1] and saved
   as an 8-bit PNG: isotropic TV denoising with λ chosen by SURE, σ estimated from the image.
   Kept: the before/after figure and the SURE-against-λ curve with the chosen point.
2. ``invcal calibrate problems/data/theoph.csv --model 1cmt-oral-ke --error additive
   --omega diagonal`` — the shipped Theoph table (R's ``Theoph``), FOCEI.
   Kept: the goodness-of-fit panel (DV against PRED and IPRED, CWRES against TIME and PRED).
3. ``invcal run logreg_l2`` — the ℓ2 penalty of logistic regression on the breast-cancer data.
   Kept: the hypergradient trajectory drawn on the criterion landscape.

The chosen PNGs are copied into ``--out`` as the commands wrote them. A file over the size
budget (150 KB) is re-encoded without loss first (8-bit grayscale when every pixel is gray),
then, only if still over, scaled down in steps of 10% until it fits; the script says which.
``gallery.json`` records the commands, their wall times, the figures' sizes and the headline
numbers of each run. ``--keep DIR`` keeps the run folders (reports, results.json) in DIR.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data
from skimage import io as skio
from skimage.util import img_as_float, img_as_ubyte

ROOT = Path(__file__).resolve().parents[1]
THEOPH = ROOT / "problems" / "data" / "theoph.csv"
MAX_BYTES = 150 * 1024
NOISE_SIGMA = 0.08


def _invcal(args: list[str]) -> float:
    """Run ``invcal ARGS`` in a fresh process (from the repository root); return its wall time."""
    shown = " ".join(str(Path(a).relative_to(ROOT)) if a.startswith(str(ROOT)) else a for a in args)
    print(f"\n$ invcal {shown}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "invcal", *args], cwd=ROOT, check=True)
    return time.perf_counter() - t0


def _noisy_coins(path: Path) -> None:
    rng = np.random.default_rng(0)
    clean = img_as_float(data.coins())
    noisy = np.clip(clean + NOISE_SIGMA * rng.standard_normal(clean.shape), 0.0, 1.0)
    skio.imsave(path, img_as_ubyte(noisy), check_contrast=False)
    print(f"input: {path.name}, coins {clean.shape[0]}×{clean.shape[1]} + N(0, {NOISE_SIGMA}²)")


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _copy_png(src: Path, dst: Path) -> dict:
    """Copy ``src`` to ``dst`` within the size budget (module docstring); describe what was done."""
    raw = src.read_bytes()
    if len(raw) <= MAX_BYTES:
        dst.write_bytes(raw)
        return {"bytes": len(raw), "how": "copied as written"}
    img = Image.open(src)
    rgb = np.asarray(img.convert("RGB")).astype(np.int16)
    gray = bool(np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]))
    img = img.convert("L" if gray else "RGB")
    how = "re-encoded losslessly as 8-bit grayscale" if gray else "re-encoded as RGB"
    out, scale = _png_bytes(img), 1.0
    while len(out) > MAX_BYTES and scale > 0.3:
        scale = round(scale - 0.1, 2)
        size = (round(img.width * scale), round(img.height * scale))
        out = _png_bytes(img.resize(size, Image.Resampling.LANCZOS))
    if scale < 1.0:
        w, h = round(img.width * scale), round(img.height * scale)
        how += f", then scaled to {scale:.0%} ({w}×{h} px)"
    dst.write_bytes(out)
    return {"bytes": len(out), "how": how, "original_bytes": len(raw)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gallery")
    ap.add_argument("--keep", type=Path, help="keep the run folders here (default: discarded)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="invcal-gallery-") as tmp:
        work = Path(tmp)
        runs: list[dict] = []

        image = work / "coins_noisy.png"
        _noisy_coins(image)
        rec = work / "reconstruct"
        cmd = ["reconstruct", str(image), "--out", str(rec), "--no-progress"]
        seconds = _invcal(cmd)
        r = json.loads((rec / "results.json").read_text())
        runs.append(
            {
                "command": "invcal reconstruct coins_noisy.png",
                "input": f"skimage.data.coins() + N(0, {NOISE_SIGMA}^2), seed 0, 8-bit PNG",
                "seconds": round(seconds, 1),
                "summary": {
                    "lambda": r["lambda"],
                    "rule": r["rule"],
                    "sigma": r["sigma"],
                    "sigma_estimated": r["sigma_estimated"],
                    "evaluations": r["evaluations"],
                },
                "figures": {
                    "reconstruct_before_after.png": rec / "before_after.png",
                    "reconstruct_sure_curve.png": rec / "criterion.png",
                },
            }
        )

        cal = work / "calibrate"
        model = ["--model", "1cmt-oral-ke", "--error", "additive", "--omega", "diagonal"]
        seconds = _invcal(["calibrate", str(THEOPH), *model, "--out", str(cal), "--no-progress"])
        c = json.loads((cal / "results.json").read_text())
        runs.append(
            {
                "command": "invcal calibrate problems/data/theoph.csv " + " ".join(model),
                "seconds": round(seconds, 1),
                "summary": {
                    "minus_2_loglik": c["minus_2_loglik"],
                    "converged": c["converged"],
                    "fixed_effects": c["fixed_effects"],
                },
                "figures": {"calibrate_gof.png": cal / "gof.png"},
            }
        )

        lr = work / "logreg_l2"
        seconds = _invcal(["run", "logreg_l2", "--out", str(lr), "--no-progress"])
        g = json.loads((lr / "results.json").read_text())
        runs.append(
            {
                "command": "invcal run logreg_l2",
                "seconds": round(seconds, 1),
                "summary": {"best": g["best"], "optimizer": g["optimizer"]},
                "figures": {"logreg_l2_landscape.png": lr / "landscape.png"},
            }
        )

        print(f"\ngallery: {args.out}")
        for run in runs:
            for name, src in run["figures"].items():
                if not src.is_file():
                    raise SystemExit(f"gallery: {run['command']} wrote no {src.name}")
                info = _copy_png(src, args.out / name)
                run["figures"][name] = {"from": src.name, **info}
                print(f"  {name:30s} {info['bytes'] / 1024:6.1f} KB  <- {src.name}, {info['how']}")

        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for sub in (rec, cal, lr):
                shutil.copytree(sub, args.keep / sub.name, dirs_exist_ok=True)

    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "regenerate": "python benchmarks/gallery.py",
        "runs": runs,
    }
    (args.out / "gallery.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"  {'gallery.json':30s} (commands, times, headline numbers)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
