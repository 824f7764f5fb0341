"""
Sampling: the logit filters (repetition penalty, top-k, top-p, min-p), a row's sampling parameters, and the
next-token draw. The filters follow transformers' logits processors, so the same settings give the same tokens
(tests/test_generate.py checks them against transformers).
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn import functional as F


def check_sampling_args(temperature=1.0, top_k=None, top_p=None, min_p=None, repetition_penalty=1.0):
    """One clear message per invalid decoding setting."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (None, or a value >= the vocabulary size, keeps every token), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 disables it), got {repetition_penalty}")


def apply_repetition_penalty(logits, prev_ids, penalty):
    """CTRL (Keskar et al. 2019) as in HF: divide positive logits / multiply negative logits of
    every token already present in prev_ids by penalty."""
    if penalty == 1.0:
        return logits
    score = torch.gather(logits, 1, prev_ids)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, prev_ids, score)


def apply_top_k(logits, k):
    """Keep the k largest logits per row (ties with the k-th kept), others -inf."""
    if k is None or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float('-inf'))


def apply_top_p(logits, p, min_tokens_to_keep=1):
    """Nucleus sampling (Holtzman et al. 2019): keep the smallest set of most likely tokens whose
    probability mass reaches p."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1 - p)  # the low tail whose total mass is at most 1 - p
    remove[..., -min_tokens_to_keep:] = False
    remove = remove.scatter(-1, sorted_idx, remove)
    return logits.masked_fill(remove, float('-inf'))


def apply_min_p(logits, min_p):
    """Keep tokens whose probability is at least min_p times the most likely token's."""
    if not min_p:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = probs.max(dim=-1, keepdim=True).values * min_p
    return logits.masked_fill(probs < threshold, float('-inf'))


def apply_penalties(logits, counts, presence, frequency):
    """OpenAI's presence and frequency penalties: logits[j] -= frequency * c[j] + presence * (c[j] > 0), where
    c[j] (counts, (B, V)) is how often token j was generated so far (the prompt is not counted)."""
    if counts is None or (not presence and not frequency):
        return logits
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def sample_next(logits, prev_ids, temperature=1.0, top_k=None, top_p=None, min_p=None,
                repetition_penalty=1.0, generator=None, counts=None, presence_penalty=0.0, frequency_penalty=0.0):
    """Pick the next token (B, 1) from last-position logits (B, V). counts: the generated tokens' counts (B, V)
    that the presence and frequency penalties read."""
    logits = apply_repetition_penalty(logits, prev_ids, repetition_penalty)
    logits = apply_penalties(logits, counts, presence_penalty, frequency_penalty)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    logits = apply_top_k(logits, top_k)
    logits = apply_top_p(logits, top_p)
    logits = apply_min_p(logits, min_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)



# ----------------------------------------------------------------------------- the decoding engine

@dataclass
class SamplingParams:
    """How one request picks its tokens. seed: its own random stream (the same tokens alone or in any batch);
    None draws from the engine's shared stream. presence_penalty, frequency_penalty: OpenAI's, in [-2, 2], on the
    generated tokens (apply_penalties). min_tokens: the engine holds back a row's stop ids until it has generated
    that many tokens."""
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    repetition_penalty: float = 1.0
    seed: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0

    def check(self):
        check_sampling_args(self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty)
        for name in ('presence_penalty', 'frequency_penalty'):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2] (0 disables it), got {getattr(self, name)}")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")

    def shared(self):
        """The settings rows can be sampled with together (one call over their batch)."""
        return (self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty, self.presence_penalty,
                self.frequency_penalty)
