"""
Token data: a dataset's metadata (meta.json), its tokenizer, and the loader that draws training and
evaluation batches from the memmapped train.bin / val.bin that data/<dataset>/prepare.py writes.

Two formats, told apart by meta.json's "format":
- "stream" (the default, no field needed): train.bin / val.bin are one long run of tokens (a corpus);
  a batch is random windows of block_size + 1 tokens, and every position carries loss. A corpus too large for
  one file is sharded instead (meta.json's "shards" lists train_000000.bin, ... and val_000000.bin, ...; written
  by gpt/corpus.py): a split is then the shards' concatenation, and its windows are exactly those one file holding
  that concatenation would give, a window crossing from one shard into the next where it falls.
- "examples": the masked-example format, for tasks where only part of a sequence is to be learned
  (minGPT's sort and adder, Image GPT's pixels after the start token, SFT's responses). train.bin /
  val.bin hold N examples of exactly meta["example_len"] tokens each, row after row, and
  train.mask.bin / val.mask.bin hold one uint8 per token: 1 where that token is a target (the model is
  trained to predict it from the tokens before it), 0 where it is only context (prompt, padding).
  Shorter examples are padded at the end with any id and mask 0: padding after the last target
  changes nothing, since attention is causal. A batch is batch_size whole examples x = row[:-1],
  y = row[1:] with y = -1 (ignored by the loss) where the mask of row[1:] is 0; the loss is the mean
  over target tokens. datafiles.write_examples() writes this format.
"""

import hashlib
import json
import os
import pickle
import re

import numpy as np
import torch

from gpt.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository (data/ lives there)
TOKEN_DTYPES = {'uint16': 1 << 16, 'uint32': 1 << 32}  # the bins' dtypes and how many ids each can hold


def dataset_dir(dataset, data_dir=''):
    """(the folder holding a dataset's files, the prepare command that writes them): data/<dataset>/
    beside this file, or data_dir when given."""
    prepare = f"data/{dataset}/prepare.py" + (f" --out_dir {data_dir}" if data_dir else '')
    return data_dir or os.path.join(ROOT, 'data', dataset), prepare


def read_text(path, what='the file', newline=None):
    """A UTF-8 text file's contents, or one line naming the file and what is wrong with it (missing,
    unreadable, or in another encoding, e.g. Latin-1 from an old editor)."""
    try:
        with open(path, encoding='utf-8', newline=newline) as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                        f"save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 {path} > fixed.txt)") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path} ({e.strerror})") from None


