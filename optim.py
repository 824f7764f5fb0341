"""
Optimizers for GPT.configure_optimizers: GPT-3's AdamW groups, and Muon for the transformer blocks' weight
matrices (Jordan et al. 2024, "Muon: an optimizer for hidden layers"; as modded-nanogpt and nanochat train
them) with AdamW for the rest.

Muon: momentum (Nesterov by default) on the gradient, then the update replaced by an approximation of its
orthogonal polar factor U V^T (G = U S V^T), computed by five Newton-Schulz iterations of a quintic whose
coefficients push every singular value into roughly [0.7, 1.2] fast rather than exactly to 1. It follows
torch.optim.Muon's update (the same coefficients, Nesterov momentum, decoupled weight decay, and the
sqrt(max(1, rows/cols)) learning-rate scale), with two differences that matter on a CPU:
- the iterations run in a dtype chosen for the machine (float32, unless the device has fast bfloat16):
  torch.optim.Muon always uses bfloat16, whose matmuls run at ~1 GFLOP/s on a CPU without AVX512_BF16/AMX,
  which made one step of a 0.8M-parameter model take seconds;
- matrices of the same shape are orthogonalised together, one batched matmul per iteration.
"""

import math

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic (torch.optim.Muon's defaults)


def newton_schulz(G, steps=5, dtype=torch.float32, eps=1e-7):
    """Approximately orthogonalise each matrix of G (..., m, n): X <- a X + (b A + c A^2) X with A = X X^T,
    from X = G / ||G||_F. Returns U phi(S) V^T in G's dtype, phi the iterated quintic on the normalised
    singular values."""
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype).reshape(-1, *G.shape[-2:])
    wide = X.size(-2) <= X.size(-1)  # iterate on the side with the smaller Gram matrix
    if not wide:
        X = X.mT
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):  # (baddbmm: the scaling and the sum ride on the matmuls, no separate passes)
        A = torch.bmm(X, X.mT)
        X = torch.baddbmm(X, torch.baddbmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return (X if wide else X.mT).reshape(G.shape).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters. ns_dtype: the Newton-Schulz dtype (float32, or bfloat16 where it is fast)."""

    def __init__(self, params, lr=0.02, weight_decay=0.0, momentum=0.95, nesterov=True, ns_steps=5,
                 ns_dtype=torch.float32):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_steps=ns_steps))
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group['params']:
                if p.dim() != 2:
                    raise ValueError(f"Muon is for matrices; got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, wd, mu = group['lr'], group['weight_decay'], group['momentum']
            by_shape = {}
            for p in group['params']:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault('momentum_buffer', torch.zeros_like(p))
                buf.mul_(mu).add_(p.grad)
                by_shape.setdefault(p.shape, []).append((p, p.grad.add(buf, alpha=mu) if group['nesterov'] else buf))
            for shape, items in by_shape.items():
                updates = newton_schulz(torch.stack([u for _, u in items]), group['ns_steps'], self.ns_dtype)
                scale = lr * math.sqrt(max(1.0, shape[0] / shape[1]))
                for (p, _), update in zip(items, updates):
                    p.mul_(1 - lr * wd)
                    p.add_(update, alpha=-scale)


class MuonAdamW:
    """Muon and AdamW (GPT.configure_optimizers) behind one optimizer's interface: param_groups (Muon's first),
    step, zero_grad, state_dict and load_state_dict."""
    defaults = {}  # (not the fused AdamW: train.py then skips a non-finite step on the host)

    def __init__(self, muon, adamw):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self):
        return self.muon.param_groups + self.adamw.param_groups

    def step(self):
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none=True):
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {'muon': self.muon.state_dict(), 'adamw': self.adamw.state_dict()}

    def load_state_dict(self, state):
        if set(state) != {'muon', 'adamw'}:
            raise ValueError("this optimizer state is AdamW's alone; the run being resumed did not use Muon "
                             "(resume it with the optimizer it had)")
        self.muon.load_state_dict(state['muon'])
        self.adamw.load_state_dict(state['adamw'])
