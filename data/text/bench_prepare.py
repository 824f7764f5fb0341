"""
Throughput of data/text/prepare.py's encoding (MB of UTF-8 text and tokens per second, ids written to a
file) for GPT-2's BPE and a BPE trained on the corpus, beside the plain loop most prepare scripts run:
tiktoken's encode_ordinary over the documents in one process.

$ python data/text/bench_prepare.py --input data/shakespeare_char/input.txt --repeat=8 --num_proc=1,2
$ python data/text/bench_prepare.py --input my_corpus/ --num_proc=1,4,8 --vocab_size=32768

The corpus is read once into memory (documents split at blank lines, --repeat times over) so that
reading files is not timed; each row is the best of --trials runs.
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault('TQDM_DISABLE', '1')  # progress bars would interleave with the table
sys.path.insert(0, str(Path(__file__).resolve().parent))
import prepare  # noqa: E402  (data/text/prepare.py)


class Docs:
    """In-memory documents with the interface prepare.encode_corpus reads."""

    def __init__(self, docs):
        self.docs, self.total = docs, None

    def __len__(self):
        return len(self.docs)

    def __iter__(self):
        return iter(self.docs)

    def pieces(self):
        for doc in self.docs:
            parts = prepare.split_safely(doc)
            for i, part in enumerate(parts):
                yield part, i == len(parts) - 1


def plain_tiktoken_loop(docs, path):
    """The baseline: one process, encode_ordinary per document, <|endoftext|> after each, ids to a file."""
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    n = 0
    with open(path, 'wb') as f:
        for doc in docs:
            ids = enc.encode_ordinary(doc)
            ids.append(enc.eot_token)
            f.write(np.array(ids, dtype=np.uint16).tobytes())
            n += len(ids)
    return n


def best_of(trials, fn):
    times, result = [], None
    for _ in range(trials):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--input', type=Path, nargs='+', required=True, help='text files and/or folders')
    parser.add_argument('--repeat', type=int, default=1, help='use the documents this many times over')
    parser.add_argument('--num_proc', default='1,2', help='comma-separated process counts to time')
    parser.add_argument('--vocab_size', type=int, default=8192, help='the trained BPE\'s vocabulary')
    parser.add_argument('--trials', type=int, default=3)
    args = parser.parse_args()
    procs = [int(p) for p in args.num_proc.split(',')]

    docs = [d for f in prepare.list_files(args.input) for d in prepare.read_document(f).split('\n\n') if d]
    docs = docs * args.repeat
    corpus = Docs(docs)
    mb = sum(len(d.encode('utf-8')) for d in docs) / 1e6
    try:
        cpu = next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name'))
    except (OSError, StopIteration):
        cpu = platform.processor() or 'unknown CPU'
    print(f"corpus: {mb:.1f} MB, {len(docs):,} documents; {cpu}, {os.cpu_count()} logical CPUs")

    t0 = time.perf_counter()
    bpe_json = prepare.train_bpe(corpus, args.vocab_size)
    print(f"training the BPE ({args.vocab_size:,} ids): {time.perf_counter() - t0:.1f}s")
    tokenizers = {'gpt2': ({'tokenizer': 'gpt2'}, np.uint16),
                  'bpe': ({'tokenizer': 'bpe', 'tokenizer_json': bpe_json}, prepare.token_dtype(args.vocab_size))}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'ids.bin')
        dt, n = best_of(args.trials, lambda: plain_tiktoken_loop(docs, path))
        rows.append(('plain tiktoken loop (gpt2)', 1, dt, n))
        for name, (meta, dtype) in tokenizers.items():
            for p in procs:
                dt, (n, _) = best_of(args.trials, lambda: prepare.encode_corpus(corpus, meta, dtype, p, path))
                rows.append((f'prepare.py {name}', p, dt, n))
    base = rows[0][2]
    print(f"\n{'encoder':<28} {'procs':>5} {'seconds':>8} {'MB/s':>7} {'Mtok/s':>7} {'vs plain':>8}")
    for name, p, dt, n in rows:
        print(f"{name:<28} {p:>5} {dt:>8.2f} {mb / dt:>7.2f} {n / dt / 1e6:>7.2f} {base / dt:>7.2f}x")


if __name__ == '__main__':
    main()
