"""
InstructGPT's step 2: a reward model trained on rankings of K responses per prompt (gpt/prefs.py has the data format
and the loss). The SFT model with a scalar head on the last token (heads.RewardModel) scores a prompt and
response; each step takes whole ranked groups, all C(K,2) pairs of a group in one batch with the group counting
once, loss = -1/C(K,2) E[log sigmoid(r(x, y_w) - r(x, y_l))]. It logs the held-out pairwise accuracy, and at the
end shifts the head's bias so that the SFT policy's own responses to the training prompts score 0 on average,
as the paper does before RL.

Offline demo on a CPU (see config/reward_shakespeare.py for the whole chain):
$ python reward.py config/reward_shakespeare.py
Your own data (jsonl or a hub dataset, one ranked group or chosen/rejected pair a line), from an SFT run:
$ python reward.py --init_from=out-sft --train_data=prefs_train.jsonl --val_data=prefs_val.jsonl --out_dir=out-rm
CPU, 2 processes (gloo; the same steps as one process, batch_size groups split between them):
$ torchrun --standalone --nproc_per_node=2 reward.py config/reward_shakespeare.py
One node of 8 GPUs: torchrun --standalone --nproc_per_node=8 reward.py ... (batch_size divisible by 8)
"""

import copy
import os
import time

import torch

import configurator
from gpt import errors, lora
from gpt.chat import encode_prompt, encode_response, special_ids
from gpt.checkpoint import rng_state
from gpt.device import autocast_ctx, describe, pick_device, pick_dtype, setup_torch
from gpt.errors import check_range
from gpt.heads import RewardModel
from gpt.optim import decay_groups
from gpt.prefs import collate, fit, read_preferences, read_prompts
from gpt.rl import load_policy, reward_checkpoint, reward_loss, sample_responses
from gpt.run import Run, fmt, resume_settings
from gpt.tokendata import get_tokenizer, seed_from

# -----------------------------------------------------------------------------
# config: overridden by a config file, then by --key=value
init_from = 'out-sft-shakespeare'   # the model the reward model starts from (an SFT run's out_dir, a hub name, HF dir)
out_dir = 'out-reward'              # ckpt.pt (the reward model: GPT + head), log.jsonl
train_data = ''                     # ranked groups or pairs: a .jsonl file or hf:name[:config[:split]]
val_data = ''                       # held-out groups, for the pairwise accuracy
batch_size = 16                     # ranked groups per step (all K responses of each), summed over processes
max_iters = 300                     # optimizer steps
learning_rate = 3e-4
warmup_iters = 20                   # linear warmup, then constant
weight_decay = 0.0                  # on matrices only
grad_clip = 1.0                     # 0 disables
eval_interval = 100                 # held-out accuracy every this many steps (and at the end)
max_val = 0                         # evaluate on at most this many held-out groups (0: all)
norm_prompts = 256                  # training prompts the SFT policy answers to set its mean reward to 0 (0: no shift)
max_new_tokens = 48                 # the longest of those responses
temperature = 1.0                   # of the policy's sampling
dropout = 0.0                       # (with dropout, N processes draw other masks than 1 process)
wandb_log = False                   # also log to Weights & Biases
wandb_project = 'align'
wandb_run_name = 'reward'
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
ckpt, resume_note = resume_settings(out_dir, config, given, 'reward.py') if resume else (None, '')
globals().update(config)
for k in ('batch_size', 'max_iters', 'eval_interval'):
    check_range(k, config[k], low=1)
for k in ('warmup_iters', 'weight_decay', 'grad_clip', 'max_val', 'norm_prompts', 'max_new_tokens', 'temperature'):
    check_range(k, config[k], low=0)
check_range('learning_rate', learning_rate, low=0, low_open=True)
if not train_data or not val_data:
    raise errors.UserError("pass --train_data=... and --val_data=... (ranked groups or chosen/rejected pairs)")
device = pick_device(device)
dtype = pick_dtype(dtype, device)
setup_torch(seed, device)
ctx = autocast_ctx(device, dtype)

# ----------------------------------------------------------------------------- data and model
gpt, meta = load_policy(init_from, dropout=dropout, lora_rank=lora_rank, lora_alpha=lora_alpha,
                        lora_dropout=lora_dropout, lora_targets=lora_targets)
encode, _, _ = get_tokenizer(meta)
block = gpt.config.block_size


def encode_groups(groups):
    """[(prompt ids, [response ids, best first])]."""
    return [(encode_prompt(encode, meta, prompt), [encode_response(encode, meta, r) for r in responses])
            for prompt, responses in groups]


train_groups = encode_groups(read_preferences(train_data))
val_groups = encode_groups(read_preferences(val_data))[:max_val or None]
if batch_size > len(train_groups):  # (a step draws its groups with replacement: it would repeat them)
    raise errors.UserError(f"batch_size ({batch_size}) is larger than the {len(train_groups)} training groups in "
                                 f"{train_data}: lower --batch_size")
# joins the process group once the settings and data have been checked on every rank
run = Run(out_dir, device, divide={'batch_size': batch_size}, new_run=not resume)
device = run.device
model = RewardModel(copy.deepcopy(gpt) if norm_prompts else gpt).to(device)
policy = gpt.to(device).eval() if norm_prompts else None  # the SFT policy itself, for the normalisation
run.log(f"{describe(device, dtype)}, {run.world} process(es); reward model from {init_from}: "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; {len(train_groups):,} training and "
        f"{len(val_groups):,} held-out groups (K = {sorted({len(g[1]) for g in train_groups})})")
