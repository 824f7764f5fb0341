"""
What serve.py's batching buys: N concurrent streaming clients over M requests against one client alone, on the
same server. Prints requests/s, generated tokens/s, time to first token and latency (p50, p99) for each.

$ python tools/serve_bench.py --out_dir=out-shakespeare-char-cpu                 # starts serve.py on a free port
$ python tools/serve_bench.py --url=http://127.0.0.1:8000 --clients=32 --requests=256   # a server already running

Every request is a streamed /v1/completions of max_tokens tokens (greedy, with ignore of stop tokens left to the
model: a request that stops early counts the tokens it made).

What prefix reuse buys (Engine(prefix_cache=True)): --turns=N times the first token of each turn of a chat, whose
prompt is the turn before's prompt and reply and a new message, against the engine with and without reuse; on the
engine itself, in this process (the server's HTTP path adds the same few milliseconds to both), on random weights of
a preset (GPT-2 small's 124M shape by default), medians of --repeats chats:

$ python tools/serve_bench.py --turns=8 --preset=gpt2 --user_tokens=48 --max_tokens=32 --repeats=3
"""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root (python tools/...)
import configurator
from gpt.device import cpu_name

# -----------------------------------------------------------------------------
url = ''                    # a running server; '' = start serve.py on a free port with the settings below
init_from = 'resume'        # as serve.py
out_dir = 'out-shakespeare-char-cpu'
device = 'cpu'
clients = 16                # concurrent clients of the batched run
requests = 64               # requests of each run (the one-client baseline makes min(requests, 16))
max_tokens = 48             # tokens per request (prompt + max_tokens must fit the model's context)
prompt = 'ROMEO:'           # every request's prompt (a character model knows its characters only)
threads = 0                 # OMP_NUM_THREADS for the server it starts (0 = serve.py's choice); --turns: torch's threads
max_batch = 0               # the server's --max_batch (0: serve.py's default, as a user's server has it)
max_waiting = 0             # the server's --max_waiting (0: serve.py's default)
# --turns: time to first token per turn of a chat, on the engine, with prefix reuse and without (no server)
turns = 0                   # turns of each chat (0: the load test above)
preset = 'gpt2'             # the model: random weights of model.PRESETS[preset]
user_tokens = 48            # each turn's new message, in tokens (the reply is max_tokens)
repeats = 3                 # chats for each setting: the figures are their medians
# -----------------------------------------------------------------------------


async def one_request(client, base, name, stats):
    t0 = time.perf_counter()
    first, tokens = None, 0
    body = {'model': name, 'prompt': prompt, 'max_tokens': max_tokens, 'temperature': 0, 'stream': True,
            'stream_options': {'include_usage': True}}
    async with client.stream('POST', base + '/v1/completions', json=body, timeout=600) as r:
        if r.status_code != 200:
            raise SystemExit(f"error: the server answered {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith('data: ') or line == 'data: [DONE]':
                continue
            chunk = json.loads(line[6:])
            if chunk.get('usage'):
                tokens = chunk['usage']['completion_tokens']
            elif first is None:
                first = time.perf_counter()
    stats.append((first - t0, time.perf_counter() - t0, tokens))


async def load(base, name, n_clients, n_requests):
    import httpx
    stats, todo = [], iter(range(n_requests))

    async def worker(client):
        for _ in todo:
            await one_request(client, base, name, stats)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=n_clients)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(n_clients)))
        wall = time.perf_counter() - t0
    return wall, stats


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def report(label, wall, stats):
    ttft, lat, toks = zip(*stats)
    row = dict(requests_per_s=len(stats) / wall, tokens_per_s=sum(toks) / wall, ttft_p50=pct(ttft, .5),
               ttft_p99=pct(ttft, .99), latency_p50=pct(lat, .5), latency_p99=pct(lat, .99))
    print(f"{label:>12}: {row['requests_per_s']:7.2f} req/s {row['tokens_per_s']:8.1f} tokens/s   first token p50 "
          f"{row['ttft_p50'] * 1e3:6.1f} ms p99 {row['ttft_p99'] * 1e3:6.1f} ms   latency p50 {row['latency_p50']:.3f} s "
          f"p99 {row['latency_p99']:.3f} s", flush=True)
    return row