def json_lines(path, what='the file'):
    """(line number, value) of each non-blank line of a JSON-lines file; a file in another encoding or a line that
    is not JSON is one line naming the file and line. Read whole, and split at \n only: JSON strings may hold
    U+2028, which str.splitlines would split at."""
    for n, line in enumerate(read_text(path, what).split('\n'), 1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {n} is not JSON ({e.msg})") from None


# ---------------------------------------------------------------------- dataset metadata

def load_meta(data_dir, prepare=None):
    """meta.json written by data/<name>/prepare.py, checked for the fields we rely on.
    prepare: the script (and arguments) that makes them, for error messages (default: data_dir/prepare.py).
    A trained BPE's tokenizer.json (beside the bins) is read into meta['tokenizer_json'] after its
    hash is checked, so the meta a checkpoint saves is all that decoding the run needs."""
    path = os.path.join(data_dir, 'meta.json')
    prepare = prepare or os.path.join(data_dir, 'prepare.py')
    pkl = os.path.join(data_dir, 'meta.pkl')
    if not os.path.exists(path) and os.path.exists(pkl):  # a nanoGPT character-level dataset: same uint16 bins
        meta = read_meta_pkl(pkl)
        print(f"note: {data_dir} is a nanoGPT dataset; read its meta.pkl as data ({meta['vocab_size']} characters)")
        return meta
    for name in ('meta.json',) if _lists_shards(path) else ('train.bin', 'val.bin', 'meta.json'):
        if not os.path.exists(os.path.join(data_dir, name)):
            raise UserError(f"{os.path.join(data_dir, name)} not found: run `python {prepare}` first")
    try:
        with open(path, encoding='utf-8') as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:  # (ValueError: bad JSON, or bytes that are not UTF-8)
        raise UserError(f"cannot read {path} ({e}); re-run `python {prepare}`") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} is not a JSON object; re-run `python {prepare}`")
    missing = [k for k in ('tokenizer', 'vocab_size', 'dtype') if k not in meta]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; re-run `python {prepare}`")
    vocab = meta['vocab_size']
    if type(vocab) is not int or vocab < 1 or meta['dtype'] not in TOKEN_DTYPES or vocab > TOKEN_DTYPES[meta['dtype']]:
        raise UserError(f"{path} has vocab_size {vocab!r} with dtype {meta['dtype']!r} (expected a positive vocab_size "
                        f"that fits one of {', '.join(TOKEN_DTYPES)}); re-run `python {prepare}`")
    if meta['tokenizer'] == 'bpe' and 'tokenizer_json' not in meta:
        tok_path = os.path.join(data_dir, meta.get('tokenizer_file', 'tokenizer.json'))
        try:
            with open(tok_path, 'rb') as f:
                raw = f.read()
        except OSError as e:
            raise UserError(f"cannot read the dataset's tokenizer {tok_path} ({e.strerror}); "
                            f"re-run `python {prepare}`") from None
        if hashlib.sha256(raw).hexdigest() != meta.get('tokenizer_sha256'):
            raise UserError(f"{tok_path} is not the tokenizer the bins in {data_dir} were made with "
                            f"(sha256 differs from meta.json's); re-run `python {prepare}`")
        meta['tokenizer_json'] = raw.decode('utf-8')
    if 'shards' in meta:
        check_shards(meta, data_dir, prepare)
    return meta


def split_files(data_dir, meta, split):
    """The files holding a stream split's tokens, in order: <split>.bin, or its shards."""
    if 'shards' in meta:
        return [os.path.join(data_dir, s['file']) for s in meta['shards'].get(split, [])]
    return [os.path.join(data_dir, f'{split}.bin')]


def _lists_shards(path):
    try:
        with open(path, encoding='utf-8') as f:
            return 'shards' in json.load(f)
    except (OSError, ValueError, TypeError):
        return False  # (load_meta says what is wrong with it)


def check_shards(meta, data_dir, prepare):
    """A sharded dataset's manifest (gpt/datafiles.py): each split a list of {file, tokens} whose files exist, and
    at least one shard of each. One still being written (meta['complete'] False) is read as far as it goes."""
    shards = meta['shards']
    where = os.path.join(data_dir, 'meta.json')
    ok = isinstance(shards, dict) and all(isinstance(shards.get(split), list) and all(
        isinstance(s, dict) and isinstance(s.get('file'), str) and os.path.basename(s['file']) == s['file']
        and type(s.get('tokens')) is int and s['tokens'] > 0 for s in shards[split]) for split in ('train', 'val'))
    if not ok:
        raise UserError(f"{where} lists its shards wrongly (expected \"shards\": {{\"train\": [{{\"file\": ..., "
                        f"\"tokens\": ...}}, ...], \"val\": [...]}}); re-run `python {prepare}`")
    for split in ('val', 'train'):
        if not shards[split]:
            raise UserError(f"{data_dir} has no {split} shard yet (its prepare run is still going, or stopped before "
                            f"one): run `python {prepare}` (the same command continues a stopped run)")
        for s in shards[split]:
            if not os.path.exists(os.path.join(data_dir, s['file'])):
                raise UserError(f"{os.path.join(data_dir, s['file'])} not found (meta.json lists it): run "
                                f"`python {prepare}` to write it again")
    if not meta.get('complete', True):
        print(f"note: {data_dir} is still being prepared ({len(shards['train'])} train shards so far): this reads the "
              f"{sum(s['tokens'] for s in shards['train']):,} train tokens written, and a later run sees more")


