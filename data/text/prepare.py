"""
Any text corpus into train.bin / val.bin / meta.json, with the tokenizer you choose:
  char  every character that occurs is one token (no special tokens)
  gpt2  GPT-2's BPE (tiktoken, 50,257 ids), <|endoftext|> after each document
  bpe   a byte-level BPE trained on this corpus with Hugging Face `tokenizers` (--vocab_size ids,
        <|endoftext|> among them, after each document); saved beside the bins as tokenizer.json

Run from the repo root:
$ python data/text/prepare.py --input my_corpus.txt --tokenizer=char --out_dir data/mine
$ python data/text/prepare.py --input notes/ books/ --tokenizer=bpe --vocab_size=8192 --out_dir data/mine
$ python data/text/prepare.py --dataset roneneldan/TinyStories --tokenizer=gpt2 --out_dir data/tinystories
$ python train.py --dataset=mine ...      (or --data_dir=... for a folder outside data/)

Each file (folders are searched recursively, hidden files skipped) or each record of a hub dataset is
one document; files must be UTF-8 text. The last --val_fraction of the token stream is the validation
split. Ids are stored as uint16 when the vocabulary fits, else uint32 (recorded in meta.json).
Documents are cut into pieces of about 64K characters at line breaks that cannot change the tokens (see
split_safely) and encoded by --num_proc processes.
"""

import hashlib
import multiprocessing
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # data/: prepare_utils.py
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # the repo root: tokendata.py
from prepare_utils import atomic_path, check_replace, get_parser, token_dtype, write_splits  # noqa: E402
from gpt.errors import UserError# noqa: E402
from gpt.tokendata import EOT, get_tokenizer# noqa: E402

PIECE_CHARS = 1 << 16  # documents are encoded in pieces of about this many characters (HF tokenizers is
# ~1.5x slower on megabyte strings than on pieces this size; tiktoken does not mind)
BATCH_CHARS = 1 << 20  # characters handed to a worker process at a time

# A line break between two non-space characters: GPT-2's pre-tokenizer regex (used by tiktoken and by
# the ByteLevel BPE) always ends a pre-token after such a "\n" and starts a new one at the next
# character, and BPE merges never cross pre-tokens, so cutting the text there gives the same ids.
SAFE_CUT = re.compile(r'(?<=\S\n)(?=\S)')


def split_safely(text, size=PIECE_CHARS):
    """Cut text into pieces of about `size` characters at SAFE_CUT points (a piece is longer when
    there is none). Encoding the pieces one by one gives the ids of encoding the whole text."""
    pieces, start = [], 0
    while len(text) - start > size:
        cut = SAFE_CUT.search(text, start + size)
        if cut is None:
            break
        pieces.append(text[start:cut.start()])
        start = cut.start()
    pieces.append(text[start:])
    return pieces


# ----------------------------------------------------------------------------- reading the corpus

def list_files(inputs):
    """The files named, and every non-hidden file under the folders named, in a stable order."""
    files = []
    for p in inputs:
        if p.is_dir():
            found = sorted(f for f in p.rglob('*') if f.is_file()
                           and not any(part.startswith('.') for part in f.relative_to(p).parts))
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise SystemExit(f"error: --input {p}: no such file or folder")
    return files


def read_document(path):
    with open(path, 'rb') as f:
        raw = f.read()
    # a NUL byte never occurs in text, and almost always early in binary formats
    if b'\0' in raw[:1 << 16]:
        raise SystemExit(f"error: {path} is not text (it holds NUL bytes); pass only UTF-8 text files")
    try:
        # newline='' semantics: line endings are kept exactly, so decoding the bins gives back the text
        return raw.decode('utf-8')
    except UnicodeDecodeError as e:
        raise SystemExit(f"error: {path} is not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 4]!r}); "
                         f"convert it (e.g. iconv -t utf-8) or leave it out") from None


