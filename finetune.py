"""
GPT-1's recipe: fine-tune a pretrained GPT on a classification, entailment, similarity or multiple-choice task
with the paper's input transformations, a linear head on the extract token and the auxiliary LM loss (gpt/heads.py).

Offline demo on a CPU (tasks derived from Tiny Shakespeare, a char-level model pretrained by train.py; the
accuracy it reaches against the majority class and against the same model untrained is in the config's header):
$ python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_gpt1.py
$ python data/shakespeare_tasks/prepare.py
$ python finetune.py config/finetune_shakespeare_scrambled.py       # a real line, or its words' insides shuffled?
$ python finetune.py config/finetune_shakespeare_scrambled.py --from_scratch=True --out_dir=out-scrambled-scratch
(250 steps: 0.891 and 0.858 for two seeds, against 0.510 and 0.490 from scratch and 0.5104 for the majority class,
on 2,588 validation examples. The "follows" task, config/finetune_shakespeare_follows.py, shows a smaller gain.)

GLUE and friends, from OpenAI's GPT-1 or GPT-2 weights (one GPU):
$ python finetune.py --init_from=openai-gpt --dataset=glue --dataset_config=rte --task=entailment \
      --fields=sentence1,sentence2 --out_dir=out-rte
Score new examples with a fine-tuned model (a file with the same columns, labels optional), or export it:
$ python finetune.py --task=entailment --out_dir=out-rte --predict=examples.jsonl
$ python finetune.py --task=entailment --out_dir=out-rte --export=hf-rte
Export (hf.save_task_model) writes the transformers class that computes the same scores: multiple choice as
GPT2DoubleHeadsModel / OpenAIGPTDoubleHeadsModel (GPT-2 / GPT-1 network), classification and entailment as
GPT2ForSequenceClassification / OpenAIGPTForSequenceClassification. Their classifier has no bias, so the head's
bias is folded into the final LayerNorm: the scores are exact, the hidden states shifted (a classifier only).
Similarity is refused: no transformers class adds the extract states of the two orders as GPT-1 does.

The defaults are the paper's: lr 6.25e-5, batch 32, 3 epochs, linear warmup over 0.2% of training then
linear decay, weight decay 0.01 on all but biases and gains, dropout 0.1, lm_coef 0.5.
"""

import json
import math
import os
import sys
import time
from dataclasses import asdict

import torch

import configurator
from gpt import checkpoint, hubdata, lora, run
from gpt.checkpoint import check_kind, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from gpt.device import autocast_ctx, describe, pick_device, pick_dtype, setup_torch
from gpt.errors import UserError, check_choice, check_range
from gpt.chat import add_tokens
from gpt.heads import FIELDS, SPECIAL_TOKENS, TASKS, TaskModel, collate, transform
from gpt.loading import load_model, model_from_checkpoint
from gpt.optim import decay_groups
from gpt.run import StopSignal, resume_settings
from gpt.tokendata import get_tokenizer, read_text, seed_from

# -----------------------------------------------------------------------------
# config: overridden by a config file, then by --key=value
init_from = 'gpt2'          # the pretrained model: a training run's out_dir, a hub name (gpt2*, openai-gpt) or an HF dir
out_dir = 'out-finetune'    # ckpt.pt (latest), best.pt (best validation metric), log.jsonl
task = 'classification'     # 'classification', 'entailment', 'similarity' or 'multiple_choice'
data_files = ''             # local examples: 'train=a.jsonl,val=b.jsonl' (csv, json/jsonl or parquet)
dataset = ''                # or a hub dataset, e.g. 'glue' with dataset_config 'sst2'
dataset_config = ''
train_split = 'train'
val_split = 'validation'    # (local files: the 'val' entry of data_files)
fields = 'sentence'         # input columns: text | premise,hypothesis | a,b | context,answer_1,...,answer_K
label = 'label'             # the label column: a class, a similarity score, or the index of the right answer
classes = ''                # the class labels in the head's order, e.g. 'no,yes' (any other label is an error);
                            # '' takes those of the training data, sorted
