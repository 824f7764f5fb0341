"""
Evaluation tasks: how each benchmark is read, turned into token sequences and scored, as lm-evaluation-harness
defines it (its dataset and split, its text for context, target and choices, its few-shot contexts and metrics).
eval.py runs them from the command line; train.py can run them every eval_interval through evaluate().

    the suite (--tasks=suite): hellaswag lambada_openai arc_easy arc_challenge piqa winogrande openbookqa boolq
        copa sciq: GPT-3's zero/one/few-shot tasks of the log-likelihood kind (the harness's names and numbers)
    generation: triviaqa (closed-book QA), gsm8k (grade-school arithmetic, 5-shot): greedy until the harness's
        stop strings, scored with its answer normalization
    perplexity  mean loss, perplexity per token and bits per byte of a text, with a sliding window
    mc          your own multiple-choice jsonl, one {"context": str, "choices": [str, ...], "label": int} a line
    (lambada is lambada_openai under its old name)

A task is a Spec (its row in SPECS, beside the harness's YAML it mirrors). Every task is a list of requests
(context tokens, continuation tokens), "how likely is this continuation after this context?", or, for generation,
prompts. gpt/scoring.py answers them in batches on every rank under torchrun; Task.metrics turns the answers into
numbers. So a reader checking how ARC is scored reads its Spec, fewshot_context and choice_metrics.

Few-shot contexts are the harness's byte for byte: per task one random.Random(1234) draws K examples from the
few-shot split, example after example in order; the examples, a target delimiter (a space) between each text and
its answer and two newlines after each, then the example's text. Where the harness draws from the evaluated split
(its few-shot split equals its test split, or neither is set) it draws K + 1 and drops the example itself; where
it does not (lambada_openai, which only has a test split) neither does this.

    from gpt import tasks
    task_list = tasks.load_tasks(['hellaswag'], meta, block_size, limit=500, num_fewshot=5)  # read, tokenize
    metrics = tasks.evaluate(model, task_list, device=device, ctx=ctx)    # {'hellaswag_5shot/acc_norm': ...}
"""

import math
import os
import random
import re
import string
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from gpt import hubdata
from gpt.errors import UserError
from gpt.scoring import generate, score
from gpt.taskdata import load_split
from gpt.tokendata import dataset_dir, describe_tokenizer, get_tokenizer, load_meta, read_text, split_files, tokenizer_identity

FEWSHOT_SEED = 1234  # the harness's default fewshot_random_seed


@dataclass
class Spec:
    """One task as the harness's YAML defines it. kind: 'choice' (choices continue the text), 'fill' (Winogrande:
    each option completes the sentence's start, and the rest of the sentence is what is scored), 'loglik' (one
    continuation; acc = greedy gets every token) or 'generate'."""
    name: str
    path: str | None            # the hub dataset (the harness's dataset_path), and its config (dataset_name)
    config: str | None
    kind: str
    eval_split: str             # the harness's test_split, else its validation_split
    fewshot_split: str          # its fewshot_split, else training_split, else validation, else test
    drops_itself: bool          # the harness passes the example to its sampler (fewshot_split == test_split)
    text: Callable              # doc_to_text (for 'fill': the index of the right option)
    target: Callable            # doc_to_target: an index into choices, a string, or a list of strings
    choices: Callable = None    # doc_to_choice
    metrics: tuple = ('acc',)
    process: Callable = None    # process_docs, one row at a time
    num_fewshot: int = 0        # the task's default K
    description: str = ''
    target_delimiter: str = ' '
    fewshot_delimiter: str = '\n\n'
    until: tuple = ()           # generation: the stop strings (end-of-text is added, as the harness does)
    max_gen_toks: int = 256
    answers: Callable = None    # generation: the filter(s) from generated text to the answer, {filter name: fn}
    match: dict = field(default_factory=dict)  # exact_match's options: ignore_case, ignore_punctuation, regexes
    flag: str = ''              # eval.py's --<flag>_data for its rows ('': the name)


