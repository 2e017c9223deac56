"""ProxylessSupernet: path forward = build_subnet, binary-gate gradient = the gated network's autograd, exact
latency gradient inside the architecture step, "two" mode, sampling, the lambda effect, ProxylessBatches."""

from __future__ import annotations

import pytest
import torch
from nni.nas.nn.pytorch import LayerChoice

import hwnas
import search_spaces as ss
from hwnas.errors import ArchitectureError
from hwnas.nas._latency_loss import LatencyLoss, LatencyLossConfig
from hwnas.oneshot._proxyless import ProxylessBatches
from hwnas.oneshot._proxyless_supernet import ProxylessSupernet

SIDE = 16


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    space = ss.create_space("proxyless", input_size=SIDE, num_classes=10, width_mult=0.25)
    return hwnas.LatencyTable.build(space, hwnas.load_latency_predictor("torchscript-cpu-xeon"),
                                    cache_dir=tmp_path_factory.mktemp("tables"))


def make_net(table, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    space = ss.create_space("proxyless", input_size=SIDE, num_classes=10, width_mult=0.25)
    return ProxylessSupernet(space, table.labels, table.choices, init_std=0.5, seed=seed).to(dtype)


def batch(n=4, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIDE, SIDE, generator=gen, dtype=dtype), torch.randint(0, 10, (n,), generator=gen)


def gated_reference(net, x, y, active, involved=None):
    """The reference's 'full'/'two' MixedEdge: y_l = sum_j g_lj o_lj (inactive outputs detached), g one-hot leaf."""
    L, width = net.mask.shape
    gates = torch.zeros(L, width, dtype=x.dtype)
    for row, j in enumerate(active):
        gates[row, j] = 1.0
    gates.requires_grad_()
    h = net.space.stem(x)
    for block in net.space.blocks:
        if not isinstance(block, LayerChoice):
            h = block(h)
            continue
        row = net.labels.index(block.label)
        names = net.choices[block.label]
        cols = range(len(names)) if involved is None else involved[row]
        out = 0
        for j in cols:
            o = block[names[j]](h)
            out = out + gates[row, j] * (o if j == active[row] else o.detach())
        h = out
    loss = torch.nn.functional.cross_entropy(net.space.head(h), y)
    (dgate,) = torch.autograd.grad(loss, gates)
    if involved is None:
        q = net.probs().detach()
    else:
        keep = torch.zeros(L, width, dtype=torch.bool)
        for row, cols in enumerate(involved):
            keep[row, list(cols)] = True
        q = torch.softmax(net.alpha.detach().masked_fill(~keep, float("-inf")), dim=-1)
    # d alpha_i = sum_j dL/dg_j q_j (delta_ij - q_i), written out as the reference's double loop.
    expected = torch.zeros_like(q)
    for row in range(L):
        for i in range(width):
            for j in range(width):
                expected[row, i] += dgate[row, j] * q[row, j] * (float(i == j) - q[row, i])
    return expected


def estimator(net, x, y, active, involved=None):
    logits, inputs, outputs = net.forward_trace(x, active)
    loss = torch.nn.functional.cross_entropy(logits, y)
    grads = torch.autograd.grad(loss, outputs)
    return net.binary_gate_grad(inputs, outputs, grads, active, involved)


def test_path_forward_is_the_subnet(table):
    net = make_net(table).eval()
    x, _ = batch()
    for seed in range(2):
        arch = ss.random_arch(net.space, seed)
        subnet = ss.build_subnet(net.space, arch).eval()
        with torch.no_grad():
            assert torch.equal(net(x, net.indices(arch)), subnet(x))
    assert net.arch(net.indices(arch)) == arch


def test_labels_must_match_the_space(table):
    space = ss.create_space("proxyless", input_size=SIDE, num_classes=10, width_mult=0.25)
    choices = table.choices
    choices["s1_b1"] = list(reversed(choices["s1_b1"]))
    with pytest.raises(ArchitectureError, match="do not match the space"):
        ProxylessSupernet(space, table.labels, choices)
    with pytest.raises(ArchitectureError, match="does not fit"):
        make_net(table).indices({"s1_b0": "k3e3"})


@pytest.mark.parametrize("mode", ["full", "two"])
def test_binary_gate_gradient_matches_gated_network(table, mode):
    net = make_net(table, dtype=torch.float64).train()   # batch statistics: outputs do not depend on history
    x, y = batch(dtype=torch.float64)
    if mode == "full":
        active, involved = net.sample(), None
    else:
        active, involved = net.sample_two()
    ours = estimator(net, x, y, active, involved)
    reference = gated_reference(net, x, y, active, involved)
    scale = float(reference.abs().max())
    assert scale > 1e-4
    assert torch.allclose(ours, reference, rtol=1e-9, atol=1e-12 * scale)
    assert torch.all(ours[~net.mask] == 0)
    assert torch.allclose(ours.sum(1), torch.zeros(len(net.labels), dtype=torch.float64), atol=1e-12)
    if involved is not None:   # only the two involved candidates of each label move
        assert int((ours != 0).sum(1).max()) <= 2


def test_latency_part_of_the_architecture_gradient_is_exact(table):
    """add#linear: grad(lambda) - grad(0) from the same sampled path is exactly d/d alpha of the latency term."""
    x, y = batch(dtype=torch.float64)
    target = 0.5 * (table.min_latency() + table.max_latency())
    grads = {}
    for lam in (0.0, 3.0):
        net = make_net(table, dtype=torch.float64).eval()
        loss = LatencyLoss(table, LatencyLossConfig(target_ms=target, mode="add#linear", lam=lam))
        grads[lam], info = net.arch_gradient(x, y, loss, "full")
    term = LatencyLoss(table, LatencyLossConfig(target_ms=target, mode="add#linear", lam=3.0))
    alpha = net.alpha.detach().clone()
    numeric = torch.zeros_like(alpha)
    h = 1e-4
    for row, col in net.mask.nonzero().tolist():
        plus, minus = alpha.clone(), alpha.clone()
        plus[row, col] += h
        minus[row, col] -= h
        zero = torch.tensor(0.0, dtype=torch.float64)
        numeric[row, col] = (term(zero, plus) - term(zero, minus)) / (2 * h)
    diff = grads[3.0] - grads[0.0]
    rel = (diff - numeric).abs()[net.mask] / numeric.abs()[net.mask]
    assert float(rel.max()) < 1e-3
    assert info["active"] == make_net(table).sample()   # same seed, same path: the comparison is like for like


@pytest.mark.parametrize("mode", ["full", "two"])
def test_architecture_gradient_is_exact_under_mul_log(table, mode):
    """mul#log, L = a·CE·f(E): the gradient is a·f(E) times the binary-gate gradient of CE alone (the latency
    factor reaches the block outputs) plus a·CE·d f(E(alpha))/d alpha (checked by central differences), all from
    the same sampled path."""
    x, y = batch(dtype=torch.float64)
    target = 0.5 * (table.min_latency() + table.max_latency())
    ce_loss = LatencyLoss(table, LatencyLossConfig(target_ms=target, mode="add#linear", lam=0.0))
    # batch statistics (train mode): the cross-entropy depends on the path, so its gradient is not negligible
    ce_grad, ce_info = make_net(table, dtype=torch.float64).train().arch_gradient(x, y, ce_loss, mode)
    cfg = LatencyLossConfig(target_ms=target, mode="mul#log", alpha=0.2, beta=0.3)
    loss = LatencyLoss(table, cfg)
    net = make_net(table, dtype=torch.float64).train()
    grad, info = net.arch_gradient(x, y, loss, mode)
    assert info["active"] == ce_info["active"] and torch.equal(info["ce"], ce_info["ce"])   # like for like
    ce, expected = info["ce"], info["expected_ms"]
    factor = (torch.log(expected / cfg.log_unit) / torch.log(torch.tensor(target / cfg.log_unit,
                                                                           dtype=torch.float64))) ** cfg.beta
    assert float(info["loss"]) == pytest.approx(float(cfg.alpha * ce * factor), rel=1e-12)
    assert abs(float(factor) - 1.0) > 1e-3   # E differs from the target: the factor is not a no-op
    alpha = net.alpha.detach().clone()
    numeric = torch.zeros_like(alpha)
    h = 1e-5
    for row, col in net.mask.nonzero().tolist():
        plus, minus = alpha.clone(), alpha.clone()
        plus[row, col] += h
        minus[row, col] -= h
        numeric[row, col] = (loss(ce, plus) - loss(ce, minus)) / (2 * h)
    want = cfg.alpha * factor * ce_grad + numeric
    scale = float(want[net.mask].abs().max())
    # both parts matter at this tolerance
    assert float(numeric[net.mask].abs().max()) > 1e-3 * scale and float(ce_grad.abs().max()) > 1e-3 * scale
    err = float((grad - want)[net.mask].abs().max()) / scale
    assert err < 1e-6, f"max error {err:.3g} of the largest gradient entry"
    assert torch.all(grad[~net.mask] == 0)


def test_two_mode_rescale_keeps_other_probabilities(table):
    net = make_net(table)
    active, involved = net.sample_two()
    mask = net.involved_mask(involved)
    before_alpha = net.alpha.detach().clone()
    before = net.probs().detach()
    with torch.no_grad():
        net.alpha.add_(torch.where(mask, torch.randn_like(net.alpha), torch.zeros_like(net.alpha)))
    net.rescale_two(before_alpha, mask)
    after = net.probs().detach()
    assert torch.allclose(after[~mask & net.mask], before[~mask & net.mask], atol=1e-6)
    assert torch.allclose((after * mask).sum(1), (before * mask).sum(1), atol=1e-6)
    assert all(a == pair[0] and len(set(pair)) == 2 for a, pair in zip(active, involved))


def test_sampling_follows_alpha_never_pads_and_is_seeded(table):
    net = make_net(table)
    draws = torch.tensor([net.sample() for _ in range(300)])
    six = torch.tensor(table.n_choices) == 6
    assert int(draws[:, six].max()) <= 5          # labels with 6 choices never get the padding column
    assert draws.unique().numel() == 7
    assert make_net(table).sample() == make_net(table).sample()
    with torch.no_grad():
        net.alpha[:, 2] = 30.0
    net.refresh_host_probs()
    assert net.sample() == [2] * len(table.labels)
    assert net.argmax() == [2] * len(table.labels)


def test_large_lambda_lowers_expected_latency(table):
    """The same seed, data and steps: add#linear with a large lambda ends with a lower expected latency than 0."""
    x, y = batch(8, seed=3)
    target = table.min_latency()
    final = {}
    for lam in (0.0, 5.0):
        net = make_net(table).train()
        loss = LatencyLoss(table, LatencyLossConfig(target_ms=target, mode="add#linear", lam=lam))
        opt = torch.optim.Adam([net.alpha], lr=0.05, betas=(0.0, 0.999))
        start = float(loss.expected_latency(net.alpha.detach()))
        for _ in range(4):
            grad, _ = net.arch_gradient(x, y, loss, "two")
            net.alpha.grad = grad
            opt.step()
            net.refresh_host_probs()
        final[lam] = float(loss.expected_latency(net.alpha.detach()))
    assert final[5.0] < final[0.0]
    assert final[5.0] < start


class _Listing:
    """A loader of numbered batches whose order depends on its epoch only (like ResidentLoader)."""

    def __init__(self, n, tag):
        self.n, self.tag, self.epoch = n, tag, 0
        self.sampler = self

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter([(self.tag, self.epoch, i) for i in range(self.n)])


def test_batches_schedule_and_mid_epoch_resume():
    def epoch_items(batches, epoch, skip=0):
        batches.set_epoch(epoch)
        batches.skip(skip)
        return list(batches)

    full = ProxylessBatches(_Listing(7, "w"), _Listing(2, "a"), arch_every=2, warmup_epochs=1)
    e0, e1, e2 = (epoch_items(full, e) for e in range(3))
    assert all("arch" not in b for b in e0)                         # warm-up: weights only
    assert [i for i, b in enumerate(e1) if "arch" in b] == [1, 3, 5]
    # The architecture stream cycles (its k-th pass uses set_epoch(k)) and continues across epochs.
    assert [b["arch"] for b in e1 + e2 if "arch" in b] == [
        ("a", 0, 0), ("a", 0, 1), ("a", 1, 0), ("a", 1, 1), ("a", 2, 0), ("a", 2, 1)]
    resumed = ProxylessBatches(_Listing(7, "w"), _Listing(2, "a"), arch_every=2, warmup_epochs=1)
    assert epoch_items(resumed, 2, skip=4) == e2[4:]
    assert epoch_items(resumed, 1, skip=3) == e1[3:]
    with pytest.raises(ValueError, match="non-empty"):
        ProxylessBatches(_Listing(3, "w"), _Listing(0, "a"))
