"""
Helpers shared by the data/<name>/prepare.py scripts: their command line, the text they download, the
problems of the small demos. The files they write and their formats are the library's (gpt/datafiles.py,
read back by gpt/tokendata.py); the writers are imported here under the names the scripts use, write_splits and
write_examples refusing to replace another dataset in out_dir unless the command line has --overwrite (get_parser
adds it; the same preparation again needs none).
"""

import argparse
import shutil
import sys
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: the gpt package
from gpt import datafiles  # noqa: E402
from gpt.datafiles import atomic_path, check_replace, token_dtype, write_meta, write_tokens  # noqa: E402,F401
from gpt.errors import exit_on_user_error  # noqa: E402

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def download(url, path, timeout=60):
    """Download url to path, unless path already exists."""
    path = Path(path)
    if path.exists():
        print(f"{path} already exists, skipping download")
        return
    print(f"downloading {url} to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
                if response.status != 200:  # urlopen raises on most errors; be sure for the rest
                    raise OSError(f"HTTP status {response.status}")
                shutil.copyfileobj(response, f)
    except (OSError, ValueError) as e:  # URLError, HTTPError and timeouts are OSErrors
        reason = getattr(e, "reason", None) or e
        raise SystemExit(f"error: could not download {url} ({reason}); "
                         f"download it by hand to {path} or pass --input FILE")


def read_text(path):
    # newline="" keeps line endings exactly as in the file, so decoding the bins
    # gives back the file byte for byte
    try:
        with open(path, "r", encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as e:  # one line, not a traceback (the scripts' mistakes are SystemExit lines)
        raise SystemExit(f"error: {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                         f"save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 {path} > fixed.txt)") from None


def distinct_sequences(rng, num_symbols, length, count):
    """count different sequences of `length` symbols in [0, num_symbols), as a (count, length) array in
    random order: all of them when there are no more than count (then count is their number), else a
    random sample. The demos split problems with it, so no held-out problem is ever a training one."""
    total = num_symbols ** length  # a Python int: no overflow however long
    if total <= count:
        seqs = np.indices((num_symbols,) * length).reshape(length, -1).T  # every sequence, in order
    else:
        seqs = np.zeros((0, length), dtype=np.int64)
        while len(seqs) < count:  # draw, drop repeats, until there are enough
            more = rng.integers(num_symbols, size=(2 * count, length))
            seqs = np.unique(np.concatenate([seqs, more]), axis=0)
    return seqs[rng.permutation(len(seqs))[:count]].astype(np.int64)


_settings = {"overwrite": False}  # the command line's --overwrite, as Parser read it last


class Parser(argparse.ArgumentParser):
    """Reads --overwrite for the writers below: the scripts hand them out_dir, not their arguments."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, rest = super().parse_known_args(args, namespace)
        _settings["overwrite"] = bool(getattr(parsed, "overwrite", False))
        return parsed, rest


def write_splits(out_dir, splits, vocab_size, **meta):
    """gpt.datafiles.write_splits, refusing to replace another dataset in out_dir without --overwrite."""
    return datafiles.write_splits(out_dir, splits, vocab_size, protect=not _settings["overwrite"], **meta)


def write_examples(out_dir, splits, vocab_size, **meta):
    """gpt.datafiles.write_examples, refusing to replace another dataset in out_dir without --overwrite."""
    return datafiles.write_examples(out_dir, splits, vocab_size, protect=not _settings["overwrite"], **meta)


def get_parser(doc, script, url=None):
    """
    Argument parser with --out_dir (default: the folder of `script`) and --overwrite. With a url, also
    --input FILE (use a local copy instead of downloading) and --url (where to download from). Also makes the
    script's mistakes (a UserError) and Ctrl-C one line each (gpt.errors.exit_on_user_error), as the other
    scripts' configure() does.
    """
    exit_on_user_error()
    parser = Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", type=Path, default=Path(script).resolve().parent,
                        help="where to write train.bin, val.bin, meta.json (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a different dataset already prepared in --out_dir (the same one again "
                             "needs no flag)")
    if url is not None:
        parser.add_argument("--input", type=Path, default=None,
                            help="local text file to use instead of downloading")
        parser.add_argument("--url", default=url, help="where to download the text from (default: %(default)s)")
    return parser


def get_input_text(args):
    """Return (text, source path): the --input file, or out_dir/input.txt downloaded from --url."""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.input is not None:
        path = args.input
        if not path.is_file():
            raise SystemExit(f"error: --input {path} is not a file")
    else:
        path = args.out_dir / "input.txt"
        download(args.url, path)
    return read_text(path), str(path.resolve())
