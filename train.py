"""
Train a GPT: from scratch, from OpenAI's GPT-2 weights (finetuning), or resuming a run.

CPU laptop (character-level Shakespeare, a few minutes):
$ python data/shakespeare_char/prepare.py
$ python train.py config/train_shakespeare_char_cpu.py

One GPU:
$ python train.py config/train_shakespeare_char.py

CPU, 2 processes (gloo; the same steps as one process with --gradient_accumulation_steps=2):
$ torchrun --standalone --nproc_per_node=2 train.py config/train_shakespeare_char_cpu.py --gradient_accumulation_steps=2

One node, 8 GPUs (DDP; FSDP with --parallelism=fsdp for models that do not fit one GPU):
$ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

Two nodes of 8 GPUs: run on each node, with node_rank 0 and 1 and the IP of node 0 (here 10.0.0.1).
gradient_accumulation_steps must divide by all 16 processes; 48 * 10 batch keeps 491,520 tokens/iter:
$ torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 --master_addr=10.0.0.1 --master_port=29500 train.py config/train_gpt2.py --gradient_accumulation_steps=48 --batch_size=10
$ torchrun --nnodes=2 --nproc_per_node=8 --node_rank=1 --master_addr=10.0.0.1 --master_port=29500 train.py config/train_gpt2.py --gradient_accumulation_steps=48 --batch_size=10
(or the same command on every node with a rendezvous endpoint, --rdzv_backend=c10d --rdzv_endpoint=10.0.0.1:29500
--rdzv_id=JOB, instead of --node_rank/--master_addr/--master_port; if the nodes lack Infiniband, prepend
NCCL_IB_DISABLE=1. Every node needs the data; to resume, every node needs out_dir/ckpt.pt: use a shared filesystem)

Any setting below can be changed by a config file and then by --key=value, e.g.
$ python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False
"""

import atexit
import json
import math
import os
import platform
import shlex
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

import torch

import configurator
from checkpoint import (CHECKPOINT_FORMAT, check_resume_data, gather_full_state, link_checkpoint, load_model,
                        load_optimizer_state, rng_state, save_checkpoint, set_rng_state)
from configurator import UserError
from device import autocast_ctx, describe, device_peak_flops, pick_device, pick_dtype, setup_torch
from model import GPTConfig
from tokendata import TokenData, dataset_dir, load_meta, seed_from

# -----------------------------------------------------------------------------
# config: defaults train GPT-2 124M on OpenWebText; overridden by a config file, then --key=value
# I/O
out_dir = 'out'                 # checkpoints (ckpt.pt latest, best.pt best val), log.jsonl, loss.png
eval_interval = 2000            # evaluate train/val loss (and checkpoint) every this many iterations
log_interval = 1                # print loss, lr, ms/iter, tokens/s, MFU every this many iterations
eval_iters = 200                # batches per split per evaluation
eval_only = False               # evaluate once and exit
always_save_checkpoint = True   # write ckpt.pt at every eval (else only when val loss improves)
init_from = 'scratch'           # 'scratch', 'resume' (from out_dir), gpt2*, openai-gpt, or a local HF dir
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
gelu_approx = 'tanh'            # GPT-2's tanh GELU, or 'none': exact erf GELU (nanoGPT's), cheaper on CPU in eager
tie_embeddings = True           # output projection shares the token embeddings; False for Image GPT
zero_init_head = False          # Image GPT: the output projection starts at zero (needs tie_embeddings=False)
# AdamW (GPT-3 settings)
learning_rate = 6e-4            # peak learning rate
max_iters = 600000              # total optimizer steps
weight_decay = 1e-1             # on matrices only
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0                 # clip the global grad norm to this; 0 disables
# learning-rate schedule: linear warmup, then cosine decay to min_lr
decay_lr = True
warmup_iters = 2000
lr_decay_iters = 600000         # ~ max_iters (Chinchilla)
min_lr = 6e-5                   # ~ learning_rate / 10 (GPT-3)
# system
device = 'auto'                 # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = 'auto'                  # 'auto' (bf16 on GPUs that have it, else fp16; on CPU bf16 with AMX, else fp32), 'float32', 'bfloat16', 'float16'
compile = True                  # torch.compile the model (PyTorch 2)
backend = 'auto'                # distributed backend: 'auto' (nccl on CUDA, gloo on CPU), 'nccl', 'gloo'
parallelism = 'ddp'             # under torchrun: 'ddp' (replicate) or 'fsdp' (shard, for models too big for one device)
seed = 1337
peak_flops = 0.0                # device peak FLOP/s for MFU; 0 looks it up (GPUs) or measures a matmul (CPU)
max_time = 0.0                  # stop after this many seconds of training (0 = no limit), then evaluate and save
# -----------------------------------------------------------------------------
defaults = configurator.config_keys(globals())
config = configurator.configure(globals(), verbose=int(os.environ.get('RANK', 0)) == 0)  # print once under torchrun
overridden = {k for k, v in config.items() if v != defaults[k]}
# a mistake anywhere below raises UserError: one `error: ...` line, exit status 1 (configurator.py)
if nan_policy not in ('stop', 'skip'):
    raise UserError(f"nan_policy must be 'stop' or 'skip', got {nan_policy!r}")


