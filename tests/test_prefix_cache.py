"""The engine's prefix reuse (Engine(prefix_cache=True)): a prompt that starts as a finished or running request did
starts from a copy of that row's keys and values and prefills only the rest. References: the same requests through
Engine(prefix_cache=False), token for token with logits within 1e-5 (float32), and each prompt decoded alone by
recomputing its whole context every step. That the reuse happens is counted (prefilled_tokens, reused_tokens)."""
import pytest
import torch
from conftest import VOCAB, random_gpt, greedy_by_recompute

from gpt.engine import Engine
from gpt.kvcache import KVCache
from gpt.sampling import SamplingParams

BLOCK = 48


pytestmark = pytest.mark.usefixtures('one_thread')


def rand(n, seed):
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


class Recording(Engine):
    """An Engine that keeps the raw logits each row sampled from (rid -> [(vocab,) float32 tensors])."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.seen = {}

    def _hold_stops(self, logits, ahead=0):
        for row, x in zip(self.rows, logits):
            self.seen.setdefault(row.rid, []).append(x.clone())
        return super()._hold_stops(logits, ahead)


def drive(engine, schedule):
    """Run requests through a Recording engine: schedule maps a step number to the requests added before that
    step, each (name, prompt or a function of the outputs so far giving it, max_new, add's keyword arguments).
    Returns {name: tokens}, {name: logprob entries}, {name: prompt tokens prefilled} and {name: logits}."""
    out, lps, prefilled, names, step = {}, {}, {}, {}, 0
    while engine.pending() or any(k >= step for k in schedule):
        for name, prompt, n, kw in schedule.get(step, ()):
            prompt = prompt(out) if callable(prompt) else prompt
            kw = dict(kw)
            params = kw.pop('params', SamplingParams(temperature=0))
            names[engine.add(prompt, n, params, **kw)] = name
            out[name] = []
        before, waiting = engine.prefilled_tokens, {r.rid for r in engine.waiting}
        for rid, token, _ in engine.step():
            out[names[rid]].append(token)
        joined = waiting - {r.rid for r in engine.waiting}
        for rid in joined:  # (the prefill's tokens, when one request joined alone)
            prefilled[names[rid]] = engine.prefilled_tokens - before if len(joined) == 1 else None
        for rid, name in names.items():
            lps.setdefault(name, []).extend(engine.take_logprobs(rid))
        step += 1
    return out, lps, prefilled, {name: engine.seen.get(rid, []) for rid, name in names.items()}


def close(x, y):
    """Within 1e-5, relative to the value's size past 1: these weights (std 0.5) give logits up to ~15 in float32,
    and a cached forward pass already differs from an uncached one by ~1e-5 there, reuse or not."""
    return abs(x - y) <= 1e-5 * max(1.0, abs(y))


def assert_same(a, b):
    """Two drive() results: the same tokens, logits within 1e-5 (close) and the same logprob entries (those
    requests reuse nothing: up to the batch's rounding)."""
    assert a[0] == b[0]
    assert a[3].keys() == b[3].keys()
    for name in a[3]:
        assert len(a[3][name]) == len(b[3][name]), name
        for x, y in zip(a[3][name], b[3][name]):
            assert (x - y).abs().max() <= 1e-5 * max(1.0, y.abs().max()), name
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        assert len(a[1][name]) == len(b[1][name]), name
        for (t1, c1, top1), (t2, c2, top2) in zip(a[1][name], b[1][name]):
            assert t1 == t2
            assert (c1 is None) == (c2 is None) and (c1 is None or close(c1, c2)), name
            assert [i for i, _ in top1 or []] == [i for i, _ in top2 or []], name
            for (_, v1), (_, v2) in zip(top1 or [], top2 or []):
                assert close(v1, v2), name


def conversation(turns, user=6, reply=5, seed=10):
    """A chat's schedule: turn t's prompt is turn t-1's prompt, its reply and a new user message; one turn at a
    time (each added at a step when the previous one has finished)."""
    schedule, prompts = {}, {}
    for t in range(turns):
        def prompt(out, t=t):
            prompts[t] = (prompts[t - 1] + out[t - 1] if t else []) + rand(user, seed + t)
            return prompts[t]
        schedule[t * (reply + 1)] = [(t, prompt, reply, {})]
    return schedule, prompts


@pytest.mark.parametrize('kw', [dict(), dict(pos_emb='rope', attn_pattern='alternating', attn_window=5)])
def test_a_chat_turn_prefills_only_its_new_tokens(kw, monkeypatch):
    """One chat at a time: each turn starts in the slot its previous turn left, its keys copied nowhere."""
    model = random_gpt(block_size=96, **kw)  # (six turns of 11 tokens)
    schedule, prompts = conversation(6)
    engine = Recording(model, max_batch=4)
    copies = []
    for name in ('copy_prefix', 'swap_rows', 'move_row'):
        monkeypatch.setattr(KVCache, name, lambda self, *a, name=name: copies.append(name))
    got = drive(engine, schedule)
    assert copies == []
    monkeypatch.undo()
    want = drive(Recording(model, max_batch=4, prefix_cache=False), conversation(6)[0])
    assert_same(got, want)
    for t in range(6):
        assert got[0][t] == greedy_by_recompute(model, prompts[t], 5)
    # turn t holds turn t-1's prompt and reply but the reply's last token (never fed back): that and the new message
    assert got[2] == {0: 6, **{t: 1 + 6 for t in range(1, 6)}}
    assert engine.reused_tokens == sum(len(prompts[t]) - 7 for t in range(1, 6))
    assert engine.prefilled_tokens + engine.reused_tokens == sum(len(p) for p in prompts.values())


@pytest.mark.parametrize('sync_every,static', [(1, False), (4, False), (4, True)])
def test_reuse_gives_the_tokens_and_logits_of_no_reuse(sync_every, static):
    """Prefixes of a finished request, of a running one, a prompt equal to a cached one, one longer than the
    context, a slid row's tokens, logprobs, and seeded sampling with penalties, in one engine; rows that stop
    inside a device chunk (sync_every=4) leave keys of dropped tokens behind, which are not reused. static: the
    static cache a compiled or CUDA-graph decoder steps on (here the model itself, eager, as the decoder)."""
    model = random_gpt()
    decoder = model if static else None
    a, b = rand(20, 1), rand(9, 2)
    seeded = SamplingParams(temperature=1.0, repetition_penalty=1.3, presence_penalty=0.5, seed=7)
    greedy_a = greedy_by_recompute(model, a, 8)
    stop = greedy_a[2]  # a stops at its third token at the latest
    schedule = {
        0: [('a', a, 8, dict(stop_ids={stop})), ('b', b, 45, dict(logprobs=3))],  # b slides
        2: [('running', b + rand(4, 3), 6, {})],          # b is running
        12: [('after_a', lambda out: a + out['a'] + rand(5, 4), 6, {}), ('equal_a', a, 6, {})],
        14: [('equal_held', lambda out: a + out['a'][:-1], 4, {}),
             ('seeded', a[:15] + rand(3, 5), 10, dict(params=seeded))],
        16: [('crop', a + rand(40, 6), 5, dict(crop=True)),
             ('prompt_lp', a[:18] + rand(2, 7), 3, dict(logprobs=VOCAB, prompt_logprobs=5))],
        30: [('logprobs', a[:18] + rand(2, 8), 3, dict(logprobs=VOCAB))],
        41: [('seeded_again', a[:15] + rand(3, 5), 10, dict(params=seeded))],
        60: [('after_slid', lambda out: b + out['b'][:20], 4, {})],
    }
    engine = Recording(model, max_batch=3, sync_every=sync_every, decoder=decoder)
    got = drive(engine, schedule)
    off = Recording(model, max_batch=3, sync_every=sync_every, decoder=decoder, prefix_cache=False)
    assert_same(got, drive(off, schedule))
    assert off.reused_tokens == 0 and engine.reused_tokens > 0
    out = got[0]
    assert out['a'] == greedy_a[:greedy_a.index(stop) + 1] and out['b'] == greedy_by_recompute(model, b, 45)
    for name, prompt in [('equal_a', a), ('after_a', a + out['a'] + rand(5, 4)), ('equal_held', a + out['a'][:-1]),
                         ('after_slid', b + out['b'][:20]), ('running', b + rand(4, 3))]:
        assert out[name] == greedy_by_recompute(model, prompt, len(out[name])), name
    assert out['seeded'] == out['seeded_again']  # (no state of one request's sampling reaches another)
    assert got[1]['prompt_lp'][0] == (a[0], None, None) and len(got[1]['prompt_lp']) == 20 + 3


def test_reuse_happens_where_it_should():
    """Counted: a running row's prefix, a finished one's, a prompt equal to a cached one (its last token is
    recomputed), and none for logprobs, prompt logprobs, cropped prompts or a slid row."""
    model = random_gpt()
    a = rand(20, 1)
    engine = Engine(model, max_batch=4)

    def prefill(prompt, n=3, **kw):
        """Run one request to its end: its tokens, and the tokens prefilled and reused when it joined."""
        before = (engine.prefilled_tokens, engine.reused_tokens)
        rid, out = engine.add(prompt, n, SamplingParams(temperature=0), **kw), []
        while engine.pending():
            out += [t for r, t, _ in engine.step() if r == rid]
        assert out == greedy_by_recompute(model, prompt[-BLOCK:], len(out))
        return out, (engine.prefilled_tokens - before[0], engine.reused_tokens - before[1])

    out, counts = prefill(a, 5)
    assert counts == (20, 0)
    assert prefill(a + out + [7])[1] == (2, 24)        # the reply's last token and the new one
    assert prefill(a)[1] == (1, 19)                    # equal to a cached prompt: the last token again
    assert prefill(a[:10] + [3, 4])[1] == (2, 10)
    assert prefill(a + [5], prompt_logprobs=0)[1] == (21, 0)
    assert prefill(a + [6], logprobs=0)[1] == (21, 0)
    long = rand(BLOCK + 4, 2)
    assert prefill(long, 3, crop=True)[1] == (BLOCK, 0)
    assert prefill(long[:30])[1] == (30, 0)  # (the slid row's keys are of long[4:52]: nothing kept of it)
    slid = rand(BLOCK - 2, 4)
    out, _ = prefill(slid, 6)                # slides while it decodes
    assert prefill(slid + out[:2])[1] == (BLOCK, 0)
    # a running row's prefix: b runs while c joins
    b = rand(12, 3)
    other = (greedy_by_recompute(model, b, 1)[0] + 1) % VOCAB  # (not b's first token: the match ends with b)
    rb = engine.add(b, 10, SamplingParams(temperature=0))
    engine.step(), engine.step()
    before = engine.reused_tokens
    engine.add(b + [other, other], 2, SamplingParams(temperature=0))
    engine.step()
    assert engine.reused_tokens - before == 12
    engine.cancel(rb)


def test_least_recently_used_entries_go_first_and_eviction_stays_exact():
    """Two slots: a finished chat's keys stay while a free slot is left for them, and the older of two goes when
    a new request needs its slot; with more chats than slots every answer is still each prompt's alone."""
    model = random_gpt()
    engine = Engine(model, max_batch=2)

    def run(prompt, n=4):
        rid, out = engine.add(prompt, n, SamplingParams(temperature=0)), []
        before = engine.reused_tokens
        while engine.pending():
            out += [t for r, t, _ in engine.step() if r == rid]
        return out, engine.reused_tokens - before

    a, b, c = rand(10, 1), rand(10, 2), rand(10, 3)
    ra, _ = run(a)
    rb, _ = run(b)  # a's keys moved up for b's slot
    assert len(engine.entries) == 2
    run(c)          # c takes a slot: b's keys are newer than a's, so a's go
    assert {len(e.tokens) for e in engine.entries.values()} == {13} and len(engine.entries) == 2
    assert run(b + rb + [1])[1] == len(b) + len(rb) - 1  # (c's keys swap places with b's: both kept)
    assert run(c + [1])[1] == len(c)
    assert run(a + ra + [1])[1] == 0

    # interleaved chats, more than the slots, some running together: always each prompt's greedy tokens
    chats = {k: rand(5, 20 + k) for k in range(4)}
    engine = Engine(model, max_batch=2)
    for turn in range(3):
        rids, outs = {}, {}
        for k in (0, 1, 2, 3) if turn % 2 == 0 else (3, 1, 0, 2):
            rids[engine.add(chats[k], 4, SamplingParams(temperature=0))] = k
            outs[k] = []
            for r, t, _ in engine.step():
                outs[rids[r]].append(t)
        while engine.pending():
            for r, t, _ in engine.step():
                outs[rids[r]].append(t)
        for k in chats:
            assert outs[k] == greedy_by_recompute(model, chats[k], 4), (turn, k)
            chats[k] = chats[k] + outs[k] + rand(3, 100 * turn + k)
    assert engine.reused_tokens > 0


def test_rows_whose_prefixes_do_not_fit_together_prefill_apart():
    """A long reused prefix and a long new prompt joining at once: longer than the context side by side, so they
    take two passes; both exact."""
    model = random_gpt()
    a = rand(38, 1)
    engine = Engine(model, max_batch=3)
    engine.add(a, 3, SamplingParams(temperature=0))
    out = []
    while engine.pending():
        out += [t for _, t, _ in engine.step()]
    cont, fresh = a + out + rand(4, 2), rand(30, 3)
    names = {engine.add(cont, 4, SamplingParams(temperature=0)): 'cont',
             engine.add(fresh, 4, SamplingParams(temperature=0)): 'fresh'}
    got = {'cont': [], 'fresh': []}
    while engine.pending():
        for r, t, _ in engine.step():
            got[names[r]].append(t)
    assert got == {'cont': greedy_by_recompute(model, cont, 4), 'fresh': greedy_by_recompute(model, fresh, 4)}
    assert engine.reused_tokens == 40
