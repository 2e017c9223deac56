"""ProxylessNAS supernet over a chain search space: single-path sampling and the binary-gate gradient (private).

:class:`ProxylessSupernet` holds a :class:`~search_spaces.ChainSpace` *unchanged* (its ``LayerChoice`` blocks keep
every candidate under ``blocks.<label>.<choice>``, so :func:`search_spaces.build_subnet` copies a trained
subnet out of it) and one architecture-parameter matrix ``alpha`` of shape ``(L, max_choices)`` (row ``l`` for the
``l``-th label of the latency table, entries past the label's choice count masked out of every softmax).

- Weight step: :meth:`sample` draws one candidate per label from ``softmax(alpha)`` (a CPU generator over a host
  copy of the probabilities, so choosing the path never waits on the device); :meth:`forward` runs only those
  candidates.
- Architecture step (:meth:`binary_gate_grad`): ProxylessNAS's binary-gate estimator (Cai et al., ICLR 2019,
  eq. 4; reference code ``search/modules/mix_op.py``). With ``g_l`` the one-hot gate of the sampled path and
  ``o_lj`` the output candidate ``j`` would give on the same input, ``∂L/∂g_lj = <∂L/∂y_l, o_lj>`` and
  ``∂L/∂α_li ≈ Σ_j ∂L/∂g_lj · p_lj (δ_ij − p_li)``. The sampled path is run with autograd, ``∂L/∂y_l`` of every
  block output comes from one ``torch.autograd.grad`` (no weight gradients are computed), and the other candidates
  run once on the saved block inputs under ``no_grad`` after the backward pass. ``"full"`` prices every candidate
  (the reference's default ``full_v2``); ``"two"`` samples two candidates per layer and restricts the softmax to
  them (the paper's memory-saving variant; :meth:`rescale_two` then keeps the other candidates' probabilities).

Limitations: candidates must map one tensor to one tensor. As in the reference ``full_v2`` mode, the extra
no-grad forwards run in the module's current (training) mode, so BatchNorm layers of the unsampled candidates see
the architecture batch and update their running statistics; the derived subnet's BatchNorm is recalibrated
before it is evaluated. Unlike the reference, the gradient of a layer whose sampled candidate is ``skip`` is kept.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from nni.nas.nn.pytorch import LayerChoice
from torch import nn

from hwnas.errors import ArchitectureError

__all__ = ["BINARY_MODES", "ProxylessSupernet"]

BINARY_MODES = ("full", "two")


class ProxylessSupernet(nn.Module):
    """A chain search space plus ProxylessNAS architecture parameters (see the module docstring).

    Parameters
    ----------
    space : ChainSpace
        An un-mutated space (e.g. ``search_spaces.create_space("proxyless", ...)``); kept as ``self.space``.
    labels : sequence of str
        Choice labels in network order (a latency table's ``labels``).
    choices : dict of str to list of str
        Label → candidate names, in the order of ``alpha``'s columns (a latency table's ``choices``).
    init_std : float
        ``alpha`` starts as ``N(0, init_std)`` (reference: ``arch_init_type="normal"``, ratio 1e-3).
    seed : int
        Seed of the initialisation and of the path-sampling generator.

    Raises
    ------
    ArchitectureError
        The labels or choices do not match the space's.
    """

    def __init__(self, space: nn.Module, labels: Sequence[str], choices: dict[str, Sequence[str]],
                 init_std: float = 1e-3, seed: int = 0):
        super().__init__()
        import search_spaces as ss

        space_choices = ss.choices(space)
        labels = list(labels)
        if labels != list(space_choices) or any(list(choices[k]) != space_choices[k] for k in labels):
            raise ArchitectureError(f"the latency table's labels/choices {dict(choices)} do not match the space's "
                                    f"{space_choices}; build the table from this space")
        self.space = space
        self.labels = labels
        self.choices = {k: list(choices[k]) for k in labels}
        counts = torch.tensor([len(self.choices[k]) for k in labels])
        width = int(counts.max())
        self.register_buffer("mask", torch.arange(width)[None, :] < counts[:, None], persistent=False)
        gen = torch.Generator().manual_seed(int(seed))
        self.alpha = nn.Parameter(torch.randn(len(labels), width, generator=gen) * float(init_std))
        self.generator = torch.Generator().manual_seed(int(seed) + 1)
        # Network order: ("stem"|block|"head", module, row of alpha or None, candidate modules in column order).
        position = {k: i for i, k in enumerate(labels)}
        self._plan: list[tuple[nn.Module, int | None, list[nn.Module]]] = [(space.stem, None, [])]
        for name, block in space.blocks.named_children():
            if isinstance(block, LayerChoice):
                row = position[block.label]
                self._plan.append((block, row, [block[c] for c in self.choices[block.label]]))
            else:
                self._plan.append((block, None, []))
        self._plan.append((space.head, None, []))
        self._host_probs: torch.Tensor | None = None
        self._event: Any = None

    # -- probabilities ----------------------------------------------------------------------------------------------
    def probs(self) -> torch.Tensor:
        """``softmax(alpha)`` per row, ``(L, max_choices)``, zero past each label's choice count (differentiable)."""
        return torch.softmax(self.alpha.masked_fill(~self.mask, float("-inf")), dim=-1)

    def refresh_host_probs(self) -> None:
        """Copy the probabilities to the host for sampling (asynchronous on CUDA; waited for at the next sample)."""
        with torch.no_grad():
            p = self.probs().detach().float()
        if p.device.type == "cuda":
            if self._host_probs is None or self._host_probs.shape != p.shape or not self._host_probs.is_pinned():
                self._host_probs = torch.empty(p.shape, dtype=torch.float32, pin_memory=True)
            self._host_probs.copy_(p, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host_probs = p.clone()
            self._event = None

    def host_probs(self) -> torch.Tensor:
        """The host copy of the probabilities (made on first use; after an update, waits for its copy)."""
        if self._host_probs is None:
            self.refresh_host_probs()
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return self._host_probs

    # -- sampling ---------------------------------------------------------------------------------------------------
    def sample(self) -> list[int]:
        """One candidate index per label drawn from ``softmax(alpha)`` with :attr:`generator`."""
        return torch.multinomial(self.host_probs(), 1, generator=self.generator)[:, 0].tolist()

    def sample_two(self) -> tuple[list[int], list[list[int]]]:
        """ProxylessNAS ``"two"`` mode: two distinct candidates per label, one of them active.

        Returns
        -------
        active : list of int
            The active candidate per label (drawn among the two by their renormalised probabilities).
        involved : list of [int, int]
            The two candidates per label, active first.
        """
        p = self.host_probs()
        pair = torch.multinomial(p, 2, replacement=False, generator=self.generator)
        pick = torch.multinomial(p.gather(1, pair), 1, generator=self.generator)[:, 0]
        active = pair.gather(1, pick[:, None])[:, 0]
        other = pair.gather(1, (1 - pick)[:, None])[:, 0]
        return active.tolist(), [[a, o] for a, o in zip(active.tolist(), other.tolist())]

    def argmax(self) -> list[int]:
        """The most probable candidate per label (ties: the first)."""
        return self.alpha.detach().masked_fill(~self.mask, float("-inf")).argmax(dim=1).tolist()

    def arch(self, indices: Sequence[int] | None = None) -> dict[str, str]:
        """The architecture dict of candidate indices (default: :meth:`argmax`)."""
        indices = self.argmax() if indices is None else indices
        return {label: self.choices[label][int(j)] for label, j in zip(self.labels, indices)}

    def indices(self, arch: dict[str, str]) -> list[int]:
        """Candidate indices of an architecture dict (validated)."""
        try:
            return [self.choices[label].index(arch[label]) for label in self.labels]
        except (KeyError, ValueError):
            raise ArchitectureError(f"architecture {arch!r} does not fit the supernet's labels/choices "
                                    f"{self.choices}") from None

    # -- forward ----------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        """Logits of the single path ``indices`` (one candidate index per label)."""
        for module, row, candidates in self._plan:
            x = module(x) if row is None else candidates[indices[row]](x)
        return x

    def forward_trace(self, x: torch.Tensor, indices: Sequence[int]
                      ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """:meth:`forward`, also returning every choice block's input and output (rows in label order)."""
        inputs: list[Any] = [None] * len(self.labels)
        outputs: list[Any] = [None] * len(self.labels)
        for module, row, candidates in self._plan:
            if row is None:
                x = module(x)
            else:
                inputs[row] = x
                x = candidates[indices[row]](x)
                outputs[row] = x
        return x, inputs, outputs

    def compile_targets(self) -> list[nn.Module]:
        """Modules to compile one by one (stem, fixed blocks, every candidate, head): the path changes per step."""
        targets = []
        for module, row, candidates in self._plan:
            targets.extend(candidates if row is not None else [module])
        return [m for m in targets if any(True for _ in m.parameters())]

    # -- architecture gradient --------------------------------------------------------------------------------------
    def arch_gradient(self, x: torch.Tensor, y: torch.Tensor, latency_loss: Any, mode: str = "full"
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The ProxylessNAS gradient of one architecture batch to ``alpha`` (nothing is updated).

        Samples a path (``mode="two"``: two candidates per label, one active), runs it with autograd, and adds the
        binary-gate estimate of the cross-entropy's gradient (:meth:`binary_gate_grad`) to the exact autograd
        gradient of the latency term. For ``mul#log`` the cross-entropy's gradient carries the latency factor
        (``∂L/∂y = α_reg · f(E) · ∂CE/∂y``), as in the reference's ``loss.backward()``.

        Parameters
        ----------
        x, y : Tensor
            Images and labels of the architecture batch.
        latency_loss : LatencyLoss
            ``combine(ce, expected_ms)`` and ``expected_latency(alpha)`` of the target.
        mode : {"full", "two"}
            Binary-gate mode (module docstring).

        Returns
        -------
        grad : Tensor
            ``∂L/∂alpha``, shape of ``alpha`` (0 at masked entries).
        info : dict
            ``loss``, ``ce``, ``expected_ms`` (detached scalar tensors), ``active`` (the sampled indices) and
            ``involved`` (``"two"``: a boolean mask of the two candidates per label, else ``None``).
        """
        if mode not in BINARY_MODES:
            raise ValueError(f"binary mode must be one of {list(BINARY_MODES)}, got {mode!r}")
        if mode == "two":
            active, involved = self.sample_two()
        else:
            active, involved = self.sample(), None
        with torch.enable_grad():
            logits, inputs, outputs = self.forward_trace(x, active)
            ce = nn.functional.cross_entropy(logits, y)
            expected = latency_loss.expected_latency(self.alpha)
            loss = latency_loss.combine(ce, expected)
            *grad_outputs, grad_alpha = torch.autograd.grad(loss, [*outputs, self.alpha])
        grad = grad_alpha + self.binary_gate_grad(inputs, outputs, grad_outputs, active, involved)
        info = {"loss": loss.detach(), "ce": ce.detach(), "expected_ms": expected.detach(), "active": active,
                "involved": None if involved is None else self.involved_mask(involved)}
        return grad, info

    @torch.no_grad()
    def binary_gate_grad(self, inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor],
                         grad_outputs: Sequence[torch.Tensor], active: Sequence[int],
                         involved: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """The binary-gate estimate of the loss gradient to ``alpha`` (module docstring), ``(L, max_choices)``.

        Parameters
        ----------
        inputs, outputs : sequence of Tensor
            Every choice block's input and output in the traced forward (:meth:`forward_trace`).
        grad_outputs : sequence of Tensor
            ``∂L/∂output`` of every choice block.
        active : sequence of int
            The sampled candidate per label.
        involved : sequence of sequences of int, optional
            Candidates priced per label: ``None`` = all (``"full"``), or two per label (``"two"``).

        Returns
        -------
        Tensor
            ``Σ_j ∂L/∂g_lj q_lj (δ_ij − q_li)`` with ``q`` the softmax over the involved candidates; 0 elsewhere.
        """
        L, width = self.mask.shape
        dtype = self.alpha.dtype   # sums accumulate at least in alpha's precision (bf16 activations included)
        values, flat = [], []
        for (module, row, candidates) in self._plan:
            if row is None:
                continue
            x, g = inputs[row], grad_outputs[row]
            cols = range(len(candidates)) if involved is None else involved[row]
            for j in cols:
                out = outputs[row] if j == active[row] else candidates[j](x)
                values.append(torch.sum(out * g, dtype=torch.promote_types(out.dtype, dtype)))
                flat.append(row * width + j)
        index = torch.tensor(flat, dtype=torch.long)
        if self.alpha.device.type == "cuda":
            index = index.pin_memory().to(self.alpha.device, non_blocking=True)
        gate = torch.zeros(L * width, dtype=dtype, device=self.alpha.device)
        gate.index_copy_(0, index, torch.stack(values).to(dtype))
        gate = gate.view(L, width)
        if involved is None:
            q = self.probs()
        else:
            chosen = torch.zeros(L * width, dtype=torch.bool, device=self.alpha.device)
            chosen[index] = True
            q = torch.softmax(self.alpha.masked_fill(~chosen.view(L, width), float("-inf")), dim=-1)
        weighted = q * gate
        return weighted - q * weighted.sum(dim=1, keepdim=True)

    def involved_mask(self, involved: Sequence[Sequence[int]]) -> torch.Tensor:
        """Boolean ``(L, max_choices)`` mask of the involved candidates of ``"two"`` mode."""
        mask = torch.zeros(self.mask.shape, dtype=torch.bool)
        for row, cols in enumerate(involved):
            mask[row, list(cols)] = True
        if self.alpha.device.type == "cuda":   # pinned: the copy does not wait for the device
            mask = mask.pin_memory()
        return mask.to(self.alpha.device, non_blocking=True)

    @torch.no_grad()
    def rescale_two(self, before: torch.Tensor, involved: torch.Tensor) -> None:
        """After an update in ``"two"`` mode, shift the involved entries so their total probability mass is kept.

        Parameters
        ----------
        before : Tensor
            ``alpha`` before the update (a copy).
        involved : Tensor
            Boolean mask of the involved entries (:meth:`involved_mask`).
        """
        old = torch.logsumexp(before.masked_fill(~involved, float("-inf")), dim=1, keepdim=True)
        new = torch.logsumexp(self.alpha.masked_fill(~involved, float("-inf")), dim=1, keepdim=True)
        self.alpha.sub_(torch.where(involved, new - old, torch.zeros_like(self.alpha)))
