"""Sample-quality metrics against closed forms, and the shipped digits feature network.

Closed forms used: the Frechet (W2) distance between Gaussians (diagonal, and S1 = I), the 1-D Wasserstein
distances between Gaussians, the Gaussian-kernel MMD between Gaussians. Monte-Carlo checks allow Z standard
errors estimated from the draws themselves.
"""

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from kuosan.eval.features import digits_classifier, digits_feature_info, digits_features, inception_features
from kuosan.eval.metrics import (
    frechet_distance,
    frechet_distance_bootstrap,
    frechet_distance_gaussians,
    frechet_distance_infinity,
    kid,
    mmd,
    precision_recall,
    sliced_wasserstein,
    wasserstein_1d,
)

F64 = torch.float64
Z = 3.0


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- Frechet distance ------------------------------------------------------------------------------------


def test_frechet_of_a_set_with_itself_is_zero():
    f = torch.randn(500, 16, generator=gen(0), dtype=F64) @ torch.randn(16, 16, generator=gen(1), dtype=F64)
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-7)


def test_frechet_grows_monotonically_with_added_noise():
    x = torch.randn(2000, 8, generator=gen(0), dtype=F64) * torch.linspace(0.2, 2, 8, dtype=F64)
    z = torch.randn(2000, 8, generator=gen(1), dtype=F64)
    fds = [frechet_distance(x, x + s * z) for s in (0.0, 0.1, 0.2, 0.4, 0.8, 1.6)]
    assert fds[0] < 1e-9
    assert all(b > a for a, b in zip(fds, fds[1:], strict=False)), fds


def test_frechet_gaussians_diagonal_closed_form():
    """||mu1 - mu2||^2 + sum (sqrt s1 - sqrt s2)^2 for diagonal covariances."""
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0], dtype=F64), torch.tensor([1.0, 1.0, 0.5], dtype=F64)
    s1, s2 = torch.tensor([1.0, 4.0, 0.25], dtype=F64), torch.tensor([9.0, 1.0, 0.25], dtype=F64)
    exact = float((mu1 - mu2).square().sum() + (s1.sqrt() - s2.sqrt()).square().sum())
    assert frechet_distance_gaussians(mu1, torch.diag(s1), mu2, torch.diag(s2)) == pytest.approx(exact, rel=1e-12)
    # a common rotation leaves the distance unchanged (catches a sqrt taken elementwise)
    Q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen(2), dtype=F64))
    rot = frechet_distance_gaussians(Q @ mu1, Q @ torch.diag(s1) @ Q.T, Q @ mu2, Q @ torch.diag(s2) @ Q.T)
    assert rot == pytest.approx(exact, rel=1e-10)


def test_frechet_gaussians_non_commuting_covariances():
    """S1 = I: d^2 = sum_i (1 - sqrt(lambda_i(S2)))^2; general S1, S2 vs scipy.linalg.sqrtm (pytorch-fid's formula)."""
    A = torch.randn(5, 5, generator=gen(3), dtype=F64)
    S2 = A @ A.T + 0.1 * torch.eye(5, dtype=F64)
    lam = torch.linalg.eigvalsh(S2)
    mu = torch.zeros(5, dtype=F64)
    assert frechet_distance_gaussians(mu, torch.eye(5, dtype=F64), mu, S2) == pytest.approx(
        float((1 - lam.sqrt()).square().sum()), rel=1e-10
    )
    B = torch.randn(5, 5, generator=gen(4), dtype=F64)
    S1 = B @ B.T + 0.1 * torch.eye(5, dtype=F64)
    ref = np.trace(S1.numpy() + S2.numpy() - 2 * scipy.linalg.sqrtm(S1.numpy() @ S2.numpy()).real)
    assert frechet_distance_gaussians(mu, S1, mu, S2) == pytest.approx(ref, rel=1e-8)


