"""A folder of PNG/JPEG images as one tensor: size and grey/RGB read from the files, odd ones reported, [-1, 1].

    ds = ImageFolder("photos/")                    # size and channels inferred; every file decoded once, up front
    print(ds.summary())                            # what was found, used, skipped and converted
    x, y = ds.tensors()                            # float32 (N, C, size, size) in [-1, 1], int64 labels
    ds[0]                                          # (image, label), a torch Dataset too

Inferred (size=None / channels=None): channels is 1 when every file is grey (L, LA, I, 1 or a grey palette),
else 3; size is the common square size. Files of another size or grey/colour kind than the majority raise
DataError naming them; with skip_bad=True they are skipped. Given size / channels: every file is resized
(shorter side, Lanczos) and centre-cropped / converted. Every file whose size or mode is not the result's
(L or RGB; transparency is composited on white) is listed in `.converted`.
A corrupt or unreadable file raises DataError naming it; with skip_bad=True it is skipped. `.skipped` and
`.converted` are lists of (path, reason). Labels are the index of the first-level subfolder (sorted names in
`.classes`, `num_classes`); images directly in root have label 0, `.classes == []` and `num_classes is None`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .errors import DataError

__all__ = ["IMAGE_SUFFIXES", "ImageFolder", "ImageInfo", "image_info", "read_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LISTED = 5  # files named in an error or a summary before "... and N more"
_T = TypeVar("_T")


def _decode_errors() -> tuple[type[Exception], ...]:
    """What PIL raises for a corrupt, truncated, unidentifiable or oversized file."""
    from PIL import Image

    return OSError, SyntaxError, ValueError, Image.DecompressionBombError


@dataclass(frozen=True)
class ImageInfo:
    """A file's header: PIL mode, width, height and whether it is grey (L, LA, I, F, 1 or a grey palette)."""

    mode: str
    width: int
    height: int
    grey: bool

    def __str__(self) -> str:
        return f"{self.mode} {self.width}x{self.height}"


def image_info(path: Path) -> ImageInfo:
    """The header of one image file (no pixels decoded); an unreadable file raises PIL's own error."""
    from PIL import Image

    with Image.open(path) as im:
        grey = Image.getmodebase(im.mode) == "L"
        if im.mode in ("P", "PA"):
            palette = im.getpalette("RGB") or []
            grey = palette[0::3] == palette[1::3] == palette[2::3]
        return ImageInfo(im.mode, im.width, im.height, grey)


def _decode(path: Path, size: int, channels: int) -> np.ndarray:
    """read_image without the DataError wrapping: PIL's errors pass through."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode.startswith("I;16"):  # 16-bit grey: keep the top 8 bits (convert("L") would clip at 255)
            im = Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8), mode="L")
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
        im = im.convert("L" if channels == 1 else "RGB")
    w, h = im.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.Resampling.LANCZOS)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One file -> uint8 (channels, size, size): shorter side resized to size (Lanczos), centre-cropped;
    transparency is composited on white. Any decoding failure raises DataError naming the file."""
    try:
        return _decode(Path(path), size, channels)
    except _decode_errors() as err:
        raise DataError(f"cannot read image {path}: {err}; pass --skip-bad (data.skip_bad: true) to skip "
                        "unreadable files") from err


def _reason(err: Exception) -> str:
    from PIL import UnidentifiedImageError

    return "not an image PIL can identify" if isinstance(err, UnidentifiedImageError) else str(err) or repr(err)


def _listing(items: list[tuple[str, str]], indent: str = "  ") -> str:
    """The first few (path, reason) pairs, one an indented line, then "... and N more"."""
    lines = [f"{indent}{p}: {why}" for p, why in items[:_LISTED]]
    return "\n".join(lines + ([f"{indent}... and {len(items) - _LISTED} more"] if len(items) > _LISTED else []))


