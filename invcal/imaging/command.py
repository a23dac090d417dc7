"""``invcal reconstruct``: denoise, deblur or inpaint an image file with λ chosen per image.

    invcal reconstruct IMAGE [--task denoise|deblur|inpaint] [--regularizer tv|elastic-net]
                       [--sigma auto|S] [--psf FILE | --blur-sigma S] [--mask FILE]
                       [--rule sure|discrepancy] [--color vectorial|per-channel]
                       [--reference FILE] [--num-steps N] [--max-steps N]
                       [--out DIR] [--overwrite] [--no-progress]

Registered in :data:`invcal.cli.DOMAIN_COMMANDS`. The parser is argparse only (nothing heavy
is imported until :func:`run`); a bad command or input file is one ``invcal: error:`` line and
exit status 2, raised before any solve (files read and checked, folder claimed). Progress
lines (one per criterion evaluation) go to stderr. The command computes in float32 (images
need no more: the stopping rules are relative to the image's range), whatever the command
line's global precision.
"""

from __future__ import annotations

import math
import sys

__all__ = ["add_parser", "run"]


def _sigma(text: str):
    if text == "auto":
        return "auto"
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive number, got {text!r}")
    return value


def _positive(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels, got {text!r}")
    return value


def _count(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def add_parser(sub, name: str):
    """Add the ``reconstruct`` sub-command to the argparse sub-parsers ``sub``."""
    p = sub.add_parser(
        name,
        help="denoise, deblur or inpaint an image with λ chosen by SURE or discrepancy",
        description="Reconstruct an image file (PNG, TIFF, JPEG or .npy; gray or RGB) with "
        "total variation or a wavelet elastic net, λ chosen per image without ground truth "
        "(SURE or the discrepancy principle), and write the reconstruction (the input's "
        "format and dtype), results.json and report.md with figures into --out.",
    )
    p.add_argument("image", help="the image file (PNG, TIFF, JPEG or NumPy .npy)")
    p.add_argument(
        "--task",
        choices=("denoise", "deblur", "inpaint"),
        default="denoise",
        help="the measurement: the image itself (default), blurred (--psf or --blur-sigma), "
        "or with missing pixels (--mask)",
    )
    p.add_argument(
        "--regularizer",
        choices=("tv", "elastic-net"),
        default="tv",
        help="isotropic total variation (default) or an elastic net on db4 wavelets",
    )
    p.add_argument(
        "--sigma",
        type=_sigma,
        default="auto",
        help="noise standard deviation in the float image's units (an 8-bit image's grey "
        "levels / 255), or 'auto' (default) to estimate it",
    )
    p.add_argument("--psf", help="deblur: the point-spread function (image or .npy file)")
    p.add_argument(
        "--blur-sigma",
        type=_positive,
        help="deblur: the width (pixels) of a Gaussian point-spread function",
    )
    p.add_argument("--mask", help="inpaint: the mask file, nonzero on the observed pixels")
    p.add_argument(
        "--rule",
        choices=("sure", "discrepancy"),
        default="sure",
        help="how λ is chosen: Stein's unbiased risk estimate (default) or the discrepancy "
        "principle ‖Au − y‖² = mσ²",
    )
    p.add_argument(
        "--color",
        choices=("per-channel", "vectorial"),
        default=None,
        help="RGB with TV: vectorial TV (default), the channels coupled in one norm per pixel "
        "(edges shared by the channels), or TV on each channel; one λ either way (the "
        "elastic net is per channel)",
    )
    p.add_argument(
        "--reference",
        help="the clean image (same size): report PSNR and SSIM of the result and of the "
        "input, and the oracle λ (best PSNR) among the λ evaluated and ¼–4× the chosen one; "
        "never used to choose λ",
    )
    p.add_argument(
        "--num-steps",
        type=_count,
        help="solver iterations of the estimator whose criterion is evaluated at each λ "
        "(default: 20 for large TV denoising/deblurring, 100 otherwise)",
    )
    p.add_argument(
        "--max-steps",
        type=_count,
        help="iteration budget of the final solve (default: 300 for TV denoising, 1000 "
        "otherwise); the report says when it was reached",
    )
    p.add_argument("--out", help="output folder (default: runs/reconstruct-<image name>)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    return p


def _progress(text: str) -> None:
    sys.stderr.write(f"invcal reconstruct: {text}\n")
    sys.stderr.flush()


def run(args) -> int:
    """Run ``invcal reconstruct``; returns the exit status (errors are raised as the
    command line's one-line errors)."""
    from ..errors import CommandError, RunFailed

    if args.psf is not None and args.blur_sigma is not None:
        raise CommandError("--psf and --blur-sigma exclude each other; pass one of them.")
    if args.task == "deblur" and args.psf is None and args.blur_sigma is None:
        raise CommandError("--task deblur needs the blur: pass --psf FILE or --blur-sigma S.")
    if args.task != "deblur" and (args.psf is not None or args.blur_sigma is not None):
        raise CommandError(f"--psf/--blur-sigma are for --task deblur, not --task {args.task}.")
    if args.task == "inpaint" and args.mask is None:
        raise CommandError("--task inpaint needs --mask FILE (nonzero on the observed pixels).")
    if args.task != "inpaint" and args.mask is not None:
        raise CommandError(f"--mask is for --task inpaint, not --task {args.task}.")
    if args.color == "vectorial" and args.regularizer != "tv":
        raise CommandError(
            "--color vectorial couples the channels in the TV norm; --regularizer elastic-net "
            "is per channel."
        )

    import jax

    from .reconstruct_report import reconstruct_file
    from .reconstruct_search import NoMinimumError

    options = {
        k: v
        for k, v in (("num_steps", args.num_steps), ("max_steps", args.max_steps))
        if v is not None
    }
    with jax.enable_x64(False):
        try:
            rec, out = reconstruct_file(
                args.image,
                args.out,
                task=args.task,
                regularizer=args.regularizer,
                sigma=args.sigma,
                rule=args.rule,
                psf=args.psf,
                blur_sigma=args.blur_sigma,
                mask=args.mask,
                reference=args.reference,
                color=args.color,
                overwrite=args.overwrite,
                progress=None if args.no_progress else _progress,
                **options,
            )
        except NoMinimumError as e:  # a result that would mean nothing: exit 1, one line
            raise RunFailed(str(e).removeprefix("reconstruct: ")) from None
    print(f"report: {out / 'report.md'}")
    print(
        f"lambda: {rec.lam:.6g} ({rec.rule}), sigma: {rec.sigma:.6g}"
        + (" (estimated)" if rec.sigma_estimated else "")
        + f", {rec.timings['total']:.2f} s"
    )
    if rec.psnr is not None:
        o = rec.oracle
        print(
            f"against the reference: PSNR {rec.psnr:.2f} dB (input {rec.psnr_input:.2f}), SSIM "
            f"{rec.ssim:.4f} (input {rec.ssim_input:.4f}); oracle λ {o['lambda']:.6g}: "
            f"{o['psnr']:.2f} dB ({o['gap_db']:.2f} dB above the chosen λ)"
        )
    return 0
