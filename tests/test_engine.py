"""The decoding engine (generate.Engine): prompts of different lengths in one batch, requests joining and leaving
mid-generation, per-request random streams. References: each prompt decoded alone by recomputing its whole context
every step (no cache at all), and transformers' batched generate with left padding on the same GPT-2 weights."""
import pytest
import torch
from conftest import VOCAB, random_gpt, greedy_by_recompute

from gpt import hf as hf_io
from gpt.engine import Engine, generate_batch
from gpt.kvcache import KVCache
from gpt.sampling import SamplingParams


pytestmark = pytest.mark.usefixtures('one_thread')


def ragged_prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize('sync_every', [1, 5])
@pytest.mark.parametrize('kw', [dict(), dict(pos_emb='rope'), dict(attn_pattern='alternating', attn_window=5),
                                dict(attn_impl='explicit', post_norm=True)])
def test_ragged_batch_equals_each_prompt_alone(kw, sync_every):
    model = random_gpt(**kw)
    prompts = ragged_prompts([1, 7, 48, 3, 30, 12])  # 1 .. block_size
    # an end token that row 1 meets early: that row stops, the others go on (and past the context)
    greedy = greedy_by_recompute(model, prompts[1], 20)
    stop = next(t for i, t in enumerate(greedy) if i >= 4 and t not in greedy[:i])
    got = generate_batch(model, prompts, 20, stop_ids={stop}, temperature=0, sync_every=sync_every)
    for p, (tokens, finish) in zip(prompts, got):
        want = greedy_by_recompute(model, p, 20, stop)
        assert tokens == want
        assert finish == ('stop' if want[-1] == stop else 'length')
    assert got[1][1] == 'stop' and len(got[1][0]) < 20


def test_requests_join_and_leave_mid_generation():
    """Continuous batching: requests admitted while others run, cancelled, finishing at different steps, more
    requests than slots; each gets the tokens it gets alone."""
    model = random_gpt()
    prompts = ragged_prompts([5, 9, 2, 17, 11, 4, 25], seed=3)
    budget = [12, 3, 20, 7, 15, 9, 40]  # the last one slides past the context
    engine = Engine(model, max_batch=3)
    rids, out = {}, {}
    for i in range(3):
        rids[engine.add(prompts[i], budget[i], SamplingParams(temperature=0))] = i
    steps = 0
    while engine.pending():
        for rid, token, finish in engine.step():
            out.setdefault(rids[rid], []).append(token)
        steps += 1
        if steps in (2, 4, 5, 9):  # more arrive while the batch runs (and wait for a free slot)
            for i in {2: [3], 4: [4, 5], 5: [6], 9: []}[steps]:
                rids[engine.add(prompts[i], budget[i], SamplingParams(temperature=0))] = i
        if steps == 6:
            engine.cancel(next(r for r, i in rids.items() if i == 0))  # running: its row is freed at once
            assert len(out[0]) == 6 and all(row.rid != 0 for row in engine.rows)
        assert len(engine.rows) <= 3
    for i, p in enumerate(prompts):
        if i == 0:
            assert out[0] == greedy_by_recompute(model, p, 6)
        else:
            assert out[i] == greedy_by_recompute(model, p, budget[i]), i


def test_seeded_requests_sample_the_same_tokens_alone_and_batched():
    model = random_gpt()
    prompts = ragged_prompts([6, 13, 2, 20])
    settings = [dict(temperature=1.0, seed=1), dict(temperature=0.7, top_k=20, seed=2),
                dict(temperature=1.3, top_p=0.9, seed=3), dict(temperature=1.0, min_p=0.1, repetition_penalty=1.3, seed=4)]

    def run(indices, max_batch):
        engine = Engine(model, max_batch=max_batch)
        rids = {engine.add(prompts[i], 15, SamplingParams(**settings[i])): i for i in indices}
        out = {i: [] for i in indices}
        while engine.pending():
            for rid, token, _ in engine.step():
                out[rids[rid]].append(token)
        return out

    batched = run(range(4), 4)
    for i in range(4):
        assert run([i], 1)[i] == batched[i]
    assert len({tuple(t) for t in batched.values()}) == 4
    assert run(range(4), 2) == batched  # two slots: rows wait, then join


