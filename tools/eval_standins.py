"""
Stand-in datasets for timing the evaluation suite (bench.py --mode=eval) on machines with no real benchmark data:
DIR/<task>/<split>.jsonl for the twelve tasks of tests/harness_data.py, in the same row schema as the hub datasets
lm-evaluation-harness reads, but with many rows and texts as long as the real ones. The words are Tiny Shakespeare
drawn at random: this is not real data, and scores on it mean nothing; only the timings do.

$ python tools/eval_standins.py --out=data/eval-standin --rows=200 --fewshot_rows=50 --seed=0

Each task gets its evaluated split (--rows rows) and its few-shot split, train (--fewshot_rows rows); lambada_openai
has only test. Target lengths in words, each row varied by +-30% (about the real datasets' averages):
    hellaswag   ctx_a 30, ctx_b 4, 4 endings 18, activity_label 2-3  lambada_openai  text 75
    arc_*       question 20, 3-5 choices 4 (labels A-E or "1"-"4")     piqa      goal 9, sol1/sol2 20
    winogrande  sentence 20 with one '_', options 1-2                  openbookqa question_stem 11, 4 choices 3
    boolq       passage 100, question 8                                copa      premise 8, choices 6
    sciq        support 80 (some empty), question 14, answers 1-3      triviaqa  question 15, answer 1-3 (+2-4 aliases)
    gsm8k       question 45, answer 50 ending "\\n#### <integer>"
"""
import argparse
import json
import pathlib
import random
import re

CORPUS = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'tinyshakespeare' / 'input.txt'
FALLBACK = ("the of and to a in that is was he for it with as his on be at by i this had not are but from or have an "
            "they which one you were her all she there would their we him been has when who will more no if out so "
            "said what up its about into than them can only other new some could time these two may then do first "
            "any my now such like our over man me even most made after also did many before must through back years "
            "where much your way well down should because each just those people how too little state good very "
            "make world still own see men work long get here between both life being under never day same another "
            "know while last might us great old year off come since against go came right used take three").split()
# (task, the evaluated split, the few-shot split or None)
SPLITS = [('hellaswag', 'validation', 'train'), ('lambada_openai', 'test', None), ('arc_easy', 'test', 'train'),
          ('arc_challenge', 'test', 'train'), ('piqa', 'validation', 'train'), ('winogrande', 'validation', 'train'),
          ('openbookqa', 'test', 'train'), ('boolq', 'validation', 'train'), ('copa', 'validation', 'train'),
          ('sciq', 'test', 'train'), ('triviaqa', 'validation', 'train'), ('gsm8k', 'test', 'train')]


def load_words():
    """Tiny Shakespeare's words, lower case and without punctuation (speaker lines like 'ROMEO:' dropped), so a run
    of them joins into plain text; the built-in list where the corpus is not there."""
    if not CORPUS.is_file():
        return FALLBACK
    lines = [l for l in CORPUS.read_text(encoding='utf-8').splitlines() if not l.rstrip().endswith(':')]
    words = [w.strip("'").lower() for w in re.findall(r"[A-Za-z']+", ' '.join(lines))]
    return ['I' + w[1:] if w == 'i' or w.startswith("i'") else w for w in words if w]


class Text:
    """Word runs of jittered length from one random.Random: phrases, sentences and paragraphs."""
    def __init__(self, words, rng):
        self.words, self.rng = words, rng

    def n(self, target):  # the target length +-30%, at least one word
        return max(1, round(target * self.rng.uniform(0.7, 1.3)))

    def phrase(self, target, exact=False):  # a contiguous run reads more like text than words drawn one by one
        k = target if exact else self.n(target)
        start = self.rng.randrange(len(self.words))
        return ' '.join(self.words[(start + j) % len(self.words)] for j in range(k))  # (wraps at the end)

    def sentence(self, target, end='.', exact=False):
        s = self.phrase(target, exact)
        return s[0].upper() + s[1:] + end

    def paragraph(self, target, end='.'):  # sentences of 8-20 words until the target is reached
        total, out = self.n(target), []
        while total > 0:
            k = min(total, self.rng.randint(8, 20))
            out.append(self.sentence(k, '.', exact=True))
            total -= k
        return ' '.join(out)[:-1] + end

    def choice(self, lo, hi):  # 1-3 words, say: short answers and options
        return self.phrase(self.rng.randint(lo, hi), exact=True)


