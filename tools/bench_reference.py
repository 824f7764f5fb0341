"""
The reference bench.py compares against: a plain nanoGPT-style GPT with the same architecture and
parameter names as model.GPT (pre-norm GPT-2 blocks), written the obvious way (nn.Dropout, SDPA,
exact or tanh GELU as configured) and trained eagerly in fp32 with torch.optim.AdamW's defaults.
It is deliberately independent of model.py: a speed-up that bench.py reports is against code that
shares none of ours.
"""

import torch
import torch.nn as nn
from torch.nn import functional as F


class RefAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n_head, self.dropout = c.n_head, c.dropout
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.resid_dropout = nn.Dropout(c.dropout)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class RefMLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, c.d_ff, bias=c.bias)
        self.gelu = nn.GELU(approximate=c.gelu_approx)
        self.c_proj = nn.Linear(c.d_ff, c.n_embd, bias=c.bias)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class RefBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias)
        self.attn = RefAttention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias)
        self.mlp = RefMLP(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class RefGPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.padded_vocab_size, c.n_embd),
            wpe=nn.Embedding(c.block_size, c.n_embd),
            drop=nn.Dropout(c.dropout),
            h=nn.ModuleList([RefBlock(c) for _ in range(c.n_layer)]),
            ln_f=nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias),
        ))
        self.lm_head = nn.Linear(c.n_embd, c.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx, targets):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


# ----------------------------------------------------------------------------- nanoGPT's CPU recipe
# `python tools/bench_reference.py --data_dir=data/shakespeare_char` trains as nanoGPT's README does on a CPU
# (python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1
#  --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
#  --dropout=0.0), with nanoGPT's loop written out plainly: a random batch drawn from a fresh memmap each step,
# fp32, torch.optim.AdamW's default kernel, a cosine schedule, and train/val losses over 20 random batches every
# 250 iterations, printed as nanoGPT prints them (`bench.py --mode=speedrun` reads those lines), with a
# checkpoint written whenever val improves. It uses no module of this repository but the data files.

def nanogpt_cpu_recipe(data_dir, max_iters=2000, seed=1337):
    import json
    import math
    import os
    import tempfile
    import time
    from dataclasses import dataclass

    import numpy as np

    @dataclass
    class Config:  # what RefGPT reads
        n_layer: int = 4
        n_head: int = 4
        n_embd: int = 128
        block_size: int = 64
        vocab_size: int = 65
        dropout: float = 0.0
        bias: bool = True
        gelu_approx: str = 'none'  # nanoGPT's nn.GELU()
        layer_norm_eps: float = 1e-5
        d_ff: int = 512
        padded_vocab_size: int = 65

    with open(os.path.join(data_dir, 'meta.json')) as f:
        vocab = json.load(f)['vocab_size']
    batch_size, block_size, eval_iters, eval_interval = 12, 64, 20, 250
    lr, min_lr, warmup, decay = 1e-3, 1e-4, 100, max_iters
    torch.manual_seed(seed)
    model = RefGPT(Config(vocab_size=vocab, padded_vocab_size=vocab))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{'params': [p for p in params if p.dim() >= 2], 'weight_decay': 0.1},
                                   {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}],
                                  lr=lr, betas=(0.9, 0.99))

    def get_batch(split):
        data = np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=np.uint16, mode='r')
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
        return x, y

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {split: torch.stack([model(*get_batch(split))[1] for _ in range(eval_iters)]).mean().item()
               for split in ('train', 'val')}
        model.train()
        return out

    def get_lr(it):
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it > decay:
            return min_lr
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * (it - warmup) / (decay - warmup))) * (lr - min_lr)

    best, t0 = float('inf'), time.time()
    X, Y = get_batch('train')
    for it in range(max_iters + 1):
        for group in optimizer.param_groups:
            group['lr'] = get_lr(it)
        if it % eval_interval == 0:
            losses = estimate_loss()
            print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
            if losses['val'] < best and it > 0:
                best = losses['val']
                torch.save({'model': model.state_dict(), 'optimizer': optimizer.state_dict()},
                           os.path.join(tempfile.gettempdir(), 'bench_reference_ckpt.pt'))
        if it == max_iters:
            break
        _, loss = model(X, Y)
        X, Y = get_batch('train')
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t1 = time.time()
        print(f"iter {it}: loss {loss.item():.4f}, time {(t1 - t0) * 1000:.2f}ms", flush=True)
        t0 = t1


if __name__ == '__main__':
    import argparse
    parser = argparse.ArgumentParser(description="nanoGPT's README CPU recipe on character-level Shakespeare")
    parser.add_argument('--data_dir', default='data/shakespeare_char')
    parser.add_argument('--max_iters', type=int, default=2000)
    args = parser.parse_args()
    nanogpt_cpu_recipe(args.data_dir, args.max_iters)
