"""
Speculative decoding of one prompt at a time (Leviathan et al. 2023, "Fast Inference from Transformers via
Speculative Decoding"; Chen et al. 2023, "Accelerating Large Language Model Decoding with Speculative Sampling"):
something cheap drafts k tokens, the target model scores all of them in one forward pass over its KV cache, and
the drafts it agrees with are kept, with one token of its own after them. At batch 1 a step of a model is mostly
reading its weights (or, for small models, Python), which costs about the same for k + 1 tokens as for one, so
every accepted draft is a token for a fraction of a step.

    from gpt.speculative import Speculative, ModelDrafter, PromptLookup
    spec = Speculative(model, ModelDrafter(draft_model), draft_tokens=4)      # or PromptLookup(3): no second model
    for token in spec.stream(prompt_ids, 200, SamplingParams(temperature=0)): ...
    spec.stats.acceptance, spec.stats.tokens_per_pass

The drafters: ModelDrafter, a smaller model of the same tokenizer with its own KV cache; PromptLookup (Saxena's
prompt lookup decoding, transformers' prompt_lookup_num_tokens), the continuation of the latest earlier occurrence
of the context's last n-gram, which costs no model at all and pays on text that repeats itself; LookupThenDraft,
the lookup where the whole n-gram matched, else the model.

Exactness, the rule of both papers: greedy (temperature 0) keeps a draft while it is the target's argmax, and then
takes the argmax: the tokens of plain greedy decoding. Sampling keeps draft x with probability min(1, p(x) / q(x))
(p: the target's distribution, q: the drafter's, both after the same filters sample_next applies: repetition
penalty, temperature, top-k, top-p, min-p), samples from norm(max(0, p - q)) at the first rejection, and from p
after all k were kept: each token is distributed as plain sampling's (a prompt-lookup draft is a point mass,
q(x) = 1). The random draws differ from plain sampling's, so a seed gives other (equally likely) text.

The target's KV cache (kvcache.py) holds every kept token but the newest, whose logits are not computed yet; a
pass feeds that token and the k drafts (k + 1 logits), and a rejection rolls the cache back to the kept length with
set_lengths (the keys past it are overwritten as the row grows, and no query reads them). Near the end of the
context fewer tokens are drafted, and past it every token recomputes the last block_size tokens, as Engine does.
tests/test_speculative.py checks greedy token for token against plain decoding and the sampling rule against its
definition.
"""

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from gpt.kvcache import KVCache
from gpt.sampling import SamplingParams, apply_min_p, apply_repetition_penalty, apply_top_k, apply_top_p


# ----------------------------------------------------------------------------- the rule

def filtered_probs(logits, prev, params):
    """The distribution sample_next draws from, one row per position: logits (n, V); prev: (n, T) earlier tokens
    for the repetition penalty (each row its own), or None. Greedy (temperature 0): None (the argmax decides)."""
    if params.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, prev, params.repetition_penalty)
    if params.temperature == 0:
        return None
    logits = logits / params.temperature
    logits = apply_top_k(logits, params.top_k)
    logits = apply_top_p(logits, params.top_p)
    logits = apply_min_p(logits, params.min_p)
    return F.softmax(logits, dim=-1)


def greedy_tokens(logits, prev, params):
    """The argmax sample_next would take at each position (after the repetition penalty, as it does)."""
    if params.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, prev, params.repetition_penalty)
    return logits.argmax(dim=-1)


