"""
minGPT's sorting demo as token data: a sequence of `length` symbols from `num_digits`, then the same
symbols sorted; e.g. 2 0 1 0 2 1 -> 0 0 1 1 2 2, the 12 tokens 201021001122. The loss is taken on the
sorted half only (the masked-example format, data/prepare_utils.py), so the model learns to sort,
not to guess random input. minGPT's setting: length 6 over 3 symbols, 3^6 = 729 possible problems,
a quarter of them held out (val), the rest trained on; no val problem is a training problem.

$ python data/sort/prepare.py                          # writes train.bin, val.bin, *.mask.bin, meta.json
$ python data/sort/prepare.py --length=8 --num_digits=4 --out_dir=data/sort8
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # to import data/prepare_utils.py
from prepare_utils import distinct_sequences, get_parser, write_examples


def make_examples(problems):
    """(tokens, mask) for (N, length) problems: each row is the problem then its sorted symbols,
    mask 1 on the sorted half."""
    tokens = np.concatenate([problems, np.sort(problems, axis=1)], axis=1)
    mask = np.zeros_like(tokens, dtype=np.uint8)
    mask[:, problems.shape[1]:] = 1
    return tokens, mask


def main():
    parser = get_parser(__doc__, __file__)
    parser.add_argument("--length", type=int, default=6, help="symbols per sequence (default: %(default)s)")
    parser.add_argument("--num_digits", type=int, default=3, help="different symbols, <= 10 (default: %(default)s)")
    parser.add_argument("--val_fraction", type=float, default=0.25, help="problems held out (default: %(default)s)")
    parser.add_argument("--max_problems", type=int, default=200_000,
                        help="sample this many distinct problems when there are more (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1337, help="which problems are held out (default: %(default)s)")
    args = parser.parse_args()
    if not (1 <= args.num_digits <= 10 and args.length >= 2 and 0 < args.val_fraction < 1):
        parser.error("need 1 <= num_digits <= 10, length >= 2 and 0 < val_fraction < 1")

    rng = np.random.default_rng(args.seed)
    problems = distinct_sequences(rng, args.num_digits, args.length, args.max_problems)
    n_val = max(1, int(len(problems) * args.val_fraction))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # one token per symbol, written as its digit: sample.py can show the sequences as text
    write_examples(args.out_dir, {"train": make_examples(problems[n_val:]), "val": make_examples(problems[:n_val])},
                   vocab_size=args.num_digits, tokenizer="char", chars="0123456789"[:args.num_digits],
                   task="sort", length=args.length, num_digits=args.num_digits, seed=args.seed)


if __name__ == "__main__":
    main()
