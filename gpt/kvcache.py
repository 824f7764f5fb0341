"""
The key/value cache for incremental decoding, and its policy: which keys a new query sees. model.py's attention
asks it one question per layer, `k, v, mask, is_causal = cache.update(layer, k, v)`, and the model reads the
positions of the new tokens from `cache.positions(T)`; nothing else in the network knows about caching.

    from gpt.kvcache import KVCache
    cache = KVCache(model.config, batch_size=4, device='cpu', dtype=torch.float32)
    logits, _ = model(prompt, kv_cache=cache)          # prefill: (4, T)
    logits, _ = model(next_tokens, kv_cache=cache)     # then one token per row at a time

Every row has its own length (`cache.lengths`, and `cache.pos` on the device), so rows of different lengths
decode in one batch: a ragged batch is prefilled right-padded (every prompt starts at position 0 and its padding
comes after it, where causal attention hides it), then `set_lengths` forgets the padding, and each row writes its
next key at its own length. Rows are slots: engine.Engine fills a free slot with a new prompt (`select` runs the
model on some rows only), and a finished row's slot is reused (`move_row`), so batches change without copying
the cache; a new prompt that starts as another row did starts from a copy of that row's keys (`copy_prefix`).

The policy, in one place (`update`):
- rows of equal length (the common case: one prompt, or samples of one prompt) read a narrowed view of the
  filled keys, with no mask for a one-token step: exactly the attention of an uncached forward pass;
- rows of different lengths read up to the longest row under a mask of each row's own keys;
- local (banded) layers see the last `attn_window` keys, by a narrower view or the mask;
- static=True: the whole buffer under a mask, with positions only on the device, so every one-token step has the
  same shapes and no Python number changes: a compiled or CUDA-graph-captured step (fastpath.py) is built once.

One tensor per layer, not one for all: torch.compile then updates each in place (writes into slices of a shared
tensor made inductor copy the whole cache at every step).
"""

import torch


def row_bytes(config, dtype):
    """The bytes one row of a KVCache holds: keys and values of every layer for the whole context."""
    return 2 * config.n_layer * config.block_size * config.n_embd * torch.empty((), dtype=dtype).element_size()