def hellaswag_doc(doc):
    """lm_eval/tasks/hellaswag/utils.py's process_docs: the query "activity_label: ctx_a Ctx_b" and the endings,
    cleaned up."""
    ctx = doc['ctx_a'] + ' ' + doc['ctx_b'].capitalize()
    return {**doc, 'query': hellaswag_preprocess(doc['activity_label'] + ': ' + ctx),
            'choices': [hellaswag_preprocess(e) for e in doc['endings']], 'gold': int(doc['label'])}


def hellaswag_preprocess(text):
    """The harness's clean-up (lm_eval/tasks/hellaswag/utils.py): WikiHow's [title] becomes a sentence end,
    other [bracketed] artifacts go, double spaces become single."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def winogrande_options(doc):
    """The sentence up to its blank, filled with each option (the harness's doc_to_choice)."""
    i = doc['sentence'].index('_')
    return [doc['sentence'][:i] + doc['option1'], doc['sentence'][:i] + doc['option2']]


def copa_text(doc):
    """The premise without its full stop, joined to the choice by 'because' or 'therefore' (super_glue/copa/utils.py)."""
    return doc['premise'].strip()[:-1] + ' ' + {'cause': 'because', 'effect': 'therefore'}[doc['question']]


def copa_choice(text):
    return ' ' + text[0].lower() + text[1:]


def regex_answer(pattern, group=0, fallback='[invalid]'):
    """The harness's regex filter then take_first: the group-th match of pattern (of a tuple of groups, the first
    non-empty), stripped; fallback where nothing matches."""
    regex = re.compile(pattern)

    def answer(text):
        found = regex.findall(text)
        if not found:
            return fallback
        m = found[group]
        if isinstance(m, tuple):
            m = next((g for g in m if g), fallback)
        return m.strip()
    return answer


ARC = dict(kind='choice', eval_split='test', fewshot_split='train', drops_itself=False,
           text=lambda d: f"Question: {d['question']}\nAnswer:", target=lambda d: d['choices']['label'].index(d['answerKey']),
           choices=lambda d: d['choices']['text'], metrics=('acc', 'acc_norm'))
SPECS = {s.name: s for s in [
    Spec('hellaswag', 'Rowan/hellaswag', None, 'choice', 'validation', 'train', True, text=lambda d: d['query'],
         target=lambda d: int(d['label']), choices=lambda d: d['choices'], metrics=('acc', 'acc_norm', 'acc_token'),
         process=hellaswag_doc),
    Spec('lambada_openai', 'EleutherAI/lambada_openai', 'default', 'loglik', 'test', 'test', False,
         text=lambda d: ' '.join(d['text'].split(' ')[:-1]), target=lambda d: ' ' + d['text'].split(' ')[-1],
         metrics=('acc', 'ppl'), flag='lambada'),
    Spec('arc_easy', 'allenai/ai2_arc', 'ARC-Easy', **ARC),
    Spec('arc_challenge', 'allenai/ai2_arc', 'ARC-Challenge', **ARC),
    Spec('piqa', 'baber/piqa', None, 'choice', 'validation', 'train', True,
         text=lambda d: f"Question: {d['goal']}\nAnswer:", target=lambda d: d['label'],
         choices=lambda d: [d['sol1'], d['sol2']], metrics=('acc', 'acc_norm')),
    Spec('winogrande', 'allenai/winogrande', 'winogrande_xl', 'fill', 'validation', 'train', True,
         text=lambda d: {'1': 0, '2': 1}[d['answer']], choices=winogrande_options,
         target=lambda d: d['sentence'][d['sentence'].index('_') + 1:].strip()),
    Spec('openbookqa', 'allenai/openbookqa', 'main', 'choice', 'test', 'train', False, text=lambda d: d['question_stem'],
         target=lambda d: d['choices']['label'].index(d['answerKey'].lstrip()), choices=lambda d: d['choices']['text'],
         metrics=('acc', 'acc_norm')),
    Spec('boolq', 'aps/super_glue', 'boolq', 'choice', 'validation', 'train', True,
         text=lambda d: f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", target=lambda d: d['label'],
         choices=lambda d: ['no', 'yes']),
    Spec('copa', 'aps/super_glue', 'copa', 'choice', 'validation', 'train', True, text=copa_text,
         target=lambda d: copa_choice(d['choice1'] if d['label'] == 0 else d['choice2']),
         choices=lambda d: [copa_choice(d['choice1']), copa_choice(d['choice2'])]),
    Spec('sciq', 'allenai/sciq', None, 'choice', 'test', 'train', False,
         text=lambda d: f"{d['support'].lstrip()}\nQuestion: {d['question']}\nAnswer:", target=lambda d: 3,
         choices=lambda d: [d['distractor1'], d['distractor2'], d['distractor3'], d['correct_answer']],
         metrics=('acc', 'acc_norm')),
    Spec('triviaqa', 'mandarjoshi/trivia_qa', 'rc.nocontext', 'generate', 'validation', 'train', True,
         text=lambda d: f"Question: {d['question']}?\nAnswer:", target=lambda d: d['answer']['aliases'],
         metrics=('exact_match',), until=('\n', '.', ','), answers=lambda: {'remove_whitespace': str.strip},
         match=dict(ignore_case=True, ignore_punctuation=True)),
    Spec('gsm8k', 'openai/gsm8k', 'main', 'generate', 'test', 'train', False,
         text=lambda d: f"Question: {d['question']}\nAnswer:", target=lambda d: d['answer'], num_fewshot=5,
         metrics=('exact_match',), until=('Question:', '</s>', '<|im_end|>'),
         answers=lambda: {'strict-match': regex_answer(r"#### (\-?[0-9\.\,]+)"),
                          'flexible-extract': regex_answer(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group=-1)},
         match=dict(ignore_case=True, regexes=(',', '\\$', '(?s).*#### ', '\\.$'))),
    Spec('mc', None, None, 'choice', 'test', 'test', True, text=lambda d: d['context'], target=lambda d: d['label'],
         choices=lambda d: d['choices'], metrics=('acc', 'acc_norm', 'acc_token')),
]}
SUITES = {'suite': ('hellaswag', 'lambada_openai', 'arc_easy', 'arc_challenge', 'piqa', 'winogrande', 'openbookqa',
                    'boolq', 'copa', 'sciq')}
ALIASES = {'lambada': 'lambada_openai'}
TASKS = ('perplexity', *SPECS, *ALIASES, *SUITES)
PRIMARY = ('acc_norm', 'acc', 'exact_match')  # a task's number in the suite's mean: the first of these it reports


@dataclass
class Task:
    name: str                                       # as the user named it, '_<K>shot' added for K > 0
    spec: Spec = None                               # None: perplexity
    num_fewshot: int = 0
    requests: list = field(default_factory=list)   # (context ids, continuation ids) per scored sequence
    examples: list = field(default_factory=list)   # choice tasks: (label, first request, choice lengths in chars)
    prompts: list = field(default_factory=list)    # generation: (prompt ids, the gold answers)
    n_bytes: int = 0                                # perplexity: UTF-8 bytes of the scored text, for bits per byte
    truncated: int = 0                              # requests whose context's start was cut to fit, as the harness
    max_gen_toks: int = 0                           # generation: the token budget, the stop strings, the tokenizer
    stops: list = field(default_factory=list)
    decode: Callable = None
    eot: int = None

    @property
    def groups(self):
        """The requests scored in one row: an example's choices share their context (gpt/scoring.py)."""
        if self.examples:
            return [list(range(first, first + len(lengths))) for _, first, lengths in self.examples]
        return None

    def metrics(self, results):
        """results: score()'s (len(requests), 3) tensor of (log-likelihood, tokens, greedy), or, for generation,
        the generated texts."""
        if self.spec is None:
            return perplexity_metrics(results, self.n_bytes)
        if self.spec.kind == 'generate':
            return generation_metrics(self.spec, self.prompts, results)
        if self.spec.kind == 'loglik':
            return loglik_metrics(results)
        out = choice_metrics(self.examples, results)
        return {k: v for k, v in out.items() if k == 'n' or k.replace('_stderr', '') in self.spec.metrics}


# ----------------------------------------------------------------------------- text to requests

def rows(spec, local=''):
    """(the evaluated rows, the few-shot pool), each processed as the harness's process_docs does."""
    docs = load_split(spec, spec.eval_split, local)
    if spec.fewshot_split != spec.eval_split:
        pool = lambda: load_split(spec, spec.fewshot_split, local, evaluated=False)  # (read only for K > 0)
    else:
        pool = lambda: docs
    if spec.process:
        return [spec.process(d) for d in docs], lambda: [spec.process(d) for d in pool()]
    return docs, pool


def fewshot_context(spec, doc, shots):
    """The harness's context for doc after the few-shot examples `shots` (a list for 'fill': one per option)."""
    head = spec.description
    for s in shots:
        q, a = spec.text(s), spec.target(s)
        if spec.kind == 'fill':
            q = spec.choices(s)[q]
        elif isinstance(a, int) and spec.choices:
            a = spec.choices(s)[a]
        elif isinstance(a, list):
            a = a[0]
        head += q + (spec.target_delimiter + a + spec.fewshot_delimiter if a != '' else '')
    if spec.kind == 'fill':
        return [head + option for option in spec.choices(doc)]
    return head + spec.text(doc)


def draw(rng, pool, k, doc, drops_itself):
    """The harness's ContextSampler.sample: k of the pool by rng, drawing k + 1 and dropping doc where the pool
    is the evaluated split."""
    if k == 0:
        return []
    if k + (1 if drops_itself else 0) > len(pool):
        raise UserError(f"{k}-shot needs {k + drops_itself} few-shot examples, the few-shot split has {len(pool)}")
    if not drops_itself:
        return rng.sample(pool, k)
    shots = [d for d in rng.sample(pool, k + 1) if d != doc][:k]
    if len(shots) < k:  # the pool held copies of doc: drawn again from the pool without them
        shots = rng.sample([d for d in pool if d != doc], k)
    return shots


def field_error(spec, where, e):
    return UserError(f"{spec.name}: {where} lacks what the task reads ({type(e).__name__}: {e}); "
                     f"the rows must be those of {spec.path or 'the documented format'}")


def load_spec(spec, encode, eot, local='', k=0, limit=0):
    """A Task of spec's requests (or prompts) at K = k, the first `limit` examples (0: all)."""
    docs, pool = rows(spec, local)
    docs = docs[:limit] if limit else docs
    fewshots = pool() if k else []
    rng = random.Random(FEWSHOT_SEED)
    task = Task(spec.name if not k else f"{spec.name}_{k}shot", spec, k)
    for n, doc in enumerate(docs, 1):
        try:
            context = fewshot_context(spec, doc, draw(rng, fewshots, k, doc, spec.drops_itself))
            target = spec.target(doc)
            choices = spec.choices(doc) if spec.choices else None
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise field_error(spec, f"example {n} (or its few-shot examples)", e) from None
        if choices is not None and not (isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices)):
            raise UserError(f"{spec.name}: example {n}'s choices must be a list of strings, got {choices!r:.80}")
        if spec.kind == 'generate':
            task.prompts.append((encode(context), target if isinstance(target, list) else [target]))
        elif spec.kind == 'loglik':
            task.requests.append(encode_pair(encode, eot, context, target))
        else:
            if spec.kind == 'fill':  # the options are the contexts; the sentence's rest follows each
                label, pairs = target_index(spec, doc, choices, spec.text(doc)), [(c, target) for c in context]
            else:
                label, pairs = target_index(spec, doc, choices, target), [(context, c) for c in choices]
            task.examples.append((label, len(task.requests), [len(c) for c in choices]))
            task.requests += [encode_pair(encode, eot, c, spec.target_delimiter + x) for c, x in pairs]
    return task