def test_frechet_from_samples_converges_to_closed_form():
    mu1, mu2 = torch.tensor([0.0, 0.5, 0.0, 1.0], dtype=F64), torch.tensor([0.3, 0.0, 0.0, 1.0], dtype=F64)
    s1, s2 = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=F64), torch.tensor([1.5, 1.0, 0.5, 3.0], dtype=F64)
    exact = float((mu1 - mu2).square().sum() + (s1.sqrt() - s2.sqrt()).square().sum())
    errors = []
    for n in (1_000, 10_000, 200_000):
        x = mu1 + s1.sqrt() * torch.randn(n, 4, generator=gen(n), dtype=F64)
        y = mu2 + s2.sqrt() * torch.randn(n, 4, generator=gen(n + 1), dtype=F64)
        errors.append(abs(frechet_distance(x, y) - exact))
    assert errors[-1] < 0.035  # 5 standard deviations of the n = 200k estimate (0.007, measured over seeds)
    assert errors[-1] < errors[0]


def test_frechet_bootstrap_std_matches_the_spread_over_fresh_draws():
    """The bootstrap std from one generated set estimates the std of FD over independent generated sets (fixed
    reference). 60 fresh sets of 500 from a shifted, rescaled Gaussian in 8-D give the truth; the bootstrap
    from each of 5 sets must lie within 35% of it (the std of a 60-draw std is 9%; measured ratios 0.79-1.11)."""
    d = 8
    ref = torch.randn(4000, d, generator=gen(0), dtype=F64)
    shift, scale = torch.linspace(0, 0.3, d, dtype=F64), torch.linspace(0.8, 1.3, d, dtype=F64)
    draw = lambda s: shift + scale * torch.randn(500, d, generator=gen(s), dtype=F64)  # noqa: E731
    truth = torch.tensor([frechet_distance(draw(s), ref) for s in range(100, 160)], dtype=F64).std().item()
    for s in range(5):
        boot = frechet_distance_bootstrap(draw(s), ref, n_boot=200, generator=gen(1000 + s))
        assert boot == pytest.approx(truth, rel=0.35), (boot, truth)


def test_frechet_infinity_removes_the_small_sample_bias():
    """FD of N samples sits k/N above the true distance; FD_inf (Chong & Forsyth 2020) extrapolates it away.
    16-D Gaussians with a closed-form FD, a 100k-sample reference (its own bias ~1e-4 of the true value), 40 sets
    of 400: the mean FD_inf is within 3 s.e. of the truth while the mean FD is more than 10 s.e. above it."""
    d = 16
    mu2, s2 = torch.zeros(d, dtype=F64), torch.ones(d, dtype=F64)
    mu1, s1 = torch.linspace(0, 0.2, d, dtype=F64), torch.linspace(0.7, 1.4, d, dtype=F64)
    exact = float((mu1 - mu2).square().sum() + (s1.sqrt() - s2.sqrt()).square().sum())
    ref = mu2 + s2.sqrt() * torch.randn(100_000, d, generator=gen(0), dtype=F64)
    fd, fd_inf = [], []
    for seed in range(40):
        x = mu1 + s1.sqrt() * torch.randn(400, d, generator=gen(100 + seed), dtype=F64)
        fd.append(frechet_distance(x, ref))
        fd_inf.append(frechet_distance_infinity(x, ref, generator=gen(500 + seed)))
    fd, fd_inf = torch.tensor(fd), torch.tensor(fd_inf)
    se = lambda v: float(v.std() / math.sqrt(len(v)))  # noqa: E731
    assert abs(fd_inf.mean().item() - exact) < Z * se(fd_inf), (fd_inf.mean().item(), exact, se(fd_inf))
    assert fd.mean().item() - exact > 10 * se(fd), (fd.mean().item(), exact, se(fd))
    with pytest.raises(ValueError, match="FD_inf needs more than"):
        frechet_distance_infinity(x[:10], ref)


