"""Tests for generate.py: KV cache vs recomputation, parity with transformers' greedy
and beam search on the same random GPT-2 weights, the sampling filters against transformers'
logits processors, seeded sampling, eos stopping, and argument errors. CPU, small random models."""
import pytest
import torch
from conftest import VOCAB
from conftest import random_gpt as conftest_random_gpt

from gpt import fastpath
from gpt import hf as hf_io
from gpt.engine import beam_search, generate, generate_stream
from gpt.fastpath import PackedLinear, decode_layout
from gpt.kvcache import KVCache
from gpt.sampling import apply_min_p, apply_repetition_penalty, apply_top_k, apply_top_p, check_sampling_args


pytestmark = pytest.mark.usefixtures('one_thread')


def random_gpt(std=0.5, seed=0, **overrides):
    """conftest's random GPT with GPT-2's biases and a context of 64."""
    return conftest_random_gpt(seed=seed, std=std, **{'block_size': 64, 'bias': True, **overrides})


def prompt(B=1, T=16, seed=1, vocab=VOCAB):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- KV cache == no cache

STYLES = {'gpt2': dict(), 'gpt1': dict(post_norm=True, gelu_approx='none')}


@pytest.mark.parametrize('attn_impl', ['sdpa', 'explicit'])
@pytest.mark.parametrize('style', list(STYLES))
@pytest.mark.parametrize('block_size', [64, 256], ids=['sliding-window', 'fits'])
def test_greedy_cache_matches_no_cache(style, attn_impl, block_size):
    model = random_gpt(block_size=block_size, attn_impl=attn_impl, **STYLES[style])
    x = prompt(T=16)  # 16 + 200 tokens: beyond block_size=64 (the window slides), within 256
    fast = generate(model, x, 200, temperature=0, use_cache=True)
    slow = generate(model, x, 200, temperature=0, use_cache=False)
    assert fast.shape == (1, 216)
    assert torch.equal(fast, slow)
    assert len(set(fast[0, 16:].tolist())) > 5  # a varied output, not one token repeated


@pytest.mark.parametrize('style', list(STYLES))
def test_batched_greedy_cache_matches_no_cache(style):
    model = random_gpt(block_size=64, **STYLES[style])
    x = prompt(B=3, T=12)
    fast = generate(model, x, 80, temperature=0, use_cache=True)
    slow = generate(model, x, 80, temperature=0, use_cache=False)
    assert torch.equal(fast, slow)
    assert not torch.equal(fast[0], fast[1])  # the rows really are different generations


def test_bf16_cache_matches_no_cache():
    """bf16 has ~3 significant digits, so the cached and recomputed paths round differently. Check
    what is robust: along the same (teacher-forced) tokens the cached logits stay within bf16
    rounding of the recomputed ones, and the greedy tokens agree for the first 10 steps."""
    model = random_gpt(block_size=128).to(torch.bfloat16)
    x = prompt(T=16)
    slow = generate(model, x, 40, temperature=0, use_cache=False)
    full, _ = model(slow[:, :-1])  # every position's logits in one pass, no cache
    cache = KVCache(model.config, 1, x.device, torch.bfloat16)
    steps = [model(x, kv_cache=cache)[0][:, -1]]
    for t in range(16, slow.size(1) - 1):
        steps.append(model(slow[:, t:t + 1], kv_cache=cache)[0][:, -1])
    cached = torch.stack(steps, dim=1).float()
    ref = full[:, 15:].float()
    scale = ref.abs().max()
    assert (cached - ref).abs().max() <= 0.05 * scale  # bf16: eps 2^-8 per op, a few ops deep
    fast = generate(model, x, 40, temperature=0, use_cache=True)
    assert torch.equal(fast[:, :26], slow[:, :26])


