"""
GPT-1's task fine-tuning (Radford et al. 2018, section 3.2-3.3): a pretrained GPT, its vocabulary grown by
start, delimiter and extract tokens, every task input rewritten as token sequences, and a linear head on the
final hidden state of the extract token. finetune.py trains it; this file is the model side.

    classification   [start] text [extract]
    entailment       [start] premise [delim] hypothesis [extract]
    similarity       [start] a [delim] b [extract]  and  [start] b [delim] a [extract], hidden states added
    multiple_choice  [start] context [delim] answer_k [extract] for each k, one score each, softmax over k

The objective is L3 = L2 + lm_coef * L1: the task loss plus lm_coef (0.5 in the paper) times the language
modelling loss on the same sequences.

Also the scalar head of InstructGPT's reward model and PPO's value function (RewardModel; rl.py has the rest).
"""


import torch
import torch.nn as nn
from torch.nn import functional as F

TASKS = ('classification', 'entailment', 'similarity', 'multiple_choice')
SPECIAL_TOKENS = ('<|start|>', '<|delim|>', '<|extract|>')
FIELDS = {'classification': 1, 'entailment': 2, 'similarity': 2}  # multiple_choice: a context and >= 2 answers


def transform(task, fields, specials, max_len):
    """The token sequences one example becomes (see the module docstring). fields: token id lists (text; or
    premise, hypothesis; or a, b; or context, answer_1, ..., answer_K). specials: (start, delim, extract) ids.
    The longest field is cut (a multiple-choice context at its start, where it is farthest from the answer;
    others at their end) until every sequence fits max_len."""
    start, delim, extract = specials
    fields = [list(f) for f in fields]

    def build(f):
        if task == 'classification':
            return [[start, *f[0], extract]]
        if task == 'entailment':
            return [[start, *f[0], delim, *f[1], extract]]
        if task == 'similarity':
            return [[start, *f[0], delim, *f[1], extract], [start, *f[1], delim, *f[0], extract]]
        return [[start, *f[0], delim, *answer, extract] for answer in f[1:]]

    while max(map(len, build(fields))) > max_len:
        if task == 'multiple_choice':  # the context and the longest answer together are what must fit
            longest = max(range(1, len(fields)), key=lambda i: len(fields[i]))
            cut = 0 if len(fields[0]) >= len(fields[longest]) else longest
        else:
            cut = max(range(len(fields)), key=lambda i: len(fields[i]))
        if not fields[cut]:
            raise ValueError(f"the model's context ({max_len}) cannot hold even the special tokens of a "
                             f"{task} example; use a model with a longer context")
        fields[cut] = fields[cut][1:] if task == 'multiple_choice' and cut == 0 else fields[cut][:-1]
    return build(fields)


def collate(groups, pad_id=0):
    """Pad a batch of examples (each a list of sequences, as transform returns) into (idx, targets, last):
    idx (N, T) with every example's sequences in a row, right-padded; targets the next tokens for the LM
    loss, -1 at padding and after the extract token; last the extract token's position in each row.
    Right padding leaves every real position as it was: attention is causal."""
    seqs = [s for g in groups for s in g]
    T = max(map(len, seqs))
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    targets = torch.full((len(seqs), T), -1, dtype=torch.long)
    for i, s in enumerate(seqs):
        idx[i, :len(s)] = torch.tensor(s)
        targets[i, :len(s) - 1] = torch.tensor(s[1:])
    last = torch.tensor([len(s) - 1 for s in seqs])
    return idx, targets, last


class TaskModel(nn.Module):
    """A GPT with GPT-1's task head: dropout, then a linear layer on the extract token's final hidden state
    (summed over the two orders for similarity). Outputs class logits (B, num_labels), a similarity score (B,)
    or one score per answer (B, K)."""

    def __init__(self, gpt, task, num_labels, dropout=0.1):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        self.gpt, self.task = gpt, task
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(gpt.config.n_embd, 1 if task in ('similarity', 'multiple_choice') else num_labels)
        nn.init.normal_(self.head.weight, std=0.02)  # GPT-1's code: N(0, 0.02) weights, zero bias
        nn.init.zeros_(self.head.bias)

    def forward(self, idx, last, groups, targets=None):
        """idx, last, targets from collate; groups: examples in the batch. Returns (task output, LM loss)."""
        _, lm_loss, h = self.gpt(idx, targets, return_hidden=True)
        x = h[torch.arange(idx.size(0), device=idx.device), last]  # (N, C): the extract tokens
        if self.task == 'similarity':
            x = x.view(groups, 2, -1).sum(1)
        out = self.head(self.dropout(x))
        if self.task == 'multiple_choice':
            return out.view(groups, -1), lm_loss
        return (out.squeeze(-1) if self.task == 'similarity' else out), lm_loss

    def loss(self, out, labels, lm_loss, lm_coef):
        """L3 = L2 + lm_coef * L1: cross-entropy over classes or answers (mean squared error for a similarity
        score), plus the weighted language-modelling loss."""
        task = F.mse_loss(out, labels.float()) if self.task == 'similarity' else F.cross_entropy(out, labels)
        return task + lm_coef * lm_loss if lm_coef else task


class RewardModel(nn.Module):
    """A GPT with a scalar head: one number per position from the final hidden state (a linear layer, N(0, 0.02)
    weights, zero bias). As InstructGPT's reward model the score of a prompt and response is the number at the
    response's last token (score); as PPO's value function the number at each position estimates the return
    from there (forward). reward.py trains it, rl.load_reward_model loads it, ppo.py uses it."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt
        self.head = nn.Linear(gpt.config.n_embd, 1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx):
        """(B, T) ids -> (B, T) scalars."""
        _, _, h = self.gpt(idx, return_hidden=True)
        return self.head(h).squeeze(-1).float()

    def score(self, idx, last):
        """(B,) the scalar at each row's position last."""
        return self(idx)[torch.arange(idx.size(0), device=idx.device), last]
