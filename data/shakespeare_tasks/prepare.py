"""
Three fine-tuning tasks made from Tiny Shakespeare, for GPT-1's recipe on a CPU (finetune.py), with nothing
to download beyond the corpus itself. Each is a jsonl file pair (train, val) beside this script:
- next_line (multiple choice): a line and four candidates for the line that follows it in the same speech;
  one is the real next line, three are lines from elsewhere. Chance: 25%.
- follows (entailment): does line b follow line a in the same speech? Half yes, half no.
- speaker (classification): which of 4 speakers says this line (those with the most lines in both splits).
- scrambled (classification): is this line of the play real, or are the letters inside its words shuffled?
  Every line with a word whose inside (all but its first and last character; words split on single spaces)
  holds two different characters is one example; about half are scrambled: each word's inside shuffled, the
  line differing from the real one. A scrambled line keeps the real line's characters, length, word lengths
  and the first and last character of every word (capitals, punctuation), so only spelling tells it apart.
  (Shuffling whole words was tried first, and there a model without pre-training beat the pretrained one at
  250 steps, 0.874 to 0.851: surface cues such as a line's first-word capital and final punctuation, which
  shuffled words move, were probably enough.) Lines are at most 63 characters.
Train examples come from the first 90% of the text and validation ones from the last 10%: the split
data/shakespeare_char/prepare.py makes, so a model pretrained on its train.bin never saw a validation line.

$ python data/shakespeare_tasks/prepare.py                     # downloads input.txt
$ python data/shakespeare_tasks/prepare.py --input path/to/input.txt
"""

import json
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # to import data/prepare_utils.py
from prepare_utils import TINY_SHAKESPEARE_URL, atomic_path, get_input_text, get_parser


def speeches(text):
    """(speaker, [lines]) for every speech: a 'NAME:' line, then its lines, up to a blank line."""
    out = []
    for block in text.split('\n\n'):
        lines = [line for line in block.split('\n') if line.strip()]
        if len(lines) >= 2 and lines[0].endswith(':'):
            out.append((lines[0][:-1], lines[1:]))
    return out


def scrambles(line):
    """Whether scramble() can change the line: some word's inside holds two different characters."""
    return any(len(set(word[1:-1])) >= 2 for word in line.split(' '))


def scramble(line, rng):
    """The line with the inside of each word (all but its first and last character) shuffled, differing from it."""
    if not scrambles(line):
        raise ValueError(f"nothing to shuffle in {line!r}")
    out = line
    while out == line:
        words = []
        for word in line.split(' '):
            inside = list(word[1:-1])
            rng.shuffle(inside)
            words.append(word[:1] + ''.join(inside) + word[1:][-1:])
        out = ' '.join(words)
    return out


def make(part, rng, top_speakers, scramble_rng):
    lines = [line for _, ls in part for line in ls]
    pairs = [(a, b) for _, ls in part for a, b in zip(ls, ls[1:])]
    next_line = []
    for a, b in pairs:
        answers = [b] + rng.sample(lines, 3)
        rng.shuffle(answers)
        next_line.append(dict(context=a, answer0=answers[0], answer1=answers[1], answer2=answers[2],
                              answer3=answers[3], label=answers.index(b)))
    follows = [dict(a=a, b=b if rng.random() < 0.5 else rng.choice(lines)) for a, b in pairs]
    for ex, (_, b) in zip(follows, pairs):
        ex['label'] = 'yes' if ex['b'] == b else 'no'
    speaker = [dict(text=line, label=who) for who, ls in part if who in top_speakers for line in ls]
    scrambled = []
    for line in lines:
        if scrambles(line):
            fake = scramble_rng.random() < 0.5
            scrambled.append(dict(text=scramble(line, scramble_rng) if fake else line,
                                  label='scrambled' if fake else 'real'))
    return dict(next_line=next_line, follows=follows, speaker=speaker, scrambled=scrambled)


def main():
    parser = get_parser(__doc__, __file__, url=TINY_SHAKESPEARE_URL)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    text, source = get_input_text(args)
    n = int(0.9 * len(text))  # the char-level split
    train, val = speeches(text[:n]), speeches(text[n:])
    lines_by = [Counter(who for who, ls in part for _ in ls) for part in (train, val)]
    top = set(sorted(lines_by[0], key=lambda who: -min(lines_by[0][who], lines_by[1][who]))[:4])
    rng = random.Random(args.seed)
    scramble_rng = random.Random(f"scrambled {args.seed}")  # its own: the other tasks' files stay as they were
    for split, part in (('train', train), ('val', val)):
        for task, examples in make(part, rng, top, scramble_rng).items():
            path = args.out_dir / f"{task}_{split}.jsonl"
            with atomic_path(path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
                for ex in examples:
                    f.write(json.dumps(ex) + '\n')
            print(f"{path}: {len(examples):,} examples")
    print(f"speakers: {', '.join(sorted(top))}; source {source}")


if __name__ == "__main__":
    main()