@pytest.mark.parametrize('how', ['pack=False', 'oneDNN loses here'])
def test_decode_layout_column_major_keeps_the_model(monkeypatch, how):
    """decode_layout(pack=False), or where the probe finds oneDNN slower, changes where each Linear weight's
    numbers sit in memory, nothing else: the same Parameters (tying kept), values and state_dict, logits equal
    to the row-major model's, greedy tokens alike."""
    model = random_gpt(block_size=64)
    ref = random_gpt(block_size=64)
    params = dict(model.named_parameters())
    monkeypatch.setattr(fastpath, 'packing_pays', lambda rows=1: how == 'pack=False')
    decode_layout(model, pack=how != 'pack=False', rows=8)
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())
    assert model.lm_head.weight is model.transformer.wte.weight
    w = model.transformer.h[0].mlp.c_fc.weight
    assert w.shape == ref.transformer.h[0].mlp.c_fc.weight.shape and w.t().is_contiguous() and not w.is_contiguous()
    sd, ref_sd = model.state_dict(), ref.state_dict()
    assert all(torch.equal(sd[k], ref_sd[k]) for k in ref_sd)
    x = prompt(B=2, T=20)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)
    fast = generate(model, x, 100, temperature=0)
    assert torch.equal(fast, generate(ref, x, 100, temperature=0))
    assert torch.equal(fast, generate(model, x, 100, temperature=0, use_cache=False))


@pytest.mark.skipif(not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_linear_pointwise')
                         and hasattr(torch.ops.mkldnn, '_reorder_linear_weight')),
                    reason="this torch has no oneDNN linear with packed weights")