if wandb_log:
    run.start_wandb(wandb_project, wandb_run_name, config)
run.record(event='start', config=config, world_size=run.world, resume=bool(ckpt))
optimizer = torch.optim.AdamW(decay_groups(model.parameters(), weight_decay), lr=learning_rate, betas=(0.9, 0.95))
val_loss, val_acc = float('nan'), float('nan')
start = run.begin(ckpt, resume_note, max_iters, complete=ckpt and ckpt.get('done'))  # (done: normalised)
if ckpt is not None:
    lora.load_trained(model.gpt, ckpt['model'])
    model.head.load_state_dict(ckpt['head'])
    optimizer.load_state_dict(ckpt['optimizer'])
    val_loss, val_acc = ckpt['best_val_loss'], ckpt['val_accuracy']
    del ckpt


def save(step, done=False, shift=0.0):
    """ckpt.pt: the reward model with, until done, what resuming at step needs (the next step to run)."""
    run.save(reward_checkpoint(model, meta, config, step, best_val_loss=val_loss, val_accuracy=val_acc,
                               reward_shift=shift, done=done, optimizer=None if done else optimizer.state_dict(),
                               rng=rng_state()))


def scores_of(groups):
    """The reward model's scores of the groups' responses, one after another, and each group's K."""
    prompts = [p for p, rs in groups for _ in rs]
    responses = [r for _, rs in groups for r in rs]
    pairs = [fit(p, r, block) for p, r in zip(prompts, responses)]
    idx, _, last = collate([p for p, _ in pairs], [r for _, r in pairs])
    with ctx:
        return model.score(idx.to(device), last.to(device)), [len(rs) for _, rs in groups]


@torch.no_grad()
def evaluate():
    """(held-out loss, pairwise accuracy) over val_groups, each rank scoring its share."""
    model.eval()
    share = run.part(val_groups)
    totals = torch.zeros(3)
    for i in range(0, len(share), batch_size):
        chunk = share[i:i + batch_size]
        loss, acc = reward_loss(*scores_of(chunk))
        pairs = sum(len(rs) * (len(rs) - 1) // 2 for _, rs in chunk)
        totals += torch.tensor([loss.item() * len(chunk), acc.item() * pairs, pairs])
    totals = run.sum(totals)
    model.train()
    return totals[0].item() / len(val_groups), totals[1].item() / totals[2].item()


# ----------------------------------------------------------------------------- training
model.train()
t0 = time.time()
for step in range(start, max_iters + 1):
    if step % eval_interval == 0 or step == max_iters:
        val_loss, val_acc = evaluate()
        run.log(f"step {step}: val loss {val_loss:.4f}, val pairwise accuracy {val_acc:.4f}")
        run.record(event='eval', iter=step, val_loss=val_loss, val_accuracy=val_acc, seconds=time.time() - t0)
        if start < step < max_iters:
            save(step)
    if step == max_iters:
        break
    mine = run.pick(len(train_groups), batch_size, seed, 'groups', step)  # this rank's share of the step's groups
    for g in optimizer.param_groups:
        g['lr'] = learning_rate * min(1.0, (step + 1) / (warmup_iters + 1))
    torch.manual_seed(seed_from(seed, 'dropout', step, run.rank))
    loss, acc = reward_loss(*scores_of([train_groups[i] for i in mine]))
    (loss * len(mine) / batch_size).backward()  # summed over ranks: the mean over the step's groups
    run.step(model, optimizer, grad_clip)
    stats = dict(zip(('loss', 'accuracy'), run.mean([loss.item(), acc.item()])))
    if step % 10 == 0 or step == max_iters - 1:
        run.log(f"iter {step}: {fmt(stats)}, {time.time() - t0:.1f}s")
    run.record(event='train', iter=step, **stats)
    run.stop_if_signalled(save, step + 1, max_iters)

# ----------------------------------------------------------------------------- normalisation and saving
shift = 0.0
if norm_prompts:
    # InstructGPT normalises the reward model with a bias so that a reference scores 0 on average; here the
    # reference is the SFT policy's own responses to training prompts, so PPO starts at mean reward ~0
    model.eval()
    prompts = [encode_prompt(encode, meta, p) for p in read_prompts(train_data)[:norm_prompts]]
    total = torch.zeros(2)
    mine = prompts[run.rank::run.world]
    for i in range(0, len(mine), 64):  # (prompts of any lengths in one batch of the decoding engine)
        batch = mine[i:i + 64]
        g = torch.Generator(device).manual_seed(seed_from(seed, 'normalise', i, run.rank))
        with ctx:
            responses = sample_responses(policy, batch, max_new_tokens, special_ids(meta)[2], temperature, g)
        with torch.no_grad():
            scores, _ = scores_of([(p, [r]) for p, r in zip(batch, responses)])
        total += torch.tensor([scores.float().sum().item(), len(batch)])
    total = run.sum(total)
    shift = total[0].item() / total[1].item()
    with torch.no_grad():
        model.head.bias -= shift
    run.log(f"the SFT policy's mean reward on {int(total[1])} training prompts was {shift:.4f}; the head's bias is "
            f"shifted so that it is 0")
    run.record(event='normalise', prompts=int(total[1]), mean_reward_before=shift)
save(max_iters, done=True, shift=shift)
run.log(f"saved the reward model to {os.path.join(out_dir, 'ckpt.pt')} (held-out pairwise accuracy {val_acc:.4f})")
run.close()
