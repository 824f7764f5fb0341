"""serve.py as its users meet it: the real server in a subprocess on a free port of 127.0.0.1, the official openai
client (streamed and not) against sample.py's greedy output, concurrent clients, bad requests over plain HTTP,
SIGTERM during a stream, and the chat page in headless Chromium."""
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import Server, run, tiny

from gpt import chat, rl
from gpt.checkpoint import save_checkpoint
from gpt.device import autocast_ctx, decode_dtype
from gpt.engine import generate
from gpt.loading import load_model
from gpt.tokendata import get_tokenizer

openai = pytest.importorskip('openai', reason="the openai client is a test requirement (requirements-test.txt)")
httpx = pytest.importorskip('httpx')


@pytest.fixture(scope='module')
def models(tmp_path_factory, char_data):
    """A briefly trained character model (context 256), and the same weights with align.py's chat tokens added
    (a chat model in the template's format; its answers are not good, only deterministic)."""
    d = tmp_path_factory.mktemp('serve')
    run('train.py', *tiny(block_size=256, batch_size=4, max_iters=30, eval_interval=30, eval_iters=2, plot=False,
                          learning_rate=1e-2, warmup_iters=5, lr_decay_iters=30),
        f'--data_dir={char_data}', f'--out_dir={d / "base"}')
    model, meta, _ = load_model('resume', str(d / 'base'), 'best.pt')
    meta = chat.chat_meta(meta)
    torch.manual_seed(0)
    chat_model = chat.grow_vocab(model, meta)
    (d / 'chat').mkdir()
    save_checkpoint(rl.policy_checkpoint(chat_model, meta, {}, 0), str(d / 'chat' / 'ckpt.pt'))
    return d


@pytest.fixture(scope='module')
def base_server(models, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp('logs'), f'--out_dir={models / "base"}')
    yield s
    s.stop()


@pytest.fixture(scope='module')
def chat_server(models, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp('logs'), f'--out_dir={models / "chat"}', '--ckpt_name=ckpt.pt')
    yield s
    s.stop()


def sample_py(out_dir, start, n, *args):
    """sample.py's greedy continuation of start (it prints prompt + completion)."""
    p = run('sample.py', f'--out_dir={out_dir}', '--device=cpu', f'--start={start}', '--num_samples=1',
            '--temperature=0', f'--max_new_tokens={n}', *args, env={'OMP_NUM_THREADS': '1'})
    assert p.stdout.startswith(start) and p.stdout.endswith('\n')
    return p.stdout[len(start):-1]


