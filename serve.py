"""
Serve a trained model over HTTP: the OpenAI API for what a GPT can do (completions and chat, streamed or not)
and a chat page, with concurrent requests decoded together in one batch.

$ python serve.py --out_dir=out-sft-shakespeare          # a run's best checkpoint: http://127.0.0.1:8000
$ python serve.py --init_from=gpt2 --port=8080            # OpenAI's GPT-2 (or an HF directory)
$ python serve.py --out_dir=out --host=0.0.0.0 --api_key=secret   # other machines may connect: require a key

Open http://127.0.0.1:8000 for the chat page, or point any OpenAI client at http://127.0.0.1:8000/v1:

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")   # the key only matters with --api_key
    name = client.models.list().data[0].id
    client.completions.create(model=name, prompt="ROMEO:", max_tokens=50, temperature=0)
    client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Now"}], stream=True)

    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "out-sft-shakespeare", "messages": [{"role": "user", "content": "Now"}]}'

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (prompt or messages; max_tokens,
temperature, top_p, n, stop, seed, stream, stream_options.include_usage; and top_k, min_p, repetition_penalty as
vLLM takes them), GET /health, and the page at /. Chat uses gpt/chat.py's template (<|user|>...<|assistant|>), so it
needs a model that has its tokens (an SFT, PPO or DPO run); a system message is put before the first user
message's text (the template has no system role). A prompt and its max_tokens must fit the model's context (the
server never slides the window, which would silently forget the start of the prompt).

Batching: one thread drives engine.Engine (continuous batching: a request joins the decode batch at the next
step, a finished or abandoned one leaves it), fed by the HTTP handlers through a queue; each request gets its
tokens back on its own asyncio queue. A greedy request's text is the same whether it ran alone or among 15
others. `python tools/serve_bench.py --out_dir=...` measures what batching buys.

Every bad request is answered with the OpenAI error JSON and its status (400 bad value, 401 key, 404 model or
path, 413 body too large, 429 queue full, 503 shutting down); SIGINT/SIGTERM stop accepting, let in-flight
requests finish for up to shutdown_timeout seconds, then cancel the rest.
"""

import asyncio
import contextlib
import hmac
import json
import math
import os
import queue
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import torch

import configurator
from gpt import chat, errors
from gpt.decoding import check_decoding, load_for_decoding
from gpt.engine import Engine
from gpt.errors import UserError
from gpt.sampling import SamplingParams
from gpt.stops import StopText
from gpt.tokendata import get_tokenizer

# -----------------------------------------------------------------------------
# config: overridden by a config file, then by --key=value
init_from = 'resume'        # 'resume' (a checkpoint in out_dir), a hub name (gpt2, gpt2-xl, openai-gpt, ...) or an HF dir
out_dir = 'out'             # the training run to serve when init_from='resume'
ckpt_name = 'best.pt'       # 'best.pt' (lowest val loss) or 'ckpt.pt' (latest); falls back to ckpt.pt
device = 'auto'             # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', ...
quantize = 'none'           # 'none' or 'int8' (weight-only int8: gpt/quantize.py)
dtype = 'auto'              # 'auto' (decoding's rule: float32 on CPUs, bf16 on GPUs), 'float32', 'bfloat16', 'float16'
host = '127.0.0.1'          # the interface to listen on: 127.0.0.1 = this machine only; 0.0.0.0 = every interface
port = 8000                 # 0 = any free port (the one chosen is printed)
api_key = ''                # require 'Authorization: Bearer <api_key>' on /v1/ ('' = the SERVE_API_KEY variable, if set)
model_name = ''             # the name clients pass as model ('' = the run's folder name, or init_from)
max_batch = 16              # requests (choices) decoded together in one batch
max_waiting = 64            # choices that may wait for a place in the batch; beyond that, 429 with Retry-After
max_tokens_limit = 0        # the most tokens one choice may generate (0 = the model's context)
max_n = 16                  # the most choices (n) one request may ask for
max_body = 1_000_000        # bytes in a request body (413 beyond it)
shutdown_timeout = 10.0     # seconds in-flight requests may run on after SIGINT/SIGTERM before they are cancelled
# -----------------------------------------------------------------------------
KEY_VARIABLE = 'SERVE_API_KEY'
PAGE = Path(__file__).resolve().parent / 'chat.html'