learning_rate = 6.25e-5
batch_size = 32             # examples per step
epochs = 3
warmup_frac = 0.002         # linear warmup over this fraction of the steps, then linear decay to 0
weight_decay = 0.01         # on matrices only (not biases or LayerNorm gains)
lm_coef = 0.5               # weight of the auxiliary language-modelling loss (0 turns it off)
head_dropout = 0.1          # before the linear head
dropout = 0.1               # in the transformer
grad_clip = 1.0             # 0 disables
eval_interval = 0           # evaluate every this many steps (0: after every epoch)
max_eval = 0                # evaluate on at most this many validation examples (0: all)
max_train = 0               # train on at most this many examples (0: all), e.g. for a quick run on a CPU
resume = False              # continue the fine-tuning run in out_dir (`--resume=True --out_dir=X` alone takes its settings)
stop_after = 0              # stop (saving ckpt.pt) after this many steps of the schedule, e.g. to share a machine
from_scratch = False        # the baseline: init_from's architecture with fresh random weights (no pre-training)
lora_rank = 0               # LoRA (gpt/lora.py): > 0 freezes the network and trains rank-r adapters, the head and the
                            # embedding (which holds the new task tokens); checkpoints hold those and the base's name
lora_alpha = 16.0           # the adapters' update is scaled by lora_alpha / lora_rank
lora_dropout = 0.05
lora_targets = 'c_attn'     # c_attn (or q,k,v), attn.c_proj, c_fc, mlp.c_proj, c_proj, all
grad_checkpoint = False     # recompute each block's activations in the backward pass (less memory)
predict = ''                # score the examples in this file with out_dir's best.pt, print JSON lines, no training
export = ''                 # write out_dir's best.pt to this directory as a transformers model (where a class exists)
device = 'auto'
dtype = 'auto'
seed = 1337
# -----------------------------------------------------------------------------
given = set()  # the settings a config file or the command line gave
config = configurator.configure(globals(), verbose=False, given=given)  # (predictions go to stdout alone)
ckpt, resume_note = (resume_settings(out_dir, config, given, 'finetune.py', per_launch=('stop_after', 'predict',
                                                                                        'export'))
                      if resume else (None, ''))
globals().update(config)
check_choice('task', task, TASKS)
for k in ('batch_size', 'epochs'):
    check_range(k, config[k], low=1)
for k in ('eval_interval', 'max_eval', 'max_train', 'weight_decay', 'lm_coef', 'grad_clip', 'stop_after'):
    check_range(k, config[k], low=0)
check_range('learning_rate', learning_rate, low=0, low_open=True)
for k in ('warmup_frac', 'head_dropout', 'dropout'):
    check_range(k, config[k], low=0, high=1, high_open=True)
columns = [c.strip() for c in fields.split(',') if c.strip()]
if task in FIELDS and len(columns) != FIELDS[task] and not (predict or export):  # (those take the checkpoint's)
    raise UserError(f"task {task!r} takes {FIELDS[task]} input column(s) in --fields, got {fields!r}")
if classes and task not in ('classification', 'entailment'):
    raise UserError(f"--classes is for classification and entailment; task {task!r} has no class labels")
declared = [c.strip() for c in classes.split(',') if c.strip()]
if len(set(declared)) != len(declared) or len(declared) == 1:
    raise UserError(f"--classes takes two or more distinct labels, got {classes!r}")
if task == 'multiple_choice' and len(columns) < 2 and not (predict or export):
    raise UserError("task 'multiple_choice' takes --fields=context,answer_1,...,answer_K (or context,answers "
                    "with a list of answers in one column)")
device = pick_device(device)
dtype = pick_dtype(dtype, device)
setup_torch(seed, device)
ctx = autocast_ctx(device, dtype)


