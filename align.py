"""
InstructGPT's three steps (Ouyang et al. 2022) and DPO (Rafailov et al. 2023) on our GPTs: the chat template
and its tokens, preference data, the losses as plain functions on tensors, and the set-up the scripts share.

    python train.py config/sft_shakespeare.py       # 1. SFT: train.py on masked examples (loss on responses only)
    python reward.py config/reward_shakespeare.py   # 2. a reward model from rankings of K responses per prompt
    python ppo.py config/ppo_shakespeare.py         # 3. PPO(-ptx) against it, KL-penalised to the SFT policy
    python dpo.py config/dpo_shakespeare.py         # or DPO straight from the preferences

Chat template. Three tokens are added after the tokenizer's own ids (vocab_size, +1, +2; their embedding rows
drawn from N(0, 0.02) by heads.add_tokens, every other weight kept):

    <|user|>{user text}<|assistant|>{assistant text}<|end|>        (repeated for more turns)

The SFT loss is on the assistant's text and its <|end|> only. A policy is prompted with
`<|user|>{prompt}<|assistant|>` and its response ends at <|end|>. The ids are kept in the dataset's and the
checkpoints' metadata (added_tokens), so sample.py (which stops at <|end|>), eval.py and export.py encode and
decode them (`python sample.py --out_dir=out-sft-shakespeare --start="<|user|>To be<|assistant|>"`).

Data, one JSON object a line: a local .jsonl file, or a hub dataset as hf:name[:config[:split]].
    SFT          {"prompt": "...", "response": "..."}, or {"messages": [{"role": "user", "content": "..."},
                 {"role": "assistant", "content": "..."}, ...]} (roles alternate, starting with the user)
    preferences  {"prompt": "...", "chosen": "...", "rejected": "..."}          a pair (K = 2)
                 {"prompt": "...", "responses": ["best", ..., "worst"]}        a ranking of K >= 2, best first
                 {"prompt": "...", "responses": [...], "scores": [...]}        ranked by score, higher is better
A missing field, fewer than two responses, or a tie (equal scores, the same text twice) is a one-line error
naming the file and line. SFT examples are written in the masked-example format (tokendata.py) by
write_chat_examples: one conversation a row, padded at the end, so no example attends to another.
"""

import math
import os
import sys
from dataclasses import asdict

import numpy as np
import torch
from torch.nn import functional as F

import checkpoint
import lora
from configurator import UserError
from heads import RewardModel, add_tokens
from tokendata import json_lines, seed_from

SPECIAL_TOKENS = ('<|user|>', '<|assistant|>', '<|end|>')
USER, ASSISTANT, END = SPECIAL_TOKENS
TOKENIZER_FIELDS = ('tokenizer', 'chars', 'name', 'tokenizer_json', 'tokenizer_sha256', 'tokenizer_file',
                    'added_tokens')  # what a dataset's meta.json says about its tokenizer


# ----------------------------------------------------------------------------- the chat template

def chat_meta(meta):
    """A tokenizer's metadata with the chat tokens added after its ids (as it is, if they are there already)."""
    added, v = dict(meta.get('added_tokens') or {}), meta['vocab_size']
    for t in SPECIAL_TOKENS:
        if t not in added:
            added[t], v = v, v + 1
    return {**meta, 'added_tokens': added, 'vocab_size': v}


def special_ids(meta):
    """(user, assistant, end) ids of a tokenizer's metadata with the chat tokens."""
    added = meta.get('added_tokens') or {}
    if not all(t in added for t in SPECIAL_TOKENS):
        raise UserError(f"this model's tokenizer has no chat tokens ({', '.join(SPECIAL_TOKENS)}); start from an "
                        f"SFT run (python train.py config/sft_shakespeare.py) or a pretrained model")
    return tuple(int(added[t]) for t in SPECIAL_TOKENS)


