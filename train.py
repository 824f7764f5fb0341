"""
Train a GPT: from scratch, from OpenAI's GPT-2 weights (finetuning), or resuming a run.

CPU laptop (character-level Shakespeare, a few minutes), then one GPU:
$ python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_cpu.py
$ python train.py config/train_shakespeare_char.py

CPU, 2 processes (gloo; the same steps as one process with --gradient_accumulation_steps=2):
$ torchrun --standalone --nproc_per_node=2 train.py config/train_shakespeare_char_cpu.py --gradient_accumulation_steps=2

One node, 8 GPUs (DDP; FSDP with --parallelism=fsdp for models that do not fit one GPU):
$ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

Several nodes, and what each needs: docs/training.md. Supervised fine-tuning on conversations (InstructGPT's step 1;
gpt/chat.py: the chat template and its tokens, which a pretrained model's vocabulary grows by; the loss is on the
responses only):
$ python data/shakespeare_prefs/prepare.py && python train.py config/sft_shakespeare.py

Any setting below can be changed by a config file and then by --key=value, e.g.
$ python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False
"""

import math
import os
import platform
import shlex
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

import torch

import configurator
from gpt import checkpoint, lora
from gpt.checkpoint import (gather_full_state, link_checkpoint, load_optimizer_state, rng_state, save_checkpoint,
                            set_rng_state)
from gpt.device import autocast_ctx, describe, peak_flops_and_source, pick_device, pick_dtype, setup_torch
from gpt.errors import UserError
from gpt.loading import load_model
from gpt.lossplot import plot_losses
from gpt.nonfinite import NonFiniteSteps
from gpt.optim import configure_optimizers
from gpt.run import (RUN_FILES, StopSignal, all_mean, append_record, check_resume_data, join_process_group,
                     launched_by_torchrun, leave_process_group, make_room, rank_device, resume_settings, shard_fsdp,
                     share, take_out_dir, torchrun_ranks)
from gpt.schedule import ETA, Schedule
from gpt.tasks import evaluate, load_tasks
from gpt.train_checks import check_device, check_settings, check_world, choose_compile
from gpt.tokendata import TokenData, check_same_tokenizer, dataset_dir, load_meta, seed_from

