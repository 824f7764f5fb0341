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
temperature, top_p, n, stop, seed, presence_penalty, frequency_penalty, stream, stream_options.include_usage;
logprobs (completions: the top 0..20 tokens; chat: true, with top_logprobs 0..20) and echo (completions: the prompt
first, with its tokens' logprobs; max_tokens 0 scores the prompt alone, as lm_eval's local-completions asks); and
vLLM's top_k, min_p, repetition_penalty, min_tokens, ignore_eos, stop_token_ids, include_stop_str_in_output), vLLM's
POST /tokenize and /detokenize, GET /health, GET /metrics (Prometheus), and the page at /. Every other option of
OpenAI's APIs (tools, response_format other than text, ...) and any unknown key is a 400 naming it
(gpt/openai_api.py). Chat uses gpt/chat.py's template (<|user|>...<|assistant|>), so it needs a model that has its
tokens (an SFT, PPO or DPO run); system messages are user text (the template has no system role), messages of one
role in a row are joined, and a conversation ending with the assistant's message is continued. A prompt and its
max_tokens must fit the model's context (the server never slides the window, which would silently forget the start
of the prompt).

Batching: one thread drives engine.Engine (continuous batching: a request joins the decode batch at the next
step, a finished or abandoned one leaves it), fed by the HTTP handlers through a queue; each request gets its
tokens back on its own asyncio queue. A greedy request's text is the same whether it ran alone or among 15
others. `python tools/serve_bench.py --out_dir=...` measures what batching buys.

