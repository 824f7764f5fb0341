"""Speculative decoding (gpt/speculative.py): greedy tokens equal plain greedy decoding token for token (random and
trained weights, drafts that are always, never and sometimes right, ragged prompt lengths up to the context and
past it, stops inside an accepted run); the accept/reject rule against its definition (each position's token
distributed as the target's, the acceptance rates of Leviathan et al.), and whole generations sampled exactly
from the target's distribution, enumerated; sample.py's --draft and --prompt_lookup.

    .venv/bin/pytest -q tests/test_speculative.py
"""
import copy
import itertools
import math
import re

import pytest
import torch
from conftest import VOCAB, random_gpt, run, run_inprocess, tiny

from gpt.engine import generate
from gpt.sampling import SamplingParams, sample_next
from gpt.speculative import (LookupThenDraft, ModelDrafter, PromptLookup, Speculative, accept, filtered_probs,
                             speculative_generate)


pytestmark = pytest.mark.usefixtures('one_thread')


def noisy_copy(model, std, seed=5):
    """The model with noise on its weights: a draft that is right often, not always."""
    torch.manual_seed(seed)
    draft = copy.deepcopy(model)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn_like(p) * std)
    return draft


def prompts(lengths, seed=1, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def plain(model, prompt, n, **sampling):
    """Plain decoding of one prompt, as sample.py runs it (the engine, one token a step, past the context sliding)."""
    with torch.inference_mode():
        return generate(model, torch.tensor([prompt]), n, temperature=0, **sampling)[0, len(prompt):].tolist()


def spec(model, drafter, prompt, n, k=4, stop_ids=(), **sampling):
    s = Speculative(model, drafter, draft_tokens=k)
    out = list(s.stream(prompt, n, SamplingParams(**{'temperature': 0, **sampling}), stop_ids))
    return out, s.stats


# ----------------------------------------------------------------------------- greedy: token for token

@pytest.mark.parametrize('kw', [dict(), dict(pos_emb='rope', qk_norm=True), dict(attn_impl='explicit', post_norm=True),
                                dict(attn_pattern='alternating', attn_window=5)])
def test_greedy_equals_plain_greedy_for_every_drafter(kw):
    """Drafters always right (the target itself), never (another random model, with a shorter context, so its
    cache restarts), sometimes (a noisy copy), and prompt lookup; prompts of 1 token up to the whole context,
    generations running past it (where every token recomputes the last block_size); k of 1 and 5; lookup where
    it matches, else the noisy copy."""
    model = random_gpt(**kw)
    drafters = {'self': lambda: ModelDrafter(model),
                'other': lambda: ModelDrafter(random_gpt(seed=3, n_layer=1, n_embd=32, block_size=20, **kw)),
                'noisy': lambda: ModelDrafter(noisy_copy(model, 0.02)),
                'lookup': lambda: PromptLookup(2),
                'both': lambda: LookupThenDraft(PromptLookup(2), ModelDrafter(noisy_copy(model, 0.02)))}
    rates = {}
    for (name, make), k in itertools.product(drafters.items(), (1, 5)):
        drafter = make()
        for p in prompts([1, 9, 30, 47, 48], seed=2):
            n = 60 if len(p) < 30 else 12  # (past the context of 48 either way)
            out, stats = spec(model, drafter, p, n, k)
            assert out == plain(model, p, n), (name, k, len(p))
            assert stats.tokens == n and 0 <= stats.accepted <= stats.drafted
            if stats.drafted:  # (a prompt filling the context leaves no room for drafts)
                rates.setdefault(name, []).append(stats.acceptance)
    assert min(rates['self']) == 1.0 and max(rates['other']) < 0.2
    assert 0.1 < sum(rates['noisy']) / len(rates['noisy']) < 0.95  # (kept and rejected drafts both happen)


def test_greedy_with_repetition_penalty_and_drafts_longer_than_the_budget():
    model = random_gpt()
    for drafter in (ModelDrafter(noisy_copy(model, 0.02)), PromptLookup(3),
                    LookupThenDraft(PromptLookup(1), ModelDrafter(noisy_copy(model, 0.02)))):
        for p, n in itertools.product(prompts([4, 17]), (1, 2, 7, 25)):
            got, _ = spec(model, drafter, p, n, k=6, repetition_penalty=1.4)
            assert got == plain(model, p, n, repetition_penalty=1.4)


def test_a_stop_inside_an_accepted_run_ends_there():
    """With the target as its own draft every pass keeps all k drafts: a stop id met in the middle of a pass ends
    the generation at it, as plain decoding stops, and nothing after it is yielded."""
    model = random_gpt()
    p = prompts([6])[0]
    want = plain(model, p, 30)
    at = next(i for i, t in enumerate(want) if i >= 7 and i % 6 not in (0, 5) and t not in want[:i])
    out, stats = spec(model, ModelDrafter(model), p, 30, k=5, stop_ids={want[at]})
    assert out == want[:at + 1]
    assert stats.acceptance == 1.0 and stats.passes == at // 6 + 1  # (the stop was a kept draft, not a pass's last)


def test_prompt_lookup_drafts_the_continuation_of_the_last_ngram():
    lookup = PromptLookup(3)
    assert lookup.propose([5, 6, 7, 8, 9, 5, 6, 7], 3)[0] == [8, 9, 5]
    assert lookup.propose([5, 6, 7, 8, 9, 5, 6, 7, 1, 7], 2)[0] == [1, 7]   # (no 3- or 2-gram: the last token's)
    assert lookup.propose([1, 2, 3, 4], 3)[0] == []
    lookup.reset()
    assert lookup.propose([3, 4, 3, 4, 3], 5)[0] == [4, 3, 4, 3, 4]            # a loop: repeated past the end
    lookup.reset()
    seq = [1, 2, 9, 1, 2, 8, 1, 2]
    assert lookup.propose(seq, 2)[0] == [8, 1]                                  # the latest occurrence
    with pytest.raises(ValueError, match='at least 1 token'):
        PromptLookup(0)


def test_bad_settings_raise():
    model = random_gpt()
    with pytest.raises(ValueError, match='vocabulary'):
        Speculative(model, ModelDrafter(random_gpt(vocab_size=50)))
    with pytest.raises(ValueError, match='draft_tokens'):
        Speculative(model, PromptLookup(2), draft_tokens=0)
    s = Speculative(model, PromptLookup(2))
    for prompt, n, match in (([], 5, 'empty'), ([1], 0, 'max_new_tokens'), ([VOCAB], 5, 'out of range')):
        with pytest.raises(ValueError, match=match):
            next(s.stream(prompt, n))
    with pytest.raises(ValueError, match='one prompt'):
        speculative_generate(model, torch.zeros(2, 3, dtype=torch.long), 5, PromptLookup(2))


# ----------------------------------------------------------------------------- sampling: the rule

def chi2_limit(dof, z=3.719):
    """The chi-square statistic a true distribution exceeds with probability 1e-4 (Wilson-Hilferty)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def assert_distributed_as(counts, probs):
    """Pearson's chi-square test of observed counts against probabilities (cells of tiny mass pooled)."""
    counts, probs = torch.as_tensor(counts, dtype=torch.float64), torch.as_tensor(probs, dtype=torch.float64)
    n = counts.sum()
    assert abs(float(probs.sum()) - 1) < 1e-6 and not counts[probs == 0].any(), (counts, probs)
    big = probs * n >= 5
    obs = torch.cat((counts[big], counts[~big].sum()[None])) if (~big).any() else counts[big]
    exp = torch.cat((probs[big], probs[~big].sum()[None])) * n if (~big).any() else probs[big] * n
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    dof = int(keep.sum()) - 1
    assert stat < chi2_limit(dof), f"chi-square {stat:.1f} over {dof} dof: {obs.tolist()} against {exp.tolist()}"


def random_dists(k, V, seed, sharp=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(k, V, generator=g) * sharp).softmax(-1)


@pytest.mark.parametrize('point_mass', [False, True])
def test_accept_rule_against_its_definition(point_mass):
    """Drafts drawn from q (or fixed, a prompt-lookup draft), one pass of the rule 20000 times: the first token is
    distributed as p[0]; given the first draft kept, the second token as p[1]; after all k kept, the bonus as p[k];
    the first draft is kept with probability sum(min(p, q)) (Leviathan et al.'s beta), 1 - ... rejected."""
    k, V, N = 2, 6, 20000
    p = random_dists(k + 1, V, seed=1)
    q = None if point_mass else random_dists(k, V, seed=2)
    fixed = [int(p[0].argmax()), int(p[1].argmax())]  # (drafts the target likes, but not always)
    g = torch.Generator().manual_seed(3)
    first, second, bonus = torch.zeros(V), torch.zeros(V), torch.zeros(V)
    kept_count = torch.zeros(k + 1)
    for _ in range(N):
        drafts = fixed if point_mass else [int(torch.multinomial(q[i], 1, generator=g)) for i in range(k)]
        kept, token = accept(p, q, drafts, g)
        out = drafts[:kept] + [token]
        kept_count[kept] += 1
        first[out[0]] += 1
        if kept >= 1:
            second[out[1]] += 1
        if kept == k:
            bonus[out[k]] += 1
    assert_distributed_as(first, p[0])
    assert_distributed_as(second, p[1])
    assert_distributed_as(bonus, p[k])
    qq = torch.zeros(k, V).scatter_(1, torch.tensor(fixed)[:, None], 1.0) if point_mass else q
    beta = torch.minimum(p[:k], qq).sum(-1)  # P(draft i kept | the drafts before it kept)
    want = torch.stack([1 - beta[0], beta[0] * (1 - beta[1]), beta[0] * beta[1]])
    assert_distributed_as(kept_count, want)
    assert 0.05 < float(beta[0]) < 0.95


def test_filtered_probs_is_what_sample_next_draws_from():
    """The same seed draws the same token from filtered_probs as sample_next draws: the filters are applied as
    plain sampling applies them (penalty, temperature, top-k, top-p, min-p)."""
    g = torch.Generator().manual_seed(0)
    for i, params in enumerate([SamplingParams(temperature=0.7), SamplingParams(top_k=5, top_p=0.8),
                                SamplingParams(temperature=1.3, min_p=0.05, repetition_penalty=1.5)]):
        logits = torch.randn(64, 40, generator=g) * 3
        prev = torch.randint(0, 40, (64, 9), generator=g)
        probs = filtered_probs(logits, prev, params)
        a = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(i))
        b = sample_next(logits, prev, params.temperature, params.top_k, params.top_p, params.min_p,
                        params.repetition_penalty, generator=torch.Generator().manual_seed(i))
        assert torch.equal(a, b)


