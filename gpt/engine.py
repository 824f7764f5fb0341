"""
Decoding: functions that take a GPT and extend token ids with it, and Engine, the continuous-batching loop that
sample.py, serve.py and the RL trainers run prompts through. The model itself only knows a forward pass and its
KV cache (gpt/kvcache.py); the sampling rules are gpt/sampling.py's.

    from gpt.engine import generate, generate_stream, beam_search
    out = generate(model, idx, 100, temperature=0.8, top_k=200)     # (B, T + 100)
    for tok in generate_stream(model, idx, 100): ...                 # (B, 1) at a time
    best = beam_search(model, idx, 40, num_beams=4)                  # as transformers' generate(num_beams=4)
"""

import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn import functional as F

from gpt.device import autocast_ctx
from gpt.kvcache import KVCache
from gpt.sampling import SamplingParams, check_sampling_args, sample_next


@dataclass
class Row:
    rid: int
    tokens: list            # prompt + generated ids
    n_prompt: int
    max_new: int
    params: SamplingParams
    stop_ids: frozenset
    generator: Optional[torch.Generator]
    logprobs: Optional[int] = None          # report each generated token's logprob and this many top ones
    prompt_logprobs: Optional[int] = None   # the same for the prompt's tokens, at prefill
    slid: bool = False                      # its window left token 0 behind: its keys are no prefix's any more


@dataclass
class Entry:
    """A finished request's keys, kept in a free cache slot for a later prompt that starts the same way."""
    tokens: list    # the ids whose keys and values the slot holds, at positions 0..
    used: int       # when it was last made or matched (Engine.clock): the least recently used goes first


