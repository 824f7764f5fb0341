"""
Pretraining corpora as sharded stream datasets (the format: gpt/datafiles.py): documents streamed in order from
the hub or from local files, never downloaded whole or cached tokenized first, encoded with GPT-2's BPE on num_proc
processes, one <|endoftext|> after each document, and cut into fixed-size shards of uint16 ids listed in meta.json.
data/fineweb/prepare.py and data/openwebtext/prepare.py call prepare().

Where each token goes, the same on every run whatever num_proc, max_tokens or interruptions:
- val: the first whole documents of the stream, until it holds at least val_tokens tokens (llm.c and modded-nanogpt
  hold out FineWeb's first shard the same way);
- train: every token after them, in shards of exactly shard_tokens (a document may span two), the last shorter;
  with max_tokens only the first max_tokens of them, a prefix of the full run's shards.

Resumable at any moment, SIGKILL included: a shard is written to a temp file and renamed, then SHARD_STATE records
where the next one starts (the stream's state_dict at the start of a batch of documents, and how many of that
batch's tokens are already written), then meta.json lists the shard. The same command again checks the shards
listed, reloads the stream at the state after the last of them and goes on; tokenizing is deterministic, so it
writes what an uninterrupted run writes, byte for byte.
"""

import errno
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

from gpt.datafiles import (SHARD_STATE, check_replace, dataset_files, shard_name, token_dtype, write_json, write_meta,
                           write_shard)
from gpt.errors import UserError
from gpt.tokendata import get_tokenizer

CHUNK_DOCS = 256       # documents a task: enough to amortize the pipe to a worker, few enough to resume near the spot
BYTES_PER_TOKEN = 4.4  # UTF-8 bytes of English web text per GPT-2 token, for estimates of a corpus's size
IDENTITY = ('tokenizer', 'vocab_size', 'dtype', 'source', 'prepare')  # what makes two runs the same dataset


def parse_count(text):
    """A token count as people write one: 1000000, 1_000_000, 1e9, 100M, 10B (K, M, B, T: powers of 1000)."""
    m = re.fullmatch(r'\s*([0-9_]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmbt]?)\s*', str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"not a count: {text!r} (write e.g. 100000000, 1e8 or 100M)")
    value = float(m.group(1).replace('_', '')) * 1000 ** ' kmbt'.index(m.group(2).lower() or ' ')
    if value != int(value) or value < 1:
        raise ValueError(f"not a whole positive count: {text!r}")
    return int(value)


def human_bytes(n):
    for unit in ('B', 'KB', 'MB', 'GB', 'TB'):
        if n < 1000 or unit == 'TB':
            return f"{n:.0f} {unit}" if unit == 'B' else f"{n:.1f} {unit}"
        n /= 1000


