"""Checkpoints in safetensors + JSON, written atomically; nothing is ever unpickled.

    run_dir/checkpoints/latest                    the name of the newest complete checkpoint ("step-00001000")
    run_dir/checkpoints/step-00001000/
        weights.safetensors   the network's state_dict
        ema.safetensors       the EMA network's state_dict (what sampling uses)
        optimizer.safetensors the optimizer's tensors (AdamW moments and step counts)
        <name>.safetensors    any further module an objective keeps (e.g. target.safetensors: an EMA target)
        state.json            step, seed, EMA update count, optimizer hyper-parameters, the resolved run config

Each file is written to a temporary name and renamed (`os.replace`); the directory is complete before
`latest` is switched to it, so a crash at any moment leaves the previous checkpoint intact. The RNG state is
(seed, step): every step draws from generators seeded by them (see `kuosan.rng`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "find_checkpoint",
    "optimizer_state",
]

WEIGHTS, EMA_WEIGHTS, OPTIMIZER, STATE, LATEST = (
    "weights.safetensors",
    "ema.safetensors",
    "optimizer.safetensors",
    "state.json",
    "latest",
)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file and the checkpoint to fall back on."""


@dataclass
class Checkpoint:
    """What a checkpoint directory holds (optimizer tensors are read only on demand, see `optimizer_state`)."""

    path: Path
    step: int
    state: dict[str, Any]
    weights: dict[str, Tensor]
    ema: dict[str, Tensor] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    modules: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # further modules by name (targets, ...)

    @property
    def config(self) -> dict[str, Any] | None:
        return self.state.get("config")


# --- writing -------------------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) then rename tmp -> path, so readers only ever see a complete file; the file gets the
    permissions of a plainly created one (0666 minus the umask), whatever the writer used for tmp."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save_tensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(plain, str(tmp), metadata=metadata))