# -----------------------------------------------------------------------------
# config: defaults train GPT-2 124M on OpenWebText; overridden by a config file, then --key=value
# I/O
out_dir = 'out'                 # checkpoints (ckpt.pt latest, best.pt best val), log.jsonl, loss.png
eval_interval = 2000            # evaluate train/val loss (and checkpoint) every this many iterations
log_interval = 1                # print loss, lr, ms/iter, tokens/s, MFU every this many iterations
eval_iters = 200                # batches per split per evaluation
eval_train = True               # also estimate the train loss at each evaluation (False: val only, half the cost)
eval_at_start = True            # evaluate before the first step too (a speedrun skips it: the loss is log(vocab))
eval_only = False               # evaluate once and exit
eval_tasks = ''                 # also score these eval.py tasks at each evaluation, e.g. 'hellaswag' (gpt/tasks.py)
eval_tasks_limit = 500          # examples per task at each evaluation (0 = all; HellaSwag has 10,042)
eval_tasks_data = ''            # a local file for the task (one task); '' downloads it to data/eval/
always_save_checkpoint = True   # write ckpt.pt at every eval (else only when val loss improves)
init_from = 'scratch'           # 'scratch', 'resume' (from out_dir), gpt2*, openai-gpt, or a local HF dir
overwrite = False               # a new run into a run's out_dir deletes that run (else it is moved aside)
nan_policy = 'stop'             # non-finite loss: 'stop' (exit, keeping the last checkpoint) or 'skip' the step
# logging
wandb_log = False               # log to Weights & Biases (WANDB_MODE=offline works without an account)
wandb_project = 'owt'
wandb_run_name = 'gpt2'
plot = True                     # redraw out_dir/loss.png at each evaluation
# data
dataset = 'openwebtext'         # data/<dataset>/ holds train.bin, val.bin, meta.json
data_dir = ''                   # read the data from here instead of data/<dataset>/
gradient_accumulation_steps = 5 * 8  # micro-steps per optimizer step, summed over all processes
batch_size = 12                 # micro-batch size per process
block_size = 1024               # context length
# model (used when init_from='scratch'; a pretrained/resumed model brings its own)
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0                   # 0 for pretraining, 0.1+ for finetuning
bias = True                     # biases in Linear and LayerNorm layers
pad_vocab_multiple = 64         # pad the embedding rows to a multiple of this (faster matmuls on GPUs)
attn_impl = 'sdpa'              # 'sdpa' (flash kernels) or 'explicit' (masked softmax)
attn_pattern = 'dense'          # 'dense', 'local' (banded), 'alternating' (GPT-3: dense and banded layers in turn)
attn_window = 0                 # local layers: each token sees itself and the attn_window - 1 before it
gelu_approx = 'tanh'            # GPT-2's tanh GELU, or 'none': exact erf GELU (nanoGPT's), cheaper on CPU in eager
tie_embeddings = True           # output projection shares the token embeddings; False for Image GPT
zero_init_head = False          # Image GPT: the output projection starts at zero (needs tie_embeddings=False)
pos_emb = 'learned'             # 'learned' (GPT-2's position table) or 'rope' (rotary embeddings)
rope_base = 10000.0             # rotary: wavelength base
qk_norm = False                 # LayerNorm (no gain) on each head's queries and keys
mlp_act = 'gelu'                # 'gelu' or 'relu2' (relu(x)^2)
# fine-tuning in small memory (gpt/lora.py): LoRA adapters on a pretrained model, activation checkpointing
lora_rank = 0                   # LoRA rank r: 0 trains every weight; > 0 freezes the base and trains adapters only
lora_alpha = 16.0               # the adapters' update is scaled by lora_alpha / lora_rank
lora_dropout = 0.05             # dropout on the adapters' input
lora_targets = 'c_attn'         # adapted: c_attn (or its parts q,k,v), attn.c_proj, c_fc, mlp.c_proj, c_proj, all
grad_checkpoint = False         # recompute each block's activations in backward: less memory, ~1/3 more compute
# AdamW (GPT-3 settings); optim='muon' puts the blocks' weight matrices on Muon (gpt/optim.py) at muon_lr
optim = 'adamw'                 # 'adamw' or 'muon' (Muon for the blocks' matrices, AdamW for the rest)
muon_lr = 0.02                  # Muon's peak learning rate (the schedule scales it with learning_rate's)
muon_momentum = 0.95
learning_rate = 6e-4            # peak learning rate
max_iters = 600000              # total optimizer steps
weight_decay = 1e-1             # on matrices only
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0                 # clip the global grad norm to this; 0 disables
# learning-rate schedule: linear warmup, then cosine decay to min_lr, in iterations or (GPT-3) in tokens;
# lr_schedule='wsd' (warmup-stable-decay): the peak until the last cooldown_frac of the decay, then linear to min_lr
decay_lr = True
lr_schedule = 'cosine'          # 'cosine' or 'wsd'
cooldown_frac = 0.2             # wsd: the final fraction of the decay spent going down linearly
warmup_iters = 2000
lr_decay_iters = 600000         # ~ max_iters (Chinchilla)
warmup_tokens = 0               # GPT-3: warm up over this many tokens instead (needs lr_decay_tokens)
lr_decay_tokens = 0             # GPT-3: decay over this many tokens instead of lr_decay_iters (0: in iterations)
decay_on_clock = False          # the decay also follows the clock, ending at max_time: a time-budgeted run (speedrun)
min_lr = 6e-5                   # ~ learning_rate / 10 (GPT-3)
# batch-size ramp (GPT-3): tokens per step grow linearly from batch_ramp_start to the full batch
batch_ramp_start = 0            # tokens per step at first, in whole micro-batches (0: no ramp)
batch_ramp_tokens = 0           # tokens seen by the time the batch is full (gradient_accumulation_steps micro-batches)
# system
device = 'auto'                 # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'                  # 'auto' (bf16 on GPUs that have it, else fp16; on CPU bf16 with AMX, else fp32), 'float32', 'bfloat16', 'float16'
compile = 'auto'                # torch.compile the model: True, False, or 'auto' (on GPUs; on CPUs only if it pays)
backend = 'auto'                # distributed backend: 'auto' (nccl on CUDA, gloo on CPU), 'nccl', 'gloo'
parallelism = 'ddp'             # under torchrun: 'ddp' (replicate) or 'fsdp' (shard, for models too big for one device)
seed = 1337
deterministic = False           # the same weights from the same command (and after a resume) on a GPU too; a bit slower
peak_flops = 0.0                # device peak FLOP/s for MFU; 0 looks it up (GPUs) or measures a matmul (CPU)
max_time = 0.0                  # stop after this many seconds of training (0 = no limit), then evaluate and save
# -----------------------------------------------------------------------------
given = set()  # the keys a config file or the command line set
config = configurator.configure(globals(), verbose=int(os.environ.get('RANK', 0)) == 0, given=given)  # print once
# a mistake anywhere below raises UserError: one `error: ...` line, exit status 1 (configurator.py)
ckpt, resume_note = None, ''
if init_from == 'resume':
    # `--init_from=resume --out_dir=X` alone continues the run as it was configured: every setting that a
    # config file or the command line does not set comes from the checkpoint (batch, schedule, data, seed...)
    ckpt, resume_note = resume_settings(out_dir, config, given, 'train.py', resume_flag='--init_from=resume',
                                        per_launch=('eval_only',))
    globals().update(config)