class Engine:
    """Continuous batching: requests come and go, and every step decodes one token for each running request in
    one batch. A request is a row of a KV cache with a length per row (kvcache.py): waiting requests join at the
    next step (their prompts prefilled together, right-padded), a finished or cancelled one leaves at once (the
    last row moves into its slot), so finished rows cost nothing. Rows longer than the context slide their
    window, as generate_stream does. sample.py, eval.py, the RL rollouts, bench.py and serve.py decode with it.

        engine = Engine(model, max_batch=16)
        rid = engine.add(prompt_ids, max_new_tokens, SamplingParams(temperature=0.8), stop_ids={eot})
        while engine.pending():
            for rid, token, finish in engine.step(): ...   # finish: None, 'stop' (a stop id) or 'length'

    Log-probabilities (serve.py's logprobs and echo): add(..., logprobs=k) records, for each generated token, its
    log-probability and the k most likely tokens' (k=0: its own alone), from log_softmax of the model's raw logits
    (before min_tokens' hold, the penalties, temperature or top-k/p, as vLLM's default); prompt_logprobs=k does the
    same for the prompt's tokens from the prefill's logits of every position (a prefill without them computes the
    head at each prompt's last position only).
    take_logprobs(rid) hands over what was recorded since the last call, in order: the prompt's entries, then one
    per generated token, each (token, logprob, [(id, logprob), ...] most likely first); the prompt's first token
    has no logprob: (token, None, None). Rows that ask for none cost nothing more.

    Not thread-safe: one thread drives it. decoder: compile_decoder(model) or CUDAGraphDecoder(model), run for
    the one-token steps on a static cache. generator: the shared random stream of requests without a seed.

    sync_every: one-token steps the device may take before the host reads their tokens (None: SYNC_EVERY for
    the device). Reading a token waits for the device to finish, and a GPU then idles while the host prepares
    the next step; with sync_every=k a step() feeds each sampled token straight back on the device for up to k
    steps (sampling included), reads them all at once and returns up to k events per request, in order. A row
    that stops inside such a chunk wastes at most k - 1 of its batch's steps; waiting requests join at the
    chunk's end (no chunk while a slot is free for them). Greedy tokens are the same for any k.

    Prefix reuse (prefix_cache=True), vLLM's automatic prefix caching at this scale: a new prompt that starts with
    tokens whose keys and values the cache still holds (a running row's, or a finished request's) starts from a
    copy of the longest such prefix and prefills only the rest, so a chat's next turn does not recompute the turns
    before it. What a finished request leaves is kept in the slots no request is using, until a new request needs
    the slot (the least recently used goes first): the cache costs no memory beyond the max_batch rows it has
    anyway, and under a full batch nothing is kept (a separate pool would take memory from every deployment for a
    gain only some see). At least a prompt's last token is always recomputed (its logits start the decoding).
    Logits with reuse are those without it up to float rounding (a prefix's keys computed in another pass), so
    greedy tokens are the same. No reuse for rows whose window has slid past the context (their keys are at other
    positions), nor for prompts cropped to the context, nor for requests asking for logprobs or prompt_logprobs:
    those get every prompt position's logits, or numbers a client compares bit for bit with another identical
    request's (serve.py's streamed and whole responses). Their keys are reused by later requests all the same. Only
    keys and values are shared: each request keeps its own tokens, penalties and random stream. prefilled_tokens
    and reused_tokens count the prompt tokens run through the model and those taken from the cache."""

    SYNC_EVERY = {'cuda': 8}  # (elsewhere 1: a CPU's result is ready when the op returns, so a read costs nothing)

    def __init__(self, model, max_batch=16, dtype=None, decoder=None, generator=None, sync_every=None,
                 prefix_cache=True):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if sync_every is not None and sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {sync_every}")
        self.model, self.max_batch, self.decoder = model, max_batch, decoder
        # what runs a one-token step ('is None', not 'or': a compiled module's truth asks the model for its len())
        self.step_model = model if decoder is None else decoder
        self.device = model.transformer.wte.weight.device
        self.dtype = dtype
        self.generator = generator
        self.sync_every = sync_every or self.SYNC_EVERY.get(self.device.type, 1)
        self.cache = None
        self.rows, self.waiting = [], deque()  # rows[i] decodes in cache slot i
        self.next_id = 0
        self.logprobs = {}  # rid -> entries recorded and not yet taken (take_logprobs)
        self.prefix_cache = prefix_cache
        self.entries = {}   # free slot -> Entry: the prefix cache, in slots len(rows) .. max_batch - 1
        self.clock = 0      # admissions so far: Entry.used
        self.prefilled_tokens = self.reused_tokens = 0

    def add(self, prompt, max_new_tokens, params=None, stop_ids=(), crop=False, logprobs=None, prompt_logprobs=None):
        """Queue a request; returns its id. One clear ValueError for a request that cannot run. A prompt longer
        than the context is refused, or with crop=True decoded from its last block_size tokens (its tokens before
        the window then have no prompt logprob: None). logprobs, prompt_logprobs: see the class."""
        params = params or SamplingParams()
        params.check()
        prompt = [int(t) for t in prompt]
        bs = self.model.config.block_size
        if not prompt:
            raise ValueError("the prompt is empty: give at least one token")
        if len(prompt) > bs and not crop:
            raise ValueError(f"the prompt is {len(prompt)} tokens, longer than the model's context ({bs}); shorten it")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if prompt and not 0 <= min(prompt) <= max(prompt) < self.model.config.vocab_size:
            raise ValueError(f"token id out of range: ids must be in [0, {self.model.config.vocab_size})")
        for name, k in (('logprobs', logprobs), ('prompt_logprobs', prompt_logprobs)):
            if k is not None and not 0 <= k <= self.model.config.vocab_size:
                raise ValueError(f"{name} must be in [0, {self.model.config.vocab_size}], got {k}")
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        self.next_id += 1
        self.waiting.append(Row(self.next_id, prompt, len(prompt), max_new_tokens, params, frozenset(stop_ids),
                                generator, logprobs, prompt_logprobs))
        return self.next_id

    def take_logprobs(self, rid):
        """The log-probability entries recorded for a request since the last call (see the class), or []."""
        return self.logprobs.pop(rid, [])

    @torch.inference_mode()  # (the cache's tensors are inference tensors)
    def cancel(self, rid):
        """Drop a request, running or waiting (unknown or finished ids are ignored)."""
        self.waiting = deque(r for r in self.waiting if r.rid != rid)
        self.logprobs.pop(rid, None)
        for i, row in enumerate(self.rows):
            if row.rid == rid:
                self._free(i)
                return

    def pending(self):
        return len(self.rows) + len(self.waiting)

    @torch.inference_mode()
    def step(self):
        """One token for every running request (up to sync_every of them: see the class); admits waiting ones.
        Returns [(rid, token, finish)], a request's events in order."""
        if self.cache is None and self.waiting:
            self.cache = KVCache(self.model.config, self.max_batch, self.device, self.model.transformer.wte.weight.dtype,
                                 static=self.decoder is not None)
        k = self._chunk()
        if k > 1:
            return self._decode_chunk(k)
        with autocast_ctx(self.device, self.dtype) if self.dtype else contextlib.nullcontext():
            logits = [self._decode()] if self.rows else []
            new = []
            while self.waiting and len(self.rows) + len(new) < self.max_batch:
                new.append(self.waiting.popleft())
            if new:
                logits.append(self._prefill(new))
        if not logits:
            return []
        raw = torch.cat(logits)[:, :self.model.config.vocab_size].float()
        tokens = self._sample(self._hold_stops(raw), self._groups())
        return self._finish(tokens[:, None].tolist(), [self._scores(raw, tokens)])

    def _chunk(self):
        """How many one-token steps the next step() takes before the host reads their tokens: up to sync_every,
        while no request waits for a free slot and every row stays within the context (a row past it slides its
        window, which only the host can arrange), no more than the longest remaining budget."""
        n = len(self.rows)
        if self.sync_every == 1 or not n or (self.waiting and n < self.max_batch):
            return 1
        room = self.model.config.block_size - max(self.cache.lengths[:n])
        budget = max(row.max_new - (len(row.tokens) - row.n_prompt) for row in self.rows)
        return max(1, min(self.sync_every, room, budget))

    def _decode_chunk(self, k):
        """k one-token steps of every running row, each sampled token fed back on the device; one read."""
        n, V = len(self.rows), self.model.config.vocab_size
        groups = self._groups()
        tokens = torch.tensor([[row.tokens[-1]] for row in self.rows], device=self.device)
        steps, scores = [], []
        with autocast_ctx(self.device, self.dtype) if self.dtype else contextlib.nullcontext():
            for j in range(k):
                raw = self.step_model(tokens, kv_cache=self.cache.select(0, n))[0][:, -1][:, :V].float()
                tokens = self._sample(self._hold_stops(raw, j), groups, steps)[:, None]
                steps.append(tokens)
                scores.append(self._scores(raw, tokens[:, 0]))  # (tensors: read with the tokens, at the end)
        return self._finish(torch.cat(steps, dim=1).tolist(), scores)

    def _scores(self, raw, tokens):
        """The logprob entries of one step for the rows that asked (Row.logprobs), as tensors: (their row
        indices, the chosen tokens' logprobs (m,), the top logprobs (m, k) and their ids), k the most any row
        asked; None when no row asked."""
        want = [i for i, row in enumerate(self.rows) if row.logprobs is not None]
        if not want:
            return None
        sel = torch.tensor(want, device=raw.device)
        lp = F.log_softmax(raw[sel], dim=-1)
        k = max(self.rows[i].logprobs for i in want)
        top = lp.topk(k, dim=-1) if k else None
        return want, lp.gather(1, tokens[sel, None])[:, 0], top

    def _record(self, row, token, chosen, top):
        """One generated token's entry (host values), for take_logprobs."""
        values, ids = top if top is not None else ([], [])
        self.logprobs.setdefault(row.rid, []).append(
            (token, chosen, list(zip(ids[:row.logprobs], values[:row.logprobs]))))

    def _hold_stops(self, logits, ahead=0):
        """logits (rows, V) with each row's stop ids at -inf while it has generated fewer than its min_tokens
        (ahead: tokens it sampled since its row.tokens was last updated, inside a chunk)."""
        held = [(i, sorted(row.stop_ids)) for i, row in enumerate(self.rows)
                if row.stop_ids and len(row.tokens) - row.n_prompt + ahead < row.params.min_tokens]
        if not held:
            return logits
        logits = logits.clone()
        for i, ids in held:
            logits[i, ids] = float('-inf')
        return logits

    def _finish(self, tokens, scores=()):
        """Hand each row its new tokens (tokens[i]: row i's, in order) up to its first stop; free finished rows.
        scores: each step's _scores, whose entries are recorded for the tokens kept. Returns the events, step by
        step."""
        events, done = [], set()
        scores = [None if s is None else  # (one read per step, of the rows that asked only)
                  (dict(zip(s[0], range(len(s[0])))), s[1].tolist(),
                   None if s[2] is None else (s[2].values.tolist(), s[2].indices.tolist())) for s in scores]
        for j in range(len(tokens[0]) if tokens else 0):
            for i, row in enumerate(self.rows):
                if i in done:
                    continue  # (stopped earlier in the chunk: the rest of its tokens are dropped)
                token = tokens[i][j]
                row.tokens.append(token)
                if j < len(scores) and scores[j] is not None and i in scores[j][0]:
                    at, chosen, top = scores[j][0][i], scores[j][1], scores[j][2]
                    self._record(row, token, chosen[at], None if top is None else (top[0][at], top[1][at]))
                finish = ('stop' if token in row.stop_ids else
                          'length' if len(row.tokens) - row.n_prompt >= row.max_new else None)
                events.append((row.rid, token, finish))
                if finish:
                    done.add(i)
        for i in sorted(done, reverse=True):
            self._free(i)
        return events

    def _prefill(self, new):
        """Prefill new rows in the free slots after the running ones: their prompts right-padded into one batch
        (every prompt at positions 0.., its padding after it, hidden by causal attention, then forgotten), each
        after the prefix _place found for it. Prompts longer than the context keep their last block_size - 1
        tokens in the cache, as a slid window. Returns the logits of each prompt's last token, in the order the
        rows now have (self.rows)."""
        bs = self.model.config.block_size
        for row in new:
            row.slid = len(row.tokens) > bs
        new, reuse = self._place(new) if self.prefix_cache else (new, [0] * len(new))
        windows = [row.tokens[-bs:] for row in new]
        logits, a = [], 0
        while a < len(new):  # one pass for rows whose longest prefix and longest rest fit the context together
            b, most_reused, most_new = a, 0, 0
            while b < len(new) and (max(most_reused, reuse[b]) + max(most_new, len(windows[b]) - reuse[b]) <= bs):
                most_reused, most_new = max(most_reused, reuse[b]), max(most_new, len(windows[b]) - reuse[b])
                b += 1
            logits.append(self._prefill_part(len(self.rows) + a, new[a:b], windows[a:b], reuse[a:b]))
            a = b
        self.rows += new
        return torch.cat(logits)

    def _prefill_part(self, start, new, windows, reuse):
        """Prefill rows new into slots start.., whose first reuse[i] positions the cache already holds."""
        rest = [w[m:] for w, m in zip(windows, reuse)]
        lengths = [len(r) for r in rest]
        P = max(lengths)
        idx = torch.tensor([r + [0] * (P - len(r)) for r in rest], device=self.device)
        self.cache.select(start, len(new)).set_lengths(reuse)  # (0: slots a finished row may have held)
        last = (torch.arange(len(new), device=self.device), torch.tensor(lengths, device=self.device) - 1)
        at = None
        if all(row.prompt_logprobs is None for row in new):  # the head at the last positions only: over a long
            at = torch.zeros(len(new), P, dtype=torch.bool, device=self.device)  # prompt the logits of every
            at[last] = True  # position cost a head's matmul each and (rows, P, vocab) floats of memory
        logits, _ = self.model(idx, kv_cache=self.cache, logits_at=at)
        self.cache.set_lengths([m + n for m, n in zip(reuse, lengths)])
        self.prefilled_tokens += sum(lengths)
        self.reused_tokens += sum(reuse)
        if at is not None:
            return logits  # (rows, vocab): the mask's positions, one a row, in row order
        for b, row in enumerate(new):
            if row.prompt_logprobs is not None:  # (such a row reuses nothing: its logits are of the whole window)
                self._prompt_logprobs(row, logits[b, :lengths[b], :self.model.config.vocab_size], windows[b])
        return logits[last]

    def _held(self, i):
        """The tokens whose keys running row i's slot holds at positions 0.. ([] once its window has slid). After a
        chunk a stopped row's slot may hold keys of tokens it dropped, beyond its tokens: those are not counted."""
        row = self.rows[i]
        return [] if row.slid else row.tokens[:min(self.cache.lengths[i], len(row.tokens))]

    def _place(self, new):
        """Put the keys of each new row's longest cached prefix into the slot it will prefill in, slots
        len(rows) .. len(rows) + len(new) - 1 (the region). Returns the rows in slot order and how many of each
        one's tokens its slot now holds.

        1. Each row's longest match among the running rows and the entries (at most its length - 1 tokens).
        2. The region's entries are overwritten by the new rows. One that a new row continues whole stays, for
           that row; another moves above the region, into an empty slot, or the slot of an entry a new row continues
           whole (their keys exchanged: that entry's come down for its row), or over the least recently used entry
           older than itself that no new row reads; with none of those it is dropped.
        3. A row whose match is still in the region takes that slot, keys and all; the others take the rest of
           the region, their prefixes copied in (from slots no copy writes to: running rows, or above it)."""
        start = len(self.rows)
        region = range(start, start + len(new))
        self.clock += 1
        held = {i: self._held(i) for i in range(start)}
        held.update((slot, e.tokens) for slot, e in self.entries.items())
        matches = []  # (slot, tokens it gives) per new row
        for row in new:
            best = (None, 0)
            if row.logprobs is None and row.prompt_logprobs is None and not row.slid:
                for slot, tokens in held.items():
                    m = min(_common_prefix(row.tokens, tokens), len(row.tokens) - 1)
                    if m > best[1]:
                        best = (slot, m)
            matches.append(best)
        for slot, _ in matches:
            if slot in self.entries:
                self.entries[slot].used = self.clock
        # 2. what the region's entries become
        continued = {slot for (slot, _), row in zip(matches, new)  # (slots whose whole entry a new row extends)
                     if slot in self.entries and _common_prefix(row.tokens, self.entries[slot].tokens) ==
                     len(self.entries[slot].tokens)}
        for t in region:
            e = self.entries.pop(t, None)
            if e is None or t in continued:
                continue
            sources = {slot for slot, _ in matches}

            def room(u):  # where e may go: an empty slot, the highest first; a continued entry's; an older entry's
                return ((0, -u) if u not in self.entries else (1, 0) if u in continued else
                        (2, self.entries[u].used) if u not in sources and self.entries[u].used < e.used else None)
            up = [u for u in range(start + len(new), self.max_batch) if room(u) is not None]
            if not up:
                continue  # the least recently used: dropped (its keys stay until its slot is written)
            u = min(up, key=room)
            if u in continued:  # exchanged: the continued keys come into the region, for the row that continues them
                self.cache.swap_rows(t, u)
                continued = (continued - {u}) | {t}
                matches = [(t if slot == u else u if slot == t else slot, m) for slot, m in matches]
            else:
                self.cache.copy_prefix(t, u, len(e.tokens))
                matches = [(u if slot == t else slot, m) for slot, m in matches]
            self.entries[u] = e
        for slot in continued:  # (the new row holds them now, and leaves them as an entry when it finishes)
            self.entries.pop(slot, None)
        # 3. slots
        target = [None] * len(new)
        for j, (slot, m) in enumerate(matches):
            if m and slot in region and slot not in target:
                target[j] = slot
        rest = iter(t for t in region if t not in target)
        target = [t if t is not None else next(rest) for t in target]
        for (slot, m), t in zip(matches, target):
            if m and slot != t:
                self.cache.copy_prefix(slot, t, m)
        order = sorted(range(len(new)), key=target.__getitem__)
        return [new[j] for j in order], [matches[j][1] for j in order]

    def _prompt_logprobs(self, row, logits, window):
        """Record the entries of a prompt's tokens from the prefill's logits (T, V) of its window: position t
        predicts token t + 1; the first token (and any before a cropped window) has none: (token, None, None)."""
        lp = F.log_softmax(logits[:-1].float(), dim=-1)
        ids = torch.tensor(window[1:], dtype=torch.long, device=lp.device)
        chosen = lp.gather(1, ids[:, None])[:, 0].tolist()
        top = lp.topk(row.prompt_logprobs, dim=-1) if row.prompt_logprobs else None
        values, top_ids = (top.values.tolist(), top.indices.tolist()) if top is not None else ([[]] * len(chosen),) * 2
        entries = [(t, None, None) for t in row.tokens[:len(row.tokens) - len(window) + 1]]
        entries += [(t, c, list(zip(i, v))) for t, c, i, v in zip(window[1:], chosen, top_ids, values)]
        self.logprobs.setdefault(row.rid, []).extend(entries)

    def _decode(self):
        """Feed every running row its newest token. Rows within the context take one batched one-token step; rows
        past it (kept after the others) recompute their last block_size tokens at positions 0.. together
        (learned positions leave no cheaper slide)."""
        bs, n = self.model.config.block_size, len(self.rows)
        live = self._partition()
        logits = []
        if live:
            last = torch.tensor([[row.tokens[-1]] for row in self.rows[:live]], device=self.device)
            logits.append(self.step_model(last, kv_cache=self.cache.select(0, live))[0][:, -1])
        if live < n:
            for row in self.rows[live:]:
                row.slid = True
            self.cache.select(live, n - live).set_lengths([0] * (n - live))
            window = torch.tensor([row.tokens[-bs:] for row in self.rows[live:]], device=self.device)
            logits.append(self.model(window, kv_cache=self.cache)[0][:, -1])
        return torch.cat(logits)

    def _partition(self):
        """Put the rows whose cache is full (past the context) after the others; returns how many are not. A full
        row's cache is recomputed anyway, so a swap is one row copy: the other row's cache into its slot."""
        full = self.model.config.block_size
        i, j = 0, len(self.rows) - 1
        while True:
            while i <= j and self.cache.lengths[i] < full:
                i += 1
            while j >= i and self.cache.lengths[j] >= full:
                j -= 1
            if i >= j:
                return i
            self.cache.move_row(j, i)
            self.cache.lengths[j] = full
            self.rows[i], self.rows[j] = self.rows[j], self.rows[i]

    def _groups(self):
        """The rows that sample in one call: those that share their settings and the shared random stream (what a
        batch of samples of one prompt is); a row with its own stream alone. [(rows as an index tensor, or None
        for all of them, params, generator, the penalty's earlier tokens or None, the generated tokens' counts
        (rows, V) for the presence and frequency penalties or None)]"""
        groups = {}
        for i, row in enumerate(self.rows):
            key = (('own', i) if row.generator is not None else
                   row.params.shared() + ((len(row.tokens),) if row.params.repetition_penalty != 1.0 else ()))
            groups.setdefault(key, []).append(i)  # (the penalty reads earlier tokens: a group stacks equal lengths)
        out = []
        for idx in groups.values():
            p = self.rows[idx[0]].params
            prev = None
            if p.repetition_penalty != 1.0:
                prev = torch.tensor([self.rows[i].tokens for i in idx], device=self.device)
            counts = None
            if p.presence_penalty or p.frequency_penalty:  # (any lengths: one scatter of every row's generated ids)
                gen = [(k, t) for k, i in enumerate(idx) for t in self.rows[i].tokens[self.rows[i].n_prompt:]]
                counts = torch.zeros(len(idx), self.model.config.vocab_size, device=self.device)
                if gen:
                    at = torch.tensor(gen, device=self.device).T
                    counts.index_put_((at[0], at[1]), torch.ones(len(gen), device=self.device), accumulate=True)
            sel = None if len(idx) == len(self.rows) else torch.tensor(idx, device=self.device)
            out.append((sel, p, self.rows[idx[0]].generator or self.generator, prev, counts))
        return out

    def _sample(self, logits, groups, steps=()):
        """Next token (rows,) of every row, by groups (_groups). steps: the (rows, 1) tokens sampled since the
        groups were made (a chunk's), which the penalties count as earlier tokens too."""
        out = None
        for sel, p, gen, prev, counts in groups:
            if prev is not None and steps:
                prev = torch.cat([prev] + [s if sel is None else s[sel] for s in steps], dim=1)
            if counts is not None and steps:
                counts = counts.clone()
                for s in steps:
                    counts.scatter_add_(1, s if sel is None else s[sel], torch.ones_like(counts[:, :1]))
            token = sample_next(logits if sel is None else logits[sel], prev, p.temperature, p.top_k, p.top_p,
                                p.min_p, p.repetition_penalty, gen, counts, p.presence_penalty,
                                p.frequency_penalty)[:, 0]
            if sel is None:
                return token
            if out is None:
                out = torch.empty(logits.size(0), dtype=torch.long, device=logits.device)
            out[sel] = token
        return out

    def _free(self, i):
        """Row i leaves; the last running row moves into its slot. With prefix_cache its keys stay (unless its
        window slid), as an entry: in a free slot (an empty one, the highest, else the least recently used
        entry's), or, with none free, in the slot the last row leaves."""
        last = len(self.rows) - 1
        held = self._held(i) if self.prefix_cache else []
        slot = last
        if held and i != last:
            free = range(last + 1, self.max_batch)
            if free:
                slot = min(free, key=lambda u: (u in self.entries, self.entries[u].used if u in self.entries else -u))
                self.cache.copy_prefix(i, slot, len(held))
                self.cache.move_row(last, i)
            else:
                self.cache.swap_rows(i, last)
        elif i != last:
            self.cache.move_row(last, i)
        if held:
            self.entries[slot] = Entry(held, self.clock)
        if i != last:
            self.rows[i] = self.rows[last]
        self.rows.pop()


