"""Classifier guidance (Dhariwal & Nichol 2021, arXiv:2105.05233, Alg. 2) proved against exact class-conditional
Gaussian mixtures, the noise-conditional classifier's training, its loader and the CLI.

The oracle (tests/test_guidance.py): class y has its own mixture p(x | y), the marginal is p(x) = sum_y p(y) p(x | y).
The exact classifier is log p(y | x_t) = log p(y) + log p_t(x_t | y) - log p_t(x_t), so grad log p(y | x_t) =
score_t(x_t | y) - score_t(x_t) and classifier guidance of the exact unconditional model at scale s is
eps_u - s sigma (score_c - score_u) = eps_u + s (eps_c - eps_u): classifier-free guidance at w = s.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import F64, interior_times, make_process
from test_guidance import NULL, NUM_CLASSES, P_Y, assert_close, class_fn, class_mixtures, noised
from torch import Tensor
from typer.testing import CliRunner

import kuosan
from kuosan import Denoiser
from kuosan.cli import app
from kuosan.config import ConfigError, load_config
from kuosan.guidance import NoisyClassifier, classifier_guided
from kuosan.nets import Classifier, build_net
from kuosan.processes import VP, DiscreteVP, Process
from kuosan.registry import Dataset
from kuosan.train.classifier import ClassifierObjective, build_classifier_objective

pytestmark = pytest.mark.usefixtures("one_thread")

PROCS = ("VP", "DiscreteVP.linear", "EDM", "VE", "SubVP", "RectifiedFlow")
SCALES = (0.0, 1.0, 2.5)


def exact_log_prob(proc: Process):
    """log p(y | x_t) of the class mixtures, per row: log p(y) + log p_t(x | y) - log p_t(x)."""
    mixtures = class_mixtures()
    log_py = torch.log(torch.tensor(P_Y, dtype=F64))

    def log_prob(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        per_class = torch.stack([gm.log_prob(x, t, proc) for gm in mixtures[:NUM_CLASSES]], dim=1)  # (B, K)
        return log_py[y] + per_class.gather(1, y[:, None])[:, 0] - mixtures[NULL].log_prob(x, t, proc)

    return log_prob


def models(proc: Process, scale: float, base_kind: str = "eps") -> tuple[Denoiser, Denoiser]:
    """(classifier guidance of the exact unconditional model, classifier-free guidance at w = scale)."""
    base = class_mixtures()[NULL].denoiser(proc, base_kind)
    cfg = Denoiser(class_fn(class_mixtures(), proc, "eps"), proc, "eps", guidance=scale,
                   uncond={"y": torch.tensor(NULL)})
    return classifier_guided(base, exact_log_prob(proc), scale), cfg


def rows(proc: Process) -> tuple[Tensor, Tensor, Tensor]:
    """Noisy rows at t_min and three interior times (t_max is pure noise: nothing to guide), labels cycling."""
    xs, ts, ys = zip(*(noised(proc, float(t), n=6, seed=i) for i, t in
                       enumerate([proc.t_min, *interior_times(proc, 3).tolist()])), strict=True)
    return torch.cat(xs), torch.cat(ts), torch.cat(ys)


# --- (a) exact: classifier guidance of p(x) = classifier-free guidance of p(x | y) ---------------------------
@pytest.mark.parametrize("name", PROCS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("base_kind", ["eps", "x0"])
def test_exact_classifier_guidance_is_classifier_free_guidance(name, scale, base_kind):
    proc = make_process(name)
    x, t, y = rows(proc)
    guided, cfg = models(proc, scale, base_kind)
    with torch.no_grad():  # as samplers call it: the gradient must still be taken
        for query in ("eps", "x0", "score"):
            assert_close(getattr(guided, query)(x, t, y=y), getattr(cfg, query)(x, t, y=y))
        if scale > 0:  # the test can fail: guidance moves eps by a visible amount
            unguided = class_mixtures()[NULL].denoiser(proc, "eps").eps(x, t)
            assert (guided.eps(x, t, y=y) - unguided).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["VP", "EDM"])
def test_classifier_guidance_composes_with_classifier_free_guidance(name):
    """Guiding the CFG model at w by the exact classifier at s is CFG at w + s: eps_u + (w + s)(eps_c - eps_u)."""
    proc = make_process(name)
    x, t, y = rows(proc)
    w, s = 1.5, 2.0
    base = Denoiser(class_fn(class_mixtures(), proc, "x0"), proc, "x0", guidance=w, uncond={"y": torch.tensor(NULL)})
    guided = classifier_guided(base, exact_log_prob(proc), s)  # conditional: base has guidance set
    _, want = models(proc, w + s)
    with torch.no_grad():
        assert_close(guided.eps(x, t, y=y), want.eps(x, t, y=y))


@pytest.mark.parametrize(("name", "method", "nfe"), [("VP", "dpmpp-2m", 20), ("DiscreteVP.linear", "ddpm", 50),
                                                     ("EDM", "heun", 19)])
def test_a_whole_sampler_run_is_the_same_both_ways(name, method, nfe):
    proc = make_process(name)
    g = torch.Generator().manual_seed(3)
    x_T = proc.prior_sample((24, 2), generator=g, dtype=F64)
    y = torch.arange(24) % NUM_CLASSES
    guided, cfg = models(proc, 2.0)
    a = kuosan.sample(guided, x_T, method=method, nfe=nfe, generator=torch.Generator().manual_seed(5), cond={"y": y})
    b = kuosan.sample(cfg, x_T, method=method, nfe=nfe, generator=torch.Generator().manual_seed(5), cond={"y": y})
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    plain = kuosan.sample(class_mixtures()[NULL].denoiser(proc), x_T, method=method, nfe=nfe,
                          generator=torch.Generator().manual_seed(5))
    assert (a - plain).abs().max() > 0.1  # guidance changed the samples


def test_guided_model_needs_labels_and_a_batch_shaped_log_prob():
    proc = VP()
    base = class_mixtures()[NULL].denoiser(proc)
    x, t, y = rows(proc)
    with pytest.raises(ValueError, match="needs the labels"):
        classifier_guided(base, exact_log_prob(proc), 1.0).eps(x, t)
    with pytest.raises(ValueError, match=r"shape \(batch,\)"):
        classifier_guided(base, lambda x, t, y: x.sum(), 1.0).eps(x, t, y=y)


# --- (b) training: a small classifier beats chance on noisy toy data -----------------------------------------
def labelled_points(n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.multinomial(torch.tensor(P_Y), n, replacement=True, generator=g)
    x = torch.empty(n, 2, dtype=F64)
    for k, gm in enumerate(class_mixtures()[:NUM_CLASSES]):
        x[y == k] = gm.sample(int((y == k).sum()), generator=g)
    return x.float(), y


def test_a_small_classifier_trains_and_beats_chance():
    torch.manual_seed(0)
    proc = VP()
    net = build_net("classifier", num_classes=NUM_CLASSES, dim=2, hidden=64, depth=2)
    obj = ClassifierObjective(net, proc)
    x, y = labelled_points(4096, seed=0)
    opt = torch.optim.Adam(obj.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(150):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = obj.loss({"x0": x[idx], "y": y[idx]}, g)
        assert loss.shape == (128,)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    clf = NoisyClassifier(net.eval(), proc, NUM_CLASSES, (2,))
    xe, ye = labelled_points(2000, seed=7)
    exact = exact_log_prob(proc)
    for t in (0.05, 0.3):
        tt = torch.full((len(xe),), t, dtype=F64)
        a, s = proc.alpha(tt)[:, None].float(), proc.sigma(tt)[:, None].float()
        x_t = a * xe + s * torch.randn(xe.shape, generator=g)
        with torch.no_grad():
            acc = (clf.logits(x_t, tt).argmax(1) == ye).float().mean().item()
            bayes = torch.stack([exact(x_t.double(), tt, torch.full_like(ye, k)) for k in range(NUM_CLASSES)], 1)
        bayes_acc = (bayes.argmax(1) == ye).float().mean().item()
        assert acc > max(P_Y) + 0.2, (t, acc)  # chance (always the likeliest class) is 0.5
        assert acc > bayes_acc - 0.08, (t, acc, bayes_acc)  # near the Bayes-optimal classifier


# --- (c) bad input ---------------------------------------------------------------------------------------------
def test_unlabelled_data_and_mismatched_kinds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="num_classes >= 2.*labelled data"):
        Classifier(None, dim=2)
    cfg = load_config(kuosan.cli.resolve_recipe("digits-classifier"))
    with pytest.raises(ValueError, match="needs labelled data"):
        build_classifier_objective(cfg, Classifier(10, dim=64), Dataset(torch.zeros(4, 64)))
    with pytest.raises(ConfigError, match="go together"):
        load_config(kuosan.cli.resolve_recipe("digits-classifier"), ["objective.kind=denoising"])


def test_classifier_of_other_shape_or_process_is_refused():
    net = Classifier(3, dim=2)
    clf = NoisyClassifier(net, DiscreteVP.linear(), 3, (2,), name="runs/clf")
    clf.check(DiscreteVP.linear(), (2,), "run a")  # the same process, rebuilt: accepted
    with pytest.raises(ValueError, match=r"runs/clf.*\(2,\).*\(1, 8, 8\)"):
        clf.check(DiscreteVP.linear(), (1, 8, 8), "run a")
    with pytest.raises(ValueError, match="runs/clf.*under process.*differ"):
        clf.check(DiscreteVP.cosine(), (2,), "run a")
    with pytest.raises(ValueError, match="runs/clf.*under process"):
        clf.check(DiscreteVP.linear(n=500), (2,), "run a")


# --- (d) CLI: train a tiny classifier run, guide a tiny unconditional run with it -------------------------------
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


TINY = ["--set", "train.batch_size=16", "--set", "train.progress=false", "--set", "train.ckpt_every=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("clfruns")
    unet = "net={kind: unet, base_channels: 8, channel_mults: [1, 2], num_res_blocks: 1, attention_resolutions: []}"
    assert invoke("train", "digits-ddpm", "--out", root / "ddpm", "--set", "train.steps=2", "--set", unet,
                  *TINY).exit_code == 0
    clf_net = "net={kind: classifier, base_channels: 8, channel_mults: [1, 2]}"
    res = invoke("train", "digits-classifier", "--out", root / "clf", "--set", "train.steps=3", "--set", clf_net, *TINY)
    assert res.exit_code == 0, res.output
    assert "--classifier" in res.output
    assert invoke("train", "digits-cond", "--out", root / "cond", "--set", "train.steps=1", "--set", unet,
                  *TINY).exit_code == 0
    res = invoke("train", "digits-classifier", "--out", root / "clf-vp", "--set", "train.steps=1", "--set", clf_net,
                 "--set", "process={kind: vp}", *TINY)
    assert res.exit_code == 0, res.output
    return root


def test_cli_trains_a_classifier_and_guides_an_unconditional_run(runs, tmp_path):
    res = invoke("info", runs / "clf")
    assert res.exit_code == 0 and "objective:        classifier" in res.output
    res = invoke("sample", runs / "ddpm", "--classifier", runs / "clf", "--classifier-scale", "2", "--class", "all",
                 "--n", "2", "--method", "dpmpp-2m", "--nfe", "4", "--out", tmp_path / "g.png")
    assert res.exit_code == 0, res.output
    npz = dict(__import__("numpy").load(tmp_path / "g.npz"))
    assert npz["samples"].shape == (20, 1, 8, 8) and npz["labels"].tolist() == [k for k in range(10) for _ in (0, 1)]
    clf = kuosan.load_classifier(runs / "clf")
    assert (clf.num_classes, clf.data_shape) == (10, (1, 8, 8))
    pipe = kuosan.load(runs / "ddpm")
    a = pipe.generate(4, "ddim", 3, labels=[3], classifier=clf, classifier_scale=0.0, seed=2)
    b = pipe.generate(4, "ddim", 3, seed=2)
    torch.testing.assert_close(a, b)  # scale 0 is the unguided model
    c = pipe.generate(4, "ddim", 3, labels=[3], classifier=runs / "clf", classifier_scale=50.0, seed=2)
    assert (c - b).abs().max() > 1e-3


def test_cli_refuses_bad_classifier_input(runs):
    res = invoke("sample", runs / "ddpm", "--classifier", runs / "clf-vp", "--nfe", "2")
    assert res.exit_code == 1 and "clf-vp" in res.output and "process" in res.output
    res = invoke("sample", runs / "ddpm", "--classifier", runs / "ddpm", "--nfe", "2")
    assert res.exit_code == 1 and "not a classifier run" in res.output
    res = invoke("sample", runs / "clf", "--nfe", "2")
    assert res.exit_code == 1 and "is a classifier run" in res.output
    res = invoke("sample", runs / "ddpm", "--class", "3", "--nfe", "2")
    assert res.exit_code == 1 and "--class" in res.output
    toy = runs / "toy.yaml"
    toy.write_text(yaml.safe_dump({"process": {"kind": "discretevp"}, "net": {"kind": "classifier", "hidden": 8},
                                   "objective": {"kind": "classifier"},
                                   "data": {"kind": "toy2d", "name": "gmm", "n": 64, "conditional": True},
                                   "train": {"steps": 1, "batch_size": 8, "progress": False}}))
    assert invoke("train", toy, "--out", runs / "toy").exit_code == 0
    pipe = kuosan.load(runs / "ddpm")
    with pytest.raises(ValueError, match=r"toy.*\(2,\).*\(1, 8, 8\)"):
        pipe.generate(2, "ddim", 2, classifier=runs / "toy")
    cond = kuosan.load(runs / "cond")
    three = NoisyClassifier(Classifier(3, in_channels=1, image_size=8), cond.denoiser.process, 3, (1, 8, 8), "c3")
    with pytest.raises(ValueError, match=r"c3 has 3 classes.*cond 10"):
        cond.generate(2, "ddim", 2, classifier=three)
    both = cond.generate(3, "ddim", 2, labels=[1, 2, 3], guidance=2.0, classifier=runs / "clf", classifier_scale=1.0)
    assert torch.isfinite(both).all()  # classifier guidance on top of classifier-free guidance
    res = invoke("train", "digits-classifier", "--out", runs / "bad", "--set", "data.conditional=false", *TINY)
    assert res.exit_code == 1 and "labelled data" in res.output