class Corpus:
    """The documents, readable as many times as needed (vocabulary, BPE training, encoding)."""

    def __init__(self, args):
        self.files, self.dataset = None, None
        if args.input:
            self.files = list_files(args.input)
            self.source = ', '.join(str(p.resolve()) for p in args.input)
            self.total = sum(f.stat().st_size for f in self.files)  # bytes, for the progress bar
        else:
            from gpt import hubdata
            self.dataset = hubdata.load_dataset(args.dataset, split=args.split, what=f"dataset {args.dataset!r}",
                                                instead='pass --input FILE_OR_FOLDER for local text')
            if args.text_column not in self.dataset.column_names:
                raise SystemExit(f"error: no column {args.text_column!r} in {args.dataset} "
                                 f"(columns: {', '.join(self.dataset.column_names)}); pass --text_column")
            self.column, self.source, self.total = args.text_column, args.dataset, None

    def __len__(self):
        return len(self.files) if self.files is not None else len(self.dataset)

    def __iter__(self):
        if self.files is not None:
            return (read_document(f) for f in self.files)
        return (row[self.column] or '' for row in self.dataset)

    def pieces(self):
        """(piece, ends_document) over every document, each document cut by split_safely."""
        for doc in self:
            if not doc:
                continue  # an empty record is no document (and gets no <|endoftext|>)
            parts = split_safely(doc)
            for i, part in enumerate(parts):
                yield part, i == len(parts) - 1


# ----------------------------------------------------------------------------- tokenizers

