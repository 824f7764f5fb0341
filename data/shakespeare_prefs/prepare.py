"""
Instruction-following data made from Tiny Shakespeare, for the offline SFT -> reward model -> PPO / DPO demo on a
CPU (docs/alignment.md), with nothing to download beyond the corpus itself. Beside this script it writes:
- sft_train.jsonl, sft_val.jsonl: {"prompt", "response"}: the prompt is the start of a line (at most 20
  characters, cut at a space), the response the next line of the same speech (at most 32, cut at a space);
- train.bin, val.bin, *.mask.bin, meta.json: the same conversations as masked examples in the chat template
  (loss on the response only), with the character vocabulary of data/shakespeare_char and the chat tokens
  added after it (ids 65, 66, 67), for `python train.py config/sft_shakespeare.py`;
- prefs_train.jsonl, prefs_val.jsonl: {"prompt", "responses", "scores"}: each prompt with K = 4 candidate
  responses (the real next line and three lines from elsewhere, cut the same way), best first.

The rule a reader can check: the preferred response uses the letter e less. score = -(number of 'e' and 'E') /
(number of letters), higher is better; groups whose scores would tie are drawn again. A small character model
can learn it (the reward model reads the share of e's off its response; the policy learns to avoid them).
Train examples come from the first 90% of the text and validation ones from the last 10%, the split
data/shakespeare_char/prepare.py makes.

$ python data/shakespeare_prefs/prepare.py                     # downloads input.txt
$ python data/shakespeare_prefs/prepare.py --input path/to/input.txt
"""

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # to import data/prepare_utils.py
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # the repo root: the gpt package
from prepare_utils import TINY_SHAKESPEARE_URL, atomic_path, get_input_text, get_parser

K = 4
PROMPT_CHARS, RESPONSE_CHARS = 20, 32


def cut(line, n):
    """The line's first words, at most n characters."""
    line = line.strip()
    if len(line) <= n:
        return line
    return line[:n + 1].rsplit(' ', 1)[0] if ' ' in line[:n + 1] else line[:n]


def e_score(text):
    """The rule: minus the share of the letters that are e or E (higher is better)."""
    letters = sum(c.isalpha() for c in text)
    return -round(sum(c in 'eE' for c in text) / max(1, letters), 4)


def speech_lines(text):
    """[lines] of every speech: a 'NAME:' line, then its lines, up to a blank line."""
    out = []
    for block in text.split('\n\n'):
        lines = [line for line in block.split('\n') if line.strip()]
        if len(lines) >= 3 and lines[0].endswith(':'):
            out.append(lines[1:])
    return out


def make(part, rng, groups):
    pairs = [(cut(a, PROMPT_CHARS), cut(b, RESPONSE_CHARS)) for ls in part for a, b in zip(ls, ls[1:])]
    pairs = [(p, r) for p, r in pairs if len(p) >= 8 and sum(c.isalpha() for c in r) >= 8]
    sft = [dict(prompt=p, response=r) for p, r in pairs]
    responses = sorted({r for _, r in pairs})
    prefs = []
    for p, r in rng.sample(pairs, min(groups, len(pairs))):
        while True:  # the real next line and K - 1 others, with K different scores
            cands = [r] + rng.sample(responses, K - 1)
            scores = [e_score(c) for c in cands]
            if len(set(scores)) == K and len(set(cands)) == K:
                break
        ranked = sorted(zip(scores, cands), key=lambda sc: -sc[0])
        prefs.append(dict(prompt=p, responses=[c for _, c in ranked], scores=[s for s, _ in ranked]))
    return sft, prefs


def write_jsonl(path, rows):
    with atomic_path(path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
        for row in rows:
            f.write(json.dumps(row) + '\n')
    print(f"{path}: {len(rows):,} rows")


def main():
    parser = get_parser(__doc__, __file__, url=TINY_SHAKESPEARE_URL)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--groups", type=int, default=4000, help="ranked groups of K=4 for training (val: a tenth)")
    parser.add_argument("--block_size", type=int, default=64, help="the context of the model SFT will train")
    args = parser.parse_args()
    text, source = get_input_text(args)
    chars = "".join(sorted(set(text)))  # data/shakespeare_char's vocabulary
    n = int(0.9 * len(text))
    rng = random.Random(args.seed)
    for split, part, groups in (('train', text[:n], args.groups), ('val', text[n:], args.groups // 10)):
        sft, prefs = make(speech_lines(part), rng, groups)
        write_jsonl(args.out_dir / f"sft_{split}.jsonl", sft)
        write_jsonl(args.out_dir / f"prefs_{split}.jsonl", prefs)
    from gpt import prefs
    prefs.write_chat_examples(args.out_dir, {s: str(args.out_dir / f"sft_{s}.jsonl") for s in ('train', 'val')},
                              dict(tokenizer='char', chars=chars, vocab_size=len(chars)), args.block_size,
                              extra=dict(source=source))


if __name__ == "__main__":
    main()
