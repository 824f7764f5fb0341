"""
minGPT's adder as token data: a + b with n-digit numbers (zero-padded), the sum written with n + 1
digits in reverse, lowest digit first, as minGPT does: the model then produces the digits in the
order a person adds them, each with its carry already known. 2-digit 47 + 85 = 132 is the 7 tokens
4785 231. The loss is taken on the sum only (the masked-example format, data/prepare_utils.py).
As minGPT: all 10^(2n) problems (n = 2: 10,000), 500 of them (at most 20%) held out as val and
never trained on; beyond max_problems a random sample of distinct problems is used.

$ python data/adder/prepare.py                          # writes train.bin, val.bin, *.mask.bin, meta.json
$ python data/adder/prepare.py --ndigit=3 --out_dir=data/adder3
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # to import data/prepare_utils.py
from prepare_utils import distinct_sequences, get_parser, write_examples


def digits(x, n):
    """(N,) ints -> (N, n) their n decimal digits, most significant first."""
    return (x[:, None] // 10 ** np.arange(n - 1, -1, -1)) % 10


def make_examples(problems, ndigit):
    """(tokens, mask) for (N, 2 * ndigit) problems (the digits of a then of b): each row is a's and b's
    digits then the sum's ndigit + 1 digits reversed, mask 1 on the sum."""
    powers = 10 ** np.arange(ndigit - 1, -1, -1)
    a, b = problems[:, :ndigit] @ powers, problems[:, ndigit:] @ powers
    tokens = np.concatenate([problems, digits(a + b, ndigit + 1)[:, ::-1]], axis=1)
    mask = np.zeros_like(tokens, dtype=np.uint8)
    mask[:, 2 * ndigit:] = 1
    return tokens, mask


def main():
    parser = get_parser(__doc__, __file__)
    parser.add_argument("--ndigit", type=int, default=2, help="digits of each number (default: %(default)s)")
    parser.add_argument("--num_val", type=int, default=500,
                        help="problems held out, at most 20%% of them (default: %(default)s)")
    parser.add_argument("--max_problems", type=int, default=1_000_000,
                        help="sample this many distinct problems when there are more (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1337, help="which problems are held out (default: %(default)s)")
    args = parser.parse_args()
    if args.ndigit < 1 or args.num_val < 1:
        parser.error("need ndigit >= 1 and num_val >= 1")

    rng = np.random.default_rng(args.seed)
    # a problem is the 2n digits of a and b: distinct digit strings are distinct problems
    problems = distinct_sequences(rng, 10, 2 * args.ndigit, args.max_problems)
    n_val = max(1, min(args.num_val, int(len(problems) * 0.2)))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_examples(args.out_dir, {"train": make_examples(problems[n_val:], args.ndigit),
                                  "val": make_examples(problems[:n_val], args.ndigit)},
                   vocab_size=10, tokenizer="char", chars="0123456789", task="adder", ndigit=args.ndigit,
                   seed=args.seed)


if __name__ == "__main__":
    main()