def train_bpe(corpus, vocab_size):
    """A byte-level BPE (GPT-2's pre-tokenizer and byte alphabet, so any text encodes) trained on the
    corpus, with <|endoftext|> as its one special token. Returns the tokenizer's JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=True,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((piece for piece, _ in corpus.pieces()), trainer=trainer)
    if tok.get_vocab_size() < vocab_size:
        print(f"the corpus supports only {tok.get_vocab_size():,} tokens (no pair left to merge), "
              f"fewer than --vocab_size={vocab_size:,}")
    return tok.to_str()


def make_meta(corpus, args):
    """The tokenizer fields of meta.json (and the trained tokenizer.json text for 'bpe', else None)."""
    if args.tokenizer == 'char':
        chars = set()
        for doc in tqdm(corpus, total=len(corpus), desc='collecting characters', unit='doc'):
            chars.update(doc)
        chars = ''.join(sorted(chars))
        return {'tokenizer': 'char', 'chars': chars, 'vocab_size': len(chars)}, None
    if args.tokenizer == 'gpt2':
        _, _, eot = get_tokenizer({'tokenizer': 'gpt2'})
        return {'tokenizer': 'gpt2', 'vocab_size': eot + 1, 'eot_id': eot}, None
    tok_json = train_bpe(corpus, args.vocab_size)
    meta = {'tokenizer': 'bpe', 'tokenizer_file': 'tokenizer.json',
            'tokenizer_sha256': hashlib.sha256(tok_json.encode('utf-8')).hexdigest()}
    _, _, eot = get_tokenizer({**meta, 'tokenizer_json': tok_json})
    from tokenizers import Tokenizer
    meta.update(vocab_size=Tokenizer.from_str(tok_json).get_vocab_size(), eot_id=eot)
    return meta, tok_json


# the tokenizer the encoding processes use: built once in the parent, inherited by the forked workers
# (an error building it is then one line here, not a pool respawning failing workers forever)
_worker = {}


def encode_batch(batch):
    """[(piece, ends_document), ...] -> (one array of ids, characters encoded)."""
    encode, eot = _worker['encode'], _worker['eot']
    ids = []
    for piece, last in batch:
        ids += encode(piece)
        if last and eot is not None:
            ids.append(eot)  # documents are separated by the end-of-text token
    return np.array(ids, dtype=_worker['dtype']), sum(len(p) for p, _ in batch)


def batches(pieces, size=BATCH_CHARS):
    batch, n = [], 0
    for piece in pieces:
        batch.append(piece)
        n += len(piece[0])
        if n >= size:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


def encode_corpus(corpus, meta, dtype, num_proc, path):
    """Encode every document into the file `path` (flat ids, in order); returns (tokens, characters)."""
    n_tokens, n_chars = 0, 0
    work = batches(corpus.pieces())
    # the Rust tokenizer's thread pool does not survive a fork: the processes are the parallelism here
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    encode, _, eot = get_tokenizer(meta, ordinary=True)  # '<|endoftext|>' in a document is just text
    _worker.update(encode=encode, eot=eot, dtype=dtype)
    if num_proc > 1:
        # (Ctrl-C reaches every process of the terminal: the workers ignore it, the parent stops them in one line)
        pool = multiprocessing.get_context('fork').Pool(num_proc, initializer=signal.signal,
                                                        initargs=(signal.SIGINT, signal.SIG_IGN))
        results = pool.imap(encode_batch, work)  # in order, so the bins keep the corpus order
    else:
        pool = None
        results = map(encode_batch, work)
    # characters against the files' bytes (equal for ASCII): a progress estimate; hub datasets have no total
    bar = tqdm(total=corpus.total, unit='char', unit_scale=True, desc='encoding')
    try:
        with open(path, 'wb') as f:
            for ids, chars in results:
                f.write(ids.tobytes())
                n_tokens += len(ids)
                n_chars += chars
                bar.update(chars)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return n_tokens, n_chars


def main():
    parser = get_parser(__doc__, __file__)
    parser.add_argument('--input', type=Path, nargs='+', help='text files and/or folders of text files')
    parser.add_argument('--dataset', help='a Hugging Face hub dataset instead of --input')
    parser.add_argument('--split', default='train', help='--dataset: the split to read (default: %(default)s)')
    parser.add_argument('--text_column', default='text', help='--dataset: the column holding the text')
    parser.add_argument('--tokenizer', choices=['char', 'gpt2', 'bpe'], default='bpe')
    parser.add_argument('--vocab_size', type=int, default=8192,
                        help='--tokenizer=bpe: tokens to learn, 256 bytes and <|endoftext|> included (default: %(default)s)')
    parser.add_argument('--val_fraction', type=float, default=0.1, help='the last fraction of tokens held out for val')
    parser.add_argument('--num_proc', type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help='processes encoding the text (default: %(default)s)')
    args = parser.parse_args()
    # every mistake is one line, before any work is done
    if bool(args.input) == bool(args.dataset):
        raise SystemExit('error: pass either --input FILE_OR_FOLDER ... or --dataset NAME')
    if args.tokenizer == 'bpe' and args.vocab_size < 257:
        raise SystemExit(f'error: --vocab_size={args.vocab_size} is too small: a byte-level BPE needs the 256 byte '
                         f'tokens and <|endoftext|>, so at least 257')
    if not 0 < args.val_fraction < 1:
        raise SystemExit('error: --val_fraction must be between 0 and 1')
    if args.num_proc < 1:
        raise SystemExit('error: --num_proc must be at least 1')

    corpus = Corpus(args)
    if len(corpus) == 0 or (corpus.total == 0):
        raise SystemExit(f"error: the corpus is empty ({corpus.source}): no text to prepare")
    # a dataset of another tokenizer in out_dir is refused before any work (write_splits checks the rest)
    if not args.overwrite:
        check_replace(args.out_dir, {'tokenizer': args.tokenizer}, keys=['tokenizer'])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    meta, tok_json = make_meta(corpus, args)
    if not args.overwrite:  # (its characters, its BPE: before the corpus is encoded)
        check_replace(args.out_dir, meta, keys=meta)
    dtype = token_dtype(meta['vocab_size'])
    print(f"tokenizer {args.tokenizer}: {meta['vocab_size']:,} ids, stored as {np.dtype(dtype).name}")

    fd, tmp = tempfile.mkstemp(prefix='tokens.', suffix='.tmp', dir=args.out_dir)
    os.close(fd)
    try:
        full = {**meta, 'tokenizer_json': tok_json} if tok_json else meta
        n_tokens, n_chars = encode_corpus(corpus, full, dtype, args.num_proc, tmp)
        if n_chars == 0:
            raise SystemExit(f"error: the corpus is empty ({corpus.source}): no text to prepare")
        ids = np.memmap(tmp, dtype=dtype, mode='r') if n_tokens else np.zeros(0, dtype)
        n_train = int(n_tokens * (1 - args.val_fraction))
        if tok_json is not None:  # first, so the bins are never there without their tokenizer
            with atomic_path(args.out_dir / meta['tokenizer_file']) as path:
                path.write_bytes(tok_json.encode('utf-8'))  # the bytes meta['tokenizer_sha256'] hashes
        write_splits(args.out_dir, {'train': ids[:n_train], 'val': ids[n_train:]}, characters=n_chars,
                     source=corpus.source, **meta)
        del ids
    finally:
        os.unlink(tmp)


if __name__ == '__main__':
    try:
        main()
    except UserError as e:  # from tokendata (e.g. tiktoken's files cannot be fetched): one line too
        raise SystemExit(f"error: {e}") from None
