"""
Direct preference optimisation (Rafailov et al. 2023): InstructGPT's objective (reward up, KL to the SFT policy
bounded) reached without a reward model or sampling, from preference pairs alone. The policy starts as the SFT
model, which also stays frozen as the reference; the loss is -log sigmoid(beta * [log pi/ref (y_w) -
log pi/ref (y_l)]) (rl.dpo_loss). A ranked group of K responses gives its C(K,2) pairs. It logs the loss, the
implicit reward margin beta * log pi/ref (y_w) - beta * log pi/ref (y_l) and the preference accuracy (the share of
pairs with a positive margin) on training and held-out pairs, and saves the policy as a plain GPT checkpoint
(sample.py, eval.py and export.py read it).

Offline demo on a CPU (see the config's header for the whole chain):
$ python dpo.py config/dpo_shakespeare.py
$ python sample.py --out_dir=out-dpo-shakespeare --start="<|user|>Now, brother of<|assistant|>"
Your own pairs (jsonl or a hub dataset), from an SFT run or GPT-2:
$ python dpo.py --init_from=out-sft --train_data=pairs_train.jsonl --val_data=pairs_val.jsonl --out_dir=out-dpo
CPU, 2 processes (gloo; the same steps as one process, the batch's pairs split between them):
$ torchrun --standalone --nproc_per_node=2 dpo.py config/dpo_shakespeare.py
One node of 8 GPUs: torchrun --standalone --nproc_per_node=8 dpo.py ... (batch_size divisible by 8)
"""

import os
import time

import torch

import configurator
from gpt import errors, lora
from gpt.chat import encode_prompt, encode_response
from gpt.checkpoint import rng_state
from gpt.device import autocast_ctx, describe, pick_device, pick_dtype, setup_torch
from gpt.errors import check_range
from gpt.optim import configure_optimizers
from gpt.prefs import collate, fit, read_preferences
from gpt.rl import dpo_loss, load_policy, policy_checkpoint, response_logprobs
from gpt.run import Run, fmt, resume_settings
from gpt.tokendata import get_tokenizer, seed_from

# -----------------------------------------------------------------------------
# config: overridden by a config file, then by --key=value
init_from = 'out-sft-shakespeare'   # the SFT policy (a run's out_dir, a hub name, an HF dir), also the reference
out_dir = 'out-dpo'                 # ckpt.pt (the policy, a plain GPT checkpoint), log.jsonl
train_data = ''                     # pairs or ranked groups: a .jsonl file or hf:name[:config[:split]]
val_data = ''                       # held-out pairs, for the accuracy and margin
beta = 0.1                          # DPO's beta: the strength of the implicit KL constraint to the reference
batch_size = 32                     # preference pairs per step, summed over processes
max_iters = 200                     # optimizer steps
learning_rate = 1e-4
warmup_iters = 10                   # linear warmup, then constant
weight_decay = 0.0                  # on matrices only
grad_clip = 1.0                     # 0 disables
eval_interval = 50                  # held-out accuracy (and a checkpoint) every this many steps, and at the end
max_val = 0                         # evaluate on at most this many held-out pairs (0: all)
dropout = 0.0                       # (with dropout, N processes draw other masks than 1 process)
wandb_log = False                   # also log to Weights & Biases
wandb_project = 'align'
wandb_run_name = 'dpo'
lora_rank = 0                       # LoRA (gpt/lora.py): > 0 trains rank-r adapters, the start model frozen
lora_alpha = 16.0                   # the adapters' update is scaled by lora_alpha / lora_rank
lora_dropout = 0.05
lora_targets = 'c_attn'             # c_attn (or q,k,v), attn.c_proj, c_fc, mlp.c_proj, c_proj, all
device = 'auto'
dtype = 'float32'                   # 'auto' picks bf16 where it is fast
seed = 1337
resume = False                      # continue the run in out_dir from its ckpt.pt (`--resume=True --out_dir=X` alone
                                    # takes the run's settings)
# -----------------------------------------------------------------------------
given = set()  # the settings a config file or the command line gave
config = configurator.configure(globals(), verbose=int(os.environ.get('RANK', 0)) == 0, given=given)
ckpt, resume_note = resume_settings(out_dir, config, given, 'dpo.py') if resume else (None, '')
globals().update(config)
for k in ('batch_size', 'max_iters', 'eval_interval'):
    check_range(k, config[k], low=1)
for k in ('warmup_iters', 'weight_decay', 'grad_clip', 'max_val'):
    check_range(k, config[k], low=0)
check_range('learning_rate', learning_rate, low=0, low_open=True)
check_range('beta', beta, low=0, low_open=True)
if not train_data or not val_data:
    raise errors.UserError("pass --train_data=... and --val_data=... (chosen/rejected pairs or ranked groups)")
device = pick_device(device)
dtype = pick_dtype(dtype, device)
setup_torch(seed, device)
ctx = autocast_ctx(device, dtype)

# ----------------------------------------------------------------------------- data and models
model, meta = load_policy(init_from, dropout=dropout, lora_rank=lora_rank, lora_alpha=lora_alpha,
                          lora_dropout=lora_dropout, lora_targets=lora_targets)
encode, _, _ = get_tokenizer(meta)


