"""serve.py's log-probabilities: completions' logprobs and echo (the prompt's tokens scored, max_tokens 0 too), chat's
logprobs and top_logprobs, streamed and not, against independent references: transformers' GPT2LMHeadModel on a
random GPT-2 saved with save_pretrained, a full forward pass of our own model (no KV cache), and
lm-evaluation-harness's local-completions model evaluating the served model, whose log-likelihoods must equal this
repo's own scoring (gpt/scoring.py) of the same requests. The real server in a subprocess on 127.0.0.1
(tests/test_serve.py's Server)."""
import httpx
import pytest
import torch
from conftest import SHARED, Server

from gpt import chat, rl
from gpt.checkpoint import save_checkpoint
from gpt.engine import Engine
from gpt.loading import load_model
from gpt.sampling import SamplingParams

transformers = pytest.importorskip('transformers')
openai = pytest.importorskip('openai', reason="the openai client is a test requirement (requirements-test.txt)")
tiktoken = pytest.importorskip('tiktoken')

TEXT = "The quick brown fox jumps over the lazy dog, and the dog sleeps on. Caf\u00e9 \u2603"


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
    """A random GPT-2 (the real vocabulary, tiny width, context 128) in transformers' format; large initial weights
    make its predictions peaked, so greedy choices differ by more than rounding."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                  initializer_range=0.3)
    d = tmp_path_factory.mktemp('logprobs') / 'gpt2-tiny'
    transformers.GPT2LMHeadModel(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope='module')
def hf_model(hf_dir):
    return transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()


@pytest.fixture(scope='module')
def enc():
    return tiktoken.get_encoding('gpt2')


@pytest.fixture(scope='module')
def server(hf_dir, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp('logs'), f'--init_from={hf_dir}')
    yield s
    s.stop()


@pytest.fixture(scope='module')
def chat_dir(hf_dir, tmp_path_factory):
    """The same GPT-2 with gpt/chat.py's tokens added (random new rows): a model the chat endpoint serves."""
    model, meta, _ = load_model(str(hf_dir))
    meta = chat.chat_meta(meta)
    torch.manual_seed(0)
    model = chat.grow_vocab(model, meta)
    d = tmp_path_factory.mktemp('chat')
    save_checkpoint(rl.policy_checkpoint(model, meta, {}, 0), str(d / 'ckpt.pt'))
    return d


@pytest.fixture(scope='module')
def chat_server(chat_dir, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp('logs'), f'--out_dir={chat_dir}', '--ckpt_name=ckpt.pt')
    yield s
    s.stop()


def hf_logprobs(hf_model, ids):
    """transformers' log_softmax at every position of ids: (len(ids), vocab), float32."""
    with torch.no_grad():
        return torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), dim=-1)


def post(s, path, body):
    return httpx.post(s.url + path, json=body, timeout=120)


def joined(chunks):
    """A streamed choice's completions logprobs, its chunks' lists concatenated."""
    out = {'tokens': [], 'token_logprobs': [], 'top_logprobs': [], 'text_offset': []}
    for lp in chunks:
        for k in out:
            out[k] += getattr(lp, k)
    return out


# ----------------------------------------------------------------------------- the engine