def log(*args):
    print(*args, flush=True)


# ----------------------------------------------------------------------------- data

def load_split(which):
    """The examples of one split as a list of dicts (columns as in the file or hub dataset)."""
    import datasets
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()  # (small local files: a bar per split is noise)
    if data_files:
        files = dict(part.split('=', 1) for part in data_files.split(',') if '=' in part)
        name = {'train': 'train', 'val': 'val'}[which]
        if name not in files:
            raise UserError(f"data_files needs a {name}= entry, e.g. --data_files=train=a.jsonl,val=b.jsonl")
        path = files[name]
        if not os.path.isfile(path):
            raise UserError(f"{path} not found (from --data_files)")
        kind = {'.csv': 'csv', '.json': 'json', '.jsonl': 'json', '.parquet': 'parquet'}.get(os.path.splitext(path)[1])
        if kind is None:
            raise UserError(f"{path}: expected a .csv, .json, .jsonl or .parquet file")
        text = read_text(path, 'the data file')  # (UTF-8, or one line naming the file)
        if path.endswith('.jsonl'):  # the line at fault, which datasets' message does not name
            for n, line in enumerate(text.split('\n'), 1):
                try:
                    if line.strip():
                        json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"cannot read {path} as json: line {n} is not JSON ({e.msg}); one JSON object "
                                    f"per line is expected") from None
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # (its own report of a failure precedes ours)
        try:
            rows = datasets.load_dataset(kind, data_files=path, split='train')
        except Exception as e:  # malformed JSON or CSV, another encoding: datasets raises many kinds, chained
            while e.__cause__ is not None or e.__context__ is not None:  # the parser's own message says where
                e = e.__cause__ or e.__context__
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"cannot read {path} as {kind} ({first}); one JSON object per line (.jsonl), a JSON "
                            f"list of objects (.json) or a CSV with a header row, in UTF-8") from None
    elif dataset:
        rows = hubdata.load_dataset(dataset, dataset_config or None, split=train_split if which == 'train' else val_split,
                                    instead='pass --data_files to use local files')
    else:
        raise UserError("no data: pass --data_files=train=...,val=... or --dataset=<hub name>")
    missing = [c for c in columns + ([] if predict else [label]) if c not in rows.column_names]
    if missing:
        raise UserError(f"the {which} data has no column {', '.join(map(repr, missing))} "
                        f"(its columns: {', '.join(rows.column_names)}); set --fields and --label")
    if not len(rows):
        raise UserError(f"the {which} data has no examples")
    return list(rows)


def label_index(rows, which, classes=None):
    """Class labels as indices (classes as declared, else the training split's, sorted; compared as text);
    scores as floats; answer indices as ints. A label that is none of these is an error naming it."""
    values = [r[label] for r in rows]
    if task in ('similarity', 'multiple_choice'):
        kind = float if task == 'similarity' else int
        try:
            return [kind(v) for v in values], None
        except (TypeError, ValueError):
            bad = next(v for v in values if not _parses(kind, v))
            need = 'a number (the similarity score)' if task == 'similarity' else 'the index of the right answer'
            raise UserError(f"the {which} data has a {label!r} value {bad!r}; {task} needs {need}") from None
    classes = classes or sorted({str(v) for v in values})
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in values} - set(index))
    if unknown:
        source = 'declared by --classes' if declared else 'of the training data'
        raise UserError(f"the {which} data has labels {', '.join(unknown[:5])}, which are not among the classes "
                        f"{source} ({', '.join(classes)})")
    return [index[str(v)] for v in values], classes


def _parses(kind, v):
    try:
        kind(v)
        return True
    except (TypeError, ValueError):
        return False