def exact_distribution(model, prompt, n, params):
    """P(every continuation of n tokens) under plain sampling, enumerated: the product of each step's filtered
    distribution (filtered_probs, which test_filtered_probs_is_what_sample_next_draws_from ties to sample_next)."""
    V = model.config.vocab_size
    seqs = list(itertools.product(range(V), repeat=n))
    probs = []
    with torch.no_grad():
        for seq in seqs:
            ids, pr = list(prompt), 1.0
            for t in seq:
                logits = model(torch.tensor([ids]))[0][:, -1, :V].float()
                pr *= float(filtered_probs(logits, torch.tensor([ids]), params)[0, t])
                ids.append(t)
            probs.append(pr)
    return seqs, torch.tensor(probs, dtype=torch.float64)


@pytest.mark.parametrize('drafter', ['model', 'lookup', 'both'])
def test_sampled_generations_are_distributed_as_plain_sampling(drafter):
    """3 tokens from a 4-token vocabulary, 3000 times (with penalty, temperature, top-p), against the exact
    distribution of plain sampling over all 64 continuations; the draft model's own distribution is far from it,
    so a rule that kept its drafts unchecked would fail."""
    V, n, N = 4, 3, 3000
    model = random_gpt(std=0.8, vocab_size=V, n_layer=1, n_embd=16, n_head=2)
    draft = random_gpt(seed=7, std=0.8, vocab_size=V, n_layer=1, n_embd=16, n_head=2)
    params = SamplingParams(temperature=0.9, top_p=0.95, repetition_penalty=1.2)
    prompt = [3, 1] if drafter == 'model' else [0, 1, 2, 0, 1]
    seqs, want = exact_distribution(model, prompt, n, params)
    drafters = {'model': lambda: ModelDrafter(draft), 'lookup': lambda: PromptLookup(2),
                'both': lambda: LookupThenDraft(PromptLookup(2), ModelDrafter(draft))}  # (passes of each kind)
    spec = Speculative(model, drafters[drafter](), draft_tokens=2)
    g = torch.Generator().manual_seed(11)
    counts, drafted, accepted = torch.zeros(len(seqs)), 0, 0
    where = {s: i for i, s in enumerate(seqs)}
    for _ in range(N):
        counts[where[tuple(spec.stream(prompt, n, params, generator=g))]] += 1
        drafted, accepted = drafted + spec.stats.drafted, accepted + spec.stats.accepted
    assert_distributed_as(counts, want)
    assert drafted > N and 0.05 < accepted / drafted < 0.95
    if drafter == 'model':
        _, theirs = exact_distribution(draft, prompt, n, params)
        assert 0.5 * float((theirs - want).abs().sum()) > 0.2


