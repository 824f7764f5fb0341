"""
Evaluation tasks: how each benchmark is read, turned into token sequences and scored. eval.py runs them
from the command line; train.py can run them every eval_interval through evaluate().

    perplexity  mean loss, perplexity per token and bits per byte of a text, with a sliding window
    hellaswag   HellaSwag validation, as lm-evaluation-harness's `hellaswag` task: acc, acc_norm; plus acc_token
    lambada     OpenAI's LAMBADA test set, as the harness's `lambada_openai`: last-word acc and perplexity
    mc          your own multiple-choice jsonl, one {"context": str, "choices": [str, ...], "label": int} a line

Every task is a list of requests (context tokens, continuation tokens): "how likely is this continuation
after this context?". score() answers them all in batches, on every rank under torchrun, and metrics() turns
the answers into numbers. So a reader checking how HellaSwag is scored reads load_hellaswag (the text and
its tokens) and choice_metrics (acc, acc_norm, acc_token), and score() once for all tasks.

    from gpt import tasks
    task_list = tasks.load_tasks(['hellaswag'], meta, block_size, limit=500)   # once: read and tokenize
    metrics = tasks.evaluate(model, task_list, device=device, ctx=ctx)         # {'hellaswag/acc_norm': ...}
"""

import math
import os
import re
import urllib.request
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from gpt import hubdata
from gpt.errors import UserError
from gpt.tokendata import (ROOT, dataset_dir, describe_tokenizer, get_tokenizer, json_lines, load_meta, read_text,
                           split_files, tokenizer_identity)

TASKS = ('perplexity', 'hellaswag', 'lambada', 'mc')
# the canonical sources: the HellaSwag authors' repository (the file llm.c and build-nanogpt read; the harness
# reads the same examples from the hub copy Rowan/hellaswag) and the LAMBADA test set as OpenAI released it with
# GPT-2, which the harness's lambada_openai is built from
URLS = {'hellaswag': 'https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl',
        'lambada': 'https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl'}
CACHE_DIR = os.path.join(ROOT, 'data', 'eval')  # where downloads go (and where to put files by hand)
BPE_TASKS = ('hellaswag', 'lambada')  # defined on words: a character vocabulary cannot spell their text


@dataclass
class Task:
    name: str
    requests: list = field(default_factory=list)   # (context ids, continuation ids) per scored sequence
    examples: list = field(default_factory=list)   # choice tasks: (label, first request, choice lengths in chars)
    n_bytes: int = 0                                # perplexity: UTF-8 bytes of the scored text, for bits per byte

    def metrics(self, results):
        """results: score()'s (len(requests), 3) tensor of (log-likelihood, tokens, greedy)."""
        if self.name == 'perplexity':
            return perplexity_metrics(results, self.n_bytes)
        if self.name == 'lambada':
            return lambada_metrics(results)
        return choice_metrics(self.examples, results)


# ----------------------------------------------------------------------------- reading data

def fetch(task, path=''):
    """The local path of a task's data file: `path` if given, else the cached download (fetched when absent)."""
    if path:
        if not os.path.isfile(path):
            raise UserError(f"{task} data file {path!r} not found")
        return path
    url = URLS[task]
    dest = os.path.join(CACHE_DIR, os.path.basename(url))
    if os.path.isfile(dest):
        return dest
    where = f"download {url} to {dest} (or pass --{task}_data=path/to/file)"
    if os.environ.get('HF_HUB_OFFLINE') == '1' or os.environ.get('HF_DATASETS_OFFLINE') == '1':
        raise UserError(f"{task} data not found and offline mode is on: {where}")
    if int(os.environ.get('RANK', 0)) == 0:  # under torchrun every rank fetches its own copy; one says so
        print(f"downloading {url} to {dest}")
    os.makedirs(CACHE_DIR, exist_ok=True)
    tmp = f'{dest}.{os.getpid()}.tmp'  # renamed into place only when complete (one per process under torchrun)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, 'wb') as f:
            f.write(response.read())
        os.replace(tmp, dest)
    except (OSError, ValueError) as e:  # URLError, HTTPError and timeouts are OSErrors
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"could not download {task} data ({getattr(e, 'reason', None) or e}): {where}") from None
    return dest


def read_jsonl(path, fields):
    """The records of a jsonl file, each checked for the fields a task reads (one-line errors naming the line)."""
    docs = []
    for n, doc in json_lines(path, 'the task file'):
        missing = [k for k in fields if not isinstance(doc, dict) or k not in doc]
        if missing:
            raise UserError(f"{path} line {n} lacks {', '.join(missing)}")
        docs.append(doc)
    if not docs:
        raise UserError(f"{path} holds no examples")
    return docs


# ----------------------------------------------------------------------------- text to requests

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