def encode_example(row, encode, specials, max_len):
    """One example's token sequences (heads.transform on the encoded fields, cut to max_len), and the length of
    its longest sequence uncut."""
    texts = [row[c] for c in columns]
    if task == 'multiple_choice' and len(texts) == 2 and isinstance(texts[1], list):
        texts = [texts[0], *texts[1]]  # a context and one column holding the list of answers
    fields = [encode(str(t)) for t in texts]
    length = max(map(len, transform(task, fields, specials, sys.maxsize)))
    try:
        return transform(task, fields, specials, max_len), length
    except ValueError as e:
        raise UserError(str(e)) from None


# ----------------------------------------------------------------------------- model

def build(pretrained, num_labels):
    """The pretrained GPT with the three special tokens added, and its task head."""
    gpt, meta, _ = load_model(pretrained, dropout=dropout)
    if from_scratch:
        gpt = type(gpt)(gpt.config)
    gpt, specials = add_tokens(gpt, len(SPECIAL_TOKENS))
    if lora_rank and from_scratch:
        raise UserError("from_scratch=True trains a fresh network; LoRA adapts a pretrained one (set lora_rank=0)")
    note = lora.setup(gpt, pretrained, lora_rank, lora_alpha, lora_dropout, lora_targets, train=('transformer.wte.',))
    if note:
        log(note)
    return TaskModel(gpt, task, num_labels, dropout=head_dropout), specials, meta


@torch.no_grad()
def evaluate(model, examples, labels):
    """(metric name, value, val loss): accuracy, or Pearson correlation for similarity."""
    model.eval()
    outs, losses = [], []
    for i in range(0, len(examples), batch_size):
        groups = examples[i:i + batch_size]
        idx, targets, last = (t.to(device) for t in collate(groups))
        y = torch.tensor(labels[i:i + batch_size], device=device)
        with ctx:
            out, lm_loss = model(idx, last, len(groups), targets)
        losses.append(model.loss(out.float(), y, lm_loss, lm_coef).item() * len(groups))
        outs.append(out.float().cpu())
    model.train()
    out, y = torch.cat(outs), torch.tensor(labels)
    loss = sum(losses) / len(examples)
    if task == 'similarity':
        return 'pearson', torch.corrcoef(torch.stack([out, y.float()]))[0, 1].item(), loss
    return 'accuracy', (out.argmax(-1) == y).float().mean().item(), loss


def save(path, model, optimizer, step, best, meta, classes, specials):
    save_checkpoint(dict(format=checkpoint.CHECKPOINT_FORMAT, kind='finetune',
                         lora=getattr(model.gpt, 'lora_settings', None),
                         model=lora.trained_state(model.gpt) if lora.is_lora(model.gpt) else model.gpt.state_dict(),
                         head=model.head.state_dict(), model_args=asdict(model.gpt.config),
                         optimizer=optimizer.state_dict() if optimizer else None, iter_num=step,
                         best_val_loss=-best, best_metric=best, config=config, data_meta=meta, rng=rng_state(),
                         task=dict(task=task, classes=[str(c) for c in classes] if classes else None,
                                   specials=specials, fields=columns, label=label)), path)


def load_finetuned(path, ckpt=None):
    """(TaskModel, the checkpoint) of a fine-tuning run's checkpoint (ckpt: the one at path, already loaded)."""
    ckpt = ckpt or load_checkpoint(path)
    check_kind(ckpt, path, 'finetune')  # (a language or reward model: one line naming what it is)
    t = ckpt['task']
    if t['task'] != task:
        raise UserError(f"{path} was fine-tuned for {t['task']!r}, not {task!r}: pass --task={t['task']}")
    model = TaskModel(model_from_checkpoint(ckpt, dropout=dropout), task, ckpt['head']['weight'].size(0),
                      dropout=head_dropout)
    model.head.load_state_dict(ckpt['head'])
    return model.to(device), ckpt


# ----------------------------------------------------------------------------- export, predict