def test_engine_logprobs_equal_a_full_forward(hf_dir):
    """Engine's entries against a forward pass over the whole sequence: the prompt's at prefill, each generated
    token's (greedy and sampled, the sampled one's even when it is not among the top), in one-token steps and in
    chunks of device steps (sync_every), next to a row that asks for none and decodes as before."""
    model, _, _ = load_model(str(hf_dir))
    model.eval()
    prompt, other = [464, 2068, 7586, 21831, 18045, 625], [15496, 612]
    with torch.inference_mode():
        base = Engine(model, max_batch=4)
        base.add(other, 6, SamplingParams(temperature=0))
        plain = [t for _ in range(6) for rid, t, _ in base.step()]
    for sync_every, temperature in ((1, 0.0), (3, 0.0), (1, 1.5), (3, 1.5)):
        engine = Engine(model, max_batch=4, sync_every=sync_every)
        with torch.inference_mode():
            rid = engine.add(prompt, 6, SamplingParams(temperature=temperature, seed=1), logprobs=3, prompt_logprobs=2)
            other_rid = engine.add(other, 6, SamplingParams(temperature=0))
            tokens, others = [], []
            while engine.pending():
                for r, t, _ in engine.step():
                    (tokens if r == rid else others).append(t)
            assert others == plain, (sync_every, temperature)  # (the row without logprobs decodes as before)
            assert engine.take_logprobs(other_rid) == []
            entries = engine.take_logprobs(rid)
            ref = torch.log_softmax(model(torch.tensor([prompt + tokens]))[0][0].float(), dim=-1)
        assert engine.take_logprobs(rid) == []  # (handed over once)
        assert len(entries) == len(prompt) + 6
        assert entries[0] == (prompt[0], None, None)
        for t, (token, logprob, top) in enumerate(entries[1:], start=1):
            k = 2 if t < len(prompt) else 3
            assert token == (prompt + tokens)[t]
            assert logprob == pytest.approx(ref[t - 1, token].item(), rel=1e-5, abs=1e-5)
            want = ref[t - 1].topk(k)
            assert [i for i, _ in top] == want.indices.tolist()
            assert [v for _, v in top] == pytest.approx(want.values.tolist(), rel=1e-5, abs=1e-5)
        if temperature == 0:
            assert all(token == top[0][0] for token, _, top in entries[len(prompt):])
        else:  # (this seed samples tokens outside the top 3: their logprobs are reported all the same)
            assert any(token not in [i for i, _ in top] for token, _, top in entries[len(prompt):])


# ----------------------------------------------------------------------------- completions

def test_echo_scores_the_prompt_as_transformers(server, hf_model, enc):
    """echo with max_tokens 0 (how lm_eval scores): nothing generated; every prompt token's logprob is
    transformers' log_softmax at that position (the first's null), its top token transformers' argmax; the
    prompt as token ids (the official client) and as text (plain HTTP) alike."""
    ids = enc.encode(TEXT)
    ref = hf_logprobs(hf_model, ids)
    client = server.client()
    name = client.models.list().data[0].id
    out = client.completions.create(model=name, prompt=ids, max_tokens=0, echo=True, logprobs=1, temperature=0)
    choice = out.choices[0]
    assert choice.text == TEXT and choice.finish_reason == 'length'
    assert out.usage.completion_tokens == 0 and out.usage.prompt_tokens == len(ids)
    lp = choice.logprobs
    assert lp.tokens == [enc.decode_single_token_bytes(t).decode('utf-8', errors='replace') for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and lp.text_offset[0] == 0
    want = ref[torch.arange(len(ids) - 1), ids[1:]]
    torch.testing.assert_close(torch.tensor(lp.token_logprobs[1:]), want, rtol=1e-4, atol=1e-5)
    for t in range(1, len(ids)):
        top = lp.top_logprobs[t]
        best = max(top, key=top.get)
        assert best == enc.decode_single_token_bytes(int(ref[t - 1].argmax())).decode('utf-8', errors='replace')
        assert top[best] == pytest.approx(ref[t - 1].max().item(), rel=1e-4)
        assert top[lp.tokens[t]] == lp.token_logprobs[t]  # (the prompt's token, in or beside the top one)
        assert len(top) == 1 + (lp.tokens[t] != best)
    assert lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(len(ids))]
    chunks = list(client.completions.create(model=name, prompt=ids, max_tokens=0, echo=True, logprobs=1, stream=True))
    assert ''.join(c.choices[0].text for c in chunks) == TEXT
    assert joined(c.choices[0].logprobs for c in chunks) == {k: getattr(lp, k) for k in joined([])}
    as_text = post(server, '/v1/completions', {'prompt': TEXT, 'max_tokens': 0, 'echo': True, 'logprobs': 1})
    assert as_text.status_code == 200, as_text.text
    assert as_text.json()['choices'][0]['logprobs'] == lp.model_dump()


