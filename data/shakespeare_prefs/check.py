"""
The demo's rule measured directly, without the reward model: each policy answers the held-out prompts of
prefs_val.jsonl (temperature 1, one response each, the same random seed for every policy) and the share of its
letters that are e or E is printed (lower is what the preferences ask for), with the mean response length.

$ python data/shakespeare_prefs/check.py out-sft-shakespeare out-ppo-shakespeare out-dpo-shakespeare
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # the repo root
from gpt import chat
from gpt import prefs
from gpt import rl  # noqa: E402
from gpt.tokendata import get_tokenizer, seed_from# noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dirs", nargs='+', help="policies: SFT, PPO or DPO runs' out_dir")
    parser.add_argument("--prompts", default=str(Path(__file__).resolve().parent / 'prefs_val.jsonl'))
    parser.add_argument("--max_new_tokens", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    for out_dir in args.out_dirs:
        model, meta = rl.load_policy(out_dir)
        model.eval()
        encode, decode, _ = get_tokenizer(meta)
        end = chat.special_ids(meta)[2]
        prompts = [chat.encode_prompt(encode, meta, p) for p in prefs.read_prompts(args.prompts)]
        g = torch.Generator().manual_seed(seed_from(args.seed, 'check'))
        responses = rl.sample_responses(model, prompts, args.max_new_tokens, end, 1.0, g)  # (one batch)
        texts = [decode([t for t in r if t != end]) for r in responses]
        letters = sum(c.isalpha() for t in texts for c in t)
        es = sum(c in 'eE' for t in texts for c in t)
        print(f"{out_dir}: e share {es / max(1, letters):.4f} of {letters:,} letters in {len(texts)} responses, "
              f"mean length {sum(map(len, texts)) / len(texts):.1f} characters; e.g. {texts[0]!r}")


if __name__ == "__main__":
    main()