# --- KID and MMD -----------------------------------------------------------------------------------------


def test_kid_unbiased_on_equal_distributions():
    values = []
    for i in range(200):
        x = torch.randn(60, 8, generator=gen(2 * i), dtype=F64)
        y = torch.randn(60, 8, generator=gen(2 * i + 1), dtype=F64)
        values.append(kid(x, y, n_subsets=1)[0])
    v = torch.tensor(values)
    assert abs(float(v.mean())) < Z * float(v.std()) / math.sqrt(len(v))
    # and it sees a shift
    x = torch.randn(500, 8, generator=gen(0), dtype=F64)
    assert kid(x, x + 0.5, n_subsets=5, subset_size=200)[0] > 0.05


def gaussian_kernel_mean(mu: float, v: float, d: int, h: float) -> float:
    """E exp(-||z||^2 / (2 h^2)) for z ~ N(mu 1, v I_d)."""
    return (h**2 / (h**2 + v)) ** (d / 2) * math.exp(-d * mu**2 / (2 * (h**2 + v)))


@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (0.5, 1.0), (0.0, 1.5)])
def test_mmd_unbiased_matches_closed_form(shift: float, scale: float):
    """x ~ N(0, I), y ~ N(shift, scale^2 I): MMD^2 = E k(x,x') + E k(y,y') - 2 E k(x,y), all closed forms."""
    d, h = 3, 1.5
    exact = (
        gaussian_kernel_mean(0.0, 2.0, d, h)
        + gaussian_kernel_mean(0.0, 2 * scale**2, d, h)
        - 2 * gaussian_kernel_mean(shift, 1 + scale**2, d, h)
    )
    values = []
    for i in range(200):
        x = torch.randn(40, d, generator=gen(2 * i), dtype=F64)
        y = shift + scale * torch.randn(40, d, generator=gen(2 * i + 1), dtype=F64)
        values.append(mmd(x, y, bandwidth=h))
    v = torch.tensor(values)
    assert abs(float(v.mean()) - exact) < Z * float(v.std()) / math.sqrt(len(v))


# --- precision / recall ----------------------------------------------------------------------------------


def test_precision_recall_identical_disjoint_and_mode_dropping():
    x = torch.randn(1000, 2, generator=gen(0), dtype=F64)
    assert precision_recall(x, x) == (1.0, 1.0)
    p, r = precision_recall(x, torch.randn(1000, 2, generator=gen(1), dtype=F64))
    assert p > 0.9 and r > 0.9
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)
    # fake covers only the half x_0 > 0 of the real set: precise but half the recall (roles not swapped)
    y = torch.randn(4000, 2, generator=gen(2), dtype=F64)
    p, r = precision_recall(x, y[y[:, 0] > 0][:1000])
    assert p > 0.9 and 0.4 < r < 0.65


# --- Wasserstein -----------------------------------------------------------------------------------------


def test_wasserstein_1d_unequal_sizes_by_hand():
    """u = {0, 1}, v = {0, 1/2, 1}: the quantile functions differ by 1/2 on q in (1/3, 2/3]."""
    u, v = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.5, 1.0, 0.0], dtype=F64)
    assert float(wasserstein_1d(u, v, p=1)) == pytest.approx(1 / 6)
    assert float(wasserstein_1d(u, v, p=2)) == pytest.approx(1 / 12)
    assert float(wasserstein_1d(u, torch.cat([u, u]), p=2)) == pytest.approx(0.0, abs=1e-15)


def test_sliced_wasserstein_matches_1d_gaussian_closed_forms():
    n = 20_000
    x = torch.randn(n, 1, generator=gen(0), dtype=F64)
    y = torch.randn(n, 1, generator=gen(1), dtype=F64)
    assert sliced_wasserstein(x, x, n_projections=4) == 0.0
    # W2(N(0,1), N(1, 2^2)) = sqrt(1^2 + (2-1)^2); W1(N(0,1), N(0.7,1)) = 0.7
    assert sliced_wasserstein(x, 1 + 2 * y, p=2, n_projections=4) == pytest.approx(math.sqrt(2), rel=0.02)
    assert sliced_wasserstein(x, 0.7 + y, p=1, n_projections=4) == pytest.approx(0.7, rel=0.03)


