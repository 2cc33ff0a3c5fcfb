"""`kuosan eval`, `kuosan edit` (img2img, inpainting) and `kuosan export` (diffusers)."""

from __future__ import annotations

from pathlib import Path

import typer

from . import (
    _expected_errors,
    _fail,
    app,
    out,
)
from .sampling import parse_floats


@app.command()
def edit(
    checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint directory."),
    img2img: Path | None = typer.Option(None, "--img2img", help="SDEdit these inputs: an image, a folder, .npy/.npz."),
    inpaint: Path | None = typer.Option(None, "--inpaint", help="Inpaint these inputs: an image, a folder, .npy/.npz."),
    strength: float = typer.Option(0.6, help="img2img: 0 = the input, 1 = a fresh sample (same seed as sample)."),
    mask: str | None = typer.Option(None, help="inpaint: top-half|bottom-half|left-half|right-half (the half kept), "
                                    "an image (white = known) or an .npy of 0/1 (1 = known)."),
    method: str | None = typer.Option(None, help="Sampler spec (kuosan.samplers.available()); default: the run's."),
    nfe: int | None = typer.Option(None, help="Network evaluations of a full pass; default: the run's."),
    seed: int = typer.Option(0, help="Seed of the noise."),
    resample: int = typer.Option(1, help="inpaint: RePaint resamplings r (1 = plain replacement)."),
    jump: int = typer.Option(10, help="inpaint: RePaint jump length j (grid steps per chunk)."),
    reconstruction: float = typer.Option(0.0, help="inpaint: reconstruction guidance weight w_r (Ho et al. 2022, "
                                         "eq. 7; 0 = off)."),
    label: str | None = typer.Option(None, help="Class-conditional runs: a class index, or one per input: 3,5,..."),
    guidance: float | None = typer.Option(None, help="Classifier-free guidance scale w (1 = the conditional model)."),
    out_path: Path | None = typer.Option(None, "--out", help="PNG path; the .npz goes beside it."),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
) -> None:
    """Edit images with a run: SDEdit (--img2img) or inpainting (--inpaint, --mask); writes a PNG grid
    (input | mask | result per image) and an .npz (samples, inputs, mask)."""
    from ..edit_files import edit_run

    try:
        if (img2img is None) == (inpaint is None):
            raise ValueError("give exactly one of --img2img INPUT or --inpaint INPUT")
        labels = None if label is None else [int(k) for k in label.split(",") if k.strip()]
        png, npz, x = edit_run(checkpoint, "img2img" if img2img else "inpaint", img2img or inpaint,
                               strength=strength, mask=mask, method=method, nfe=nfe, seed=seed, out_path=out_path,
                               labels=labels, guidance=guidance, resample=resample, jump=jump, device=device,
                               reconstruction=reconstruction)
    except _expected_errors() as err:
        raise _fail(err) from None
    out.print(f"wrote {png} and {npz} ({' x '.join(map(str, x.shape))} results)")


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint directory."),
    format: str = typer.Option(..., "--format", help="diffusers (a DDPMPipeline directory) or onnx."),
    out_dir: Path | None = typer.Option(None, "--out", help="Output directory (default <run>/export-<format>)."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Export the EMA weights (default) or the raw ones."),
) -> None:
    """Write a run for another toolkit: --format diffusers gives a directory diffusers.DDPMPipeline.from_pretrained
    loads (docs/interop.md)."""
    from ..export import export_run

    try:
        target, summary = export_run(checkpoint, out_dir, format, ema=ema)
    except _expected_errors() as err:
        raise _fail(err) from None
    out.print(f"wrote {target} (max |kuosan - UNet2DModel| = {summary['max_abs_diff']:.2g})")


@app.command("eval")
def eval_(
    checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint directory."),
    samplers: str = typer.Option(
        "dpmpp-2m-sde,dpmpp-2m",
        help="Comma-separated samplers (kuosan.samplers.available()), each optionally with options: "
        "unipc:grid=uniform, ddim:eta=1.0, dpmpp-2m:thresholding=true, or other tools' names: DPM++ 2M Karras.",
    ),
    nfe: str = typer.Option("10,20", help="Comma-separated NFE budgets (the book's comparison: 5,10,20,50,1000)."),
    nfe_for: list[str] = typer.Option([], "--nfe-for", help="Budgets of one sampler: --nfe-for dpmpp-2m=5,10,20."),
    n: int = typer.Option(500, "--n", help="Samples per sampler and NFE (1000+ for FD within a few %)."),
    nll: bool = typer.Option(False, "--nll", help="Add held-out bits/dim: PF-ODE (Hutchinson) and the DDPM bound."),
    nll_n: int | None = typer.Option(None, "--nll-n", help="Held-out samples for --nll (default: all)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Output directory (default <run>/eval)."),
    inception: Path | None = typer.Option(None, "--inception", help="Local FID Inception weights (pytorch-fid)."),
    seed: int = typer.Option(0, help="Seed of the prior noise, sampler noise and probes."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights (default) or the raw ones."),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
    clip_x0: str | None = typer.Option(None, "--clip-x0", help="x0 clipping for every sampler: auto, none, clip, "
                                       "dynamic; default: the run's."),
    guidance: str | None = typer.Option(None, help="Class-conditional runs: classifier-free guidance scales to "
                                        "sweep, e.g. 0,1,2,3,5 (adds class accuracy and an FD-vs-accuracy plot)."),
    grid: str | None = typer.Option(None, "--grid", help="'default': ignore the grids stored in the run (kuosan "
                                    "tune-steps, a consistency / LCM student's own); by default a sampler named "
                                    "without options uses the stored grid for its NFE, as kuosan sample does."),
) -> None:
    """Sample quality against NFE (FD, KID, precision/recall) per sampler against held-out data:
    report.md/json, plot, sample sheets."""
    from ..eval.report import run_eval

    try:
        if n < 2:
            raise ValueError(f"--n must be at least 2; got {n}")
        if grid not in (None, "default"):
            raise ValueError(f"--grid takes only 'default' (ignore the run's stored grids); got {grid!r}")
        budgets = {"*": nfe, **dict(item.rsplit("=", 1) for item in nfe_for)}
        nfes = {s.strip(): [int(k) for k in v.split(",") if k.strip()] for s, v in budgets.items()}
        run_eval(checkpoint, [s.strip() for s in samplers.split(",") if s.strip()], nfes, n, nll, out_dir,
                 nll_n=nll_n, inception=inception, seed=seed, ema=ema, device=device, clip_x0=clip_x0,
                 guidance=parse_floats(guidance, "--guidance"), tuned=grid != "default",
                 log=lambda line: out.print(line, markup=False, highlight=False))
    except _expected_errors() as err:
        raise _fail(err) from None