def _unusable(root: Path, n: int, unreadable: list[tuple[str, str]], odd: list[tuple[str, str]]) -> DataError:
    """One error naming every unreadable file and every file unlike the rest, with what to do about each."""
    lines = [f"cannot use {len(unreadable) + len(odd)} of the {n} image files under {root}:"]
    if unreadable:
        lines += [f"unreadable ({len(unreadable)}):", _listing(unreadable)]
    if odd:
        lines += [f"unlike the rest ({len(odd)}); set data.size / data.channels explicitly to resize and convert "
                  "them:", _listing(odd)]
    lines.append("fix or remove them, or pass --skip-bad (data.skip_bad: true) to leave them out")
    return DataError("\n".join(lines))


def _majority(values: list[_T], what: str, root: Path, hint: str, show: Callable[[_T], str] = str) -> _T:
    """The value more than half of the files share; none is a DataError (skipping could not fix that)."""
    counts = Counter(values)
    value, count = counts.most_common(1)[0]
    if 2 * count <= len(values):
        found = ", ".join(f"{show(v)}: {c}" for v, c in counts.most_common(_LISTED))
        raise DataError(f"the {len(values)} images under {root} have no common {what} ({found}"
                        f"{', ...' if len(counts) > _LISTED else ''}); {hint}")
    return value


def _infer(infos: dict[Path, ImageInfo], size: int | None, channels: int | None, root: Path):
    """(size, channels, files that disagree with the inferred ones as (path, reason))."""
    want, size_given = [], size is not None  # want: what the majority is, for the reasons
    if size is None:
        w, h = _majority([(i.width, i.height) for i in infos.values()], "size", root,
                         "set data.size explicitly to resize them all (shorter side) and centre-crop",
                         show=lambda wh: f"{wh[0]}x{wh[1]}")
        if w != h:
            raise DataError(f"the images under {root} are {w}x{h}, not square: set data.size explicitly "
                            f"(e.g. {min(w, h)}) to resize the shorter side and centre-crop")
        size = w
        want.append(f"{w}x{h}")
    if channels is None:
        grey = _majority([i.grey for i in infos.values()], "kind (grey or colour)", root,
                         "set data.channels explicitly (1 grey, 3 RGB) to convert them all",
                         show=lambda g: "grey" if g else "colour")
        want.insert(0, "grey" if grey else "colour")
    odd = [(str(p), f"{i}, not {' '.join(want)} like the rest") for p, i in infos.items()
           if (not size_given and (i.width, i.height) != (size, size)) or (channels is None and i.grey != grey)]
    if channels is None:
        channels = 1 if grey else 3
    return size, channels, odd