@pytest.mark.parametrize('bias', [False, True])
def test_decode_layout_packed_for_onednn_computes_the_same_model(monkeypatch, bias):
    """decode_layout(pack=True) puts every float32 Linear's weight into oneDNN's layout (the probe's verdict set
    aside, so the path runs on every machine): logits of the unpacked model within float rounding, at one row, a
    batch and a prefill, greedy tokens alike; the embedding keeps the tied matrix; bf16 autocast still works;
    a second call changes nothing."""
    monkeypatch.setattr(fastpath, 'packing_pays', lambda rows=1: True)
    model, ref = random_gpt(block_size=64, bias=bias), random_gpt(block_size=64, bias=bias)
    wte = model.transformer.wte.weight
    decode_layout(model)
    decode_layout(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
    assert not linears and len(packed) == 4 * 2 + 1  # c_attn, c_proj, c_fc, mlp c_proj per block; the head
    assert model.transformer.wte.weight is wte and torch.equal(wte, ref.transformer.wte.weight)
    with torch.no_grad():
        for x in (prompt(B=1, T=1), prompt(B=3, T=1), prompt(B=2, T=40)):
            got, want = model(x)[0], ref(x)[0]  # (another summation order: float32 rounding of the largest logit)
            assert (got - want).abs().max() <= 1e-6 * want.abs().max() * 64 ** 0.5, (got - want).abs().max()
        x = prompt(B=2, T=20)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            got, want = model(x)[0].float(), ref(x)[0].float()
        assert (got - want).abs().max() <= 0.02 * want.abs().max()  # both bf16 matmuls: rounding apart
    assert torch.equal(generate(model, x, 100, temperature=0), generate(ref, x, 100, temperature=0))


def test_a_decoder_steps_on_a_static_cache():
    """generate(decoder=...) prefills with the model and runs each one-token step through the decoder (what
    compile_decoder compiles; here the eager model, so the test is fast; tests/test_compile.py compiles it) on a
    static cache: the tokens of the growing cache, greedy and sampled, and past the end of the context."""
    model = random_gpt(block_size=64)
    seen = []

    def decoder(idx, kv_cache):
        seen.append((tuple(idx.shape), kv_cache.static))
        return model(idx, kv_cache=kv_cache)

    x = prompt(B=2, T=50)
    assert torch.equal(generate(model, x, 40, temperature=0, decoder=decoder), generate(model, x, 40, temperature=0))
    # positions 50..63 are cached steps; then the window slides and each step refills through the model
    assert seen == [((2, 1), True)] * 14

    def sample(**kw):
        return generate(model, x[:, :10], 30, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(3), **kw)

    assert torch.equal(sample(decoder=decoder), sample())
    # sample.py --dtype=bfloat16: bf16 keys go into the fp32 cache (copied in its dtype). Where bf16 matmuls are
    # native (AVX-512 bf16, AMX) the static cache's masked read of the whole buffer rounds differently from the
    # growing cache's read of the filled part, so greedy tokens may part at a near-tie: compare the logits of
    # the same tokens fed to both caches, within bf16's precision, instead of the sampled tokens.
    with torch.autocast('cpu', dtype=torch.bfloat16), torch.no_grad():
        tokens = prompt(B=2, T=22, seed=4)
        caches = [KVCache(model.config, 2, 'cpu', torch.float32, static=s) for s in (True, False)]
        steps = [[model(tokens[:, :10], kv_cache=c)[0]] for c in caches]
        for t in range(10, 22):
            for c, out in zip(caches, steps):
                out.append(model(tokens[:, t:t + 1], kv_cache=c)[0])
        assert all(k.dtype == torch.float32 for c in caches for k in c.k + c.v)
        static, growing = (torch.cat(out, 1).float() for out in steps)
        scale = growing.abs().max()
        assert (static - growing).abs().max() <= 0.03 * scale, (static - growing).abs().max() / scale
    with pytest.raises(ValueError, match='use_cache'):
        generate(model, x, 3, decoder=decoder, use_cache=False)


def test_the_compiled_decoder_keeps_one_graph_per_batch_and_any_number_of_rows():
    """compile_decoder traced by dynamo (backend 'eager': its tracing and guards without inductor's minutes;
    tests/test_compile.py compiles for real): every position of a generation and every prompt length share one
    graph, and a ragged batch whose rows pass the context one by one (a graph per number of rows stepped, more
    than dynamo's default limit of 8) decodes to the eager engine's tokens."""
    from torch._dynamo.utils import counters

    from gpt.engine import generate_batch
    from gpt.fastpath import compile_decoder
    model = random_gpt(block_size=32)
    torch._dynamo.reset()
    counters.clear()
    decoder = compile_decoder(model, backend='eager')
    for T in (3, 9):
        x = prompt(T=T, seed=T)
        assert torch.equal(generate(model, x, 20, temperature=0, decoder=decoder), generate(model, x, 20, temperature=0))
    assert counters['stats']['unique_graphs'] == 1
    prompts = [prompt(T=2 + 2 * i, seed=i)[0].tolist() for i in range(12)]
    assert (generate_batch(model, prompts, 36, temperature=0, decoder=decoder)
            == generate_batch(model, prompts, 36, temperature=0))
    assert counters['stats']['unique_graphs'] > 8


# ---------------------------------------------------------------------- parity with transformers

@pytest.fixture(scope='module')
def hf_pair(tmp_path_factory):
    """The same random weights as a transformers GPT2LMHeadModel and as our GPT."""
    transformers = pytest.importorskip('transformers')
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=128,
                                  initializer_range=0.5,  # see random_gpt: varied, decisive tokens
                                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    path = tmp_path_factory.mktemp('hf_gpt2')
    hf.save_pretrained(path)
    ours = hf_io.from_pretrained(str(path)).eval()
    x = prompt(T=7)
    greedy = generate(ours, x, 50, temperature=0)[0, 7:].tolist()
    # eos: a token that greedy decoding emits, but not at once, so hypotheses end at varied lengths
    eos = next(t for i, t in enumerate(greedy) if i >= 5 and t not in greedy[:i])
    return hf, ours, x, eos


def hf_generate(hf, x, **kwargs):
    kwargs.setdefault('eos_token_id', None)
    return hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, pad_token_id=0,
                       use_cache=True, **kwargs)


