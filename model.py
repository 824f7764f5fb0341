"""
The GPT network: GPT-1, the four GPT-2 sizes, the GPT-3 table, and small CPU models. Only the model:
loading OpenAI's weights and exporting to transformers live in gpt/hf.py, decoding in gpt/engine.py, the KV
cache and its attention policy in gpt/kvcache.py, checkpoints in gpt/checkpoint.py, the optimizer in gpt/optim.py.
Only torch is imported here.

    from model import GPT, GPTConfig
    model = GPT.from_preset('gpt2')                    # 124M, random init
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65))
    logits, loss = model(idx, targets)                 # targets == -1 are ignored
    python model.py                                    # the preset table with parameter counts

State-dict names follow Hugging Face GPT-2 (transformer.wte, transformer.h.N.attn.c_attn, ...),
so gpt/hf.py's import/export is a transpose of the Conv1D weights and a copy.

References: GPT-1 (Radford et al. 2018), GPT-2 (Radford et al. 2019), GPT-3 (Brown et al. 2020),
and nanoGPT / Hugging Face transformers for the code layout.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.utils.checkpoint
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024      # context length (max positions)
    vocab_size: int = 50257     # real vocabulary size (what the tokenizer produces)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_inner: int = 0            # MLP hidden width; 0 means 4 * n_embd (d_ff = 4 d_model in all papers)
    dropout: float = 0.0        # on embeddings, attention weights and residual branches
    bias: bool = True           # biases in Linear and LayerNorm (GPT-2: True; False is a bit faster)
    post_norm: bool = False     # GPT-1 / original transformer: LayerNorm after each residual add, no final LN
    gelu_approx: str = 'tanh'   # 'tanh' (GPT-1 and GPT-2 both use it; HF: gelu_new) or 'none' (exact erf GELU)
    layer_norm_eps: float = 1e-5
    pad_vocab_multiple: int = 1  # embedding rows padded up to a multiple of this (64 is faster on GPUs)
    attn_impl: str = 'sdpa'     # 'sdpa' (flash/memory-efficient kernels) or 'explicit' (masked softmax)
    attn_pattern: str = 'dense'  # 'dense', 'local' (every layer banded), 'alternating' (GPT-3: dense, local, ...)
    attn_window: int = 0        # local layers: a query sees itself and the attn_window - 1 keys before it
    tie_embeddings: bool = True  # lm_head shares wte's weights (all GPTs); False: its own matrix (Image GPT)
    zero_init_head: bool = False  # Image GPT: the logit projection starts at zero (needs untied embeddings)
    # options from modded-nanogpt / nanochat (config/train_shakespeare_char_speedrun.py measures them); the
    # defaults are GPT-2's architecture, and each option left at its default leaves the model bit-identical
    pos_emb: str = 'learned'    # 'learned' (GPT-2's position table) or 'rope' (rotary, Su et al. 2021; no table)
    rope_base: float = 10000.0  # rotary: the wavelength base, frequencies base^(-2i/head_dim)
    qk_norm: bool = False       # LayerNorm (no gain or bias) on each head's queries and keys before the scores
    mlp_act: str = 'gelu'       # 'gelu' (see gelu_approx) or 'relu2': relu(x)^2 (Primer, So et al. 2021)

    def __post_init__(self):
        def need(ok, msg):
            if not ok:
                raise ValueError(f"GPTConfig: {msg}")
        for name in ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd', 'pad_vocab_multiple'):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.n_embd % self.n_head == 0,
             f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.gelu_approx in ('tanh', 'none'), f"gelu_approx must be 'tanh' or 'none', got {self.gelu_approx!r}")
        need(self.attn_impl in ('sdpa', 'explicit'), f"attn_impl must be 'sdpa' or 'explicit', got {self.attn_impl!r}")
        need(not (self.zero_init_head and self.tie_embeddings),
             "zero_init_head needs tie_embeddings=False (tied, it would zero the token embeddings too)")
        need(self.pos_emb in ('learned', 'rope'), f"pos_emb must be 'learned' or 'rope', got {self.pos_emb!r}")
        need(self.pos_emb == 'learned' or (self.n_embd // self.n_head) % 2 == 0,
             f"rotary embeddings rotate pairs of a head's dimensions: head size {self.n_embd // self.n_head} is odd")
        need(self.rope_base > 1, f"rope_base must be > 1, got {self.rope_base}")
        need(self.mlp_act in ('gelu', 'relu2'), f"mlp_act must be 'gelu' or 'relu2', got {self.mlp_act!r}")
        need(self.attn_pattern in ('dense', 'local', 'alternating'),
             f"attn_pattern must be 'dense', 'local' or 'alternating', got {self.attn_pattern!r}")
        need((self.attn_pattern == 'dense') == (self.attn_window == 0) and self.attn_window >= 0,
             f"attn_pattern {self.attn_pattern!r} with attn_window {self.attn_window}: local and alternating "
             f"patterns need attn_window >= 1, dense needs 0")

    def is_local(self, layer):
        """Does this layer attend to a local band (GPT-3 alternates: even layers dense, odd ones local)?"""
        return self.attn_pattern == 'local' or (self.attn_pattern == 'alternating' and layer % 2 == 1)

    @property
    def padded_vocab_size(self):
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def d_ff(self):
        return self.n_inner or 4 * self.n_embd


# Named architectures. Parameter counts (python model.py) match the papers' tables:
# GPT-1 117M; GPT-2 124M/350M/774M/1558M (the paper's 117M/345M/762M/1542M were miscounted,
# the released checkpoints have these sizes); GPT-3 Table 2.1 125M ... 175B.
PRESETS = {
    'gpt1':        dict(n_layer=12, n_head=12, n_embd=768, block_size=512, vocab_size=40478,
                        post_norm=True),
    'gpt2':        dict(n_layer=12, n_head=12, n_embd=768),
    'gpt2-medium': dict(n_layer=24, n_head=16, n_embd=1024),
    'gpt2-large':  dict(n_layer=36, n_head=20, n_embd=1280),
    'gpt2-xl':     dict(n_layer=48, n_head=25, n_embd=1600),
    # GPT-3 (Brown et al. 2020, Table 2.1): context 2048, GPT-2 tokenizer. Two rows of the table
    # are inconsistent: XL lists 24 heads of 128 for d_model=2048 (we use 16 heads of 128), and 13B
    # lists d_model=5140, which 40 heads of 128 cannot make (we use 5120). Head count does not
    # change the parameter count. GPT-3 alternates dense and banded layers; these presets are all dense.
    'gpt3-small':  dict(n_layer=12, n_head=12, n_embd=768, block_size=2048),
    'gpt3-medium': dict(n_layer=24, n_head=16, n_embd=1024, block_size=2048),
    'gpt3-large':  dict(n_layer=24, n_head=16, n_embd=1536, block_size=2048),
    'gpt3-xl':     dict(n_layer=24, n_head=16, n_embd=2048, block_size=2048),
    'gpt3-2.7b':   dict(n_layer=32, n_head=32, n_embd=2560, block_size=2048),
    'gpt3-6.7b':   dict(n_layer=32, n_head=32, n_embd=4096, block_size=2048),
    'gpt3-13b':    dict(n_layer=40, n_head=40, n_embd=5120, block_size=2048),
    'gpt3-175b':   dict(n_layer=96, n_head=96, n_embd=12288, block_size=2048),
    # small models for CPU work, as config/train_shakespeare_char*.py train them (character-level Shakespeare
    # has a 65-symbol vocabulary; exact GELU: PyTorch's CPU kernel for it is several times faster than the tanh one)
    'baby':        dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.2, gelu_approx='none'),
    'baby-mini':   dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, gelu_approx='none'),
}

class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper mask on the CPU, where PyTorch's bernoulli draws one 32-bit random number
    per element, a large part of a training step of the small CPU models with dropout. Here each draw gives
    two 16-bit uniforms, so p is rounded to a multiple of 1/65536 (0.2 -> 0.199997) and the mask costs about
    half; compiled, it also beats inductor's own CPU dropout. `python bench.py --model=baby --dropout=0.2`
    and `--dropout=0` time a step with and without it. GPUs keep nn.Dropout (fused Philox kernels).
    Seeded by torch.manual_seed."""

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x  # (as nn.Dropout, without its call: decoding runs this twice per layer per token)
        if self.p >= 1.0 or self.inplace or x.device.type != 'cpu':
            return super().forward(x)
        n = x.numel()
        # 2**32 - 1 values: uniform 32-bit words but for one value in four billion
        bits = torch.randint(-2**31, 2**31 - 1, ((n + 1) // 2,), dtype=torch.int32)
        keep = self.keep(bits.view(torch.int16)[:n].view(x.shape), self.p)
        return x * keep * (1.0 / (1.0 - self.p))

    @staticmethod
    def keep(bits, p):
        """Which elements survive, from uniform int16 values: exactly 65536 - round(p * 65536) of the 65536."""
        return bits >= round(p * 65536) - 32768


def cpu_training_avoids_sdpa(dtype, dropout_p):
    """On the CPU, training takes the explicit attention path in two cases: PyTorch's flash-attention
    backward is slow in bfloat16 (forward+backward 2-3x the masked softmax's in torch 2.13), and with
    dropout SDPA falls back to its math kernel with the slow bernoulli mask. Inference keeps SDPA, whose
    forward is the fast one. tests/test_model.py checks that both paths compute the same attention."""
    return dtype == torch.bfloat16 or dropout_p > 0


def rotary(x, cis):
    """Rotary position embedding (RoFormer, Su et al. 2021) as Meta's LLaMA code applies it: dimensions
    (2i, 2i+1) of a head are a complex number, multiplied by cis = exp(1j * position * base^(-2i/head_dim)),
    i.e. rotated by that angle. A query at position p and a key at position s then score by a function of q, k
    and p - s alone. One complex multiply instead of the half-split form's six elementwise passes (measured
    ~2.5x cheaper forward + backward on a CPU). x: (B, H, T, head_dim); cis: (T, head_dim/2) complex64."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (complex bf16 does not exist: via fp32)
    return torch.view_as_real(xc * cis).flatten(-2).to(x.dtype)


def rotary_angles(config, positions):
    """exp(1j * angle) for the given positions: (T,) -> (T, head_dim/2), or one row per sequence
    (B, T) -> (B, 1, T, head_dim/2) (a KV cache's rows of different lengths), complex64."""
    hs = config.n_embd // config.n_head
    inv_freq = config.rope_base ** -(torch.arange(0, hs, 2, device=positions.device, dtype=torch.float32) / hs)
    angles = positions.float()[..., None] * inv_freq
    cis = torch.polar(torch.ones_like(angles), angles)
    return cis if positions.dim() == 1 else cis[:, None]


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.attn_impl = config.attn_impl
        self.qk_norm = config.qk_norm
        self.window = config.attn_window if config.is_local(layer_idx) else 0  # 0: dense
        # q, k, v projections for all heads in one matmul (HF name: c_attn)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = Dropout(config.dropout)
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x, kv_cache=None, rope=None):
        B, T, C = x.size()
        hs = C // self.n_head
        # (B, T, 3C) -> three (B, nh, T, hs) views, in three ops (split + view + transpose each take nine)
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, hs).permute(2, 0, 3, 1, 4).unbind(0)
        if self.qk_norm:  # bounded scores however the weights grow (ViT-22B's QK-LayerNorm; modded-nanogpt: RMS)
            q, k = F.layer_norm(q, (hs,)), F.layer_norm(k, (hs,))  # (one fused CPU kernel; rms_norm is several)
        if rope is not None:  # rotated before caching: a cached key keeps its own position's rotation
            q, k = rotary(q, rope), rotary(k, rope)
        if kv_cache is not None:  # the cache decides which keys the new queries see (gpt/kvcache.py)
            k, v, mask, is_causal = kv_cache.update(self.layer_idx, k, v)
        elif self.window and T > 2 * self.window:  # long sequence: O(T * window), not O(T^2)
            q, k, v, mask = self.to_blocks(q, k, v)
            is_causal = False
        elif self.window:  # a local layer: query at position p sees keys p - window + 1 .. p
            pos = torch.arange(T, device=x.device)
            mask, is_causal = (pos <= pos[:, None]) & (pos > pos[:, None] - self.window), False
        else:
            mask, is_causal = None, True
        dropout_p = self.dropout if self.training else 0.0
        use_sdpa = self.attn_impl == 'sdpa'
        if (use_sdpa and q.device.type == 'cpu' and torch.is_grad_enabled()
                and cpu_training_avoids_sdpa(q.dtype, dropout_p)):
            use_sdpa = False
        if use_sdpa:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        else:
            # explicit masked softmax: same maths, for inspection and for devices without SDPA
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
            if is_causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            if mask is not None:
                att = att.masked_fill(~mask, float('-inf'))
            y = self.attn_dropout(F.softmax(att, dim=-1)) @ v
        if y.dim() == 5:  # (blocks of queries: back to one sequence)
            y = y.reshape(B, self.n_head, -1, hs)[:, :, :T]
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def to_blocks(self, q, k, v):
        """Banded attention in blocks: queries in blocks of `window` positions, each attending to its own
        block's keys and the previous block's, (B, H, blocks, window, 2 * window) scores in all instead of
        (B, H, T, T). Query j of block i (position i*W + j) may see key m of its pair of blocks (position
        (i-1)*W + m) when j < m <= j + W; block 0 has no previous block. The sequence is padded to whole
        blocks; padded keys come after every real query, so causality masks them."""
        B, H, T, hs = q.shape
        W = self.window
        n = -(-T // W)
        q, k, v = (F.pad(t, (0, 0, 0, n * W - T)).view(B, H, n, W, hs) for t in (q, k, v))
        k, v = (torch.cat((F.pad(t, (0, 0, 0, 0, 1, 0))[:, :, :-1], t), dim=3) for t in (k, v))
        j, m = torch.arange(W, device=q.device)[:, None], torch.arange(2 * W, device=q.device)[None]
        mask = ((m > j) & (m <= j + W)).expand(n, W, 2 * W).clone()
        mask[0, :, :W] = False
        return q, k, v, mask


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.d_ff, bias=config.bias)
        self.gelu = nn.GELU(approximate=config.gelu_approx) if config.mlp_act == 'gelu' else ReLU2()
        self.c_proj = nn.Linear(config.d_ff, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class ReLU2(nn.Module):
    """relu(x)^2 (Primer; modded-nanogpt's MLP): sparse, and cheaper than GELU on a CPU."""

    def forward(self, x):
        return F.relu(x).square()


class Block(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.post_norm = config.post_norm
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, rope=None):
        if self.post_norm:  # GPT-1: x = LN(x + f(x))
            x = self.ln_1(x + self.attn(x, kv_cache, rope))
            return self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x), kv_cache, rope)  # GPT-2: x = x + f(LN(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        V = config.padded_vocab_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(V, config.n_embd),
            **({'wpe': nn.Embedding(config.block_size, config.n_embd)} if config.pos_emb == 'learned' else {}),
            drop=Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        ))
        if not config.post_norm:  # pre-norm needs a final LayerNorm; GPT-1 has none
            self.transformer.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, V, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # weight tying (GPT-1, GPT-2, GPT-3)
        self.apply(self._init_weights)
        # GPT-2: scale the init of residual output projections by 1/sqrt(2 * n_layer), since each layer
        # adds two such branches to the residual stream. GPT-1 (post-norm) keeps its paper's plain
        # N(0, 0.02): the LayerNorm after each add rescales the stream anyway.
        for name, p in self.named_parameters():
            if name.endswith('c_proj.weight') and not config.post_norm:
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        # activation checkpointing (train.py --grad_checkpoint): each block's activations are recomputed in the
        # backward pass instead of kept, so training holds one block's activations at a time, for ~1/3 more compute
        self.grad_checkpoint = False
        if config.zero_init_head:
            # Image GPT (its wtet): every logit starts at 0, so the first prediction is uniform over the
            # palette; the gradient of the logits still reaches the head, which then learns
            torch.nn.init.zeros_(self.lm_head.weight)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        # LayerNorm keeps PyTorch's default: weight 1, bias 0

    def num_params(self, non_embedding=False):
        """Parameters (tied wte/lm_head counted once). non_embedding drops the position table,
        the convention for N in scaling laws (token embeddings are reused as the output layer)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and 'wpe' in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx, targets=None, kv_cache=None, return_hidden=False, logits_at=None):
        """idx: (B, T) token ids. Returns (logits, loss); loss is None without targets. Targets equal
        to -1 are ignored. Logits cover the padded vocabulary. return_hidden=True also returns the final
        hidden states (B, T, n_embd), after the last LayerNorm: what task, reward and value heads read.
        With kv_cache, the keys and values of idx are appended to the cache and attend to what it holds.
        logits_at: a (B, T) bool mask; the logits are then those of the masked positions only, (n, vocab):
        scoring reads a few positions, and the head over every position can cost more than the blocks."""
        B, T = idx.size()
        # where the new tokens sit: after what the cache holds (an int shared by every row, or one row each)
        pos = kv_cache.positions(T) if kv_cache is not None else 0
        if kv_cache is None and T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than the model's context "
                             f"(block_size={self.config.block_size}); crop it or use a longer-context model")
        # A clear message instead of an index error. Skipped on CUDA, where checking would force a
        # host sync every step (the data loader checks token ids there), and under torch.compile.
        if idx.device.type != 'cuda' and not torch.compiler.is_compiling() and idx.numel():
            low, high = torch.aminmax(idx)  # (one op and one read: this runs for every decoded token)
            if int(low) < 0 or int(high) >= self.config.vocab_size:
                raise ValueError(f"token id out of range: ids must be in [0, {self.config.vocab_size}), "
                                 f"got min {int(low)}, max {int(high)}")
        x = self.transformer.wte(idx)
        rope = None
        if self.config.pos_emb == 'learned':
            # (narrow: rows pos..pos+T-1, as wpe(arange) reads, in one op)
            x = x + (self.transformer.wpe.weight.narrow(0, pos, T) if isinstance(pos, int) else self.transformer.wpe(pos))
        else:
            rope = rotary_angles(self.config, torch.arange(pos, pos + T, device=idx.device) if isinstance(pos, int) else pos)
        x = self.transformer.drop(x)
        checkpointed = self.grad_checkpoint and self.training and torch.is_grad_enabled() and kv_cache is None
        for block in self.transformer.h:
            if checkpointed:  # non-reentrant: works under torch.compile, DDP and FSDP, and keeps dropout's RNG
                x = torch.utils.checkpoint.checkpoint(block, x, None, rope, use_reentrant=False)
            else:
                x = block(x, kv_cache, rope)
        if kv_cache is not None:
            kv_cache.advance(T)
        if not self.config.post_norm:
            x = self.transformer.ln_f(x)
        logits = self.lm_head(x if logits_at is None else x[logits_at])
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)
        return (logits, loss, x) if return_hidden else (logits, loss)

    @classmethod
    def from_preset(cls, name, **overrides):
        """A randomly initialised model of a named architecture (see PRESETS)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls(GPTConfig(**{**PRESETS[name], **overrides}))

    def crop_block_size(self, block_size):
        """The one rule for running a model at another context: a shorter one keeps the first block_size
        positions (e.g. GPT-2's 1024 cut down for small-memory finetuning); a longer one is refused, since
        learned positions beyond the table do not exist."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot use block_size={block_size}: the model has only "
                             f"{self.config.block_size} positions")
        if block_size < self.config.block_size:
            self.config.block_size = block_size
            if 'wpe' in self.transformer:  # (rotary: nothing stored per position)
                self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    # ------------------------------------------------------------------ training helpers

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token (forward + backward), PaLM appendix B:
        6N for the weight matmuls plus 12 * L * H * Q * T for attention scores and values
        (L layers, H heads, Q head size, T sequence length; a local layer's T is at most its window).
        N excludes position embeddings."""
        c = self.config
        T = seq_len or c.block_size
        attended = sum(min(T, c.attn_window) if c.is_local(i) else T for i in range(c.n_layer))
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_head * (c.n_embd // c.n_head) * attended

    def estimate_mfu(self, tokens_per_iter, dt, peak_flops, seq_len=None):
        """Model FLOPs utilisation: achieved training FLOP/s as a fraction of peak_flops (FLOP/s)."""
        return self.flops_per_token(seq_len) * tokens_per_iter / dt / peak_flops


if __name__ == '__main__':
    print(f"{'preset':<12} {'layers':>6} {'width':>6} {'heads':>5} {'context':>7} {'params':>12}")
    for name in PRESETS:
        with torch.device('meta'):  # (counted without memory)
            c = (m := GPT.from_preset(name)).config
        print(f"{name:<12} {c.n_layer:>6} {c.n_embd:>6} {c.n_head:>5} {c.block_size:>7} {m.num_params() / 1e6:>11.1f}M")
