"""
FineWeb-Edu or FineWeb (Hugging Face's filtered Common Crawl: the corpus llm.c's GPT-2 124M, modded-nanogpt's
speedrun and nanochat train on) in the GPT-2 BPE, one <|endoftext|> after each document, as a sharded dataset
beside this script: train_000000.bin, ... and val_000000.bin, ... (uint16 ids, --shard_tokens each, 100M as llm.c
and modded-nanogpt cut them) listed in meta.json, which the loader checks. Streamed from the hub: nothing is
downloaded whole or cached tokenized first, and the first shards can be trained on while the rest are written.

Run from the repo root:
$ python data/fineweb/prepare.py                                  # FineWeb-Edu sample-10BT: ~10B tokens, ~20 GB
$ python data/fineweb/prepare.py --dataset fineweb --sample sample-100BT --out_dir data/fineweb100B
$ python data/fineweb/prepare.py --max_tokens 1B                   # the first 1B train tokens only (~2 GB)
$ python data/fineweb/prepare.py --data_files a.parquet b.parquet  # local parquet in FineWeb's schema, offline
val is the first documents of the stream, at least --val_tokens (100M) of them, the same on every run; train is
every token after. Killed at any moment (Ctrl-C, SIGKILL, a full disk, a lost connection), the same command again
continues after the last complete shard and ends with the shards an uninterrupted run writes, byte for byte.
Disk and time for each sample: docs/data_and_export.md.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # to import data/prepare_utils.py
from prepare_utils import get_parser  # noqa: E402

from gpt import corpus  # noqa: E402  (prepare_utils put the repo root on the path)

DATASETS = {'fineweb-edu': 'HuggingFaceFW/fineweb-edu', 'fineweb': 'HuggingFaceFW/fineweb'}
# GPT-2 tokens of each sample, as the dataset cards give them (their token_count column is GPT-2's): the disk and
# ETA before the first shard; other configs (a single dump such as CC-MAIN-2024-10) print as unknown
SAMPLE_TOKENS = {'sample-10BT': 10_000_000_000, 'sample-100BT': 100_000_000_000, 'sample-350BT': 350_000_000_000}


def main():
    parser = get_parser(__doc__, __file__)
    parser.add_argument("--dataset", default="fineweb-edu",
                        help="fineweb-edu, fineweb, or any hub dataset name (default: %(default)s)")
    parser.add_argument("--sample", default=None,
                        help="the dataset's config: sample-10BT (FineWeb's default here), sample-100BT, "
                             "sample-350BT, a dump such as CC-MAIN-2024-10, or default (all of it)")
    parser.add_argument("--data_files", type=Path, nargs="+",
                        help="local .parquet (or .jsonl/.txt) files instead of the hub, read in the order given")
    parser.add_argument("--text_column", default="text", help="column holding each document's text")
    parser.add_argument("--num_proc", type=int, default=max(1, os.cpu_count() or 1),
                        help="processes tokenizing (default: every core, %(default)s)")
    parser.add_argument("--shard_tokens", type=corpus.parse_count, default=100_000_000,
                        help="tokens a shard, e.g. 100M (default: %(default)s)")
    parser.add_argument("--val_tokens", type=corpus.parse_count, default=100_000_000,
                        help="val: the first documents, at least this many tokens (default: %(default)s)")
    parser.add_argument("--max_tokens", type=corpus.parse_count, default=None,
                        help="train tokens to write, e.g. 1B: a prefix of the corpus (default: all)")
    args = parser.parse_args()
    if args.data_files:
        load, source, estimate = corpus.local_source(args.data_files, args.text_column)
    else:
        name = DATASETS.get(args.dataset, args.dataset)
        sample = args.sample or ('sample-10BT' if name in DATASETS.values() else None)
        load, source = corpus.hub_source(name, sample)
        estimate = SAMPLE_TOKENS.get(sample) if name in DATASETS.values() else None
    corpus.prepare(args.out_dir, load, source, text_column=args.text_column, num_proc=args.num_proc,
                   shard_tokens=args.shard_tokens, val_tokens=args.val_tokens, max_tokens=args.max_tokens,
                   overwrite=args.overwrite, estimate=estimate)


if __name__ == "__main__":
    main()
