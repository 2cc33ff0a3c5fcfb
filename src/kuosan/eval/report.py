"""`kuosan eval`: sample quality against NFE for several samplers, plus held-out bits/dim, as a report.

    run_eval("runs/demo", samplers=["dpmpp-2m", "ddim", "ddpm"], nfes=[5, 10, 20, 50, 1000], n=1000, nll=True)

writes into <run>/eval/ (or `out`): report.md, report.json, fd_vs_nfe.png (one line per sampler, log NFE) and
samples-<sampler>.png (one row per NFE, same seed). A sampler is a spec 'method[:key=value...]' (e.g.
'unipc:grid=uniform'; see evaluate.parse_sampler). Combinations a sampler cannot run (a budget too small for
one step, a method the process does not support) are skipped with the reason in the report.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .evaluate import Reference, build_reference, draw_samples, parse_sampler, quality
from .plots import plot_fd_vs_accuracy, plot_metric_vs_nfe, plot_sample_sheet
from .reporting import write_markdown

__all__ = ["run_eval", "evaluate", "machine_info"]


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where the numbers were measured: CPU count, torch threads, 1-minute load average, device, versions."""
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def file_stem(spec: str) -> str:
    """A sampler spec as a file-name part: 'unipc:grid=uniform' -> 'unipc_grid-uniform', 'ddim w=3' -> 'ddim_w-3'."""
    return spec.replace(":", "_").replace("=", "-").replace("/", "-").replace(" ", "_")


def _saved(path: Path, n: int, seed: int, tag: str | None) -> tuple[torch.Tensor, dict[str, float]] | None:
    """Samples an earlier (perhaps killed) run of the same sweep saved at `path`, if they match n, seed and the
    checkpoint tag; else None (then they are drawn again)."""
    if tag is None or not path.exists():
        return None
    try:
        with np.load(path) as z:
            if str(z["tag"]) != tag or int(z["seed"]) != seed or len(z["samples"]) != n:
                return None
            timing = {"nfe_used": int(z["nfe_used"]), "seconds": float(z["seconds"]),
                      "seconds_per_1000": float(z["seconds_per_1000"])}
            return torch.from_numpy(z["samples"]), timing
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile):  # an older or truncated file: draw again
        return None