check_settings(config, given)  # every setting: one line naming the key and what it may be (gpt/train_checks.py)
schedule = Schedule.from_config(config)  # the learning rate and batch at each step (gpt/schedule.py)
micro_tokens = batch_size * block_size  # one micro-batch

# ----------------------------------------------------------------------------- distributed set-up
# torchrun starts one process per device and tells each its place in RANK, LOCAL_RANK, WORLD_SIZE
ddp = launched_by_torchrun()  # (with DDP or FSDP)
fsdp = ddp and parallelism == 'fsdp'
rank, local_rank, world_size = torchrun_ranks()
master_process = rank == 0  # does the printing, logging and checkpointing
if ddp:
    check_world(config, world_size)  # (before joining the process group: every rank exits at once, rank 0 says why)
device = pick_device(rank_device(device))
dtype = pick_dtype(dtype, device)  # 'auto': bf16 on GPUs, and on CPUs only where bf16 is fast (AMX)
device_type = torch.device(device).type  # 'cuda', 'cpu' or 'mps'
check_device(config, device_type, dtype, fsdp, torch.__version__)
compile, log_compile = choose_compile(compile, device_type, torch.__version__)
# the same initial weights on every rank (FSDP shards them as they are); deterministic=True: the same steps in every
# run, which before this matmul or any other cuBLAS work happens (device.use_deterministic)
setup_torch(seed, device, deterministic)
# FSDP casts the parameters itself (MixedPrecisionPolicy below), so it needs no autocast
ctx = autocast_ctx(device, 'float32' if fsdp else dtype)


def log(*args):
    if master_process:
        print(*args, flush=True)


log(f"command: {' '.join(sys.argv)}")
log(f"python {platform.python_version()}, {describe(device, dtype)}, {world_size} process(es)"
    + (f", {log_compile}" if log_compile else ''))

if master_process:
    take_out_dir(out_dir)  # made, writable, and locked: one run at a time writes here

# ----------------------------------------------------------------------------- model
data_dir, prepare = dataset_dir(dataset, data_dir)
meta = load_meta(data_dir, prepare)
if init_from == 'scratch':
    log("initialising a new model from scratch")