def test_sliced_wasserstein_isotropic_gaussians_closed_form():
    """theta.x ~ N(theta.m1, s1^2): SW2^2 = E (theta.dm)^2 + (s1 - s2)^2 = ||dm||^2 / D + (s1 - s2)^2.

    y = dm + 1.5 x reuses x's draws, so what remains is the projection average, not sampling noise
    (measured spread 0.7% over seeds; a missing 1/p root or unnormalised directions is off by >= 10%).
    """
    d, n = 4, 2000
    dm = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=F64)
    x = torch.randn(n, d, generator=gen(0), dtype=F64)
    exact = math.sqrt(float(dm.square().sum()) / d + 0.5**2)
    assert sliced_wasserstein(x, dm + 1.5 * x, n_projections=2000) == pytest.approx(exact, rel=0.03)


# --- the shipped digits feature network ------------------------------------------------------------------


def test_digits_feature_net_ships_and_classifies_held_out_digits():
    from importlib.resources import files

    from kuosan.data import load_digits

    assert files("kuosan").joinpath("assets/digits_features.safetensors").is_file()
    info = json.loads(files("kuosan").joinpath("assets/digits_features.json").read_text())
    assert info == digits_feature_info()
    x, y = load_digits("test")
    acc = float((digits_classifier()(x).argmax(1) == y).double().mean())
    assert acc >= 0.95
    assert acc == pytest.approx(info["test_accuracy"], abs=1.5 / len(y))  # at most one image differs
    f = digits_features(x)
    assert f.shape == (len(x), info["feature_dim"])


def test_digits_frechet_distance_sees_noise():
    """Held-out vs training digits is the floor; a little pixel noise moves the features far above it."""
    from kuosan.data import load_digits

    x_train, x_test = load_digits("train")[0], load_digits("test")[0]
    noisy = (x_test + 0.3 * torch.randn(x_test.shape, generator=gen(0))).clamp(-1, 1)
    f_train = digits_features(x_train)
    floor = frechet_distance(digits_features(x_test), f_train)
    assert frechet_distance(digits_features(noisy), f_train) > 3 * floor
    # 16x16 digits are averaged back to 8x8: compared with real digits that took the same round trip,
    # held-out vs train stays near the floor (the blur of bilinear upsampling itself is not a round trip)
    f16_train, f16_test = digits_features(load_digits("train", 16)[0]), digits_features(load_digits("test", 16)[0])
    assert frechet_distance(f16_test, f16_train) < 2 * floor
    assert frechet_distance(f16_test, f_train) > 3 * floor


def test_inception_needs_local_weights_and_says_so(tmp_path):
    with pytest.raises((ImportError, FileNotFoundError), match="pytorch-fid|not found"):
        inception_features(torch.zeros(2, 1, 8, 8), tmp_path / "missing.pth")


# --- the report, on a model whose score is exact ---------------------------------------------------------


