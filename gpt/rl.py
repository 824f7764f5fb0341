"""
InstructGPT's reward model and PPO (Ouyang et al. 2022) and DPO (Rafailov et al. 2023) as plain functions on
tensors (log-probs, the losses, GAE, rollouts), and the policy and reward-model loading reward.py, ppo.py and dpo.py
share. Their training harness (process group, logs, signals) is gpt/run.py's Run.

    python train.py config/sft_shakespeare.py       # 1. SFT: train.py on masked examples (loss on responses only)
    python reward.py config/reward_shakespeare.py   # 2. a reward model from rankings of K responses per prompt
    python ppo.py config/ppo_shakespeare.py         # 3. PPO(-ptx) against it, KL-penalised to the SFT policy
    python dpo.py config/dpo_shakespeare.py         # or DPO straight from the preferences
"""

import os
import sys
from dataclasses import asdict

import torch
from torch.nn import functional as F

from gpt import checkpoint, loading, lora
from gpt.chat import TOKENIZER_FIELDS, chat_meta, grow_vocab
from gpt.errors import UserError
from gpt.heads import RewardModel


def token_logprobs(logits, targets):
    """log p(target) at every position: logits (..., V), targets (...) ids."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), -1, targets.unsqueeze(-1)).squeeze(-1)


def response_logprobs(model, idx, return_logits=False, temperature=1.0):
    """Per-token log-probabilities (N, T - 1) a GPT gives idx[:, 1:], over its real vocabulary, of its
    distribution at temperature (the logits divided by it, as the sampler does)."""
    logits = model(idx[:, :-1])[0][..., :model.config.vocab_size]
    if temperature != 1.0:
        logits = logits / temperature
    lp = token_logprobs(logits, idx[:, 1:])
    return (lp, logits) if return_logits else lp


@torch.no_grad()
def score_rollouts(policy, reference, value, reward_model, idx, last, temperature):
    """What PPO keeps of sampled sequences idx (N, T) whose last tokens are at last (N,): the policy's and the
    reference's per-token log-probabilities of the distribution the responses were sampled from (both at the
    sampling temperature, as trl does, so the ratio pi / pi_old and the KL penalty are the policy's), the value
    function's estimate of the state before each target token, and the reward model's score. Every model runs
    in eval mode (no dropout: the old log-probabilities and values are not noisy) and is put back as it was."""
    models = (policy, reference, value, reward_model)
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        return (response_logprobs(policy, idx, temperature=temperature),
                response_logprobs(reference, idx, temperature=temperature),
                value(idx)[:, :-1], reward_model.score(idx, last))
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def whiten_moments(total, total_sq, count):
    """(mean, standard deviation) of values from their sum, sum of squares and count, as PPO whitens its
    advantages (the sums over every response token of an iteration, on all processes). The standard deviation
    is the unbiased one (divided by count - 1), as trl's masked_whiten takes it."""
    mean = total / count
    var = (total_sq - count * mean ** 2) / (count - 1).clamp(min=1)
    return mean, var.clamp(min=0).sqrt()


def entropy(logits):
    """The entropy of each position's next-token distribution."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def masked_mean(x, mask, count=None):
    """Mean of x where mask is 1; count: the denominator (e.g. the token count over all processes)."""
    return (x * mask).sum() / (mask.sum() if count is None else count)


# ----------------------------------------------------------------------------- the losses

def reward_loss(scores, sizes):
    """InstructGPT's reward-model loss: loss(theta) = -1/C(K,2) E[log sigmoid(r(x, y_w) - r(x, y_l))] over all
    C(K,2) pairs of each group of K ranked responses, then the mean over groups (each group counts once, however
    large K: the paper's remedy for overfitting on correlated pairs). scores: (N,) the rewards of the groups'
    responses one after another, each group best first; sizes: K of each group. Returns (loss, accuracy): the
    share of pairs ordered right."""
    losses, right, pairs, start = [], 0, 0, 0
    for k in sizes:
        s = scores[start:start + k]
        i, j = torch.triu_indices(k, k, 1, device=scores.device)  # i ranked above j
        diff = s[i] - s[j]
        losses.append(-F.logsigmoid(diff).mean())  # the mean over the C(K,2) pairs
        right, pairs, start = right + (diff > 0).sum(), pairs + len(diff), start + k
    return torch.stack(losses).mean(), right / pairs


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """DPO's sigmoid loss, -log sigmoid(beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]),
    meaned over pairs. Arguments: summed log-probabilities of each pair's responses (N,). Returns (loss, margin,
    accuracy): margin is the implicit rewards' difference beta * log pi/ref (y_w) - beta * log pi/ref (y_l) per
    pair, accuracy the share of pairs where it is positive."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin).mean(), margin.detach(), (margin > 0).float().mean()


def kl_penalty(logp, ref_logp):
    """InstructGPT's per-token penalty term log(pi_RL(y_t) / pi_SFT(y_t)) at the sampled tokens (its mean is the
    KL divergence from the SFT policy); the reward at each token is -beta times it."""
    return logp - ref_logp


def gae(rewards, values, mask, gamma, lam):
    """Generalised advantage estimation (Schulman et al. 2016) over right-padded responses: rewards, values,
    mask (N, T). delta_t = r_t + gamma V_{t+1} - V_t (V = 0 after the last token), A_t = delta_t + gamma lam
    A_{t+1}. Returns (advantages, returns = advantages + values), 0 at padding."""
    rewards, values = rewards * mask, values * mask
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.size(1))):
        next_value = values[:, t + 1] if t + 1 < values.size(1) else 0.0
        last = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * last
        adv[:, t] = last
    return adv * mask, (adv + values) * mask


