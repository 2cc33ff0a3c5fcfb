"""benchmarks/latent_backbones.py: the four backbones really are of equal size, really are trained the same way
(the command lines differ in the network and lr only, and resolve to rectified flow / velocity / logit-normal
with label dropout 0.1), and the script runs end to end on a tiny autoencoder (slow)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kuosan.cli import resolve_recipe
from kuosan.config import load_config, parse_config
from kuosan.train import train_from_config

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "latent_backbones.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("latent_backbones", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_backbones_have_equal_parameter_counts_within_ten_percent(bench):
    counts = {name: bench.parameters(name) for name in bench.NETS}
    assert set(counts) == {"unet", "uvit", "dit", "mmdit"}
    mean = sum(counts.values()) / len(counts)
    assert all(abs(c - mean) <= 0.1 * mean for c in counts.values()), counts


def settings(args: list[str]) -> list[str]:
    """The --set values of a `kuosan train` command line."""
    return [args[i + 1] for i, a in enumerate(args) if a == "--set"]


def test_the_commands_differ_in_the_network_and_lr_only_and_pin_the_sd3_objective(bench, tmp_path):
    common = None
    for name in bench.NETS:
        args = bench.train_args(name, tmp_path / name, "runs/mnist-vae", 1500)
        sets = settings(args)
        rest = [s for s in sets if not s.startswith(("net=", "train.lr="))]
        assert common is None or rest == common
        common = rest
        cfg = load_config(resolve_recipe(args[1]), sets)
        assert cfg.net.kind == name
        assert cfg.process.kind == "rectified_flow" and cfg.prediction == "velocity"
        assert cfg.loss.weighting == "velocity" and cfg.loss.time_sampling == "logitnormal"
        assert cfg.objective.p_uncond == 0.1 and cfg.data.conditional and cfg.data.kind == "mnist"
        assert (cfg.train.steps, cfg.train.batch_size, cfg.train.threads) == (1500, 64, 1)
        assert cfg.train.lr == bench.LR[name]


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end_and_reuses_its_runs(tmp_path):
    torch.set_num_threads(1)
    ae = parse_config({"name": "ae", "out_dir": str(tmp_path / "ae"), "data": {"kind": "mnist"},
                       "net": {"kind": "autoencoder", "latent_channels": 4, "base_channels": 8,
                               "channel_mults": [1, 2, 2]},
                       "objective": {"kind": "autoencoder"},
                       "train": {"steps": 2, "batch_size": 16, "threads": 1, "progress": False,
                                 "tensorboard": False, "sample_every": 0}})
    train_from_config(ae, log=None)
    cmd = [sys.executable, str(SCRIPT), "--steps", "2", "--n", "20", "--out-dir", str(tmp_path / "bb"),
           "--autoencoder", str(tmp_path / "ae"), "--backbones", "unet,mmdit"]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "| unet | 542,836 |" in first and "| mmdit |" in first
    rows = json.loads((tmp_path / "bb" / "bb-results.json").read_text())
    assert rows["unet"]["steps"] == 2 and rows["unet"]["user_cpu_s"] > 0
    assert 0 <= rows["mmdit"]["scores"]["2.0"]["accuracy"] <= 1
    again = subprocess.run([*cmd, "--reuse"], capture_output=True, text=True, check=True).stdout
    assert "trained to step" not in again  # reused: nothing was trained again
    assert again.splitlines()[-2:] == first.splitlines()[-2:]
    with pytest.raises(subprocess.CalledProcessError):  # an existing run is never silently overwritten
        subprocess.run(cmd, capture_output=True, text=True, check=True)
