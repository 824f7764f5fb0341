"""
train.py's schedule: the learning rate at each step (warmup, then cosine or WSD decay, in iterations as nanoGPT
counts or in tokens as GPT-3 does, optionally by the clock) and the batch ramp (GPT-3's batch grown over the first
tokens). Each is a function of the step and the tokens seen alone, so a resumed run, or one on any number of
processes, takes the same steps (tests/test_schedule.py checks both against the paper's formulas).
"""
import collections
import math
import statistics
from dataclasses import dataclass, fields


@dataclass
class Schedule:
    learning_rate: float
    min_lr: float
    warmup_iters: int
    lr_decay_iters: int
    warmup_tokens: int
    lr_decay_tokens: int
    lr_schedule: str              # 'cosine' or 'wsd'
    cooldown_frac: float
    decay_on_clock: bool
    max_time: float
    gradient_accumulation_steps: int
    batch_size: int
    block_size: int
    batch_ramp_start: int
    batch_ramp_tokens: int

    @classmethod
    def from_config(cls, config):
        return cls(**{f.name: config[f.name] for f in fields(cls)})

    @property
    def in_tokens(self):
        """Is the schedule in tokens (lr_decay_tokens set) rather than iterations?"""
        return self.lr_decay_tokens > 0

    @property
    def micro_tokens(self):
        return self.batch_size * self.block_size

    @property
    def tokens_per_iter(self):
        """The full batch, in tokens (every process's micro-batches together)."""
        return self.gradient_accumulation_steps * self.micro_tokens

    def lr(self, it, tokens, seconds=0.0):
        """Linear warmup, then cosine decay to min_lr (or lr_schedule='wsd': the peak, then a linear cooldown to
        min_lr over the last cooldown_frac of the decay), then min_lr. In iterations (nanoGPT): warmup_iters, then
        decay until lr_decay_iters. In tokens (GPT-3: warmup over 375M, cosine to 10% over 260B): tokens is the
        count once this step's batch is done, warmup up to warmup_tokens, decay until lr_decay_tokens.
        decay_on_clock: the decay is as far along as the larger of that and seconds / max_time, so a time-budgeted
        run cools down by the end of its budget on a machine of any speed (and is not reproducible step for step)."""
        lr, low = self.learning_rate, self.min_lr
        if self.in_tokens:
            if tokens < self.warmup_tokens:
                return lr * tokens / self.warmup_tokens
            ratio = min(1.0, (tokens - self.warmup_tokens) / max(1, self.lr_decay_tokens - self.warmup_tokens))
        else:
            if it < self.warmup_iters:
                return lr * (it + 1) / (self.warmup_iters + 1)
            if it > self.lr_decay_iters:
                return low
            ratio = (it - self.warmup_iters) / max(1, self.lr_decay_iters - self.warmup_iters)
        if self.decay_on_clock:
            ratio = max(ratio, min(1.0, seconds / self.max_time))
        if self.lr_schedule == 'wsd':
            return low + min(1.0, (1.0 - ratio) / self.cooldown_frac if self.cooldown_frac else 1.0) * (lr - low)
        return low + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - low)

    def micro_steps(self, tokens):
        """Global micro-batches in the step that starts after `tokens` tokens: gradient_accumulation_steps, or
        during the batch ramp the ramp's tokens per step (linear in the tokens seen) in whole micro-batches."""
        if not self.batch_ramp_start or tokens >= self.batch_ramp_tokens:
            return self.gradient_accumulation_steps
        start = self.batch_ramp_start
        target = start + (self.tokens_per_iter - start) * tokens / self.batch_ramp_tokens
        return min(self.gradient_accumulation_steps,
                   max(round(start / self.micro_tokens), round(target / self.micro_tokens)))

    def tokens_left(self, it, tokens, max_iters):
        """Tokens the run has still to train on, from iteration it with `tokens` seen (for the ETA)."""
        left = 0
        while self.batch_ramp_start and tokens < self.batch_ramp_tokens and it < max_iters:  # the ramp's steps
            step = self.micro_steps(tokens) * self.micro_tokens
            tokens, left, it = tokens + step, left + step, it + 1
        return left + max(0, max_iters - it) * self.tokens_per_iter


class ETA:
    """The time a run has left: the tokens still to train on at the median seconds per token of the last 200 steps,
    evaluations left out (so one slow step, a stall on a shared machine or a checkpoint write, never moves it; an
    EMA jumped with every such step), plus the last evaluation's duration for each evaluation still to come."""

    def __init__(self):
        self.per_token = collections.deque(maxlen=200)  # (per token, not per step: steps grow during a batch ramp)
        self.eval_seconds = 0.0

    def step(self, seconds, tokens):
        self.per_token.append(seconds / tokens)

    def left(self, tokens, evaluations):
        """Seconds, or None before the first step is timed."""
        if not self.per_token:
            return None
        return tokens * statistics.median(self.per_token) + evaluations * self.eval_seconds
