"""
What serve.py's batching buys: N concurrent streaming clients over M requests against one client alone, on the
same server. Prints requests/s, generated tokens/s, time to first token and latency (p50, p99) for each.

$ python tools/serve_bench.py --out_dir=out-shakespeare-char-cpu                 # starts serve.py on a free port
$ python tools/serve_bench.py --url=http://127.0.0.1:8000 --clients=32 --requests=256   # a server already running

Every request is a streamed /v1/completions of max_tokens tokens (greedy, with ignore of stop tokens left to the
model: a request that stops early counts the tokens it made).
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
threads = 0                 # OMP_NUM_THREADS for the server it starts (0 = serve.py's choice)
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


def main():
    configurator.configure(globals(), verbose=False)
    import httpx
    proc, base = None, url.rstrip('/')
    if not base:
        env = {**os.environ, **({'OMP_NUM_THREADS': str(threads)} if threads else {})}
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parents[1] / 'serve.py'), f'--init_from={init_from}',
                                 f'--out_dir={out_dir}', f'--device={device}', '--port=0', f'--max_batch={clients}',
                                 f'--max_waiting={max(64, requests)}'], stdout=subprocess.PIPE, text=True, env=env)
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
