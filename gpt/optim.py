"""
The optimizer every trainer builds (configure_optimizers): GPT-3's AdamW groups (decay_groups), and Muon for the transformer blocks' weight
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
Two more for GPUs:
- under torch.distributed (train.py's DDP, where every rank holds the same averaged gradients) each rank
  orthogonalises its share of each shape's matrices and the updates are all-gathered, as modded-nanogpt splits
  the Newton-Schulz work, instead of every rank doing all of it;
- a non-finite step can be skipped on the device (found_inf, as the fused AdamW kernel reads it), so that
  finding out costs a GPU no host sync.
"""

import math

import torch
import torch.distributed as dist

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


def split_newton_schulz(G, steps=5, dtype=torch.float32):
    """newton_schulz of a stack of matrices (n, m, k) with the work split over the processes of torch.distributed:
    rank r orthogonalises matrices r*c .. r*c + c - 1 (c = n / world, rounded up; the stack is padded with zero
    matrices, which stay zero), then every rank gathers all of them. The same result as newton_schulz(G) on one
    process, given the same G on every rank."""
    world, rank = dist.get_world_size(), dist.get_rank()
    n = G.size(0)
    c = -(-n // world)
    if c * world > n:
        G = torch.cat((G, G.new_zeros(c * world - n, *G.shape[1:])))
    mine = newton_schulz(G[rank * c:(rank + 1) * c], steps, dtype).contiguous()
    shares = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(shares, mine)
    return torch.cat(shares)[:n]


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters. ns_dtype: the Newton-Schulz dtype (float32, or bfloat16 where it is fast).
    split: share the Newton-Schulz work among the processes of torch.distributed (split_newton_schulz); None
    splits whenever a process group of more than one is initialised, which assumes, as under DDP, that every
    rank holds the same gradients. Setting self.found_inf (a 0-d tensor, nonzero for a step to skip) before
    step() skips the whole update on the device: momentum and weights stay as they were."""

    def __init__(self, params, lr=0.02, weight_decay=0.0, momentum=0.95, nesterov=True, ns_steps=5,
                 ns_dtype=torch.float32, split=None):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_steps=ns_steps))
        self.ns_dtype = ns_dtype
        self.split = split
        for group in self.param_groups:
            for p in group['params']:
                if p.dim() != 2:
                    raise ValueError(f"Muon is for matrices; got a parameter of shape {tuple(p.shape)}")

    def splits(self):
        if self.split is not None:
            return self.split
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    @torch.no_grad()
    def step(self):
        found_inf = getattr(self, 'found_inf', None)
        keep = None if found_inf is None else found_inf == 0
        # (with keep, every new value is computed as without it and then chosen by torch.where: the same bits for
        # a finite step, and nothing changed for a skipped one, NaN gradients included)
        orthogonalise = split_newton_schulz if self.splits() else newton_schulz
        for group in self.param_groups:
            lr, wd, mu = group['lr'], group['weight_decay'], group['momentum']
            by_shape = {}
            for p in group['params']:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault('momentum_buffer', torch.zeros_like(p))
                if keep is None:
                    buf.mul_(mu).add_(p.grad)
                else:
                    buf.copy_(torch.where(keep, (buf * mu).add_(p.grad), buf))
                by_shape.setdefault(p.shape, []).append((p, p.grad.add(buf, alpha=mu) if group['nesterov'] else buf))
            for shape, items in by_shape.items():
                updates = orthogonalise(torch.stack([u for _, u in items]), group['ns_steps'], self.ns_dtype)
                scale = lr * math.sqrt(max(1.0, shape[0] / shape[1]))
                for (p, _), update in zip(items, updates):
                    if keep is None:
                        p.mul_(1 - lr * wd)
                        p.add_(update, alpha=-scale)
                    else:
                        p.copy_(torch.where(keep, (p * (1 - lr * wd)).add_(update, alpha=-scale), p))


class MuonAdamW:
    """Muon and AdamW (configure_optimizers) behind one optimizer's interface: param_groups (Muon's first),
    defaults (AdamW's), step, zero_grad, state_dict and load_state_dict. self.found_inf, when set, goes to both:
    with a fused AdamW the whole step can then be skipped on the device (train.py does so on GPUs)."""

    def __init__(self, muon, adamw):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self):
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def defaults(self):
        return self.adamw.defaults

    def step(self):
        found_inf = getattr(self, 'found_inf', None)
        for opt in (self.muon, self.adamw):
            if found_inf is not None:
                opt.found_inf = found_inf
            opt.step()
            if found_inf is not None:
                del opt.found_inf

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


def decay_groups(params, weight_decay):
    """GPT-3's AdamW parameter groups: weight decay on matrices (embeddings, Linear weights), none on biases,
    LayerNorm gains and other 1-D tensors. Frozen parameters (a LoRA base) are left out."""
    params = [p for p in params if p.requires_grad]
    return [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
            {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]


def configure_optimizers(model, weight_decay, learning_rate, betas, device_type, eps=1e-8, verbose=True,
                         fused=None, muon_lr=0.0, muon_momentum=0.95, muon_dtype=torch.float32):
    """AdamW on decay_groups(model) (GPT-3). fused: the single-kernel update (None: on CUDA; train.py also asks for
    it on CPU, where it is several times faster than the default per-tensor loop and equal to it up to rounding:
    `python bench.py --variants=forloop,fused`).

    muon_lr > 0: the transformer blocks' weight matrices go to Muon instead (Nesterov momentum, then the update
    orthogonalised by Newton-Schulz iterations in muon_dtype), at that learning rate and with the same decoupled
    weight decay; the embeddings, the head and the 1-D tensors stay on AdamW. Each group's 'lr_scale' is its
    learning rate relative to learning_rate, which train.py's schedule multiplies."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in params if muon_lr and p.dim() == 2 and n.startswith('transformer.h.')]
    groups = decay_groups([p for _, p in params if not any(p is q for q in hidden)], weight_decay)
    if verbose:
        decay, no_decay = groups[0]['params'], groups[1]['params']
        print(f"optimizer: {len(decay)} decayed tensors ({sum(p.numel() for p in decay):,} parameters), "
              f"{len(no_decay)} non-decayed tensors ({sum(p.numel() for p in no_decay):,} parameters)"
              + (f", Muon on {len(hidden)} matrices ({sum(p.numel() for p in hidden):,} parameters)"
                 if hidden else ''))
    if fused is None:  # the fused kernel does the whole update in one launch on CUDA
        fused = device_type == 'cuda'
    # (fused=False would also turn off the foreach kernels: None keeps torch's default)
    adamw = torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, fused=fused or None)
    if not hidden:
        return adamw
    muon = Muon([{'params': hidden, 'lr_scale': muon_lr / learning_rate}], lr=muon_lr,
                weight_decay=weight_decay, momentum=muon_momentum, ns_dtype=muon_dtype)
    return MuonAdamW(muon, adamw)
