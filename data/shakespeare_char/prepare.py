"""
Character-level Tiny Shakespeare: each character is one token (65 of them).
Writes train.bin and val.bin (uint16 token ids) and meta.json (with the vocabulary
`chars`, id i = chars[i]) beside this script.

Run from the repo root:
$ python data/shakespeare_char/prepare.py                        # downloads input.txt
$ python data/shakespeare_char/prepare.py --input path/to/input.txt   # offline
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # to import data/prepare_utils.py
from prepare_utils import get_input_text, get_parser, write_meta, write_tokens

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def main():
    args = get_parser(__doc__, __file__, url=URL).parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    text, source = get_input_text(args)
    print(f"length of dataset in characters: {len(text):,}")

    # the vocabulary is every character that occurs in the text, sorted
    chars = "".join(sorted(set(text)))
    print(f"vocab size: {len(chars)}")
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([stoi[ch] for ch in text], dtype=np.uint16)

    # first 90% of the text is train, the last 10% val
    n = int(0.9 * len(ids))
    train_ids, val_ids = ids[:n], ids[n:]
    print(f"train has {len(train_ids):,} tokens, val has {len(val_ids):,} tokens")
    write_tokens(args.out_dir / "train.bin", train_ids, np.uint16)
    write_tokens(args.out_dir / "val.bin", val_ids, np.uint16)
    write_meta(args.out_dir, tokenizer="char", vocab_size=len(chars), dtype="uint16",
               train_tokens=len(train_ids), val_tokens=len(val_ids), source=source, chars=chars)
    print(f"wrote train.bin, val.bin, meta.json to {args.out_dir}")


if __name__ == "__main__":
    main()
