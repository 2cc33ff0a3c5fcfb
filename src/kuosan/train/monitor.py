"""What a run reports while it trains: a progress bar (loss, it/s, ETA), metrics.jsonl and TensorBoard."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

__all__ = ["Monitor"]


def _truncate_after(path: Path, step: int) -> None:
    """Drop the records after `step` (written by a run killed after its last checkpoint and now resumed from it),
    so metrics.jsonl holds each step once."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = [ln for ln in lines if _step_of(ln) <= step]
    if len(keep) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(keep), encoding="utf-8")
        tmp.replace(path)


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except (ValueError, AttributeError):
        return math.inf  # a line cut off by the kill


class Monitor:
    """Per-step bookkeeping on rank 0; a no-op elsewhere. Every `log_every` steps one metrics.jsonl line
    {"step", "loss", "lr", "grad_norm", "samples_per_s", "elapsed_s"} is written (loss = mean over the window)."""

    def __init__(
        self,
        run_dir: Path,
        total: int,
        start: int,
        *,
        enabled: bool = True,
        log_every: int = 50,
        batch_size: int = 1,
        progress: bool = True,
        tensorboard: bool = True,
    ):
        self.enabled, self.log_every, self.batch_size = enabled, log_every, batch_size
        self._window: list[float] = []
        self._t0 = self._t_log = time.perf_counter()
        self._n_log = 0
        self.bar = self.tb = None
        self._jsonl = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        _truncate_after(run_dir / "metrics.jsonl", start)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=run_dir.name, unit="step", dynamic_ncols=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1 if start else None)

    def step(self, step: int, loss: float, lr: float, grad_norm: float) -> None:
        """Record completed step `step` (1-based)."""
        if not self.enabled:
            return
        self._window.append(loss)
        self._n_log += 1
        if self.bar is not None:
            self.bar.update(1)
        if step % self.log_every == 0:
            self._flush(step, lr, grad_norm)

    def _flush(self, step: int, lr: float, grad_norm: float) -> None:
        now = time.perf_counter()
        rec = {
            "step": step,
            "loss": math.fsum(self._window) / len(self._window),
            "lr": lr,
            "grad_norm": grad_norm,
            "samples_per_s": self._n_log * self.batch_size / max(now - self._t_log, 1e-9),
            "elapsed_s": now - self._t0,
        }
        self._window, self._n_log, self._t_log = [], 0, now
        self.log(rec)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{rec['loss']:.4f}", refresh=False)

    def log(self, rec: dict[str, Any]) -> None:
        """Write one record (with a "step") to metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        self._jsonl.write(json.dumps(rec) + "\n")
        self._jsonl.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, rec["step"])

    def write(self, msg: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
