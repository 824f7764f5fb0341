"""serve.py's API in detail (issue 42): shutdown (drain, 503, cut streams, a second signal), requests that can
never fit, every OpenAI option working or refused by name, stop_reason and usage, /tokenize and /detokenize, chat
messages the template joins, the Host / Content-Type / Authorization checks, and /metrics. The real server in a
subprocess on 127.0.0.1 (tests/test_serve.py's pattern), a tiny character model trained once for the module."""
import json
import signal
import socket
import threading

import pytest
import torch
from conftest import Server, run, tiny

from gpt import chat, rl
from gpt.checkpoint import save_checkpoint
from gpt.engine import Engine
from gpt.loading import load_model
from gpt.sampling import SamplingParams
from gpt.tokendata import get_tokenizer

openai = pytest.importorskip('openai', reason="the openai client is a test requirement (requirements-test.txt)")
httpx = pytest.importorskip('httpx')
parser = pytest.importorskip('prometheus_client.parser')

KEY = 'sesame'
AUTH = {'authorization': f'Bearer {KEY}'}


@pytest.fixture(scope='module')
def models(tmp_path_factory, char_data):
    """A briefly trained character model (context 256), and a chat model of its weights whose <|end|> row is
    three times the space's (the head is tied to the embedding): its greedy answers end at what would be a space."""
    d = tmp_path_factory.mktemp('serve_api')
    run('train.py', *tiny(block_size=256, batch_size=4, max_iters=30, eval_interval=30, eval_iters=2, plot=False,
                          learning_rate=1e-2, warmup_iters=5, lr_decay_iters=30),
        f'--data_dir={char_data}', f'--out_dir={d / "base"}')
    model, meta, _ = load_model('resume', str(d / 'base'), 'best.pt')
    space = get_tokenizer(meta)[0](' ')[0]
    meta = chat.chat_meta(meta)
    torch.manual_seed(0)
    chat_model = chat.grow_vocab(model, meta)
    with torch.no_grad():
        wte = chat_model.transformer.wte.weight
        wte[chat.special_ids(meta)[2]] = 3 * wte[space]
    (d / 'chat').mkdir()
    save_checkpoint(rl.policy_checkpoint(chat_model, meta, {}, 0), str(d / 'chat' / 'ckpt.pt'))
    return d


@pytest.fixture(scope='module')
def base(models, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp('logs'), f'--out_dir={models / "base"}', api_key=KEY)
    yield s
    s.stop()


@pytest.fixture(scope='module')
def chat_server(models, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp('logs'), f'--out_dir={models / "chat"}', '--ckpt_name=ckpt.pt', api_key=KEY)
    yield s
    s.stop()