def test_generated_logprobs_equal_transformers_streamed_and_not(server, hf_model, enc):
    """Five greedy tokens: transformers' greedy tokens, each with transformers' logprob and top 3 (sorted); the
    streamed chunks' logprobs (official client) concatenate to the whole response's, with echo too."""
    ids = enc.encode("Once upon a time")
    client = server.client()
    name = client.models.list().data[0].id
    with torch.no_grad():
        greedy = hf_model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False,
                                   pad_token_id=50256)[0, len(ids):].tolist()
    ref = hf_logprobs(hf_model, ids + greedy)
    for echo in (False, True):
        whole = client.completions.create(model=name, prompt=ids, max_tokens=5, logprobs=3, temperature=0, echo=echo)
        lp, skip = whole.choices[0].logprobs, len(ids) if echo else 0
        assert whole.choices[0].text == enc.decode(ids if echo else []) + enc.decode(greedy)
        assert lp.tokens[skip:] == [enc.decode_single_token_bytes(t).decode('utf-8', errors='replace') for t in greedy]
        want = ref[torch.arange(len(ids) - 1, len(ids) + 4), greedy]
        torch.testing.assert_close(torch.tensor(lp.token_logprobs[skip:]), want, rtol=1e-4, atol=1e-5)
        for j, top in enumerate(lp.top_logprobs[skip:]):
            values = list(top.values())
            assert len(top) == 3 and values == sorted(values, reverse=True)
            torch.testing.assert_close(torch.tensor(values), ref[len(ids) - 1 + j].topk(3).values, rtol=1e-4,
                                       atol=1e-5)
        chunks = list(client.completions.create(model=name, prompt=ids, max_tokens=5, logprobs=3, temperature=0,
                                                echo=echo, stream=True))
        assert ''.join(c.choices[0].text for c in chunks) == whole.choices[0].text
        assert joined(c.choices[0].logprobs for c in chunks) == {k: getattr(lp, k) for k in joined([])}


def test_a_sampled_token_is_reported_outside_the_top(server, hf_model, enc):
    """Sampled at temperature 1.5 (seeded, n=2): each token's logprob is the raw model's (transformers', before
    temperature), and top_logprobs holds the top 1 and, where the sampled token is not it, that token too (OpenAI's
    "up to logprobs + 1")."""
    ids = enc.encode("Hello")
    r = post(server, '/v1/completions', {'prompt': ids, 'max_tokens': 8, 'logprobs': 1, 'temperature': 1.5,
                                         'seed': 3, 'n': 2})
    assert r.status_code == 200, r.text
    by_text = {}  # (the response names tokens by their text: the ids that have it)
    for t in range(enc.n_vocab):
        by_text.setdefault(enc.decode_single_token_bytes(t).decode('utf-8', errors='replace'), []).append(t)
    outside = 0
    for choice in r.json()['choices']:
        lp, seq = choice['logprobs'], list(ids)
        assert ''.join(lp['tokens']) == choice['text'] and len(lp['tokens']) == 8
        for text, logprob, top in zip(lp['tokens'], lp['token_logprobs'], lp['top_logprobs']):
            ref = hf_logprobs(hf_model, seq)[-1]
            assert max(top.values()) == pytest.approx(ref.max().item(), rel=1e-4)
            assert top[text] == logprob <= 0
            token = min(by_text[text], key=lambda t: abs(ref[t].item() - logprob))
            assert ref[token].item() == pytest.approx(logprob, rel=1e-4)
            outside += token != int(ref.argmax())
            assert len(top) == 1 + (token != int(ref.argmax()))
            seq.append(token)
    assert outside > 0


