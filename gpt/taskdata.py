"""
Where an evaluation task's rows come from: a local folder or file the user names, else the copy cached under
data/eval/<task>/, else the hub dataset the harness reads (downloaded once, with datasets' progress bars, and
cached as JSON lines). gpt/tasks.py says what each task does with its rows.

A task's folder holds one file per split, named by the split: train.jsonl, validation.jsonl, test.jsonl (or
.json / .parquet), each row as the hub dataset has it (its column names and types). A single file given instead
is the split that is evaluated; the few-shot split is then looked for beside it by its name.
"""

import json
import os

from gpt import hubdata
from gpt.datafiles import atomic_path
from gpt.errors import UserError
from gpt.tokendata import ROOT, json_lines

CACHE_DIR = os.path.join(ROOT, 'data', 'eval')  # where downloads go (and where to put files by hand)
EXTENSIONS = ('.jsonl', '.json', '.parquet')


def read_rows(path):
    """The rows of one split's file (JSON lines, a JSON list, or parquet), or one line naming the file."""
    if path.endswith('.parquet'):
        try:
            import pyarrow.parquet as pq
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises many kinds for a file that is not parquet
            raise UserError(f"cannot read {path} as parquet ({hubdata.first_line(e)})") from None
    elif path.endswith('.json'):
        try:
            with open(path, encoding='utf-8') as f:
                rows = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path} as JSON ({hubdata.first_line(e)})") from None
        if not isinstance(rows, list):
            raise UserError(f"{path} is JSON but not a list of rows")
    else:
        rows = [doc for _, doc in json_lines(path, 'the task file')]
    if not rows:
        raise UserError(f"{path} holds no examples")
    bad = next((n for n, r in enumerate(rows, 1) if not isinstance(r, dict)), None)
    if bad:
        raise UserError(f"{path} row {bad} is not a JSON object")
    return rows


def split_file(folder, split):
    """folder/<split>.jsonl (or .json, .parquet), or None."""
    return next((os.path.join(folder, split + e) for e in EXTENSIONS if os.path.isfile(os.path.join(folder, split + e))),
                None)


def load_split(spec, split, local='', evaluated=True):
    """The rows of one split of a task. local: the user's folder or file (a file is the evaluated split); else the
    cache, else the hub (then cached)."""
    if local:
        if os.path.isdir(local):
            path = split_file(local, split)
        elif os.path.isfile(local):
            path = local if evaluated else split_file(os.path.dirname(local) or '.', split)
        else:
            raise UserError(f"{spec.name} data {local!r} not found")
        if path is None:
            where = local if os.path.isdir(local) else os.path.dirname(local) or '.'
            raise UserError(f"{spec.name}: no {split} split in {where} (a file named {split}.jsonl, .json or "
                            f".parquet{', which the few-shot examples come from' if not evaluated else ''})")
        return read_rows(path)
    folder = os.path.join(CACHE_DIR, spec.name)
    path = split_file(folder, split)
    if path:
        return read_rows(path)
    if spec.path is None:  # (the user's own task: nothing to download)
        raise UserError(f"the {spec.name} task needs a file: --{spec.flag or spec.name}_data=path.jsonl with lines "
                        '{"context": ..., "choices": [...], "label": index}')
    what = f"{spec.name} ({spec.path}{f', {spec.config}' if spec.config else ''}, split {split})"
    dest = os.path.join(folder, f"{split}.jsonl")
    instead = f"put the rows in {dest} or pass --{spec.flag or spec.name}_data=folder with {split}.jsonl"
    if os.environ.get('HF_HUB_OFFLINE') == '1' or os.environ.get('HF_DATASETS_OFFLINE') == '1':
        raise UserError(f"{what} is not cached and offline mode is on: {instead}")
    if int(os.environ.get('RANK', 0)) == 0:
        print(f"downloading {what} to {dest}", flush=True)
    rows = hubdata.load_dataset(spec.path, spec.config, split=split, what=what, instead=instead).to_list()
    os.makedirs(folder, exist_ok=True)
    with atomic_path(f"{dest}.{os.getpid()}") as tmp:  # (under torchrun every rank writes a whole file of its own)
        with open(tmp, 'w', encoding='utf-8') as f:
            f.writelines(json.dumps(r, ensure_ascii=False, default=str) + '\n' for r in rows)
    os.replace(f"{dest}.{os.getpid()}", dest)
    return rows