def rows_within(config, dtype, budget_bytes, most):
    """The most rows, up to `most` (at least one), whose KVCache fits in budget_bytes."""
    return max(1, min(most, int(budget_bytes // row_bytes(config, dtype))))


class KVCache:

    def __init__(self, config, batch_size, device, dtype, static=False, length=None):
        self.length = length or config.block_size  # positions each row can hold
        if self.length > config.block_size:
            raise ValueError(f"a cache of {self.length} positions is longer than the model's context "
                             f"(block_size={config.block_size})")
        shape = (batch_size, config.n_head, self.length, config.n_embd // config.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.window = [config.attn_window if config.is_local(i) else 0 for i in range(config.n_layer)]
        self.block_size = config.block_size
        self.static = static
        self.pos = torch.zeros(batch_size, dtype=torch.long, device=device)  # each row's length, on the device
        self.lengths = [0] * batch_size  # the same on the host, so eager steps never read the device
        self.rows = (0, batch_size)      # the slots the next forward pass runs on (select)
        # advance() counts the host's lengths too; fastpath.CompiledDecoder turns this off and counts them itself
        # (count), since a compiled step would guard on every length (CUDAGraphDecoder counts after each replay)
        self.host_counts = True

    @property
    def batch_size(self):
        return self.pos.size(0)

    def select(self, start, count):
        """Run the next forward passes on slots start .. start + count - 1 only."""
        if not 0 <= start <= start + count <= self.batch_size:
            raise ValueError(f"rows {start}..{start + count - 1} are outside a cache of {self.batch_size} rows")
        self.rows = (start, count)
        return self

    def _active(self, t):
        return t.narrow(0, *self.rows)

    def _uniform(self):
        """The common length of the active rows, or None if they differ (or only the device knows it)."""
        if self.static:
            return None
        start, count = self.rows
        first = self.lengths[start]
        return first if all(n == first for n in self.lengths[start:start + count]) else None

    def positions(self, T):
        """Positions of T new tokens per active row: an int when all rows share it (the model then reads its
        position table by a cheap narrow), else a (rows, T) tensor."""
        start, count = self.rows
        if not self.static:
            longest = max(self.lengths[start:start + count], default=0)
            if longest + T > self.length:
                raise ValueError(f"sequence of length {longest + T} is longer than the model's context "
                                 f"(block_size={self.block_size}); crop it or use a longer-context model")
        uniform = self._uniform()
        if uniform is not None:
            return uniform
        return self._active(self.pos)[:, None] + torch.arange(T, device=self.pos.device)

    def update(self, layer, k, v):
        """Store the new keys/values (rows, H, T, hs) of one layer; return the keys and values the new queries
        attend to, with the mask (True = may attend) or is_causal for scaled_dot_product_attention."""
        cache_k, cache_v = self._active(self.k[layer]), self._active(self.v[layer])
        T, window = k.size(2), self.window[layer]
        past = self._uniform()
        if past is not None:  # (narrow: one op where [:, :, a:b] takes three, per token and layer)
            cache_k.narrow(2, past, T).copy_(k)
            cache_v.narrow(2, past, T).copy_(v)
            first = max(0, past + 1 - window) if window and T == 1 else 0
            k, v = cache_k.narrow(2, first, past + T - first), cache_v.narrow(2, first, past + T - first)
            if T == 1:
                return k, v, None, False          # one new token sees every key it holds
            if past == 0 and not window:
                return k, v, None, True           # plain causal attention
            q_pos = past + torch.arange(T, device=k.device)[:, None]
            k_pos = torch.arange(past + T, device=k.device)
        else:
            pos = self._active(self.pos)
            q_pos = pos[:, None] + torch.arange(T, device=k.device)  # (rows, T)
            where = q_pos[:, None, :, None].expand(-1, k.size(1), -1, k.size(3))
            cache_k.scatter_(2, where, k.to(cache_k.dtype))  # (under autocast k is bf16: cast, as copy_ does)
            cache_v.scatter_(2, where, v.to(cache_v.dtype))
            span = self.length if self.static else max(self.lengths[self.rows[0]:sum(self.rows)]) + T
            k, v = cache_k.narrow(2, 0, span), cache_v.narrow(2, 0, span)
            q_pos = q_pos[:, None, :, None]  # (rows, 1, T, 1) against keys (span,): a mask per row
            k_pos = torch.arange(span, device=k.device)
        mask = k_pos <= q_pos  # a row's keys beyond its own length are another occupant's or padding: hidden
        if window:
            mask = mask & (k_pos > q_pos - window)
        return k, v, mask, False

    def advance(self, T):
        """The active rows took T more positions (the model calls this after its forward pass)."""
        self._active(self.pos).add_(T)
        if self.host_counts:
            self.count(T)

    def count(self, T):
        """The host's copy of the active rows' lengths grows by T (a static cache's shapes never read it; the
        engine does)."""
        start, count = self.rows
        for i in range(start, start + count):
            self.lengths[i] += T

    def set_lengths(self, lengths):
        """After a right-padded prefill of the active rows: row i holds lengths[i] real positions (the rest is
        padding, overwritten as the row grows)."""
        start, count = self.rows
        self._active(self.pos).copy_(torch.as_tensor(lengths, dtype=torch.long))
        self.lengths[start:start + count] = list(lengths)

    def move_row(self, src, dst):
        """Copy slot src into slot dst (keys, values, length): a batch closes the gap a finished row left."""
        n = self.length if self.static else self.lengths[src]
        for buf in self.k + self.v:
            buf[dst, :, :n] = buf[src, :, :n]
        self.pos[dst] = self.pos[src]
        self.lengths[dst] = self.lengths[src]

    def copy_prefix(self, src, dst, n):
        """Copy the first n positions of slot src's keys and values into slot dst, which then holds n (the engine's
        prefix reuse: a new request starts from another row's keys)."""
        for buf in self.k + self.v:
            buf[dst, :, :n] = buf[src, :, :n]
        self.pos[dst] = n
        self.lengths[dst] = n

    def swap_rows(self, a, b):
        """Exchange slots a and b (keys, values, lengths)."""
        n = self.length if self.static else max(self.lengths[a], self.lengths[b])
        for buf in self.k + self.v:
            buf[[a, b], :, :n] = buf[[b, a], :, :n]  # (the right side is a copy: an index gathers)
        self.pos[[a, b]] = self.pos[[b, a]]
        self.lengths[a], self.lengths[b] = self.lengths[b], self.lengths[a]

    def reorder(self, index):
        """Keep the rows at index (beam search: the cache rows of the surviving beams), in that order."""
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]
        self.pos = self.pos.index_select(0, index)
        self.lengths = [self.lengths[i] for i in index.tolist()]
        self.rows = (0, len(self.lengths))
