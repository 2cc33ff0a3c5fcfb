"""Files for `kuosan edit`: inputs (an image, a folder of images, an .npy/.npz array), masks (an image, an .npy,
or a preset), and the outputs (a PNG grid of inputs | masks | results and an .npz).

    x = read_inputs("digit.png", (1, 8, 8))            # (N, C, H, W) float32 in [-1, 1]
    m = read_mask("top-half", (1, 8, 8))               # (1, 1, H, W), 1 = known (the top half is kept)
    png, npz, out = edit_run("runs/digits-ddpm", "inpaint", "digits.npz", mask="top-half")
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data import IMAGE_SUFFIXES, DataError, ImageFolder, load_array, read_image

__all__ = ["MASK_PRESETS", "read_inputs", "read_mask", "edit_run", "edit_grid"]


def _half(side: str, h: int, w: int) -> Tensor:
    """1 on the named half (known, kept), 0 on the other (filled)."""
    m = torch.zeros(h, w)
    {"top": lambda: m[: h // 2].fill_(1), "bottom": lambda: m[h - h // 2 :].fill_(1),
     "left": lambda: m[:, : w // 2].fill_(1), "right": lambda: m[:, w - w // 2 :].fill_(1)}[side]()
    return m


MASK_PRESETS = {f"{s}-half": s for s in ("top", "bottom", "left", "right")}  # the half that is known (kept)


def _image(path: Path, data_shape: tuple[int, ...]) -> Tensor:
    c, h, w = data_shape
    if h != w:
        raise ValueError(f"image files need a square run resolution; this run's data is {data_shape}")
    return torch.from_numpy(np.array(read_image(path, h, c))).float() / 127.5 - 1.0


def read_inputs(path: str | Path, data_shape: tuple[int, ...]) -> Tensor:
    """(N, *data_shape) in [-1, 1] from an image file, a folder of images (resized as `data.size` does) or an
    .npy/.npz array (an .npz's `samples`, else its only array, else `x`)."""
    path = Path(path)
    if path.is_dir():
        if len(data_shape) != 3:
            raise ValueError(f"a folder of images needs an image run; this run's data is {data_shape}")
        folder = ImageFolder(path, size=data_shape[-1], channels=data_shape[0])
        x, _ = folder.tensors()
        if folder.converted:  # say so: a 28x28 digit edited by an 8x8 run is first shrunk to 8x8
            first, why = folder.converted[0]
            print(f"{len(folder.converted)} of {len(x)} input images were converted to the run's data shape "
                  f"{tuple(data_shape)} (e.g. {first}: {why})", file=sys.stderr)
        return x
    if path.suffix.lower() in (".npy", ".npz"):
        key = None
        if path.suffix.lower() == ".npz" and path.is_file():
            with np.load(path, allow_pickle=False) as data:
                key = "samples" if "samples" in data else None
        return load_array(path, key=key)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if len(data_shape) != 3:
            raise ValueError(f"an image file needs an image run; this run's data is {data_shape}")
        return _image(path, data_shape)[None]
    raise DataError(f"{path}: an input must be an image ({', '.join(IMAGE_SUFFIXES)}), a folder of them, or an "
                    ".npy/.npz array")


def read_mask(spec: str | Path, data_shape: tuple[int, ...]) -> Tensor:
    """A mask (1 = known, kept) from a preset name (top-half, bottom-half, left-half, right-half: the half
    that is kept), an image file (white = known, threshold at mid-grey) or an .npy array of 0/1."""
    spec = str(spec)
    if spec in MASK_PRESETS:
        if len(data_shape) != 3:
            raise ValueError(f"mask preset {spec!r} needs image data; this run's data is {data_shape}")
        return _half(MASK_PRESETS[spec], *data_shape[1:])[None, None]
    path = Path(spec)
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise DataError(f"mask file {path} does not exist")
        return torch.from_numpy(np.load(path, allow_pickle=False)).float()
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if len(data_shape) != 3:
            raise ValueError(f"a mask image needs image data; this run's data is {data_shape}")
        return (_image(path, (1, *data_shape[1:])) > 0).float()[None]
    raise ValueError(f"--mask takes a preset ({', '.join(MASK_PRESETS)}), an image file or an .npy; got {spec!r}")


def edit_grid(inputs: Tensor, results: Tensor, mask: Tensor | None) -> tuple[Tensor, int]:
    """(images, images per row): per input a group [input, mask shown white = known, result], 8 groups a row."""
    parts = [inputs]
    if mask is not None:
        m = mask.expand(inputs.shape).to(inputs)
        parts.append(m * 2 - 1)
    parts.append(results)
    k = len(parts)
    groups = torch.stack(parts, 1).reshape(-1, *inputs.shape[1:])
    return groups, k * min(8, len(inputs))


def edit_run(run: str | Path, mode: str, inputs: str | Path, *, strength: float = 0.6, mask: str | None = None,
             method: str | None = None, nfe: int | None = None, seed: int = 0, out_path: str | Path | None = None,
             labels: list[int] | None = None, guidance: float | None = None, resample: int = 1, jump: int = 10,
             device: str = "auto", ema: bool = True, reconstruction: float = 0.0) -> tuple[Path, Path, Tensor]:
    """Load a run, edit the inputs (mode "img2img" or "inpaint"), write the PNG grid and the .npz (samples,
    inputs, mask); returns (png, npz, results)."""
    from .eval.evaluate import parse_sampler
    from .pictures import save_grid, save_npz
    from .pipeline import load

    pipe = load(run, ema=ema, device=device)
    spec = method or pipe.config.sample.method
    name, options = parse_sampler(spec)
    nfe = nfe or pipe.config.sample.nfe
    x = read_inputs(inputs, pipe.image_shape)
    extra: dict[str, Any] = {}
    if mode == "img2img":
        y = pipe.img2img(x, strength, name, nfe, seed=seed, labels=labels, guidance=guidance, **options)
        m, tag = None, f"s{strength:g}"
    elif mode == "inpaint":
        if mask is None:
            raise ValueError("--inpaint needs --mask (a preset like top-half, an image file or an .npy)")
        m = read_mask(mask, pipe.image_shape)
        y = pipe.inpaint(x, m, name, nfe, seed=seed, resample=resample, jump=jump, labels=labels,
                         guidance=guidance, reconstruction=reconstruction, **options)
        m = m.expand(x.shape).to(x)
        extra["mask"] = m.cpu().numpy()
        tag = Path(str(mask)).stem + (f"-r{resample}j{jump}" if resample > 1 else "")
        tag += f"-rg{reconstruction:g}" if reconstruction else ""
    else:
        raise ValueError(f"mode must be img2img or inpaint; got {mode!r}")
    stem = f"edit-{mode}-{tag}-{spec.replace(':', '_').replace('=', '')}-{nfe}"
    png = Path(out_path) if out_path else pipe.run_dir / f"{stem}.png"
    if x.ndim == 4:
        grid, nrow = edit_grid(x, y.cpu(), m)
        save_grid(grid, png, nrow=nrow)
    else:
        from .pictures import save_samples

        save_samples(y, png, reference=x, title=f"{pipe.run_dir.name}: {mode}")
    ys = pipe.labels(len(x), labels)
    if ys is not None:
        extra["labels"] = ys.cpu().numpy()
    npz = save_npz(y, png.with_suffix(".npz"), inputs=x.cpu().numpy(), method=spec, nfe=nfe, seed=seed,
                   strength=strength if mode == "img2img" else float("nan"), step=pipe.step, **extra)
    return png, npz, y
