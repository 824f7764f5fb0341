"""
The GPT family in one file: GPT-1, the four GPT-2 sizes, the GPT-3 table, and small CPU models.

    from model import GPT
    model = GPT.from_preset('gpt2')                    # 124M, random init
    model = GPT.from_pretrained('gpt2')                # OpenAI's weights, via transformers
    model = GPT.from_pretrained('path/to/hf_dir')      # any directory written by save_pretrained
    model.save_pretrained('out/hf')                    # transformers.AutoModelForCausalLM can load it
    python model.py                                    # the preset table with parameter counts

State-dict names follow Hugging Face GPT-2 (transformer.wte, transformer.h.N.attn.c_attn, ...),
so import/export is a transpose of the Conv1D weights and a copy. Only torch is imported here;
transformers and safetensors are imported inside the functions that need them.

References: GPT-1 (Radford et al. 2018), GPT-2 (Radford et al. 2019), GPT-3 (Brown et al. 2020),
and nanoGPT / Hugging Face transformers for the code layout.
"""

import inspect
import json
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
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
    # change the parameter count.
    # GPT-3 alternates dense and locally banded sparse attention; these presets are all dense.
    'gpt3-small':  dict(n_layer=12, n_head=12, n_embd=768, block_size=2048),
    'gpt3-medium': dict(n_layer=24, n_head=16, n_embd=1024, block_size=2048),
    'gpt3-large':  dict(n_layer=24, n_head=16, n_embd=1536, block_size=2048),
    'gpt3-xl':     dict(n_layer=24, n_head=16, n_embd=2048, block_size=2048),
    'gpt3-2.7b':   dict(n_layer=32, n_head=32, n_embd=2560, block_size=2048),
    'gpt3-6.7b':   dict(n_layer=32, n_head=32, n_embd=4096, block_size=2048),
    'gpt3-13b':    dict(n_layer=40, n_head=40, n_embd=5120, block_size=2048),
    'gpt3-175b':   dict(n_layer=96, n_head=96, n_embd=12288, block_size=2048),
    # small models for CPU work, as config/train_shakespeare_char*.py train them (character-level Shakespeare
    # has a 65-symbol vocabulary; exact GELU: PyTorch's CPU kernel for it is ~4x faster than the tanh one)
    'baby':        dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.2, gelu_approx='none'),
    'baby-mini':   dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, gelu_approx='none'),
}

# Hugging Face names of OpenAI's released checkpoints, and the preset each corresponds to.
HF_HUB_MODELS = {'gpt2': 'gpt2', 'gpt2-medium': 'gpt2-medium', 'gpt2-large': 'gpt2-large',
                 'gpt2-xl': 'gpt2-xl', 'openai-gpt': 'gpt1'}


class KVCache:
    """Preallocated keys/values for incremental decoding: per layer, (B, n_head, block_size, head_dim).

    `pos` is the number of positions already filled; every layer appends at the same offset. One tensor
    per layer, not one for all: torch.compile then updates each in place (writes into slices of a shared
    tensor made inductor copy the whole cache at every step, 3x slower than eager on CPU).
    """

    def __init__(self, config, batch_size, device, dtype):
        shape = (batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.pos = 0

    def reorder(self, index):
        # beam search: keep the cache rows of the surviving beams
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]


