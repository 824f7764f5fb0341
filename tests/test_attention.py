"""GPT-3's locally banded attention (model.py attn_pattern/attn_window) against a reference written here from
the definition: a query at position p attends to keys p - window + 1 .. p. Forward and gradients, SDPA and the
explicit path, with and without the KV cache (whose local layers keep a ring of window slots), windows shorter
and longer than the sequence. The default dense model is untouched (test_model.py checks it against
transformers)."""
import math

import pytest
import torch
from torch.nn import functional as F

from gpt import hf
from gpt.engine import generate
from gpt.kvcache import KVCache
from model import GPT, GPTConfig


def reference_attention(x, attn, window):
    """Banded causal attention by the book, with the layer's weights: mask built position by position."""
    B, T, C = x.shape
    H = attn.n_head
    q, k, v = (x @ attn.c_attn.weight.T + attn.c_attn.bias).split(C, dim=2)
    q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
    allowed = torch.tensor([[p - window < j <= p for j in range(T)] for p in range(T)])
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
    y = F.softmax(scores.masked_fill(~allowed, float('-inf')), dim=-1) @ v
    return y.transpose(1, 2).reshape(B, T, C) @ attn.c_proj.weight.T + attn.c_proj.bias


@pytest.mark.parametrize('impl', ['sdpa', 'explicit'])
@pytest.mark.parametrize('window', [1, 3, 8, 40])  # 40 > T: the band is the whole causal triangle
def test_local_layer_matches_the_banded_reference(impl, window):
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=64, vocab_size=50, attn_impl=impl,
                    attn_pattern='local', attn_window=window)
    attn = GPT(cfg).transformer.h[1].attn
    x = torch.randn(3, 24, 32, requires_grad=True)
    calls = []
    blocks = attn.to_blocks
    attn.to_blocks = lambda *a: calls.append(1) or blocks(*a)
    ours, ref = attn(x), reference_attention(x, attn, window)
    assert bool(calls) == (24 > 2 * window)  # long sequences take the blocked path, O(T * window)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(ours, [x, attn.c_attn.weight], g)
    want = torch.autograd.grad(ref, [x, attn.c_attn.weight], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if window >= 24:  # a window as long as the sequence is plain causal attention
        dense = GPT(GPTConfig(**{**cfg.__dict__, 'attn_pattern': 'dense', 'attn_window': 0})).transformer.h[1].attn
        dense.load_state_dict(attn.state_dict())
        torch.testing.assert_close(dense(x), ours, atol=1e-5, rtol=1e-5)


def test_alternating_pattern_is_dense_then_local():
    cfg = GPTConfig(n_layer=4, n_head=2, n_embd=16, block_size=32, vocab_size=20, attn_pattern='alternating',
                    attn_window=5)
    m = GPT(cfg)
    assert [b.attn.window for b in m.transformer.h] == [0, 5, 0, 5]
    cache = KVCache(cfg, 2, 'cpu', torch.float32)
    assert cache.window == [0, 5, 0, 5]  # the cache shows the local layers' queries only their window
    # FLOPs: the local layers attend to 5 keys, the dense ones to the whole context
    dense = GPT(GPTConfig(**{**cfg.__dict__, 'attn_pattern': 'dense', 'attn_window': 0}))
    per_key = 12 * cfg.n_head * (cfg.n_embd // cfg.n_head)
    assert dense.flops_per_token(32) - m.flops_per_token(32) == per_key * 2 * (32 - 5)


@pytest.mark.parametrize('impl', ['sdpa', 'explicit'])
@pytest.mark.parametrize('pattern, window', [('local', 4), ('alternating', 7), ('alternating', 64)])
def test_cache_of_local_layers_gives_the_full_forward(impl, pattern, window):
    # prefill, chunks and single tokens, many windows long
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=32, block_size=64, vocab_size=50, attn_impl=impl,
                      attn_pattern=pattern, attn_window=window)).eval()
    x = torch.randint(0, 50, (2, 60))
    with torch.no_grad():
        full, _ = m(x)
        cache = KVCache(m.config, 2, 'cpu', torch.float32)
        pieces, start = [], 0
        for n in (5, 1, 1, 9, 1, 3, 12, 1, 1, 26):
            logits, _ = m(x[:, start:start + n], kv_cache=cache)
            pieces.append(logits)
            start += n
    assert start == 60
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    # greedy decoding with the cache equals decoding by recomputing the whole context
    with torch.no_grad():
        assert torch.equal(generate(m, x[:, :6], 40, temperature=0), generate(m, x[:, :6], 40, temperature=0,
                                                                              use_cache=False))


def test_bad_patterns_and_export_are_refused(tmp_path):
    for kw, msg in ((dict(attn_pattern='local'), 'need attn_window >= 1'),
                    (dict(attn_window=8), 'dense needs 0'),
                    (dict(attn_pattern='strided', attn_window=8), "attn_pattern must be")):
        with pytest.raises(ValueError, match=msg):
            GPTConfig(**kw)
    m = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=20, attn_pattern='alternating',
                      attn_window=4))
    with pytest.raises(ValueError, match="dense attention only"):
        hf.save_pretrained(m, tmp_path / 'hf')
    assert not (tmp_path / 'hf').exists()