# ----------------------------------------------------------------------------- trained weights and sample.py

@pytest.fixture(scope='module')
def trained_pair(tmp_path_factory, char_data):
    """Two character-level Shakespeare models trained briefly on the same data (~8 s each; the target reaches val
    ~2.27, past a bigram model's): a 2-layer 64-wide target, a 1-layer 32-wide draft."""
    root = tmp_path_factory.mktemp('spec')
    common = ['--max_iters=300', '--lr_decay_iters=300', '--eval_interval=300', '--eval_iters=2', '--log_interval=100',
              '--warmup_iters=20', '--learning_rate=3e-3', '--batch_size=16', '--gradient_accumulation_steps=1',
              '--optim=muon', '--gelu_approx=none', '--plot=False', f'--data_dir={char_data}']
    run('train.py', f'--out_dir={root / "target"}', *common, *tiny(block_size=64, n_embd=64))
    run('train.py', f'--out_dir={root / "draft"}', *common, *tiny(block_size=64, n_layer=1))
    return root / 'target', root / 'draft'


def sample(out_dir, *args):
    code, out, err = run_inprocess('sample.py', f'--out_dir={out_dir}', '--device=cpu', *args)
    assert code == 0, err
    return out, err


def test_greedy_equals_plain_greedy_on_trained_weights(trained_pair):
    """The trained pair as sample.py loads them (decoding layouts for k + 1 rows and for one), prompts of 1 to 64
    characters (the whole context), generations running past the context of 64."""
    from gpt.decoding import load_for_decoding
    target = load_for_decoding(str(trained_pair[0]), device='cpu', rows=5).model
    draft = load_for_decoding(str(trained_pair[1]), device='cpu', rows=1).model
    accepted = 0
    for drafter in (ModelDrafter(draft), PromptLookup(3), LookupThenDraft(PromptLookup(3), ModelDrafter(draft))):
        for p in prompts([1, 6, 40, 64], seed=4, vocab=target.config.vocab_size):
            out, stats = spec(target, drafter, p, 90)
            assert out == plain(target, p, 90), (type(drafter).__name__, len(p))
            accepted += stats.accepted
    assert accepted > 50