elif init_from == 'resume':
    log(f"resuming from {ckpt['path']} at iteration {ckpt['iter_num']}")
    log(resume_note)
else:
    log(f"initialising from pretrained weights: {init_from}")
arch = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'attn_pattern', 'attn_window', 'tie_embeddings',
        'pos_emb', 'qk_norm', 'mlp_act')
model, model_meta, ckpt = load_model(
    init_from, out_dir, 'ckpt.pt', block_size=block_size, ckpt=ckpt, dropout=dropout,
    scratch=dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                 vocab_size=meta['vocab_size'], pad_vocab_multiple=pad_vocab_multiple, attn_impl=attn_impl,
                 gelu_approx=gelu_approx, attn_pattern=attn_pattern, attn_window=attn_window,
                 tie_embeddings=tie_embeddings, zero_init_head=zero_init_head, pos_emb=pos_emb, rope_base=rope_base,
                 qk_norm=qk_norm, mlp_act=mlp_act),
    expect={k: config[k] for k in arch if k in given})  # what the user asked for must match what resumes
if init_from not in ('scratch', 'resume') and any(os.path.exists(os.path.join(init_from, n)) for n in RUN_FILES):
    check_same_tokenizer(model_meta, meta, init_from, data_dir)  # another run of ours: its tokens must be these
if init_from not in ('scratch', 'resume') and meta.get('added_tokens') and model.config.vocab_size < meta['vocab_size']:
    from gpt.chat import grow_vocab  # SFT data (gpt/prefs.py) adds the chat tokens: they get new embedding rows
    model = grow_vocab(model, meta)
    log(f"added {', '.join(meta['added_tokens'])} to the vocabulary: {model.config.vocab_size} ids")
lora_note = lora.setup(model, init_from, lora_rank, lora_alpha, lora_dropout, lora_targets,  # (new tokens' rows:
                       train=('transformer.wte.',) if meta.get('added_tokens') else (),      # the embedding trains)
                       frozen_dtype=None if fsdp or dtype == 'float32' else getattr(torch, dtype))
if lora_note:
    log(lora_note)
model.grad_checkpoint = grad_checkpoint
tokens_per_iter = schedule.tokens_per_iter  # the full batch
log(f"tokens per iteration: {tokens_per_iter:,} = {gradient_accumulation_steps // world_size} accum * {world_size} "
    f"processes * {batch_size} batch * {block_size} block")
if batch_ramp_start:
    log(f"batch ramp: from {round(batch_ramp_start / micro_tokens) * micro_tokens:,} tokens per step up to "
        f"{tokens_per_iter:,} over the first {batch_ramp_tokens:,} tokens")
iter_num, best_val_loss, tokens_seen, seconds_before = 0, float('inf'), 0, 0.0
if ckpt is not None:
    check_resume_data(ckpt, meta, data_dir)
    iter_num, best_val_loss = ckpt['iter_num'], ckpt['best_val_loss']
    seconds_before = ckpt.get('train_seconds', 0.0)
    tokens_seen = ckpt.get('tokens_seen', iter_num * tokens_per_iter)  # (older checkpoints: no ramp then)
    # a run killed between writing ckpt.pt and linking best.pt left best.pt one checkpoint behind
    ckpt_path, best_path = ckpt['path'], os.path.join(out_dir, 'best.pt')
    if master_process and ckpt.get('is_best') and not (os.path.exists(best_path)
                                                       and os.path.samefile(ckpt_path, best_path)):
        link_checkpoint(ckpt_path, best_path)
        log(f"{best_path} was behind {ckpt_path}, the best so far (a save was interrupted); linked it")
data = TokenData(data_dir, block_size, batch_size, device, seed=seed, vocab_size=model.config.vocab_size,
                 prepare=prepare)