class ImageFolder(Dataset):
    """Every PNG/JPEG under root (recursively, sorted paths), decoded once into uint8 (N, C, size, size)."""

    def __init__(self, root: str | Path, size: int | None = None, channels: int | None = None,
                 skip_bad: bool = False):
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 (grey), 3 (RGB) or None (inferred); got {channels}")
        if size is not None and size < 1:
            raise ValueError(f"size must be a positive number of pixels or None (inferred); got {size}")
        self.root, self.skip_bad = Path(root), skip_bad
        self.size_given, self.channels_given = size is not None, channels is not None
        found = self._find()
        self.n_found = len(found)
        self.classes = sorted({p.relative_to(self.root).parts[0] for p in found if p.parent != self.root})
        self.skipped: list[tuple[str, str]] = []  # (path, why)
        infos, unreadable = self._headers(found)
        self.size, self.channels, odd = _infer(infos, size, channels, self.root)
        if (unreadable or odd) and not skip_bad:
            raise _unusable(self.root, self.n_found, unreadable, odd)
        self.skipped += unreadable + odd
        if odd:
            odd_paths = {p for p, _ in odd}
            infos = {p: i for p, i in infos.items() if str(p) not in odd_paths}
        target = ImageInfo("L" if self.channels == 1 else "RGB", self.size, self.size, self.channels == 1)
        self.converted = [(str(p), f"{i} -> {target}") for p, i in infos.items()  # resized, or another mode
                          if (i.mode, i.width, i.height) != (target.mode, target.width, target.height)]
        self._decode_all(list(infos))
        self.skipped.sort()
        used = set(self.files)
        self.converted = [(p, why) for p, why in self.converted if p in used]

    def _find(self) -> list[Path]:
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist or is not a folder")
        files = sorted(p for p in self.root.rglob("*") if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            others = Counter(p.suffix.lower() or "(no suffix)" for p in files)
            seen = f" (found {', '.join(f'{s}: {n}' for s, n in others.most_common(_LISTED))})" if others else ""
            raise DataError(f"no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} images found under "
                            f"{self.root}{seen}")
        return images

    def _headers(self, files: list[Path]) -> tuple[dict[Path, ImageInfo], list[tuple[str, str]]]:
        """Each readable file's header, and the unreadable files as (path, why)."""
        infos, bad = {}, []
        for p in files:
            try:
                infos[p] = image_info(p)
            except _decode_errors() as err:
                bad.append((str(p), _reason(err)))
        if not infos:
            raise DataError(f"none of the {len(files)} images under {self.root} could be read:\n{_listing(bad)}")
        return infos, bad

    def _decode_all(self, files: list[Path]) -> None:
        index = {c: i for i, c in enumerate(self.classes)}
        images, labels, self.files, bad = [], [], [], []
        for p in files:
            try:
                images.append(_decode(p, self.size, self.channels))
            except _decode_errors() as err:
                bad.append((str(p), _reason(err)))
                continue
            parts = p.relative_to(self.root).parts
            labels.append(index[parts[0]] if len(parts) > 1 else 0)
            self.files.append(str(p))
        if bad and not self.skip_bad:
            raise _unusable(self.root, self.n_found, bad, [])
        self.skipped += bad
        if not images:
            raise DataError(f"none of the {self.n_found} images under {self.root} could be read:\n"
                            f"{_listing(self.skipped)}")
        self.uint8 = torch.from_numpy(np.stack(images))  # (N, C, size, size)
        self.labels = torch.tensor(labels, dtype=torch.int64)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    @property
    def num_classes(self) -> int | None:
        """The number of first-level subfolders (labels 0..num_classes-1), None when all images lie in root."""
        return len(self.classes) or None

    def __len__(self) -> int:
        return len(self.uint8)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.uint8[i].float() / 127.5 - 1.0, self.labels[i]

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images as float32 (N, C, size, size) in [-1, 1] and their int64 labels."""
        return self.uint8.float() / 127.5 - 1.0, self.labels.clone()

    def summary(self) -> str:
        """A few lines for the start of training: what was found, used, skipped and converted."""
        def how(given: bool) -> str:
            return "given" if given else "inferred"

        lines = [
            f"image folder {self.root}: {self.n_found} image files found, {len(self)} used",
            f"  size {self.size}x{self.size} ({how(self.size_given)}), channels {self.channels} "
            f"({'grey' if self.channels == 1 else 'RGB'}, {how(self.channels_given)})",
        ]
        if self.classes:
            counts = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
            few = len(self.classes) <= 20
            named = [f"{c}: {n}" if few else c for c, n in zip(self.classes, counts, strict=True)][:20]
            lines.append(f"  classes: {len(self.classes)} ({', '.join(named)}{'' if few else ', ...'})")
        else:
            lines.append("  classes: none (no subfolders; every label is 0)")
        for name, items in (("skipped", self.skipped), ("converted", self.converted)):
            head = f"  {name}: {len(items)} file{'' if len(items) == 1 else 's'}"
            if len(items) > _LISTED and name == "converted":  # many: how many of each kind
                kinds = Counter(why for _, why in items).most_common()
                lines.append(f"{head} ({', '.join(f'{why}: {n}' for why, n in kinds[:_LISTED])}"
                             f"{', ...' if len(kinds) > _LISTED else ''})")
            else:
                lines += [head + (":" if items else "")] + ([_listing(items, indent="    ")] if items else [])
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"ImageFolder({str(self.root)!r}, n={len(self)}, size={self.size}, channels={self.channels}, "
                f"classes={len(self.classes)}, skipped={self.n_skipped}, converted={len(self.converted)})")