if export:
    from gpt import hf
    if os.path.exists(export) and not (os.path.isdir(export) and (not os.listdir(export) or os.path.isfile(
            os.path.join(export, 'config.json')))):  # an earlier export is rewritten; nothing else (the run itself)
        raise UserError(f"--export={export} exists and is not an exported model (a folder with config.json): "
                        f"choose a new folder")
    model, ckpt = load_finetuned(os.path.join(out_dir, 'best.pt'))
    lora.strip(model.gpt)  # a LoRA run: adapters merged into the weights
    try:
        hf.save_task_model(model, export, classes=ckpt['task']['classes'], specials=ckpt['task']['specials'])
    except ValueError as e:
        raise UserError(str(e)) from None
    log(f"wrote {export}")
    sys.exit(0)

if predict:
    model, ckpt = load_finetuned(os.path.join(out_dir, 'best.pt'))
    model.eval()
    encode, _, _ = get_tokenizer(ckpt['data_meta'])
    data_files, columns = f'val={predict}', ckpt['task']['fields']  # the columns the model was trained on
    rows = load_split('val')
    classes = ckpt['task']['classes']
    with torch.no_grad():
        for row in rows:
            groups = [encode_example(row, encode, ckpt['task']['specials'], model.gpt.config.block_size)[0]]
            idx, _, last = (t.to(device) for t in collate(groups))
            out, _ = model(idx, last, 1)
            if task == 'similarity':
                print(json.dumps({**row, 'score': out.item()}))
            else:
                p = out.float().softmax(-1)[0]
                guess = int(p.argmax())
                print(json.dumps({**row, 'prediction': classes[guess] if classes else guess,
                                  'probability': round(p[guess].item(), 4)}))
    sys.exit(0)

# ----------------------------------------------------------------------------- training
train_rows, val_rows = load_split('train'), load_split('val')
if max_eval:
    val_rows = val_rows[:max_eval]
if max_train:
    train_rows = train_rows[:max_train]
train_labels, classes = label_index(train_rows, 'train', declared)
val_labels, _ = label_index(val_rows, 'val', classes)
num_labels = len(classes) if classes else 1
if ckpt is not None:
    model, ckpt = load_finetuned(ckpt['path'], ckpt)
    specials, meta = ckpt['task']['specials'], ckpt['data_meta']
else:
    model, specials, meta = build(init_from, num_labels)
    model.to(device)
encode, _, _ = get_tokenizer(meta)
max_len = model.gpt.config.block_size
train_ex, train_len = zip(*[encode_example(r, encode, specials, max_len) for r in train_rows])
val_ex, val_len = zip(*[encode_example(r, encode, specials, max_len) for r in val_rows])
lengths = train_len + val_len
if min(lengths) > max_len:  # every example would lose part of its input: the model is too small for the task
    raise UserError(f"the model's context ({max_len} tokens) cannot hold the shortest {task} example "
                    f"({min(lengths)} tokens after the input transformation); use a model with a longer context")
cut = sum(n > max_len for n in lengths) / len(lengths)  # the rest are cut (heads.transform says where)
if task == 'multiple_choice':
    counts = {len(g) for g in train_ex + val_ex}
    if len(counts) != 1:
        raise UserError(f"multiple-choice examples need the same number of answers; found {sorted(counts)}")
    bad = sorted({y for y in train_labels + val_labels if not 0 <= y < len(train_ex[0])})
    if bad:
        raise UserError(f"labels {', '.join(map(str, bad[:5]))} are not answer indices (0 to {len(train_ex[0]) - 1})")
majority = max((val_labels.count(y) for y in set(val_labels)), default=0) / max(1, len(val_labels))
log(f"config: {json.dumps(config)}")
log(f"{describe(device, dtype)}; {task}: {len(train_ex)} training and {len(val_ex)} validation examples"
    + (f", {num_labels} classes" if classes else '') + f"; {cut:.0%} cut to the context of {max_len} tokens"
    + (f"; majority-class accuracy {majority:.4f}" if task != 'similarity' else ''))

