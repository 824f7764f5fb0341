"""
Writing the token-data formats that tokendata.py reads (the data/<name>/prepare.py scripts and the SFT writer in
prefs.py call these).

Every dataset ends up as the same three files in its folder:
- train.bin, val.bin: flat arrays of token ids (uint16, or uint32 for vocabularies over 65,536),
  read back with np.memmap
- meta.json: tokenizer, vocab_size, dtype, token counts and source, checked by the loader
All of them are written to a temp file first and then renamed, so an interrupted run
never leaves a half-written file behind that looks complete.

Tasks that learn only part of each sequence (minGPT's sort and adder, Image GPT, SFT) use the
masked-example format instead, written by write_examples(): train.bin / val.bin hold fixed-length
examples row after row, train.mask.bin / val.mask.bin one uint8 per token (1: a target the loss is
taken on, 0: context or padding), and meta.json says "format": "examples" and the "example_len".
tokendata.py's TokenData then draws whole examples and ignores the loss off the mask.

A prepared dataset is replaced only when asked: with protect=True (the prepare scripts pass it unless --overwrite)
write_splits and write_examples refuse, before writing anything, a folder whose meta.json describes another
dataset than the one they would write (check_replace); the same preparation again rewrites it as before.
"""

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from gpt.errors import UserError


