"""
The log-likelihood of continuations after contexts, for every evaluation task (gpt/tasks.py says which requests a
task makes and what it does with the answers). The harness's recipe, computed with less work:

- the requests of one example (HellaSwag's four endings, a few-shot context's choices, Winogrande's two filled-in
  sentences) share their first tokens, often hundreds of them at K = 5: they are packed into one row, the shared
  prefix once and each request's own tokens after it, and a mask lets each request's tokens see the prefix and
  themselves only (positions continue from the prefix, so every logit is that of the request run alone);
- many examples go in one forward pass, longest first, right-padded;
- the vocabulary head runs only at the positions that predict a continuation token.

lm-evaluation-harness runs every choice as its own sequence, the whole context again each time, and its head over
every position; the numbers are the same (tests/test_harness.py), the work a fraction of it (bench.py --mode=eval).
"""

from contextlib import nullcontext

import torch
from torch.nn import functional as F


class PackedRows:
    """What model.forward asks a KV cache (positions, the keys each query sees), for one pass over packed rows and
    nothing stored: a token of request j sees the shared prefix and request j's earlier tokens, at the position it
    would have alone. Padding tokens see padding only (a query that sees nothing would make NaNs, and a NaN value
    times a zero weight is still NaN)."""

    def __init__(self, positions, segments, windows):
        self.pos = positions  # (B, T) each token's position in its own request
        q, k = segments[:, :, None], segments[:, None, :]
        order = torch.ones(segments.size(1), segments.size(1), dtype=torch.bool, device=segments.device).tril()
        self.mask = (order & ((k == 0) | (k == q)))[:, None]  # (B, 1, T, T); segment 0 is the shared prefix
        self.windows = windows  # per layer: 0 (dense) or a local layer's attention window
        self.banded = {}

    def positions(self, T):
        return self.pos

    def update(self, layer, k, v):
        w = self.windows[layer]
        if not w:
            return k, v, self.mask, False
        if w not in self.banded:  # a local layer sees the keys less than `window` positions back in its request
            near = self.pos[:, None, :, None] - self.pos[:, None, None, :] < w
            self.banded[w] = self.mask & near
        return k, v, self.banded[w], False

    def advance(self, T):
        pass


def pack(requests, group):
    """One row for a group of requests: (tokens, positions, segments, scored) where scored lists, per request of
    the group, the row indices whose logits predict its continuation tokens."""
    seqs = [(requests[i][0] + requests[i][1])[:-1] for i in group]
    shared = len(seqs[0])
    for s in seqs[1:]:
        shared = next((n for n, (a, b) in enumerate(zip(seqs[0][:shared], s)) if a != b), min(shared, len(s)))
    tokens, positions, segments = list(seqs[0][:shared]), list(range(shared)), [0] * shared
    scored = []
    for j, (i, s) in enumerate(zip(group, seqs), 1):
        start = len(tokens)
        tokens += s[shared:]
        positions += range(shared, len(s))
        segments += [j] * (len(s) - shared)
        first = len(s) - len(requests[i][1])  # the position predicting the continuation's first token
        scored.append([p if p < shared else start + p - shared for p in range(first, len(s))])
    return tokens, positions, segments, scored