def grow_vocab(model, meta):
    """The model with embedding rows for the ids meta's added tokens need (heads.add_tokens), or as it is
    when it has them."""
    v, want = model.config.vocab_size, meta['vocab_size']
    if v == want:
        return model
    added = sorted(int(i) for i in (meta.get('added_tokens') or {}).values())
    if v > want or added != list(range(v, want)):
        raise UserError(f"the model has {v} token ids and the data {want}; only tokens added after the model's own "
                        f"ids ({v}..{want - 1}) can be grown into it")
    return add_tokens(model, want - v)[0]


def encode_prompt(encode, meta, prompt):
    """The ids a policy is prompted with: <|user|>prompt<|assistant|>."""
    user, assistant, _ = special_ids(meta)
    return [user, *encode(prompt), assistant]


def encode_response(encode, meta, response):
    """A response's ids: its text and <|end|>."""
    return [*encode(response), special_ids(meta)[2]]


def encode_chat(encode, meta, messages):
    """(ids, mask) of a conversation [(role, text), ...]: mask 1 on the assistant's tokens (text and <|end|>),
    0 on the user's turns and the role tokens."""
    ids, mask = [], []
    for role, text in messages:
        if role == 'user':
            part = encode_prompt(encode, meta, text)
            ids += part[:-1]
            mask += [0] * (len(part) - 1)
            continue
        part = [special_ids(meta)[1]] if not ids or ids[-1] != special_ids(meta)[1] else []
        response = encode_response(encode, meta, text)
        ids += part + response
        mask += [0] * len(part) + [1] * len(response)
    return ids, mask


# ----------------------------------------------------------------------------- reading data

def read_rows(source):
    """[(where, row)] of a local .jsonl file or a hub dataset hf:name[:config[:split]] (split default 'train'; the
    name may be a local folder of data files, as datasets.load_dataset takes it); where names the file and line
    for error messages."""
    if source.startswith('hf:'):
        import datasets
        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        name, config, split = (source[3:].split(':') + ['', ''])[:3]
        try:
            rows = datasets.load_dataset(name, config or None, split=split or 'train')
        except Exception as e:  # offline, unknown name or split: datasets raises many kinds
            raise UserError(f"cannot load {source!r} ({str(e).splitlines()[0][:200]}); pass a local .jsonl file "
                            f"instead") from None
        return [(f"{source} row {i + 1}", dict(r)) for i, r in enumerate(rows)]
    if not os.path.isfile(source):
        raise UserError(f"{source} not found: pass a .jsonl file (one JSON object a line) or hf:<dataset name>")
    out = []
    for n, row in json_lines(source, 'the data file'):
        if not isinstance(row, dict):
            raise UserError(f"{source} line {n} is not a JSON object")
        out.append((f"{source} line {n}", row))
    if not out:
        raise UserError(f"{source} holds no examples")
    return out