def test_completions_equal_sample_py_streamed_and_not(models, base_server):
    client = base_server.client()
    name = client.models.list().data[0].id
    assert name == 'base'
    want = sample_py(models / 'base', 'ROMEO:', 40)
    r = client.completions.create(model=name, prompt='ROMEO:', max_tokens=40, temperature=0)
    assert r.choices[0].text == want and r.choices[0].finish_reason == 'length'
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (6, 40)
    chunks = list(client.completions.create(model=name, prompt='ROMEO:', max_tokens=40, temperature=0, stream=True))
    assert ''.join(c.choices[0].text for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == 'length'
    # a stop string cuts the text before it, with finish_reason 'stop'
    stop = want[10:13]
    r = client.completions.create(model=name, prompt='ROMEO:', max_tokens=40, temperature=0, stop=[stop])
    assert r.choices[0].text == want[:want.index(stop)] and r.choices[0].finish_reason == 'stop'
    # a seed repeats a sample; n choices come back indexed
    a, b = (client.completions.create(model=name, prompt='ROMEO:', max_tokens=20, seed=7, n=3) for _ in range(2))
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert sorted(c.index for c in a.choices) == [0, 1, 2]


def test_chat_equals_sample_py_in_the_template(models, chat_server, base_server):
    client = chat_server.client()
    start = '<|user|>Now<|assistant|>'
    want = sample_py(models / 'chat', start, 30)  # (sample.py stops at <|end|>, as the server does)
    r = client.chat.completions.create(model='chat', messages=[{'role': 'user', 'content': 'Now'}], max_tokens=30,
                                       temperature=0)
    assert r.choices[0].message.content == want and r.choices[0].message.role == 'assistant'
    assert r.choices[0].finish_reason == ('length' if r.usage.completion_tokens == 30 else 'stop')
    assert r.usage.prompt_tokens == 5
    chunks = list(client.chat.completions.create(model='chat', messages=[{'role': 'user', 'content': 'Now'}],
                                                 max_tokens=30, temperature=0, stream=True))
    assert ''.join(c.choices[0].delta.content or '' for c in chunks if c.choices) == want
    # a model without the chat tokens says so
    with pytest.raises(openai.BadRequestError, match='not trained to chat'):
        base_server.client().chat.completions.create(model='base', messages=[{'role': 'user', 'content': 'Hi'}])


def test_16_concurrent_streams_each_get_their_own_greedy_text(models, base_server):
    model, meta, _ = load_model('resume', str(models / 'base'), 'best.pt')
    model.eval()
    encode, decode, _ = get_tokenizer(meta)
    prompts = [f"{w} {'abcdefghijklmnop'[i]}:" for i, w in enumerate(['ROMEO', 'JULIET', 'KING', 'First Citizen'] * 4)]
    want = []
    # the reference: each prompt decoded alone by generate.py, in the precision the server picks ('auto' by
    # decoding's rule; training's, pick_dtype, is bf16 on CPUs where bf16 measures faster, and parts at the first token)
    with torch.inference_mode(), autocast_ctx('cpu', decode_dtype('auto', 'cpu')):
        for p in prompts:
            ids = torch.tensor([encode(p)])
            want.append(decode(generate(model, ids, 48, temperature=0)[0, ids.size(1):].tolist()))
    client = base_server.client()
    barrier = threading.Barrier(len(prompts))

    def one(p):
        barrier.wait()
        stream = client.completions.create(model='base', prompt=p, max_tokens=48, temperature=0, stream=True)
        return ''.join(c.choices[0].text for c in stream)
    with ThreadPoolExecutor(len(prompts)) as pool:
        got = list(pool.map(one, prompts))
    assert got == want
    assert httpx.get(base_server.url + '/health').json()['peak_pending'] > 1  # they shared the batch


BAD = [  # (body, status, words in the message)
    (b'{"prompt": "a", ', 400, 'not valid JSON'),
    (b'[1, 2]', 400, 'JSON object'),
    ({'prompt': 'ROMEO:', 'max_tokens': 'ten'}, 400, "'max_tokens' must be an integer"),
    ({'prompt': 'ROMEO:', 'temperature': 'hot'}, 400, "'temperature' must be a number"),
    ({'prompt': 'ROMEO:', 'temperature': -1}, 400, "'temperature' must be >= 0"),
    ({'prompt': 'ROMEO:', 'top_p': 0}, 400, "'top_p' must be > 0"),
    ({'prompt': 'ROMEO:', 'stop': 5}, 400, "'stop' must be a string"),
    ({'prompt': 'ROMEO:', 'stream': 'yes'}, 400, "'stream' must be true or false"),
    ({'prompt': 5}, 400, "'prompt' must be a string"),
    ({}, 400, "'prompt' must be a string"),
    ({'prompt': 'ROMEO:', 'max_tokens': 251}, 400, 'the prompt (6 tokens) + max_tokens (251) exceed the model'),
    ({'prompt': 'ROMEO:', 'max_tokens': 10 ** 12}, 400, 'at most 256 tokens'),
    ({'prompt': 'a' * 300}, 400, 'the prompt is 300 tokens, longer than the model\'s context (256 tokens)'),
    ({'prompt': 'ROMEO:', 'n': 1000}, 400, "'n' is 1000"),
    ({'prompt': 'ROMEO:', 'model': 'gpt-4'}, 404, "the model 'gpt-4' does not exist"),
    ({'prompt': '\u00e9t\u00e9'}, 400, 'characters not in the dataset'),
    (b'x' * 2_000_000, 413, 'larger than'),
]


@pytest.mark.parametrize('body,status,words', BAD, ids=[w[:30] for _, _, w in BAD])
def test_bad_requests_get_openai_error_json(base_server, body, status, words):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(base_server.url + '/v1/completions', content=content,
                   headers={'content-type': 'application/json'}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()['error']
    assert words in err['message'] and err['type']
    assert httpx.get(base_server.url + '/health').json()['status'] == 'ok'  # still serving


def test_other_bad_requests(base_server):
    url = base_server.url
    assert httpx.get(url + '/nope').json()['error']['message'] == 'no route GET /nope'
    assert httpx.get(url + '/v1/completions').status_code == 405
    with pytest.raises(openai.NotFoundError):
        base_server.client().completions.create(model='nope', prompt='a')
    assert 'Traceback' not in base_server.log()


def test_queue_limit_api_key_and_disconnect(models, tmp_path):
    s = Server(tmp_path, f'--out_dir={models / "base"}', '--max_batch=1', '--max_waiting=1',
               env={'SERVE_API_KEY': 'sesame'})
    try:
        assert 'listening on 127.0.0.1 only' in s.log()
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key='wrong').models.list()
        client = s.client(api_key='sesame')
        # one request of 2 choices fills the batch (1) and its queue (1): another is refused with 429
        stream = client.completions.create(model='base', prompt='ROMEO:', max_tokens=250, n=2, stream=True)
        next(iter(stream))
        r = httpx.post(s.url + '/v1/completions', json={'prompt': 'A', 'max_tokens': 5},
                       headers={'authorization': 'Bearer sesame'})
        assert r.status_code == 429 and r.headers['retry-after'] and 'too many' in r.json()['error']['message']
        # leaving mid-stream frees its rows before they finish
        stream.response.close()
        deadline = time.time() + 30
        while httpx.get(s.url + '/health').json()['active'] and time.time() < deadline:
            time.sleep(0.05)
        assert httpx.get(s.url + '/health').json()['active'] == 0
        line = [x for x in s.log().splitlines() if 'cancelled (client left)' in x]
        assert line and int(line[0].split(' out,')[0].split()[-1]) < 500, s.log()
    finally:
        s.stop()


def test_int8_server_equals_sample_py_and_sigterm_during_a_stream_finishes_it(models, tmp_path):
    # int8 weights at batch 1 (the CPU's one-row steps run an inductor-compiled kernel, whose compile workers
    # must not keep the process alive at exit)
    s = Server(tmp_path, f'--out_dir={models / "base"}', '--quantize=int8', '--max_batch=1')
    try:
        n_layer = load_model('resume', str(models / 'base'), 'ckpt.pt')[0].config.n_layer
        assert f'int8 weights in {4 * n_layer + 1} layers' in s.log()  # (4 a block, and the head)
        want = sample_py(models / 'base', 'ROMEO:', 200, '--quantize=int8')
        stream = s.client().completions.create(model='base', prompt='ROMEO:', max_tokens=200, temperature=0,
                                               stream=True)
        it = iter(stream)
        text = next(it).choices[0].text
        s.p.send_signal(signal.SIGTERM)
        chunks = list(it)
        text += ''.join(c.choices[0].text for c in chunks)
        assert chunks[-1].choices[0].finish_reason == 'length' and len(text) == 200 and text == want
        assert s.p.wait(timeout=60) == 0
        assert 'shutting down (SIGTERM)' in s.log() and 'stopped' in s.log()
    finally:
        s.stop()

