"""
Decoding: functions that take a GPT and extend token ids with it. sample.py, bench.py, eval.py and the
fine-tuning scripts call them; the model itself only knows a forward pass and its KV cache.

    from generate import generate, generate_stream, beam_search
    out = generate(model, idx, 100, temperature=0.8, top_k=200)     # (B, T + 100)
    for tok in generate_stream(model, idx, 100): ...                 # (B, 1) at a time
    best = beam_search(model, idx, 40, num_beams=4)                  # as transformers' generate(num_beams=4)

Sampling filters follow transformers' logits processors (repetition penalty, top-k, top-p, min-p), so
the same settings give the same tokens (tests/test_generate.py checks them against transformers).
"""

import torch
from torch.nn import functional as F

from kvcache import KVCache


def decode_layout(model):
    """Store every Linear weight of a model used only for generation column-major (the memory of its
    transpose; the same (out, in) tensor and values): a one-token step is one matrix-vector product per
    layer, and the CPU's BLAS (MKL here) streams an (in, out) row-major matrix through x @ W faster than an
    (out, in) one: GPT-2 124M decodes 1.17x faster, 51.6 against 60.2 ms per token on a 2-core AVX2 EPYC; the
    4-layer model, whose steps are op overhead more than weights, 1.00-1.09x (`python bench.py --mode=sample
    --model=gpt2 --variants=cache,cache+rowmajor,hf`). transformers' GPT-2 Conv1D keeps its weights this way.
    Only on the CPU, where it was measured; tied weights stay tied (each Parameter keeps its identity).
    Returns the model."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.device.type == 'cpu':
            w = module.weight
            if w.is_contiguous():  # (not yet laid out: calling it twice changes nothing)
                w.data = w.data.t().contiguous().t()
    return model


def compile_decoder(model):
    """The model compiled for one-token decoding steps: pass it as generate(..., decoder=...). Those steps then
    run on a static KV cache (model.KVCache), so the graph is built once, for every position and every prompt of
    the generation (the prompt itself is prefilled by the eager model); on the CPU inductor's C++ wrapper
    launches the kernels without Python in between. Worth it where Python is the cost: a 4-layer 128-wide model
    decodes 1.3-2.4x faster than eager (~4x transformers' generate) on a 2-core AVX2 EPYC, once the compile is paid
    (~20 s the first time, ~5 s with inductor's cache warm); at the 124M shape, where reading the weights is the
    cost, it is 0.93x (every step also reads the whole static cache). `python bench.py --mode=sample
    --variants=cache,compile+cache,hf` measures it."""
    cpu = next(model.parameters()).device.type == 'cpu'
    return torch.compile(model, fullgraph=True, dynamic=False, options={'cpp_wrapper': True} if cpu else None)


def check_sampling_args(temperature=1.0, top_k=None, top_p=None, min_p=None, repetition_penalty=1.0):
    """One clear message per invalid decoding setting."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (None, or a value >= the vocabulary size, keeps every token), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 disables it), got {repetition_penalty}")


def apply_repetition_penalty(logits, prev_ids, penalty):
    """CTRL (Keskar et al. 2019) as in HF: divide positive logits / multiply negative logits of
    every token already present in prev_ids by penalty."""
    if penalty == 1.0:
        return logits
    score = torch.gather(logits, 1, prev_ids)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, prev_ids, score)


def apply_top_k(logits, k):
    """Keep the k largest logits per row (ties with the k-th kept), others -inf."""
    if k is None or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float('-inf'))


def apply_top_p(logits, p, min_tokens_to_keep=1):
    """Nucleus sampling (Holtzman et al. 2019): keep the smallest set of most likely tokens whose
    probability mass reaches p."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1 - p)  # the low tail whose total mass is at most 1 - p
    remove[..., -min_tokens_to_keep:] = False
    remove = remove.scatter(-1, sorted_idx, remove)
    return logits.masked_fill(remove, float('-inf'))


def apply_min_p(logits, min_p):
    """Keep tokens whose probability is at least min_p times the most likely token's."""
    if not min_p:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = probs.max(dim=-1, keepdim=True).values * min_p
    return logits.masked_fill(probs < threshold, float('-inf'))


def sample_next(logits, prev_ids, temperature=1.0, top_k=None, top_p=None, min_p=None,
                repetition_penalty=1.0, generator=None):
    """Pick the next token (B, 1) from last-position logits (B, V)."""
    logits = apply_repetition_penalty(logits, prev_ids, repetition_penalty)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    logits = apply_top_k(logits, top_k)
    logits = apply_top_p(logits, top_p)
    logits = apply_min_p(logits, min_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)



