"""`kuosan sample DIR` for a local diffusers directory (UNet2DModel + scheduler config): kuosan's samplers on
`from_diffusers(DIR)`, written as a PNG grid and an .npz like a run's samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .diffusers_import import SCHEDULER_FILES, from_diffusers

__all__ = ["is_diffusers_dir", "sample_diffusers"]

DEFAULTS = {"method": "dpmpp-2m", "nfe": 20, "n": 16}


def is_diffusers_dir(path: str | Path) -> bool:
    """A directory with a diffusers scheduler config and no kuosan checkpoints."""
    p = Path(path)
    return p.is_dir() and not (p / "checkpoints").exists() and not (p / "state.json").exists() and any(
        (p / name).is_file() for name in SCHEDULER_FILES)


def _labels(classes: str | None, n: int, k: int | None) -> Tensor | None:
    """(n,) labels for a num_class_embeds model: the classes in turn, or those of --class (all | 3 | 1,2)."""
    if k is None:
        if classes is not None:
            raise ValueError("--class: this diffusers UNet2DModel has no class embedding")
        return None
    wanted = list(range(k)) if classes in (None, "all") else [int(c) for c in classes.split(",") if c.strip()]
    bad = [c for c in wanted if not 0 <= c < k]
    if bad or not wanted:
        raise ValueError(f"--class {classes!r}: classes are 0 .. {k - 1}")
    return torch.tensor(wanted).repeat_interleave((n + len(wanted) - 1) // len(wanted))[:n]


def sample_diffusers(path: str | Path, method: str | None = None, nfe: int | None = None, seed: int = 0,
                     n: int | None = None, out_path: str | Path | None = None, device: str = "auto", *,
                     classes: str | None = None, title: str | None = None,
                     **unsupported: Any) -> tuple[Path, Path, Tensor]:
    """Sample the diffusers model at `path` with a kuosan sampler spec ("dpmpp-2m", "ddim:eta=1.0"); returns
    (png, npz, samples). Guidance, classifiers, control images and clip overrides are run options it lacks."""
    from ..devices import pick_device
    from ..eval.evaluate import parse_sampler
    from ..pictures import save_npz, save_samples
    from ..samplers import sample

    given = sorted(k for k, v in unsupported.items() if v not in (None, "run", 0.0))
    if given:
        raise ValueError(f"{', '.join(given)}: not available for a diffusers directory; use kuosan.from_diffusers "
                         "in Python (docs/interop.md)")
    dev = pick_device(device)
    model = from_diffusers(path, device=dev)
    cfg = model.net.unet.config
    side = cfg.sample_size if isinstance(cfg.sample_size, (tuple, list)) else (cfg.sample_size, cfg.sample_size)
    spec = method or DEFAULTS["method"]
    name, options = parse_sampler(spec)
    nfe, n = nfe or DEFAULTS["nfe"], n or DEFAULTS["n"]
    y = _labels(classes, n, cfg.num_class_embeds)
    g = torch.Generator(dev).manual_seed(seed)
    x_T = model.process.prior_sample((n, cfg.in_channels, *side), generator=g, dtype=torch.float32, device=dev)
    with torch.no_grad():
        x = sample(model, x_T, name, nfe, generator=g, cond=None if y is None else {"y": y.to(dev)}, **options)
    png = Path(out_path) if out_path else Path(path) / f"samples-{spec.replace(':', '_').replace('=', '')}-{nfe}.png"
    save_samples(x, png, title=title or f"{Path(path).name}: {spec}, {nfe} NFE (diffusers)")
    extra = {} if y is None else {"labels": y.numpy()}
    npz = save_npz(x, png.with_suffix(".npz"), method=spec, nfe=nfe, seed=seed, **extra)
    return png, npz, x
