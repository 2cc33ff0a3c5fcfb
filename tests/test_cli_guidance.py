"""`kuosan sample` / `kuosan eval` with classes and classifier-free guidance on a tiny conditional toy run, and the
messages for bad classes, guidance on an unconditional run and malformed flags."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli import invoke, toy_yaml

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(conditional run on the toy mixture's components, unconditional run), a few steps each."""
    tmp = tmp_path_factory.mktemp("guidance")
    cond_cfg = toy_yaml(tmp, name="gmm", conditional=True)
    assert invoke("train", cond_cfg, "--out", tmp / "cond", "--set", "objective.p_uncond=0.2").exit_code == 0
    plain = tmp / "plain"
    plain.mkdir()
    assert invoke("train", toy_yaml(plain), "--out", tmp / "uncond").exit_code == 0
    return tmp / "cond", tmp / "uncond"


def test_sample_every_class_with_guidance_writes_labels(runs, tmp_path):
    cond, _ = runs
    res = invoke("sample", cond, "--class", "all", "--n", "5", "--guidance", "2", "--method", "dpmpp-2m", "--nfe", "6",
                 "--guidance-interval", "0.1,20", "--guidance-rescale", "0.5", "--out", tmp_path / "g.png")
    assert res.exit_code == 0, res.output
    z = np.load(tmp_path / "g.npz")
    assert z["samples"].shape == (20, 2) and np.isfinite(z["samples"]).all()
    assert z["labels"].tolist() == [k for k in range(4) for _ in range(5)]  # one row per class
    assert float(z["guidance"]) == 2.0
    res = invoke("sample", cond, "--class", "1,3", "--n", "2", "--nfe", "4", "--out", tmp_path / "h.png")
    assert res.exit_code == 0 and np.load(tmp_path / "h.npz")["labels"].tolist() == [1, 1, 3, 3]


@pytest.mark.parametrize(("args", "message"), [
    (("--class", "7"), "label 7 is not a class of this run (0 .. 3)"),
    (("--class", "x"), "--class takes 'all' or class indices"),
    (("--guidance", "2", "--guidance-interval", "5"), "--guidance-interval takes two noise levels"),
    (("--guidance-rescale", "0.5"), "give a scale w too"),
    (("--guidance", "2", "--guidance-rescale", "3"), "guidance_rescale must lie in [0, 1]"),
])
def test_bad_classes_and_guidance_flags_are_named(runs, args, message):
    res = invoke("sample", runs[0], "--n", "2", "--nfe", "4", *args)
    assert res.exit_code != 0 and message in res.output, res.output


def test_guidance_on_an_unconditional_run_points_to_classifier_guidance(runs):
    _, uncond = runs
    res = invoke("sample", uncond, "--guidance", "3", "--n", "2", "--nfe", "4")
    assert res.exit_code != 0 and "unconditional run" in res.output and "classifier guidance" in res.output
    res = invoke("sample", uncond, "--class", "3", "--n", "2", "--nfe", "4")
    assert res.exit_code != 0 and "class-conditional run" in res.output
    res = invoke("eval", uncond, "--guidance", "0,2", "--samplers", "ddim", "--nfe", "4", "--n", "20")
    assert res.exit_code != 0 and "unconditional run" in res.output


def test_eval_guidance_sweep_writes_accuracy_rows(runs, tmp_path):
    cond, _ = runs
    res = invoke("eval", cond, "--guidance", "0,2", "--samplers", "ddim", "--nfe", "4", "--n", "40",
                 "--out", tmp_path / "ev")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert [(r["guidance"], r["nfe"]) for r in report["results"]] == [(0.0, 4), (2.0, 4)]
    assert all(0 <= r["accuracy"] <= 1 for r in report["results"])
    assert (tmp_path / "ev" / "fd_vs_accuracy.png").exists()
    assert "acc" in res.output


def test_the_runs_guidance_interval_is_the_default(runs):
    """sample.guidance_interval applies whenever the run is guided and no interval is given; None guides everywhere;
    unguided sampling ignores it."""
    import kuosan

    pipe = kuosan.load(runs[0], device="cpu")
    assert pipe.model(2.0).guidance_interval is None  # the toy recipe sets none
    pipe.config = pipe.config.model_copy(
        update={"sample": pipe.config.sample.model_copy(update={"guidance_interval": (0.1, 5.0)})})
    assert pipe.model(2.0).guidance_interval == (0.1, 5.0)
    assert pipe.model(2.0, guidance_interval=None).guidance_interval is None
    assert pipe.model(2.0, guidance_interval=(0.5, 1.0)).guidance_interval == (0.5, 1.0)
    assert pipe.model(None).guidance is None and pipe.model(None).guidance_interval is None
