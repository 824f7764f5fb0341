"""
SFT data for train.py: conversations from local .jsonl files or a hub dataset, in gpt/chat.py's chat template
(<|user|>...<|assistant|>...<|end|>), written as masked examples (loss on the assistant's tokens only) with the
chat tokens added after the tokenizer's ids. Rows are {"prompt": ..., "response": ...} or {"messages": [{"role":
"user", "content": ...}, {"role": "assistant", "content": ...}, ...]} (see gpt/prefs.py).

$ python data/chat/prepare.py --train sft_train.jsonl --val sft_val.jsonl --tokenizer gpt2 --block_size 1024 \\
      --out_dir data/mychat
$ python train.py --init_from=gpt2 --dataset=mychat --block_size=1024 --learning_rate=2e-5 --max_iters=1000 \\
      --warmup_iters=20 --out_dir=out-sft-gpt2
A hub dataset: --train hf:name[:config[:split]] (and --val likewise). A character-level model's tokenizer:
--tokenizer data/shakespeare_char (a prepared dataset's folder, whose meta.json holds it).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # to import data/prepare_utils.py
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # the repo root: the gpt package
from prepare_utils import get_parser  # noqa: E402


def main():
    parser = get_parser(__doc__, __file__)
    parser.add_argument("--train", required=True, help="SFT data: a .jsonl file or hf:name[:config[:split]]")
    parser.add_argument("--val", required=True, help="held-out SFT data, the same way")
    parser.add_argument("--tokenizer", default="gpt2", help="'gpt2', or a prepared dataset's folder (its meta.json)")
    parser.add_argument("--block_size", type=int, default=1024, help="the context of the model SFT will train")
    args = parser.parse_args()
    from gpt import prefs
    from gpt.errors import UserError
    if args.tokenizer == 'gpt2':
        meta = dict(tokenizer='gpt2', vocab_size=50257)
    else:
        path = Path(args.tokenizer) / 'meta.json'
        if not path.is_file():
            raise SystemExit(f"error: {path} not found: --tokenizer takes 'gpt2' or a prepared dataset's folder")
        meta = json.loads(path.read_text(encoding='utf-8'))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        prefs.write_chat_examples(args.out_dir, {'train': args.train, 'val': args.val}, meta, args.block_size,
                                  extra=dict(source=f"{args.train}, {args.val}"))
    except UserError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
