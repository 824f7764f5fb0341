"""
InstructGPT's step 3: PPO against the reward model, with a per-token KL penalty to the frozen SFT policy and
optionally the pretraining loss mixed in (PPO-ptx). Each iteration:
1. rollouts: batch_size prompts answered by the policy with the KV-cache sampler (gpt/engine.py), in micro-batches of
   one prompt length; the reward model scores each response at its last token;
2. per token t of a response, reward r_t = -kl_coef * log(pi(y_t) / pi_SFT(y_t)), plus the reward model's score at
   the last token; advantages by GAE(gamma, lam) against a value function (the reward model's copy, as in the paper,
   with its own optimizer), whitened over the batch;
3. ppo_epochs passes over the rollouts in `minibatches` optimizer steps: the clipped policy loss, the clipped value
   loss, and with ptx_coef > 0 plus ptx_coef times the language-modelling loss on pretraining batches.
It logs the mean reward, the KL to the SFT policy (per response, summed over its tokens), the policy's entropy, the
clip fraction and the losses, to stdout and out_dir/log.jsonl, and saves the policy as a plain GPT checkpoint
(sample.py, eval.py and export.py read it). The losses are gpt/rl.py's functions.

Offline demo on a CPU (see the config's header for the whole chain):
$ python ppo.py config/ppo_shakespeare.py
$ python sample.py --out_dir=out-ppo-shakespeare --start="<|user|>Now, brother of<|assistant|>"
PPO-ptx, mixing in the pretraining data:
$ python ppo.py config/ppo_shakespeare.py --ptx_coef=1.0 --out_dir=out-ppo-ptx-shakespeare
CPU, 2 processes (gloo): every rank samples and trains its share of the micro-batches, gradients are summed over
ranks, so it takes the steps one process takes:
$ torchrun --standalone --nproc_per_node=2 ppo.py config/ppo_shakespeare.py
One node of 8 GPUs: torchrun --standalone --nproc_per_node=8 ppo.py ... (batch_size / micro_batch divisible by 8)
"""

import copy
import os
import time

import torch

import configurator
from gpt import lora
from gpt.chat import encode_prompt, special_ids
from gpt.checkpoint import rng_state
from gpt.device import autocast_ctx, describe, pick_device, pick_dtype, setup_torch
from gpt.errors import UserError, check_range
from gpt.prefs import collate, read_prompts
from gpt.rl import (entropy, gae, kl_penalty, load_policy, load_reward_model, policy_checkpoint, ppo_policy_loss,
                    ppo_value_loss, response_logprobs, sample_responses, score_rollouts, whiten_moments)
from gpt.run import Run, fmt, resume_settings
from gpt.tokendata import TokenData, check_same_tokenizer, dataset_dir, get_tokenizer, seed_from

# -----------------------------------------------------------------------------
# config: overridden by a config file, then by --key=value
init_from = 'out-sft-shakespeare'   # the SFT policy (a run's out_dir, ...): trained, and kept frozen as the reference
reward_model = 'out-reward-shakespeare'  # reward.py's out_dir; a copy of it starts the value function
out_dir = 'out-ppo'                 # ckpt.pt (the policy, a plain GPT checkpoint), log.jsonl
prompts = ''                        # the prompts: a .jsonl file or hf:name[:config[:split]] with a 'prompt' field
iters = 50                          # PPO iterations (rollouts, then ppo_epochs of updates)
batch_size = 64                     # rollouts per iteration, summed over processes
micro_batch = 16                    # rollouts sampled together (one batch of the decoding engine) and trained on together
minibatches = 2                     # optimizer steps per PPO epoch; the micro-batches are shuffled into them
ppo_epochs = 4                      # passes over each iteration's rollouts
max_new_tokens = 32                 # the longest response (it ends at <|end|>)
temperature = 1.0                   # sampling temperature of the rollouts; the ratio and KL use the same distribution
kl_coef = 0.05                      # beta: the per-token KL penalty to the SFT policy
gamma = 1.0                         # GAE's discount
lam = 0.95                          # GAE's lambda
clip_range = 0.2                    # PPO's epsilon for the policy ratio
value_clip = 0.2                    # the value function's clipping range
whiten = True                       # normalise the advantages to mean 0, std 1 (unbiased) over the batch
learning_rate = 1e-4                # the policy's
value_lr = 1e-4                     # the value function's
grad_clip = 1.0                     # 0 disables (each model's norm clipped on its own)
ptx_coef = 0.0                      # PPO-ptx's gamma: weight of the pretraining loss (0: plain PPO)
ptx_dataset = 'shakespeare_char'    # data/<ptx_dataset>/ (a token stream) for the pretraining loss
ptx_data_dir = ''                   # or read it from here
ptx_batch_size = 16                 # pretraining sequences per micro-batch
ptx_block_size = 0                  # their length (0: the model's context)
save_interval = 10                  # also save (for a resume) every this many iterations (0: at the end only)
wandb_log = False                   # also log to Weights & Biases
wandb_project = 'align'
wandb_run_name = 'ppo'
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
ckpt, resume_note = resume_settings(out_dir, config, given, 'ppo.py') if resume else (None, '')
globals().update(config)
for k in ('iters', 'batch_size', 'micro_batch', 'minibatches', 'ppo_epochs', 'max_new_tokens', 'ptx_batch_size'):
    check_range(k, config[k], low=1)