model.gpt.grad_checkpoint = grad_checkpoint
optimizer = torch.optim.AdamW(decay_groups(model.parameters(), weight_decay), lr=learning_rate)
steps_per_epoch = math.ceil(len(train_ex) / batch_size)
total = epochs * steps_per_epoch
warmup = max(1, round(warmup_frac * total))
step, best = 0, -float('inf')
if resume_note:
    log(resume_note)
if ckpt is not None:
    optimizer.load_state_dict(ckpt['optimizer'])
    if 'rng' in ckpt:
        set_rng_state(ckpt['rng'])
    step, best = ckpt['iter_num'], ckpt['best_metric']
    del ckpt
run.take_out_dir(out_dir)  # made, writable, locked; a new run moves an old one aside (gpt/run.py)
moved = '' if resume else run.make_room(out_dir, overwrite=False)
if moved:
    log(moved)
run.append_record(os.path.join(out_dir, 'log.jsonl'),
                         dict(event='start', script='finetune.py', config=config, step=step))
stop = StopSignal()


def get_lr(s):
    """Linear warmup over `warmup` steps, then linear decay to 0 at the last step (GPT-1)."""
    return learning_rate * (s + 1) / warmup if s < warmup else learning_rate * max(0.0, (total - s) / (total - warmup))


model.train()
t0, value = time.time(), None
while step < total:
    epoch, k = divmod(step, steps_per_epoch)
    # the order of an epoch is a function of (seed, epoch): a resumed run takes the same batches
    order = torch.randperm(len(train_ex), generator=torch.Generator().manual_seed(seed_from(seed, 'epoch', epoch)))
    pick = order[k * batch_size:(k + 1) * batch_size].tolist()
    groups = [train_ex[i] for i in pick]
    idx, targets, last = (t.to(device) for t in collate(groups))
    y = torch.tensor([train_labels[i] for i in pick], device=device)
    for g in optimizer.param_groups:
        g['lr'] = get_lr(step)
    torch.manual_seed(seed_from(seed, 'dropout', step))
    with ctx:
        out, lm_loss = model(idx, last, len(groups), targets)
    loss = model.loss(out.float(), y, lm_loss, lm_coef)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step += 1
    if step % 10 == 0 or step == total:
        log(f"step {step}/{total} (epoch {epoch + 1}): loss {loss.item():.4f}, lr {get_lr(step - 1):.2e}, "
            f"{(time.time() - t0) / 60:.1f} min")
    if (eval_interval and step % eval_interval == 0) or step % steps_per_epoch == 0 or step == total:
        metric, value, val_loss = evaluate(model, val_ex, val_labels)
        log(f"step {step}: val {metric} {value:.4f}, val loss {val_loss:.4f}")
        run.append_record(os.path.join(out_dir, 'log.jsonl'), dict(
            event='eval', step=step, epoch=epoch + 1, metric=metric, value=value, val_loss=val_loss,
            seconds=time.time() - t0))
        save(os.path.join(out_dir, 'ckpt.pt'), model, optimizer, step, max(best, value), meta, classes, specials)
        if value > best:
            best = value
            save(os.path.join(out_dir, 'best.pt'), model, None, step, best, meta, classes, specials)
    if (stop or (stop_after and step >= stop_after)) and step < total:
        save(os.path.join(out_dir, 'ckpt.pt'), model, optimizer, step, best, meta, classes, specials)
        log(f"stopped {'by signal ' if stop else ''}after step {step} of {total}; continue with "
            f"`python finetune.py --resume=True --out_dir={out_dir}`")
        break
if step == total:  # the last step's figure is the unbiased one: best.pt was chosen on the same validation data
    metric = 'pearson' if task == 'similarity' else 'accuracy'
    log((f"val {metric} {value:.4f} at the last step; " if value is not None else '') + f"best val {metric} "
        f"{best:.4f} (best.pt)" + (f"; majority class {majority:.4f}" if task != 'similarity' else ''))