def test_sample_py_greedy_text_is_the_same_with_a_draft_or_prompt_lookup(trained_pair):
    target, draft = trained_pair
    common = ('--temperature=0', '--max_new_tokens=150', '--start=ROMEO:')
    plain_text, _ = sample(target, *common)
    for extra in ([f'--draft={draft}', '--draft_tokens=3'], ['--prompt_lookup=3'], [f'--draft={target}'],
                  [f'--draft={draft}', '--prompt_lookup=3']):
        text, err = sample(target, *common, *extra)
        assert text == plain_text, extra
        m = re.search(r'tokens/s; speculative: (\d+)/(\d+) drafts accepted \(([\d.]+)%\), ([\d.]+) tokens per target '
                      r'pass', err.strip().splitlines()[-1])
        assert m and int(m.group(2)) > 0, err
        if extra == [f'--draft={target}']:
            assert m.group(1) == m.group(2)  # (the target as its own draft: every draft kept)
    # a stop string inside an accepted run: the text ends before it, as without a draft
    stop = plain_text[len('ROMEO:') + 40:len('ROMEO:') + 43]
    text, _ = sample(target, *common, f'--stop={stop}', f'--draft={target}', '--draft_tokens=6')
    assert text == sample(target, *common, f'--stop={stop}')[0] and stop not in text[len('ROMEO:'):]