for k in ('kl_coef', 'ptx_coef', 'grad_clip', 'save_interval', 'ptx_block_size'):
    check_range(k, config[k], low=0)
for k in ('gamma', 'lam'):
    check_range(k, config[k], low=0, high=1)
# (temperature 0 would be greedy rollouts, whose probability ratio PPO cannot take)
for k in ('learning_rate', 'value_lr', 'clip_range', 'value_clip', 'temperature'):
    check_range(k, config[k], low=0, low_open=True)
if not prompts:
    raise UserError("pass --prompts=... (a .jsonl file or hf:<dataset> with a 'prompt' field)")
if batch_size % micro_batch or (batch_size // micro_batch) % minibatches:
    raise UserError(f"batch_size ({batch_size}) must be a whole number of micro_batch ({micro_batch}) rollouts, and "
                    f"those {batch_size // micro_batch} micro-batches divide into minibatches ({minibatches})")
device = pick_device(device)
dtype = pick_dtype(dtype, device)
setup_torch(seed, device)
ctx = autocast_ctx(device, dtype)

# ----------------------------------------------------------------------------- models and data
policy, meta = load_policy(init_from, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                           lora_targets=lora_targets)
rm, _ = load_reward_model(reward_model, policy, meta)  # one line if its vocabulary is not the policy's
encode, decode, _ = get_tokenizer(meta)
END = special_ids(meta)[2]
block = policy.config.block_size
prompt_ids = [encode_prompt(encode, meta, p)[-(block - 1):] for p in read_prompts(prompts)]
ptx = None
if ptx_coef:
    ptx_dir, ptx_prepare = dataset_dir(ptx_dataset, ptx_data_dir)
    ptx = TokenData(ptx_dir, ptx_block_size or block, ptx_batch_size, 'cpu', seed=seed,
                    vocab_size=policy.config.vocab_size, prepare=ptx_prepare)
    check_same_tokenizer(meta, ptx.meta, init_from, ptx_dir)  # the policy's ids, not another tokenizer's
m = batch_size // micro_batch  # global micro-batches per iteration
# joins the process group once settings and data have been checked on every rank
run = Run(out_dir, device, divide={'batch_size / micro_batch': m}, new_run=not resume)
device = run.device
mine = run.share(m)
policy.to(device)
reference = lora.reference(policy)  # the frozen SFT policy (LoRA: the policy with its adapters off, no copy)
rm = rm.to(device).eval().requires_grad_(False)
value = copy.deepcopy(rm).train().requires_grad_(True)  # InstructGPT: the value function starts as the reward model
run.log(f"{describe(device, dtype)}, {run.world} process(es); policy and reference from {init_from}, reward model "
        f"and value function from {reward_model}; {len(prompt_ids):,} prompts; {batch_size} rollouts per iteration "
        f"in {m} micro-batches of {micro_batch}, {ppo_epochs} epochs of {minibatches} minibatches; kl_coef {kl_coef}"
        + (f", ptx_coef {ptx_coef} on {ptx.data_dir}" if ptx else ''))
if wandb_log:
    run.start_wandb(wandb_project, wandb_run_name, config)
run.record(event='start', config=config, world_size=run.world, resume=bool(ckpt))
optimizer = torch.optim.AdamW(policy.parameters(), lr=learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
value_optimizer = torch.optim.AdamW(value.parameters(), lr=value_lr, betas=(0.9, 0.95), weight_decay=0.0)
start = run.begin(ckpt, resume_note, iters)
if ckpt is not None:
    lora.load_trained(policy, ckpt['model'])
    value.gpt.load_state_dict(ckpt['value']['model'])
    value.head.load_state_dict(ckpt['value']['head'])
    optimizer.load_state_dict(ckpt['optimizer'])
    value_optimizer.load_state_dict(ckpt['value_optimizer'])
    del ckpt


@torch.no_grad()
def rollout(it, j):
    """Global micro-batch j of iteration it, a function of (seed, it, j) whichever rank makes it: micro_batch
    prompts (of any lengths: the engine decodes them in one batch), the policy's responses, and what PPO needs of them."""
    g = torch.Generator().manual_seed(seed_from(seed, 'prompts', it, j))
    batch = [prompt_ids[i] for i in torch.randint(len(prompt_ids), (micro_batch,), generator=g).tolist()]
    policy.eval()
    with ctx:
        responses = sample_responses(policy, batch, max_new_tokens, END, temperature,
                                     torch.Generator(device).manual_seed(seed_from(seed, 'sample', it, j)))
        idx, mask, last = (t.to(device) for t in collate(batch, responses))
        logp, ref_logp, values, score = score_rollouts(policy, reference, value, rm, idx, last, temperature)
    policy.train()
    kl = kl_penalty(logp, ref_logp) * mask
    rewards = -kl_coef * kl
    rows = torch.arange(len(batch), device=device)
    rewards[rows, last - 1] += score  # the reward model's score comes with the last token
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    return dict(idx=idx, mask=mask, logp=logp, values=values, advantages=advantages, returns=returns, score=score,
                kl=kl.sum(-1), length=mask.sum(-1), text=decode(responses[0]))


def update(batch, count, it, epoch, j, group_size):
    """Backward of the losses of one micro-batch; count: the response tokens in its whole minibatch (all ranks),
    so that the gradients summed over micro-batches and ranks are those of the minibatch's token mean."""
    torch.manual_seed(seed_from(seed, 'dropout', it, epoch, j))  # masks of (iteration, epoch, micro-batch): resumable
    with ctx:
        logp, logits = response_logprobs(policy, batch['idx'], return_logits=True, temperature=temperature)
        loss, clipfrac = ppo_policy_loss(logp, batch['logp'], batch['advantages'], batch['mask'], clip_range, count)
        v_loss = ppo_value_loss(value(batch['idx'])[:, :-1], batch['values'], batch['returns'], batch['mask'],
                                value_clip, count)
        ent = (entropy(logits.detach()) * batch['mask']).sum() / count
        ptx_loss = torch.zeros((), device=device)
        if ptx is not None:  # the pretraining batch of global micro-step j, the same on any number of ranks
            X, Y = ptx.batch('train', (it, epoch), j)
            ptx_loss = policy(X.to(device), Y.to(device))[1] / group_size
    (loss + ptx_coef * ptx_loss + v_loss).backward()
    return torch.stack([loss.detach(), v_loss.detach(), clipfrac, ent.detach(), ptx_loss.detach()])


def save(it):
    """ckpt.pt: the policy (a plain GPT checkpoint) and what resuming at iteration it (the next to run) needs."""
    run.save(policy_checkpoint(policy, meta, config, it, optimizer=optimizer.state_dict(),
                               value=dict(model=value.gpt.state_dict(), head=value.head.state_dict()),
                               value_optimizer=value_optimizer.state_dict(), rng=rng_state()))


# ----------------------------------------------------------------------------- training
t0 = time.time()
for it in range(start, iters):
    rollouts = {j: rollout(it, j) for j in mine}
    if whiten:  # advantages to mean 0, std 1 over every response token of the iteration, on all ranks
        s = run.sum(sum(torch.stack([(r['advantages'] * r['mask']).sum(), (r['advantages'] ** 2 * r['mask']).sum(),
                                     r['mask'].sum()]) for r in rollouts.values()))
        mean, std = whiten_moments(*s)
        for r in rollouts.values():
            r['advantages'] = (r['advantages'] - mean) / (std + 1e-8) * r['mask']
    totals = torch.zeros(5, device=device)
    for epoch in range(ppo_epochs):
        order = torch.randperm(m, generator=torch.Generator().manual_seed(seed_from(seed, 'order', it, epoch))).tolist()
        for b in range(minibatches):
            group = order[b * m // minibatches:(b + 1) * m // minibatches]
            local = [j for j in group if j in rollouts]
            count = run.sum(sum((rollouts[j]['mask'].sum() for j in local), torch.zeros((), device=device)))
            for j in local:
                totals += update(rollouts[j], count, it, epoch, j, len(group))
            run.step(policy, optimizer, grad_clip)
            run.step(value, value_optimizer, grad_clip)
    per_response = torch.stack([torch.cat([r[k].float() for r in rollouts.values()]).sum()
                                for k in ('score', 'kl', 'length')])  # summed over this rank's responses
    sums = run.sum(torch.cat([totals, per_response]))
    steps = ppo_epochs * minibatches
    stats = dict(reward=sums[5].item() / batch_size, kl=sums[6].item() / batch_size, entropy=sums[3].item() / steps,
                 clipfrac=sums[2].item() / steps, policy_loss=sums[0].item() / steps, value_loss=sums[1].item() / steps,
                 length=sums[7].item() / batch_size)
    if ptx is not None:
        stats['ptx_loss'] = sums[4].item() / steps
    run.log(f"iter {it}: {fmt(stats)}, {time.time() - t0:.1f}s | {next(iter(rollouts.values()))['text']!r}")
    run.record(event='train', iter=it, seconds=time.time() - t0, **stats)
    run.stop_if_signalled(save, it + 1, iters, unit='iteration')
    if save_interval and (it + 1) % save_interval == 0 and it + 1 < iters:
        save(it + 1)
save(iters)
run.log(f"saved the policy to {os.path.join(out_dir, 'ckpt.pt')}")
run.close()