@pytest.mark.parametrize('with_eos', [False, True])
def test_greedy_matches_transformers(hf_pair, with_eos):
    hf, ours, x, eos = hf_pair
    eos = eos if with_eos else None
    ref = hf_generate(hf, x, max_new_tokens=50, num_beams=1, eos_token_id=eos)
    out = generate(ours, x, 50, temperature=0, eos_token_id=eos)
    assert torch.equal(out, ref)
    assert (out.size(1) < 57) == with_eos  # with eos, generation stopped at it


BEAM_CASES = ([(nb, lp, None, False) for nb in (2, 4) for lp in (1.0, 0.6, 2.0)]
              + [(nb, lp, 'eos', es) for nb in (2, 4) for lp in (1.0, 0.6, 2.0) for es in (False, True, 'never')])


@pytest.mark.parametrize('num_beams,length_penalty,eos,early_stopping', BEAM_CASES)
def test_beam_search_matches_transformers(hf_pair, num_beams, length_penalty, eos, early_stopping):
    hf, ours, x, eos_id = hf_pair
    eos = eos_id if eos else None
    kw = dict(length_penalty=length_penalty, early_stopping=early_stopping)
    ref = hf_generate(hf, x, max_new_tokens=40, num_beams=num_beams, eos_token_id=eos, **kw)
    out = beam_search(ours, x, 40, num_beams, eos_token_id=eos, **kw)
    assert torch.equal(out, ref), f"ours {out[0, 7:].tolist()}\nHF   {ref[0, 7:].tolist()}"
    assert torch.equal(beam_search(ours, x, 40, num_beams, eos_token_id=eos, use_cache=False, **kw), out)


def test_beam_search_eos_shortens_hypotheses(hf_pair):
    """The eos case above is not vacuous: the length penalty decides between finished lengths."""
    _, ours, x, eos = hf_pair
    lengths = {lp: beam_search(ours, x, 40, 4, length_penalty=lp, eos_token_id=eos).size(1) - 7
               for lp in (0.6, 1.0, 2.0)}
    assert min(lengths.values()) < 40
    assert lengths[0.6] <= lengths[1.0] <= lengths[2.0]


def test_beam_search_one_beam_is_greedy(hf_pair):
    _, ours, x, _ = hf_pair
    assert torch.equal(beam_search(ours, x, 30, 1), generate(ours, x, 30, temperature=0))


# ---------------------------------------------------------------------- filters vs transformers