@torch.no_grad()
def score(model, requests, batch_size=8, device='cpu', ctx=nullcontext(), progress=False, desc='', groups=None):
    """For each (context ids, continuation ids) request: (sum of the continuation's log-probabilities, its number
    of tokens, 1.0 if greedy decoding would produce it else 0.0), as a (len(requests), 3) float64 tensor.

    groups: lists of request indices packed in one row (an example's choices); default, one row per request.
    batch_size rows go in a forward pass. Under torch.distributed every rank runs every world-th batch, fills its
    rows and the table is summed over ranks, so every rank returns the full table. All ranks run the same number
    of forward passes (a rank one batch short repeats one and drops it), which FSDP's collective forward needs."""
    world, rank = 1, 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    groups = groups if groups is not None else [[i] for i in range(len(requests))]
    rows = [pack(requests, g) for g in groups]
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r][0]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    mine = batches[rank::world]
    n_forward = -(-len(batches) // world)
    cfg = model.config
    windows = [cfg.attn_window if cfg.is_local(i) else 0 for i in range(cfg.n_layer)]
    results = torch.zeros(len(requests), 3, dtype=torch.float64)
    was_training = model.training
    model.eval()
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=n_forward, desc=desc, unit='batch', dynamic_ncols=True)
    for b in range(n_forward):
        batch = mine[b] if b < len(mine) else mine[-1] if mine else batches[0]  # the repeat is discarded below
        T = max(len(rows[r][0]) for r in batch)
        idx = torch.zeros(len(batch), T, dtype=torch.long)
        pos = torch.zeros(len(batch), T, dtype=torch.long)
        seg = torch.full((len(batch), T), -1, dtype=torch.long)  # -1: padding
        at = torch.zeros(len(batch), T, dtype=torch.bool)
        flat, targets, owners, members = [], [], [], []  # per scored token: its place, its target, its request
        for row, r in enumerate(batch):
            tokens, positions, segments, scored = rows[r]
            n = len(tokens)
            idx[row, :n], pos[row, :n], seg[row, :n] = torch.tensor(tokens), torch.tensor(positions), torch.tensor(segments)
            for i, cols in zip(groups[r], scored):
                at[row, cols] = True
                flat += [row * T + c for c in cols]
                targets += requests[i][1]
                owners += [len(members)] * len(cols)
                members.append(i)
        rank_of = torch.cumsum(at.view(-1), 0) - 1  # a selected position's row among the selected logits
        sel = rank_of[torch.tensor(flat, dtype=torch.long)]
        packed = PackedRows(pos.to(device), seg.to(device), windows)
        with ctx:
            logits = model(idx.to(device), kv_cache=packed, logits_at=at.to(device))[0]
        logits = logits[sel.to(logits.device)][:, :cfg.vocab_size].float()
        y = torch.tensor(targets, device=logits.device)
        logp = -F.cross_entropy(logits, y, reduction='none').double().cpu()
        greedy = (logits.argmax(-1) == y).double().cpu()
        if b < len(mine):
            owner = torch.tensor(owners)
            ll = torch.zeros(len(members), dtype=torch.float64).index_add_(0, owner, logp)
            hits = torch.zeros_like(ll).index_add_(0, owner, greedy)
            count = torch.zeros_like(ll).index_add_(0, owner, torch.ones_like(logp))
            results[members] = torch.stack([ll, count, (hits == count).double()], 1)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.train(was_training)
    if world > 1:
        on = results.to(device)  # nccl reduces CUDA tensors, gloo CPU ones: the model's device suits both
        torch.distributed.all_reduce(on, op=torch.distributed.ReduceOp.SUM)
        results = on.cpu()
    return results


@torch.no_grad()
def generate(model, prompts, max_gen_toks, stops, decode, eot=None, batch_size=8, ctx=nullcontext(), progress=False,
             desc=''):
    """Greedy continuations of token prompts, as the harness's generate_until: each up to max_gen_toks tokens,
    ended by end-of-text or as soon as its text holds a stop string, and cut before the first one. Under
    torch.distributed every rank answers every world-th prompt and all get every text."""
    from gpt.engine import Engine
    from gpt.sampling import SamplingParams
    from gpt.stops import cut_at_stop, find_stop
    world, rank = 1, 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    mine = list(range(rank, len(prompts), world))
    was_training = model.training
    model.eval()
    engine = Engine(model, max_batch=batch_size)
    stop_ids = () if eot is None else (eot,)
    rids = {engine.add(prompts[i], max_gen_toks, SamplingParams(temperature=0.0), stop_ids): i for i in mine}
    tokens, done = {i: [] for i in mine}, set()
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=len(mine), desc=desc, unit='example', dynamic_ncols=True)
    with ctx:
        while engine.pending():
            for rid, token, finish in engine.step():
                i = rids[rid]
                if i in done:  # (tokens a device decoded past a stop string, in the same chunk)
                    continue
                tokens[i].append(token)
                # (a stop string can end inside a token: the decoded text is searched, not the ids)
                if finish is None and find_stop(decode(tokens[i][-8:]), stops) >= 0 and \
                        find_stop(decode(tokens[i]), stops) >= 0:
                    engine.cancel(rid)
                    finish = 'stop'
                if finish is not None:
                    done.add(i)
                    if bar is not None:
                        bar.update(1)
    if bar is not None:
        bar.close()
    model.train(was_training)
    texts = {i: cut_at_stop(decode(t), stops) for i, t in tokens.items()}
    if world > 1:
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, texts)
        texts = {i: t for part in gathered for i, t in part.items()}
    return [texts[i] for i in range(len(prompts))]
