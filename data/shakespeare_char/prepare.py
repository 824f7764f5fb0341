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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # to import data/prepare_utils.py
from prepare_utils import TINY_SHAKESPEARE_URL, get_input_text, get_parser, write_splits


def main():
    args = get_parser(__doc__, __file__, url=TINY_SHAKESPEARE_URL).parse_args()
    text, source = get_input_text(args)
    print(f"length of dataset in characters: {len(text):,}")

    # the vocabulary is every character that occurs in the text, sorted
    chars = "".join(sorted(set(text)))
    print(f"vocab size: {len(chars)}")
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = [stoi[ch] for ch in text]

    # first 90% of the text is train, the last 10% val
    n = int(0.9 * len(ids))
    write_splits(args.out_dir, {"train": ids[:n], "val": ids[n:]}, vocab_size=len(chars), tokenizer="char",
                 source=source, chars=chars)


if __name__ == "__main__":
    main()