def target_index(spec, doc, choices, target):
    """The right choice's index: an int target, or the choice equal to a string target (COPA)."""
    if isinstance(target, str):
        target = choices.index(target) if target in choices else -1
    if not (isinstance(target, int) and 0 <= target < len(choices)):
        raise UserError(f"{spec.name}: an example's label {target!r} is not an index into its {len(choices)} choices")
    return target


def encode_pair(encode, eot, context, continuation):
    """(context ids, continuation ids) as lm-evaluation-harness splits them: trailing spaces of the context move
    to the continuation, the pair is tokenized as one text and split where the context's own tokens end, so the
    continuation's first word keeps its leading space as BPE sees it in running text. An empty context is the
    end-of-text token."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    if not context:
        if eot is None:
            raise UserError("an example has an empty context, which needs an end-of-text token; "
                            "this tokenizer has none")
        return [eot], encode(continuation)
    whole, ctx = encode(context + continuation), encode(context)
    return ctx, whole[len(ctx):]


def load_text(source, split, meta):
    """(token ids or None, text or None) of a perplexity source: a text file, a prepared data/<dataset> split
    (its .bin tokens, which must come from the model's tokenizer), or hf:name[:config[:split]] on the hub."""
    if os.path.isfile(source):
        return None, read_text(source, 'the perplexity text', newline='')
    if source.startswith('hf:'):
        name, config, hub_split = (source[3:].split(':') + [None, None])[:3]
        rows = hubdata.load_dataset(name, config or None, split=hub_split or split or 'test', what=source,
                                    instead='pass a local text file instead: --perplexity_data=file.txt')
        if 'text' not in rows.column_names:
            raise UserError(f"{source} has no 'text' column (columns: {', '.join(rows.column_names)})")
        return None, '\n\n'.join(rows['text'])  # as the Hugging Face perplexity guide joins WikiText
    folder = source if os.path.isdir(source) else dataset_dir(source)[0]
    if not os.path.isfile(os.path.join(folder, 'meta.json')):
        raise UserError(f"perplexity_data={source!r} is neither a text file, a prepared dataset "
                        f"(data/<name>/meta.json) nor hf:name[:config[:split]]")
    data_meta = load_meta(folder)
    if tokenizer_identity(data_meta) != tokenizer_identity(meta):
        raise UserError(f"{folder} was tokenized with another vocabulary ({describe_tokenizer(data_meta)}) than the "
                        f"model's ({describe_tokenizer(meta)}); evaluate on a text file instead")
    # <split>.bin, or a sharded dataset's shards one after another
    paths = split_files(folder, data_meta, split or 'val') or [os.path.join(folder, f"{split}.bin")]
    missing = next((p for p in paths if not os.path.isfile(p)), None)
    if missing:
        raise UserError(f"{missing} not found: --split=train or val")
    ids = np.concatenate([np.fromfile(p, dtype=np.dtype(data_meta['dtype'])) for p in paths])
    return ids.astype(np.int64).tolist(), None


def load_perplexity(encode, decode, eot, block_size, source, stride=0):
    """Perplexity with a sliding window (the GPT-2 paper; the Hugging Face perplexity guide with max_length =
    block_size + 1): windows of block_size inputs start every `stride` tokens, and each scores only the tokens
    no earlier window scored, so every token is predicted once, after at least block_size - stride tokens of
    context (all before it near the start). stride = block_size: disjoint windows. A BPE text starts with
    end-of-text, so its first token is predicted too; a character model cannot predict its first character."""
    ids, text = source
    if ids is None:
        ids = encode(text)
    tokens = ([eot] if eot is not None else []) + ids
    stride = stride or max(1, block_size // 2)
    if not 1 <= stride <= block_size:
        raise UserError(f"stride must be in 1..block_size ({block_size}), got {stride}")
    if len(tokens) < 2:
        raise UserError("the perplexity text is empty (at least two tokens are needed)")
    task, scored = Task('perplexity'), 1  # tokens[0] is never a target
    for start in range(0, len(tokens) - 1, stride):
        end = min(start + block_size + 1, len(tokens))
        task.requests.append((tokens[start:scored], tokens[scored:end]))
        scored = end
        if end == len(tokens):
            break
    return task


def load_tasks(names, meta, block_size, limit=0, data=None, stride=0, split='', num_fewshot=None, max_gen_toks=0):
    """Read and tokenize tasks once (train.py keeps the result for every evaluation). meta: the model's tokenizer
    metadata (load_model's second result). names: tasks, suites (SUITES) or aliases. limit: the first N examples of
    each task (perplexity: N windows). data: {task: its folder or file} (perplexity: see load_text); absent tasks
    read data/eval/<task>/, else download. num_fewshot: K for every task (None: each task's default).
    max_gen_toks: generation's token budget (0: the task's). Errors are one line: unknown task, missing data, a
    character vocabulary on a word-level task, a continuation longer than the context."""
    data = data or {}
    names = [t for n in names for t in SUITES.get(n, (n,))]
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise UserError(f"unknown task {', '.join(unknown) or '(none)'}: choose from {', '.join(TASKS)}")
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"num_fewshot must be >= 0, got {num_fewshot}")
    meta = meta or {'tokenizer': 'gpt2'}  # checkpoints without dataset metadata are GPT-2 BPE (as in nanoGPT)
    encode, decode, eot = get_tokenizer(meta)
    out = []
    for name in dict.fromkeys(names):  # (a task named twice, or in a suite and alone, runs once)
        if name == 'perplexity':
            source = data.get(name, '')
            if not source:
                raise UserError("the perplexity task needs text: --perplexity_data=file.txt, a prepared dataset "
                                "name (e.g. shakespeare_char) or hf:wikitext:wikitext-2-raw-v1")
            task = load_perplexity(encode, decode, eot, block_size, load_text(source, split, meta), stride)
            task.requests = task.requests[:limit] if limit else task.requests
            # (the scored tokens are the continuations, one run of text, end-of-text aside)
            task.n_bytes = len(decode([t for _, x in task.requests for t in x if t != eot]).encode('utf-8'))
            fit(task, block_size)
            out.append(task)
            continue
        spec = SPECS[ALIASES.get(name, name)]
        if spec.name != 'mc' and meta['tokenizer'] == 'char':
            raise UserError(f"{name} is scored on words, which this model's character vocabulary cannot spell; "
                            f"use a BPE model (perplexity's bits_per_byte compares character and BPE models)")
        k = spec.num_fewshot if num_fewshot is None else num_fewshot
        task = load_spec(spec, encode, eot, data.get(name) or data.get(spec.name) or data.get(spec.flag, ''), k, limit)
        task.name = name if not k else f"{name}_{k}shot"
        if spec.kind == 'generate':
            task.max_gen_toks = max_gen_toks or spec.max_gen_toks
            task.stops = list(spec.until) + ([decode([eot])] if eot is not None else [])
            task.eot, task.decode = eot, decode
        fit(task, block_size)
        out.append(task)
    return out


def fit(task, block_size):
    """Every request must fit the context. As the harness does, a request longer than the context loses the start
    of its context (the few-shot examples first), counted in task.truncated; a continuation longer than the context
    is an error. A generation prompt keeps its last block_size - max_gen_toks tokens."""
    for i, (c, x) in enumerate(task.requests):
        if not x:
            raise UserError(f"{task.name}: request {i + 1} has an empty continuation")
        if len(x) > block_size:
            n = sum(first <= i for _, first, _ in task.examples) if task.examples else i + 1
            raise UserError(f"{task.name}: example {n}'s continuation is {len(x)} tokens, longer than the model's "
                            f"context ({block_size}); use a longer-context model")
        if len(c) + len(x) - 1 > block_size:
            task.requests[i] = (c[len(c) + len(x) - 1 - block_size:], x)
            task.truncated += 1
    if task.prompts:
        room = block_size - task.max_gen_toks
        if room < 1:
            raise UserError(f"{task.name} generates up to {task.max_gen_toks} tokens, which leaves no room for a prompt "
                            f"in this model's context ({block_size}); pass --max_gen_toks below {block_size}")
        task.truncated = sum(len(p) > room for p, _ in task.prompts)
        task.prompts = [(p[-room:], gold) for p, gold in task.prompts]


# ----------------------------------------------------------------------------- metrics

def stderr(p, n):
    """Standard error of a mean of n 0/1 outcomes, as the harness reports it (sample standard deviation)."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float('nan')


def choice_picks(examples, results):
    """The choice each rule picks, per example. acc: the highest summed log-likelihood; acc_norm: divided by the
    choice's length in characters (the harness); acc_token: divided by its number of tokens (llm.c and
    build-nanogpt's "acc_norm"). Ties go to the first choice, as numpy's argmax gives them in the harness."""
    picks = {'acc': [], 'acc_norm': [], 'acc_token': []}
    for label, first, lengths in examples:
        rows = results[first:first + len(lengths)]
        ll, ntok = rows[:, 0].tolist(), rows[:, 1].tolist()
        for key, value in (('acc', ll), ('acc_norm', [l / c for l, c in zip(ll, lengths)]),
                           ('acc_token', [l / t for l, t in zip(ll, ntok)])):
            picks[key].append(value.index(max(value)))
    return picks


def choice_metrics(examples, results):
    """acc, acc_norm and acc_token (choice_picks): the share of examples where the rule picks the label."""
    n = len(examples)
    out = {k: sum(p == e[0] for p, e in zip(picks, examples)) / n
           for k, picks in choice_picks(examples, results).items()}
    out.update({f'{k}_stderr': stderr(v, n) for k, v in list(out.items())})
    return {**out, 'n': n}


def loglik_metrics(results):
    """The harness's lambada_openai: acc, the share of last words greedy decoding gets right, every token of them;
    ppl, exp of minus the mean log-likelihood of a last word (per word, not per token)."""
    n = len(results)
    acc = results[:, 2].mean().item()
    return {'acc': acc, 'acc_stderr': stderr(acc, n), 'ppl': math.exp(-results[:, 0].mean().item()), 'n': n}


def normalize(text, ignore_case=False, ignore_punctuation=False, regexes=()):
    """The harness's exact_match normalization: the regexes removed, then case and punctuation if asked."""
    for r in regexes:
        text = re.sub(r, '', text)
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(str.maketrans('', '', string.punctuation))
    return text


def generation_metrics(spec, prompts, texts):
    """exact_match per answer filter (one: 'exact_match'; several, as gsm8k's strict and flexible: one each): the
    share of examples whose filtered answer equals one of the gold answers after normalization."""
    out, n = {}, len(texts)
    filters = spec.answers()
    for fname, answer in filters.items():
        key = 'exact_match' if len(filters) == 1 else f"exact_match_{fname.split('-')[0]}"
        hits = [any(normalize(answer(t), **spec.match) == normalize(g, **spec.match) for g in golds)
                for t, (_, golds) in zip(texts, prompts)]
        out[key] = sum(hits) / n
        out[f'{key}_stderr'] = stderr(out[key], n)
    return {**out, 'n': n}


def perplexity_metrics(results, n_bytes):
    """loss: mean negative log-likelihood per token (nats); ppl = exp(loss); bits_per_byte: the total in bits
    over the text's UTF-8 bytes, which does not depend on the tokenizer."""
    nll, tokens = -results[:, 0].sum().item(), results[:, 1].sum().item()
    return {'loss': nll / tokens, 'ppl': math.exp(nll / tokens), 'bits_per_byte': nll / math.log(2) / n_bytes,
            'tokens': int(tokens), 'bytes': n_bytes}


def primary(metrics):
    """The number a task adds to a suite's mean: acc_norm where it reports it, else acc, else exact match."""
    return next((metrics[k] for k in PRIMARY if k in metrics),
                next((v for k, v in metrics.items() if k.startswith('exact_match') and not k.endswith('stderr')), None))


def run(model, task, batch_size=8, device='cpu', ctx=nullcontext(), progress=False):
    """A loaded task's metrics: its requests scored (or its prompts answered) with the model."""
    if task.prompts:
        texts = generate(model, [p for p, _ in task.prompts], task.max_gen_toks, task.stops, task.decode, task.eot,
                         batch_size, ctx, progress=progress, desc=task.name)
        return task.metrics(texts)
    return task.metrics(score(model, task.requests, batch_size, device, ctx, progress, desc=task.name,
                              groups=task.groups))


def evaluate(model, tasks, batch_size=8, device='cpu', ctx=nullcontext(), progress=False):
    """Score loaded tasks (load_tasks) with the model: {'task/metric': value}. Under torch.distributed every rank
    must call it; each scores its share and all get the same numbers. Leaves the model in the mode it found."""
    out = {}
    for task in tasks:
        out.update({f'{task.name}/{k}': v for k, v in run(model, task, batch_size, device, ctx, progress).items()})
    return out