class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper mask on the CPU, where PyTorch's bernoulli draws one 32-bit random number
    per element (~12 ns each, a fifth of a bf16 training step of the 6x384 Shakespeare model). Here each
    draw gives two 16-bit uniforms, so p is rounded to a multiple of 1/65536 (0.2 -> 0.199997), and
    forward+backward is ~1.5x faster. Compiled, it also beats inductor's CPU dropout (bf16 step of the
    6x384 model: 1.36 vs 2.03 s). GPUs keep nn.Dropout (fused Philox kernels). Seeded by torch.manual_seed."""

    def forward(self, x):
        if not self.training or self.p == 0.0 or self.p >= 1.0 or self.inplace or x.device.type != 'cpu':
            return super().forward(x)
        n = x.numel()
        # 2**32 - 1 values: uniform 32-bit words but for one value in four billion
        bits = torch.randint(-2**31, 2**31 - 1, ((n + 1) // 2,), dtype=torch.int32)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= round(self.p * 65536) - 32768
        return x * keep * (1.0 / (1.0 - self.p))


def cpu_training_avoids_sdpa(dtype, dropout_p):
    """On the CPU, training takes the explicit attention path in two cases: PyTorch's flash-attention
    backward is slow in bfloat16 (forward+backward 2-3x the masked softmax's: torch 2.13, one core, 21 vs
    6 ms at B,H,T,hs = 12,4,64,32; 105 vs 52 ms at 12,6,256,64), and with dropout SDPA falls back to its
    math kernel with the slow bernoulli mask (129 vs 98 ms at 12,6,256,64, fp32, p=0.2). Inference keeps
    SDPA, whose forward is the fast one."""
    return dtype == torch.bfloat16 or dropout_p > 0


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.attn_impl = config.attn_impl
        # q, k, v projections for all heads in one matmul (HF name: c_attn)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = Dropout(config.dropout)
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x, kv_cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        past = 0
        if kv_cache is not None:
            past = kv_cache.pos
            kv_cache.k[self.layer_idx][:, :, past:past + T] = k
            kv_cache.v[self.layer_idx][:, :, past:past + T] = v
            k = kv_cache.k[self.layer_idx][:, :, :past + T]
            v = kv_cache.v[self.layer_idx][:, :, :past + T]
        # Query i (absolute position past+i) may attend to keys 0..past+i.
        if past == 0:
            mask, is_causal = None, True            # plain causal attention
        elif T == 1:
            mask, is_causal = None, False           # one new token sees the whole cache
        else:                                       # a chunk appended to a cache
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            is_causal = False
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
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.d_ff, bias=config.bias)
        self.gelu = nn.GELU(approximate=config.gelu_approx)
        self.c_proj = nn.Linear(config.d_ff, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.post_norm = config.post_norm
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None):
        if self.post_norm:  # GPT-1: x = LN(x + f(x))
            x = self.ln_1(x + self.attn(x, kv_cache))
            return self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x), kv_cache)  # GPT-2: x = x + f(LN(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        V = config.padded_vocab_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(V, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        ))
        if not config.post_norm:  # pre-norm needs a final LayerNorm; GPT-1 has none
            self.transformer.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, V, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying (all GPTs of the papers)
        self.apply(self._init_weights)
        # GPT-2: scale the init of residual output projections by 1/sqrt(2 * n_layer), since
        # each layer adds two such branches to the residual stream
        for name, p in self.named_parameters():
            if name.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

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
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx, targets=None, kv_cache=None):
        """idx: (B, T) token ids. Returns (logits, loss); loss is None without targets.
        Targets equal to -1 are ignored. Logits cover the padded vocabulary."""
        B, T = idx.size()
        past = kv_cache.pos if kv_cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of length {past + T} is longer than the model's context "
                             f"(block_size={self.config.block_size}); crop it or use a longer-context model")
        # A clear message instead of an index error. Skipped on CUDA, where checking would force a
        # host sync every step (the data loader checks token ids there), and under torch.compile.
        if idx.device.type != 'cuda' and not torch.compiler.is_compiling():
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
                raise ValueError(f"token id out of range: ids must be in [0, {self.config.vocab_size}), "
                                 f"got min {int(idx.min())}, max {int(idx.max())}")
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x, kv_cache)
        if kv_cache is not None:
            kv_cache.pos += T
        if not self.config.post_norm:
            x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)
        return logits, loss

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_preset(cls, name, **overrides):
        """A randomly initialised model of a named architecture (see PRESETS)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls(GPTConfig(**{**PRESETS[name], **overrides}))

    def crop_block_size(self, block_size):
        """Use a (pretrained) model with a shorter context: keep the first block_size positions."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow block_size from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, name_or_path, **overrides):
        """Load GPT-2 / GPT-1 weights through transformers.

        name_or_path: a hub name ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', 'openai-gpt')
        or a local directory written by transformers' save_pretrained (model_type gpt2 or openai-gpt).
        overrides: settings that do not change the weights' meaning: dropout, attn_impl,
        pad_vocab_multiple, block_size (only to shorten the context); anything else must agree
        with the checkpoint.
        """
        from transformers import AutoConfig, AutoModelForCausalLM
        if not os.path.isdir(name_or_path) and name_or_path not in HF_HUB_MODELS:
            raise ValueError(f"{name_or_path!r} is neither a local directory nor one of the hub models "
                             f"{', '.join(HF_HUB_MODELS)}")
        if os.path.isdir(name_or_path):  # check the model type ourselves: transformers' errors are vaguer
            cfg_path = os.path.join(name_or_path, 'config.json')
            if not os.path.isfile(cfg_path):
                raise ValueError(f"{name_or_path!r} has no config.json; expected a directory written by save_pretrained")
            with open(cfg_path, encoding='utf-8') as f:
                model_type = json.load(f).get('model_type')
            if model_type not in ('gpt2', 'openai-gpt'):
                raise ValueError(f"unsupported model_type {model_type!r} in {cfg_path}: expected 'gpt2' or 'openai-gpt'")
        hf_config = AutoConfig.from_pretrained(name_or_path)
        config = _config_from_hf(hf_config)
        block_size = overrides.pop('block_size', config.block_size)
        free = {'dropout', 'attn_impl', 'pad_vocab_multiple'}
        for k, v in overrides.items():
            if k in free:
                setattr(config, k, v)
            elif not hasattr(config, k):
                raise ValueError(f"unknown GPTConfig field {k!r}")
            elif getattr(config, k) != v:
                raise ValueError(f"cannot override {k}={v!r}: the checkpoint at {name_or_path!r} has "
                                 f"{k}={getattr(config, k)!r}, and the weights only fit that")
        hf_model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32)
        hf_sd = hf_model.state_dict()
        if hf_config.model_type == 'openai-gpt':  # GPT-1 names its embeddings differently
            hf_sd = {k.replace('tokens_embed', 'wte').replace('positions_embed', 'wpe'): v for k, v in hf_sd.items()}
        config.__post_init__()
        model = cls(config)
        sd = model.state_dict()
        expected = set(sd)
        got = {k for k in hf_sd if not k.endswith(('.attn.bias', '.attn.masked_bias'))}  # old HF mask buffers
        if expected != got:
            raise ValueError(f"checkpoint keys do not match a {hf_config.model_type} model: missing "
                             f"{sorted(expected - got)[:5]}, unexpected {sorted(got - expected)[:5]}")
        V = config.vocab_size
        with torch.no_grad():
            for k in expected:
                src = hf_sd[k]
                if k.endswith(_CONV1D):
                    src = src.t()  # HF Conv1D stores (in, out); nn.Linear wants (out, in)
                dst = sd[k]
                if k in ('transformer.wte.weight', 'lm_head.weight') and dst.shape[0] != src.shape[0]:
                    dst = dst[:V]  # padded vocabulary: copy the real rows, keep the pad rows' init
                if dst.shape != src.shape:
                    raise ValueError(f"shape mismatch for {k}: checkpoint {tuple(src.shape)}, model {tuple(dst.shape)}")
                dst.copy_(src)
        if block_size < config.block_size:
            model.crop_block_size(block_size)
        elif block_size > config.block_size:
            raise ValueError(f"cannot override block_size={block_size}: the checkpoint has only "
                             f"{config.block_size} positions")
        return model

    def save_pretrained(self, path):
        """Write a transformers directory (config.json + model.safetensors).

        Pre-norm models are written as GPT2LMHeadModel, post-norm ones as OpenAIGPTLMHeadModel.
        Padded vocabulary rows are dropped. bias=False models are written with zero biases in every
        Linear and LayerNorm, which computes the same function."""
        from safetensors.torch import save_file
        c = self.config
        if c.post_norm and (c.gelu_approx != 'tanh' or c.d_ff != 4 * c.n_embd):
            raise ValueError("a post-norm model exports as openai-gpt, which needs GPT-1's tanh GELU "
                             "(gelu_approx='tanh') and d_ff = 4 * n_embd")
        os.makedirs(path, exist_ok=True)
        sd = {k: v.detach().float().cpu() for k, v in self.state_dict().items()}
        sd['transformer.wte.weight'] = sd['transformer.wte.weight'][:c.vocab_size]
        del sd['lm_head.weight']  # tied: transformers re-ties it from wte
        for name, mod in self.named_modules():  # bias=False: write the zero biases HF expects
            if isinstance(mod, (nn.Linear, nn.LayerNorm)) and mod.bias is None and name != 'lm_head':
                sd[f'{name}.bias'] = torch.zeros(mod.weight.shape[0])
        sd = {k: (v.t() if k.endswith(_CONV1D) else v).contiguous() for k, v in sd.items()}
        common = dict(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                      n_head=c.n_head, resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
                      layer_norm_epsilon=c.layer_norm_eps, initializer_range=0.02, tie_word_embeddings=True)
        if c.post_norm:
            sd = {k.replace('.wte.', '.tokens_embed.').replace('.wpe.', '.positions_embed.'): v for k, v in sd.items()}
            hf = dict(model_type='openai-gpt', architectures=['OpenAIGPTLMHeadModel'], afn='gelu', **common)
        else:
            # <|endoftext|> (50256) of the GPT-2 tokenizer; for other vocabularies it would be out of
            # range, which transformers warns about, so leave it unset
            eot = 50256 if c.vocab_size > 50256 else None
            act = 'gelu_new' if c.gelu_approx == 'tanh' else 'gelu'  # HF's names for tanh / exact GELU
            hf = dict(model_type='gpt2', architectures=['GPT2LMHeadModel'], activation_function=act,
                      n_inner=c.n_inner or None, bos_token_id=eot, eos_token_id=eot, **common)
        with open(os.path.join(path, 'config.json'), 'w', encoding='utf-8') as f:
            json.dump(hf, f, indent=2)
        save_file(sd, os.path.join(path, 'model.safetensors'), metadata={'format': 'pt'})

    # ------------------------------------------------------------------ training helpers

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, eps=1e-8, verbose=True,
                             fused=None):
        """AdamW with weight decay on matrices only (GPT-3): embeddings and Linear weights decay;
        biases, LayerNorm gains and all other 1-D tensors do not. fused: the single-kernel update
        (None: on CUDA; train.py also asks for it on CPU, where it is 3-6x faster than the default
        per-tensor loop and equal to it up to rounding)."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{'params': decay, 'weight_decay': weight_decay},
                  {'params': no_decay, 'weight_decay': 0.0}]
        if verbose:
            print(f"optimizer: {len(decay)} decayed tensors ({sum(p.numel() for p in decay):,} parameters), "
                  f"{len(no_decay)} non-decayed tensors ({sum(p.numel() for p in no_decay):,} parameters)")
        # the fused kernel does the whole update in one launch on CUDA
        if fused is None:
            fused = device_type == 'cuda'
        fused = fused and 'fused' in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, **({'fused': True} if fused else {}))

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token (forward + backward), PaLM appendix B:
        6N for the weight matmuls plus 12 * L * H * Q * T for attention scores and values
        (L layers, H heads, Q head size, T sequence length). N excludes position embeddings."""
        c = self.config
        T = seq_len or c.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * T

    def estimate_mfu(self, tokens_per_iter, dt, peak_flops, seq_len=None):
        """Model FLOPs utilisation: achieved training FLOP/s as a fraction of peak_flops (FLOP/s)."""
        return self.flops_per_token(seq_len) * tokens_per_iter / dt / peak_flops

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, min_p=None,
                        repetition_penalty=1.0, eos_token_id=None, use_cache=True, generator=None):
        """Yield (B, 1) next tokens one at a time, for streaming. idx: (B, T) prompts of equal length
        (batch several samples of one prompt, or prompts of equal token length).

        With use_cache the prompt is prefilled once and each step feeds one token. When the context
        would exceed block_size, generation continues on a sliding window of the last block_size
        tokens; with learned absolute positions that means recomputing the window every step (exactly
        what the no-cache path does), so it is correct but as slow as no cache.
        temperature=0 is greedy. Rows that produced eos_token_id keep emitting it; the stream stops
        early once every row has."""
        check_sampling_args(temperature, top_k, top_p, min_p, repetition_penalty)
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError("the prompt must be a (batch, length) tensor with at least one token")
        bs = self.config.block_size
        cache = None
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            if use_cache and cache is not None and cache.pos < bs:
                logits, _ = self(idx[:, -1:], kv_cache=cache)
            elif use_cache:  # first step, or the window slid: (re)fill the cache
                cache = KVCache(self.config, idx.size(0), idx.device, self.transformer.wte.weight.dtype)
                logits, _ = self(idx[:, -bs:], kv_cache=cache)
            else:
                logits, _ = self(idx[:, -bs:])
            logits = logits[:, -1, :self.config.vocab_size].float()
            next_id = sample_next(logits, idx, temperature, top_k, top_p, min_p, repetition_penalty, generator)
            if eos_token_id is not None:
                next_id = torch.where(finished[:, None], torch.full_like(next_id, eos_token_id), next_id)
                finished |= next_id[:, 0] == eos_token_id
            idx = torch.cat((idx, next_id), dim=1)
            yield next_id
            if eos_token_id is not None and bool(finished.all()):
                return

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, **kwargs):
        """Extend idx (B, T) by up to max_new_tokens tokens; see generate_stream for the options."""
        out = [idx] + list(self.generate_stream(idx, max_new_tokens, **kwargs))
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def beam_search(self, idx, max_new_tokens, num_beams, length_penalty=1.0, eos_token_id=None,
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
        T, V, nb = idx.size(1), self.config.vocab_size, num_beams
        if T + max_new_tokens - 1 > self.config.block_size:  # the last token is never fed back
            raise ValueError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) - 1 exceeds block_size "
                             f"({self.config.block_size}); beam search has no sliding window")
        # All beams start as the prompt, but only beam 0 is live (the others at -1e9, as in HF), so
        # the first step does not pick the same continuation num_beams times.
        seqs = idx.expand(nb, T)
        scores = torch.full((nb,), -1e9, device=idx.device)
        scores[0] = 0.0
        finished = []       # (score, sequence) of up to num_beams finished hypotheses, best first
        improvable = True   # can a live beam still beat the worst finished hypothesis?
        cache = KVCache(self.config, 1, idx.device, self.transformer.wte.weight.dtype) if use_cache else None
        logits, _ = self(idx, kv_cache=cache)  # prefill once, then copy to every beam
        logits = logits.expand(nb, -1, -1)
        if cache is not None:
            cache.reorder(torch.zeros(nb, dtype=torch.long, device=idx.device))
        for n in range(1, max_new_tokens + 1):  # n = tokens generated once this step is done
            if n > 1:
                logits, _ = self(seqs[:, -1:], kv_cache=cache) if cache is not None else self(seqs)
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


_CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')


def _config_from_hf(hf):
    """GPTConfig from a transformers GPT2Config / OpenAIGPTConfig, refusing variants we do not model."""
    if hf.model_type not in ('gpt2', 'openai-gpt'):  # first: other configs lack the GPT-2 field names
        raise ValueError(f"unsupported model_type {hf.model_type!r}: expected 'gpt2' or 'openai-gpt'")
    common = dict(block_size=hf.n_positions, vocab_size=hf.vocab_size, n_layer=hf.n_layer, n_head=hf.n_head,
                  n_embd=hf.n_embd, dropout=0.0, bias=True, layer_norm_eps=hf.layer_norm_epsilon)
    if not getattr(hf, 'tie_word_embeddings', True):
        raise ValueError("this checkpoint has untied input/output embeddings, which this GPT does not model")
    if hf.model_type == 'openai-gpt':
        if hf.afn != 'gelu':
            raise ValueError(f"unsupported GPT-1 activation {hf.afn!r} (only 'gelu')")
        # GPT-1's "gelu" is the tanh approximation (OpenAI's finetune-transformer-lm; HF maps it to gelu_new)
        return GPTConfig(post_norm=True, gelu_approx='tanh', **common)
    acts = {'gelu_new': 'tanh', 'gelu_pytorch_tanh': 'tanh', 'gelu': 'none'}
    if hf.activation_function not in acts:
        raise ValueError(f"unsupported GPT-2 activation {hf.activation_function!r}")
    for flag in ('scale_attn_by_inverse_layer_idx', 'reorder_and_upcast_attn', 'add_cross_attention'):
        if getattr(hf, flag, False):
            raise ValueError(f"unsupported GPT-2 variant: {flag}=True")
    if not getattr(hf, 'scale_attn_weights', True):
        raise ValueError("unsupported GPT-2 variant: scale_attn_weights=False")
    return GPTConfig(post_norm=False, gelu_approx=acts[hf.activation_function], n_inner=hf.n_inner or 0, **common)


# ---------------------------------------------------------------------- sampling


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


def sample_next(logits, prev_ids, temperature=1.0, top_k=None, top_p=None, min_p=None,
                repetition_penalty=1.0, generator=None):
    """Pick the next token (B, 1) from last-position logits (B, V)."""
    logits = apply_repetition_penalty(logits, prev_ids, repetition_penalty)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    logits = apply_top_k(logits, top_k)
    logits = apply_top_p(logits, top_p)
    logits = apply_min_p(logits, min_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# ---------------------------------------------------------------------- hardware peak FLOP/s

# Dense bf16/fp16 tensor-core peaks from the vendors' data sheets (FLOP/s, no sparsity).
GPU_PEAK_FLOPS = {
    'B200': 2250e12, 'H200': 989e12, 'H100 SXM': 989e12, 'H100 NVL': 835e12, 'H100 PCIe': 756e12,
    'H100': 989e12, 'GH200': 989e12, 'A100': 312e12, 'A800': 312e12, 'L40S': 362e12, 'L40': 181e12,
    'L4': 121e12, 'A10G': 70e12, 'A10': 125e12, 'A6000': 155e12, 'V100': 125e12, 'T4': 65e12,
    'RTX 4090': 165e12, 'RTX 3090': 71e12, 'MI300X': 1307e12, 'MI250X': 383e12,
}

_measured_peak = {}


def measure_matmul_flops(device='cpu', dtype=torch.float32, n=1024, seconds=0.5):
    """Achieved FLOP/s of a large square matmul: the practical peak of a CPU (or unknown device)."""
    key = (str(device), dtype, n)
    if key not in _measured_peak:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm-up
        best, t_end = float('inf'), time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            a @ b
            if str(device).startswith('cuda'):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        _measured_peak[key] = 2 * n ** 3 / best
    return _measured_peak[key]


def device_peak_flops(device='cpu', dtype=torch.float32, override=0.0):
    """Peak FLOP/s used for MFU: a user-given figure, else the data-sheet figure of a known GPU,
    else a measured matmul rate (CPUs, unknown GPUs)."""
    if override:
        return override
    if str(device).startswith('cuda') and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
        for key in sorted(GPU_PEAK_FLOPS, key=len, reverse=True):  # most specific name first
            if key in name:
                peak = GPU_PEAK_FLOPS[key]
                return peak if dtype in (torch.bfloat16, torch.float16) else peak / 2  # TF32 ~ half
    return measure_matmul_flops(device, dtype)


if __name__ == '__main__':
    # the preset table, counted on the meta device so no memory is spent
    print(f"{'preset':<12} {'layers':>6} {'width':>6} {'heads':>5} {'context':>7} {'params':>12}")
    for name in PRESETS:
        with torch.device('meta'):
            m = GPT.from_preset(name)
        c = m.config
        print(f"{name:<12} {c.n_layer:>6} {c.n_embd:>6} {c.n_head:>5} {c.block_size:>7} {m.num_params() / 1e6:>11.1f}M")