@torch.no_grad()
def generate_stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, min_p=None,
                    repetition_penalty=1.0, eos_token_id=None, use_cache=True, generator=None, decoder=None):
    """Yield (B, 1) next tokens one at a time, for streaming. idx: (B, T) prompts of equal length
    (batch several samples of one prompt, or prompts of equal token length).

    With use_cache the prompt is prefilled once and each step feeds one token. When the context
    would exceed block_size, generation continues on a sliding window of the last block_size
    tokens; with learned absolute positions that means recomputing the window every step (exactly
    what the no-cache path does), so it is correct but as slow as no cache.
    decoder: compile_decoder(model), run for the one-token steps on a static cache.
    temperature=0 is greedy. Rows that produced eos_token_id keep emitting it; the stream stops
    early once every row has."""
    check_sampling_args(temperature, top_k, top_p, min_p, repetition_penalty)
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError("the prompt must be a (batch, length) tensor with at least one token")
    if decoder is not None and not use_cache:
        raise ValueError("a compiled decoder steps on the KV cache: use_cache must be True")
    bs = model.config.block_size
    cache, filled, next_id = None, 0, None
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        if use_cache and cache is not None and filled < bs:
            # (the token just sampled, (B, 1) with the same strides every step: a compiled step never recompiles)
            logits, _ = (model if decoder is None else decoder)(next_id, kv_cache=cache)
            filled += 1
        elif use_cache:  # first step, or the window slid: (re)fill the cache
            cache = KVCache(model.config, idx.size(0), idx.device, model.transformer.wte.weight.dtype,
                            static=decoder is not None)
            logits, _ = model(idx[:, -bs:], kv_cache=cache)
            filled = min(idx.size(1), bs)
        else:
            logits, _ = model(idx[:, -bs:])
        logits = logits[:, -1, :model.config.vocab_size].float()
        next_id = sample_next(logits, idx, temperature, top_k, top_p, min_p, repetition_penalty, generator)
        if eos_token_id is not None:
            next_id = torch.where(finished[:, None], torch.full_like(next_id, eos_token_id), next_id)
            finished |= next_id[:, 0] == eos_token_id
        idx = torch.cat((idx, next_id), dim=1)
        yield next_id
        if eos_token_id is not None and bool(finished.all()):
            return

@torch.no_grad()
def generate(model, idx, max_new_tokens, **kwargs):
    """Extend idx (B, T) by up to max_new_tokens tokens; see generate_stream for the options."""
    out = [idx] + list(generate_stream(model, idx, max_new_tokens, **kwargs))
    return torch.cat(out, dim=1)

@torch.no_grad()
def beam_search(model, idx, max_new_tokens, num_beams, length_penalty=1.0, eos_token_id=None,
                early_stopping=False, use_cache=True):
    """Beam search, token for token as transformers' generate(num_beams=..., do_sample=False).
    idx: (1, T), one prompt. Returns the best hypothesis (1, T + n), n <= max_new_tokens.

    Each step extends every live beam by every token and keeps the 2 * num_beams best candidates
    by summed log-probability. Those among the best num_beams that end in eos_token_id (or reach
    max_new_tokens) join a pool of up to num_beams finished hypotheses, scored
    sum_logprobs / n_generated ** length_penalty (> 0 favours longer outputs); the num_beams best
    unfinished candidates live on. early_stopping: True stops once the pool is full; False stops
    when the best live beam, scored at its current length, cannot beat the worst finished one;
    'never' scores it at max_new_tokens instead when length_penalty > 0."""
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError("the prompt must be a (1, length) tensor with at least one token")
    if idx.size(0) != 1:
        raise ValueError(f"beam_search takes a single prompt (batch size 1), got batch size {idx.size(0)}")
    if num_beams < 1 or max_new_tokens < 1:
        raise ValueError(f"num_beams and max_new_tokens must be >= 1, got {num_beams} and {max_new_tokens}")
    if early_stopping not in (True, False, 'never'):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    T, V, nb = idx.size(1), model.config.vocab_size, num_beams
    if T + max_new_tokens - 1 > model.config.block_size:  # the last token is never fed back
        raise ValueError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) - 1 exceeds block_size "
                         f"({model.config.block_size}); beam search has no sliding window")
    # All beams start as the prompt, but only beam 0 is live (the others at -1e9, as in HF), so
    # the first step does not pick the same continuation num_beams times.
    seqs = idx.expand(nb, T)
    scores = torch.full((nb,), -1e9, device=idx.device)
    scores[0] = 0.0
    finished = []       # (score, sequence) of up to num_beams finished hypotheses, best first
    improvable = True   # can a live beam still beat the worst finished hypothesis?
    cache = KVCache(model.config, 1, idx.device, model.transformer.wte.weight.dtype) if use_cache else None
    logits, _ = model(idx, kv_cache=cache)  # prefill once, then copy to every beam
    logits = logits.expand(nb, -1, -1)
    if cache is not None:
        cache.reorder(torch.zeros(nb, dtype=torch.long, device=idx.device))
    for n in range(1, max_new_tokens + 1):  # n = tokens generated once this step is done
        if n > 1:
            logits, _ = model(seqs[:, -1:], kv_cache=cache) if cache is not None else model(seqs)
        logprobs = F.log_softmax(logits[:, -1, :V].float(), dim=-1) + scores[:, None]
        cand_scores, flat = logprobs.view(-1).topk(2 * nb)
        beam, token = flat // V, flat % V
        cand = torch.cat((seqs[beam], token[:, None]), dim=1)
        done = token == eos_token_id if eos_token_id is not None else torch.zeros_like(token, dtype=torch.bool)
        if n == max_new_tokens:
            done[:] = True
        # finished candidates among the best num_beams join the pool, unless it can no longer
        # improve, or is full and early_stopping is True
        if improvable and not (early_stopping is True and len(finished) == nb):
            final = cand_scores / n ** length_penalty  # in float32, as HF
            finished += [(final[i].item(), cand[i]) for i in range(nb) if done[i]]
            finished = sorted(finished, key=lambda h: h[0], reverse=True)[:nb]
        if bool(done.all()):
            break
        # the num_beams best unfinished candidates live on (topk keeps them sorted, best first)
        live = cand_scores - 1e9 * done
        keep = live.topk(nb).indices
        seqs, scores = cand[keep], live[keep]
        if cache is not None:
            cache.reorder(beam[keep])
        if len(finished) == nb:  # HF's stopping heuristic, checked only once the pool is full
            L = max_new_tokens if early_stopping == 'never' and length_penalty > 0 else n
            improvable = improvable and (scores[0] / L ** length_penalty).item() > finished[-1][0]
        if not improvable or (early_stopping is True and len(finished) == nb):
            break
    return finished[0][1][None]

