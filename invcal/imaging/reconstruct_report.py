"""``reconstruct_file``: one image file in, a run folder out (the reconstruction in the input's
format and dtype, ``results.json`` and ``report.md`` with its figures).

Figures are drawn with matplotlib's object-oriented API on the Agg canvas (no pyplot), as in
:mod:`invcal.report`.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np

from .reconstruct_io import read_image, write_image
from .reconstruction import Reconstruction, reconstruct, validate

__all__ = ["reconstruct_file", "write_reconstruction_report"]

_DPI = 110


def reconstruct_file(
    path,
    out=None,
    *,
    task: str = "denoise",
    regularizer: str = "tv",
    sigma="auto",
    rule: str = "sure",
    psf=None,
    blur_sigma: float | None = None,
    mask=None,
    reference=None,
    overwrite: bool = False,
    progress=None,
    **options,
) -> tuple[Reconstruction, Path]:
    """Reconstruct the image in ``path`` (PNG, TIFF, JPEG or ``.npy``) with
    :func:`~invcal.imaging.reconstruct` and write, into the run folder ``out`` (default
    ``runs/reconstruct-<file stem>``): ``reconstruction.<the input's extension>`` in the
    input's dtype, ``results.json`` and ``report.md`` with figures. ``psf`` and ``mask`` are
    arrays or file paths. Every input is read and checked, and the folder claimed
    (:func:`invcal.runfolder.claim_run_folder`: locked, and a folder that holds a previous run
    is refused unless ``overwrite``), before any solve. ``reference`` (an array or a file):
    the clean image, for PSNR, SSIM and the oracle λ in the results and the report. Returns
    (the reconstruction, the folder)."""
    from ..outer import atomic_write_json
    from ..runfolder import RESULTS_FILE, RunFolderError, claim_run_folder

    path = Path(path)
    image = read_image(path, "image")
    where = {"the PSF": None, "the mask": None, "the blur": None, "reference": None}
    if isinstance(psf, (str, Path)):
        where["the PSF"] = f"--psf {psf}"
        psf = read_image(psf, "--psf")
    if isinstance(mask, (str, Path)):
        where["the mask"] = f"--mask {mask}"
        mask = read_image(mask, "--mask")
    if isinstance(reference, (str, Path)):
        where["reference"] = f"--reference {reference}"
        reference = read_image(reference, "--reference")
    kwargs = dict(
        task=task,
        regularizer=regularizer,
        sigma=sigma,
        rule=rule,
        psf=psf,
        blur_sigma=blur_sigma,
        mask=mask,
        reference=reference,
        **options,
    )
    try:
        validate(image, **kwargs)
    except ValueError as e:  # name the file the message is about
        text = str(e)
        label = next((v for k, v in where.items() if v and text.startswith(k)), None)
        if label is None and text.startswith(("image", "the image")):
            label = f"image {path}"
        raise ValueError(f"{label}: {text}" if label else text) from None
    out = Path(out) if out is not None else Path("runs") / f"reconstruct-{path.stem}"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(claim_run_folder(out, overwrite=overwrite))
        except RunFolderError as e:  # reconstruct has no --resume to offer
            raise RunFolderError(str(e).replace("--resume continues it, ", "")) from None
        rec = reconstruct(image, progress=progress, **kwargs)
        suffix = path.suffix.lower()
        target = out / f"reconstruction{suffix}"
        results = {
            "problem": "reconstruct",
            "input": str(path),
            "input_dtype": str(image.dtype),
            "input_shape": list(image.shape),
            "output": target.name,
            **rec.summary(),
        }
        figures = _figures(rec, image, out)
        results["figures"] = figures
        # the image first (its temporary name is one a run may leave), results.json last:
        # a folder with results.json holds a whole run
        write_image(target, rec.image, image.dtype)
        atomic_write_json(out / RESULTS_FILE, results)
        write_reconstruction_report(results, out)
    return rec, out


def _display(a):
    a = np.asarray(a, dtype=float)
    return np.clip(a, 0.0, 1.0)


def _figures(rec: Reconstruction, image, out: Path) -> dict:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter
    from skimage.util import img_as_float

    from .reconstruct_inputs import as_channels

    names = {}
    y = img_as_float(np.asarray(image))
    if y.ndim == 3 and y.shape[-1] == 1:
        y = y[..., 0]
    gray = rec.image.ndim == 2
    cmap = "gray" if gray else None

    fig = Figure(figsize=(8, 4.2))
    for i, (a, title) in enumerate(
        ((y, "input"), (rec.image, f"reconstruction (λ = {rec.lam:.3g})"))
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.imshow(_display(a), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "before_after.png", dpi=_DPI)
    names["before_after"] = "before_after.png"

    # residual A u − y (observed pixels only for inpainting), mean over the channels
    u = as_channels(rec.image)
    resid = _residual(rec, u, as_channels(image))
    fig = Figure(figsize=(8, 3.6))
    ax = fig.add_subplot(1, 2, 1)
    lim = float(np.nanmax(np.abs(resid))) or 1.0
    im = ax.imshow(resid, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("residual A u − y" + (" (channel mean)" if not gray else ""))
    ax.axis("off")
    ax = fig.add_subplot(1, 2, 2)
    vals = resid[np.isfinite(resid)].ravel()
    ax.hist(vals, bins=60, density=True, color="0.6")
    s = rec.sigma / (1.0 if gray else math.sqrt(u.shape[0]))
    xs = np.linspace(-lim, lim, 200)
    ax.plot(xs, np.exp(-(xs**2) / (2 * s * s)) / (s * math.sqrt(2 * math.pi)), "k-", lw=1)
    ax.set_title(f"histogram; N(0, σ²), σ = {s:.3g}")
    fig.tight_layout()
    fig.savefig(out / "residual.png", dpi=_DPI)
    names["residual"] = "residual.png"

    fig = Figure(figsize=(6, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    lam, val = zip(*rec.curve, strict=True)
    ax.plot(lam, val, "o-", ms=3, color="C0")
    chosen = min(rec.curve, key=lambda r: abs(math.log(r[0] / rec.lam)))
    ax.plot(
        [rec.lam], [chosen[1]], "o", ms=9, mfc="none", mec="C3", label=f"chosen λ = {rec.lam:.4g}"
    )
    if rec.rule == "discrepancy":
        ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # 2×10⁻², 3×10⁻², … overlap
    ax.set_xlabel("λ")
    ax.set_ylabel(rec.criterion)
    ax.set_title(f"{rec.rule}: criterion against λ")
    handles, labels = ax.get_legend_handles_labels()
    if rec.oracle is not None:  # PSNR against the reference: the oracle λ on the same axis
        ax2 = ax.twinx()
        lo, ps = zip(*rec.oracle["curve"], strict=True)
        ax2.plot(lo, ps, "s--", ms=3, color="C2", lw=0.8, label="PSNR vs the reference")
        ax2.plot(
            [rec.oracle["lambda"]],
            [rec.oracle["psnr"]],
            "*",
            ms=11,
            color="C2",
            label=f"oracle λ = {rec.oracle['lambda']:.4g}",
        )
        ax2.set_ylabel("PSNR (dB)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    # below the axes: over them it hides points of one curve or the other
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    fig.savefig(out / "criterion.png", dpi=_DPI)
    names["criterion"] = "criterion.png"
    return names


def _residual(rec, u, y):
    if rec.task == "deblur":
        import jax.numpy as jnp

        from .operators import Blur

        blur = Blur.from_kernel(rec.psf, u.shape[-2:])
        au = np.stack([np.asarray(blur.mv(jnp.asarray(c))) for c in u])
        r = au - y
    else:
        r = u - y
    r = r.mean(axis=0)
    if rec.task == "inpaint":
        r = np.where(rec.mask, r, np.nan)
    return r


def _not_met(results) -> str:
    if results["rule"] == "sure":
        return (
            " (**SURE still decreased at the largest λ evaluated**: the most smoothing the "
            "search reached; a flat or pure-noise image?)"
        )
    return " (**the discrepancy target was not reached**: σ over- or underestimated?)"


def _reference_lines(results) -> list:
    if results.get("psnr") is None:
        return []
    o = results["oracle"]
    return [
        f"- against the reference: PSNR **{results['psnr']:.2f} dB** (input "
        f"{results['psnr_input']:.2f} dB), SSIM **{results['ssim']:.4f}** (input "
        f"{results['ssim_input']:.4f})",
        f"- oracle λ (best PSNR of the final solve over the {len(o['curve'])} λ of the "
        f"criterion curve and ¼–4× the chosen λ): {o['lambda']:.6g}, {o['psnr']:.2f} dB, SSIM "
        f"{o['ssim']:.4f}; the chosen λ is {o['gap_db']:.2f} dB below it",
    ]


def write_reconstruction_report(results: dict, out) -> Path:
    """``report.md`` for a folder written by :func:`reconstruct_file`."""
    out = Path(out)
    t = results["timings"]
    res = results["residual"]
    lines = [
        f"# Reconstruction of {Path(results['input']).name}",
        "",
        f"- task: **{results['task']}**, regularizer: **{results['regularizer']}** "
        f"({results['solver']})",
        f"- rule: **{results['rule']}**; λ chosen: **{results['lambda']:.6g}**"
        + ("" if results.get("rule_met", True) else _not_met(results)),
        f"- noise σ: {results['sigma']:.6g}"
        + (" (estimated)" if results["sigma_estimated"] else " (given)"),
        f"- channels: {results['channels']}",
        f"- computed in {results['dtype']}; {results['evaluations']} criterion evaluations of "
        f"the {results['num_steps_estimator']}-iteration estimator; final solve "
        f"{results['num_steps']} iterations, "
        + ("converged" if results["converged"] else "**not converged** (max_steps reached)"),
        f"- residual A u − y: RMS {res['rms']:.4g}, mean {res['mean']:.3g}, "
        f"‖Au − y‖²/(mσ²) = {res['ratio']:.4f}",
        *_reference_lines(results),
        f"- output: `{results['output']}` ({results['input_dtype']})",
        "",
        "## Before / after",
        "",
        "![before and after](before_after.png)",
        "",
        "## Residual",
        "",
        "![residual](residual.png)",
        "",
        "## Criterion against λ",
        "",
        "![criterion](criterion.png)",
        "",
        "## Timings",
        "",
        "| step | seconds |",
        "|---|---|",
    ]
    for key in ("sigma", "search", "final", "total", "reference"):
        if key in t:
            lines.append(f"| {key} | {t[key]:.3f} |")
    lines.append("")
    path = out / "report.md"
    tmp = out / ".results-report.md"
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    return path