def token_dtype(vocab_size):
    """The smallest unsigned type that holds every id: uint16 up to 65,536 ids, else uint32."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


@contextmanager
def atomic_path(path):
    # yield a temp path beside `path`; on success fsync it and rename it over `path`,
    # on failure delete it. Same folder so the rename is atomic (same filesystem).
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_tokens(path, tokens, dtype=np.uint16, num_tokens=None, chunk_size=1 << 20):
    """
    Write token ids to path as one flat binary array of dtype.
    tokens is either an array (or list) of ids, or an iterable of 1-D chunks of ids;
    for chunks pass num_tokens, since the memmap is sized up front. Writing chunk by
    chunk keeps memory flat however large the dataset is.
    """
    dtype = np.dtype(dtype)
    if isinstance(tokens, (np.ndarray, list)):
        ids = np.asarray(tokens)
        num_tokens = len(ids)
        tokens = (ids[i:i + chunk_size] for i in range(0, num_tokens, chunk_size))
    if num_tokens is None:
        raise ValueError("num_tokens is needed when tokens is an iterable of chunks")
    max_id = np.iinfo(dtype).max
    with atomic_path(path) as tmp:
        if num_tokens == 0:
            open(tmp, "wb").close()  # np.memmap cannot map an empty file
            return
        arr = np.memmap(tmp, dtype=dtype, mode="w+", shape=(num_tokens,))
        idx = 0
        for chunk in tokens:
            chunk = np.asarray(chunk)
            if len(chunk) and (chunk.min() < 0 or chunk.max() > max_id):
                # casting would wrap around silently and train on garbage
                raise ValueError(f"token ids must be in [0, {max_id}] to fit {dtype}")
            if idx + len(chunk) > num_tokens:
                raise ValueError(f"got more than num_tokens={num_tokens} tokens")
            arr[idx:idx + len(chunk)] = chunk
            idx += len(chunk)
        if idx != num_tokens:
            raise ValueError(f"got {idx} tokens, expected num_tokens={num_tokens}")
        arr.flush()
        del arr  # close the mapping before the rename


def write_meta(data_dir, **fields):
    """Write fields to data_dir/meta.json (JSON, never pickle: loading it cannot run code)."""
    path = Path(data_dir) / "meta.json"
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(fields, f, sort_keys=True, indent=2, ensure_ascii=False)
            f.write("\n")
    return path


def check_replace(out_dir, meta, keys=None):
    """Refuse (one line naming --overwrite) to replace the dataset prepared in out_dir by another: its meta.json
    must equal meta, the one about to be written (keys: compare only these, e.g. the tokenizer's before the corpus
    is encoded). A folder without a readable meta.json holds no dataset of ours, and the same preparation again
    (the same meta) passes, so rerunning a prepare command keeps working."""
    try:
        old = json.loads((Path(out_dir) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    new = json.loads(json.dumps(meta))  # (as it would read back: lists for tuples, str keys)
    if not isinstance(old, dict) or (old == new if keys is None else all(old.get(k) == new.get(k) for k in keys)):
        return
    first = ('tokenizer', 'format', 'vocab_size')  # (what tells datasets apart first, then the rest by name)
    differ = sorted((k for k in set(old) | set(new) if (keys is None or k in keys) and old.get(k) != new.get(k)),
                    key=lambda k: (first.index(k) if k in first else len(first), k))
    diff = [f"{k} {_short(old, k)}, here {_short(new, k)}" for k in differ[:3]] + ['...'][:len(differ) > 3]
    raise UserError(f"{out_dir} holds another prepared dataset ({'; '.join(diff)}): pass --overwrite to replace it, "
                    f"or choose another --out_dir")


def _short(meta, key):
    text = repr(meta[key]) if key in meta else 'absent'
    return text if len(text) <= 24 else text[:20] + '...'


def write_splits(out_dir, splits, vocab_size, protect=False, **meta):
    """Write each split's ids ({'train': ids, 'val': ids}) to <name>.bin in the dtype the vocabulary
    needs, then meta.json with the tokenizer fields in meta, the dtype and the token counts. protect: refuse to
    replace another dataset in out_dir (check_replace)."""
    dtype = token_dtype(vocab_size)
    # lists become int64 arrays (no cast that could wrap); arrays, e.g. a memmap of a corpus larger than
    # memory, are checked a chunk at a time, in their own dtype
    splits = {name: ids if isinstance(ids, np.ndarray) else np.asarray(ids, dtype=np.int64)
              for name, ids in splits.items()}
    for name, ids in splits.items():
        for i in range(0, len(ids), 1 << 24):
            chunk = ids[i:i + (1 << 24)]
            if chunk.min() < 0 or chunk.max() >= vocab_size:
                bad = int(chunk.max()) if chunk.max() >= vocab_size else int(chunk.min())
                raise ValueError(f"{name} holds token id {bad}, outside the vocabulary [0, {vocab_size})")
    counts = {f"{name}_tokens": len(ids) for name, ids in splits.items()}
    if protect:
        check_replace(out_dir, dict(vocab_size=vocab_size, dtype=np.dtype(dtype).name, **counts, **meta))
    print(", ".join(f"{name} has {len(ids):,} tokens" for name, ids in splits.items()))
    for name, ids in splits.items():
        write_tokens(Path(out_dir) / f"{name}.bin", ids, dtype)
    write_meta(out_dir, vocab_size=vocab_size, dtype=np.dtype(dtype).name, **counts, **meta)
    print(f"wrote {', '.join(f'{name}.bin' for name in splits)}, meta.json to {out_dir}")
    stale = Path(out_dir) / "tokenizer.json"
    if meta.get("tokenizer") != "bpe" and stale.exists():  # a BPE dataset's, which no longer fits these bins
        stale.unlink()
        print(f"removed {stale}: the tokenizer of the BPE dataset these bins replace")


def write_examples(out_dir, splits, vocab_size, protect=False, **meta):
    """The masked-example format: splits maps a split name to (tokens, mask), two (N, L) arrays of N
    examples of L tokens; mask is 1 where the token is a target (loss is taken on predicting it) and 0
    where it is context or padding. Writes <name>.bin (the tokens row after row, in the dtype the
    vocabulary needs), <name>.mask.bin (uint8) and meta.json with format='examples', example_len=L,
    the counts and meta. Every example needs a target, and the first token cannot be one (nothing
    precedes it to predict it from). protect: refuse to replace another dataset in out_dir (check_replace)."""
    dtype = token_dtype(vocab_size)
    lengths = set()
    for name, (tokens, mask) in splits.items():
        tokens, mask = np.asarray(tokens), np.asarray(mask)
        if tokens.ndim != 2 or tokens.shape != mask.shape or not len(tokens):
            raise ValueError(f"{name}: tokens and mask must be (N, L) arrays of the same shape, N >= 1; "
                             f"got {tokens.shape} and {mask.shape}")
        if mask[:, 0].any():
            raise ValueError(f"{name}: the first token of an example cannot be a target")
        if not mask.any(axis=1).all():
            raise ValueError(f"{name}: every example needs at least one target token (mask 1)")
        lengths.add(tokens.shape[1])
    if len(lengths) != 1:
        raise ValueError(f"every split needs examples of one length, got {sorted(lengths)}")
    counts = {f"{name}_examples": len(tokens) for name, (tokens, _) in splits.items()}
    fields = dict(vocab_size=vocab_size, dtype=np.dtype(dtype).name, format="examples", example_len=lengths.pop(),
                  **counts, **meta)
    if protect:
        check_replace(out_dir, fields)
    print(", ".join(f"{name} has {len(tokens):,} examples" for name, (tokens, _) in splits.items()))
    for name, (tokens, mask) in splits.items():
        write_tokens(Path(out_dir) / f"{name}.bin", np.asarray(tokens).reshape(-1), dtype)
        write_tokens(Path(out_dir) / f"{name}.mask.bin", (np.asarray(mask) != 0).astype(np.uint8).reshape(-1), np.uint8)
    write_meta(out_dir, **fields)
    print(f"wrote {', '.join(f'{name}.bin, {name}.mask.bin' for name in splits)}, meta.json to {out_dir}")


# ---------------------------------------------------------------------- sharded stream datasets
# A corpus too large for one file (FineWeb, OpenWebText; gpt/corpus.py writes them) is a stream split into
# fixed-size shards: train_000000.bin, train_000001.bin, ... and val_000000.bin, ..., flat token ids like train.bin,
# each shard_tokens long but the last of a split. meta.json is the manifest: the usual fields plus
# "shards": {"val": [{"file", "tokens", "sha256"}, ...], "train": [...]}, "complete" (False while a prepare run is
# still adding shards) and "prepare" (the settings that made them). tokendata.py reads the shards of a split as one
# stream, their concatenation. SHARD_STATE beside them holds where in the source each shard starts, for a rerun to
# continue; the loader never reads it.

SHARD_STATE = "prepare_state.json"


def shard_name(split, index):
    return f"{split}_{index:06d}.bin"


def write_shard(path, tokens):
    """Write one shard (a 1-D array of ids in its dtype) atomically and return its sha256. Plain writes, not a
    memmap: on a full disk a write raises OSError (ENOSPC), where a memmap's page would kill the process (SIGBUS)."""
    data = memoryview(np.ascontiguousarray(tokens)).cast("B")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return hashlib.sha256(data).hexdigest()


def write_json(path, obj):
    """obj as JSON to path, atomically (a run killed mid-write leaves the previous file)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False)
            f.write("\n")


def dataset_files(out_dir, meta):
    """The files of the dataset meta describes in out_dir (its shards, or train.bin / val.bin and masks), that
    exist: what replacing it removes."""
    out = Path(out_dir)
    names = [s["file"] for split in (meta.get("shards") or {}).values() for s in split if isinstance(s, dict)]
    names += ["train.bin", "val.bin", "train.mask.bin", "val.mask.bin", SHARD_STATE]
    return [out / n for n in names if "/" not in str(n) and (out / n).is_file()]
