"""Training throughput of kuosan's digits U-Net beside diffusers' UNet2DModel of the same widths.

One training step = eps-prediction MSE (DDPM L_simple, Ho et al. 2020 eq. 14; book eq. 4.14) under
DiscreteVP.linear(1000), AdamW, a batch of 8x8 digits. All nets run in ONE loop, step by step interleaved,
on the same batches, times and noise (one generator), so a change in machine load hits them alike.
Reports samples/s and the loss after the same number of steps (the mean over the last 20 steps, and a
held-out loss on fixed test digits, times and noise).

Speed options for kuosan's net (--fused, --channels-last, --compile) add a second kuosan row, "kuosan+...", run
in the same loop beside the plain one, so the table shows what they buy and that the loss stays the same;
--diffusers-too gives diffusers' net the same options. Compile time is in the first step: the "all steps"
column counts it (amortised over --steps), the others leave the --warmup steps out.

    .venv/bin/python benchmarks/train_throughput.py                 # base 64, mults 1,2,2, batch 128, 200 steps
    .venv/bin/python benchmarks/train_throughput.py --base 32 --mults 1,2 --blocks 1 --threads 1 --fused --compile
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F

import kuosan
from kuosan.data import load_digits
from kuosan.nets import UNet, count_parameters


def build_pair(base: int, mults: tuple[int, ...], blocks: int, groups: int, attn: int, seed: int):
    """kuosan's UNet and diffusers' UNet2DModel with the same widths, depth, attention side and groups."""
    torch.manual_seed(seed)
    ours = UNet(1, base, mults, blocks, (attn,), groups=groups, image_size=8)
    nets = {"kuosan": (ours, lambda x, t: ours(x, t))}
    try:
        from diffusers import UNet2DModel
    except ImportError:
        return nets
    sides = [8 // 2**i for i in range(len(mults))]
    torch.manual_seed(seed)
    theirs = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=tuple(base * m for m in mults),
        layers_per_block=blocks, norm_num_groups=groups, attention_head_dim=None,
        down_block_types=tuple("AttnDownBlock2D" if s == attn else "DownBlock2D" for s in sides),
        up_block_types=tuple("AttnUpBlock2D" if s == attn else "UpBlock2D" for s in reversed(sides)),
    )
    # DiscreteVP time t = (i+1)/N is diffusers' integer index i = N t - 1
    nets["diffusers"] = (theirs, lambda x, t: theirs(x, (t * 1000 - 1).float()).sample)
    return nets


def batches(x0: torch.Tensor, proc, batch: int, steps: int, seed: int):
    """The same (x_t, t, eps) stream for every net: digits, training times and noise from one generator."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = x0[torch.randint(0, len(x0), (batch,), generator=g)]
        t = proc.sample_t(batch, generator=g)
        eps = torch.randn(x.shape, generator=g)
        a, s = (v.float()[:, None, None, None] for v in (proc.alpha(t), proc.sigma(t)))
        yield a * x + s * eps, t, eps


OPTIONS = ("fused", "channels-last", "compile", "graphs")


def with_options(name: str, net, options: tuple[str, ...]) -> tuple[str, tuple]:
    """A copy of `net` (same initial weights) with the speed options asked for: (its row name, (module, training
    forward, plain forward)); channels-last converts each batch inside the timed forward."""
    net = copy.deepcopy(net)
    call = rebind(name, net)
    train = call
    if "channels-last" in options:
        net.to(memory_format=torch.channels_last)

        def train(x, t, call=call):
            return call(x.contiguous(memory_format=torch.channels_last), t)
    if "compile" in options:
        train = torch.compile(train)
    elif "graphs" in options:  # inductor plus CUDA graphs: one replay per forward/backward instead of ~100 launches
        train = torch.compile(train, mode="reduce-overhead")
    return "+".join([name, *options]), (net, train, call)