def tokenizer_identity(meta):
    """What fixes the meaning of token ids: the tokenizer and its vocabulary (not the chat tokens a dataset
    adds on top, chat.py, nor the vocabulary's size, which those change)."""
    m = meta or {}
    kind = m.get('tokenizer')
    if kind == 'char':
        return kind, m.get('chars')
    if kind == 'bpe':
        raw = m.get('tokenizer_json')
        return kind, hashlib.sha256(raw.encode('utf-8')).hexdigest() if raw else m.get('tokenizer_sha256')
    return kind, m.get('name') if kind == 'hf' else None


def describe_tokenizer(meta):
    m = meta or {}
    kind = m.get('tokenizer')
    if kind == 'char':
        return f"character-level ({len(m.get('chars') or '')} characters)"
    if kind == 'bpe':
        return f"trained BPE ({m.get('vocab_size')} ids)"
    return {'gpt2': "GPT-2 BPE"}.get(kind, repr(kind))


def check_same_tokenizer(model_meta, data_meta, model_where, data_dir):
    """A model continues training (or is scored) only on token ids of the tokenizer it learned: the same
    number under another tokenizer is another piece of text, and nothing else would notice."""
    a, b = tokenizer_identity(model_meta), tokenizer_identity(data_meta)
    if a[0] is None or b[0] is None or a == b:
        return
    same_kind = a[0] == b[0]
    raise UserError(f"{model_where} was trained on {'another ' if same_kind else ''}{describe_tokenizer(model_meta)}"
                    f" tokens, but the dataset in {data_dir} is {describe_tokenizer(data_meta)}"
                    f"{' with other token ids' if same_kind else ''}: pick the dataset it was trained on (or "
                    f"one prepared with its tokenizer), or train from scratch")


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data only: dicts, lists, strings and numbers are pickle opcodes of their own,
    while anything else (a class, a function such as os.system) needs find_class, which refuses."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, and only plain data is read")


def read_meta_pkl(path):
    """A nanoGPT dataset's meta.pkl ({'vocab_size', 'itos', 'stoi'} of a character-level dataset), read
    without running any code, as our meta: tokenizer 'char' with the characters in id order."""
    try:
        with open(path, 'rb') as f:
            raw = _DataOnlyUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, IndexError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {path} as nanoGPT's meta.pkl ({e})") from None
    itos = raw.get('itos') if isinstance(raw, dict) else None
    vocab_size = raw.get('vocab_size') if isinstance(raw, dict) else None
    if not isinstance(itos, dict) or not isinstance(vocab_size, int) or sorted(itos) != list(range(vocab_size)):
        raise UserError(f"{path} is not nanoGPT's meta.pkl: expected a dict with vocab_size and itos "
                        f"(ids 0..vocab_size-1 to characters)")
    chars = [itos[i] for i in range(vocab_size)]
    if not all(isinstance(c, str) and len(c) == 1 for c in chars) or len(set(chars)) != vocab_size:
        raise UserError(f"{path}: the vocabulary is not one distinct character per id, which the 'char' tokenizer needs")
    return {'tokenizer': 'char', 'chars': ''.join(chars), 'vocab_size': vocab_size, 'dtype': 'uint16',
            'source': f'nanoGPT {path}'}


EOT = '<|endoftext|>'  # the end-of-text token of GPT-2's BPE and of the BPEs data/text/prepare.py trains