def ppo_policy_loss(logp, old_logp, advantages, mask, clip, count=None):
    """PPO's clipped surrogate (Schulman et al. 2017), as a loss: the mean over tokens of
    max(-A r, -A clip(r, 1 - clip, 1 + clip)), r = pi / pi_old. Returns (loss, clip fraction: the share of
    tokens where the clipped term is the one taken)."""
    ratio = torch.exp(logp - old_logp)
    unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask, count)
    return loss, masked_mean((clipped > unclipped).float(), mask, count).detach()


def ppo_value_loss(values, old_values, returns, mask, clip, count=None):
    """The clipped value loss: 0.5 * mean of max((V - R)^2, (V_old + clip(V - V_old, -clip, clip) - R)^2)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask, count)


# ----------------------------------------------------------------------------- models and checkpoints

def load_policy(init_from, dropout=0.0, lora_rank=0, lora_alpha=16.0, lora_dropout=0.05, lora_targets='c_attn'):
    """(GPT, tokenizer metadata with the chat tokens) from a run's out_dir, a hub name or an HF directory; a
    model without the chat tokens gets them (grow_vocab). lora_rank > 0: LoRA adapters on it (lora.setup), the
    rest frozen (but a grown embedding, whose new rows must learn); init_from is then the base its checkpoints name."""
    model, meta, _ = loading.load_model(init_from, dropout=dropout)
    if meta is None:
        raise UserError(f"{init_from} does not say which tokenizer it was trained with")
    meta = chat_meta(meta)
    grown = grow_vocab(model, meta)
    note = lora.setup(grown, init_from, lora_rank, lora_alpha, lora_dropout, lora_targets,
                      train=('transformer.wte.',) if grown is not model else ())
    if note and int(os.environ.get('RANK', '0') or 0) == 0:
        print(note, flush=True)
    return grown, meta


def load_reward_model(path, policy=None, policy_meta=None):
    """(RewardModel, its checkpoint) from reward.py's out_dir (ckpt.pt); with a policy, its vocabulary must be
    the policy's (the reward model reads the policy's tokens)."""
    path = os.path.join(path, 'ckpt.pt') if os.path.isdir(path) else path
    if not os.path.exists(path):
        raise UserError(f"no reward model at {path}: train one with reward.py and pass its out_dir as --reward_model")
    ckpt = checkpoint.load_checkpoint(path)
    if ckpt.get('kind') != 'reward':
        raise UserError(f"{path} is not a reward model: train one with reward.py")
    if ckpt.get('done') is False:  # a checkpoint to resume from, before the normalisation
        raise UserError(f"{path} is a reward run stopped at step {ckpt['iter_num']} of {ckpt['config']['max_iters']}: "
                        f"finish it with `python reward.py --resume=True --out_dir={os.path.dirname(path)}`")
    model = RewardModel(loading.model_from_checkpoint(ckpt))
    model.head.load_state_dict(ckpt['head'])
    if policy is not None:
        theirs, ours = ckpt.get('data_meta') or {}, policy_meta or {}
        same = model.gpt.config.vocab_size == policy.config.vocab_size and all(
            theirs.get(k) == ours.get(k) for k in TOKENIZER_FIELDS)
        if not same:
            raise UserError(f"the reward model {path} has a different vocabulary ({model.gpt.config.vocab_size} ids, "
                            f"tokenizer {theirs.get('tokenizer')!r}) from the policy's ({policy.config.vocab_size} "
                            f"ids, tokenizer {ours.get('tokenizer')!r}): train it from the same SFT model")
    return model, ckpt


def reward_checkpoint(model, meta, config, step, **extra):
    """A RewardModel's checkpoint: its GPT as a plain checkpoint, with kind 'reward' and the head's weights."""
    return dict(policy_checkpoint(model.gpt, meta, config, step, **extra), kind='reward', head=model.head.state_dict())


def policy_checkpoint(model, meta, config, step, best_val_loss=float('nan'), **extra):
    """A policy as a plain GPT checkpoint (the layout train.py writes), which sample.py, eval.py and export.py
    read."""
    return dict(format=checkpoint.CHECKPOINT_FORMAT, model=lora.trained_state(model) if lora.is_lora(model) else
                model.state_dict(), lora=getattr(model, 'lora_settings', None), model_args=asdict(model.config),
                iter_num=step, best_val_loss=best_val_loss, config=config, data_meta=meta,
                trained_by=os.path.basename(sys.argv[0]), **extra)


@torch.no_grad()
def sample_responses(model, prompts, max_new_tokens, end_id, temperature=1.0, generator=None):
    """Responses of the policy to prompts (of any lengths: one batch of engine.Engine), each up to and including
    its first <|end|>, at most max_new_tokens (and the context) long."""
    from gpt.engine import generate_batch
    bs = model.config.block_size
    budget = [max(1, min(max_new_tokens, bs - len(p))) for p in prompts]
    out = generate_batch(model, prompts, budget, stop_ids={end_id}, max_batch=len(prompts), generator=generator,
                         temperature=temperature)
    return [tokens for tokens, _ in out]