def test_logprob_options_out_of_range_are_a_400_naming_them(server, chat_server):
    hi = [{'role': 'user', 'content': 'Hi'}]
    for s, path, body, param in [
            (server, 'completions', {'prompt': 'a', 'logprobs': 21}, 'logprobs'),  # (the cap: MAX_LOGPROBS)
            (server, 'completions', {'prompt': 'a', 'logprobs': True}, 'logprobs'),  # (completions: a number)
            (server, 'completions', {'prompt': 'a', 'max_tokens': 0}, 'max_tokens'),  # (0 only with echo)
            (chat_server, 'chat/completions', {'messages': hi, 'top_logprobs': 2}, 'top_logprobs'),  # (needs logprobs)
            (chat_server, 'chat/completions', {'messages': hi, 'logprobs': True, 'top_logprobs': 21}, 'top_logprobs'),
            (chat_server, 'chat/completions', {'messages': hi, 'logprobs': 1}, 'logprobs'),  # (chat: true or false)
            (chat_server, 'chat/completions', {'messages': hi, 'echo': True}, 'echo')]:  # (completions only)
        r = post(s, f'/v1/{path}', body)
        assert r.status_code == 400 and r.json()['error']['param'] == param, (body, r.text)
    r = post(server, '/v1/completions', {'prompt': 'a', 'logprobs': 20, 'max_tokens': 1})
    assert r.status_code == 200 and len(r.json()['choices'][0]['logprobs']['top_logprobs'][0]) >= 20


# ----------------------------------------------------------------------------- chat