def test_sample_py_samples_with_a_draft_and_prompt_lookup(trained_pair):
    target, draft = trained_pair
    for extra in ([f'--draft={draft}'], ['--prompt_lookup=2'], [f'--draft={draft}', '--prompt_lookup=2']):
        out, err = sample(target, '--max_new_tokens=40', '--num_samples=2', '--top_k=10', *extra)
        assert out.count('---------------') == 2 and 'drafts accepted' in err.strip().splitlines()[-1]


@pytest.mark.parametrize('args, message', [
    (['--prompt_lookup=2', '--num_beams=2'], "speculative decoding (--draft, --prompt_lookup) decodes one sample at a time without beams"),
    (['--prompt_lookup=2', '--use_cache=False'], "speculative decoding needs the KV cache"),
    (['--prompt_lookup=2', '--draft_tokens=0'], "draft_tokens must be >= 1"),
    (['--prompt_lookup=-1'], "prompt_lookup must be >= 0"),
    (['--draft=HF_DIR'], "does not use the target's tokenizer"),
])
def test_sample_py_speculative_mistakes_are_one_line(trained_pair, tmp_path, args, message):
    target, _ = trained_pair
    if '--draft=HF_DIR' in args:  # a transformers directory of a GPT-2-tokenizer model: not the characters' tokens
        from gpt import hf
        hf.save_pretrained(random_gpt(), tmp_path)
        args = [f'--draft={tmp_path}']
    code, _, err = run_inprocess('sample.py', f'--out_dir={target}', '--device=cpu', '--max_new_tokens=5', *args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], err


def test_compiled_steps_on_a_static_cache_give_the_same_tokens():
    """With decoders (compile_decoder's, traced by dynamo without inductor here) the model's passes and the
    draft's steps run on static caches, rolled back the same way."""
    from gpt.fastpath import compile_decoder
    torch._dynamo.reset()  # (dynamo's recompile limit counts per code object: other tests' graphs of GPT.forward too)
    model = random_gpt()
    draft = noisy_copy(model, 0.02)
    p = prompts([7])[0]
    s = Speculative(model, ModelDrafter(draft, compile_decoder(draft, backend='eager')), draft_tokens=3,
                    decoder=compile_decoder(model, backend='eager'))
    out = list(s.stream(p, 50, SamplingParams(temperature=0)))
    assert out == plain(model, p, 50) and 0 < s.stats.accepted < s.stats.drafted