def choice_requests(task, encode, eot, examples):
    """A Task scoring (context, [choices], label) examples: each choice is a continuation after a space."""
    out = Task(task)
    for context, choices, label in examples:
        out.examples.append((label, len(out.requests), [len(c) for c in choices]))
        out.requests += [encode_pair(encode, eot, context, ' ' + c) for c in choices]
    return out


def hellaswag_preprocess(text):
    """The harness's clean-up (lm_eval/tasks/hellaswag/utils.py): WikiHow's [title] becomes a sentence end,
    other [bracketed] artifacts go, double spaces become single."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def load_hellaswag(encode, eot, path=''):
    """HellaSwag as the harness's `hellaswag` task: context "activity_label: ctx_a Ctx_b", four endings."""
    docs = read_jsonl(fetch('hellaswag', path), ('activity_label', 'ctx_a', 'ctx_b', 'endings', 'label'))
    examples = [(hellaswag_preprocess(d['activity_label'] + ': ' + d['ctx_a'] + ' ' + d['ctx_b'].capitalize()),
                 [hellaswag_preprocess(e) for e in d['endings']], int(d['label'])) for d in docs]
    return choice_requests('hellaswag', encode, eot, examples)


def load_mc(encode, eot, path):
    """A user's multiple-choice set: one JSON object a line, {"context": str, "choices": [str, ...], "label": int}
    (label: the index of the right choice). Scored like hellaswag: each choice after the context and a space."""
    if not path:
        raise UserError("the mc task needs a file: --mc_data=path.jsonl with lines "
                        "{\"context\": ..., \"choices\": [...], \"label\": index}")
    path = fetch('mc', path)
    examples = []
    for n, d in enumerate(read_jsonl(path, ('context', 'choices', 'label')), 1):
        choices, label = d['choices'], d['label']
        if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
            raise UserError(f"{path} example {n}: choices must be a list of at least two non-empty strings")
        if not (isinstance(label, int) and 0 <= label < len(choices)):
            raise UserError(f"{path} example {n}: label must be an index into choices (0..{len(choices) - 1})")
        examples.append((d['context'], choices, label))
    return choice_requests('mc', encode, eot, examples)


def load_lambada(encode, eot, path=''):
    """LAMBADA as the harness's `lambada_openai`: the text up to its last space is the context, the last word
    (with its leading space) the continuation."""
    task = Task('lambada')
    for d in read_jsonl(fetch('lambada', path), ('text',)):
        context, _, word = d['text'].rpartition(' ')
        task.requests.append(encode_pair(encode, eot, context, ' ' + word))
    return task


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


def load_tasks(names, meta, block_size, limit=0, data=None, stride=0, split=''):
    """Read and tokenize tasks once (train.py keeps the result for every evaluation). meta: the model's
    tokenizer metadata (load_model's second result). limit: the first N examples of each task (perplexity:
    N windows). data: {task: its data}, a local file (perplexity: see load_text); absent tasks download theirs.
    Errors are one line: unknown task, missing data, a character vocabulary on a word-level task, an example
    longer than the context."""
    data = data or {}
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise UserError(f"unknown task {', '.join(unknown) or '(none)'}: choose from {', '.join(TASKS)}")
    meta = meta or {'tokenizer': 'gpt2'}  # checkpoints without dataset metadata are GPT-2 BPE (as in nanoGPT)
    encode, decode, eot = get_tokenizer(meta)
    out = []
    for name in names:
        if name in BPE_TASKS and meta['tokenizer'] == 'char':
            raise UserError(f"{name} is scored on words, which this model's character vocabulary cannot spell; "
                            f"use a BPE model (perplexity's bits_per_byte compares character and BPE models)")
        if name == 'perplexity':
            source = data.get(name, '')
            if not source:
                raise UserError("the perplexity task needs text: --perplexity_data=file.txt, a prepared dataset "
                                "name (e.g. shakespeare_char) or hf:wikitext:wikitext-2-raw-v1")
            task = load_perplexity(encode, decode, eot, block_size, load_text(source, split, meta), stride)
        elif name == 'hellaswag':
            task = load_hellaswag(encode, eot, data.get(name, ''))
        elif name == 'lambada':
            task = load_lambada(encode, eot, data.get(name, ''))
        else:
            task = load_mc(encode, eot, data.get(name, ''))
        if limit and task.examples:
            task.examples = task.examples[:limit]
            label, first, lengths = task.examples[-1]
            task.requests = task.requests[:first + len(lengths)]
        elif limit:
            task.requests = task.requests[:limit]
        if name == 'perplexity':  # the scored tokens are the continuations, one run of text (end-of-text aside)
            task.n_bytes = len(decode([t for _, x in task.requests for t in x if t != eot]).encode('utf-8'))
        check_lengths(task, block_size)
        out.append(task)
    return out