# ----------------------------------------------------------------------------- distributed set-up
# torchrun starts one process per device and tells each its place in RANK, LOCAL_RANK, WORLD_SIZE
ddp = int(os.environ.get('RANK', -1)) != -1  # launched by torchrun (with DDP or FSDP)?
fsdp = ddp and parallelism == 'fsdp'
if ddp:
    import torch.distributed as dist
    rank, local_rank, world_size = int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])
    master_process = rank == 0  # does the printing, logging and checkpointing
    # checked before joining the process group: every rank exits at once, rank 0 prints the message
    if gradient_accumulation_steps % world_size:
        raise UserError(f"gradient_accumulation_steps ({gradient_accumulation_steps}) must be divisible by the "
                        f"number of processes ({world_size}); e.g. --gradient_accumulation_steps="
                        f"{max(1, gradient_accumulation_steps // world_size) * world_size}")
    if parallelism not in ('ddp', 'fsdp'):
        raise UserError(f"parallelism must be 'ddp' or 'fsdp', got {parallelism!r}")
    gradient_accumulation_steps //= world_size  # micro-steps per process
    if device == 'auto':
        device = f'cuda:{local_rank}' if torch.cuda.is_available() else 'cpu'
    elif device == 'cuda':
        device = f'cuda:{local_rank}'
else:
    rank, local_rank, world_size, master_process = 0, 0, 1, True
device = pick_device(device)
dtype = pick_dtype(dtype, device)  # 'auto': bf16 on GPUs, and on CPUs only where bf16 is fast (AMX)
device_type = torch.device(device).type  # 'cuda', 'cpu' or 'mps'
if device_type != 'cuda':
    compile = compile and device_type == 'cpu'  # inductor has no MPS backend worth using yet
setup_torch(seed, device)  # the same initial weights on every rank (FSDP shards them as they are)
# FSDP casts the parameters itself (MixedPrecisionPolicy below), so it needs no autocast
ctx = autocast_ctx(device, 'float32' if fsdp else dtype)


def log(*args):
    if master_process:
        print(*args, flush=True)


log(f"command: {' '.join(sys.argv)}")
log(f"python {platform.python_version()}, {describe(device, dtype)}, {world_size} process(es)")

if master_process:
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, '.write_test')
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as e:
        raise UserError(f"out_dir {out_dir!r} is not writable ({e.strerror}); choose another with --out_dir=...") from None

# ----------------------------------------------------------------------------- model
data_dir, prepare = dataset_dir(dataset, data_dir)
meta = load_meta(data_dir, prepare)
if init_from == 'scratch':
    log("initialising a new model from scratch")
elif init_from == 'resume':
    log(f"resuming from {os.path.join(out_dir, 'ckpt.pt')}")
else:
    log(f"initialising from pretrained weights: {init_from}")
# a resumed run keeps its checkpoint's context unless the command line sets block_size
model, _, ckpt = load_model(
    init_from, out_dir, 'ckpt.pt', block_size=block_size if init_from != 'resume' or 'block_size' in overridden else 0,
    scratch=GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                      vocab_size=meta['vocab_size'], dropout=dropout, pad_vocab_multiple=pad_vocab_multiple,
                      attn_impl=attn_impl, gelu_approx=gelu_approx, tie_embeddings=tie_embeddings,
                      zero_init_head=zero_init_head) if init_from == 'scratch' else None,
    expect={k: config[k] for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias') if k in overridden},
    dropout=dropout)
block_size = model.config.block_size
tokens_per_iter = gradient_accumulation_steps * world_size * batch_size * block_size
log(f"tokens per iteration: {tokens_per_iter:,} = {gradient_accumulation_steps} accum * {world_size} processes "
    f"* {batch_size} batch * {block_size} block")
