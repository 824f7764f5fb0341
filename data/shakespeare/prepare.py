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

import numpy as np
import tiktoken

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # to import data/prepare_utils.py
from prepare_utils import get_input_text, get_parser, write_meta, write_tokens

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def main():
    args = get_parser(__doc__, __file__, url=URL).parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    text, source = get_input_text(args)
    print(f"length of dataset in characters: {len(text):,}")

    # split the text (not the tokens) 90/10, then tokenize each part;
    # encode_ordinary: special-token strings in the text are plain text, never <|endoftext|>
    n = int(0.9 * len(text))
    enc = tiktoken.get_encoding("gpt2")
    train_ids = np.array(enc.encode_ordinary(text[:n]), dtype=np.uint16)
    val_ids = np.array(enc.encode_ordinary(text[n:]), dtype=np.uint16)
    print(f"train has {len(train_ids):,} tokens, val has {len(val_ids):,} tokens")
    write_tokens(args.out_dir / "train.bin", train_ids, np.uint16)
    write_tokens(args.out_dir / "val.bin", val_ids, np.uint16)
    write_meta(args.out_dir, tokenizer="gpt2", vocab_size=enc.n_vocab, dtype="uint16",
               train_tokens=len(train_ids), val_tokens=len(val_ids), source=source)
    print(f"wrote train.bin, val.bin, meta.json to {args.out_dir}")


if __name__ == "__main__":
    main()
