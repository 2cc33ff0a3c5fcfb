"""`kuosan sample` (classes, guidance, classifiers, control images, sampler names, tuned grids), `tune-steps`."""

from __future__ import annotations

from pathlib import Path

import typer

from . import (
    _expected_errors,
    _fail,
    app,
    out,
)


def _parse_classes(text: str | None, num_classes: int | None) -> list[int] | None:
    """--class: None -> the run's default; "all" -> every class; "3" or "3,5" -> those classes."""
    if text is None:
        return None
    if num_classes is None:
        raise ValueError("--class needs a class-conditional run (trained on labelled data); this run has no classes")
    if text.strip() == "all":
        return list(range(num_classes))
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise ValueError(f"--class takes 'all' or class indices like 3 or 3,5; got {text!r}") from None


@app.command()
def sample(
    checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint directory."),
    method: str | None = typer.Option(None, help="Sampler spec, e.g. dpmpp-2m or ddim:eta=1.0 "
                                      "(kuosan.samplers.available()), or another tool's name like 'DPM++ 2M Karras' "
                                      "(docs/samplers.md); default: the run's."),
    nfe: int | None = typer.Option(None, help="Network evaluations to spend; default: the run's."),
    seed: int = typer.Option(0, help="Seed of the prior noise and any sampler noise."),
    n: int | None = typer.Option(None, "--n", help="Number of samples (per class with --class); default: the run's."),
    classes: str | None = typer.Option(None, "--class", help="Class-conditional runs: 'all' (one row per class) or "
                                       "indices '3' / '3,5'; default: the classes in turn."),
    guidance: float | None = typer.Option(None, help="Classifier-free guidance scale w (1 = the conditional model)."),
    guidance_interval: str | None = typer.Option(None, "--guidance-interval", help="Guide only at noise levels "
                                                 "sigma/alpha in (LO, HI], e.g. 0.3,5 (arXiv:2404.07724); none: "
                                                 "everywhere; default: the run's sample.guidance_interval."),
    guidance_rescale: float = typer.Option(0.0, "--guidance-rescale", help="Guidance rescale phi in [0, 1] "
                                           "(arXiv:2305.08891; 0.7 is the paper's)."),
    classifier: Path | None = typer.Option(None, "--classifier", help="Classifier guidance (arXiv:2105.05233) by this "
                                           "classifier run, for any run; --class then names the classifier's classes."),
    classifier_scale: float | None = typer.Option(None, "--classifier-scale", help="Classifier guidance scale s "
                                                  "(default 1 with --classifier)."),
    control: Path | None = typer.Option(None, "--control", help="ControlNet runs: condition images, .npy / .npz "
                                        "(array 'control') or one PNG; --n defaults to their count (docs/control.md)."),
    clip_x0: str | None = typer.Option(None, "--clip-x0", help="x0 clipping: auto, none, clip, dynamic; "
                                       "default: the run's (auto: clip images to [-1, 1])."),
    out_path: Path | None = typer.Option(None, "--out", help="PNG path; the .npz goes beside it."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights (default) or the raw ones."),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
    grid: str | None = typer.Option(None, "--grid", help="'default': ignore a grid stored by kuosan tune-steps "
                                    "for this method and NFE (used when one exists)."),
) -> None:
    """Generate samples: a PNG (image grid, or a scatter plot of 2-D points) and an .npz (samples, labels)."""
    try:
        if n is not None and n < 1:
            raise ValueError(f"--n must be at least 1; got {n}")
        png, npz, x = sample_run(checkpoint, method, nfe, seed, n, out_path, ema, device, classes=classes,
                                 guidance=guidance, clip_x0=clip_x0,
                                 guidance_interval=parse_interval(guidance_interval),
                                 guidance_rescale=guidance_rescale, classifier=classifier,
                                 classifier_scale=classifier_scale, control=control, tuned=grid != "default")
    except _expected_errors() as err:
        raise _fail(err) from None
    out.print(f"wrote {png} and {npz} ({' x '.join(map(str, x.shape))} samples)")
    if method and (line := _sampler_note(method)):  # another tool's sampler name (kuosan.samplers.resolve)
        out.print(line)


def _sampler_note(spec: str) -> str | None:
    from ..samplers.names import describe

    return describe(spec)


def parse_floats(text: str | None, flag: str) -> list[float] | None:
    """'0,1,2.5' -> [0.0, 1.0, 2.5]."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated numbers like 0,1,3; got {text!r}") from None


def parse_interval(text: str | None) -> tuple[float, float] | None | str:
    """--guidance-interval LO,HI -> (LO, HI); none -> None (guide at every noise level); absent -> "run" (the
    run's sample.guidance_interval)."""
    if text is None:
        return "run"
    if text.strip().lower() == "none":
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--guidance-interval takes two noise levels LO,HI like 0.3,5; got {text!r}") from None
    return lo, hi


def sample_run(checkpoint, method=None, nfe=None, seed=0, n=None, out_path=None, ema=True, device="auto", *,
               classes=None, guidance=None, clip_x0=None, title=None, **guide):
    """Load a run, sample it and write the PNG (one row per class with `classes`) and .npz; returns
    (png, npz, samples)."""
    from ..export.diffusers_sample import is_diffusers_dir, sample_diffusers

    if is_diffusers_dir(checkpoint):  # a local diffusers UNet2DModel directory (docs/interop.md)
        guide.pop("tuned", None)
        return sample_diffusers(checkpoint, method, nfe, seed, n, out_path, device, classes=classes,
                                guidance=guidance, clip_x0=clip_x0, title=title, **guide)
    from ..eval.evaluate import parse_sampler
    from ..pictures import save_npz, save_samples
    from ..pipeline import load, load_classifier
    from ..tuned_grids import load_tuned

    pipe = load(checkpoint, ema=ema, device=device)
    spec = method or pipe.config.sample.method
    name, options = parse_sampler(spec)
    nfe = nfe or pipe.config.sample.nfe
    if guide.pop("tuned", False) and not options and (found := load_tuned(pipe.run_dir, name, nfe)):
        guide["grid"] = found[1]  # kuosan tune-steps' grid for (method, nfe)
        out.print(f"using the tuned grid {found[0]} (--grid default ignores it)")
    clf = guide.get("classifier")  # classifier guidance: labels are the classifier's classes
    if clf is not None:
        guide["classifier"] = clf = load_classifier(clf, ema=ema, device=pipe.device)
    k = None if clf is None else clf.num_classes
    if guide.get("control") is not None:  # ControlNet: condition images from a file (kuosan.control)
        from ..control import read_control

        guide["control"] = read_control(guide["control"], pipe)
        n = n or (len(guide["control"]) if guide["control"].ndim == 4 and len(guide["control"]) > 1 else None)
    wanted = _parse_classes(classes, pipe.num_classes if clf is None else k)
    if wanted is not None:  # n per class, class-major: one grid row per class
        per = n or 8
        labels = pipe.labels(per * len(wanted), class_major(wanted, per), k)
        x = pipe.generate(len(labels), name, nfe, labels=labels, guidance=guidance, seed=seed, clip_x0=clip_x0,
                          **guide, **options)
        nrow = per
    else:
        n = n or pipe.config.sample.n
        labels = pipe.labels(n, None, k)
        x = pipe.generate(n, name, nfe, guidance=guidance, seed=seed, clip_x0=clip_x0, **guide, **options)
        nrow = None
    stem = f"samples-{spec.replace(':', '_').replace('=', '').replace('/', '-')}-{nfe}"
    stem += "" if guidance is None else f"-w{guidance:g}"
    s = None if clf is None else (1.0 if guide.get("classifier_scale") is None else guide["classifier_scale"])
    stem += "" if s is None else f"-cs{s:g}"
    png = Path(out_path) if out_path else pipe.run_dir / f"{stem}.png"
    w = (f", guidance {guidance:g}" if guidance is not None else "") + ("" if s is None else f", classifier {s:g}")
    save_samples(x, png, title=title or f"{pipe.run_dir.name}: {spec}, {nfe} NFE{w}, step {pipe.step}", nrow=nrow)
    extra = {} if labels is None else {"labels": labels.cpu().numpy()}
    if guide.get("control") is not None:
        extra["control"] = guide["control"].cpu().numpy()
    npz = save_npz(x, png.with_suffix(".npz"), method=spec, nfe=nfe, seed=seed, step=pipe.step,
                   guidance=float("nan") if guidance is None else guidance, **extra)
    return png, npz, x


def class_major(classes: list[int], per: int) -> list[int]:
    """[c0] * per + [c1] * per + ...: class-major labels, one grid row per class."""
    return [c for c in classes for _ in range(per)]


@app.command("tune-steps")
def tune_steps(
    checkpoint: Path = typer.Argument(..., help="A run directory."),
    method: str = typer.Option(..., help="A deterministic ODE sampler, e.g. dpmpp-2m, unipc, dpmpp-3m."),
    nfe: int = typer.Option(..., help="Network evaluations the grid is for (the final denoise counts one)."),
    n_calib: int = typer.Option(256, "--n-calib", help="Prior draws to fit on (the classes in turn)."),
    seed: int = typer.Option(0, help="Seed of the calibration draws."),
    ref_tol: float = typer.Option(1e-6, "--ref-tol", help="rtol = atol of the rk45 reference solve."),
    device: str = typer.Option("auto", help="cpu, cuda, or auto."),
) -> None:
    """Fit a time grid to the run's model (LD3, arXiv:2405.15506); `kuosan sample` then uses it (docs/samplers.md)."""
    try:
        from ..pipeline import load
        from ..tuned_grids import tune_run

        path, rec = tune_run(load(checkpoint, device=device), method, nfe, n_calib, seed=seed, ref_tol=ref_tol)
    except _expected_errors() as err:
        raise _fail(err) from None
    out.print(f"wrote {path}: RMS to the reference on {n_calib} draws {rec['rms_default']:.4g} (default grid) -> "
              f"{rec['rms_tuned']:.4g} (tuned), {rec['fit_seconds']} s")