iter_num, best_val_loss = 0, float('inf')
if ckpt is not None:
    check_resume_data(ckpt, meta, data_dir)
    iter_num, best_val_loss = ckpt['iter_num'], ckpt['best_val_loss']
    # an exact continuation needs the same settings (batch, lr schedule, seed, ...): show what changed
    changed = [f"{k}={v!r} (was {ckpt['config'][k]!r})" for k, v in config.items()
               if k != 'init_from' and k in ckpt.get('config', {}) and ckpt['config'][k] != v]
    if changed:
        log(f"settings that differ from the checkpoint's run: {', '.join(changed)}")
    # a run killed between writing ckpt.pt and linking best.pt left best.pt one checkpoint behind
    ckpt_path, best_path = ckpt['path'], os.path.join(out_dir, 'best.pt')
    if master_process and ckpt.get('is_best') and not (os.path.exists(best_path)
                                                       and os.path.samefile(ckpt_path, best_path)):
        link_checkpoint(ckpt_path, best_path)
        log(f"{best_path} was behind {ckpt_path}, the best so far (a save was interrupted); linked it")
data = TokenData(data_dir, block_size, batch_size, device, seed=seed, vocab_size=model.config.vocab_size)
# join the process group only now: a mistake in the settings or data above stops every rank alike before it,
# with one message from rank 0
if ddp:
    if device.startswith('cuda'):
        torch.cuda.set_device(device)
    if backend == 'auto':
        backend = 'nccl' if device.startswith('cuda') else 'gloo'
    dist.init_process_group(backend=backend)
    configurator.exit_on_user_error()  # (torch's hook, installed just now, would prefix the line with [rankN])
    # leave the group cleanly however the script ends (normal exit, a UserError or another exception)
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
model_args = asdict(model.config)
log(f"model: {model.num_params() / 1e6:.2f}M parameters, {model_args}")
if not fsdp:
    model.to(device)  # (fully_shard moves each rank's shards there, never the whole model)

if fsdp:
    # FSDP2: shard each transformer block, then the root, which holds the embeddings, ln_f and the
    # lm_head (tied to wte: one Parameter, sharded once). Shards are gathered in param_dtype for
    # compute and gradients reduced in fp32. The optimizer must be built on the sharded parameters.
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
    mp_policy = MixedPrecisionPolicy(param_dtype=getattr(torch, dtype), reduce_dtype=torch.float32)
    for block in model.transformer.h:
        fully_shard(block, mp_policy=mp_policy)
    fully_shard(model, mp_policy=mp_policy)

# float16 needs loss scaling to keep small gradients from underflowing; a no-op otherwise
# (under FSDP each rank sees only its shard of the gradients, so the inf check is all-reduced)
scaler = (ShardedGradScaler if fsdp else torch.amp.GradScaler)(device_type, enabled=(dtype == 'float16'))
# the fused AdamW kernel: one pass over all parameters, on CUDA and on CPU (bench.py --variants=forloop,fused)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type, verbose=master_process,
                                       fused=device_type in ('cuda', 'cpu'))
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
peak = device_peak_flops(device, getattr(torch, dtype), override=peak_flops) if master_process else 1.0


def all_mean(t):
    """Average a tensor over processes (a no-op without DDP)."""
    if ddp:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= world_size
    return t


@torch.no_grad()
def estimate_loss():
    """Mean loss over eval_iters batches per split. The eval windows are the same at every
    evaluation (seeded by ('eval', k)), so successive evaluations differ only by the model."""
    out = {}
    model.eval()
    for split in ('train', 'val'):
        losses = torch.zeros(eval_iters, device=device)
        for k in range(eval_iters):
            X, Y = data.batch(split, ('eval', k), rank)
            with ctx:
                _, loss = model(X, Y)
            losses[k] = loss
        out[split] = all_mean(losses.mean()).item()
    model.train()
    return out