def _common_prefix(a, b):
    """How many leading ids two lists share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def generate_batch(model, prompts, max_new_tokens, stop_ids=(), max_batch=64, dtype=None, decoder=None,
                   generator=None, sync_every=None, **sampling):
    """Decode prompts of any lengths in batches: [(new token ids, finish reason)] in the prompts' order, each
    row's ids ending with its stop id if it met one. max_new_tokens: one for all, or a list with one per prompt.
    sampling: SamplingParams' fields, for every prompt."""
    engine = Engine(model, max_batch=max_batch, dtype=dtype, decoder=decoder, generator=generator,
                    sync_every=sync_every)
    budgets = max_new_tokens if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * len(prompts)
    rids = [engine.add(p, n, SamplingParams(**sampling), stop_ids) for p, n in zip(prompts, budgets)]
    out = {rid: [] for rid in rids}
    finish = {}
    while engine.pending():
        for rid, token, why in engine.step():
            out[rid].append(token)
            if why:
                finish[rid] = why
    return [(out[rid], finish[rid]) for rid in rids]


@torch.no_grad()
def generate_stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, min_p=None,
                    repetition_penalty=1.0, eos_token_id=None, use_cache=True, generator=None, decoder=None,
                    sync_every=None):
    """Yield (B, 1) next tokens one at a time, for streaming. idx: (B, T) prompts of equal length (several
    samples of one prompt; prompts of different lengths go through Engine or generate_batch).

    With use_cache the engine decodes the rows (one token per step on the KV cache; past block_size it slides
    the window). use_cache=False recomputes the whole context every step: the reference the cache is tested
    against. decoder: compile_decoder(model), run for the one-token steps on a static cache. sync_every: the
    Engine's (tokens decoded on the device between reads; they are yielded one at a time all the same).
    temperature=0 is greedy. Rows that produced eos_token_id keep emitting it; the stream stops
    early once every row has."""
    check_sampling_args(temperature, top_k, top_p, min_p, repetition_penalty)
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError("the prompt must be a (batch, length) tensor with at least one token")
    if decoder is not None and not use_cache:
        raise ValueError("a compiled decoder steps on the KV cache: use_cache must be True")
    bs = model.config.block_size
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    if use_cache:  # the engine, all rows in one batch, sharing the settings and the random stream
        engine = Engine(model, max_batch=idx.size(0), decoder=decoder, generator=generator, sync_every=sync_every)
        params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
        rids = [engine.add(row, max_new_tokens, params, crop=True) for row in idx.tolist()]
        queued = {rid: deque() for rid in rids}  # (a step may bring several tokens of each row)
    for _ in range(max_new_tokens):
        if use_cache:
            while not all(queued.values()):
                for rid, token, _ in engine.step():  # (rows past the context move to the end: keyed by id)
                    queued[rid].append(token)
            next_id = torch.tensor([[queued[rid].popleft()] for rid in rids], device=idx.device)
        else:
            logits, _ = model(idx[:, -bs:])
            logits = logits[:, -1, :model.config.vocab_size].float()
            next_id = sample_next(logits, idx, temperature, top_k, top_p, min_p, repetition_penalty, generator)
        if eos_token_id is not None:
            next_id = torch.where(finished[:, None], torch.full_like(next_id, eos_token_id), next_id)
            finished |= next_id[:, 0] == eos_token_id
        idx = torch.cat((idx, next_id), dim=1)
        yield next_id
        if eos_token_id is not None and bool(finished.all()):
            return