def test_chat_logprobs_as_openai(chat_server, chat_dir, enc):
    """logprobs with top_logprobs 3 on greedy chat: one entry per generated token, each the logprob of our model's
    full forward pass (no cache) over the template's prompt, <= 0, its top 3 sorted with the token first, its bytes
    decoding to its text and, joined, to the message; streamed chunks' entries concatenate to the same; logprobs
    without top_logprobs gives empty top lists."""
    client = chat_server.client()
    name = client.models.list().data[0].id
    messages = [{'role': 'user', 'content': 'Tell me a story'}]
    out = client.chat.completions.create(model=name, messages=messages, max_tokens=6, temperature=0, logprobs=True,
                                         top_logprobs=3)
    choice = out.choices[0]
    content = choice.logprobs.content
    assert len(content) == out.usage.completion_tokens == 6 and choice.finish_reason == 'length'
    prompt = post(chat_server, '/tokenize', {'messages': messages}).json()['tokens']
    model, meta, _ = load_model('resume', str(chat_dir), 'ckpt.pt')
    model.eval()
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
        ref = torch.log_softmax(model(torch.tensor([ids]))[0][0].float(), dim=-1)
    added = {int(i): s for s, i in meta['added_tokens'].items()}
    for j, e in enumerate(content):
        t = ids[len(prompt) + j]
        want = added[t].encode() if t in added else enc.decode_single_token_bytes(t)
        assert bytes(e.bytes) == want and e.token == want.decode('utf-8', errors='replace')
        assert e.logprob <= 0 and e.logprob == pytest.approx(ref[len(prompt) + j - 1, t].item(), rel=1e-4)
        tops = [x.logprob for x in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and e.top_logprobs[0].token == e.token
        torch.testing.assert_close(torch.tensor(tops), ref[len(prompt) + j - 1].topk(3).values, rtol=1e-4, atol=1e-5)
        assert all(bytes(x.bytes).decode('utf-8', errors='replace') == x.token for x in e.top_logprobs)
    assert b''.join(bytes(e.bytes) for e in content).decode('utf-8', errors='replace') == choice.message.content
    chunks = list(client.chat.completions.create(model=name, messages=messages, max_tokens=6, temperature=0,
                                                 logprobs=True, top_logprobs=3, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in content]
    bare = client.chat.completions.create(model=name, messages=messages, max_tokens=6, temperature=0, logprobs=True)
    assert [(e.token, e.logprob) for e in bare.choices[0].logprobs.content] == [(e.token, e.logprob) for e in content]
    assert all(e.top_logprobs == [] for e in bare.choices[0].logprobs.content)
    plain = client.chat.completions.create(model=name, messages=messages, max_tokens=6, temperature=0)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == choice.message.content


# ----------------------------------------------------------------------------- lm-evaluation-harness

@pytest.mark.slow  # (an end-to-end run: the harness indexes its task YAMLs, then two tasks; 10-13 s on 2 cores)
def test_lm_eval_local_completions_equals_our_scoring(server, hf_dir, tmp_path):
    """lm_eval's local-completions model (token ids in, echo + logprobs=1 + max_tokens=1 out, as it sends them)
    against the server, on arc_easy and lambada_openai's stand-in rows: each request's log-likelihood within 1e-4
    of this repo's own scoring of the same model (gpt/scoring.py), the same greedy flags, the same metrics."""
    pytest.importorskip('lm_eval', reason='lm-evaluation-harness is not installed (pip install lm_eval)')
    pytest.importorskip('tenacity', reason="lm_eval's API models need tenacity (pip install lm_eval[api])")
    import harness_data
    import lm_eval
    from gpt.harness import local_data
    from gpt.tasks import load_tasks, run, score
    bpe = SHARED / 'data' / 'gpt2'
    if not (bpe / 'encoder.json').exists():
        pytest.skip(f'{bpe} not found (the offline GPT-2 BPE stand-in)')
    # the harness counts the context's tokens with a tokenizer of its own: transformers' GPT-2, from the BPE files
    transformers.GPT2TokenizerFast(str(bpe / 'encoder.json'), str(bpe / 'vocab.bpe')).save_pretrained(tmp_path / 'tok')
    tasks = ['arc_easy', 'lambada_openai']
    data = harness_data.write(tmp_path / 'data', tasks)
    name = server.client().models.list().data[0].id
    with local_data(data):
        out = lm_eval.simple_evaluate(
            model='local-completions', tasks=tasks, log_samples=True,
            bootstrap_iters=0,  # (the metrics are compared, not their standard errors, which fork a pool to bootstrap)
            model_args={'base_url': server.url + '/v1/completions', 'model': name, 'tokenizer': str(tmp_path / 'tok'),
                        'tokenizer_backend': 'huggingface', 'num_concurrent': 1, 'max_retries': 1,
                        'max_length': 128})  # (the model's context: the harness cuts requests to 127 + 1 tokens)
    model, meta, _ = load_model(str(hf_dir))
    model.eval()
    ours = load_tasks(tasks, meta, model.config.block_size, data={t: str(data[t]) for t in tasks})
    for task in ours:
        samples = sorted(out['samples'][task.name], key=lambda s: s['doc_id'])
        resps = [r[0] for s in samples for r in s['resps']]
        assert len(resps) == len(task.requests) and not task.truncated, task.name
        results = score(model, task.requests, groups=task.groups)
        torch.testing.assert_close(results[:, 0], torch.tensor([float(r[0]) for r in resps], dtype=torch.float64),
                                   rtol=1e-4, atol=1e-6, msg=task.name)
        assert results[:, 2].tolist() == [float(bool(r[1])) for r in resps], task.name
        got = run(model, task)
        checked = 0
        for metric, value in out['results'][task.name].items():
            if metric.endswith(',none') and 'stderr' not in metric:
                key = {'perplexity': 'ppl'}.get(metric[:-5], metric[:-5])
                assert got[key] == pytest.approx(float(value), rel=1e-4), (task.name, metric)
                checked += 1
        assert checked == 2, out['results'][task.name]  # (acc, acc_norm; acc, perplexity)