def rows_for(task, split, count, t):
    r = t.rng
    out = []
    for i in range(count):
        if task == 'hellaswag':
            ctx_a, ctx_b = t.sentence(30), t.phrase(4)
            out.append({'ind': i, 'activity_label': t.choice(2, 3).title(), 'ctx_a': ctx_a, 'ctx_b': ctx_b,
                        'ctx': f"{ctx_a} {ctx_b}", 'endings': [t.phrase(18) + '.' for _ in range(4)],
                        'source_id': f"activitynet~v_{i:06d}", 'split': 'val' if split == 'validation' else split,
                        'split_type': 'indomain', 'label': str(r.randrange(4))})
        elif task == 'lambada_openai':  # the last word is the target: no final period
            out.append({'text': t.paragraph(75, end='')})
        elif task.startswith('arc_'):  # a few rows with 3 or 5 choices, a few numbered like the NY Regents ones
            n = r.choices([3, 4, 5], [1, 18, 1])[0]
            labels = ([str(k + 1) for k in range(n)] if n == 4 and r.random() < 0.1
                      else [chr(ord('A') + k) for k in range(n)])
            out.append({'id': f"Mercury_{i}", 'question': t.sentence(20, '?'),
                        'choices': {'text': [t.phrase(4) for _ in range(n)], 'label': labels},
                        'answerKey': r.choice(labels)})
        elif task == 'piqa':
            out.append({'goal': t.sentence(9, '?'), 'sol1': t.sentence(20), 'sol2': t.sentence(20),
                        'label': r.randrange(2)})
        elif task == 'winogrande':  # one '_' in the middle: the harness scores the text after it
            words = t.sentence(20).split()
            words.insert(r.randint(len(words) // 3, 2 * len(words) // 3), '_')
            out.append({'sentence': ' '.join(words), 'option1': t.choice(1, 2).title(),
                        'option2': t.choice(1, 2).title(), 'answer': r.choice(['1', '2'])})
        elif task == 'openbookqa':
            out.append({'id': f"{i}", 'question_stem': t.sentence(11, ''),
                        'choices': {'text': [t.phrase(3) for _ in range(4)], 'label': ['A', 'B', 'C', 'D']},
                        'answerKey': r.choice('ABCD')})
        elif task == 'boolq':  # lower case questions with no question mark, as on the hub
            out.append({'question': t.phrase(8), 'passage': f"{t.choice(1, 3).title()} -- {t.paragraph(100)}",
                        'idx': i, 'label': r.randrange(2)})
        elif task == 'copa':
            out.append({'premise': t.sentence(8), 'choice1': t.sentence(6), 'choice2': t.sentence(6),
                        'question': r.choice(['cause', 'effect']), 'idx': i, 'label': r.randrange(2)})
        elif task == 'sciq':  # supports: some empty, some with leading whitespace
            support = r.choices(['', ' ', None], [1, 1, 8])[0]
            support = support if support == '' else (support or '') + t.paragraph(80)
            answers = [t.choice(1, 3) for _ in range(4)]
            out.append({'question': t.sentence(14, '?'), 'distractor3': answers[0], 'distractor1': answers[1],
                        'distractor2': answers[2], 'correct_answer': answers[3], 'support': support})
        elif task == 'triviaqa':  # aliases differ in case and punctuation, as on the hub
            value = t.choice(1, 3).title()
            variants = [value.upper(), value.lower(), f"The {value}", f"{value}.", value.replace(' ', '-')]
            aliases = list(dict.fromkeys([value] + r.sample(variants, r.randint(2, 4))))
            norm = list(dict.fromkeys(re.sub(r"^the ", '', ' '.join(re.sub(r"[^\w ]", ' ', a).lower().split()))
                                      for a in aliases))  # lower case, no punctuation or article
            out.append({'question': t.sentence(15, '?'), 'question_id': f"tc_{i}",
                        'question_source': 'http://www.triviacountry.com/',
                        'entity_pages': {'doc_source': [], 'filename': [], 'title': [], 'wiki_context': []},
                        'search_results': {'description': [], 'filename': [], 'rank': [], 'title': [], 'url': [],
                                           'search_context': []},
                        'answer': {'aliases': aliases, 'normalized_aliases': norm, 'matched_wiki_entity_name': '',
                                   'normalized_matched_wiki_entity_name': '', 'normalized_value': norm[0],
                                   'type': 'WikipediaEntity', 'value': value}})
        elif task == 'gsm8k':  # reasoning lines with calculator annotations, the answer after '####'
            lines, total, steps = [], r.randint(2, 20), r.randint(2, 4)
            per_line = max(1, t.n(50) // steps - 5)  # each line: words, then 'a op b = <<a op b=c>>c.' (5 words)
            for _ in range(steps):
                a, b, op = total, r.randint(2, 12), r.choice('*+')
                total = a * b if op == '*' else a + b
                lines.append(f"{t.sentence(per_line, '', exact=True)} {a} {op} {b} = <<{a}{op}{b}={total}>>{total}.")
            out.append({'question': f"{t.paragraph(40)} {t.sentence(6, '?')}",
                        'answer': '\n'.join(lines) + f"\n#### {total}"})
    return out


def write(out, rows=200, fewshot_rows=50, seed=0):
    """Write out/<task>/<split>.jsonl for the twelve tasks; returns {task: its folder}. Deterministic in seed."""
    out, words, folders = pathlib.Path(out), load_words(), {}
    for task, evaluated, fewshot in SPLITS:
        folder = out / task
        folder.mkdir(parents=True, exist_ok=True)
        for split, count in [(evaluated, rows)] + ([(fewshot, fewshot_rows)] if fewshot else []):
            # a generator per task and split: one task's rows do not change when another's code or count does
            t = Text(words, random.Random(f"{seed}:{task}:{split}"))
            text = ''.join(json.dumps(row, ensure_ascii=False) + '\n' for row in rows_for(task, split, count, t))
            (folder / f"{split}.jsonl").write_text(text, encoding='utf-8')
        folders[task] = folder
    return folders


if __name__ == '__main__':
    p = argparse.ArgumentParser(description='Write stand-in eval datasets (not real data) for bench.py --mode=eval.')
    p.add_argument('--out', default='data/eval-standin')
    p.add_argument('--rows', type=int, default=200, help='rows of each evaluated split')
    p.add_argument('--fewshot_rows', type=int, default=50, help='rows of each few-shot (train) split')
    p.add_argument('--seed', type=int, default=0)
    a = p.parse_args()
    for task, folder in write(a.out, a.rows, a.fewshot_rows, a.seed).items():
        print(f"{task:<15} {folder}")