def accept(p, q, drafts, generator=None):
    """The accept/reject rule on one pass: p (k + 1, V), the target's distributions after the context and after
    each draft; q (k, V), the drafter's for each draft, or None where a draft was proposed without sampling (a
    point mass: q(draft) = 1); drafts: k token ids. Returns (kept, token): how many drafts are kept, and the token
    after them (sampled from norm(max(0, p - q)) at the first rejection, from p after all k)."""
    k = len(drafts)
    if k:
        d = torch.tensor(drafts, device=p.device)
        rows = torch.arange(k, device=p.device)
        ratio = p[rows, d] / (q[rows, d] if q is not None else 1.0)
        r = torch.rand(k, device=p.device, generator=generator)
        rejected = (r >= ratio).tolist()  # (r in [0, 1): kept with probability min(1, p / q))
        kept = rejected.index(True) if True in rejected else k
    else:
        kept = 0
    dist = p[kept]
    if kept < k:
        if q is not None:
            residual = (dist - q[kept]).clamp_(min=0)
        else:  # (p minus a point mass at the draft: the draft's probability taken away)
            residual = dist.clone()
            residual[drafts[kept]] = 0
        # a rejection means p(x) < q(x) for the draft x, so the residual has mass; rounding aside
        if float(residual.sum()) > 0:
            dist = residual
    token = int(torch.multinomial(dist, 1, generator=generator))
    return kept, token


# ----------------------------------------------------------------------------- drafters

class PromptLookup:
    """Drafts from the context itself: after the latest earlier occurrence of its last n tokens (n = ngram, else
    shorter n-grams down to one token), the tokens that followed. Where that occurrence runs into the end of the
    context, the draft goes on repeating it (a loop of period shorter than k drafts all k). An index of every
    n-gram's latest continuation, grown as tokens are kept, makes a proposal cost O(ngram)."""

    def __init__(self, ngram=3):
        if ngram < 1:
            raise ValueError(f"prompt lookup needs an n-gram of at least 1 token, got {ngram}")
        self.ngram = ngram
        self.reset()

    def reset(self):
        self.index = [{} for _ in range(self.ngram)]  # index[s - 1][s tokens] = where their latest continuation starts
        self.seen = 0
        self.matched = 0  # the length of the n-gram the last proposal matched (0: none)

    def propose(self, tokens, k, params=None, generator=None):
        """Up to k draft tokens after tokens (a list of ids), and None: a draft is a point mass, not a sample."""
        for i in range(max(self.seen, 1), len(tokens)):  # the n-grams ending before each new token
            for s in range(1, min(self.ngram, i) + 1):
                self.index[s - 1][tuple(tokens[i - s:i])] = i
        self.seen = len(tokens)
        n = len(tokens)
        for s in range(min(self.ngram, n), 0, -1):
            start = self.index[s - 1].get(tuple(tokens[n - s:]))
            if start is not None:
                ext = tokens[start:]
                while len(ext) < k:  # (the occurrence overlaps the end: its continuation is periodic)
                    ext = ext + ext[:k - len(ext)]
                self.matched = s
                return ext[:k], None
        self.matched = 0
        return [], None

    def keep(self, n):
        """n tokens of the context are final (nothing to roll back: the index only holds the kept ones)."""


