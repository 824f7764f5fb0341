"""
Tiny Shakespeare with the GPT-2 BPE tokenizer (tiktoken "gpt2", vocab 50257).
Writes train.bin and val.bin (uint16 token ids) and meta.json beside this script.

Run from the repo root:
$ python data/shakespeare/prepare.py                        # downloads input.txt
$ python data/shakespeare/prepare.py --input path/to/input.txt   # offline
(tiktoken downloads its BPE files once; set TIKTOKEN_CACHE_DIR to a folder holding them to stay offline)
"""

import sys
from pathlib import Path

import tiktoken

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # to import data/prepare_utils.py
from prepare_utils import TINY_SHAKESPEARE_URL, get_input_text, get_parser, write_splits


def main():
    args = get_parser(__doc__, __file__, url=TINY_SHAKESPEARE_URL).parse_args()
    text, source = get_input_text(args)
    print(f"length of dataset in characters: {len(text):,}")

    # split the text (not the tokens) 90/10, then tokenize each part;
    # encode_ordinary: special-token strings in the text are plain text, never <|endoftext|>
    n = int(0.9 * len(text))
    enc = tiktoken.get_encoding("gpt2")
    splits = {"train": enc.encode_ordinary(text[:n]), "val": enc.encode_ordinary(text[n:])}
    write_splits(args.out_dir, splits, vocab_size=enc.n_vocab, tokenizer="gpt2", source=source)


if __name__ == "__main__":
    main()