def test_report_on_the_exact_mixture_reaches_the_floor(tmp_path):
    """The exact toy-mixture denoiser under DDPM's process: an ODE sampler with enough NFE draws from the data
    distribution itself, so its distances fall to the held-out floor; too few NFE stay far above it."""
    from kuosan.config import parse_config
    from kuosan.data.toy2d import toy_gmm
    from kuosan.eval.evaluate import build_reference
    from kuosan.eval.report import evaluate
    from kuosan.processes import DiscreteVP

    cfg = parse_config({"data": {"kind": "toy2d", "name": "gmm"}})
    ref = build_reference(cfg, (2,))
    model = toy_gmm().denoiser(DiscreteVP.linear(1000))
    report = evaluate(model, ref, (2,), tmp_path, samplers=["dpmpp-2m", "nope"], nfes=[1, 3, 25], n=2000,
                      log=lambda s: None)
    r = {row["nfe"]: row for row in report["results"]}
    # fresh 2000-point data samples score FD 0.0002-0.006, SW 0.05-0.13, MMD^2 < 0.002 (4 seeds); 3 NFE: FD 0.08
    assert r[3]["fd"] > 10 * r[25]["fd"] and r[3]["precision"] < 0.9
    assert r[25]["fd"] < 0.01 and r[25]["sw"] < 0.15 and r[25]["mmd"] < 0.002
    assert r[25]["precision"] > 0.95 and r[25]["recall"] > 0.95
    assert report["floor"]["fd"] < 0.01
    assert r[25]["nfe_used"] <= 25
    assert {(s["sampler"], s["nfe"]) for s in report["skipped"]} == {("dpmpp-2m", 1), ("nope", None)}
    assert {p.name for p in tmp_path.iterdir()} >= {"report.md", "report.json", "fd_vs_nfe.png", "samples-dpmpp-2m.png"}
    assert json.loads((tmp_path / "report.json").read_text())["results"][0]["sampler"] == "dpmpp-2m"


def test_heldout_nll_on_the_exact_mixture():
    """Continuous data: the ODE NLL is the mixture's exact -log p (smoothed by sigma(t_min) = 0.01, far below its
    component variances), and the DDPM bound of the exact model lies above it."""
    from kuosan.data.toy2d import toy_gmm
    from kuosan.eval.nll import heldout_nll
    from kuosan.processes import DiscreteVP

    gmm = toy_gmm()
    x = gmm.sample(30, generator=gen(3))
    r = heldout_nll(gmm.denoiser(DiscreteVP.linear(250)), x, levels=None)
    exact = float(-gmm.log_prob(x).mean())
    assert r["ode_nll"] == pytest.approx(exact, abs=0.01)
    assert r["vlb_nll"] > exact  # seeded; the gap (1.5 nats here) is 3 s.e. of its one-draw-per-term noise
    assert r["ode_nfe"] > 0 and r["vlb_nfe"] == 250


def test_to_uint8_maps_digit_levels():
    from kuosan.eval.nll import to_uint8

    k = torch.arange(17, dtype=torch.float32)
    assert to_uint8(k / 8 - 1).tolist() == [round(255 * i / 16) for i in range(17)]