@torch.no_grad()
def generate(model, idx, max_new_tokens, **kwargs):
    """Extend idx (B, T) by up to max_new_tokens tokens; see generate_stream for the options."""
    out = [idx] + list(generate_stream(model, idx, max_new_tokens, **kwargs))
    return torch.cat(out, dim=1)


@torch.no_grad()
def beam_search(model, idx, max_new_tokens, num_beams, length_penalty=1.0, eos_token_id=None,
                early_stopping=False, use_cache=True):
    """Beam search, token for token as transformers' generate(num_beams=..., do_sample=False).
    idx: (1, T), one prompt. Returns the best hypothesis (1, T + n), n <= max_new_tokens.

    Each step extends every live beam by every token and keeps the 2 * num_beams best candidates
    by summed log-probability. Those among the best num_beams that end in eos_token_id (or reach
    max_new_tokens) join a pool of up to num_beams finished hypotheses, scored
    sum_logprobs / n_generated ** length_penalty (> 0 favours longer outputs); the num_beams best
    unfinished candidates live on. early_stopping: True stops once the pool is full; False stops
    when the best live beam, scored at its current length, cannot beat the worst finished one;
    'never' scores it at max_new_tokens instead when length_penalty > 0."""
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError("the prompt must be a (1, length) tensor with at least one token")
    if idx.size(0) != 1:
        raise ValueError(f"beam_search takes a single prompt (batch size 1), got batch size {idx.size(0)}")
    if num_beams < 1 or max_new_tokens < 1:
        raise ValueError(f"num_beams and max_new_tokens must be >= 1, got {num_beams} and {max_new_tokens}")
    if early_stopping not in (True, False, 'never'):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    T, V, nb = idx.size(1), model.config.vocab_size, num_beams
    if T + max_new_tokens - 1 > model.config.block_size:  # the last token is never fed back
        raise ValueError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) - 1 exceeds block_size "
                         f"({model.config.block_size}); beam search has no sliding window")
    # All beams start as the prompt, but only beam 0 is live (the others at -1e9, as in HF), so
    # the first step does not pick the same continuation num_beams times.
    seqs = idx.expand(nb, T)
    scores = torch.full((nb,), -1e9, device=idx.device)
    scores[0] = 0.0
    finished = []       # (score, sequence) of up to num_beams finished hypotheses, best first
    improvable = True   # can a live beam still beat the worst finished hypothesis?
    cache = KVCache(model.config, 1, idx.device, model.transformer.wte.weight.dtype) if use_cache else None
    logits, _ = model(idx, kv_cache=cache)  # prefill once, then copy to every beam
    logits = logits.expand(nb, -1, -1)
    if cache is not None:
        cache.reorder(torch.zeros(nb, dtype=torch.long, device=idx.device))
    for n in range(1, max_new_tokens + 1):  # n = tokens generated once this step is done
        if n > 1:
            logits, _ = model(seqs[:, -1:], kv_cache=cache) if cache is not None else model(seqs)
        logprobs = F.log_softmax(logits[:, -1, :V].float(), dim=-1) + scores[:, None]
        cand_scores, flat = logprobs.view(-1).topk(2 * nb)
        beam, token = flat // V, flat % V
        cand = torch.cat((seqs[beam], token[:, None]), dim=1)
        done = token == eos_token_id if eos_token_id is not None else torch.zeros_like(token, dtype=torch.bool)
        if n == max_new_tokens:
            done[:] = True
        # finished candidates among the best num_beams join the pool, unless it can no longer
        # improve, or is full and early_stopping is True
        if improvable and not (early_stopping is True and len(finished) == nb):
            final = cand_scores / n ** length_penalty  # in float32, as HF
            finished += [(final[i].item(), cand[i]) for i in range(nb) if done[i]]
            finished = sorted(finished, key=lambda h: h[0], reverse=True)[:nb]
        if bool(done.all()):
            break
        # the num_beams best unfinished candidates live on (topk keeps them sorted, best first)
        live = cand_scores - 1e9 * done
        keep = live.topk(nb).indices
        seqs, scores = cand[keep], live[keep]
        if cache is not None:
            cache.reorder(beam[keep])
        if len(finished) == nb:  # HF's stopping heuristic, checked only once the pool is full
            L = max_new_tokens if early_stopping == 'never' and length_penalty > 0 else n
            improvable = improvable and (scores[0] / L ** length_penalty).item() > finished[-1][0]
        if not improvable or (early_stopping is True and len(finished) == nb):
            break
    return finished[0][1][None]