def test_chunked_steps_give_the_tokens_of_one_step_at_a_time():
    """sync_every=4 (several steps on the device per read of the host) against sync_every=1: the same tokens and
    finish reasons per request, greedy and with per-request seeds (penalty included), with requests waiting for
    slots, stopping inside a chunk, and sliding past the context; steps do bring several tokens of a request."""
    model = random_gpt()
    prompts = ragged_prompts([5, 9, 2, 17, 11, 4, 45], seed=3)
    budget = [12, 3, 20, 7, 15, 9, 10]  # the last one reaches the context's end (48) and slides past it
    settings = [dict(temperature=0), dict(temperature=0), dict(temperature=1.0, seed=1),
                dict(temperature=0.8, top_k=20, seed=2), dict(temperature=0), dict(temperature=1.0, top_p=0.9, seed=3),
                dict(temperature=1.0, min_p=0.1, repetition_penalty=1.3, seed=4)]
    stop = greedy_by_recompute(model, prompts[0], 12)[6]  # request 0 stops at its 7th token at the latest: inside a chunk

    def run(sync_every):
        engine = Engine(model, max_batch=3, sync_every=sync_every)
        rids = {engine.add(p, n, SamplingParams(**s), stop_ids={stop}): i
                for i, (p, n, s) in enumerate(zip(prompts, budget, settings))}
        out, finish, most = {i: [] for i in rids.values()}, {}, 0
        while engine.pending():
            events = engine.step()
            for rid, token, why in events:
                assert rids[rid] not in finish  # nothing after a request's last token
                out[rids[rid]].append(token)
                if why:
                    finish[rids[rid]] = why
            most = max([most] + [sum(r == rid for r, _, _ in events) for rid in rids])
        return out, finish, most

    one, one_finish, one_most = run(1)
    four, four_finish, four_most = run(4)
    assert one_most == 1 and four_most == 4
    assert four == one and four_finish == one_finish
    assert one_finish[0] == 'stop' and one[0][-1] == stop and len(one[0]) <= 7
    assert one[0] == greedy_by_recompute(model, prompts[0], 12, stop)
    assert one[1] == greedy_by_recompute(model, prompts[1], 3, stop) and one[4] == greedy_by_recompute(model, prompts[4], 15, stop)
    assert len(set(map(tuple, one.values()))) == len(one)


def test_engine_rejects_bad_requests():
    model = random_gpt()
    engine = Engine(model, max_batch=2)
    with pytest.raises(ValueError, match='empty'):
        engine.add([], 5)
    with pytest.raises(ValueError, match=r"49 tokens, longer than the model's context \(48\)"):
        engine.add([1] * 49, 5)
    with pytest.raises(ValueError, match='max_new_tokens'):
        engine.add([1], 0)
    with pytest.raises(ValueError, match='top_p'):
        engine.add([1], 5, SamplingParams(top_p=0.0))
    with pytest.raises(ValueError, match='out of range'):
        engine.add([VOCAB], 5)
    assert engine.pending() == 0 and engine.step() == []
    with pytest.raises(ValueError, match='sync_every'):
        Engine(model, sync_every=0)


def test_cache_rows_of_different_lengths_give_each_rows_forward():
    """kvcache's masked path on its own: a right-padded prefill, then rows stepping at their own positions, equal
    to each row's uncached forward pass."""
    model = random_gpt(pos_emb='rope')
    prompts = ragged_prompts([3, 10, 6])
    cache = KVCache(model.config, 3, 'cpu', torch.float32)
    with torch.no_grad():
        P = max(map(len, prompts))
        padded = torch.tensor([p + [0] * (P - len(p)) for p in prompts])
        first, _ = model(padded, kv_cache=cache)
        cache.set_lengths([len(p) for p in prompts])
        nxt = torch.tensor([[5], [6], [7]])
        step, _ = model(nxt, kv_cache=cache)
        for i, p in enumerate(prompts):
            full, _ = model(torch.tensor([p + [5 + i]]))
            torch.testing.assert_close(first[i, :len(p)], full[0, :-1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(step[i, 0], full[0, -1], atol=1e-5, rtol=1e-5)
    assert cache.lengths == [4, 11, 7]


def test_ragged_batch_equals_transformers_left_padded_generate(tmp_path):
    transformers = pytest.importorskip('transformers')
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
                                  initializer_range=0.5, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = hf_io.from_pretrained(str(tmp_path)).eval()
    prompts = ragged_prompts([4, 11, 1, 8])
    P = max(map(len, prompts))
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])  # left padding, as transformers batches
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0,
                      eos_token_id=None)[:, P:].tolist()
    got = [tokens for tokens, _ in generate_batch(ours, prompts, 20, temperature=0)]
    assert got == ref