# the evaluation tasks are read and tokenized once, also before the process group (a missing file stops all ranks)
task_names = [t for t in eval_tasks.split(',') if t]
eval_task_list = load_tasks(task_names, meta, block_size, limit=eval_tasks_limit,
                            data={task_names[0]: eval_tasks_data} if eval_tasks_data and len(task_names) == 1
                            else None) if task_names else []
# a new run into a run's out_dir moves the old run aside, untouched (or deletes it with --overwrite=True): rerunning
# a command never loses a result. Done after the settings and data are checked (their mistakes stop the run with
# nothing moved; nothing above wrote to out_dir)
if init_from != 'resume' and not eval_only:
    note = make_room(out_dir, overwrite, act=master_process, resume_flag='--init_from=resume',
                     overwrite_flag='--overwrite=True')
    if note:
        log(note)
# join the process group only now: a mistake in the settings or data above stops every rank alike before it,
# with one message from rank 0
if ddp:
    join_process_group(device, backend)
model_args = asdict(model.config)
log(f"model: {model.num_params() / 1e6:.2f}M parameters, {model_args}")
if not fsdp:
    model.to(device)  # (fully_shard moves each rank's shards there, never the whole model)

if fsdp:  # each block, then the root (gpt/run.py); its grad scaler all-reduces the inf check over the shards
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
    shard_fsdp(model, dtype)

# float16 needs loss scaling to keep small gradients from underflowing; a no-op otherwise
# (under FSDP each rank sees only its shard of the gradients, so the inf check is all-reduced)
scaler = (ShardedGradScaler if fsdp else torch.amp.GradScaler)(device_type, enabled=(dtype == 'float16'))
# the fused AdamW kernel: one pass over all parameters, on CUDA and on CPU (bench.py --variants=forloop,fused)
optimizer = configure_optimizers(model, weight_decay, learning_rate, (beta1, beta2), device_type, verbose=master_process,
                                       fused=device_type in ('cuda', 'cpu'), muon_lr=muon_lr if optim == 'muon' else 0,
                                       muon_momentum=muon_momentum, muon_dtype=getattr(torch, dtype))
nonfinite = NonFiniteSteps(optimizer, device, nan_policy, optim)  # a non-finite step: skipped on the device
if ckpt is not None:
    load_optimizer_state(model, optimizer, ckpt['optimizer'])  # each rank keeps its shard under FSDP
    if ckpt.get('scaler'):
        scaler.load_state_dict(ckpt['scaler'])
raw_model = model  # the unwrapped model: for checkpoints, MFU and parameter access
if compile:
    log("compiling the model... (takes a minute)")
    model = torch.compile(model)
if ddp and not fsdp:
    from torch.nn.parallel import DistributedDataParallel as DDP
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)
peak, peak_source = (peak_flops_and_source(device, getattr(torch, dtype), override=peak_flops) if master_process
                      else (1.0, ''))
log(f"MFU is against {peak / 1e12:,.4g} TFLOP/s ({peak_source})" + (
    "; deterministic=True: deterministic kernels (device.use_deterministic)" if deterministic else ''))


@torch.no_grad()
def estimate_loss():
    """Mean loss over eval_iters batches per split. The eval windows are the same at every
    evaluation (seeded by ('eval', k)), so successive evaluations differ only by the model."""
    out = {}
    model.eval()
    for split in ('train', 'val') if eval_train else ('val',):
        losses = torch.zeros(eval_iters, device=device)
        for k in range(eval_iters):
            X, Y = data.batch(split, ('eval', k), rank)
            with ctx:
                _, loss = model(X, Y)
            losses[k] = loss
        out[split] = all_mean(losses.mean()).item()
    model.train()
    return out