def get_tokenizer(meta, ordinary=False):
    """(encode, decode, eot_id) for a dataset's (or a checkpoint's data_meta) tokenizer: 'char' (its own
    character list), 'bpe' (a byte-level BPE trained by data/text/prepare.py, held in meta), 'gpt2'
    (tiktoken) or 'hf' (a transformers tokenizer by name or directory). eot_id is None without one.
    ordinary: special-token strings in the text are plain text (for corpora), not the token itself.
    Tokens added to the vocabulary (meta["added_tokens"], {string: id}, e.g. chat.py's chat tokens) are
    encoded and decoded as single ids on top of any of these."""
    if (meta or {}).get('added_tokens'):
        base = {k: v for k, v in meta.items() if k != 'added_tokens'}
        encode, decode, eot = get_tokenizer(base, ordinary)
        return (*with_added_tokens(encode, decode, meta['added_tokens']), eot)
    kind = (meta or {}).get('tokenizer')
    if kind == 'char':
        chars = meta['chars']
        stoi = {c: i for i, c in enumerate(chars)}

        def encode(s):
            bad = sorted(set(s) - set(stoi))
            if bad:
                raise UserError(f"characters not in the dataset's vocabulary: {''.join(bad)!r}")
            return [stoi[c] for c in s]
        return encode, lambda ids: ''.join(chars[i] for i in ids), None
    if kind == 'palette':  # Image GPT: ids are colours (data/igpt/prepare.py)
        raise UserError("this dataset's tokens are image pixels, not text: use demos.py to sample images")
    if kind == 'bpe':
        if 'tokenizer_json' not in meta:
            raise UserError("this run's BPE tokenizer is missing (no tokenizer_json in its metadata); "
                            "it was saved by an older version: re-prepare the data and retrain")
        from tokenizers import Tokenizer
        tok = Tokenizer.from_str(meta['tokenizer_json'])
        tok.encode_special_tokens = ordinary  # True: '<|endoftext|>' in the text is encoded as plain text
        return (lambda s: tok.encode(s, add_special_tokens=False).ids,
                lambda ids: tok.decode(ids, skip_special_tokens=False), tok.token_to_id(EOT))
    if kind == 'hf':  # a transformers tokenizer (GPT-1, or shipped with an HF directory)
        from transformers import AutoTokenizer
        try:
            tok = AutoTokenizer.from_pretrained(meta['name'])
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load the tokenizer {meta['name']!r} ({str(e).splitlines()[0][:200]})") from None
        return (lambda s: tok.encode(s, add_special_tokens=False), tok.decode, tok.eos_token_id)
    if kind == 'gpt2':
        import tiktoken
        try:
            enc = tiktoken.get_encoding('gpt2')
        except Exception as e:  # its files are downloaded once (requests' errors, or a bad cache)
            raise UserError(f"cannot load tiktoken's GPT-2 BPE ({str(e).splitlines()[0][:200]}); connect once to "
                            f"download it, or set TIKTOKEN_CACHE_DIR to a folder holding its files") from None
        if ordinary:
            return enc.encode_ordinary, enc.decode, enc.eot_token
        return (lambda s: enc.encode(s, allowed_special={EOT}), enc.decode, enc.eot_token)
    raise UserError((meta or {}).get('missing') or f"no tokenizer to decode this model's tokens "
                    f"(tokenizer {kind!r}); it was trained on data whose metadata was not saved")


def with_added_tokens(encode, decode, added):
    """(encode, decode) that map each added token string ({string: id}) to its one id and back, and leave
    the text between them to the tokenizer's own encode/decode."""
    ids = {s: int(i) for s, i in added.items()}
    strings = {i: s for s, i in ids.items()}
    split = re.compile('(' + '|'.join(map(re.escape, sorted(ids, key=len, reverse=True))) + ')')

    def encode_added(text):
        out = []
        for piece in split.split(text):
            if piece in ids:
                out.append(ids[piece])
            elif piece:
                out.extend(encode(piece))
        return out

    def decode_added(seq):
        out, run = [], []
        for i in map(int, seq):
            if i in strings:
                out += [decode(run)] if run else []
                out.append(strings[i])
                run = []
            else:
                run.append(i)
        return ''.join(out + ([decode(run)] if run else []))
    return encode_added, decode_added


# ---------------------------------------------------------------------- token data

