"""A folder of PNG/JPEG images as one tensor: resize the shorter side, centre-crop, grey or RGB, [-1, 1].

    ds = ImageFolder("photos/", size=32, channels=3)        # every file decoded once, up front
    x, y = ds.tensors()                                      # float32 (N, 3, 32, 32) in [-1, 1], int64 labels
    ds[0]                                                    # (image, label), a torch Dataset too

A corrupt or unreadable file raises DataError naming it; with skip_bad=True it is skipped, counted in
`.n_skipped` and named in `.skipped`. Labels are the index of the first-level subfolder (sorted names in
`.classes`); images directly in root have label 0 and `.classes == []`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .errors import DataError

__all__ = ["IMAGE_SUFFIXES", "ImageFolder", "read_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One file -> uint8 (channels, size, size): shorter side resized to size (Lanczos), centre-cropped;
    transparency is composited on white. Any decoding failure raises DataError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
            im = im.convert("L" if channels == 1 else "RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.LANCZOS)
    left, top = (nw - size) // 2, (nh - size) // 2
    a = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


class ImageFolder(Dataset):
    """Every PNG/JPEG under root (recursively, sorted paths), decoded once into uint8 (N, C, size, size)."""

    def __init__(self, root: str | Path, size: int, channels: int = 1, skip_bad: bool = False):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB); got {channels}")
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels; got {size}")
        self.root, self.size, self.channels = Path(root), size, channels
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist or is not a folder")
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} images found under {self.root}")
        self.classes = sorted({p.relative_to(self.root).parts[0] for p in files if p.parent != self.root})
        index = {c: i for i, c in enumerate(self.classes)}
        images, labels, self.skipped = [], [], []
        for p in files:
            try:
                images.append(read_image(p, size, channels))
            except DataError:
                if not skip_bad:
                    raise
                self.skipped.append(str(p))
                continue
            parts = p.relative_to(self.root).parts
            labels.append(index[parts[0]] if len(parts) > 1 else 0)
        if not images:
            raise DataError(f"none of the {len(files)} images under {self.root} could be read: {self.skipped[:5]}")
        self.uint8 = torch.from_numpy(np.stack(images))  # (N, C, size, size)
        self.labels = torch.tensor(labels, dtype=torch.int64)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.uint8)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.uint8[i].float() / 127.5 - 1.0, self.labels[i]

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images as float32 (N, C, size, size) in [-1, 1] and their int64 labels."""
        return self.uint8.float() / 127.5 - 1.0, self.labels.clone()

    def __repr__(self) -> str:
        return (f"ImageFolder({str(self.root)!r}, n={len(self)}, size={self.size}, channels={self.channels}, "
                f"classes={len(self.classes)}, skipped={self.n_skipped})")