def save(path_best=False):
    """Write out_dir/ckpt.pt atomically (and make best.pt the same file when it is the best).
    Called on every rank: under FSDP all ranks gather the shards into full tensors; rank 0 writes."""
    if fsdp:
        model_sd, optim_sd = gather_full_state(raw_model, optimizer)
    else:
        model_sd, optim_sd = raw_model.state_dict(), optimizer.state_dict()
    rng = rng_state(device)  # (on every rank: each GPU's CUDA generator is gathered)
    if not master_process:
        return
    if lora.is_lora(raw_model):  # only what was trained, and the base's name (rebuilt by loading.load_model)
        model_sd = lora.trained_state(raw_model, model_sd)
    state = dict(format=checkpoint.CHECKPOINT_FORMAT, kind='lm', model=model_sd, optimizer=optim_sd,
                 scaler=scaler.state_dict() if scaler.is_enabled() else None, model_args=model_args,
                 iter_num=iter_num, tokens_seen=tokens_seen, best_val_loss=best_val_loss, config=config, data_meta=data.meta,
                 rng=rng, is_best=path_best, train_seconds=seconds_before + time.time() - t_start,
                 lora=getattr(raw_model, 'lora_settings', None))
    path = os.path.join(out_dir, 'ckpt.pt')
    save_checkpoint(state, path)
    if path_best:
        link_checkpoint(path, os.path.join(out_dir, 'best.pt'))
    log(f"saved checkpoint to {path}" + (" (and best.pt)" if path_best else ''))


# run log: a JSON line per event, and a loss-curve PNG, for users without wandb
log_path = os.path.join(out_dir, 'log.jsonl')
history = {'iter': [], 'loss': [], 'eval_iter': [], 'train': [], 'val': [], 'tasks': []}


def record(**entry):
    if master_process:
        append_record(log_path, entry)


if wandb_log and master_process:
    import wandb
    wandb.init(project=wandb_project, name=wandb_run_name, config=config)
record(event='start', script='train.py', argv=sys.argv, config=config, model_args=model_args, torch=torch.__version__,
       python=platform.python_version(), device=device, world_size=world_size, iter_num=iter_num)

# SIGTERM (preemption) or Ctrl-C: finish the current step, checkpoint, exit 0 (a second signal aborts)
stop_signal = StopSignal(announce=master_process)

# ----------------------------------------------------------------------------- training loop
resumed_iter = None  # the iteration ckpt.pt on disk already holds, when resuming
if ckpt is not None:
    set_rng_state(ckpt['rng'], device)  # numpy, python, torch's and this GPU's (dropout is reseeded per micro-step)
    resumed_iter = iter_num
    del ckpt
mine = share(schedule.micro_steps(tokens_seen), rank, world_size)
X, Y = data.batch('train', iter_num, mine[0])  # first batch
t0 = time.time()
t_start = t0
# seconds of training (evaluations included) over this run's launches, as every process agrees: the clock of
# decay_on_clock, whose max_time is the whole run's budget (otherwise max_time counts this launch alone)
clock = seconds_before
if decay_on_clock:
    log(f"decay_on_clock: the learning rate decays by the clock too, ending after max_time={max_time:g}s of training")