def chat_turns(engine, seed):
    """Seconds to the first token of each turn of one chat (greedy; random message ids)."""
    import torch
    from gpt.sampling import SamplingParams
    model = engine.model
    g = torch.Generator().manual_seed(seed)
    history, ttft = [], []
    for _ in range(turns):
        history += torch.randint(0, model.config.vocab_size, (user_tokens,), generator=g).tolist()
        t0 = time.perf_counter()
        engine.add(history, max_tokens, SamplingParams(temperature=0))
        reply = [token for _, token, _ in engine.step()]  # (the prompt's prefill and the first token)
        ttft.append(time.perf_counter() - t0)
        while engine.pending():
            reply += [token for _, token, _ in engine.step()]
        history += reply
    return ttft


def bench_turns():
    import statistics
    import torch
    from gpt.engine import Engine
    from model import GPT
    if threads:
        torch.set_num_threads(threads)
    longest = turns * user_tokens + (turns - 1) * max_tokens
    model = GPT.from_preset(preset).eval()
    if longest + max_tokens > model.config.block_size:
        raise SystemExit(f"error: turn {turns}'s prompt and reply ({longest + max_tokens} tokens) do not fit the "
                         f"context ({model.config.block_size}): fewer turns, or shorter messages")
    print(f"serve_bench: first token of each turn of a chat, {preset} ({model.num_params() / 1e6:.0f}M, random "
          f"weights, float32), {user_tokens} tokens a message, {max_tokens} a reply (turn {turns}: a {longest}-token "
          f"prompt), medians of {repeats} chats; CPU {cpu_name()}, {torch.get_num_threads()} threads", flush=True)
    rows = {}
    for reuse in (False, True):  # (one engine for each, as a server has: its cache made by a first chat)
        engine = Engine(model, max_batch=max_batch or 16, prefix_cache=reuse)
        chat_turns(engine, -1)
        runs = [chat_turns(engine, seed) for seed in range(repeats)]
        rows[reuse] = [statistics.median(r[t] for r in runs) for t in range(turns)]
    print(f"{'turn':>6} {'prompt':>7} {'no reuse':>10} {'reuse':>10}")
    for t in range(turns):
        print(f"{t + 1:>6} {(t + 1) * user_tokens + t * max_tokens:>7} {rows[False][t] * 1e3:8.1f}ms "
              f"{rows[True][t] * 1e3:8.1f}ms")
    for reuse in (False, True):
        print(f"{'with' if reuse else 'without'} prefix reuse: turn {turns} {rows[reuse][-1] / rows[reuse][0]:.2f}x "
              f"turn 1's time to first token")


def main():
    configurator.configure(globals(), verbose=False)
    if turns:
        return bench_turns()
    import httpx
    proc, base = None, url.rstrip('/')
    if not base:
        env = {**os.environ, **({'OMP_NUM_THREADS': str(threads)} if threads else {})}
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parents[1] / 'serve.py'), f'--init_from={init_from}',
                                 f'--out_dir={out_dir}', f'--device={device}', '--port=0',
                                 *([f'--max_batch={max_batch}'] if max_batch else []),
                                 *([f'--max_waiting={max_waiting}'] if max_waiting else [])],
                                stdout=subprocess.PIPE, text=True, env=env)
        for line in proc.stdout:
            print(line, end='', file=sys.stderr)
            if line.startswith('chat page: '):
                base = line.split()[2].rstrip('/')
                break
        else:
            raise SystemExit("error: serve.py did not start (its error is above)")
    try:
        name = httpx.get(base + '/v1/models').json()['data'][0]['id']
        print(f"serve_bench: {name} at {base}, {max_tokens} tokens per request, CPU {cpu_name()}", flush=True)
        asyncio.run(load(base, name, 1, 2))  # warm-up
        one = report('1 client', *asyncio.run(load(base, name, 1, min(requests, 16))))
        many = report(f'{clients} clients', *asyncio.run(load(base, name, clients, requests)))
        print(f"batching: {many['tokens_per_s'] / one['tokens_per_s']:.2f}x the tokens/s of one client")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == '__main__':
    main()
