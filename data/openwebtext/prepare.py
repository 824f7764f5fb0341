"""
OpenWebText (or any text dataset) in the GPT-2 BPE (tiktoken "gpt2", vocab 50257), one <|endoftext|> after each
document, as a sharded dataset beside this script: train_000000.bin, ... and val_000000.bin, ... (uint16 ids,
--shard_tokens each) listed in meta.json, which the loader checks. Streamed: nothing is downloaded whole or cached
tokenized first. Skylion007/openwebtext ships a loading script, which datasets>=4 no longer runs: its parquet
conversion on the hub (refs/convert/parquet) is read instead (gpt/hubdata.py).

Run from the repo root:
$ python data/openwebtext/prepare.py                                     # Skylion007/openwebtext from the hub
$ python data/openwebtext/prepare.py --dataset NAME --text_column text   # another hub dataset
$ python data/openwebtext/prepare.py --data_files a.jsonl b.jsonl        # local files, offline
Local files: .json/.jsonl (one document per record, in --text_column), .parquet (the same),
.txt (one document per file by default, see --sample_by).
For OpenWebText expect ~9B train tokens (~18 GB of shards) and the first ~5M tokens as val (--val_tokens), ~13 GB
streamed from the hub, and an hour or more of tokenizing: give it all the cores you can spare. Killed at any moment,
the same command again continues after the last complete shard, with the same result as a run never stopped.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # to import data/prepare_utils.py
from prepare_utils import get_parser  # noqa: E402

from gpt import corpus  # noqa: E402  (prepare_utils put the repo root on the path)

OPENWEBTEXT_TOKENS = 9_040_000_000  # GPT-2 tokens of Skylion007/openwebtext (nanoGPT's train.bin: 9,035,582,198)


def main():
    parser = get_parser(__doc__, __file__)
    parser.add_argument("--dataset", default="Skylion007/openwebtext", help="Hugging Face hub dataset name")
    parser.add_argument("--config", default=None, help="the hub dataset's config, if it has several")
    parser.add_argument("--data_files", type=Path, nargs="+",
                        help="local .txt/.json/.jsonl/.parquet files instead of --dataset")
    parser.add_argument("--text_column", default="text", help="column holding each document's text")
    parser.add_argument("--sample_by", default="document", choices=["document", "paragraph", "line"],
                        help=".txt files only: what one document is (default: the whole file)")
    parser.add_argument("--num_proc", type=int, default=max(1, os.cpu_count() or 1),
                        help="processes tokenizing (default: every core, %(default)s)")
    parser.add_argument("--shard_tokens", type=corpus.parse_count, default=100_000_000,
                        help="tokens a shard, e.g. 100M (default: %(default)s)")
    parser.add_argument("--val_tokens", type=corpus.parse_count, default=5_000_000,
                        help="val: the first documents, at least this many tokens (default: %(default)s, about "
                             "nanoGPT's 0.05%% of the documents)")
    parser.add_argument("--max_tokens", type=corpus.parse_count, default=None,
                        help="train tokens to write, e.g. 1B: a prefix of the corpus (default: all)")
    args = parser.parse_args()
    if args.data_files:
        load, source, estimate = corpus.local_source(args.data_files, args.text_column, args.sample_by)
    else:
        load, source = corpus.hub_source(args.dataset, args.config)
        estimate = OPENWEBTEXT_TOKENS if args.dataset == "Skylion007/openwebtext" else None
    corpus.prepare(args.out_dir, load, source, text_column=args.text_column, num_proc=args.num_proc,
                   shard_tokens=args.shard_tokens, val_tokens=args.val_tokens, max_tokens=args.max_tokens,
                   overwrite=args.overwrite, estimate=estimate)


if __name__ == "__main__":
    main()