local_iter_num = 0  # iterations run by this process (MFU is skipped while torch.compile warms up)
mfu = None  # smoothed MFU, once measured
eta = ETA()  # the time left (gpt/schedule.py)
while True:
    m = schedule.micro_steps(tokens_seen)  # this step's global micro-batches (grows during a batch ramp)
    step_tokens = m * micro_tokens
    lr = schedule.lr(iter_num, tokens_seen + step_tokens, clock) if decay_lr else learning_rate
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr * param_group.get('lr_scale', 1.0)  # (Muon's group: muon_lr / learning_rate)

    if (iter_num % eval_interval == 0 and (iter_num > 0 or eval_at_start)) or eval_only or iter_num >= max_iters:
        t_eval = time.time()
        losses = estimate_loss()
        # every rank scores its share of the tasks (raw_model: under FSDP its forward is collective)
        task_metrics = evaluate(raw_model, eval_task_list, batch_size, device, ctx) if eval_task_list else {}
        shown = {k: v for k, v in task_metrics.items() if not k.endswith(('_stderr', '/n'))}
        losses.setdefault('train', float('nan'))  # (eval_train=False: not measured)
        log(f"step {iter_num}: " + (f"train loss {losses['train']:.4f}, " if eval_train else '')
            + f"val loss {losses['val']:.4f}" + ''.join(f", {k} {v:.4f}" for k, v in shown.items()))
        record(event='eval', iter=iter_num, train_loss=losses['train'] if eval_train else None,
               val_loss=losses['val'], lr=lr, seconds=time.time() - t_start, **task_metrics)  # seconds since the loop started: time-to-loss
        history['eval_iter'].append(iter_num)
        history['train'].append(losses['train'])
        history['val'].append(losses['val'])
        history['tasks'].append(task_metrics)
        if wandb_log and master_process:
            wandb.log({'iter': iter_num, **({'train/loss': losses['train']} if eval_train else {}),
                       'val/loss': losses['val'], 'lr': lr,
                       **({'mfu': mfu * 100} if mfu is not None else {}), **shown})
        if plot and master_process and not eval_only:
            plot_losses(history, out_dir, f'{dataset}: {raw_model.num_params() / 1e6:.2f}M parameters')
        if not math.isfinite(losses['val']) or (eval_train and not math.isfinite(losses['train'])):
            # diverged weights; whatever nan_policy says, saving them would replace the last good checkpoint
            raise UserError(f"eval loss is {losses['val']} at iteration {iter_num}: the model has diverged; stopped "
                            f"without saving, so {out_dir}/ckpt.pt still holds the last good state. Lower "
                            f"learning_rate (or set grad_clip), then --init_from=resume")
        improved = losses['val'] < best_val_loss
        if improved:
            best_val_loss = losses['val']  # only ever a real improvement, even with always_save_checkpoint
        # ckpt.pt: at every evaluation (always_save_checkpoint) or on improvement, and always the final state;
        # best.pt only on improvement. (A resumed run evaluates again at its checkpoint's iteration; that
        # state is already on disk.)
        final = iter_num >= max_iters
        if not eval_only and iter_num != resumed_iter and (iter_num > 0 and (improved or always_save_checkpoint)
                                                           or final):
            save(path_best=improved and iter_num > 0)  # on every rank: FSDP gathers, rank 0 writes
        t0 = time.time()  # the next step's time leaves the evaluation out
        eta.eval_seconds = t0 - t_eval
    if eval_only or iter_num >= max_iters:
        break

    # forward/backward with gradient accumulation; DDP syncs gradients only on the last micro-step
    loss_sum = torch.zeros((), device=device)
    mine = share(m, rank, world_size)
    for j, micro in enumerate(mine):
        sync = j == len(mine) - 1
        # dropout masks, like the batches, are a function of (seed, iteration, global micro-step): a resumed
        # run, or one on another number of processes, draws exactly the same masks
        torch.manual_seed(seed_from(seed, 'dropout', iter_num, micro))
        if fsdp:  # reduce-scatter only after the last micro-step; costs unsharded grads in memory until then
            raw_model.set_requires_gradient_sync(sync)
        with (model.no_sync() if ddp and not fsdp and not sync else nullcontext()), ctx:
            _, loss = model(X, Y)
            # the sum over micro-steps is the batch mean (DDP and FSDP average the ranks' sums)
            loss = loss / (m / world_size)
        loss_sum += loss.detach()
        # fetch the next batch while the backward pass runs on the device
        if not sync:
            X, Y = data.batch('train', iter_num, mine[j + 1])
        else:
            X, Y = data.batch('train', iter_num + 1, share(schedule.micro_steps(tokens_seen + step_tokens), rank, world_size)[0])
        scaler.scale(loss).backward()
    # clip, then step unless the loss or a gradient is not finite (gpt/nonfinite.py: no host sync for it)
    bad = nonfinite.step(model, optimizer, scaler, loss_sum, grad_clip, iter_num)

    # the host sync: the batch loss (averaged over processes), the non-finite steps, any stop signal and
    # whether the time budget is spent, so that every process takes the same decision. It stalls a GPU's
    # queue, so there it runs at log steps only (or when a signal or the time limit needs acting on, if
    # there are no other processes to agree with); on a CPU it costs nothing.
    now = time.time() - t_start
    clock = seconds_before + now if not ddp else clock  # (with other processes: agreed on below)
    time_up = max_time > 0 and (clock if decay_on_clock else now) >= max_time
    lossf, stopping = None, False
    if device_type == 'cpu' or iter_num % log_interval == 0 or (not ddp and (stop_signal or time_up)):
        status = all_mean(torch.stack([loss_sum.float(), bad.float(), *nonfinite.state(),
                                       torch.tensor(float(len(stop_signal)), device=device),
                                       torch.tensor(float(time_up), device=device),
                                       torch.tensor(seconds_before + now, device=device)]))
        lossf, bad_now, nb, fb, fb_loss, stopping, time_up, clock = status.tolist()  # one device-to-host copy
        stopping, time_up = stopping > 0, time_up > 0
        nonfinite.report(nb, fb, fb_loss, iter_num, out_dir, log, record)
        if bad_now:
            lossf = None  # a skipped step is not logged as a training loss
    else:
        time_up = False  # not agreed with the other processes yet: acted on at the next sync

    t1 = time.time()
    dt, t0 = t1 - t0, t1
    if local_iter_num >= 1:  # (the first step also warms up, and compiles)
        eta.step(dt, step_tokens)
    if iter_num % log_interval == 0 and master_process and lossf is not None:
        if local_iter_num >= 5:  # let the training loop settle (and compile) first
            u = raw_model.estimate_mfu(step_tokens / world_size, dt, peak)
            mfu = u if mfu is None else 0.9 * mfu + 0.1 * u
        shown = f", mfu {mfu * 100:.2f}%" if mfu is not None else ''
        evals_left = max_iters // eval_interval - iter_num // eval_interval + (max_iters % eval_interval > 0)
        left = eta.left(schedule.tokens_left(iter_num + 1, tokens_seen + step_tokens, max_iters), evals_left)
        if left is not None and max_time:  # the time budget ends the run first (evaluations count against it)
            left = min(left, max(0.0, max_time - ((clock - seconds_before) if not decay_on_clock else clock)))
        shown += f", eta {left / 60:.1f}min" if left is not None else ''
        log(f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, time {dt * 1000:.1f}ms, "
            f"{step_tokens / dt:,.0f} tok/s{shown}"
            + (f", {step_tokens:,} tokens/step, {(tokens_seen + step_tokens) / 1e6:,.2f}M tokens"
               if batch_ramp_start or schedule.in_tokens else ''))
        record(event='train', iter=iter_num, loss=lossf, lr=lr, ms=dt * 1000, tok_s=step_tokens / dt, mfu=mfu,
               tokens_step=step_tokens, tokens_seen=tokens_seen + step_tokens, seconds=clock)  # (the next lr's clock)
        history['iter'].append(iter_num)
        history['loss'].append(lossf)
        if wandb_log:
            wandb.log({'iter': iter_num, 'train/loss_step': lossf, 'lr': lr})
    iter_num += 1
    tokens_seen += step_tokens
    local_iter_num += 1
    if time_up and iter_num < max_iters:
        log(f"max_time={max_time:g}s reached after {iter_num} iterations; final evaluation and checkpoint")
        max_iters = iter_num  # end here as at max_iters: evaluate, save, stop

    if stopping:
        save()
        args = [a for a in sys.argv[1:] if not a.startswith('--init_from=')]
        log(f"stopped by signal after {iter_num} iterations, checkpoint saved; to resume, run the same command "
            f"with --init_from=resume: {shlex.join(['python', 'train.py', *args, '--init_from=resume'])}")
        break

if ddp:
    del model, raw_model, optimizer  # (DDP's reducer holds the process group: it goes first)
    leave_process_group()