def human_count(n):
    for unit, size in (('T', 1e12), ('B', 1e9), ('M', 1e6), ('K', 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def human_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def estimate_local(files, text_column='text'):
    """Tokens in local files, roughly, for the disk and the ETA: a parquet file's text column's bytes (its
    metadata, nothing read), another file's size, at BYTES_PER_TOKEN."""
    total = 0
    for f in files:
        f = Path(f)
        if f.suffix.lower() == '.parquet':
            import pyarrow.parquet as pq
            md = pq.ParquetFile(f).metadata
            total += sum(md.row_group(g).column(c).total_uncompressed_size for g in range(md.num_row_groups)
                         for c in range(md.num_columns) if md.row_group(g).column(c).path_in_schema == text_column)
        else:
            total += f.stat().st_size
    return int(total / BYTES_PER_TOKEN)


# ---------------------------------------------------------------------- the sources

BUILDERS = {'.txt': 'text', '.json': 'json', '.jsonl': 'json', '.parquet': 'parquet'}  # datasets' builder per file


def hub_source(name, config=None, split='train', instead='pass --data_files FILE [FILE ...] to use local '
               '.txt/.json/.jsonl/.parquet files'):
    """(load, source) of a hub dataset streamed: load() opens it (a repository with a loading script through its
    parquet conversion, gpt/hubdata.py), failing in one line that ends with instead."""
    from gpt import hubdata

    def load():
        return hubdata.load_dataset(name, config, split=split, streaming=True, instead=instead,
                                    what=f"dataset {name!r}")
    return load, f"hf:{name}" + (f":{config}" if config else '') + (f":{split}" if split != 'train' else '')


def local_source(files, text_column='text', sample_by='document'):
    """(load, source, estimate) of local files streamed in the order given: all .parquet (FineWeb's own format),
    all .json/.jsonl (one document a record) or all .txt (one document a file, or see sample_by)."""
    files = [Path(f) for f in files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"--data_files: no such file: {', '.join(missing)}")
    builders = {BUILDERS.get(f.suffix.lower()) for f in files}
    if None in builders or len(builders) > 1:
        raise UserError("--data_files must all be .txt, all .json/.jsonl or all .parquet files")
    builder = builders.pop()
    paths = [str(f.resolve()) for f in files]
    kwargs = {'sample_by': sample_by} if builder == 'text' else {}

    def load():
        import datasets
        return datasets.load_dataset(builder, data_files=paths, split='train', streaming=True, **kwargs)
    return load, ', '.join(paths), estimate_local(files, text_column)


# ---------------------------------------------------------------------- tokenizing (in the workers)

def _worker_init(parent):
    # Ctrl-C reaches the whole process group: the main process reports it once, the workers stay quiet. They end
    # with it (SIGKILL included) silently: a result sent to a dead main process ends a worker by SIGPIPE, not with
    # a BrokenPipeError's traceback, and on Linux the main process's death kills them at once
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if sys.platform.startswith('linux'):
        import ctypes
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # (it died before the line above)
        os._exit(0)


def encode_chunk(texts):
    """(ids, lengths) of a list of documents: their GPT-2 ids one after another, each ended by <|endoftext|>
    (special-token text inside a document is plain text), as uint16; and each document's length in tokens."""
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')  # (cached per process)
    ids, lengths = [], []
    for text in texts:
        doc = enc.encode_ordinary(text)
        doc.append(enc.eot_token)
        ids += doc
        lengths.append(len(doc))
    return np.array(ids, dtype=np.uint16), np.array(lengths, dtype=np.int64)


def _batches(ds, column, start, source):
    """(position, texts) for each batch of CHUNK_DOCS documents from position start on; a position is where its
    batch starts in the stream: datasets' state_dict (None where datasets has none: then docs, the documents
    before it, are skipped on a resume)."""
    state, docs = start.get('state'), start.get('docs', 0)
    names = getattr(ds, 'column_names', None)  # (None where the files do not say until read: JSON lines)
    if names is not None and column not in names:
        raise UserError(f"{source} has no column {column!r} (columns: {', '.join(names)}); pass --text_column")
    if names is not None and hasattr(ds, 'select_columns'):
        ds = ds.select_columns([column])  # the other columns (FineWeb's url, dump, ...) are never made Python objects
    if state is not None and hasattr(ds, 'load_state_dict'):
        ds.load_state_dict(state)
    elif docs:
        ds = ds.skip(docs)
    it = iter(ds.iter(batch_size=CHUNK_DOCS))
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as e:  # the connection, a damaged file: datasets raises many kinds
            reason = (str(e).strip().splitlines() or [''])[0][:200]
            raise UserError(f"reading {source} failed after {docs:,} documents ({type(e).__name__}: {reason}); "
                            f"rerun the same command to continue after the last complete shard") from None
        if column not in batch:
            raise UserError(f"{source} has no column {column!r} (columns: {', '.join(batch)}); pass --text_column")
        texts = [t for t in batch[column] if t is not None]
        bad = next((t for t in texts if not isinstance(t, str)), None)
        if bad is not None:
            raise UserError(f"{source}'s column {column!r} holds {type(bad).__name__} values, not text; "
                            f"pass --text_column")
        yield {'state': state, 'docs': docs}, texts
        docs += len(batch[column])
        state = ds.state_dict() if hasattr(ds, 'state_dict') else None


def _tokenized(batches, pool, depth):
    """(position, ids, lengths) of each batch, in order, with up to depth batches being encoded at once."""
    if pool is None:
        for pos, texts in batches:
            yield (pos, *encode_chunk(texts))
        return
    pending = deque()
    for pos, texts in batches:
        pending.append((pos, pool.apply_async(encode_chunk, (texts,))))
        if len(pending) >= depth:
            pos, result = pending.popleft()
            yield (pos, *result.get())
    while pending:
        pos, result = pending.popleft()
        yield (pos, *result.get())


# ---------------------------------------------------------------------- writing the shards

class _Shards:
    """The shards written so far and the one being filled; commits each as the top of this file says."""

    def __init__(self, out_dir, meta, positions, dtype, estimate, progress_every):
        self.out, self.meta, self.positions, self.dtype = Path(out_dir), meta, positions, dtype
        p = meta['prepare']
        self.shard_tokens, self.val_target, self.max_tokens = p['shard_tokens'], p['val_tokens'], meta['max_tokens']
        self.split = positions[-1]['split']  # the split of the next shard
        self.buf, self.buffered = [], 0
        self.estimate, self.progress_every = estimate, progress_every
        self.t0 = self.last_print = time.time()
        self.added = 0  # tokens this run
        self.committed = self.count()  # the shards meta.json lists

    def total(self, split):
        return self.meta[f'{split}_tokens'] + (self.buffered if split == self.split else 0)

    def count(self):
        return sum(len(s) for s in self.meta['shards'].values())

    def add(self, ids, lengths, pos, o):
        """Take ids[o:] of a batch that starts at pos; True once max_tokens train tokens are in."""
        ends = np.cumsum(lengths)  # where each document ends in ids
        self.added += len(ids) - o
        while o < len(ids):
            phase = self.split
            if phase == 'val':  # whole documents, up to the first end at or past val_target
                i = int(np.searchsorted(ends, o + self.val_target - self.total('val')))
                stop, ends_here = (int(ends[i]), True) if i < len(ends) else (len(ids), False)
            else:
                left = self.max_tokens - self.total('train') if self.max_tokens else math.inf
                stop, ends_here = (o + left, True) if o + left <= len(ids) else (len(ids), False)
            after = 'train' if ends_here else phase  # the split of the shard after one that closes at stop
            while o < stop:
                take = min(stop - o, self.shard_tokens - self.buffered)
                self.buf.append(ids[o:o + take])
                self.buffered += take
                o += take
                if self.buffered == self.shard_tokens:
                    self.commit(dict(pos, skip=o, split=after if o == stop else phase))
            if ends_here and self.buffered:
                self.commit(dict(pos, skip=o, split='train'))  # val's last shard, or the train prefix's
            if ends_here and phase == 'train':
                self.progress()
                return True
        self.progress()
        return False

    def end_of_stream(self, source):
        if self.split == 'val':
            raise UserError(f"{source} ended after {self.total('val'):,} tokens, all of them val "
                            f"(--val_tokens={self.val_target:,}): pass a smaller --val_tokens")
        if self.buffered:
            self.commit(None)
        self.meta['corpus_end'] = True

    def commit(self, next_pos):
        split, index = self.split, len(self.meta['shards'][self.split])
        name = shard_name(split, index)
        tokens = np.concatenate(self.buf) if len(self.buf) != 1 else self.buf[0]
        try:
            sha = write_shard(self.out / name, tokens)
            # where the next shard starts goes down first: a run killed before meta.json lists this shard writes it
            # again, one killed after has the state it needs
            self.positions.append(next_pos or dict(self.positions[-1], split='end'))
            write_json(self.out / SHARD_STATE, {'positions': self.positions})
            self.meta['shards'][split].append({'file': name, 'tokens': len(tokens), 'sha256': sha})
            self.meta[f'{split}_tokens'] += len(tokens)
            self.buf, self.buffered = [], 0
            if next_pos is not None:
                self.split = next_pos['split']
            write_meta(self.out, **self.meta)
            self.committed = self.count()
        except OSError as e:
            done = f"{self.committed} complete shards are kept"
            if e.errno in (errno.ENOSPC, getattr(errno, 'EDQUOT', errno.ENOSPC)):
                free = human_bytes(shutil.disk_usage(self.out).free)
                raise UserError(f"the disk holding {self.out} is full ({free} free) writing {name}: free some space "
                                f"and rerun the same command; the {done}") from None
            raise UserError(f"cannot write {self.out / name} ({e.strerror or e}); the {done}: fix it and rerun the "
                            f"same command") from None
        self.progress(f"{name} ({len(tokens):,} tokens)")

    def progress(self, what=None):
        now = time.time()
        if what is None and now - self.last_print < self.progress_every:
            return
        self.last_print = now
        done = self.meta['val_tokens'] + self.meta['train_tokens'] + self.buffered
        rate = self.added / max(now - self.t0, 1e-9)
        eta = (f" | ETA {human_time((self.estimate - done) / rate)}" if self.estimate and rate and done < self.estimate
               else '')
        of = f" of ~{human_count(self.estimate)}" if self.estimate else ''
        print(f"{what or 'working'}: {human_count(done)} tokens{of} | {rate / 1e6:.2f}M tokens/s{eta}", flush=True)


# ---------------------------------------------------------------------- the whole run

def _read_json(path):
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # (unreadable: treated as another dataset's)


def prepare(out_dir, load, source, *, text_column='text', num_proc=1, shard_tokens=100_000_000,
            val_tokens=100_000_000, max_tokens=None, overwrite=False, estimate=None, progress_every=30.0):
    """Write (or go on writing) the sharded dataset of a corpus in out_dir; returns its meta.
    load(): the corpus as a streamed datasets.IterableDataset, in a fixed order, called only if there is work left;
    source: what it is, for meta.json and messages (a run continues only the same source); estimate: roughly how
    many tokens the whole corpus has (None: unknown), for the disk needed and the ETA; overwrite: replace another
    dataset in out_dir, or cut this one to a smaller max_tokens."""
    for name, value in (('shard_tokens', shard_tokens), ('val_tokens', val_tokens), ('num_proc', num_proc)):
        if value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    if max_tokens is not None and max_tokens < 1:
        raise UserError(f"--max_tokens must be at least 1, got {max_tokens}")
    _, _, eot = get_tokenizer({'tokenizer': 'gpt2'})  # (one line if tiktoken's files cannot be had)
    import tiktoken
    vocab_size = tiktoken.get_encoding('gpt2').n_vocab
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(tokenizer='gpt2', vocab_size=vocab_size, dtype=np.dtype(token_dtype(vocab_size)).name, source=source,
                prepare=dict(shard_tokens=shard_tokens, val_tokens=val_tokens, text_column=text_column),
                shards={'val': [], 'train': []}, val_tokens=0, train_tokens=0, max_tokens=max_tokens,
                corpus_end=False, complete=False)
    old = _read_json(out / 'meta.json')
    state = _read_json(out / SHARD_STATE) or {}
    same = old is not None and all(old.get(k) == json.loads(json.dumps(meta[k])) for k in IDENTITY) \
        and isinstance(old.get('shards'), dict)
    if old is not None and not same:
        if not overwrite:
            if 'shards' not in old and (out / 'train.bin').exists():
                raise UserError(f"{out} holds a dataset prepared as one train.bin (by an older version of this "
                                f"script): pass --overwrite to replace it with shards, or choose another --out_dir")
            check_replace(out, meta, keys=IDENTITY)  # (names what differs)
        gone = dataset_files(out, old if isinstance(old, dict) else {})
        for f in gone:
            f.unlink()
        (out / 'meta.json').unlink(missing_ok=True)
        print(f"--overwrite: removed the dataset that was in {out} ({len(gone)} files)")
        old, state = None, {}
    for f in out.glob('*.tmp'):  # a killed run's half-written file (of ours: a shard, the state or meta.json)
        if re.fullmatch(r'((train|val)_\d{6}\.bin|meta\.json|' + re.escape(SHARD_STATE) + r')\.tmp', f.name):
            f.unlink()
    positions = [{'split': 'val', 'state': None, 'docs': 0, 'skip': 0}]
    if old is not None:
        positions, keep = _resume(out, old, meta, state, max_tokens, overwrite)
        if keep is None:
            return meta
    if positions[-1]['split'] == 'end' or (max_tokens is not None and meta['train_tokens'] >= max_tokens):
        return _finish(out, meta, positions[-1]['split'] == 'end', time.time())  # (killed as it finished)
    total = estimate if max_tokens is None else min(estimate or math.inf, val_tokens + max_tokens)
    total = None if total == math.inf else total
    shards = _Shards(out, meta, positions, np.dtype(meta['dtype']), total, progress_every)
    _say_disk(out, meta, total, shards.dtype.itemsize)
    # the workers are forked before the stream is opened, so they inherit no threads of datasets (fsspec's loop)
    ctx = multiprocessing.get_context('fork' if sys.platform.startswith('linux') else None)
    pool = ctx.Pool(num_proc, initializer=_worker_init, initargs=(os.getpid(),)) if num_proc > 1 else None
    start = positions[-1]
    print(f"{'continuing after ' + str(shards.count()) + ' shards' if shards.count() else 'starting'}: "
          f"{source} -> {out} ({num_proc} process{'es' if num_proc > 1 else ''})", flush=True)
    try:
        ds = load()
        skip, finished = start['skip'], False
        for pos, ids, lengths in _tokenized(_batches(ds, text_column, start, source), pool, 2 * num_proc):
            if skip >= len(ids):
                skip -= len(ids)
                continue
            if shards.add(ids, lengths, pos, skip):
                finished = True
                break
            skip = 0
        if not finished:
            shards.end_of_stream(source)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"stopped by Ctrl-C; the {shards.committed} complete shards in {out} are kept: rerun "
                                f"the same command to continue") from None
    finally:
        if pool is not None:
            pool.terminate()
    return _finish(out, meta, meta['corpus_end'], shards.t0)


def _finish(out, meta, corpus_end, t0):
    meta.update(complete=True, corpus_end=corpus_end)
    write_meta(out, **meta)
    print(f"wrote {len(meta['shards']['train'])} train shards ({meta['train_tokens']:,} tokens) and "
          f"{len(meta['shards']['val'])} val shards ({meta['val_tokens']:,} tokens), meta.json to {out}"
          f" in {human_time(time.time() - t0)}", flush=True)
    return meta


def _resume(out, old, meta, state, max_tokens, overwrite):
    """(positions, True) to go on from the old run's last intact shard, or (None, None) when it is already done:
    meta (filled from old) then says what is there."""
    positions = state.get('positions') if isinstance(state.get('positions'), list) else []
    itemsize = np.dtype(meta['dtype']).itemsize
    kept = {'val': [], 'train': []}
    for split in ('val', 'train'):  # the listed shards that are whole (a copy may have lost one)
        for s in old['shards'].get(split, []):
            path = out / str(s.get('file'))
            if len(kept['val']) + len(kept['train']) >= len(positions) - 1 or \
                    not (path.is_file() and path.stat().st_size == s.get('tokens', -1) * itemsize):
                break
            kept[split].append(s)
        else:
            continue
        break
    if kept != old['shards'] and old.get('complete'):
        old = dict(old, complete=False)  # (a shard of a finished run went missing: write it again)
    n_train = len(kept['train'])
    full = n_train - (1 if n_train and kept['train'][-1]['tokens'] < meta['prepare']['shard_tokens'] else 0)
    tokens = sum(s['tokens'] for s in kept['train'])
    if old.get('complete') and (old.get('max_tokens') == max_tokens
                                or (old.get('corpus_end') and (max_tokens or math.inf) >= tokens)):
        meta.update(old, max_tokens=max_tokens)
        if old.get('max_tokens') != max_tokens:
            write_meta(out, **meta)  # (as a run with this max_tokens would have written it)
        print(f"{out} already holds this dataset: {len(kept['train'])} train shards ({tokens:,} tokens), "
              f"{len(kept['val'])} val shards ({old['val_tokens']:,} tokens); nothing to do")
        return None, None
    if old.get('max_tokens') != max_tokens:  # another prefix of the same stream: keep what the two share
        if max_tokens is not None and max_tokens < tokens:
            if not overwrite:
                raise UserError(f"{out} holds {tokens:,} train tokens, more than --max_tokens={max_tokens:,}: pass "
                                f"--overwrite to cut it to the first {max_tokens:,}, or choose another --out_dir")
            full = min(full, max_tokens // meta['prepare']['shard_tokens'])
        kept['train'] = kept['train'][:full]  # a shorter last shard is the old prefix's end: it is written again
    n = len(kept['val']) + len(kept['train'])
    if len(positions) <= n or positions[n].get('split') not in ('val', 'train', 'end'):
        raise UserError(f"{out / SHARD_STATE} does not say where shard {n + 1} starts (lost or from another "
                        f"version): pass --overwrite to prepare the dataset again from the start")
    dropped = [s for split in ('val', 'train') for s in old['shards'].get(split, []) if s not in kept[split]]
    for s in dropped:
        (out / str(s['file'])).unlink(missing_ok=True)
    meta['shards'] = kept
    meta['val_tokens'] = sum(s['tokens'] for s in kept['val'])
    meta['train_tokens'] = sum(s['tokens'] for s in kept['train'])
    write_meta(out, **meta)
    return positions[:n + 1], True


def _say_disk(out, meta, total, itemsize):
    """Print the disk the rest needs beside the free space; warn where it looks short (the estimate is rough, and a
    full disk only stops the run: the same command continues it)."""
    free = shutil.disk_usage(out).free
    done = meta['val_tokens'] + meta['train_tokens']
    if total is None:
        print(f"disk: {itemsize} bytes a token (the corpus's size is not known); {human_bytes(free)} free in {out}")
        return
    need = max(total - done, 0) * itemsize
    print(f"disk: ~{human_bytes(need)} more for ~{human_count(max(total - done, 0))} tokens; {human_bytes(free)} free "
          f"in {out}", flush=True)
    if need > free:
        print("warning: that is more than is free: the run will stop when the disk is full, and the same command "
              "continues it once there is room (or pass --max_tokens for a prefix)", flush=True)