def _save_json(obj: Any, path: Path) -> None:
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=False), encoding="utf-8"))


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """torch optimizer state_dict -> ({"state.<param>.<name>": tensor}, JSON-able rest)."""
    tensors: dict[str, Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for i, per_param in sd["state"].items():
        for name, v in per_param.items():
            if torch.is_tensor(v):
                tensors[f"state.{i}.{name}"] = v
            else:
                other.setdefault(str(i), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "other": other}


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    weights: dict[str, Tensor],
    ema: dict[str, Tensor] | None,
    optimizer: dict[str, Any] | None,
    state: dict[str, Any],
    modules: dict[str, dict[str, Tensor]] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` under root (run_dir/checkpoints), point `latest` at it, prune to `keep`.
    `modules` are further state_dicts saved as <name>.safetensors (an objective's EMA target, ...)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final, tmp_dir = root / name, root / f".{name}.tmp-{os.getpid()}"
    try:
        _write_directory(tmp_dir, step, weights, ema, optimizer, state, modules or {})
        if final.exists():  # the same step saved again (e.g. interrupted right after a periodic save)
            trash = root / f".{name}.old-{os.getpid()}"
            os.replace(final, trash)
            shutil.rmtree(trash)
        os.replace(tmp_dir, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    _atomic(root / LATEST, lambda tmp: tmp.write_text(name + "\n", encoding="utf-8"))
    _prune(root, keep, name)
    return final


def _write_directory(
    d: Path,
    step: int,
    weights: dict[str, Tensor],
    ema: dict[str, Tensor] | None,
    optimizer: dict[str, Any] | None,
    state: dict[str, Any],
    modules: dict[str, dict[str, Tensor]],
) -> None:
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    meta = {"format": "pt", "step": str(step)}
    _save_tensors(weights, d / WEIGHTS, meta)
    if ema is not None:
        _save_tensors(ema, d / EMA_WEIGHTS, meta)
    for name, sd in modules.items():
        if f"{name}.safetensors" in (WEIGHTS, EMA_WEIGHTS, OPTIMIZER) or not name.isidentifier():
            raise ValueError(f"module name {name!r} is reserved or not an identifier")
        _save_tensors(sd, d / f"{name}.safetensors", meta)
    state = {**state, "step": step, "modules": sorted(modules)}
    if optimizer is not None:
        opt_tensors, opt_rest = _flatten_optimizer(optimizer)
        _save_tensors(opt_tensors, d / OPTIMIZER, meta)
        state["optimizer"] = opt_rest
    _save_json(state, d / STATE)


def _prune(root: Path, keep: int, newest: str) -> None:
    """Keep the `keep` newest checkpoints; remove leftovers of writes that were killed half-way."""
    steps = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name != newest)
    for old in steps[: max(0, len(steps) - (keep - 1))] + list(root.glob(".step-*")):
        shutil.rmtree(old, ignore_errors=True)


# --- reading -------------------------------------------------------------------------------------------
def find_checkpoint(path: str | Path) -> Path:
    """Resolve a run directory, its checkpoints/ directory, or a step directory to one checkpoint directory."""
    path = Path(path)
    for root in (path / "checkpoints", path):
        latest = root / LATEST
        if latest.is_file():
            found = root / latest.read_text(encoding="utf-8").strip()
            if not found.is_dir():
                raise CheckpointError(f"{latest} names {found.name}, which does not exist{_fallback(found)}")
            return found
    if (path / WEIGHTS).is_file() or (path / STATE).is_file():
        return path
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected a run directory (with checkpoints/latest), "
        f"a checkpoints/ directory, or a checkpoint directory holding {WEIGHTS}"
    )


def _fallback(ckpt: Path) -> str:
    """'; the previous checkpoint is ...' for an error about checkpoint directory `ckpt`, or what to do without one."""
    older = sorted(p for p in ckpt.parent.glob("step-*") if p.is_dir() and p.name < ckpt.name)
    if older:
        return (f"; the previous checkpoint {older[-1]} may be intact: use that path, or write "
                f"'{older[-1].name}' into {ckpt.parent / LATEST} to resume from it")
    return "; there is no earlier checkpoint in this run: retrain, or restore the file from a backup"


def _read(ckpt: Path, name: str, read: Callable[[Path], Any]) -> Any:
    """read(ckpt / name), turning a missing or corrupt file into one CheckpointError naming it."""
    f = ckpt / name
    try:
        return read(f)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {f} is missing{_fallback(ckpt)}") from None
    except Exception as err:  # safetensors, JSON and OS errors all mean the same thing here
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint file {f} is corrupt or truncated ({why}){_fallback(ckpt)}") from None


def _tensors(device: str | torch.device) -> Callable[[Path], dict[str, Tensor]]:
    return lambda f: load_file(str(f), device=str(device))


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Load weights, EMA weights, further modules and state of the checkpoint at `path` (see find_checkpoint);
    safetensors only. A missing or corrupt file raises CheckpointError naming it and the previous checkpoint."""
    ckpt = find_checkpoint(path)
    state = _read(ckpt, STATE, lambda f: json.loads(f.read_text(encoding="utf-8")))
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"checkpoint file {ckpt / STATE} holds no step{_fallback(ckpt)}")
    weights = _read(ckpt, WEIGHTS, _tensors(device))
    ema = _read(ckpt, EMA_WEIGHTS, _tensors(device)) if (ckpt / EMA_WEIGHTS).is_file() else None
    modules = {name: _read(ckpt, f"{name}.safetensors", _tensors(device)) for name in state.get("modules", [])}
    return Checkpoint(path=ckpt, step=int(state["step"]), state=state, weights=weights, ema=ema, modules=modules)


def optimizer_state(ckpt: Checkpoint, device: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The optimizer state_dict saved with `ckpt` (rebuilt from optimizer.safetensors + state.json), or None."""
    rest = ckpt.state.get("optimizer")
    if rest is None or not (ckpt.path / OPTIMIZER).is_file():
        return None
    state: dict[int, dict[str, Any]] = {}
    for key, v in _read(ckpt.path, OPTIMIZER, _tensors(device)).items():
        _, i, name = key.split(".", 2)
        state.setdefault(int(i), {})[name] = v
    for i, extra in rest.get("other", {}).items():
        state.setdefault(int(i), {}).update(extra)
    return {"state": state, "param_groups": rest["param_groups"]}