class ModelDrafter:
    """Drafts with a smaller model of the same tokenizer, decoding greedily or sampling with the request's settings
    (q), on its own KV cache of one row. Its cache holds a prefix of the kept tokens; a proposal first feeds what
    it lacks (the newest kept token, or two after a fully accepted pass), then one token per draft. A draft model
    with a shorter context than the target's restarts its cache from the last half of its context when full
    (drafts are only proposals: the rule stays exact whatever q is, as long as q is what they were drawn from).
    decoder: compile_decoder(model) or CUDAGraphDecoder(model) for its one-token steps (on a static cache)."""

    def __init__(self, model, decoder=None):
        self.model, self.decoder = model, decoder
        self.device = model.transformer.wte.weight.device
        self.cache = KVCache(model.config, 1, self.device, model.transformer.wte.weight.dtype,
                             static=decoder is not None)
        self.reset()

    def reset(self):
        self.start, self.valid = 0, 0  # the cache holds tokens[start:valid]
        self.cache.set_lengths([0])

    def check(self, target):
        if self.model.config.vocab_size != target.config.vocab_size:
            raise ValueError(f"the draft model's vocabulary ({self.model.config.vocab_size} tokens) is not the "
                             f"target's ({target.config.vocab_size}): a draft model must share the tokenizer")

    def _feed(self, ids):
        """Feed ids after what the cache holds; the logits of the last one (V,)."""
        x = torch.tensor([ids], device=self.device)
        step = self.decoder if self.decoder is not None and len(ids) == 1 else self.model
        logits = step(x, kv_cache=self.cache)[0][0, -1]
        return logits[:self.model.config.vocab_size].float()

    def propose(self, tokens, k, params, generator=None):
        """k draft tokens after tokens and the draft distributions q (k, V) they were drawn from (None: greedy)."""
        bs, n = self.model.config.block_size, len(tokens)
        k = min(k, bs // 2)
        if n - self.start + k - 1 > bs:  # (its context is full: restart from the last half of it)
            self.start = self.valid = max(0, n - bs // 2)
            self.cache.set_lengths([0])
        feed, drafts, qs = tokens[self.valid:], [], []
        prev = torch.tensor([tokens], device=self.device) if params.repetition_penalty != 1.0 else None
        for i in range(k):
            logits = self._feed(feed)[None]
            self.valid += len(feed)
            q = filtered_probs(logits, prev, params)
            if q is None:
                d = int(greedy_tokens(logits, prev, params))
            else:
                d = int(torch.multinomial(q[0], 1, generator=generator))
                qs.append(q[0])
            drafts.append(d)
            feed = [d]
            if prev is not None:
                prev = torch.cat((prev, prev.new_tensor([[d]])), dim=1)
        return drafts, (torch.stack(qs) if qs else None)

    def keep(self, n):
        """The first n tokens of what the cache holds are the kept ones (the drafts after them were rejected)."""
        if self.valid > n:
            self.valid = n
            self.cache.set_lengths([n - self.start])


class LookupThenDraft:
    """Both drafters (sample.py --draft with --prompt_lookup): where the context's last n tokens occurred before,
    prompt lookup's continuation (free), else the draft model's (a shorter match is left to the model, which
    guesses better than one token of context). Each pass is exact with the q of the drafter that made it. Greedy
    char-level Shakespeare makes ~2.8x the plain decoder's tokens/s this way against ~1.6x with the model alone
    (docs/sampling.md)."""

    def __init__(self, lookup, drafter):
        self.lookup, self.drafter = lookup, drafter

    def check(self, target):
        self.drafter.check(target)

    def reset(self):
        self.lookup.reset()
        self.drafter.reset()

    def propose(self, tokens, k, params, generator=None):
        drafts, q = self.lookup.propose(tokens, k, params, generator)
        if drafts and self.lookup.matched == self.lookup.ngram:
            return drafts, q
        return self.drafter.propose(tokens, k, params, generator)

    def keep(self, n):
        self.lookup.keep(n)
        self.drafter.keep(n)  # (after lookup's passes its cache lags: its next proposal feeds what it lacks)


# ----------------------------------------------------------------------------- the decoder

@dataclass
class Stats:
    """One generation's counts: passes of the target (with drafts, and plain one-token steps), drafts proposed and
    kept, tokens generated."""
    passes: int = 0
    plain: int = 0
    drafted: int = 0
    accepted: int = 0
    tokens: int = 0

    @property
    def acceptance(self):
        """The share of drafts the target kept."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_pass(self):
        """Tokens per forward pass of the target (1 for plain decoding)."""
        return self.tokens / (self.passes + self.plain) if self.passes + self.plain else 0.0

    def add(self, other):
        """Count another generation's passes and tokens too (sample.py: every sample's)."""
        for f in ('passes', 'plain', 'drafted', 'accepted', 'tokens'):
            setattr(self, f, getattr(self, f) + getattr(other, f))

    def report(self):
        return (f"speculative: {self.accepted}/{self.drafted} drafts accepted ({self.acceptance:.1%}), "
                f"{self.tokens_per_pass:.2f} tokens per target pass")


class Speculative:
    """Speculative decoding of one prompt (batch 1) with a drafter (ModelDrafter or PromptLookup). draft_tokens:
    the drafts per pass (k). decoder: the target's compiled or CUDA-graph step (on a static cache), used for the
    passes of k + 1 tokens and the one-token steps; other shapes (the prompt's first pass, shorter drafts near the
    end) run the model itself, so at most two graphs are built."""

    def __init__(self, model, drafter, draft_tokens=4, decoder=None):
        if draft_tokens < 1:
            raise ValueError(f"draft_tokens must be >= 1, got {draft_tokens}")
        if hasattr(drafter, 'check'):
            drafter.check(model)
        self.model, self.drafter, self.k, self.decoder = model, drafter, draft_tokens, decoder
        self.device = model.transformer.wte.weight.device
        self.cache = KVCache(model.config, 1, self.device, model.transformer.wte.weight.dtype,
                             static=decoder is not None)
        self.stats = Stats()

    def _forward(self, ids):
        """Feed ids after what the target's cache holds; their logits (len(ids), V), in float32."""
        x = torch.tensor([ids], device=self.device)
        compiled = self.decoder is not None and len(ids) in (1, self.k + 1) and self.cache.lengths[0] > 0
        step = self.decoder if compiled else self.model
        return step(x, kv_cache=self.cache)[0][0, :, :self.model.config.vocab_size].float()

    @torch.inference_mode()
    def stream(self, prompt, max_new_tokens, params=None, stop_ids=(), generator=None):
        """Yield the new tokens (ints) one at a time: up to max_new_tokens, ending after a stop id. The counts of
        this generation are in self.stats as it goes."""
        params = params or SamplingParams()
        params.check()
        tokens = [int(t) for t in prompt]
        if not tokens:
            raise ValueError("the prompt is empty: give at least one token")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        V, bs = self.model.config.vocab_size, self.model.config.block_size
        if not 0 <= min(tokens) <= max(tokens) < V:
            raise ValueError(f"token id out of range: ids must be in [0, {V})")
        if generator is None and params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        stop_ids = frozenset(stop_ids)
        self.stats = stats = Stats()
        self.cache.set_lengths([0])
        self.drafter.reset()
        fed = 0  # the target's cache holds tokens[:fed]
        made = 0
        while made < max_new_tokens:
            n = len(tokens)
            k = min(self.k, bs - n, max_new_tokens - made - 1)  # (the pass must fit the context and the budget)
            drafts, q = self.drafter.propose(tokens, k, params, generator) if k > 0 else ([], None)
            if n > bs:  # past the context: the last block_size tokens again, at positions 0.. (as Engine does)
                self.cache.set_lengths([0])
                logits = self._forward(tokens[-bs:])[-1:]
                fed = bs
            else:
                logits = self._forward(tokens[fed:] + drafts)[-(len(drafts) + 1):]
                fed = n + len(drafts)
            prev = None
            if params.repetition_penalty != 1.0:  # position i's earlier tokens: the context and drafts[:i]
                seq = tokens + drafts
                prev = torch.tensor([seq[:n + i] + [seq[0]] * (len(drafts) - i) for i in range(len(drafts) + 1)],
                                    device=self.device)  # (padded with a token already counted: the same penalty)
            p = filtered_probs(logits, prev, params)
            if p is None:  # greedy: drafts are kept while they are the argmax
                best = greedy_tokens(logits, prev, params).tolist()
                kept = next((i for i, d in enumerate(drafts) if d != best[i]), len(drafts))
                new = drafts[:kept] + [best[kept]]
            else:
                kept, token = accept(p, q, drafts, generator)
                new = drafts[:kept] + [token]
            if drafts:
                stats.passes += 1
                stats.drafted += len(drafts)
                stats.accepted += kept
            else:
                stats.plain += 1
            if fed > n + kept and n <= bs:  # roll back past the rejected drafts: the cache holds the kept tokens
                fed = n + kept
                self.cache.set_lengths([fed])
            tokens += new
            self.drafter.keep(n + kept)
            for t in new:
                made += 1
                stats.tokens += 1
                yield t
                if t in stop_ids:
                    return


def speculative_generate(model, idx, max_new_tokens, drafter, draft_tokens=4, stop_ids=(), generator=None,
                         decoder=None, **sampling):
    """idx (1, T) extended by up to max_new_tokens tokens (1, T + n), decoded speculatively; sampling:
    SamplingParams' fields. Returns (tokens, stats)."""
    if idx.dim() != 2 or idx.size(0) != 1:
        raise ValueError(f"speculative decoding takes one prompt, a (1, T) tensor; got shape {tuple(idx.shape)}")
    spec = Speculative(model, drafter, draft_tokens, decoder)
    new = list(spec.stream(idx[0].tolist(), max_new_tokens, SamplingParams(**sampling), stop_ids, generator))
    return torch.cat((idx, torch.tensor([new], dtype=idx.dtype, device=idx.device)), dim=1), spec.stats


# ----------------------------------------------------------------------------- the scripts' settings

def check_speculative(draft='', prompt_lookup=0, draft_tokens=4, num_beams=1, use_cache=True):
    """sample.py's speculative settings, before anything loads: one line per mistake. Returns whether they ask for
    speculative decoding."""
    from gpt.errors import UserError
    if prompt_lookup < 0:
        raise UserError(f"prompt_lookup must be >= 0 (the n-gram size; 0 is off), got {prompt_lookup}")
    if not draft and not prompt_lookup:
        return False
    if draft_tokens < 1:
        raise UserError(f"draft_tokens must be >= 1, got {draft_tokens}")
    if num_beams > 1:
        raise UserError("speculative decoding (--draft, --prompt_lookup) decodes one sample at a time without beams: "
                        "drop --num_beams or the drafting")
    if not use_cache:
        raise UserError("speculative decoding needs the KV cache: drop --use_cache=False")
    return True


def tokenizer_key(meta):
    """What decides a tokenizer in a dataset's metadata (gpt/tokendata.get_tokenizer reads it)."""
    meta = meta or {}
    kind = meta.get('tokenizer')
    body = {'char': 'chars', 'bpe': 'tokenizer_json', 'hf': 'name'}.get(kind)
    return kind, meta.get(body) if body else None, sorted((meta.get('added_tokens') or {}).items())


def same_tokenizer(meta, other, vocab_size):
    """Do two models' metadata describe the same tokenizer? The same kind and vocabulary, or (a transformers
    tokenizer, named by its directory) the same text for each of the vocab_size ids."""
    a, b = tokenizer_key(meta), tokenizer_key(other)
    if a == b:
        return True
    if not {a[0], b[0]} <= {'gpt2', 'hf'} or a[2] != b[2]:
        return False
    from gpt.tokendata import get_tokenizer
    first, second = get_tokenizer(meta)[1], get_tokenizer(other)[1]
    return all(first([i]) == second([i]) for i in range(vocab_size))


def load_drafter(draft, target, meta, device, dtype, quantize='none', compile=False, cuda_graph=False):
    """The draft model of --draft (a run's out_dir, a hub name or an HF directory), set up for one-row decoding as
    the target was (gpt/decoding.py), as a ModelDrafter; one line if it does not share the target's tokenizer."""
    from gpt.decoding import load_for_decoding
    from gpt.errors import UserError
    d = load_for_decoding(draft, device=device, dtype=dtype, quantize=quantize, rows=1, compile=compile,
                          cuda_graph=cuda_graph)
    V = target.config.vocab_size
    if d.model.config.vocab_size != V or not same_tokenizer(meta, d.meta, V):
        raise UserError(f"the draft model {draft!r} does not use the target's tokenizer ({d.model.config.vocab_size} "
                        f"tokens, {tokenizer_key(d.meta)[0]}; the target: {V}, {tokenizer_key(meta)[0]}): "
                        f"draft with a model trained on the same tokens, or with --prompt_lookup")
    return ModelDrafter(d.model, d.decoder)
