"""torchrun with 2 CPU processes: DistributedDataParallel over gloo trains, rank 0 writes, the checkpoint loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

import kuosan
from kuosan.pipeline import generate
from kuosan.train import load_checkpoint


def test_torchrun_two_cpu_processes(tmp_path):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "ddp",
        "process": {"kind": "discretevp", "n": 100},
        "net": {"kind": "mlp", "hidden": 32, "depth": 2},
        "data": {"kind": "toy2d", "name": "8gaussians", "n": 1000},
        "train": {"steps": 8, "batch_size": 64, "ckpt_every": 4, "log_every": 2, "progress": False,
                  "device": "cpu"},
    }), encoding="utf-8")
    run_dir = tmp_path / "run"
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "kuosan", "train", str(cfg), "--out", str(run_dir)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("trained to step 8") == 1  # rank 0 alone reports
    ckpt = load_checkpoint(run_dir)
    assert ckpt.step == 8 and ckpt.state["world_size"] == 2
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6, 8]  # one writer
    assert not any(k.startswith("module.") for k in ckpt.weights)  # saved from the unwrapped network
    den = kuosan.load(run_dir, device="cpu").denoiser
    x = generate(den, (16, 2), method="ddim", nfe=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (16, 2) and torch.isfinite(x).all()