def seed_from(*parts):
    """A 63-bit seed that is a fixed function of its parts (any ints/strings), unlike hash()."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, 'little') >> 1

class TokenData:
    """Batches from the memmapped train.bin / val.bin: random windows of block_size + 1 tokens of a
    stream, or random whole examples of the masked-example format (see the top of this file).

    Batches are a pure function of (seed, split, step, micro): window starts (or example indices) are
    drawn from a generator seeded by those numbers. So a resumed run sees exactly the batches the
    uninterrupted run would have, and under DDP rank r taking global micro-steps r*k .. r*k+k-1 sees the
    same batches a single process with accumulation world*k sees, with no loader state to save.
    """

    def __init__(self, data_dir, block_size, batch_size, device, seed=1337, vocab_size=None, prepare=None):
        self.meta = load_meta(data_dir, prepare)
        prepare = prepare or os.path.join(data_dir, 'prepare.py')
        self.data_dir, self.block_size, self.batch_size, self.device = data_dir, block_size, batch_size, device
        self.seed = seed
        self.dtype = np.dtype(self.meta['dtype'])
        if vocab_size is not None and self.meta['vocab_size'] > vocab_size:
            raise UserError(f"dataset {data_dir} has vocab_size {self.meta['vocab_size']} but the model only "
                            f"{vocab_size}; use a model with vocab_size >= {self.meta['vocab_size']}")
        self.vocab_size = self.meta['vocab_size'] if vocab_size is None else vocab_size
        self.format = self.meta.get('format', 'stream')
        if self.format not in ('stream', 'examples'):
            raise UserError(f"{data_dir}/meta.json has format {self.format!r}; expected 'stream' or 'examples'")
        if self.format == 'examples':
            self.example_len = int(self.meta.get('example_len', 0))
            if self.example_len < 2:
                raise UserError(f"{data_dir}/meta.json: format 'examples' needs example_len >= 2; re-run prepare.py")
            if self.example_len - 1 > block_size:
                raise UserError(f"examples in {data_dir} are {self.example_len} tokens, too long for block_size="
                                f"{block_size}; use --block_size={self.example_len - 1} or more")
        self.shards = {}  # split: (shard paths, where each starts in the split's stream, its end): sharded data
        for split in ('train', 'val'):
            if self.format == 'examples':
                self._examples(split)  # checks the files agree
                continue
            if 'shards' in self.meta:
                self.shards[split] = self._shard_index(split, prepare)
                if self.shards[split][1][-1] < block_size + 1:
                    raise UserError(f"the {split} shards in {data_dir} hold {self.shards[split][1][-1]} tokens, too "
                                    f"few for block_size={block_size} (a window is block_size + 1 tokens); use a "
                                    f"smaller --block_size or more data")
                continue
            # a file cut short (a full disk, an interrupted copy) is refused here rather than trained on
            path = os.path.join(data_dir, f'{split}.bin')
            size, expected = os.path.getsize(path), self.meta.get(f'{split}_tokens')
            if size % self.dtype.itemsize or (expected is not None and size // self.dtype.itemsize != expected):
                raise UserError(f"{path} is {size:,} bytes, not the {expected if expected is not None else 'whole'} "
                                f"{self.dtype.name} tokens meta.json describes: it is truncated or corrupt; "
                                f"re-run `python {prepare}`")
            n = size // self.dtype.itemsize
            if n < block_size + 1:
                raise UserError(f"{split}.bin in {data_dir} has {n} tokens, too few for block_size={block_size} "
                                f"(a window is block_size + 1 tokens); use a smaller --block_size or more data")

    def _shard_index(self, split, prepare):
        """(paths, starts): a split's shard files and the offsets of their first tokens in the split's stream, with
        the stream's length last; each shard must be the size meta.json gives it."""
        paths, starts = [], [0]
        for s in self.meta['shards'][split]:
            path = os.path.join(self.data_dir, s['file'])
            size = os.path.getsize(path)
            if size != s['tokens'] * self.dtype.itemsize:
                raise UserError(f"{path} is {size:,} bytes, not the {s['tokens']:,} {self.dtype.name} tokens meta.json "
                                f"describes: it is truncated or corrupt; re-run `python {prepare}` (it writes it "
                                f"again)")
            paths.append(path)
            starts.append(starts[-1] + s['tokens'])
        return paths, np.array(starts, dtype=np.int64)

    def _window(self, split, i, n, maps):
        """Tokens i .. i+n-1 of a sharded split's stream (their concatenation), read from the one or more shards
        they lie in. maps: the memmaps this batch opened, by shard."""
        paths, starts = self.shards[split]
        k = int(np.searchsorted(starts, i, side='right')) - 1  # the shard token i is in
        parts = []
        while n > 0:
            if k not in maps:
                maps[k] = np.memmap(paths[k], dtype=self.dtype, mode='r')
            part = maps[k][i - starts[k]:i - starts[k] + n]
            parts.append(part)
            i, n, k = i + len(part), n - len(part), k + 1
        return parts[0].astype(np.int64) if len(parts) == 1 else np.concatenate(parts).astype(np.int64)

    def _memmap(self, split, suffix='.bin', dtype=None):
        # re-opened per batch: a long-lived np.memmap keeps every page it touched mapped (nanoGPT #1)
        return np.memmap(os.path.join(self.data_dir, f'{split}{suffix}'), dtype=dtype or self.dtype, mode='r')

    def _examples(self, split):
        """(tokens, mask) of a split in the examples format, each (N, example_len)."""
        L = self.example_len
        path = os.path.join(self.data_dir, f'{split}.mask.bin')
        if not os.path.exists(path):
            raise UserError(f"{path} not found (the examples format needs it); re-run prepare.py")
        tokens, mask = self._memmap(split), self._memmap(split, '.mask.bin', np.uint8)
        if len(tokens) != len(mask) or len(tokens) % L or not len(tokens):
            raise UserError(f"{split}.bin and {split}.mask.bin in {self.data_dir} do not hold whole examples of "
                            f"{L} tokens ({len(tokens)} tokens, {len(mask)} mask bytes); re-run prepare.py")
        return tokens.reshape(-1, L), mask.reshape(-1, L)

    def batch(self, split, step, micro=0):
        g = torch.Generator().manual_seed(seed_from(self.seed, split, step, micro))
        if self.format == 'examples':
            tokens, mask = self._examples(split)
            ix = torch.randint(len(tokens), (self.batch_size,), generator=g).numpy()
            xy = torch.from_numpy(tokens[ix].astype(np.int64))  # (B, example_len): every row is one example
            target = torch.from_numpy(mask[ix, 1:] != 0)
        elif split in self.shards:  # the same draw as for one file holding the shards' concatenation
            maps, n = {}, int(self.shards[split][1][-1])
            ix = torch.randint(n - self.block_size, (self.batch_size,), generator=g).tolist()
            xy = torch.from_numpy(np.stack([self._window(split, i, self.block_size + 1, maps) for i in ix]))
            target = None
        else:
            data = self._memmap(split)
            # a window is block_size + 1 tokens, so starts 0 .. len - block_size - 1 are all valid
            ix = torch.randint(len(data) - self.block_size, (self.batch_size,), generator=g).tolist()
            xy = torch.from_numpy(np.stack([data[i:i + self.block_size + 1].astype(np.int64) for i in ix]))
            target = None
        hi = int(xy.max())  # cheap on the host (B*T ints), and avoids a device-side assert later
        if hi >= self.vocab_size:
            what = f"the {split} shards" if split in self.shards else f"{split}.bin"
            raise UserError(f"{what} in {self.data_dir} holds token id {hi}, beyond the vocabulary "
                            f"({self.vocab_size}); the file is corrupt or from another tokenizer: re-run prepare.py")
        x, y = xy[:, :-1], xy[:, 1:]
        if target is not None:
            y = y.masked_fill(~target, -1)  # no loss where the token is only context
        if self.device.startswith('cuda'):
            # pinned memory lets the host-to-device copy run asynchronously
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x.contiguous().to(self.device), y.contiguous().to(self.device)
