"""Time grids tuned to a run's model (kuosan.samplers.optimize_grid: LD3, Tong et al. 2024, arXiv:2405.15506),
stored in the run as <run>/grids/<method>-<nfe>.json and used by `kuosan sample` for that (method, nfe).

    kuosan tune-steps runs/digits-ddpm --method dpmpp-2m --nfe 10 --n-calib 256
    kuosan sample runs/digits-ddpm --method dpmpp-2m --nfe 10          # uses grids/dpmpp-2m-10.json
    kuosan sample runs/digits-ddpm --method dpmpp-2m --nfe 10 --grid default
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["grid_path", "save_grid", "tune_run", "load_tuned"]


def grid_path(run_dir: Path, method: str, nfe: int) -> Path:
    return Path(run_dir) / "grids" / f"{method}-{nfe}.json"


def save_grid(run_dir: Path, method: str, nfe: int, record: dict[str, Any]) -> Path:
    """Store a grid record ({"times": [...], ...}) as <run>/grids/<method>-<nfe>.json, atomically (a temporary file,
    then a rename), for load_tuned; returns the path."""
    path = grid_path(run_dir, method, nfe)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return path


def _rms(x: Tensor, ref: Tensor) -> float:
    return (x.double() - ref.double()).square().mean().sqrt().item()


def tune_run(pipe, method: str, nfe: int, n_calib: int = 256, *, seed: int = 0, ref_tol: float = 1e-6,
             steps: int = 1000) -> tuple[Path, dict[str, Any]]:
    """Fit a grid for (method, nfe) on n_calib prior draws of the run's model (the classes in turn for a
    conditional run; the run's x0 clipping, no guidance) against rk45 at rtol = atol = ref_tol; store it."""
    from .samplers import METHODS, sample
    from .samplers.grid import default_grid, make_ts
    from .samplers.tune import grid_steps, optimize_grid, reference_endpoints

    if n_calib < 1:
        raise ValueError(f"--n-calib must be at least 1; got {n_calib}")
    den = pipe.model()
    g = torch.Generator(pipe.device).manual_seed(seed)
    x_T = den.process.prior_sample((n_calib, *pipe.data_shape), generator=g, dtype=torch.float32, device=pipe.device)
    y = pipe.labels(n_calib, None)
    cond = None if y is None else {"y": y}
    t0 = time.perf_counter()
    with torch.no_grad():
        default = sample(den, x_T, method, nfe, cond=cond)
        p = den.process
        ts0, _ = make_ts(p, default_grid(p, METHODS[method].grids), grid_steps(method, nfe))
        ref = reference_endpoints(den, x_T, ts0[0].item(), ts0[-1].item(), cond=cond, tol=ref_tol)
        ts = optimize_grid(den, method, nfe, x_T, cond=cond, reference=ref, steps=steps)
        tuned = sample(den, x_T, method, nfe, grid=ts, cond=cond)
    record = {"method": method, "nfe": nfe, "times": ts.tolist(), "n_calib": n_calib, "seed": seed,
              "reference": f"rk45 rtol=atol={ref_tol:g}", "rms_default": _rms(default, ref),
              "rms_tuned": _rms(tuned, ref), "step": pipe.step, "fit_seconds": round(time.perf_counter() - t0, 1),
              "paper": "LD3 (Tong et al. 2024, arXiv:2405.15506), fitted by Nelder-Mead over log-SNR increments"}
    return save_grid(pipe.run_dir, method, nfe, record), record


def load_tuned(run_dir: Path, method: str, nfe: int) -> tuple[Path, Tensor] | None:
    """The stored tuned grid of (method, nfe) in the run, if any: (its file, the descending float64 times)."""
    path = grid_path(run_dir, method, nfe)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        ts = torch.tensor(record["times"], dtype=torch.float64)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a tuned grid ({err}); remove it or rerun kuosan tune-steps") from None
    if record.get("method") != method or record.get("nfe") != nfe or ts.ndim != 1 or len(ts) < 2 \
            or not bool((ts[1:] < ts[:-1]).all()) or not all(map(math.isfinite, ts.tolist())):
        raise ValueError(f"{path}: field 'times' is not a descending grid for {method} at {nfe} NFE; rerun tune-steps")
    return path, ts