Every bad request is answered with the OpenAI error JSON and its status (400 bad value or a request that can never
fit, 401 key, 404 model or path, 413 body too large, 415 a POST that is not JSON, 421 a Host that is not this
server's, 429 queue full, 503 shutting down). The first SIGINT/SIGTERM drains: new requests get 503, open ones run
on for up to shutdown_timeout seconds, then what is left is cut (finish_reason 'abort', streams end with
data: [DONE]); a second signal exits at once. A streaming client that stays connected but reads nothing for
write_timeout seconds is dropped, and its rows go to others.
"""

import asyncio
import collections
import contextlib
import hmac
import json
import logging
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
from gpt.kvcache import rows_within
from gpt.openai_api import (ApiError, chat_turns, check_ids, error_body, field, max_tokens_key, options,
                            parse_json, prompt_parts)
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
max_batch = 0               # requests (choices) decoded together in one batch (0: 32, fewer where their KV cache would pass kv_cache_gb)
kv_cache_gb = 4.0           # max_batch=0's limit on the KV cache, which holds max_batch rows of the whole context
max_waiting = 64            # choices that may wait for a place in the batch; beyond that, 429 with Retry-After
max_tokens_limit = 0        # the most tokens one choice may generate (0 = the model's context)
max_n = 16                  # the most choices (n) one request may ask for
max_body = 1_000_000        # bytes in a request body (413 beyond it)
shutdown_timeout = 10.0     # seconds open requests may run on after SIGINT/SIGTERM (new ones get 503) before they are cut
write_timeout = 30.0        # seconds a stream's chunk may wait on a client that reads nothing before the request is dropped (0 = no limit)
# -----------------------------------------------------------------------------
KEY_VARIABLE = 'SERVE_API_KEY'
PAGE = Path(__file__).resolve().parent / 'chat.html'


# ----------------------------------------------------------------------------- the decoding thread

class ChoiceText(StopText):
    """StopText with vLLM's two options on stop strings: they count only from the min_tokens-th token on (as the
    end token is held back until then), and include_stop keeps the one that ended the text. reason: that string."""

    def __init__(self, decode, stops, min_tokens=0, include_stop=False):
        super().__init__(decode, stops)
        self.min_tokens, self.include_stop = min_tokens, include_stop
        self.floor = 0          # a stop string must end after this many characters of text
        self.reason = None

    def push(self, token=None, final=False):
        if token is not None:
            self.tokens.append(token)
        text = self.decode(self.tokens)
        hits = []
        if len(self.tokens) < self.min_tokens:
            self.floor = len(text)
        else:
            hits = [(i, s) for s in self.stops if (i := text.find(s, max(0, self.floor - len(s) + 1))) >= 0]
        if hits:
            cut, self.reason = min(hits, key=lambda h: h[0])  # (the earliest; at one place, the first listed)
            text, self.stopped, final = text[:cut + (len(self.reason) if self.include_stop else 0)], True, True
        end = len(text)
        if not final:  # what may be the start of a stop string, or a character's first bytes, waits (as StopText)
            end -= max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            while end > self.sent and text[end - 1] == '\ufffd':
                end -= 1
        delta, self.sent = text[self.sent:end], max(self.sent, end)
        return delta


class Choice:
    """One sequence the engine decodes (a request has n of them per prompt): its prompt and settings going in,
    its text (and its logprob records) coming out. The engine thread reads ids, max_new, params, stop_ids,
    engine_logprobs and prompt_logprobs and sets rid; the rest is the event loop's."""

    def __init__(self, request, index, ids, max_new, params, stop_ids, opts, decode):
        # max_tokens 0 (with echo: the prompt scored, nothing generated): the engine generates one token, which is
        # dropped (as vLLM does); its prefill scores the prompt
        self.score_only = max_new == 0
        self.request, self.index, self.ids, self.max_new = request, index, ids, max(max_new, 1)
        self.params, self.stop_ids = params, stop_ids
        self.logprobs = opts.logprobs  # top tokens with each token's logprob, or None (no logprobs)
        self.engine_logprobs = None if self.score_only else opts.logprobs
        self.prompt_logprobs = opts.logprobs if opts.echo else None
        self.scores = []        # [(token, logprob, [(id, logprob), ...] or None, text offset)]: its logprobs so far
        self.offset = 0         # the text offset of the next one
        self.extra_stop_ids = set(opts.stop_token_ids)
        self.rid = None
        self.text = ChoiceText(decode, opts.stops, params.min_tokens, opts.include_stop)
        self.generated = 0      # tokens the engine generated for it (an end token too): its usage
        self.finish = None
        self.stop_reason = None  # the stop string or (asked-for) stop token id that ended it

    def push(self, token, finish, entries=()):
        """Take one generated token and the engine's logprob entries that came with it (the prompt's before the
        first token's); returns (the text that became final, their records). ChoiceText holds back what may be the
        start of a stop string or half a character; a stop string found ends the choice (finish 'stop')."""
        if self.score_only:
            self.finish = 'length'
            return '', self.record(entries)
        records = self.record(entries)
        self.generated += 1
        server.metrics.generation_tokens.inc()
        delta = self.text.push(None if finish == 'stop' else token, final=finish is not None)  # (a stop id: no text)
        if self.text.stopped:
            finish, self.stop_reason = 'stop', self.text.reason
        elif finish == 'stop' and token in self.extra_stop_ids:
            self.stop_reason = token  # (the model's own end token: null, as vLLM)
        self.finish = finish
        return delta, records

    def record(self, entries):
        """The engine's entries as records with their text offsets: each token's place in the choice's text
        (the echoed prompt's first), counted in the characters of the tokens' own texts (as vLLM)."""
        records = []
        for token, logprob, top in entries:
            records.append((token, logprob, top, self.offset))
            self.offset += len(server.token_text(token))
        self.scores += records
        return records

    def cut(self):
        """Shutdown ended it before it finished: the text held back is final now."""
        delta = self.text.push(final=True)
        self.finish = 'abort'
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
        self.running_rids, self.n_waiting, self.kv_tokens = frozenset(), 0, 0  # (after the last step: /metrics)
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
                    self.snapshot()
                    self.wake.wait(1.0)
                    continue
                try:
                    events = self.engine.step()
                except Exception as e:  # a bug or a device failure: fail what is in flight, keep serving
                    print(f"error: decoding step failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                    for rid, c in list(self.choices.items()):
                        self.engine.cancel(rid)
                        self.send(c.request, [(c, None, f"decoding failed: {type(e).__name__}: {e}", ())])
                    self.choices.clear()
                    continue
                self.steps += 1
                self.snapshot()
                self.pending = self.engine.pending()
                self.peak = max(self.peak, self.pending + sum(f is not None for _, _, f in events))
                out = {}
                scores = self.take_logprobs(events)
                for rid, token, finish in events:
                    c = self.choices.get(rid)
                    if c is None:
                        continue  # cancelled since this step began
                    if finish is not None:
                        del self.choices[rid]
                    out.setdefault(c.request, []).append((c, token, finish, scores[rid].popleft() if rid in scores
                                                          else ()))
                for request, items in out.items():
                    self.send(request, items)

    def take_logprobs(self, events):
        """{rid: deque of the logprob entries that go with each of its events, in order}: a step may bring a
        request several tokens, each with its entry; the prompt's entries go with the first. Nothing to do when no
        row asked for them."""
        if not self.engine.logprobs:
            return {}
        n = collections.Counter(rid for rid, _, _ in events)
        out = {}
        for rid, k in n.items():
            entries, c = self.engine.take_logprobs(rid), self.choices.get(rid)
            if entries and c is not None:
                head = len(entries) - (k if c.engine_logprobs is not None else 0)  # (one per generated token)
                out[rid] = collections.deque([entries[:head] + entries[head:head + 1]] +
                                             [entries[head + j:head + j + 1] for j in range(1, k)])
        return out

    def snapshot(self):
        """What /metrics reads from the event loop's thread: plain values, replaced whole, never the engine's."""
        e = self.engine
        self.running_rids = frozenset(row.rid for row in e.rows)
        self.n_waiting = len(e.waiting)
        self.kv_tokens = sum(e.cache.lengths[:len(e.rows)]) if e.cache is not None else 0

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
                    c.rid = self.engine.add(c.ids, c.max_new, c.params, stop_ids=c.stop_ids,
                                            logprobs=c.engine_logprobs, prompt_logprobs=c.prompt_logprobs)
                except ValueError as e:  # (validated already: a rule of the engine's the server does not know)
                    self.send(c.request, [(c, None, str(e), ())])
                    continue
                self.choices[c.rid] = c
            self.pending = self.engine.pending()
            self.peak = max(self.peak, self.pending)

    def send(self, request, items):
        self.loop.call_soon_threadsafe(request.queue.put_nowait, items)


# ----------------------------------------------------------------------------- requests

CUT = object()  # put on a request's queue: shutdown cuts its choices (Request.cut)


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
        """Yields {choice: (new text, finish or None, new logprob records)} as tokens arrive: everything that
        arrived since the last yield at once (a slow reader gets fewer, larger chunks)."""
        while not self.done:
            batches = [await self.queue.get()]
            while not self.queue.empty():
                batches.append(self.queue.get_nowait())
            if self.t_first is None and any(items is not CUT for items in batches):
                self.t_first = time.perf_counter()
                server.metrics.ttft.observe(self.t_first - self.t0)
            out = {}
            for items in batches:
                if items is CUT:
                    for c in self.choices:
                        if c.finish is None:
                            text, _, records = out.get(c, ('', None, []))
                            out[c] = (text + c.cut(), 'abort', records)
                    continue
                for c, token, finish, entries in items:
                    if c.finish is not None:
                        continue  # (tokens that were on their way when a stop string ended it)
                    if token is None:
                        raise ApiError(500, finish)  # the engine refused or failed it
                    text, new = c.push(token, finish, entries)
                    prev, _, records = out.get(c, ('', None, []))
                    out[c] = (prev + text, c.finish, records + new)
            ended = [c for c, (_, f, _) in out.items() if f is not None]
            if ended:
                server.batcher.cancel(ended)  # (a stop string: the engine's row is freed now; others are no-ops)
            yield out

    def cut(self):
        """End every unfinished choice now (shutdown_timeout has passed): each gets finish_reason 'abort'."""
        server.batcher.cancel([c for c in self.choices if c.finish is None])
        self.queue.put_nowait(CUT)

    def usage(self):
        n = sum(c.generated for c in self.choices)
        return {'prompt_tokens': self.prompt_tokens, 'completion_tokens': n, 'total_tokens': self.prompt_tokens + n}

    def log(self, status):
        t = time.perf_counter()
        out = sum(c.generated for c in self.choices)
        server.metrics.latency.observe(t - self.t0)
        server.metrics.requests.labels(status.split(' ')[0].split(':')[0]).inc()
        ttft = f"{self.t_first - self.t0:.3f}s" if self.t_first else '-'
        finishes = ','.join(sorted({c.finish or '-' for c in self.choices}))
        print(f"{self.id} {self.kind}: {self.prompt_tokens} tokens in, {out} out, first token {ttft}, "
              f"{out / max(t - self.t0, 1e-9):.1f} tokens/s, {t - self.t0:.2f}s, finish {finishes}, {status}",
              flush=True)


# ----------------------------------------------------------------------------- validating requests

def fit(prompts, body, key='max_tokens', echo=False):
    """max_tokens checked against the server's limit and, with the longest prompt, the model's context. 0 only
    with echo: the prompt alone, scored (as OpenAI's and vLLM's completions)."""
    B, longest = server.block_size, max(map(len, prompts))
    if min(map(len, prompts)) == 0:
        raise ApiError(400, "the prompt is empty", param='prompt')
    if longest > B:
        raise ApiError(400, f"the prompt is {longest} tokens, longer than the model's context ({B} tokens)",
                       param='prompt', code='context_length_exceeded')
    limit = server.max_tokens
    want = field(body, key, 'int', None, low=0 if echo else 1)
    if want == 0 and not echo:
        raise ApiError(400, f"'{key}' is 0: nothing to generate (0 is for echo: the prompt alone, with its "
                            f"logprobs)", param=key)
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
        self.requests = set()    # the Requests admitted and not yet over (shutdown cuts them)
        self.batcher = None
        self.metrics = make_metrics(self)
        self.draining = False
        self.created = int(time.time())
        self.added = {int(i): s for s, i in added.items()}
        self.tiktoken = None
        if (meta or {}).get('tokenizer') == 'gpt2':
            import tiktoken
            self.tiktoken = tiktoken.get_encoding('gpt2')  # (loaded already by get_tokenizer: no download)
        self.bytes_of = {}

    def token_bytes(self, t):
        """A token's bytes (chat logprobs' bytes): the added tokens' strings, GPT-2 BPE's own bytes (a token may
        be part of a character), else the UTF-8 of the token decoded alone (exact for characters; a byte-level
        BPE's part of a character decodes to U+FFFD there). b'' for an id the tokenizer does not have."""
        b = self.bytes_of.get(t)
        if b is None:
            try:
                b = (self.added[t].encode() if t in self.added else
                     self.tiktoken.decode_single_token_bytes(t) if self.tiktoken is not None else
                     self.decode([t]).encode('utf-8'))
            except (KeyError, IndexError, ValueError):  # (e.g. a vocabulary padded past the tokenizer's)
                b = b''
            self.bytes_of[t] = b
        return b

    def token_text(self, t):
        """A token's text in logprobs: its bytes decoded, U+FFFD for those that are part of a character."""
        return self.token_bytes(t).decode('utf-8', errors='replace')

    def encode(self, text):
        try:
            return self.encode_raw(text)
        except UserError as e:  # e.g. characters a character-level model has never seen
            raise ApiError(400, str(e), param='prompt') from None


server = None  # the Server, set by main()


def make_metrics(s):
    """GET /metrics in Prometheus' format, on a registry of the server's own (not the process-wide default)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from types import SimpleNamespace
    r = CollectorRegistry()
    b = lambda: s.batcher
    running = lambda: sum(any(c.rid in b().running_rids for c in q.choices) for q in list(s.requests)) if b() else 0
    Gauge('serve_requests_running', 'requests with a choice in the decode batch', registry=r).set_function(running)
    Gauge('serve_requests_waiting', 'requests admitted whose choices all wait for a place in the batch',
          registry=r).set_function(lambda: len(s.requests) - running())
    Gauge('serve_batch_rows_in_use', 'rows of the decode batch (choices) in use', registry=r).set_function(
        lambda: len(b().running_rids) if b() else 0)
    Gauge('serve_batch_rows', 'rows of the decode batch (max_batch)', registry=r).set(max_batch)
    Gauge('serve_kv_cache_usage_ratio', "the KV cache's positions in use, of max_batch x context",
          registry=r).set_function(lambda: b().kv_tokens / (max_batch * s.block_size) if b() else 0)
    seconds = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120)
    return SimpleNamespace(
        registry=r,
        prompt_tokens=Counter('serve_prompt_tokens', 'prompt tokens of admitted requests', registry=r),
        generation_tokens=Counter('serve_generation_tokens', 'tokens generated', registry=r),
        requests=Counter('serve_requests', 'requests over, by how they ended', ['status'], registry=r),
        ttft=Histogram('serve_time_to_first_token_seconds', 'from admission to the first generated token',
                       buckets=seconds, registry=r),
        latency=Histogram('serve_request_latency_seconds', 'from admission to the end of the request',
                          buckets=seconds, registry=r))


def check_key(request):
    key = api_key or os.environ.get(KEY_VARIABLE, '')
    if not key:
        return
    scheme, _, given = request.headers.get('authorization', '').strip().partition(' ')
    if scheme.lower() != 'bearer' or not hmac.compare_digest(given.strip().encode(), key.encode()):  # (RFC 9110: any case)
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


def check_draining():
    if server.draining:  # (Connection: close: a client's next try opens a connection, to a server that may be up)
        raise ApiError(503, "the server is shutting down", headers={'Retry-After': '5', 'Connection': 'close'})


def admit(kind, prompts, max_new, opts):
    """A Request with n choices per prompt, queued for the engine; 400 for one that can never fit, 429 when the
    batch and its queue are too full for it now, 503 while shutting down."""
    check_draining()
    params, n = opts.params, opts.n
    need = len(prompts) * n
    if need > server.capacity:  # (a 429 would have it retry for ever)
        raise ApiError(400, f"the request asks for {need} choices ({len(prompts)} prompt(s) x n={n}); this server "
                            f"holds at most {server.capacity} at once (max_batch {max_batch} + max_waiting "
                            f"{max_waiting}): send fewer prompts or a lower n", param='n')
    if server.active + need > server.capacity:
        raise ApiError(429, f"too many requests in flight ({server.active} choices running or waiting, at most "
                            f"{server.capacity}); retry shortly", headers={'Retry-After': '1'})
    req = Request(kind, sum(map(len, prompts)), n)
    stop_ids = tuple(set(() if opts.ignore_eos else server.stop_ids) | set(opts.stop_token_ids))
    for p, ids in enumerate(prompts):
        for j in range(n):
            seed = None if params.seed is None else params.seed + j  # (n choices of one seed differ)
            choice_params = SamplingParams(**{**vars(params), 'seed': seed}) if n > 1 else params
            req.choices.append(Choice(req, p * n + j, ids, max_new, choice_params, stop_ids, opts, server.decode))
    server.active += need
    server.requests.add(req)
    server.metrics.prompt_tokens.inc(req.prompt_tokens)
    server.batcher.add(req.choices)
    return req


def release(req):
    """The request is over (finished, failed or abandoned): free its rows and its admission."""
    if not req.done:
        server.batcher.cancel([c for c in req.choices if c.finish is None])
    server.active -= len(req.choices)
    server.requests.discard(req)


LOGPROB_FLOOR = -9999.0  # vLLM's: what a lower logprob (-inf too) is reported as (JSON has no infinity)


def completion_logprobs(records):
    """OpenAI's completions logprobs of records: each token's text, logprob (null for the prompt's first) and
    top tokens ({text: logprob}, the most likely first, with the token itself when it is not among them, as
    OpenAI's "up to logprobs + 1"), and its text offset."""
    tokens, logprobs, tops = [], [], []
    for token, logprob, top, _ in records:
        tokens.append(server.token_text(token))
        logprobs.append(None if logprob is None else max(logprob, LOGPROB_FLOOR))
        if top is None:
            tops.append(None)
            continue
        d = {}
        for i, v in top + [(token, logprob)]:
            d.setdefault(server.token_text(i), max(v, LOGPROB_FLOOR))  # (two ids of one text: the likelier)
        tops.append(d)
    return {'tokens': tokens, 'token_logprobs': logprobs, 'top_logprobs': tops,
            'text_offset': [r[3] for r in records]}


def chat_logprobs(records):
    """OpenAI's chat logprobs of records: {content: [{token, logprob, bytes, top_logprobs: [{token, logprob,
    bytes}, ...] the most likely first}]}."""
    def entry(token, logprob):
        return {'token': server.token_text(token), 'logprob': max(logprob, LOGPROB_FLOOR),
                'bytes': list(server.token_bytes(token))}
    return {'content': [{**entry(t, lp), 'top_logprobs': [entry(i, v) for i, v in top]} for t, lp, top, _ in records],
            'refusal': None}


def logprobs_of(req, c, records):
    if c.logprobs is None:
        return None
    return chat_logprobs(records) if req.kind == 'chat' else completion_logprobs(records)


def completion_chunk(req, c, text, finish, records=()):
    logprobs = logprobs_of(req, c, records)
    if req.kind == 'chat':
        delta = {'content': text} if text else {}
        return {'index': c.index, 'delta': delta, 'logprobs': logprobs, 'finish_reason': finish,
                'stop_reason': c.stop_reason if finish else None}
    return {'index': c.index, 'text': text, 'logprobs': logprobs, 'finish_reason': finish,
            'stop_reason': c.stop_reason if finish else None}


def envelope(req, choices, final=False):
    """A response's fields around its choices; a streamed chunk's usage is null (the usage chunk sets it)."""
    obj = 'chat.completion' if req.kind == 'chat' else 'text_completion'
    if req.kind == 'chat' and not final:
        obj += '.chunk'
    out = {'id': req.id, 'object': obj, 'created': req.created, 'model': server.name, 'choices': choices,
           'system_fingerprint': None}
    return out if final else {**out, 'usage': None}


async def until_disconnect(receive):
    while (await receive())['type'] != 'http.disconnect':
        pass


async def collect(req):
    texts = {c: '' for c in req.choices}
    async for update in req.updates():
        for c, (text, _, _) in update.items():
            texts[c] += text
    return texts


def respond_whole(req, texts, echo):
    choices = []
    for c in req.choices:
        text = (echo[c.index // req.n] if echo else '') + texts[c]
        if req.kind == 'chat':
            choices.append({'index': c.index, 'message': {'role': 'assistant', 'content': text, 'refusal': None},
                            'logprobs': logprobs_of(req, c, c.scores), 'finish_reason': c.finish,
                            'stop_reason': c.stop_reason})
        else:
            choices.append({'index': c.index, 'text': text, 'logprobs': logprobs_of(req, c, c.scores),
                            'finish_reason': c.finish, 'stop_reason': c.stop_reason})
    return {**envelope(req, choices, final=True), 'usage': req.usage()}


class Stalled(Exception):
    """A stream's write waited write_timeout seconds: the client reads nothing (its socket and ours are full)."""


class EventStream:
    """The server-sent events of a streamed request, as an ASGI response. The client's disconnect is watched
    the whole time (not only noticed at the next write), so an abandoned request's rows are freed at once,
    even while it waits for a place in the batch. A client that stays connected but stops reading makes a write
    wait (uvicorn's flow control, once the socket's buffers are full); after write_timeout seconds the request is
    dropped as if it had left, and the response is left unfinished, which closes the connection."""

    def __init__(self, req, include_usage, echo):
        self.req, self.include_usage, self.echo = req, include_usage, echo

    async def __call__(self, scope, receive, send):
        req = self.req
        headers = [(b'content-type', b'text/event-stream; charset=utf-8'), (b'cache-control', b'no-cache'),
                   (b'x-accel-buffering', b'no')]
        watch = asyncio.ensure_future(until_disconnect(receive))
        status = 'cancelled (client left)'
        try:
            await self.send(send, {'type': 'http.response.start', 'status': 200, 'headers': headers})
            await self.events(send, watch)
            status = 'cut (shutdown)' if any(c.finish == 'abort' for c in req.choices) else 'ok'
        except Stalled:
            status = f"dropped (the client read nothing for {write_timeout:g}s)"
        except ApiError as e:
            status = f"failed: {e.message}"
            with contextlib.suppress(Stalled):
                await self.write(send, {'error': error_body(e.status, e.message)['error']})
        except (OSError, asyncio.CancelledError) as e:  # a write to a closed connection; or shutdown cancelled it
            status = 'cancelled (shutdown)' if isinstance(e, asyncio.CancelledError) and not watch.done() else status
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            watch.cancel()
            release(req)
            req.log(status)
        if not status.startswith('dropped'):
            with contextlib.suppress(OSError, Stalled):
                await self.send(send, {'type': 'http.response.body', 'body': b'', 'more_body': False})

    async def events(self, send, watch):
        req = self.req
        if req.kind == 'chat':
            first = [{'index': c.index, 'delta': {'role': 'assistant', 'content': ''}, 'logprobs': None,
                      'finish_reason': None} for c in req.choices]
            await self.write(send, envelope(req, first))
        held = {}  # with logprobs, a choice's echoed prompt goes in its first chunk, with the prompt's logprobs
        if self.echo and req.choices[0].logprobs is not None:
            held = {c: self.echo[c.index // req.n] for c in req.choices}
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
            choices = [completion_chunk(req, c, held.pop(c, '') + text, finish, records)
                       for c, (text, finish, records) in update.items() if text or finish or records or c in held]
            if choices:
                await self.write(send, envelope(req, choices))
        if self.include_usage:
            await self.write(send, {**envelope(req, []), 'usage': req.usage()})
        await self.send(send, {'type': 'http.response.body', 'body': b'data: [DONE]\n\n', 'more_body': True})

    @classmethod
    async def write(cls, send, obj):
        data = b'data: ' + json.dumps(obj, ensure_ascii=False).encode() + b'\n\n'
        await cls.send(send, {'type': 'http.response.body', 'body': data, 'more_body': True})

    @staticmethod
    async def send(send, message):
        """send, within write_timeout (cancelling a send that waits for the client is safe: uvicorn waits before
        it writes anything of the message)."""
        if not write_timeout:
            return await send(message)
        try:
            await asyncio.wait_for(send(message), write_timeout)
        except asyncio.TimeoutError:
            raise Stalled from None


def chat_prompt(messages):
    """The prompt ids of a conversation in gpt/chat.py's template: <|user|>text<|assistant|>, or, when the
    assistant spoke last, its message left open for the answer to continue."""
    if not server.chat:
        raise ApiError(400, f"this model was not trained to chat (its tokenizer has no chat tokens "
                            f"{', '.join(chat.SPECIAL_TOKENS)}): use POST /v1/completions, or serve an SFT run "
                            f"(python train.py config/sft_shakespeare.py)", param='messages')
    turns = chat_turns(messages)
    for _, text in turns:
        server.encode(text)  # (a 400 naming the characters before the template sees them)
    last = turns.pop() if turns[-1][0] == 'assistant' else None
    ids, _ = chat.encode_chat(server.encode, server.meta, turns)
    return ids + [chat.special_ids(server.meta)[1]] + (server.encode(last[1]) if last else [])


def prompt_ids(body):
    return [check_ids(p, server.vocab_size) if isinstance(p, list) else server.encode(p) for p in prompt_parts(body)]


async def generation(request, kind):
    check_key(request)
    check_draining()
    body = parse_json(await read_body(request))
    check_model(body)
    opts = options(body, kind, max_n, server.vocab_size)
    echo = None
    if kind == 'chat':
        prompts = [chat_prompt(body.get('messages'))]
        max_new = fit(prompts, body, max_tokens_key(body))
    else:
        prompts = prompt_ids(body)
        max_new = fit(prompts, body, echo=opts.echo)
        if opts.echo:
            echo = [server.decode(p) for p in prompts]
    req = admit(kind, prompts, max_new, opts)
    if opts.stream:
        return EventStream(req, opts.include_usage, echo)
    task = asyncio.ensure_future(collect(req))
    watch = asyncio.ensure_future(until_disconnect(request.receive))
    status = 'cancelled (client left)'
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            return None
        texts = task.result()
        status = 'cut (shutdown)' if any(c.finish == 'abort' for c in req.choices) else 'ok'
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


async def tokenize(request):
    """vLLM's POST /tokenize: {"prompt": text} or {"messages": [...]} (the chat template's ids) -> the ids."""
    check_key(request)
    body = parse_json(await read_body(request))
    for key in body:
        if key not in ('model', 'prompt', 'messages', 'return_token_strs'):
            raise ApiError(400, f"unrecognized request argument '{key}' (POST /tokenize)", param=key)
    check_model(body)
    if body.get('messages') is not None:
        ids = chat_prompt(body['messages'])
    elif isinstance(body.get('prompt'), str):
        ids = server.encode(body['prompt'])
    else:
        raise ApiError(400, "POST /tokenize takes 'prompt' (a string) or 'messages'", param='prompt')
    out = {'count': len(ids), 'max_model_len': server.block_size, 'tokens': ids}
    if field(body, 'return_token_strs', 'bool', False):
        out['token_strs'] = [server.decode([t]) for t in ids]
    return out


async def detokenize(request):
    """vLLM's POST /detokenize: {"tokens": [ids]} -> {"prompt": their text}."""
    check_key(request)
    body = parse_json(await read_body(request))
    for key in body:
        if key not in ('model', 'tokens'):
            raise ApiError(400, f"unrecognized request argument '{key}' (POST /detokenize)", param=key)
    check_model(body)
    tokens = field(body, 'tokens', 'list', None)
    if tokens is None:
        raise ApiError(400, "POST /detokenize takes 'tokens' (a list of token ids)", param='tokens')
    return {'prompt': server.decode(check_ids(tokens, server.vocab_size, 'tokens'))}


def loopback_hosts(bound_host, bound_port):
    """The Host headers a server bound to this machine only answers (None: any, for a public bind): a page on
    another site that a DNS trick points at 127.0.0.1 sends its own name, and is refused."""
    import ipaddress
    try:
        loopback = bound_host == 'localhost' or ipaddress.ip_address(bound_host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return None
    names = ('127.0.0.1', 'localhost', '[::1]')
    return {f"{h}:{bound_port}" for h in names} | (set(names) if bound_port == 80 else set())


def guard(app, hosts):
    """The checks before any route: the Host header (hosts, loopback_hosts) and, on a POST, a JSON body. A web
    page may POST text/plain to any address without asking (no CORS preflight); a JSON POST it may not."""
    from starlette.responses import JSONResponse

    async def wrapped(scope, receive, send):
        if scope['type'] == 'http':
            headers = {k.decode('latin-1').lower(): v.decode('latin-1') for k, v in scope['headers']}
            host, refusal = headers.get('host', '').lower(), None
            if hosts is not None and not host:
                refusal = (400, "the request has no Host header")
            elif hosts is not None and host not in hosts:
                refusal = (421, f"the Host header names {host[:100]!r}, not this server ({', '.join(sorted(hosts))}):"
                                f" a server listening on this machine only answers requests addressed to it")
            elif scope['method'] == 'POST' and \
                    headers.get('content-type', '').split(';')[0].strip().lower() != 'application/json':
                refusal = (415, f"a POST must have 'Content-Type: application/json', got "
                                f"{headers.get('content-type', 'none')[:60]!r}")
            if refusal:
                await JSONResponse(error_body(*refusal), status_code=refusal[0])(scope, receive, send)
                return
        await app(scope, receive, send)
    return wrapped


def build_app(hosts=None):
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

    async def metrics(request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

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
              Route('/v1/chat/completions', endpoint(chat), methods=['POST']),
              Route('/tokenize', endpoint(tokenize), methods=['POST']),
              Route('/detokenize', endpoint(detokenize), methods=['POST']),
              Route('/metrics', endpoint(metrics))]
    from starlette.exceptions import HTTPException
    return guard(Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found}), hosts)


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
    global server, max_batch
    import uvicorn
    Uvicorn = uvicorn_server()
    config = configurator.configure(globals(), verbose=False)
    errors.check_range('max_n', max_n, 1)
    errors.check_range('kv_cache_gb', kv_cache_gb, 0, low_open=True)
    for key in ('max_batch', 'max_waiting', 'max_tokens_limit', 'port'):
        errors.check_range(key, config[key], 0)
    errors.check_range('max_body', max_body, 1024)
    errors.check_range('shutdown_timeout', shutdown_timeout, 0)
    errors.check_range('write_timeout', write_timeout, 0)
    check_decoding(quantize)
    if not PAGE.is_file():
        raise UserError(f"{PAGE} is missing (the chat page): restore it from the repository")
    sock = open_socket(host, port)
    # serve_bench.py, 64 streaming clients on a 2-core CPU: 32 rows against 16 give 1.2x the tokens/s, first token
    # p50 0.43 s against 0.73 s and p99 0.55 s against 0.98 s; 64 rows gain no tokens/s and double p99 (docs/serving.md).
    # The cache holds every row's whole context, so bigger models get fewer rows (gpt2-xl in float32: 6 in 4 GB).
    rows = max_batch or (lambda m: rows_within(m.config, m.transformer.wte.weight.dtype, kv_cache_gb * 2**30, 32))
    d = load_for_decoding(init_from, out_dir, ckpt_name, device, dtype, quantize, rows=rows)
    max_batch = d.rows
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

    uv = Uvicorn(uvicorn.Config(build_app(loopback_hosts(bound_host, bound_port)), log_level='warning',
                                access_log=False, lifespan='on', timeout_graceful_shutdown=CLOSE_TIMEOUT,
                                timeout_keep_alive=5))
    # a stream dropped for not reading (EventStream) is left unfinished on purpose, and its log line says so
    logging.getLogger('uvicorn.error').addFilter(
        lambda record: record.getMessage() != "ASGI callable returned without completing response.")
    uv.run(sockets=[sock])
    print("stopped", flush=True)


CLOSE_TIMEOUT = 5.0  # seconds for the last chunks to reach clients once every request has ended (or was cut)


def uvicorn_server():
    import uvicorn

    class Uvicorn(uvicorn.Server):
        """uvicorn, with the shutdown a client can rely on. The first SIGINT/SIGTERM drains: the server keeps
        listening, so a new request gets a 503 (not a refused connection, which a client cannot tell from a
        server that is not there), while the open ones run on for up to shutdown_timeout seconds; then every
        remaining choice is cut (finish_reason 'abort', and a stream's data: [DONE]) and uvicorn closes as usual.
        A second signal exits at once with status 0 (os._exit: the decoding thread may be inside torch, which
        the interpreter's own exit would abort on)."""

        cut_at = None

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
            name = signal.Signals(sig).name
            if server.draining:
                print(f"stopped at once ({name} again): {server.active} choices not finished", flush=True)
                sys.stderr.flush()
                os._exit(0)
            print(f"shutting down ({name}): new requests get 503; {server.active} choices in flight get "
                  f"{shutdown_timeout:g}s to finish ({name} again stops at once)", flush=True)
            server.draining = True
            self.deadline = time.monotonic() + shutdown_timeout

        async def on_tick(self, counter):
            should_exit = await super().on_tick(counter)
            if should_exit or not server.draining:
                return should_exit
            now = time.monotonic()
            if not server.requests:
                return True
            if self.cut_at is None and now >= self.deadline:
                print(f"shutdown_timeout ({shutdown_timeout:g}s) passed: cutting {len(server.requests)} requests "
                      f"({server.active} choices)", flush=True)
                for req in list(server.requests):
                    req.cut()
                self.cut_at = now
            return self.cut_at is not None and now >= self.cut_at + CLOSE_TIMEOUT  # (clients that never read)
    return Uvicorn


if __name__ == '__main__':
    main()  # a UserError prints one line and exits 1 (configurator.py)