def tied_logits(seed=0, B=4, V=50):
    """Random logits with many exact ties (rounded to halves) and a few -inf (already filtered)."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, V, generator=g) * 2).round() / 2
    logits[0, :5] = float('-inf')
    logits[1] = logits[1, 0]  # a row of all-equal logits
    return logits


def logits_process():
    return pytest.importorskip('transformers.generation.logits_process')


def assert_same_filtering(ours, ref):
    assert torch.equal(torch.isneginf(ours), torch.isneginf(ref))
    finite = torch.isfinite(ref)
    torch.testing.assert_close(ours[finite], ref[finite], rtol=0, atol=1e-6)


@pytest.mark.parametrize('k', [1, 2, 5, 17, 50, 80])
def test_top_k_matches_transformers(k):
    TopKLogitsWarper = logits_process().TopKLogitsWarper
    for seed in range(3):
        logits = tied_logits(seed)
        assert_same_filtering(apply_top_k(logits, k), TopKLogitsWarper(k)(None, logits.clone()))


@pytest.mark.parametrize('p', [1.0, 0.999, 0.9, 0.5, 0.1, 1e-6])
def test_top_p_matches_transformers(p):
    TopPLogitsWarper = logits_process().TopPLogitsWarper
    for seed in range(3):
        logits = tied_logits(seed)
        assert_same_filtering(apply_top_p(logits, p), TopPLogitsWarper(p)(None, logits.clone()))


@pytest.mark.parametrize('min_p', [0.0, 0.01, 0.1, 0.5, 1.0])
def test_min_p_matches_transformers(min_p):
    if not hasattr(logits_process(), 'MinPLogitsWarper'):
        pytest.skip('transformers before 4.41 has no min-p warper to compare with')
    MinPLogitsWarper = logits_process().MinPLogitsWarper
    for seed in range(3):
        logits = tied_logits(seed)
        assert_same_filtering(apply_min_p(logits, min_p), MinPLogitsWarper(min_p)(None, logits.clone()))


@pytest.mark.parametrize('penalty', [0.5, 1.0, 1.3, 2.0])
def test_repetition_penalty_matches_transformers(penalty):
    RepetitionPenaltyLogitsProcessor = logits_process().RepetitionPenaltyLogitsProcessor
    for seed in range(3):
        logits = tied_logits(seed)
        prev = torch.randint(0, 50, (4, 30), generator=torch.Generator().manual_seed(seed))  # repeats
        ref = RepetitionPenaltyLogitsProcessor(penalty)(prev, logits.clone())
        assert_same_filtering(apply_repetition_penalty(logits, prev, penalty), ref)


# ---------------------------------------------------------------------- sampling and stopping


def test_seeded_sampling_is_reproducible():
    model = random_gpt(std=0.02)  # near-uniform logits: samples depend on the seed, not the model
    x = prompt(B=2, T=8)

    def sample(seed, **kw):
        return generate(model, x, 30, temperature=1.0, top_k=50, top_p=0.95,
                              generator=torch.Generator().manual_seed(seed), **kw)

    a = sample(123)
    assert torch.equal(a, sample(123))
    assert torch.equal(a, sample(123, use_cache=False))  # same logits, same draws
    assert not torch.equal(a, sample(124))


def test_eos_rows_stay_finished_and_stream_stops():
    """A 5-token vocabulary makes every row emit eos within a few dozen samples."""
    model = random_gpt(std=0.02, vocab_size=5)
    x = prompt(B=3, T=8, vocab=5)
    eos = 4
    steps = list(generate_stream(model, x, 200, temperature=1.0, eos_token_id=eos,
                                       generator=torch.Generator().manual_seed(0)))
    out = torch.cat(steps, dim=1)  # (3, n)
    assert out.size(1) < 200
    first = [row.tolist().index(eos) for row in out]  # every row finished
    for row, f in zip(out, first):
        assert (row[f:] == eos).all()  # and kept emitting eos afterwards
    assert out.size(1) == max(first) + 1  # stopped as soon as the last row finished
    assert len(set(first)) > 1  # rows finished at different steps


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize('kwargs,match', [
    (dict(top_p=0.0), 'top_p'), (dict(top_p=1.5), 'top_p'), (dict(top_k=0), 'top_k'),
    (dict(temperature=-0.5), 'temperature'), (dict(repetition_penalty=0.0), 'repetition_penalty'),
    (dict(repetition_penalty=-1.0), 'repetition_penalty'), (dict(min_p=1.5), 'min_p'),
])
def test_bad_sampling_args_raise(kwargs, match):
    model = random_gpt(std=0.02)
    with pytest.raises(ValueError, match=match):
        check_sampling_args(**kwargs)
    with pytest.raises(ValueError, match=match):
        generate(model, prompt(T=4), 3, **kwargs)


def test_bad_prompts_raise():
    model = random_gpt(std=0.02)
    empty = torch.zeros(1, 0, dtype=torch.long)
    with pytest.raises(ValueError, match='at least one token'):
        generate(model, empty, 3)
    with pytest.raises(ValueError, match='at least one token'):
        beam_search(model, empty, 3, num_beams=2)
    with pytest.raises(ValueError, match='batch size 1'):
        beam_search(model, prompt(B=2, T=4), 3, num_beams=2)
    with pytest.raises(ValueError, match='block_size'):
        beam_search(model, prompt(T=60), 10, num_beams=2)
    with pytest.raises(ValueError, match='early_stopping'):
        beam_search(model, prompt(T=4), 3, num_beams=2, early_stopping='sometimes')