def _save(path: Path, x: torch.Tensor, seed: int, tag: str | None, timing: dict[str, float]) -> None:
    """Atomically: a killed run leaves either no file or a whole one (a per-process temporary name, so two
    processes filling the same eval directory never write into one file)."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, samples=x.numpy(), seed=seed, tag=str(tag), **timing)
    os.replace(tmp, path)


def accuracy(x: torch.Tensor, ref: Reference, num_classes: int | None) -> float | None:
    """The fraction of samples ref.classify judges to be of the class they were drawn for (y = i mod K, as
    draw_samples labels them); None where kuosan cannot judge this data."""
    if ref.classify is None or not num_classes:
        return None
    y = torch.arange(len(x)) % num_classes
    return float((ref.classify(x).cpu() == y).double().mean())


def _sweep(denoiser, shape, samplers, nfes, ref, out: Path, draw_kw: dict, log, tag: str | None = None,
           w: float | None = None, tuned: Callable[[str, int], Any] | None = None) -> tuple:
    """Every (sampler, NFE): samples (saved to out/samples/<sampler>-<nfe>[-w<w>].npz, and taken from there when
    a run with the same n, seed and checkpoint `tag` saved them: a killed eval resumes), their quality, class
    accuracy and timing; skipped combinations with the reason. draw_kw: seed, batch_size, device, num_classes.
    w: the classifier-free guidance scale of `denoiser` (None: no guidance), recorded in each row.
    tuned(method, nfe) -> (file, times) or None: the run's stored grid, used for a sampler named without options
    (as `kuosan sample` does)."""
    results, skipped, sheets = [], [], {}
    (out / "samples").mkdir(exist_ok=True)
    for sampler in samplers:
        try:
            method, options = parse_sampler(sampler)
        except ValueError as err:  # not a kuosan method, nor another tool's name with a kuosan equivalent
            skipped.append({"sampler": sampler, "nfe": None, "reason": str(err)})
            continue
        for nfe in nfes.get(sampler, nfes.get("*", ())) if isinstance(nfes, Mapping) else nfes:
            suffix = "" if w is None else f"-w{w:g}"
            path = out / "samples" / f"{file_stem(sampler)}-{nfe}{suffix}.npz"
            found = tuned(method, nfe) if tuned is not None and not options else None
            grid = None if found is None else str(found[0])
            saved = _saved(path, shape[0], draw_kw["seed"], tag if grid is None else f"{tag} grid={grid}")
            try:
                x, timing = saved or draw_samples(denoiser, shape, sampler, nfe, **draw_kw,
                                                  grid=None if found is None else found[1])
            except (ValueError, NotImplementedError) as err:
                skipped.append({"sampler": sampler, "nfe": nfe, "reason": str(err).splitlines()[0]})
                log(f"  {sampler:>14s} NFE {nfe:5d}: skipped ({err})")
                continue
            if not torch.isfinite(x).all():
                skipped.append({"sampler": sampler, "nfe": nfe, "reason": "samples are not finite"})
                continue
            if saved is None:
                _save(path, x, draw_kw["seed"], tag if grid is None else f"{tag} grid={grid}", timing)
            row = {"sampler": sampler if w is None else f"{sampler} w={w:g}", "method": sampler, "guidance": w,
                   "nfe": nfe, **timing, **quality(x, ref), "accuracy": accuracy(x, ref, draw_kw["num_classes"]),
                   "reused": saved is not None, "grid": grid}
            results.append(row)
            sheets.setdefault(row["sampler"], {})[nfe] = x[:16]
            note = (" (saved samples)" if saved is not None else "") + ("" if grid is None else f" (grid {grid})")
            acc = "" if row["accuracy"] is None else f"  acc {row['accuracy']:.3f}"
            log(f"  {row['sampler']:>14s} NFE {nfe:5d}: FD {row['fd']:.3f}  P {row['precision']:.2f}  "
                f"R {row['recall']:.2f}{acc}  {row['seconds_per_1000']:.1f} s/1000{note}")
    return results, skipped, sheets


def evaluate(
    denoiser: Any,
    ref: Reference,
    data_shape: tuple[int, ...],
    out: str | Path,
    samplers: Sequence[str] = ("dpmpp-2m", "ddim", "ddpm"),
    nfes: Sequence[int] | Mapping[str, Sequence[int]] = (5, 10, 20, 50, 1000),
    n: int = 1000,
    nll: bool = False,
    *,
    name: str = "model",
    meta: dict[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 1000,
    nll_n: int | None = None,
    device: torch.device | str = "cpu",
    num_classes: int | None = None,
    guided: Mapping[float, Any] | None = None,
    log: Callable[[str], None] = print,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    tuned: Callable[[str, int], Any] | None = None,
) -> dict[str, Any]:
    """Score `denoiser` against `ref` for every sampler and NFE, write report.md/json and figures into `out`.
    nfes: one list for every sampler, or {sampler: list} ("*": the list of samplers not named).
    guided: {w: the model under classifier-free guidance w} to score instead of `denoiser`, one set of rows per
    w, plus the trade-off of FD against class accuracy (Ho & Salimans 2022, arXiv:2207.12598, Fig. 2).
    decode: a latent run's decoder; data_shape is then the latents' and ref holds images.
    tuned(method, nfe) -> (file, times) or None: a run's stored grids (kuosan.tuned_grids.load_tuned)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    floor = quality(ref.heldout, ref)
    log(f"{name}: {len(ref.heldout)} held-out vs {len(ref.train)} training samples: FD {floor['fd']:.3f}")
    draw_kw = {"seed": seed, "batch_size": batch_size, "device": device, "num_classes": num_classes,
               "decode": decode}
    meta = meta or {}
    tag = None  # None: never reuse saved samples
    if "checkpoint" in meta:
        tag = f"{meta['checkpoint']} ema={meta.get('ema')} clip_x0={meta.get('clip_x0', 'none')}"
    results, skipped, sheets = [], [], {}
    for w, model in (guided.items() if guided else [(None, denoiser)]):
        if w is not None:
            log(f"guidance w = {w:g}")
        tag_w = None if tag is None else f"{tag} w={w}"
        res, skip, sheet = _sweep(model, (n, *data_shape), list(samplers), nfes, ref, out, draw_kw, log, tag_w, w,
                                    tuned)
        results += res
        skipped += [{**s, "guidance": w} for s in skip]
        sheets.update(sheet)
    report: dict[str, Any] = {
        "recipe": name, **meta, "n": n, "seed": seed, "features": ref.features_name,
        "reference": f"{len(ref.train)} training samples", "heldout": len(ref.heldout), "note": ref.note,
        "floor": floor, "results": results, "skipped": skipped, "machine": machine_info(device),
    }
    if results:
        report["plot"] = plot_metric_vs_nfe(results, out / "fd_vs_nfe.png", floor=floor["fd"],
                                            title=f"{name}, {n} samples").name
    if guided and any(r["accuracy"] is not None for r in results):
        report["judge"] = ref.classifier_name
        report["tradeoff_plot"] = plot_fd_vs_accuracy(results, out / "fd_vs_accuracy.png", floor=floor["fd"],
                                                      title=f"{name}, {n} samples").name
    report["sheets"] = {
        s: plot_sample_sheet(sheet, out / f"samples-{file_stem(s)}.png", title=f"{name}: {s}, rows = NFE").name
        for s, sheet in sheets.items()
    }
    if nll and num_classes:
        report["nll"] = {"skipped": "likelihoods are computed for unconditional models only"}
    elif nll and decode is not None:
        report["nll"] = {"skipped": "a latent run has no likelihood of the images (only a bound through the decoder)"}
    elif nll:
        from .nll import heldout_nll

        log("held-out likelihood ...")
        x = ref.heldout if nll_n is None else ref.heldout[:nll_n]
        report["nll"] = heldout_nll(denoiser, x, levels=ref.levels, seed=seed)
    report["machine"] = machine_info(device)  # the load at the end of the run
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out / "report.md")
    log(f"wrote {out / 'report.md'}, report.json and {len(report['sheets']) + bool(results)} figures")
    return report