def check_lengths(task, block_size):
    """Every request must fit the context: the harness would silently cut the context's start, here it is an error."""
    for i, (c, x) in enumerate(task.requests):
        if not x:
            raise UserError(f"{task.name}: request {i + 1} has an empty continuation")
        if len(c) + len(x) - 1 > block_size:
            # choice tasks have several requests per example: report the example, numbered from 1
            n = sum(first <= i for _, first, _ in task.examples) if task.examples else i + 1
            raise UserError(f"{task.name}: example {n} is {len(c) + len(x) - 1} tokens, longer than the "
                            f"model's context ({block_size}); shorten it or use a longer-context model")


# ----------------------------------------------------------------------------- scoring

@torch.no_grad()
def score(model, requests, batch_size=8, device='cpu', ctx=nullcontext(), progress=False, desc=''):
    """For each (context, continuation) request: (sum of the continuation's log-probabilities, its number of
    tokens, 1.0 if greedy decoding would produce it else 0.0), as a (len(requests), 3) float64 tensor.

    Requests are sorted longest first and batched right-padded (causal attention: padding after a sequence
    cannot change it). Under torch.distributed every rank scores every world-th batch, fills its rows and the
    table is summed over ranks, so every rank returns the full table. All ranks run the same number of forward
    passes (a rank one batch short repeats one and drops it), which FSDP's collective forward needs."""
    world, rank = 1, 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    V = model.config.vocab_size
    order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    mine = batches[rank::world]
    n_forward = -(-len(batches) // world)
    results = torch.zeros(len(requests), 3, dtype=torch.float64)
    was_training = model.training
    model.eval()
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=n_forward, desc=desc, unit='batch', dynamic_ncols=True)
    for b in range(n_forward):
        batch = mine[b] if b < len(mine) else mine[-1] if mine else batches[0]  # the repeat is discarded below
        seqs = [(requests[i][0] + requests[i][1])[:-1] for i in batch]
        T = max(len(s) for s in seqs)
        idx = torch.zeros(len(batch), T, dtype=torch.long)
        targets = torch.full((len(batch), T), -1, dtype=torch.long)
        for row, (i, s) in enumerate(zip(batch, seqs)):
            cont = requests[i][1]
            idx[row, :len(s)] = torch.tensor(s)
            targets[row, len(s) - len(cont):len(s)] = torch.tensor(cont)  # the positions that predict cont
        idx, targets = idx.to(device), targets.to(device)
        with ctx:
            logits = model(idx)[0]
        # only the continuation positions: the softmax over 50k logits at every position would cost more
        # than a small model's forward pass
        mask = targets >= 0
        logits, y = logits[mask][:, :V].float(), targets[mask]
        logp = -F.cross_entropy(logits, y, reduction='none').double()
        greedy = (logits.argmax(-1) == y).double()
        if b < len(mine):
            n = mask.sum(1)
            row = torch.arange(len(batch), device=n.device).repeat_interleave(n)  # each scored position's row
            ll = torch.zeros(len(batch), dtype=torch.float64, device=n.device).index_add_(0, row, logp)
            hits = torch.zeros_like(ll).index_add_(0, row, greedy)
            results[batch] = torch.stack([ll, n.double(), (hits == n).double()], 1).cpu()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.train(was_training)
    if world > 1:
        on = results.to(device)  # nccl reduces CUDA tensors, gloo CPU ones: the model's device suits both
        torch.distributed.all_reduce(on, op=torch.distributed.ReduceOp.SUM)
        results = on.cpu()
    return results


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


def lambada_metrics(results):
    """The harness's lambada_openai: acc, the share of last words greedy decoding gets right, every token of them;
    ppl, exp of minus the mean log-likelihood of a last word (per word, not per token)."""
    n = len(results)
    acc = results[:, 2].mean().item()
    return {'acc': acc, 'acc_stderr': stderr(acc, n), 'ppl': math.exp(-results[:, 0].mean().item()), 'n': n}


def perplexity_metrics(results, n_bytes):
    """loss: mean negative log-likelihood per token (nats); ppl = exp(loss); bits_per_byte: the total in bits
    over the text's UTF-8 bytes, which does not depend on the tokenizer."""
    nll, tokens = -results[:, 0].sum().item(), results[:, 1].sum().item()
    return {'loss': nll / tokens, 'ppl': math.exp(nll / tokens), 'bits_per_byte': nll / math.log(2) / n_bytes,
            'tokens': int(tokens), 'bytes': n_bytes}


def evaluate(model, tasks, batch_size=8, device='cpu', ctx=nullcontext(), progress=False):
    """Score loaded tasks (load_tasks) with the model: {'task/metric': value}. Under torch.distributed every rank
    must call it; each scores its share and all get the same numbers. Leaves the model in the mode it found."""
    out = {}
    for task in tasks:
        results = score(model, task.requests, batch_size, device, ctx, progress, desc=task.name)
        out.update({f'{task.name}/{k}': v for k, v in task.metrics(results).items()})
    return out