def get_lr(it):
    """Linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def save(path_best=False):
    """Write out_dir/ckpt.pt atomically (and make best.pt the same file when it is the best).
    Called on every rank: under FSDP all ranks gather the shards into full tensors; rank 0 writes."""
    if fsdp:
        model_sd, optim_sd = gather_full_state(raw_model, optimizer)
    else:
        model_sd, optim_sd = raw_model.state_dict(), optimizer.state_dict()
    if not master_process:
        return
    state = dict(format=CHECKPOINT_FORMAT, model=model_sd, optimizer=optim_sd,
                 scaler=scaler.state_dict() if scaler.is_enabled() else None, model_args=model_args,
                 iter_num=iter_num, best_val_loss=best_val_loss, config=config, data_meta=data.meta,
                 rng=rng_state(), is_best=path_best)
    path = os.path.join(out_dir, 'ckpt.pt')
    save_checkpoint(state, path)
    if path_best:
        link_checkpoint(path, os.path.join(out_dir, 'best.pt'))
    log(f"saved checkpoint to {path}" + (" (and best.pt)" if path_best else ''))


# run log: a JSON line per event, and a loss-curve PNG, for users without wandb
log_path = os.path.join(out_dir, 'log.jsonl')
history = {'iter': [], 'loss': [], 'eval_iter': [], 'train': [], 'val': []}


def record(**entry):
    if master_process:
        with open(log_path, 'a') as f:
            f.write(json.dumps(entry) + '\n')


def plot_losses():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(history['iter'], history['loss'], lw=0.8, alpha=0.6, label='train (per step)')
    ax.plot(history['eval_iter'], history['train'], 'o-', label='train (eval)')
    ax.plot(history['eval_iter'], history['val'], 'o-', label='val (eval)')
    ax.set_xlabel('iteration')
    ax.set_ylabel('loss')
    ax.set_title(f'{dataset}: {raw_model.num_params() / 1e6:.2f}M parameters')
    ax.legend()
    ax.grid(alpha=0.3)
    tmp = os.path.join(out_dir, 'loss.tmp.png')
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, os.path.join(out_dir, 'loss.png'))


if wandb_log and master_process:
    import wandb
    wandb.init(project=wandb_project, name=wandb_run_name, config=config)
record(event='start', argv=sys.argv, config=config, model_args=model_args, torch=torch.__version__,
       python=platform.python_version(), device=device, world_size=world_size, iter_num=iter_num)

# SIGTERM (preemption) or Ctrl-C: finish the current step, checkpoint, exit 0. The first signal puts
# back the default action, so a second one kills the process at once (e.g. if it hangs in a collective).
stop_signal = []


def on_signal(signum, frame):
    stop_signal.append(signum)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    if master_process:  # os.write: print() is not safe inside a signal handler
        os.write(2, f"\n{signal.Signals(signum).name}: saving a checkpoint after this step "
                    f"(send it again to abort without saving)\n".encode())


for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, on_signal)

# ----------------------------------------------------------------------------- training loop
resumed_iter = None  # the iteration ckpt.pt on disk already holds, when resuming
if ckpt is not None:
    set_rng_state(ckpt['rng'])  # numpy, python (and torch, though dropout is reseeded at each micro-step)
    resumed_iter = iter_num
    del ckpt
X, Y = data.batch('train', iter_num, rank * gradient_accumulation_steps)  # first batch
t0 = time.time()
t_start = t0
local_iter_num = 0  # iterations run by this process (MFU is skipped while torch.compile warms up)
running_mfu = -1.0
while True:
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr

    if iter_num % eval_interval == 0 or eval_only or iter_num >= max_iters:
        losses = estimate_loss()
        log(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        record(event='eval', iter=iter_num, train_loss=losses['train'], val_loss=losses['val'], lr=lr,
               seconds=time.time() - t_start)  # since the loop started: time-to-loss for speedruns
        history['eval_iter'].append(iter_num)
        history['train'].append(losses['train'])
        history['val'].append(losses['val'])
        if wandb_log and master_process:
            wandb.log({'iter': iter_num, 'train/loss': losses['train'], 'val/loss': losses['val'], 'lr': lr,
                       'mfu': running_mfu * 100})
        if plot and master_process and not eval_only:
            plot_losses()
        if not (math.isfinite(losses['train']) and math.isfinite(losses['val'])):
            # diverged weights; whatever nan_policy says, saving them would replace the last good checkpoint
            raise UserError(f"eval loss is {losses['val']} at iteration {iter_num}: the model has diverged; stopped without "
                 f"saving, so {out_dir}/ckpt.pt still holds the last good state. Lower learning_rate (or set "
                 f"grad_clip), then --init_from=resume")
        improved = losses['val'] < best_val_loss
        if improved:
            best_val_loss = losses['val']  # only ever a real improvement, even with always_save_checkpoint
        # (a resumed run evaluates again at its checkpoint's iteration; that state is already on disk)
        if iter_num > 0 and (improved or (always_save_checkpoint and iter_num != resumed_iter)) and not eval_only:
            save(path_best=improved)  # on every rank: FSDP gathers, rank 0 writes
    if eval_only or iter_num >= max_iters:
        break

    # forward/backward with gradient accumulation; DDP syncs gradients only on the last micro-step
    loss_sum = torch.zeros((), device=device)
    for micro_step in range(gradient_accumulation_steps):
        sync = micro_step == gradient_accumulation_steps - 1
        # dropout masks, like the batches, are a function of (seed, iteration, global micro-step): a resumed
        # run, or one on another number of processes, draws exactly the same masks
        torch.manual_seed(seed_from(seed, 'dropout', iter_num, rank * gradient_accumulation_steps + micro_step))
        if fsdp:  # reduce-scatter only after the last micro-step; costs unsharded grads in memory until then
            raw_model.set_requires_gradient_sync(sync)
        with (model.no_sync() if ddp and not fsdp and not sync else nullcontext()), ctx:
            _, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps  # the sum over micro-steps is the batch mean
        loss_sum += loss.detach()
        # fetch the next batch while the backward pass runs on the device
        nxt = (iter_num, micro_step + 1) if not sync else (iter_num + 1, 0)
        X, Y = data.batch('train', nxt[0], rank * gradient_accumulation_steps + nxt[1])
        scaler.scale(loss).backward()
    # the host sync: the batch loss (averaged over processes), any stop signal and whether the time budget is
    # spent, so that every process takes the same decision. It stalls a GPU's queue, so there it runs at log
    # steps only (or when a signal or the time limit needs acting on, if there are no other processes to
    # agree with), unless nan_policy='skip' must see every loss before its update; on a CPU it costs nothing.
    time_up = max_time > 0 and time.time() - t_start >= max_time
    if (device_type == 'cpu' or nan_policy == 'skip' or iter_num % log_interval == 0
            or (not ddp and (stop_signal or time_up))):
        status = all_mean(torch.stack([loss_sum.float(), torch.tensor(float(len(stop_signal)), device=device),
                                       torch.tensor(float(time_up), device=device)]))
        lossf, stopping, time_up = status.tolist()  # one device-to-host copy
        stopping, time_up = stopping > 0, time_up > 0
    else:
        lossf, stopping, time_up = 0.0, False, False
    skipped = not math.isfinite(lossf)
    if skipped and nan_policy == 'stop':
        raise UserError(f"loss is {lossf} at iteration {iter_num}; stopped without saving, so {out_dir}/ckpt.pt still holds the "
             f"last good state. Lower learning_rate or use dtype=float32/bfloat16, then --init_from=resume")
    if skipped:  # nan_policy='skip': drop these gradients, leave the weights and optimizer state as they were
        log(f"iter {iter_num}: loss is {lossf}; skipping this step (nan_policy='skip')")
        record(event='skip', iter=iter_num, loss=str(lossf))
    else:
        if grad_clip != 0.0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)

    t1 = time.time()
    dt, t0 = t1 - t0, t1
    if iter_num % log_interval == 0 and master_process and not skipped:
        if local_iter_num >= 5:  # let the training loop settle (and compile) first
            mfu = raw_model.estimate_mfu(tokens_per_iter // world_size, dt, peak)
            running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
        eta = (max_iters - iter_num) * dt
        log(f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, time {dt * 1000:.1f}ms, "
            f"{tokens_per_iter / dt:,.0f} tok/s, mfu {running_mfu * 100:.2f}%, eta {eta / 60:.1f}min")
        record(event='train', iter=iter_num, loss=lossf, lr=lr, ms=dt * 1000, tok_s=tokens_per_iter / dt,
               mfu=running_mfu)
        history['iter'].append(iter_num)
        history['loss'].append(lossf)
        if wandb_log:
            wandb.log({'iter': iter_num, 'train/loss_step': lossf, 'lr': lr})
    iter_num += 1
    local_iter_num += 1
    if time_up and iter_num < max_iters:
        log(f"max_time={max_time:g}s reached after {iter_num} iterations; final evaluation and checkpoint")
        max_iters = iter_num  # end here as at max_iters: evaluate, save (if improved or always_save_checkpoint), stop

    if stopping:
        save()
        args = [a for a in sys.argv[1:] if not a.startswith('--init_from=')]
        log(f"stopped by signal after {iter_num} iterations, checkpoint saved; to resume, run the same command "
            f"with --init_from=resume: {shlex.join(['python', 'train.py', *args, '--init_from=resume'])}")
        break

if ddp:
    dist.destroy_process_group()