def rebind(name: str, net):
    """The forward call of build_pair for `net` (kuosan: net(x, t); diffusers: the integer-index timestep)."""
    if name == "kuosan":
        return lambda x, t: net(x, t)
    return lambda x, t: net(x, (t * 1000 - 1).float()).sample


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", type=int, default=64)
    p.add_argument("--mults", default="1,2,2")
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--groups", type=int, default=32)
    p.add_argument("--attn", type=int, default=4, help="feature-map side with attention")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5, help="untimed first steps (still trained)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["kuosan", "diffusers"], default=None)
    p.add_argument("--fused", action="store_true", help="fused AdamW step (kuosan's training default)")
    p.add_argument("--channels-last", action="store_true", help="channels_last weights and activations")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (train.compile)")
    p.add_argument("--graphs", action="store_true", help="torch.compile mode reduce-overhead (CUDA graphs)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (CUDA times are taken after a synchronize)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast around forward and loss (train.bf16)")
    p.add_argument("--variants", default="", help="more option sets, each its own row: fused,fused+compile,...")
    p.add_argument("--diffusers-too", action="store_true", help="give diffusers' net the same options")
    p.add_argument("--no-plain", action="store_true", help="with options, drop the plain rows")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    mults = tuple(int(m) for m in a.mults.split(","))
    pair = build_pair(a.base, mults, a.blocks, a.groups, a.attn, a.seed)
    dev = torch.device(a.device)
    for net, _ in pair.values():
        net.to(dev)
    if a.only:
        pair = {a.only: pair[a.only]}
    nets = {}  # row name -> (module, training forward, plain forward for the held-out loss)
    variants = [tuple(o for o in OPTIONS if getattr(a, o.replace("-", "_")))]
    variants += [tuple(o for o in OPTIONS if o in v.split("+")) for v in a.variants.split(",") if v]
    unknown = {o for v in a.variants.split(",") if v for o in v.split("+")} - set(OPTIONS)
    if unknown:
        p.error(f"--variants: unknown option(s) {sorted(unknown)}; choose from {', '.join(OPTIONS)}")
    variants = list(dict.fromkeys(v for v in variants if v))
    if any({"compile", "graphs"} <= set(v) for v in variants):
        p.error("compile and graphs are two modes of torch.compile: pick one per row")
    for name, (net, fn) in pair.items():
        options = variants if name == "kuosan" or a.diffusers_too else []
        if not options or not a.no_plain:
            nets[name] = (net, fn, fn)
        for v in options:
            row, entry = with_options(name, net, v)
            nets[row] = entry
    opts = {k: torch.optim.AdamW(m.parameters(), lr=a.lr, fused=("fused" in k.split("+")) or None)
            for k, (m, _, _) in nets.items()}
    secs, cpu, losses = ({k: [] for k in nets} for _ in range(3))
    proc = kuosan.processes.DiscreteVP.linear(1000)
    x_train, _ = load_digits("train")
    load = [os.getloadavg()[0]]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for step, batch in enumerate(batches(x_train, proc, a.batch, a.steps, a.seed)):
        x_t, t, eps = (v.to(dev) for v in batch)
        for k, (_, fn, _) in nets.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
                loss = F.mse_loss(fn(x_t, t).float(), eps)
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()
            sync()
            secs[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
            losses[k].append(loss.item())
        if (step + 1) % 20 == 0:
            print(f"step {step + 1}: " + ", ".join(f"{k} {sum(v[-20:]):.1f}s" for k, v in secs.items()), flush=True)
    load.append(os.getloadavg()[0])
    held_out = held_out_loss({k: (m, plain) for k, (m, _, plain) in nets.items()}, proc, a.seed, dev)
    report(a, nets, secs, cpu, losses, held_out, load)


def report(a, nets, secs, cpu, losses, held_out, load) -> None:
    """A markdown table: samples/s from the total (warm-up left out, then all steps: compile time amortised) and
    from the median step time (robust to load spikes), the median CPU time of a step (all threads; with
    --threads 1 the cleanest measure on a shared machine) and the first step's wall seconds (compile time; the
    compiler's worker processes do not show in this process's CPU time)."""
    mults = tuple(int(m) for m in a.mults.split(","))
    print(f"# digits 8x8, batch {a.batch}, {a.steps} steps ({a.warmup} untimed), base {a.base}, mults {mults}, "
          f"{a.blocks} res blocks, attention at {a.attn}x{a.attn}, groups {a.groups}, threads {a.threads}, "
          f"device {a.device}{' ' + torch.cuda.get_device_name() if a.device.startswith('cuda') else ''}"
          f"{', bf16 autocast' if a.bf16 else ''}, "
          f"1-min load {load[0]:.2f} -> {load[1]:.2f}")
    print("| net | params | samples/s (total) | samples/s (all steps, compile included) | samples/s (median step) "
          "| CPU ms/step (median) | first step s (wall) | train loss (last 20) | held-out loss |\n"
          "|---|---|---|---|---|---|---|---|---|")
    rate = {}
    for k, (net, _, _) in nets.items():
        timed = secs[k][a.warmup :]
        rate[k] = (a.batch * len(timed) / sum(timed), a.batch / statistics.median(timed),
                   a.batch * len(secs[k]) / sum(secs[k]), 1 / statistics.median(cpu[k][a.warmup :]))
        print(f"| {k} | {count_parameters(net):,} | {rate[k][0]:.1f} | {rate[k][2]:.1f} | {rate[k][1]:.1f} "
              f"| {1000 / rate[k][3]:.0f} | {secs[k][0]:.1f} | {statistics.fmean(losses[k][-20:]):.4f} "
              f"| {held_out[k]:.4f} |")
    if "diffusers" in nets:
        for k in (k for k in nets if k.startswith("kuosan")):
            r = [rate[k][i] / rate["diffusers"][i] for i in range(4)]
            print(f"throughput ratio {k} / diffusers: {r[0]:.2f}x (total), {r[2]:.2f}x (all steps, compile "
                  f"included), {r[1]:.2f}x (median step), {r[3]:.2f}x (median CPU time)")


@torch.no_grad()
def held_out_loss(nets, proc, seed: int, device=torch.device("cpu")) -> dict[str, float]:
    """eps-MSE on all 359 test digits, each at 4 fixed draws of (t, eps), through each net's plain forward."""
    g = torch.Generator().manual_seed(seed + 1)
    x0 = load_digits("test")[0].repeat(4, 1, 1, 1)
    t = proc.sample_t(len(x0), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    x_t = proc.alpha(t).float()[:, None, None, None] * x0 + proc.sigma(t).float()[:, None, None, None] * eps
    x_t, t, eps = x_t.to(device), t.to(device), eps.to(device)
    return {k: F.mse_loss(fn(x_t, t).float(), eps).item() for k, (_, fn) in nets.items()}


if __name__ == "__main__":
    main()