class ApiError(Exception):
    """A request the server refuses: answered as OpenAI's error JSON with this status."""

    def __init__(self, status, message, param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


ERROR_TYPES = {400: 'invalid_request_error', 401: 'invalid_request_error', 404: 'invalid_request_error',
               405: 'invalid_request_error', 413: 'invalid_request_error', 429: 'rate_limit_error',
               500: 'server_error', 503: 'server_error'}


def error_body(status, message, param=None, code=None):
    """OpenAI's error object: the openai client raises the matching APIStatusError with this message."""
    return {'error': {'message': message, 'type': ERROR_TYPES.get(status, 'invalid_request_error'),
                      'param': param, 'code': code}}


# ----------------------------------------------------------------------------- the decoding thread

class Choice:
    """One sequence the engine decodes (a request has n of them per prompt): its prompt and settings going in,
    its text coming out. The engine thread reads the first four fields and sets rid; the rest is the event
    loop's."""

    def __init__(self, request, index, ids, max_new, params, stop_ids, stops, decode):
        self.request, self.index, self.ids, self.max_new = request, index, ids, max_new
        self.params, self.stop_ids = params, stop_ids
        self.rid = None
        self.text = StopText(decode, stops)
        self.finish = None

    @property
    def tokens(self):
        return self.text.tokens

    def push(self, token, finish):
        """Take one generated token; returns the text that became final (stops.StopText holds back what may be
        the start of a stop string or half a character). A stop string found ends the choice (finish 'stop')."""
        delta = self.text.push(None if finish == 'stop' else token, final=finish is not None)  # (a stop token: no text)
        self.finish = 'stop' if self.text.stopped else finish
        return delta


class Batcher:
    """Drives the engine (which is not thread-safe) from one thread: adds and cancels come in through a queue,
    every step's tokens go back to each request's asyncio queue in one call per request."""

    def __init__(self, engine, loop):
        self.engine, self.loop = engine, loop
        self.inbox = queue.SimpleQueue()
        self.wake = threading.Event()
        self.choices = {}       # engine rid -> Choice
        self.pending = 0        # sequences in the engine after the last step (waiting + running)
        self.peak = 0           # the most it has held at once (GET /health)
        self.steps = 0
        self.stopped = False
        self.thread = threading.Thread(target=self.run, name='engine', daemon=True)
        self.thread.start()

    def add(self, choices):
        self.inbox.put(('add', choices))
        self.wake.set()

    def cancel(self, choices):
        self.inbox.put(('cancel', choices))
        self.wake.set()

    def stop(self):
        self.stopped = True
        self.wake.set()
        self.thread.join(timeout=10)

    def run(self):
        with torch.inference_mode():
            while not self.stopped:
                self.wake.clear()  # (before reading the inbox: a command put after this sets it again)
                self.take_commands()
                if not self.engine.pending():
                    self.pending = 0
                    self.wake.wait(1.0)
                    continue
                try:
                    events = self.engine.step()
                except Exception as e:  # a bug or a device failure: fail what is in flight, keep serving
                    print(f"error: decoding step failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                    for rid, c in list(self.choices.items()):
                        self.engine.cancel(rid)
                        self.send(c.request, [(c, None, f"decoding failed: {type(e).__name__}: {e}")])
                    self.choices.clear()
                    continue
                self.steps += 1
                self.pending = self.engine.pending()
                self.peak = max(self.peak, self.pending + sum(f is not None for _, _, f in events))
                out = {}
                for rid, token, finish in events:
                    c = self.choices.get(rid)
                    if c is None:
                        continue  # cancelled since this step began
                    if finish is not None:
                        del self.choices[rid]
                    out.setdefault(c.request, []).append((c, token, finish))
                for request, items in out.items():
                    self.send(request, items)

    def take_commands(self):
        while True:
            try:
                what, choices = self.inbox.get_nowait()
            except queue.Empty:
                return
            for c in choices:
                if what == 'cancel':
                    if c.rid is not None and self.choices.pop(c.rid, None) is not None:
                        self.engine.cancel(c.rid)
                    continue
                try:
                    c.rid = self.engine.add(c.ids, c.max_new, c.params, stop_ids=c.stop_ids)
                except ValueError as e:  # (validated already: a rule of the engine's the server does not know)
                    self.send(c.request, [(c, None, str(e))])
                    continue
                self.choices[c.rid] = c
            self.pending = self.engine.pending()
            self.peak = max(self.peak, self.pending)

    def send(self, request, items):
        self.loop.call_soon_threadsafe(request.queue.put_nowait, items)


# ----------------------------------------------------------------------------- requests

class Request:
    """One API request: its choices, its timings, and the queue its tokens arrive on."""

    def __init__(self, kind, prompt_tokens, n):
        prefix = 'chatcmpl' if kind == 'chat' else 'cmpl'
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.kind, self.prompt_tokens, self.n = kind, prompt_tokens, n
        self.created = int(time.time())
        self.queue = asyncio.Queue()
        self.choices = []
        self.t0, self.t_first = time.perf_counter(), None
        self.cancelled = False

    @property
    def done(self):
        return all(c.finish is not None for c in self.choices)

    async def updates(self):
        """Yields {choice: (new text, finish or None)} as tokens arrive: everything that arrived since the last
        yield at once (a slow reader gets fewer, larger chunks)."""
        while not self.done:
            batches = [await self.queue.get()]
            while not self.queue.empty():
                batches.append(self.queue.get_nowait())
            if self.t_first is None:
                self.t_first = time.perf_counter()
            out = {}
            for items in batches:
                for c, token, finish in items:
                    if c.finish is not None:
                        continue  # (tokens that were on their way when a stop string ended it)
                    if token is None:
                        raise ApiError(500, finish)  # the engine refused or failed it
                    text = c.push(token, finish)
                    prev = out.get(c, ('', None))[0]
                    out[c] = (prev + text, c.finish)
            ended = [c for c, (_, f) in out.items() if f is not None]
            if ended:
                server.batcher.cancel(ended)  # (a stop string: the engine's row is freed now; others are no-ops)
            yield out

    def usage(self):
        n = sum(len(c.tokens) for c in self.choices)
        return {'prompt_tokens': self.prompt_tokens, 'completion_tokens': n, 'total_tokens': self.prompt_tokens + n}

    def log(self, status):
        t = time.perf_counter()
        out = sum(len(c.tokens) for c in self.choices)
        ttft = f"{self.t_first - self.t0:.3f}s" if self.t_first else '-'
        finishes = ','.join(sorted({c.finish or '-' for c in self.choices}))
        print(f"{self.id} {self.kind}: {self.prompt_tokens} tokens in, {out} out, first token {ttft}, "
              f"{out / max(t - self.t0, 1e-9):.1f} tokens/s, {t - self.t0:.2f}s, finish {finishes}, {status}",
              flush=True)


# ----------------------------------------------------------------------------- validating requests

def reject_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(body):
    try:
        data = json.loads(body, parse_constant=reject_constant)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    return data


KINDS = {'int': 'an integer', 'number': 'a number', 'bool': 'true or false', 'str': 'a string',
         'dict': 'an object'}


def field(body, key, kind, default=None, low=None, high=None, low_open=False):
    """body[key] checked to be of a kind and (numbers) in [low, high] (low excluded with low_open); null or
    absent gives default."""
    v = body.get(key)
    if v is None:
        return default
    ok = {'int': isinstance(v, int) and not isinstance(v, bool),
          'number': isinstance(v, (int, float)) and not isinstance(v, bool),
          'bool': isinstance(v, bool), 'str': isinstance(v, str), 'dict': isinstance(v, dict)}[kind]
    if not ok:
        raise ApiError(400, f"'{key}' must be {KINDS[kind]}, got {json.dumps(v)[:60]}", param=key)
    if kind in ('int', 'number'):
        bad_low = low is not None and (v <= low if low_open else v < low)
        if bad_low or (high is not None and v > high) or not math.isfinite(v):
            lo = '' if low is None else f"{'>' if low_open else '>='} {low}"
            hi = '' if high is None else f"<= {high}"
            raise ApiError(400, f"'{key}' must be {' and '.join(x for x in (lo, hi) if x)}, got {v}", param=key)
    return v


def sampling(body):
    """(SamplingParams, stop strings, n, stream, include_usage) from a request's settings."""
    for key in ('presence_penalty', 'frequency_penalty'):
        if field(body, key, 'number', 0) != 0:
            raise ApiError(400, f"'{key}' is not supported by this server (use repetition_penalty)", param=key)
    if body.get('logprobs') not in (None, False, 0) or body.get('top_logprobs'):
        raise ApiError(400, "logprobs are not supported by this server", param='logprobs')
    if field(body, 'best_of', 'int', 1, low=1) != 1:
        raise ApiError(400, "'best_of' is not supported by this server (use n)", param='best_of')
    if body.get('logit_bias'):
        raise ApiError(400, "'logit_bias' is not supported by this server", param='logit_bias')
    if body.get('tools') or body.get('functions'):
        raise ApiError(400, "tools and functions are not supported by this server", param='tools')
    n = field(body, 'n', 'int', 1, low=1)
    if n > max_n:
        raise ApiError(400, f"'n' is {n}; this server allows at most {max_n} choices per request", param='n')
    stop = body.get('stop')
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 4:
        raise ApiError(400, f"'stop' must be a string or a list of up to 4 strings, got {json.dumps(stop)[:60]}",
                       param='stop')
    seed = field(body, 'seed', 'int', None)
    if seed is not None and not -2 ** 63 <= seed < 2 ** 63:
        raise ApiError(400, f"'seed' must fit in 64 bits, got {seed}", param='seed')
    top_k = field(body, 'top_k', 'int', None)
    params = SamplingParams(temperature=field(body, 'temperature', 'number', 1.0, low=0, high=2),
                            top_k=None if top_k in (None, -1, 0) else top_k,
                            top_p=field(body, 'top_p', 'number', None, low=0, high=1, low_open=True),
                            min_p=field(body, 'min_p', 'number', None, low=0, high=1),
                            repetition_penalty=field(body, 'repetition_penalty', 'number', 1.0, low=0, low_open=True),
                            seed=seed)
    try:
        params.check()
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    stream_options = field(body, 'stream_options', 'dict', {})
    include_usage = field(stream_options, 'include_usage', 'bool', False)
    return params, [s for s in stops if s], n, field(body, 'stream', 'bool', False), include_usage


def message_text(i, m):
    content = m.get('content')
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text ones
        if all(isinstance(p, dict) and p.get('type') == 'text' and isinstance(p.get('text'), str) for p in content):
            return ''.join(p['text'] for p in content)
        raise ApiError(400, f"messages[{i}].content: only text parts are supported", param='messages')
    raise ApiError(400, f"messages[{i}].content must be a string, got {json.dumps(content)[:60]}", param='messages')


def chat_turns(messages):
    """[(role, text)] in gpt/chat.py's template from OpenAI messages: system text goes before the next user
    message's; roles must then alternate user/assistant, starting and ending with the user."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", param='messages')
    turns, system = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object with role and content", param='messages')
        role, text = m.get('role'), message_text(i, m)
        if role in ('system', 'developer'):
            system.append(text)
            continue
        if role not in ('user', 'assistant'):
            raise ApiError(400, f"messages[{i}].role must be 'system', 'user' or 'assistant', got "
                                f"{json.dumps(role)[:40]}", param='messages')
        if role == 'user' and system:
            text, system = '\n\n'.join(system + [text]), []
        if (turns[-1][0] if turns else 'assistant') == role:
            raise ApiError(400, f"messages[{i}]: roles must alternate user/assistant, starting with the user",
                           param='messages')
        turns.append((role, text))
    if not turns or turns[-1][0] != 'user':
        raise ApiError(400, "the last message must be the user's (the model answers it)", param='messages')
    return turns


def prompts_of(body):
    """Token id lists of a completions request's prompt: a string, a list of strings, a list of token ids,
    or a list of such lists."""
    p = body.get('prompt')
    ints = lambda x: isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
    if isinstance(p, str):
        return [server.encode(p)]
    if isinstance(p, list) and p and ints(p):
        return [check_ids(p)]
    if isinstance(p, list) and p and all(isinstance(x, str) for x in p):
        return [server.encode(x) for x in p]
    if isinstance(p, list) and p and all(ints(x) for x in p):
        return [check_ids(x) for x in p]
    raise ApiError(400, "'prompt' must be a string, a list of strings, or token ids (a list of integers, or a "
                        "list of such lists)", param='prompt')


def check_ids(ids):
    vocab = server.vocab_size
    if any(not 0 <= t < vocab for t in ids):
        raise ApiError(400, f"token ids must be in [0, {vocab})", param='prompt')
    return ids


def fit(prompts, body, key='max_tokens'):
    """max_tokens checked against the server's limit and, with the longest prompt, the model's context."""
    B, longest = server.block_size, max(map(len, prompts))
    if min(map(len, prompts)) == 0:
        raise ApiError(400, "the prompt is empty", param='prompt')
    if longest > B:
        raise ApiError(400, f"the prompt is {longest} tokens, longer than the model's context ({B} tokens)",
                       param='prompt', code='context_length_exceeded')
    limit = server.max_tokens
    want = field(body, key, 'int', None, low=1)
    if want is None:
        if longest >= B:
            raise ApiError(400, f"the prompt is {longest} tokens and fills the model's context ({B} tokens): no "
                                f"room to generate", param='prompt', code='context_length_exceeded')
        return min(limit, B - longest)
    if want > limit:
        raise ApiError(400, f"'{key}' is {want}; this server generates at most {limit} tokens per choice",
                       param=key)
    if longest + want > B:
        raise ApiError(400, f"the prompt ({longest} tokens) + {key} ({want}) exceed the model's context ({B} "
                            f"tokens): lower {key} to {B - longest} or shorten the prompt", param=key,
                       code='context_length_exceeded')
    return want


# ----------------------------------------------------------------------------- the server

class Server:
    """What the handlers share: the model's tokenizer and limits, the batcher, and the admission count."""

    def __init__(self, model, meta, name):
        self.model, self.meta, self.name = model, meta, name
        self.encode_raw, self.decode, eot = get_tokenizer(meta)
        added = (meta or {}).get('added_tokens') or {}
        self.chat = all(t in added for t in chat.SPECIAL_TOKENS)
        end = chat.end_token(meta, eot)
        self.stop_ids = () if end is None else (end,)
        self.block_size = model.config.block_size
        self.vocab_size = model.config.vocab_size
        self.max_tokens = max_tokens_limit or self.block_size
        self.capacity = max_batch + max_waiting
        self.active = 0          # choices admitted and not yet finished
        self.batcher = None
        self.draining = False
        self.created = int(time.time())

    def encode(self, text):
        try:
            return self.encode_raw(text)
        except UserError as e:  # e.g. characters a character-level model has never seen
            raise ApiError(400, str(e), param='prompt') from None


server = None  # the Server, set by main()


def check_key(request):
    key = api_key or os.environ.get(KEY_VARIABLE, '')
    if not key:
        return
    given = request.headers.get('authorization', '')
    if not given.startswith('Bearer ') or not hmac.compare_digest(given[7:].strip().encode(), key.encode()):
        raise ApiError(401, "a valid API key is required: send the header 'Authorization: Bearer <key>' (the "
                            "key the server was started with)", code='invalid_api_key')


def check_model(body):
    name = field(body, 'model', 'str', server.name)
    if name != server.name:
        raise ApiError(404, f"the model '{name[:100]}' does not exist; this server serves '{server.name}' "
                            f"(GET /v1/models)", param='model', code='model_not_found')


async def read_body(request):
    """The body, refusing one over max_body bytes before reading it all (413)."""
    length = request.headers.get('content-length')
    too_big = ApiError(413, f"the request body is larger than this server's limit ({max_body} bytes)")
    if length is not None and (not length.isdigit() or int(length) > max_body):
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise too_big
        chunks.append(chunk)
    return b''.join(chunks)


def admit(kind, prompts, max_new, params, stops, n):
    """A Request with n choices per prompt, queued for the engine; 429 when the batch and its queue are full,
    503 while shutting down."""
    if server.draining:
        raise ApiError(503, "the server is shutting down", headers={'Retry-After': '5'})
    need = len(prompts) * n
    if server.active + need > server.capacity:
        raise ApiError(429, f"too many requests in flight ({server.active} choices running or waiting, at most "
                            f"{server.capacity}); retry shortly", headers={'Retry-After': '1'})
    req = Request(kind, sum(map(len, prompts)), n)
    for p, ids in enumerate(prompts):
        for j in range(n):
            seed = None if params.seed is None else params.seed + j  # (n choices of one seed differ)
            choice_params = SamplingParams(**{**vars(params), 'seed': seed}) if n > 1 else params
            req.choices.append(Choice(req, p * n + j, ids, max_new, choice_params, server.stop_ids, stops,
                                      server.decode))
    server.active += need
    server.batcher.add(req.choices)
    return req


def release(req):
    """The request is over (finished, failed or abandoned): free its rows and its admission."""
    if not req.done:
        server.batcher.cancel([c for c in req.choices if c.finish is None])
    server.active -= len(req.choices)


def completion_chunk(req, c, text, finish):
    if req.kind == 'chat':
        delta = {'content': text} if text else {}
        return {'index': c.index, 'delta': delta, 'logprobs': None, 'finish_reason': finish}
    return {'index': c.index, 'text': text, 'logprobs': None, 'finish_reason': finish}


def envelope(req, choices, final=False):
    obj = 'chat.completion' if req.kind == 'chat' else 'text_completion'
    if req.kind == 'chat' and not final:
        obj += '.chunk'
    return {'id': req.id, 'object': obj, 'created': req.created, 'model': server.name, 'choices': choices,
            'system_fingerprint': None}


async def until_disconnect(receive):
    while (await receive())['type'] != 'http.disconnect':
        pass


async def collect(req):
    texts = {c: '' for c in req.choices}
    async for update in req.updates():
        for c, (text, _) in update.items():
            texts[c] += text
    return texts


def respond_whole(req, texts, echo):
    choices = []
    for c in req.choices:
        text = (echo[c.index // req.n] if echo else '') + texts[c]
        if req.kind == 'chat':
            choices.append({'index': c.index, 'message': {'role': 'assistant', 'content': text, 'refusal': None},
                            'logprobs': None, 'finish_reason': c.finish})
        else:
            choices.append({'index': c.index, 'text': text, 'logprobs': None, 'finish_reason': c.finish})
    return {**envelope(req, choices, final=True), 'usage': req.usage()}


class EventStream:
    """The server-sent events of a streamed request, as an ASGI response. The client's disconnect is watched
    the whole time (not only noticed at the next write), so an abandoned request's rows are freed at once,
    even while it waits for a place in the batch."""

    def __init__(self, req, include_usage, echo):
        self.req, self.include_usage, self.echo = req, include_usage, echo

    async def __call__(self, scope, receive, send):
        req = self.req
        headers = [(b'content-type', b'text/event-stream; charset=utf-8'), (b'cache-control', b'no-cache'),
                   (b'x-accel-buffering', b'no')]
        watch = asyncio.ensure_future(until_disconnect(receive))
        status = 'cancelled (client left)'
        try:
            await send({'type': 'http.response.start', 'status': 200, 'headers': headers})
            await self.events(send, watch)
            status = 'ok'
        except ApiError as e:
            status = f"failed: {e.message}"
            await self.write(send, {'error': error_body(e.status, e.message)['error']})
        except (OSError, asyncio.CancelledError) as e:  # a write to a closed connection; or shutdown cancelled it
            status = 'cancelled (shutdown)' if isinstance(e, asyncio.CancelledError) and not watch.done() else status
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            watch.cancel()
            release(req)
            req.log(status)
        try:
            await send({'type': 'http.response.body', 'body': b'', 'more_body': False})
        except OSError:
            pass

    async def events(self, send, watch):
        req = self.req
        if req.kind == 'chat':
            first = [{'index': c.index, 'delta': {'role': 'assistant', 'content': ''}, 'logprobs': None,
                      'finish_reason': None} for c in req.choices]
            await self.write(send, envelope(req, first))
        elif self.echo:
            await self.write(send, envelope(req, [completion_chunk(req, c, self.echo[c.index // req.n], None)
                                                  for c in req.choices]))
        updates = req.updates().__aiter__()
        while True:
            nxt = asyncio.ensure_future(updates.__anext__())
            done, _ = await asyncio.wait({nxt, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch in done:
                nxt.cancel()
                raise OSError('the client disconnected')
            try:
                update = nxt.result()
            except StopAsyncIteration:
                break
            choices = [completion_chunk(req, c, text, finish) for c, (text, finish) in update.items()
                       if text or finish]
            if choices:
                await self.write(send, envelope(req, choices))
        if self.include_usage:
            await self.write(send, {**envelope(req, []), 'usage': req.usage()})
        await send({'type': 'http.response.body', 'body': b'data: [DONE]\n\n', 'more_body': True})

    @staticmethod
    async def write(send, obj):
        data = b'data: ' + json.dumps(obj, ensure_ascii=False).encode() + b'\n\n'
        await send({'type': 'http.response.body', 'body': data, 'more_body': True})


async def generation(request, kind):
    check_key(request)
    body = parse_json(await read_body(request))
    check_model(body)
    params, stops, n, stream, include_usage = sampling(body)
    echo = None
    if kind == 'chat':
        if not server.chat:
            raise ApiError(400, f"this model was not trained to chat (its tokenizer has no chat tokens "
                                f"{', '.join(chat.SPECIAL_TOKENS)}): use POST /v1/completions, or serve an SFT run "
                                f"(python train.py config/sft_shakespeare.py)", param='messages')
        turns = chat_turns(body.get('messages'))
        for i, (_, text) in enumerate(turns):
            server.encode(text)  # (a 400 naming the characters before align's template sees them)
        ids, _ = chat.encode_chat(server.encode, server.meta, turns)
        prompts = [ids + [chat.special_ids(server.meta)[1]]]  # ... <|user|>text<|assistant|>
        max_new = fit(prompts, body, 'max_completion_tokens' if body.get('max_completion_tokens') is not None
                      else 'max_tokens')
    else:
        if field(body, 'suffix', 'str', None):
            raise ApiError(400, "'suffix' is not supported by this server", param='suffix')
        prompts = prompts_of(body)
        max_new = fit(prompts, body)
        if field(body, 'echo', 'bool', False):
            echo = [server.decode(p) for p in prompts]
    req = admit(kind, prompts, max_new, params, stops, n)
    if stream:
        return EventStream(req, include_usage, echo)
    task = asyncio.ensure_future(collect(req))
    watch = asyncio.ensure_future(until_disconnect(request.receive))
    status = 'cancelled (client left)'
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            return None
        texts = task.result()
        status = 'ok'
        return respond_whole(req, texts, echo)
    except ApiError as e:
        status = f"failed: {e.message}"
        raise
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
        release(req)
        req.log(status)


def build_app():
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    def json_error(status, message, param=None, code=None, headers=None):
        return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)

    def endpoint(fn):
        """Every answer is either the endpoint's or OpenAI's error JSON: never a traceback, never a dead server."""
        async def wrapped(request):
            try:
                out = await fn(request)
            except ApiError as e:
                return json_error(e.status, e.message, e.param, e.code, e.headers)
            except Exception as e:
                print(f"error: {request.method} {request.url.path}: {type(e).__name__}: {e}", file=sys.stderr,
                      flush=True)
                return json_error(500, f"internal error: {type(e).__name__}")
            if out is None:
                return Response(status_code=499)  # the client is gone; nobody reads this
            return JSONResponse(out) if isinstance(out, dict) else out
        return wrapped

    async def models(request):
        check_key(request)
        return {'object': 'list', 'data': [{'id': server.name, 'object': 'model', 'created': server.created,
                                            'owned_by': 'serve.py', 'max_model_len': server.block_size}]}

    async def model(request):
        check_key(request)
        if request.path_params['name'] != server.name:
            raise ApiError(404, f"the model '{request.path_params['name'][:100]}' does not exist; this server "
                                f"serves '{server.name}'", code='model_not_found')
        return (await models(request))['data'][0]

    async def health(request):
        b = server.batcher
        return {'status': 'draining' if server.draining else 'ok', 'model': server.name, 'chat': server.chat,
                'context': server.block_size, 'max_tokens': server.max_tokens, 'max_n': max_n,
                'active': server.active, 'pending': b.pending if b else 0, 'peak_pending': b.peak if b else 0,
                'steps': b.steps if b else 0}

    async def page(request):
        return HTMLResponse(server.page)

    async def completions(request):
        return await generation(request, 'completion')

    async def chat(request):
        return await generation(request, 'chat')

    async def not_found(request, exc):
        status = getattr(exc, 'status_code', 404)
        message = (f"no route {request.method} {request.url.path}" if status == 404 else
                   f"{request.method} is not allowed on {request.url.path}" if status == 405 else str(exc.detail))
        return json_error(status, message)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.batcher = Batcher(server.engine, asyncio.get_running_loop())
        yield
        server.batcher.stop()

    routes = [Route('/', endpoint(page)), Route('/health', endpoint(health)),
              Route('/v1/models', endpoint(models)), Route('/v1/models/{name:path}', endpoint(model)),
              Route('/v1/completions', endpoint(completions), methods=['POST']),
              Route('/v1/chat/completions', endpoint(chat), methods=['POST'])]
    from starlette.exceptions import HTTPException
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found})


def open_socket(host, port):
    """The listening socket, bound now: a port in use is one line before the model loads, and port=0 picks a
    free one."""
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}): pass another --port (0 = any free one) "
                        f"or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main():
    global server
    import uvicorn
    Uvicorn = uvicorn_server()
    config = configurator.configure(globals(), verbose=False)
    for key in ('max_batch', 'max_n'):
        errors.check_range(key, config[key], 1)
    for key in ('max_waiting', 'max_tokens_limit', 'port'):
        errors.check_range(key, config[key], 0)
    errors.check_range('max_body', max_body, 1024)
    errors.check_range('shutdown_timeout', shutdown_timeout, 0)
    check_decoding(quantize)
    if not PAGE.is_file():
        raise UserError(f"{PAGE} is missing (the chat page): restore it from the repository")
    sock = open_socket(host, port)
    d = load_for_decoding(init_from, out_dir, ckpt_name, device, dtype, quantize, rows=max_batch)
    model, meta, dev, dt, int8_layers, n_params = d.model, d.meta, d.device, d.dtype, d.int8_layers, d.n_params
    name = model_name or (Path(out_dir).resolve().name if init_from == 'resume' else Path(init_from).name)
    server = Server(model, meta, name)
    server.engine = Engine(model, max_batch=max_batch, dtype=dt)  # (a dtype name, as device.autocast_ctx takes it)
    server.page = PAGE.read_text(encoding='utf-8')
    if max_tokens_limit > server.block_size:
        print(f"note: max_tokens_limit={max_tokens_limit} is beyond the model's context; requests are limited by the "
              f"context ({server.block_size} tokens)", flush=True)
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{'[' + bound_host + ']' if ':' in bound_host else bound_host}:{bound_port}"
    keyed = bool(api_key or os.environ.get(KEY_VARIABLE))
    print(f"serving {name} ({n_params / 1e6:.2f}M parameters, context "
          f"{server.block_size}, {'chat and completions' if server.chat else 'completions only (no chat tokens)'}; "
          f"{dev}, {dt}{f', int8 weights in {int8_layers} layers' if int8_layers else ''}; batch {max_batch}) "
          f"at {url}", flush=True)
    if host in ('127.0.0.1', 'localhost', '::1'):
        print(f"listening on {host} only: this machine can connect, others cannot (--host=0.0.0.0 opens it; "
              f"set --api_key then)", flush=True)
    elif not keyed:
        print(f"warning: listening on {host} without an API key: anyone who can reach port {bound_port} can use "
              f"the model (--api_key=... or {KEY_VARIABLE} requires a key)", flush=True)
    print(f"chat page: {url}/   API: {url}/v1 (requests are logged one line each; Ctrl-C stops)", flush=True)

    uv = Uvicorn(uvicorn.Config(build_app(), log_level='warning', access_log=False, lifespan='on',
                                timeout_graceful_shutdown=shutdown_timeout, timeout_keep_alive=5))
    uv.run(sockets=[sock])
    print("stopped", flush=True)


def uvicorn_server():
    import uvicorn

    class Uvicorn(uvicorn.Server):
        """uvicorn, ending on SIGINT/SIGTERM as a finished program does (exit status 0), where uvicorn's own
        handler raises the signal again once it has shut down. The first signal stops accepting connections,
        lets open requests finish (up to shutdown_timeout; new requests on open connections get 503), then
        cancels the rest; a second one quits at once."""

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            saved = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in saved.items():
                    signal.signal(s, h)

        def on_signal(self, sig, frame):
            if self.should_exit:
                self.force_exit = True
                return
            print(f"shutting down ({signal.Signals(sig).name}): {server.active} choices in flight get "
                  f"{shutdown_timeout:g}s to finish", flush=True)
            server.draining = True
            self.should_exit = True
    return Uvicorn


if __name__ == '__main__':
    main()  # a UserError prints one line and exits 1 (configurator.py)