@pytest.mark.slow  # training even 2 steps costs ~30 s here (build, checkpoint, preview)
def test_kuosan_eval_command_on_a_tiny_run(tmp_path):
    """`kuosan eval` end to end on a 2-step digits run: per-sampler budgets, a skipped sampler, the files."""
    from typer.testing import CliRunner

    from kuosan.cli import app, resolve_recipe
    from kuosan.config import load_config
    from kuosan.train import train_from_config

    run = tmp_path / "run"
    overrides = [f"out_dir={run}", "train.steps=2", "train.batch_size=8", "net.base_channels=8",
                 "net.attention_resolutions=[]", "sample.nfe=2", "sample.n=2", "train.progress=false",
                 "train.tensorboard=false"]
    train_from_config(load_config(resolve_recipe("digits-ddpm"), overrides))
    args = ["eval", str(run), "--samplers", "ddim,bogus", "--nfe", "2", "--nfe-for", "ddim=1,3", "--n", "40",
            "--out", str(tmp_path / "ev")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert [(r["sampler"], r["nfe"]) for r in report["results"]] == [("ddim", 3)]
    assert {(s["sampler"], s["nfe"]) for s in report["skipped"]} == {("ddim", 1), ("bogus", None)}
    assert report["step"] == 2 and (tmp_path / "ev" / "samples-ddim.png").is_file()


def test_parse_sampler_specs():
    from kuosan.eval.evaluate import parse_sampler

    assert parse_sampler("dpmpp-2m") == ("dpmpp-2m", {})
    assert parse_sampler("ancestral") == ("ddpm", {})
    assert parse_sampler("unipc:grid=uniform:thresholding=true") == ("unipc", {"grid": "uniform", "thresholding": True})
    assert parse_sampler("ddim:eta=1.0") == ("ddim", {"eta": 1.0})
    assert parse_sampler("pc:corrector_steps=2") == ("pc", {"corrector_steps": 2})
    with pytest.raises(ValueError, match="'ddim:eta'.*not key=value"):
        parse_sampler("ddim:eta")


def test_sampler_options_reach_the_sampler_and_bad_ones_are_skipped_with_the_reason(tmp_path):
    """'ddim:eta=1.0' is stochastic DDIM (a different sample set from 'ddim'); an unknown option is reported."""
    from kuosan.config import parse_config
    from kuosan.data.toy2d import toy_gmm
    from kuosan.eval.evaluate import build_reference
    from kuosan.eval.report import evaluate
    from kuosan.processes import DiscreteVP

    ref = build_reference(parse_config({"data": {"kind": "toy2d", "name": "gmm"}}), (2,))
    model = toy_gmm().denoiser(DiscreteVP.linear(1000))
    report = evaluate(model, ref, (2,), tmp_path, samplers=["ddim", "ddim:eta=1.0", "ddim:bogus=1"], nfes=[6],
                      n=300, log=lambda s: None)
    fd = {r["sampler"]: r["fd"] for r in report["results"]}
    assert set(fd) == {"ddim", "ddim:eta=1.0"} and fd["ddim"] != fd["ddim:eta=1.0"]
    (skip,) = report["skipped"]
    assert skip["sampler"] == "ddim:bogus=1" and "bogus" in skip["reason"]
    assert (tmp_path / "samples-ddim_eta-1.0.png").is_file()
    assert (tmp_path / "samples" / "ddim_eta-1.0-6.npz").is_file()


def test_a_killed_eval_resumes_from_its_saved_samples(tmp_path):
    """Samples saved under the same checkpoint tag, n and seed are reused (same numbers, no evaluations); another
    seed, another checkpoint or a truncated file draws afresh; without a checkpoint nothing is reused."""
    from kuosan.config import parse_config
    from kuosan.data.toy2d import toy_gmm
    from kuosan.eval.evaluate import build_reference
    from kuosan.eval.report import evaluate
    from kuosan.processes import DiscreteVP

    ref = build_reference(parse_config({"data": {"kind": "toy2d", "name": "gmm"}}), (2,))
    model = toy_gmm().denoiser(DiscreteVP.linear(1000))
    run = lambda seed=0, ckpt="runs/x/step-1": evaluate(  # noqa: E731
        model, ref, (2,), tmp_path, samplers=["dpmpp-2m"], nfes=[6], n=300, seed=seed, log=lambda s: None,
        meta={"checkpoint": ckpt, "ema": True})["results"][0]
    first = run()
    model.reset_nfe()
    again = run()
    assert again["reused"] and not first["reused"] and model.nfe == 0
    assert again["fd"] == first["fd"] and again["seconds"] == first["seconds"]
    assert not run(seed=1)["reused"]
    assert not run(ckpt="runs/x/step-2")["reused"]
    path = tmp_path / "samples" / "dpmpp-2m-6.npz"
    path.write_bytes(path.read_bytes()[:100])  # a file cut short
    assert not run(ckpt="runs/x/step-2")["reused"]
    assert not evaluate(model, ref, (2,), tmp_path, samplers=["dpmpp-2m"], nfes=[6], n=300,
                        log=lambda s: None)["results"][0]["reused"]


def test_headline_states_both_ratios_and_their_verdicts():
    """The 10-NFE claim is judged on FD at equal N and on FD_inf, each with its own verdict; the best sampler is
    picked per metric; the likelihood line says whether the ODE is below the bound."""
    from kuosan.eval.reporting import headline

    row = lambda s, nfe, fd, fd_inf: {"sampler": s, "nfe": nfe, "fd": fd, "fd_std": 0.1, "fd_inf": fd_inf}  # noqa: E731
    report = {"results": [row("ddpm", 1000, 2.0, 0.5), row("a", 10, 2.1, 0.9), row("b", 10, 2.5, 0.52),
                          row("b", 20, 1.0, 0.1)],
              "nll": {"ode_bpd": 4.8, "vlb_bpd": 4.9, "ode_minus_vlb": -0.1, "ode_minus_vlb_se": 0.02}}
    fd_line, inf_line, nll_line = headline(report)
    assert "**a**" in fd_line and "1.05 x" in fd_line and "'within 10%' holds" in fd_line
    assert "**b**" in inf_line and "1.04 x" in inf_line and "holds" in inf_line
    report["results"][2]["fd_inf"] = 0.7
    assert "does not hold" in headline(report)[1] and "1.40 x" in headline(report)[1]
    assert "the ODE is below the bound" in nll_line


def component_mixtures():
    """The conditional toy data's classes: p(x | k) = component k of toy_gmm(), then the marginal (null class)."""
    from kuosan.analytic import GaussianMixture
    from kuosan.data.toy2d import toy_gmm

    gm = toy_gmm()
    parts = [GaussianMixture([1.0], gm.means[k : k + 1], gm.covariances[k : k + 1]) for k in range(len(gm.weights))]
    return [*parts, gm]


def test_guidance_sweep_reports_accuracy_rising_with_w(tmp_path):
    """`evaluate(guided={w: model})` on the exact class-conditional toy mixture: class accuracy (the exact posterior
    argmax judges) is chance-like at w = 0 (the marginal), high at w = 1 (the exact components), higher at w = 3;
    the report has the guidance table and the FD-vs-accuracy plot."""
    from kuosan import Denoiser
    from kuosan.config import parse_config
    from kuosan.eval.evaluate import build_reference
    from kuosan.eval.report import evaluate
    from kuosan.processes import DiscreteVP

    proc = DiscreteVP.linear(1000)
    exact = [m.denoiser(proc).fn for m in component_mixtures()]

    def fn(x, t, y):
        out = torch.empty_like(x)
        for k, f in enumerate(exact):
            rows = y == k
            if rows.any():
                out[rows] = f(x[rows], t[rows]).to(x.dtype)
        return out

    base = Denoiser(fn, proc, "eps")
    cfg = parse_config({"data": {"kind": "toy2d", "name": "gmm", "conditional": True}})
    ref = build_reference(cfg, (2,), class_names=tuple(f"component {k}" for k in range(4)))
    guided = {w: base.replace(guidance=w, uncond={"y": torch.tensor(4)}) for w in (0.0, 1.0, 3.0)}
    report = evaluate(base, ref, (2,), tmp_path, samplers=["dpmpp-2m"], nfes=[20], n=800, num_classes=4,
                      guided=guided, log=lambda s: None)
    acc = {r["guidance"]: r["accuracy"] for r in report["results"]}
    assert acc[0.0] < 0.45 and acc[1.0] > 0.9 and acc[3.0] >= acc[1.0] - 0.01, acc
    assert {r["sampler"] for r in report["results"]} == {"dpmpp-2m w=0", "dpmpp-2m w=1", "dpmpp-2m w=3"}
    assert (tmp_path / "fd_vs_accuracy.png").exists() and report["tradeoff_plot"] == "fd_vs_accuracy.png"
    md = (tmp_path / "report.md").read_text()
    assert "## Classifier-free guidance" in md and "exact posterior" in md
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "dpmpp-2m-20-w0.npz", "dpmpp-2m-20-w1.npz", "dpmpp-2m-20-w3.npz"]