def run_eval(
    checkpoint: str | Path,
    samplers: Sequence[str] = ("dpmpp-2m", "ddim", "ddpm"),
    nfes: Sequence[int] | Mapping[str, Sequence[int]] = (5, 10, 20, 50, 1000),
    n: int = 1000,
    nll: bool = False,
    out: str | Path | None = None,
    *,
    seed: int = 0,
    batch_size: int = 1000,
    nll_n: int | None = None,
    inception: str | Path | None = None,
    ema: bool = True,
    device: str = "auto",
    clip_x0: str | None = None,
    guidance: Sequence[float] | None = None,
    log: Callable[[str], None] = print,
    tuned: bool = True,
) -> dict[str, Any]:
    """`kuosan eval`: load a trained run and `evaluate` it into <run>/eval (or `out`); returns the report dict.
    tuned: a sampler named without options uses the run's stored grid for its NFE where there is one (kuosan
    tune-steps; a consistency or LCM student's own grids), as `kuosan sample` does.
    clip_x0: the x0 clipping of every sampler ("auto", "none", "clip", "dynamic"; default: the run's).
    guidance: classifier-free guidance scales to sweep (class-conditional runs; 0 = unconditional, 1 = conditional)."""
    from ..pipeline import load
    from ..tuned_grids import load_tuned

    pipe = load(checkpoint, ema=ema, device=device)
    denoiser, cfg, ckpt, dev = pipe.model(clip_x0=clip_x0), pipe.config, pipe.checkpoint, pipe.device
    data_shape = pipe.data_shape  # a latent run: the latents', and samples are decoded to pipe.image_shape
    ref = build_reference(cfg, pipe.image_shape, inception=inception, seed=seed, class_names=pipe.class_names)
    clip = clip_x0 or cfg.sample.clip_x0
    meta = {"checkpoint": str(ckpt.path), "step": ckpt.step, "ema": ema, "clip_x0": clip,
            "process": cfg.process.model_dump(mode="json")}
    guided = None if guidance is None else {float(w): pipe.model(w, clip_x0) for w in guidance}
    if guided:
        iv = cfg.sample.guidance_interval
        meta["guidance_interval"] = None if iv is None else list(iv)
    return evaluate(denoiser, ref, data_shape, out if out is not None else ckpt.path.parents[1] / "eval",
                    samplers, nfes, n, nll, name=f"{pipe.run_dir.name} (step {ckpt.step})", meta=meta, seed=seed,
                    batch_size=batch_size, nll_n=nll_n, device=dev, num_classes=ckpt.state.get("num_classes"),
                    guided=guided, log=log, decode=None if pipe.codec is None else pipe.decode,
                    tuned=functools.partial(load_tuned, pipe.run_dir) if tuned else None)