def events(s, body):
    """A streamed request's server-sent events, raw: [parsed chunk, ...] and whether data: [DONE] ended them."""
    chunks, done = [], False
    with httpx.stream('POST', s.url + '/v1/completions', json={**body, 'stream': True}, headers=AUTH,
                      timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line == 'data: [DONE]':
                done = True
            elif line.startswith('data: '):
                assert not done
                chunks.append(json.loads(line[6:]))
    return chunks, done


# ----------------------------------------------------------------------------- 1. shutdown

BIG = {'prompt': ['a', 'b', 'c', 'd'], 'n': 16, 'max_tokens': 200, 'temperature': 0}  # 64 choices, one row at a time


def test_sigterm_cuts_what_is_left_at_the_timeout_with_a_final_chunk(models, tmp_path):
    s = Server(tmp_path, f'--out_dir={models / "base"}', '--max_batch=1', '--shutdown_timeout=0', api_key=KEY)
    try:
        out = {}
        big = threading.Thread(target=lambda: out.update(big=s.post('/v1/completions', BIG)))
        big.start()
        s.wait_for(lambda h: h['active'] == 64)
        stream = threading.Thread(target=lambda: out.update(stream=events(s, {'prompt': 'ROMEO:', 'max_tokens': 50})))
        stream.start()
        s.wait_for(lambda h: h['active'] == 65)  # (the stream waits behind 64 choices of 200 tokens, one at a time)
        s.p.send_signal(signal.SIGTERM)
        big.join(120)
        stream.join(120)
        assert s.p.wait(timeout=60) == 0
        chunks, done = out['stream']
        assert done and chunks[-1]['choices'][0]['finish_reason'] == 'abort'
        r = out['big']
        assert r.status_code == 200
        assert 'abort' in {c['finish_reason'] for c in r.json()['choices']}
        log = s.log()
        assert 'cutting 2 requests' in log and 'stopped' in log and 'Traceback' not in log, log
    finally:
        s.stop()


def test_draining_answers_503_and_a_second_signal_exits_at_once(models, tmp_path):
    s = Server(tmp_path, f'--out_dir={models / "base"}', '--max_batch=1', '--shutdown_timeout=600', api_key=KEY)
    try:
        big = threading.Thread(target=lambda: s.post('/v1/completions', BIG), daemon=True)
        big.start()
        s.wait_for(lambda h: h['active'] == 64)
        s.p.send_signal(signal.SIGTERM)
        s.wait_for(lambda h: h['status'] == 'draining')
        r = s.post('/v1/completions', {'prompt': 'A', 'max_tokens': 5})  # (a connection, not a refused one)
        assert r.status_code == 503 and r.json()['error']['message'] == 'the server is shutting down'
        assert r.headers['retry-after']
        s.p.send_signal(signal.SIGTERM)
        assert s.p.wait(timeout=30) == 0  # (long before the 600 s)
        log = s.log()
        assert 'stopped at once (SIGTERM again)' in log and 'Traceback' not in log and 'terminate' not in log, log
    finally:
        s.stop()


# ----------------------------------------------------------------------------- 2. requests that can never fit

def test_a_request_that_can_never_fit_is_400(base):
    r = base.post('/v1/completions', {'prompt': ['a'] * 7, 'n': 16, 'max_tokens': 2})  # 112 > 32 + 64
    assert r.status_code == 400 and 'holds at most 96 at once' in r.json()['error']['message'], r.text
    r = base.post('/v1/completions', {'prompt': 'a' * 257})
    assert r.status_code == 400 and r.json()['error']['code'] == 'context_length_exceeded'


def test_the_default_batch_is_as_many_rows_as_the_kv_cache_budget_holds(base):
    from gpt.kvcache import KVCache, rows_within
    from model import PRESETS, GPTConfig
    assert 'batch 32)' in base.log()  # (the tests' tiny model: 32 rows take a few MB)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=65)

    def size(rows, dtype):
        cache = KVCache(config, rows, 'cpu', dtype)
        return sum(t.nbytes for t in cache.k + cache.v)
    for dtype in (torch.float32, torch.bfloat16):
        rows = rows_within(config, dtype, 100_000, 32)
        assert 1 < rows < 32 and size(rows, dtype) <= 100_000 < size(rows + 1, dtype)
    assert rows_within(config, torch.float32, 100_000, 2) == 2 and rows_within(config, torch.float32, 10, 32) == 1
    # GPT-2's sizes in float32 at the default 4 GB (a row of gpt2-xl: 48 layers x 2 x 1024 x 1600 x 4 bytes = 629 MB)
    got = [rows_within(GPTConfig(**PRESETS[name]), torch.float32, 4 * 2**30, 32)
           for name in ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')]
    assert got == [32, 21, 11, 6]


# ----------------------------------------------------------------------------- 3. options

REFUSED = [  # (endpoint, body, the option the 400 names)
    ('completions', {'prompt': 'a', 'temprature': 0}, 'temprature'),
    ('completions', {'prompt': 'a', 'logprobs': 21}, 'logprobs'),  # (0..20 work: tests/test_serve_logprobs.py)
    ('completions', {'prompt': 'a', 'best_of': 2}, 'best_of'),
    ('completions', {'prompt': 'a', 'logit_bias': {'1': 5}}, 'logit_bias'),
    ('completions', {'prompt': 'a', 'presence_penalty': 2.5}, 'presence_penalty'),
    ('completions', {'prompt': 'a', 'stream_options': {'include_usage': True}}, 'stream_options'),
    ('completions', {'prompt': 'a', 'stop_token_ids': [10 ** 6]}, 'stop_token_ids'),
    ('completions', {'prompt': 'a', 'messages': []}, 'messages'),
    ('chat/completions', {'messages': [{'role': 'user', 'content': 'a'}], 'response_format': {'type': 'json_object'}},
     'response_format'),
    ('chat/completions', {'messages': [{'role': 'user', 'content': 'a'}], 'tools': [{'type': 'function'}]}, 'tools'),
    ('chat/completions', {'messages': [{'role': 'user', 'content': 'a'}], 'tool_choice': 'none'}, 'tool_choice'),
    ('chat/completions', {'messages': [{'role': 'user', 'content': 'a'}], 'top_logprobs': 2}, 'top_logprobs'),
    ('chat/completions', {'messages': [{'role': 'user', 'content': 'a'}], 'store': True}, 'store'),
    ('chat/completions', {'messages': [{'role': 'user', 'content': 'a'}], 'echo': True}, 'echo'),
]


@pytest.mark.parametrize('endpoint,body,param', REFUSED, ids=[p for _, _, p in REFUSED])
def test_options_that_cannot_work_are_a_400_naming_them(base, endpoint, body, param):
    r = base.post(f'/v1/{endpoint}', body)
    assert r.status_code == 400, r.text
    err = r.json()['error']
    assert err['param'] == param and f"'{param}'" in err['message']


def reference(model, ids, n, presence=0.0, frequency=0.0):
    """Greedy decoding by OpenAI's definition of the penalties, the whole sequence recomputed each step:
    logits[j] -= frequency * c[j] + presence * (c[j] > 0), c counting the generated tokens only."""
    out = []
    with torch.inference_mode():
        for _ in range(n):
            logits = model(torch.tensor([ids + out]))[0][0, -1].float()
            c = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.numel()).float()
            out.append(int((logits - frequency * c - presence * (c > 0).float()).argmax()))
    return out


def test_penalties_and_min_tokens_in_the_engine_match_their_definitions(models):
    model, meta, _ = load_model('resume', str(models / 'base'), 'best.pt')
    model.eval()
    encode = get_tokenizer(meta)[0]
    prompts = [encode('ROMEO:'), encode('First Citizen:'), encode('KING')]
    settings = [dict(presence_penalty=1.5, frequency_penalty=0.5), dict(frequency_penalty=2.0), {}]
    want = [reference(model, p, 30, s.get('presence_penalty', 0), s.get('frequency_penalty', 0))
            for p, s in zip(prompts, settings)]
    assert want[0] != reference(model, prompts[0], 30)  # (the penalties change what greedy picks)
    for sync_every in (1, 3):  # (one token a step, and chunks whose tokens are fed back on the device)
        engine = Engine(model, max_batch=4, sync_every=sync_every)
        rids = [engine.add(p, 30, SamplingParams(temperature=0, **s)) for p, s in zip(prompts, settings)]
        got = {r: [] for r in rids}
        while engine.pending():
            for rid, token, _ in engine.step():
                got[rid].append(token)
        assert [got[r] for r in rids] == want
    # min_tokens: the stop id is held back until that many tokens were generated
    first = reference(model, prompts[0], 1)[0]
    engine = Engine(model, max_batch=2)
    rid = engine.add(prompts[0], 20, SamplingParams(temperature=0, min_tokens=5), stop_ids={first})
    events = []
    while engine.pending():
        events += engine.step()
    tokens = [t for _, t, _ in events]
    assert first not in tokens[:5] and len(tokens) > 5
    assert events[-1][2] == 'length' or tokens[-1] == first


def test_sampling_options_of_vllm_and_stop_reason(models, base):
    model = load_model('resume', str(models / 'base'), 'best.pt')[0].eval()
    client = base.client()
    ids = base.post('/tokenize', {'prompt': 'ROMEO:'}).json()['tokens']
    want = client.completions.create(model='base', prompt='ROMEO:', max_tokens=40, temperature=0).choices[0]
    assert want.finish_reason == 'length' and want.model_extra['stop_reason'] is None
    text = want.text
    # presence and frequency penalties, as their definition decodes them
    r = client.completions.create(model='base', prompt='ROMEO:', max_tokens=30, temperature=0,
                                  presence_penalty=1.5, frequency_penalty=0.5)
    assert base.post('/tokenize', {'prompt': r.choices[0].text}).json()['tokens'] == \
        reference(model, ids, 30, 1.5, 0.5)
    # stop_token_ids: the token that ends it is its stop_reason, and counted in the usage
    c = text[10]
    stop_id = base.post('/tokenize', {'prompt': c}).json()['tokens'][0]
    r = client.completions.create(model='base', prompt='ROMEO:', max_tokens=40, temperature=0,
                                  extra_body={'stop_token_ids': [stop_id]})
    first = text.index(c)
    assert r.choices[0].text == text[:first] and r.choices[0].finish_reason == 'stop'
    assert r.choices[0].model_extra['stop_reason'] == stop_id and r.usage.completion_tokens == first + 1
    # include_stop_str_in_output keeps the stop string, which is the stop_reason
    stop = text[10:13]
    r = client.completions.create(model='base', prompt='ROMEO:', max_tokens=40, temperature=0, stop=[stop],
                                  extra_body={'include_stop_str_in_output': True})
    assert r.choices[0].text == text[:text.index(stop) + 3] and r.choices[0].model_extra['stop_reason'] == stop
    # min_tokens: a stop string that ends before the min_tokens-th token does not count
    again = text.find(c, first + 1)
    if again > 0:
        r = client.completions.create(model='base', prompt='ROMEO:', max_tokens=40, temperature=0, stop=[c],
                                      extra_body={'min_tokens': first + 2})
        assert r.choices[0].text == text[:again] and r.choices[0].model_extra['stop_reason'] == c


def test_the_end_token_is_counted_and_ignore_eos_goes_past_it(chat_server):
    client = chat_server.client()
    messages = [{'role': 'user', 'content': 'Now'}]
    r = client.chat.completions.create(model='chat', messages=messages, max_tokens=60, temperature=0)
    assert r.choices[0].finish_reason == 'stop' and r.choices[0].model_extra['stop_reason'] is None
    assert r.usage.completion_tokens == len(r.choices[0].message.content) + 1  # (characters, and <|end|>)
    r = client.chat.completions.create(model='chat', messages=messages, max_tokens=60, temperature=0,
                                       extra_body={'ignore_eos': True})
    assert r.choices[0].finish_reason == 'length' and r.usage.completion_tokens == 60
    r = client.chat.completions.create(model='chat', messages=messages, max_tokens=60, temperature=0,
                                       extra_body={'min_tokens': 50})
    assert r.usage.completion_tokens > 50


# ----------------------------------------------------------------------------- 4. responses

def test_streamed_usage_is_null_but_in_the_usage_chunk(base):
    chunks, done = events(base, {'prompt': 'ROMEO:', 'max_tokens': 20, 'temperature': 0,
                                 'stream_options': {'include_usage': True}})
    assert done and all(c['usage'] is None for c in chunks[:-1])
    assert chunks[-1]['choices'] == [] and chunks[-1]['usage']['completion_tokens'] == 20
    chunks, _ = events(base, {'prompt': 'ROMEO:', 'max_tokens': 5})
    assert all(c['usage'] is None for c in chunks)


def test_tokenize_and_detokenize(models, base, chat_server):
    r = base.post('/tokenize', {'prompt': 'ROMEO:'}).json()
    assert r['count'] == 6 and r['max_model_len'] == 256 and len(r['tokens']) == 6
    assert base.post('/detokenize', {'tokens': r['tokens']}).json() == {'prompt': 'ROMEO:'}
    assert base.post('/detokenize', {'tokens': [10 ** 6]}).status_code == 400
    assert base.post('/tokenize', {'text': 'a'}).status_code == 400
    user, assistant, _ = chat.special_ids(load_model('resume', str(models / 'chat'), 'ckpt.pt')[1])
    got = chat_server.post('/tokenize', {'messages': [{'role': 'user', 'content': 'Now'}]}).json()['tokens']
    now = base.post('/tokenize', {'prompt': 'Now'}).json()['tokens']
    assert got == [user, *now, assistant]


def test_messages_the_template_joins(chat_server):
    tok = lambda messages: chat_server.post('/tokenize', {'messages': messages}).json()['tokens']
    # two user messages in a row are one turn; so are a system message and the user's
    assert tok([{'role': 'user', 'content': 'To be'}, {'role': 'user', 'content': 'or not'}]) == \
        tok([{'role': 'user', 'content': 'To be\n\nor not'}]) == \
        tok([{'role': 'system', 'content': 'To be'}, {'role': 'user', 'content': 'or not'}])
    # a conversation ending with the assistant's message: the answer continues it
    open_ = tok([{'role': 'user', 'content': 'Now'}, {'role': 'assistant', 'content': 'What'}])
    assert open_[:-4] == tok([{'role': 'user', 'content': 'Now'}]) and len(open_) == 5 + 4
    client = chat_server.client()
    r = client.chat.completions.create(model='chat', messages=[{'role': 'user', 'content': 'Now'},
                                                               {'role': 'assistant', 'content': 'What'}],
                                       max_tokens=20, temperature=0)
    want = client.completions.create(model='chat', prompt=open_, max_tokens=20, temperature=0).choices[0]
    assert r.choices[0].message.content == want.text and r.choices[0].finish_reason == want.finish_reason


# ----------------------------------------------------------------------------- 5. a safe default

def test_content_type_host_and_the_key_scheme(base):
    url = base.url + '/v1/completions'
    body = json.dumps({'prompt': 'a', 'max_tokens': 1})
    r = httpx.post(url, content=body, headers={**AUTH, 'content-type': 'text/plain'}, timeout=30)  # (a page's form)
    assert r.status_code == 415 and 'application/json' in r.json()['error']['message']
    r = httpx.post(url, content=body, headers={**AUTH, 'content-type': 'application/json; charset=utf-8'}, timeout=30)
    assert r.status_code == 200
    r = httpx.get(base.url + '/health', headers={'host': f'attacker.example:{base.url.rsplit(":", 1)[1]}'})
    assert r.status_code == 421 and 'Host' in r.json()['error']['message']
    port = int(base.url.rsplit(':', 1)[1])
    for host in (f'localhost:{port}', f'[::1]:{port}', f'127.0.0.1:{port}'):
        assert httpx.get(base.url + '/health', headers={'host': host}).status_code == 200
    with socket.create_connection(('127.0.0.1', port), timeout=30) as sock:  # (HTTP/1.0 without a Host header)
        sock.sendall(b'GET /health HTTP/1.0\r\n\r\n')
        assert sock.recv(100).split()[1] == b'400'
    for scheme, status in (('bearer', 200), ('BEARER', 200), ('Basic', 401)):
        r = httpx.get(base.url + '/v1/models', headers={'authorization': f'{scheme} {KEY}'})
        assert r.status_code == status


def test_a_client_that_never_reads_is_dropped_after_write_timeout(models, tmp_path):
    s = Server(tmp_path, f'--out_dir={models / "base"}', '--write_timeout=1')
    try:
        port = int(s.url.rsplit(':', 1)[1])
        # 64 choices of 200 tokens with 20 alternatives each: megabytes, far more than the sockets' buffers hold
        body = json.dumps({'prompt': ['ROMEO: ' * 7] * 4, 'n': 16, 'max_tokens': 200, 'stream': True, 'echo': True,
                           'logprobs': 20, 'temperature': 1.0}).encode()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (before connecting: the window stays small)
        sock.connect(('127.0.0.1', port))
        sock.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n'
                     b'Content-Length: %d\r\n\r\n' % (port, len(body)) + body)
        s.wait_for(lambda h: h['active'] == 64)
        s.wait_for(lambda h: h['active'] == 0, timeout=120)  # (it would run on for all 200 tokens if never dropped)
        assert 'dropped (the client read nothing for 1s)' in s.log(), s.log()
        assert 'Traceback' not in s.log() and 'without completing' not in s.log(), s.log()
        sock.close()
        r = s.client().completions.create(model='base', prompt='ROMEO:', max_tokens=5)  # (the slots are free again)
        assert r.usage.completion_tokens == 5
    finally:
        s.stop()


# ----------------------------------------------------------------------------- 6. /metrics

def test_metrics_in_prometheus_format(base):
    base.client().completions.create(model='base', prompt='ROMEO:', max_tokens=10)
    r = httpx.get(base.url + '/metrics', timeout=30)
    assert r.status_code == 200 and r.headers['content-type'].startswith('text/plain')
    families = {f.name: f for f in parser.text_string_to_metric_families(r.text)}
    value = lambda name, sample: next(s.value for s in families[name].samples if s.name == sample)
    for name in ('serve_requests_running', 'serve_requests_waiting', 'serve_batch_rows_in_use',
                 'serve_kv_cache_usage_ratio'):
        assert value(name, name) >= 0
    assert value('serve_batch_rows', 'serve_batch_rows') == 32  # (the default batch for this model: banner 'batch 32')
    assert value('serve_prompt_tokens', 'serve_prompt_tokens_total') >= 6
    assert value('serve_generation_tokens', 'serve_generation_tokens_total') >= 10
    for name in ('serve_time_to_first_token_seconds', 'serve_request_latency_seconds'):
        assert value(name, name + '_count') >= 1
    assert families['serve_requests'].type == 'counter'