def encode_pairs(groups):
    """[(prompt, chosen, rejected) ids]: every pair of every group, the better response first."""
    out = []
    for prompt, responses in groups:
        p = encode_prompt(encode, meta, prompt)
        rs = [encode_response(encode, meta, r) for r in responses]
        out += [(p, rs[i], rs[j]) for i in range(len(rs)) for j in range(i + 1, len(rs))]
    return out


train_pairs = encode_pairs(read_preferences(train_data))
val_pairs = encode_pairs(read_preferences(val_data))[:max_val or None]
if batch_size > len(train_pairs):  # (a step draws its pairs with replacement: it would repeat them)
    raise errors.UserError(f"batch_size ({batch_size}) is larger than the {len(train_pairs)} training pairs in "
                                 f"{train_data}: lower --batch_size")
# joins the process group once the settings and data have been checked on every rank
run = Run(out_dir, device, divide={'batch_size': batch_size}, new_run=not resume)
device = run.device
model.to(device)
reference = lora.reference(model)  # the frozen SFT policy (LoRA: the policy with its adapters off, no copy)
run.log(f"{describe(device, dtype)}, {run.world} process(es); policy and reference from {init_from} "
        f"({model.num_params() / 1e6:.2f}M parameters); {len(train_pairs):,} training and {len(val_pairs):,} "
        f"held-out pairs; beta {beta}")
if wandb_log:
    run.start_wandb(wandb_project, wandb_run_name, config)
run.record(event='start', config=config, world_size=run.world, resume=bool(ckpt))
optimizer = configure_optimizers(model, weight_decay, learning_rate, (0.9, 0.95), device, verbose=False)
start = run.begin(ckpt, resume_note, max_iters)
if ckpt is not None:
    lora.load_trained(model, ckpt['model'])
    optimizer.load_state_dict(ckpt['optimizer'])
    del ckpt


def logps(net, pairs):
    """Summed log-probabilities of the chosen and of the rejected responses, (N,) each."""
    block = net.config.block_size
    fitted = [fit(p, r, block) for p, c, rej in pairs for r in (c, rej)]
    idx, mask, _ = collate([p for p, _ in fitted], [r for _, r in fitted])
    with ctx:
        lp = response_logprobs(net, idx.to(device))
    summed = (lp * mask.to(device)).sum(-1)
    return summed[0::2], summed[1::2]


def dpo_step(pairs):
    """(loss, margin per pair, accuracy) of the policy against the reference on pairs."""
    with torch.no_grad():
        ref_c, ref_r = logps(reference, pairs)
    pi_c, pi_r = logps(model, pairs)
    return dpo_loss(pi_c, pi_r, ref_c, ref_r, beta)


@torch.no_grad()
def evaluate():
    """(loss, mean margin, accuracy) over val_pairs, each rank scoring its share."""
    model.eval()
    share = run.part(val_pairs)
    totals = torch.zeros(3)
    for i in range(0, len(share), 64):
        chunk = share[i:i + 64]
        loss, margin, acc = dpo_step(chunk)
        totals += torch.tensor([loss.item() * len(chunk), margin.sum().item(), acc.item() * len(chunk)])
    model.train()
    return (run.sum(totals) / len(val_pairs)).tolist()


def save(step, val_loss):
    """ckpt.pt: the policy (a plain GPT checkpoint) and what resuming at step (the next step to run) needs."""
    run.save(policy_checkpoint(model, meta, config, step, best_val_loss=val_loss, optimizer=optimizer.state_dict(),
                               rng=rng_state()))


# ----------------------------------------------------------------------------- training
model.train()
t0 = time.time()
val_loss = float('nan')
for step in range(start, max_iters + 1):
    if step % eval_interval == 0 or step == max_iters:
        val_loss, val_margin, val_acc = evaluate()
        run.log(f"step {step}: val loss {val_loss:.4f}, val reward margin {val_margin:.4f}, "
                f"val preference accuracy {val_acc:.4f}")
        run.record(event='eval', iter=step, val_loss=val_loss, val_margin=val_margin, val_accuracy=val_acc,
                   seconds=time.time() - t0)
        if step > start:
            save(step, val_loss)
    if step == max_iters:
        break
    mine = run.pick(len(train_pairs), batch_size, seed, 'pairs', step)  # this rank's share of the step's pairs
    for g in optimizer.param_groups:
        g['lr'] = learning_rate * min(1.0, (step + 1) / (warmup_iters + 1))
    torch.manual_seed(seed_from(seed, 'dropout', step, run.rank))
    loss, margin, acc = dpo_step([train_pairs[i] for i in mine])
    (loss * len(mine) / batch_size).backward()  # summed over ranks: the mean over the step's pairs
    run.step(model, optimizer, grad_clip)
    stats = dict(zip(('loss', 'margin', 'accuracy'), run.mean([loss.item(), margin.mean().item(), acc.item()])))
    if step % 10 == 0 or step == max_iters - 1:
        run.log(f"iter {step}: {fmt(stats)}, {time.time() - t0:.1f}s")
    run.record(event='train', iter=step, **stats)
    run.stop_if_signalled(lambda done: save(done, val_loss), step + 1, max_iters)
run.log(f"saved the policy to {os.path.join(out_dir, 'ckpt.pt')}")
run.close()