def text_field(where, row, key):
    value = row.get(key)
    if not isinstance(value, str):
        raise UserError(f"{where}: missing field {key!r} (a string)" if value is None else
                        f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def chat_messages(where, row):
    """A row of SFT data as [(role, text), ...]: {"prompt", "response"} or {"messages": [...]}."""
    if 'messages' not in row:
        return [('user', text_field(where, row, 'prompt')), ('assistant', text_field(where, row, 'response'))]
    messages = row['messages']
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise UserError(f"{where}: message {i + 1} is not an object with 'role' and 'content'")
        role = text_field(f"{where} message {i + 1}", m, 'role')
        expected = 'user' if i % 2 == 0 else 'assistant'
        if role != expected:
            raise UserError(f"{where}: message {i + 1} has role {role!r}; roles alternate user, assistant, ... "
                            f"starting with the user")
        out.append((role, text_field(f"{where} message {i + 1}", m, 'content')))
    if out[-1][0] != 'assistant':
        raise UserError(f"{where}: the last message must be the assistant's (the loss is taken on it)")
    return out


def preference_group(where, row):
    """(prompt, [responses, best first]) of a row of preference data (see the top of this file)."""
    prompt = text_field(where, row, 'prompt')
    if 'responses' in row:
        responses = row['responses']
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise UserError(f"{where}: 'responses' must be a list of strings")
        if 'scores' in row:
            scores = row['scores']
            if not isinstance(scores, list) or len(scores) != len(responses) or \
                    not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
                raise UserError(f"{where}: 'scores' must be a list of numbers, one per response")
            if len(set(scores)) != len(scores):
                raise UserError(f"{where}: tied scores {scores}: a ranking needs distinct scores (drop or merge the "
                                f"tied responses)")
            responses = [r for _, r in sorted(zip(scores, responses), key=lambda p: -p[0])]
    elif 'chosen' in row or 'rejected' in row:
        responses = [text_field(where, row, 'chosen'), text_field(where, row, 'rejected')]
    else:
        raise UserError(f"{where}: missing field 'chosen' and 'rejected' (a pair) or 'responses' (a ranking)")
    if len(responses) < 2:
        raise UserError(f"{where}: K={len(responses)} response(s); a comparison needs K >= 2")
    if len(set(responses)) != len(responses):
        raise UserError(f"{where}: the same response appears twice in one comparison (a tie); every response of "
                        f"a group must differ")
    return prompt, responses


def read_prompts(source):
    """The prompts of a file or hub dataset: the 'prompt' field of each row (other fields are ignored)."""
    return [text_field(where, row, 'prompt') for where, row in read_rows(source)]


def read_preferences(source):
    return [preference_group(where, row) for where, row in read_rows(source)]


def write_chat_examples(out_dir, splits, meta, block_size, extra=None):
    """Write SFT conversations as masked examples (data/prepare_utils.write_examples): splits {'train': source,
    'val': source} of SFT data, meta: the tokenizer's metadata (the chat tokens are added to it). Conversations
    longer than block_size + 1 tokens are cut at the end; rows are padded at the end with mask 0."""
    from tokendata import get_tokenizer
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data'))
    from prepare_utils import write_examples
    meta = chat_meta(meta)
    encode, _, _ = get_tokenizer(meta)
    arrays, cut = {}, 0
    for split, source in splits.items():
        rows = [encode_chat(encode, meta, chat_messages(where, row)) for where, row in read_rows(source)]
        L = min(block_size + 1, max(len(ids) for ids, _ in rows))
        tokens, mask = np.zeros((len(rows), L), dtype=np.int64), np.zeros((len(rows), L), dtype=np.uint8)
        for i, (ids, m) in enumerate(rows):
            cut += len(ids) > L
            tokens[i, :min(L, len(ids))], mask[i, :min(L, len(ids))] = ids[:L], m[:L]
        keep = mask.any(axis=1)  # a conversation cut before its first response token teaches nothing
        arrays[split] = (tokens[keep], mask[keep])
    L = max(t.shape[1] for t, _ in arrays.values())  # one length for all splits
    arrays = {s: (np.pad(t, ((0, 0), (0, L - t.shape[1]))), np.pad(m, ((0, 0), (0, L - m.shape[1]))))
              for s, (t, m) in arrays.items()}
    if cut:
        print(f"note: {cut} conversations were longer than block_size + 1 = {block_size + 1} tokens and were cut")
    tokenizer = {k: v for k, v in meta.items() if k in TOKENIZER_FIELDS}
    write_examples(out_dir, arrays, meta['vocab_size'], **tokenizer, **(extra or {}))


# ----------------------------------------------------------------------------- batches of sequences

def collate(prompts, responses, pad_id=0):
    """Prompt + response id lists as a right-padded batch: idx (N, T), mask (N, T - 1) with 1 where the target
    idx[:, t + 1] is a response token, and last (N,) the position of each row's last token."""
    seqs = [p + r for p, r in zip(prompts, responses)]
    T = max(map(len, seqs))
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T - 1)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        idx[i, :len(s)] = torch.tensor(s)
        mask[i, len(p) - 1:len(s) - 1] = 1
    return idx, mask, torch.tensor([len(s) - 1 for s in seqs])


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
    model, meta, _ = checkpoint.load_model(init_from, dropout=dropout)
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
    model = RewardModel(checkpoint.model_from_checkpoint(ckpt))
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


