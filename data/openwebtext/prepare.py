"""
OpenWebText (or any text dataset) tokenized with the GPT-2 BPE (tiktoken "gpt2", vocab 50257),
one <|endoftext|> token after each document. Writes train.bin and val.bin (uint16 token ids)
and meta.json beside this script.

Run from the repo root:
$ python data/openwebtext/prepare.py                                  # Skylion007/openwebtext from the hub
$ python data/openwebtext/prepare.py --dataset NAME --text_column text   # another hub dataset
$ python data/openwebtext/prepare.py --data_files a.jsonl b.jsonl        # local files, offline
Local files: .json/.jsonl (one document per record, in --text_column), .parquet (the same),
.txt (one document per file by default, see --sample_by).
For OpenWebText expect ~9B train tokens (train.bin ~17GB) and ~4M val tokens (val.bin ~8.5MB),
tens of GB of Hugging Face cache, and hours of tokenizing: give it all the cores you can spare.
"""

import os
import sys
from pathlib import Path

import datasets
import numpy as np
import tiktoken
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # to import data/prepare_utils.py
from prepare_utils import get_parser, write_meta, write_tokens

# datasets' builder for each kind of local file
BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def tokenize(batch, text_column):
    # runs in the num_proc worker processes; get_encoding is cached per process
    enc = tiktoken.get_encoding("gpt2")
    # encode_ordinary ignores special tokens in the text, then <|endoftext|> (50256) ends each document
    ids = [enc.encode_ordinary(text) + [enc.eot_token] for text in batch[text_column]]
    return {"ids": ids, "len": [len(x) for x in ids]}


def load(args):
    if args.data_files:
        missing = [f for f in args.data_files if not f.is_file()]
        if missing:
            raise SystemExit(f"error: --data_files: no such file: {', '.join(map(str, missing))}")
        builders = {BUILDERS.get(f.suffix.lower()) for f in args.data_files}
        if None in builders or len(builders) > 1:
            raise SystemExit("error: --data_files must all be .txt, all .json/.jsonl or all .parquet files")
        builder = builders.pop()
        kwargs = {"sample_by": args.sample_by} if builder == "text" else {}
        files = [str(f.resolve()) for f in args.data_files]
        return datasets.load_dataset(builder, data_files=files, split="train", **kwargs), ", ".join(files)
    try:
        dataset = datasets.load_dataset(args.dataset, split="train", num_proc=args.num_proc)
    except OSError as e:  # ConnectionError when offline, FileNotFoundError for an unknown name
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SystemExit(f"error: could not load dataset {args.dataset!r} from the Hugging Face hub ({reason}); "
                         f"pass --data_files FILE [FILE ...] to use local .txt/.json/.jsonl/.parquet files")
    return dataset, args.dataset


def main():
    parser = get_parser(__doc__, __file__)
    parser.add_argument("--dataset", default="Skylion007/openwebtext", help="Hugging Face hub dataset name")
    parser.add_argument("--data_files", type=Path, nargs="+", help="local .txt/.json/.jsonl/.parquet files instead of --dataset")
    parser.add_argument("--text_column", default="text", help="column holding each document's text")
    parser.add_argument("--sample_by", default="document", choices=["document", "paragraph", "line"],
                        help=".txt files only: what one document is (default: the whole file)")
    parser.add_argument("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="worker processes for loading and tokenizing (default: %(default)s)")
    parser.add_argument("--val_fraction", type=float, default=0.0005, help="fraction of documents held out for val")
    parser.add_argument("--seed", type=int, default=2357, help="seed of the train/val shuffle")
    args = parser.parse_args()
    if not 0 < args.val_fraction < 1:
        parser.error("--val_fraction must be between 0 and 1")
    if args.num_proc < 1:
        parser.error("--num_proc must be at least 1")
    args.out_dir.mkdir(parents=True, exist_ok=True)

    dataset, source = load(args)
    if args.text_column not in dataset.column_names:
        raise SystemExit(f"error: no column {args.text_column!r} in the dataset (columns: {dataset.column_names}); "
                         f"pass --text_column")

    # hold out a random val_fraction of the documents (at least one)
    split = dataset.train_test_split(test_size=args.val_fraction, seed=args.seed, shuffle=True)
    split["val"] = split.pop("test")
    print(split)

    # tokenize in parallel; datasets caches the result, so a rerun skips this step.
    # uint16 ids take a quarter of the cache space int64 would.
    features = datasets.Features({"ids": datasets.Sequence(datasets.Value("uint16")), "len": datasets.Value("int64")})
    tokenized = split.map(tokenize, batched=True, fn_kwargs={"text_column": args.text_column},
                          remove_columns=dataset.column_names, features=features,
                          num_proc=args.num_proc, desc="tokenizing")

    # write each split into one flat file, a batch of documents at a time, so memory stays flat
    num_tokens = {}
    batch_size = 1024
    for name, dset in tokenized.items():
        num_tokens[name] = int(np.sum(dset.with_format("numpy")["len"]))
        batches = dset.with_format("numpy").iter(batch_size=batch_size)
        chunks = (np.concatenate(batch["ids"]) for batch in
                  tqdm(batches, total=-(-len(dset) // batch_size), desc=f"writing {name}.bin"))
        write_tokens(args.out_dir / f"{name}.bin", chunks, np.uint16, num_tokens=num_tokens[name])
        print(f"{name} has {num_tokens[name]:,} tokens")

    write_meta(args.out_dir, tokenizer="gpt2", vocab_size=tiktoken.get_encoding("gpt2").n_vocab, dtype="uint16",
               train_tokens=num_tokens["train"], val_tokens=num_tokens["val"], source=source)
    print(f"wrote train.bin, val.bin, meta.json to {args.out_dir}")


if __name__ == "__main__":
    main()
