"""Cost of the differentiable latency loss against a ProxylessNAS training step.

On the ProxylessNAS space (``--width-mult``, ``--image-size``) with the embedded predictor's latency table, times
(median of ``--repeats`` after ``--warmup`` untimed runs, device synchronised):

- the latency loss: ``LatencyLoss`` forward (expected latency from ``softmax(alpha)``, combined with a CE value)
  and backward to ``alpha``, both forms;
- a weight step (one sampled path, forward, backward, SGD) at ``--batch-size``;
- an architecture step (``ProxylessSupernet.arch_gradient``: traced path, binary-gate gradient, latency term),
  ``full`` and ``two`` modes;
- one training step as :class:`~hwnas.oneshot.ProxylessModule` runs it with the default schedule (a weight step
  plus 1/``--arch-every`` architecture step),

and prints them with the loss's share of each. Goal: the loss costs < 1 % of a training step.

    python -m experiments.benchmarks.latency_loss_cost [--device cuda] [--batch-size 64] [--image-size 32]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch


def _timer(device: torch.device):
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(fn, repeats: int, warmup: int) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmarks.latency_loss_cost",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width-mult", type=float, default=0.35)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--arch-every", type=int, default=5)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--loss-repeats", type=int, default=200)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for category in (DeprecationWarning, FutureWarning):   # torch's jit/ONNX deprecation notices
        warnings.filterwarnings("ignore", category=category)

    import hwnas
    import search_spaces as ss
    from hwnas.nas import LatencyLoss, LatencyLossConfig
    from hwnas.oneshot import ProxylessSupernet

    device = torch.device(args.device)
    torch.manual_seed(0)
    space = ss.create_space("proxyless", input_size=args.image_size, num_classes=10, width_mult=args.width_mult)
    table = hwnas.LatencyTable.build(space, hwnas.load_latency_predictor("auto"))
    net = ProxylessSupernet(space, table.labels, table.choices).to(device).train()
    target = 0.5 * (table.min_latency() + table.max_latency())
    losses = {mode: LatencyLoss(table, LatencyLossConfig(target_ms=target, mode=mode)).to(device)
              for mode in ("mul#log", "add#linear")}
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    ce = torch.tensor(2.3, device=device)
    opt = torch.optim.SGD(space.parameters(), lr=0.01, momentum=0.9)
    run = _timer(device)

    def loss_step(loss):
        def fn():
            (g,) = torch.autograd.grad(loss(ce, net.alpha), net.alpha)
            return g
        return fn

    def weight_step():
        out = net(x, net.sample())
        value = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    def arch_step(mode):
        return lambda: net.arch_gradient(x, y, losses["mul#log"], mode)

    ms = {f"loss {m} fwd+bwd": run(loss_step(fn), args.loss_repeats, 10) for m, fn in losses.items()}
    ms["weight step"] = run(weight_step, args.repeats, args.warmup)
    ms["arch step (full)"] = run(arch_step("full"), args.repeats, args.warmup)
    ms["arch step (two)"] = run(arch_step("two"), args.repeats, args.warmup)
    ms[f"training step (weight + 1/{args.arch_every} arch full)"] = (
        ms["weight step"] + ms["arch step (full)"] / args.arch_every)
    loss_ms = max(ms["loss mul#log fwd+bwd"], ms["loss add#linear fwd+bwd"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; proxyless width {args.width_mult}, {args.image_size}px, batch {args.batch_size}, "
          f"{len(table.labels)} choice layers, alpha {tuple(net.alpha.shape)}")
    print(f"{'':52s} {'ms':>10s} {'loss share':>11s}")
    for key, value in ms.items():
        share = "" if key.startswith("loss") else f"{100 * loss_ms / value:10.3f}%"
        print(f"{key:52s} {value:10.4f} {share:>11s}")
    worst = 100 * loss_ms / min(ms["weight step"], ms["arch step (two)"])
    print(f"latency loss (slower form) vs the cheapest step: {worst:.3f} % (goal < 1 %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