# ----------------------------------------------------------------------------- processes and logs

class Run:
    """What reward.py, ppo.py and dpo.py share: under torchrun the process group (gloo on CPU, nccl on CUDA),
    each rank's share of a step's micro-batches, gradients averaged over ranks (DDP's all-reduce, done by hand
    since a step may train two models), and the log (stdout and out_dir/log.jsonl) on rank 0 only."""

    def __init__(self, out_dir, device, divide=None, new_run=False):
        """divide: {setting: count} of what each step splits among the processes, checked before joining the
        group (a count that does not divide stops every rank alike, with one line from rank 0). new_run=True: a
        run already in out_dir is moved aside, untouched (checkpoint.make_room); the scripts pass not resume."""
        import torch.distributed as dist
        self.dist = dist
        self.ddp = int(os.environ.get('RANK', -1)) != -1
        self.rank = int(os.environ.get('RANK', 0))
        self.world = int(os.environ.get('WORLD_SIZE', 1))
        self.master = self.rank == 0
        for name, count in (divide or {}).items():
            if count % self.world:
                raise UserError(f"{name} ({count}) must divide among the {self.world} processes")
        self.device = device
        if self.ddp:
            if device.startswith('cuda'):
                self.device = f"cuda:{os.environ['LOCAL_RANK']}"
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend='nccl' if self.device.startswith('cuda') else 'gloo')
            import atexit
            import configurator
            configurator.exit_on_user_error()  # (torch's hook would prefix the line with [rankN])
            atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
        self.out_dir, self.wandb = out_dir, None
        if self.master:
            try:
                os.makedirs(out_dir, exist_ok=True)
            except OSError as e:
                raise UserError(f"out_dir {out_dir!r} cannot be made ({e.strerror})") from None
            checkpoint.lock_out_dir(out_dir)  # a second run into it stops (checkpoint.py)
            moved = checkpoint.make_room(out_dir, overwrite=False) if new_run else ''
            if moved:  # (rerunning a command keeps the earlier run)
                print(moved, flush=True)
        self.stop = checkpoint.StopSignal(announce=self.master)

    def begin(self, ckpt, note, total, complete=None):
        """The step a run starts at: 0, or a resumed checkpoint's next step, after logging the resume note and
        restoring the RNG (the caller then loads its models' and optimizers' states from ckpt). A run already
        complete (its step reached total, or complete says so) exits 0 here, its files untouched."""
        if note:
            self.log(note)
        if ckpt is None:
            return 0
        if (complete if complete is not None else ckpt['iter_num'] >= total):
            self.log(f"the run in {self.out_dir} is complete ({ckpt['iter_num']} of {total} steps): nothing to resume")
            self.close()
            raise SystemExit(0)
        checkpoint.set_rng_state(ckpt['rng'])
        return ckpt['iter_num']

    def close(self):
        """Every rank leaves together, then the process group goes while Python is whole: rank 0 may still be
        writing the last checkpoint, and a rank tearing its group down alone at exit aborted now and then (SIGABRT,
        as train.py saw; once in a CI run of ppo.py on 2 processes)."""
        if self.ddp and self.dist.is_initialized():
            self.dist.barrier()
            self.dist.destroy_process_group()

    def stop_if_signalled(self, save, done, total, unit='step'):
        """After a step: if SIGTERM or Ctrl-C reached any process (every rank agrees, so all stop after the same
        step), save(done) and exit 0 with the command that resumes. done: the steps done, total: the run's."""
        if done < total and self.sum(torch.tensor(float(len(self.stop)), device=self.device)).item() > 0:
            save(done)
            self.log(f"stopped by signal after {unit} {done} of {total}, checkpoint saved; continue with "
                     f"`python {os.path.basename(sys.argv[0])} --resume=True --out_dir={self.out_dir}`")
            self.close()
            raise SystemExit(0)

    def share(self, m):
        """This rank's global micro-batches out of m (a contiguous block), as train.py's my_share."""
        return range(self.rank * m // self.world, (self.rank + 1) * m // self.world)

    def part(self, items):
        """This rank's contiguous share of a list (e.g. held-out examples to score)."""
        return items[self.rank * len(items) // self.world:(self.rank + 1) * len(items) // self.world]

    def pick(self, n, batch_size, *seed_parts):
        """This rank's share of a step's batch_size indices drawn from range(n): a function of seed_parts alone, so
        N processes together take the batch one process takes."""
        g = torch.Generator().manual_seed(seed_from(*seed_parts))
        return self.part(torch.randint(n, (batch_size,), generator=g).tolist())

    def step(self, model, optimizer, grad_clip):
        """One optimizer step on the gradients summed over ranks, clipped to grad_clip (0: not clipped)."""
        self.reduce_gradients([p for p in model.parameters() if p.requires_grad])  # (LoRA: not the frozen base)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def mean(self, values):
        """Floats averaged over processes."""
        return (self.sum(torch.tensor(values, dtype=torch.float64)) / self.world).tolist()

    def sum(self, t):
        """A tensor summed over processes."""
        if self.ddp:
            self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM)
        return t

    def reduce_gradients(self, params):
        """Sum the gradients over processes (each rank's loss is already divided by the global count). A rank
        with no share of a minibatch contributes zeros: every rank takes part in every all-reduce."""
        if self.ddp:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                self.dist.all_reduce(p.grad, op=self.dist.ReduceOp.SUM)

    def log(self, *args):
        if self.master:
            print(*args, flush=True)

    def start_wandb(self, project, name, config):
        """Also send every record's numbers to Weights & Biases (WANDB_MODE=offline needs no account)."""
        if self.master:
            import wandb
            wandb.init(project=project, name=name, config=config)
            self.wandb = wandb

    def record(self, **entry):
        if entry.get('event') == 'start':  # (which trainer's run this is: a resume checks it)
            entry = {'event': 'start', 'script': os.path.basename(sys.argv[0]), **entry}
        if self.master:
            checkpoint.append_record(os.path.join(self.out_dir, 'log.jsonl'), entry)
            if self.wandb is not None and entry.get('event') != 'start':
                self.wandb.log({f"{entry['event']}/{k}": v for k, v in entry.items()
                                if isinstance(v, (int, float)) and k != 'iter'}, step=entry.get('iter'))

    def save(self, obj, name='ckpt.pt'):
        if self.master:
            checkpoint.save_checkpoint(obj, os.path.join(self.out_dir, name))


def fmt(stats):
    """'name value, ...' for a log line."""
    return ', '.join(f"{k} {v:.4f}" if isinstance(v, float) and math.isfinite(v) else f"{k} {v}"
                     for k, v in stats.items())


# ----------------------------------------------------------------------------- sampling responses

def fit(prompt, response, block_size):
    """Prompt and response ids cut to block_size tokens in all: the response loses its end first, then the prompt
    its start (the end of a prompt leads into the response)."""
    response = response[:max(1, block_size - len(prompt))]
    return prompt[-(block_size - len(response)):], response


@torch.no_grad()
def sample_responses(model, prompts, max_new_tokens, end_id, temperature=1.0, generator=None):
    """Responses of the policy to prompts (of any lengths: one batch of generate.Engine), each up to and including
    its first <|end|>, at most max_new_tokens (and the context) long."""
    from generate import generate_batch
    bs = model.config.block_size
    budget = [max(1, min(max_new_tokens, bs - len(p))) for p in prompts]
    out = generate_batch(model, prompts, budget, stop_ids={end_id}, max_batch=len(prompts), generator=generator,
                         temperature=temperature)
    return [tokens for tokens, _ in out]
