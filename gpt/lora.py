"""
LoRA adapters (Hu et al. 2021): the base weights frozen, each chosen linear layer W of the transformer blocks
learns a low-rank update (alpha / r) * B A, with A (r, in) and B (out, r). B starts at zero, so a fresh adapter
leaves the model exactly as it was; only A and B (a few MB for gpt2-xl) are trained, held by AdamW and saved.

    from gpt import lora
    lora.apply(model, rank=8, alpha=16, dropout=0.05, targets='c_attn')   # in place; freezes everything else
    lora.trained_state(model)          # what a LoRA run's checkpoint holds (adapters, plus any trainable tensor)
    lora.merge(model); lora.unmerge(model)                # W += (alpha / r) B A, and back
    with lora.disabled(model): ...     # the base model, without a copy (PPO/DPO's frozen reference)
    lora.save_adapter(model, 'dir', base='gpt2')          # peft's adapter_config.json + adapter_model.safetensors
    lora.load_adapter(model, 'dir')                       # an adapter peft trained on the same GPT-2
    lora.setup(model, init_from, rank, alpha, dropout, targets)  # what the training scripts call (--lora_*)
    lora.cast_frozen(model, torch.bfloat16)               # bf16/fp16 runs: the frozen matrices in that dtype
    reference = lora.reference(model)                     # PPO/DPO: the policy with its adapters off, no copy

A LoRA run's checkpoint holds trained_state and lora_settings (rank, alpha, dropout, targets, the base's name
and a fingerprint of its weights); checkpoint.model_from_checkpoint rebuilds base + adapters from them.

peft's format is the interchange: for GPT2LMHeadModel peft wraps transformers' Conv1D layers with
fan_in_fan_out=True, and its tensors are named base_model.model.transformer.h.N.attn.c_attn.lora_A.weight (r, in)
and ...lora_B.weight (out, r), the same matrices in the same orientation as ours (Conv1D's (in, out) storage only
changes how peft adds the product to the weight). So `peft.PeftModel.from_pretrained(
GPT2LMHeadModel.from_pretrained(base), dir)` computes what our model computes. An rsLoRA adapter (use_rslora:
scale alpha / sqrt(r)) loads with alpha * sqrt(r) as its alpha, the same scale as alpha / r, and is written so.

Targets (--lora_targets, comma-separated), by the GPT-2 / transformers names of the layers:
    c_attn        the fused q, k, v projection (peft's usual target on GPT-2)
    q, k, v       parts of it: one adapter on c_attn whose B rows for the other parts stay zero (a mask), so
                  q,v (the LoRA paper's choice) still exports to peft as a c_attn adapter
    attn.c_proj   the attention output projection;   c_fc, mlp.c_proj  the MLP's two layers
    c_proj        both output projections (as peft matches the name);   all  every one of the above
"""

import contextlib
import json
import math
import os

import torch
import torch.nn as nn
from torch.nn import functional as F

from gpt.errors import UserError

LAYERS = ('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj')
ALIASES = {'c_attn': ('attn.c_attn',), 'c_fc': ('mlp.c_fc',), 'c_proj': ('attn.c_proj', 'mlp.c_proj'),
           'attn.c_attn': ('attn.c_attn',), 'attn.c_proj': ('attn.c_proj',), 'mlp.c_fc': ('mlp.c_fc',),
           'mlp.c_proj': ('mlp.c_proj',), 'all': LAYERS}
PARTS = ('q', 'k', 'v')
PEFT_PREFIX = 'base_model.model.'


class LoRALinear(nn.Linear):
    """An nn.Linear (the same weight and bias Parameters, so the base's state-dict names are unchanged) plus
    lora_A (r, in) and lora_B (out, r): y = x W^T + b + scaling * dropout(x) A^T (B * mask)^T.
    mask: which output rows the adapter may change (q/k/v parts of c_attn), or None for all."""

    def __init__(self, base, rank, alpha, dropout=0.0, rows=None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=dev, dtype=dt))
        if dev.type != 'meta':
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's (and nn.Linear's) init for A
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.register_buffer('lora_mask', rows, persistent=False)  # (out, 1) of 0/1, or None
        self.merged = False
        self.enabled = True

    def delta(self):
        """The update to W: scaling * B A, (out, in)."""
        B = self.lora_B if self.lora_mask is None else self.lora_B * self.lora_mask
        return (B @ self.lora_A) * self.scaling

    def forward(self, x):
        y = frozen_linear(x, self.weight, self.bias)
        if self.merged or not self.enabled:
            return y
        B = self.lora_B if self.lora_mask is None else self.lora_B * self.lora_mask
        return y + F.linear(F.linear(self.lora_dropout(x), self.lora_A), B) * self.scaling

    def extra_repr(self):
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def frozen_linear(x, weight, bias):
    """F.linear, for a frozen weight that cast_frozen stored in the compute dtype: outside autocast (an fp32
    evaluation) it is cast to x's dtype for the call."""
    if weight.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
        weight = weight.to(x.dtype)
    return F.linear(x, weight, bias)


class FrozenLinear(nn.Linear):
    """A block's linear layer without an adapter whose frozen weight cast_frozen stores in the compute dtype
    (the same Parameters as the nn.Linear it replaces, so the state-dict names are unchanged)."""

    def __init__(self, base):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias

    def forward(self, x):
        return frozen_linear(x, self.weight, self.bias)


@torch.no_grad()
def cast_frozen(model, dtype):
    """Store the frozen weight matrices of the blocks' linear layers in `dtype`, the autocast dtype of a bf16 or
    fp16 run: autocast casts an fp32 weight to it for every matmul anyway, so the forward and backward passes are
    unchanged bit for bit, and the frozen base takes half the memory (and no per-step cast). The adapters,
    embeddings, LayerNorms and biases stay as they are."""
    for block in model.transformer.h:
        for layer in LAYERS:
            owner_name, name = layer.split('.')
            owner = getattr(block, owner_name)
            lin = getattr(owner, name)
            if not isinstance(lin, (LoRALinear, FrozenLinear)):
                lin = FrozenLinear(lin)
                setattr(owner, name, lin)
            if not lin.weight.requires_grad:
                lin.weight.data = lin.weight.data.to(dtype)
    return model


def parse_targets(targets):
    """'c_attn,mlp.c_fc' -> {layer suffix: (q, k, v) row selection or None}, or one line naming a bad target."""
    names = [t.strip() for t in (targets.split(',') if isinstance(targets, str) else targets) if t.strip()]
    if not names:
        raise UserError(f"lora_targets is empty; choose from {', '.join([*ALIASES, *PARTS])}")
    out, parts = {}, set()
    for n in names:
        if n in PARTS:
            parts.add(n)
        elif n in ALIASES:
            out.update({layer: None for layer in ALIASES[n]})
        else:
            raise UserError(f"unknown lora target {n!r}; choose from {', '.join([*ALIASES, *PARTS])} "
                            f"(comma-separated)")
    if parts and 'attn.c_attn' not in out:
        out['attn.c_attn'] = tuple(p in parts for p in PARTS)
    return out


def check_settings(rank, alpha, dropout, targets):
    if not isinstance(rank, int) or rank <= 0:
        raise UserError(f"lora_rank must be a positive integer (0 turns LoRA off), got {rank!r}")
    if not alpha > 0:
        raise UserError(f"lora_alpha must be > 0, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise UserError(f"lora_dropout must be in [0, 1), got {dropout!r}")
    return parse_targets(targets)


def apply(model, rank, alpha=None, dropout=0.0, targets='c_attn', train=()):
    """Put adapters on the chosen layers of every block of a GPT, in place; freeze every other parameter
    except those whose names start with one of `train` (e.g. a grown embedding). alpha defaults to rank
    (scaling 1). Returns the model. Settings are recorded in model.lora_settings."""
    alpha = rank if alpha is None else alpha
    layers = check_settings(rank, alpha, dropout, targets)
    if is_lora(model):
        raise UserError("this model already has LoRA adapters")
    for p in model.parameters():
        p.requires_grad_(False)
    for i, block in enumerate(model.transformer.h):
        for layer, parts in layers.items():
            owner_name, name = layer.split('.')
            owner = getattr(block, owner_name)
            base = getattr(owner, name)
            if rank > min(base.in_features, base.out_features):
                raise UserError(f"lora_rank={rank} is larger than the layer {layer} ({base.out_features} x "
                                f"{base.in_features}): at most {min(base.in_features, base.out_features)}")
            rows = None
            if parts is not None:  # q/k/v: c_attn's output rows are [q | k | v], n_embd each
                n = base.out_features // 3
                rows = torch.cat([torch.full((n, 1), float(on)) for on in parts]).to(base.weight.device)
            setattr(owner, name, LoRALinear(base, rank, alpha, dropout, rows))
    for name, p in model.named_parameters():
        if any(name.startswith(t) for t in train):
            p.requires_grad_(True)
    model.lora_settings = dict(rank=rank, alpha=alpha, dropout=dropout,
                               targets=targets if isinstance(targets, str) else ','.join(targets))
    return model


def setup(model, init_from, rank, alpha, dropout, targets, train=(), frozen_dtype=None):
    """What a training script does with its --lora_* settings, in place: rank > 0 puts adapters on a pretrained
    model (init_from: the base the checkpoints will name) and freezes the rest; a resumed LoRA run keeps training
    its own adapters; a LoRA run as init_from has its adapters merged into its weights first (it is the new run's
    base, or with rank 0 a plain network trained in full). frozen_dtype: the compute dtype of a bf16/fp16 run, in
    which the frozen weight matrices are then stored (cast_frozen). Returns a line for the log, or ''."""
    if is_lora(model) and init_from == 'resume':
        for name, p in model.named_parameters():  # (rebuilt from its checkpoint: the trained set as it was)
            p.requires_grad_('.lora_' in name or any(name.startswith(t) for t in model.lora_settings.get('train', ())))
        trained, total = count(model)
        if frozen_dtype is not None:
            cast_frozen(model, frozen_dtype)
        return f"LoRA: continuing the run's adapters ({trained:,} of {total:,} parameters trained)"
    merged = ''
    if is_lora(model):  # a LoRA run as the start of another run: its adapters become part of the base
        strip(model)
        merged = "the adapters of the LoRA run this starts from are merged into its weights"
    if not rank:
        return merged
    if init_from == 'resume':
        raise UserError("the run being resumed trained every weight, so it cannot continue as LoRA: start a new run "
                        "with --init_from=<its out_dir> --lora_rank=R and another --out_dir")
    if init_from == 'scratch':
        raise UserError("LoRA adapts a pretrained model: set --init_from to a hub model, a Hugging Face directory or "
                        "a training run's out_dir (or lora_rank=0 to train from scratch)")
    apply(model, rank, alpha, dropout, targets, train)
    model.lora_settings.update(base=os.path.abspath(init_from) if os.path.isdir(init_from) else init_from,
                               train=list(train), base_check=fingerprint(model))
    trained, total = count(model)
    if frozen_dtype is not None:
        cast_frozen(model, frozen_dtype)
    return ((f"{merged}; " if merged else '') + f"LoRA r={rank}, alpha={alpha:g}, dropout={dropout:g} on {targets}: "
            f"{trained:,} of {total:,} parameters trained ({100 * trained / total:.2f}%)"
            + (f", including {', '.join(train)}" if train else '')
            + (f"; frozen matrices stored in {str(frozen_dtype).replace('torch.', '')}" if frozen_dtype else ''))


class Reference:
    """The frozen base of a LoRA model, called like the model: its forward with the adapters off, in eval mode,
    without gradients. PPO and DPO's reference policy (the model they start from) without a second copy of it."""

    def __init__(self, model):
        self.model = model
        self.config = model.config

    def __call__(self, *args, **kwargs):
        mode = self.model.training
        try:
            with disabled(self.model), torch.no_grad():
                return self.model.eval()(*args, **kwargs)
        finally:
            self.model.train(mode)

    training = False  # (always evaluates: train() and eval() change nothing, as for a frozen copy in eval mode)

    def eval(self):
        return self

    def train(self, mode=True):
        return self


def reference(model):
    """PPO/DPO's frozen reference: the base itself for a LoRA policy (Reference), else a frozen copy."""
    import copy
    if is_lora(model):
        return Reference(model)
    return copy.deepcopy(model).eval().requires_grad_(False)


@torch.no_grad()
def fingerprint(model):
    """A number that identifies the frozen base: the sum of the first and last blocks' c_attn and c_fc weights in
    float64 (not the embeddings, which a run may grow). A LoRA checkpoint records it; rebuilding checks it."""
    blocks = (model.transformer.h[0], model.transformer.h[-1])
    return float(sum(t.double().sum() for b in blocks for t in (b.attn.c_attn.weight, b.mlp.c_fc.weight)))


def strip(model):
    """Merge the adapters into the weights and put plain nn.Linear layers back, in place."""
    merge(model)
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, (LoRALinear, FrozenLinear))]:
        owner_name, attr = name.rsplit('.', 1)
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device='meta')
        plain.weight, plain.bias = m.weight, m.bias
        setattr(model.get_submodule(owner_name), attr, plain)
    for p in model.parameters():
        p.requires_grad_(True)
    model.__dict__.pop('lora_settings', None)
    return model


def is_lora(model):
    return any(isinstance(m, LoRALinear) for m in model.modules())


def adapters(model):
    """(name, LoRALinear) of every adapted layer, names as in the model's state dict."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def trained_state(model, state_dict=None):
    """The tensors a LoRA run saves: those of the trainable parameters (adapters, and e.g. a grown embedding),
    taken from state_dict (e.g. FSDP's gathered one) or the model's own."""
    sd = model.state_dict() if state_dict is None else state_dict
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in sd.items() if k in keep}


def load_trained(model, state):
    """Load a checkpoint's model tensors into model (a resume): all of them, or for a LoRA model exactly those it
    trains (trained_state; its frozen base came from the base it names)."""
    if not is_lora(model):
        return model.load_state_dict(state)
    want = set(trained_state(model))
    if set(state) != want:
        raise UserError(f"the checkpoint's trained tensors do not fit this LoRA model: missing "
                        f"{sorted(want - set(state))[:3]}, unexpected {sorted(set(state) - want)[:3]}")
    model.load_state_dict(state, strict=False)


def count(model):
    """(trainable, total) parameter counts, for the log line."""
    ps = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in ps if p.requires_grad), sum(p.numel() for p in ps)


@torch.no_grad()
def merge(model):
    """W += scaling * B A in every adapted layer: the forward pass is then the plain network's cost."""
    for _, m in adapters(model):
        if not m.merged:
            m.weight += m.delta().to(m.weight.dtype)
            m.merged = True
    return model


@torch.no_grad()
def unmerge(model):
    """Undo merge (W -= scaling * B A; equal to the unmerged weights up to float rounding)."""
    for _, m in adapters(model):
        if m.merged:
            m.weight -= m.delta().to(m.weight.dtype)
            m.merged = False
    return model


@contextlib.contextmanager
def disabled(model):
    """The base model, adapters off, without copying it: PPO and DPO's frozen reference policy. (A merged
    model is unmerged for the duration.)"""
    layers = [m for _, m in adapters(model)]
    was_merged = [m.merged for m in layers]
    unmerge(model)
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m, was in zip(layers, was_merged):
            m.enabled = True
            if was:
                with torch.no_grad():
                    m.weight += m.delta().to(m.weight.dtype)
                m.merged = True


# ---------------------------------------------------------------------- peft's file format

def peft_targets(model):
    return sorted({name.split('.', 3)[3] for name, _ in adapters(model)})  # transformer.h.N.<attn.c_attn>


def save_adapter(model, path, base=None):
    """Write peft's adapter directory: adapter_config.json and adapter_model.safetensors (fp32), for
    GPT2LMHeadModel. base: written as base_model_name_or_path (a hub name or the HF directory of the base)."""
    from safetensors.torch import save_file
    layers = adapters(model)
    if not layers:
        raise UserError("this model has no LoRA adapters to save (train with --lora_rank=R)")
    s = model.lora_settings
    os.makedirs(path, exist_ok=True)
    sd = {}
    for name, m in layers:
        B = m.lora_B if m.lora_mask is None else m.lora_B * m.lora_mask
        sd[f'{PEFT_PREFIX}{name}.lora_A.weight'] = m.lora_A.detach().float().cpu().contiguous()
        sd[f'{PEFT_PREFIX}{name}.lora_B.weight'] = B.detach().float().cpu().contiguous()
    cfg = dict(peft_type='LORA', task_type='CAUSAL_LM', base_model_name_or_path=base, r=s['rank'],
               lora_alpha=s['alpha'], lora_dropout=s['dropout'], target_modules=peft_targets(model),
               fan_in_fan_out=True, bias='none', inference_mode=True, init_lora_weights=True, use_rslora=False,
               use_dora=False, modules_to_save=None, layers_to_transform=None, layers_pattern=None,
               rank_pattern={}, alpha_pattern={})
    with open(os.path.join(path, 'adapter_config.json'), 'w', encoding='utf-8') as f:
        json.dump(cfg, f, indent=2)
    save_file(sd, os.path.join(path, 'adapter_model.safetensors'), metadata={'format': 'pt'})


def read_adapter(path):
    """(config dict, {our layer name: (A, B)}) of a peft LoRA directory, or one line saying why not."""
    from safetensors.torch import load_file
    cfg_path = os.path.join(path, 'adapter_config.json')
    if not os.path.isfile(cfg_path):
        raise UserError(f"{path} has no adapter_config.json: not a peft adapter directory")
    with open(cfg_path, encoding='utf-8') as f:
        cfg = json.load(f)
    if cfg.get('peft_type') != 'LORA':
        raise UserError(f"{path} is a peft {cfg.get('peft_type')} adapter; only LORA adapters load here")
    unsupported = [k for k in ('use_dora', 'modules_to_save', 'rank_pattern', 'alpha_pattern', 'layer_replication',
                               'trainable_token_indices') if cfg.get(k)]
    if cfg.get('bias', 'none') != 'none':
        unsupported.append(f"bias={cfg['bias']!r}")
    if unsupported:
        raise UserError(f"{path} uses peft options this loader does not model: {', '.join(unsupported)}")
    file = os.path.join(path, 'adapter_model.safetensors')
    if os.path.isfile(file):
        sd = load_file(file)
    elif os.path.isfile(os.path.join(path, 'adapter_model.bin')):
        sd = torch.load(os.path.join(path, 'adapter_model.bin'), map_location='cpu', weights_only=True)
    else:
        raise UserError(f"{path} has no adapter_model.safetensors")
    pairs = {}
    for k, v in sd.items():
        name = k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k
        for part in ('A', 'B'):
            for suffix in (f'.lora_{part}.weight', f'.lora_{part}.default.weight'):
                if name.endswith(suffix):
                    pairs.setdefault(name[:-len(suffix)], {})[part] = v
                    break
            else:
                continue
            break
        else:
            raise UserError(f"{path}: unexpected tensor {k} (only lora_A / lora_B weights load here)")
    if not pairs:
        raise UserError(f"{path} holds no LoRA weights")
    return cfg, pairs


def load_adapter(model, path):
    """Put the peft adapter in `path` on a plain GPT (in place, frozen base), checking that it fits: its layers
    must exist in this model with the shapes it was trained for (else it is an adapter for another base)."""
    cfg, pairs = read_adapter(path)
    rank, alpha = int(cfg['r']), cfg.get('lora_alpha', 8)
    if cfg.get('use_rslora'):
        # rank-stabilised LoRA scales by alpha / sqrt(r); held as the alpha whose alpha / r is that scale, so the
        # settings say the scale the layers use (a checkpoint rebuilds it, save_adapter writes it for peft)
        alpha = alpha * math.sqrt(rank)
    names = {n for n, _ in model.named_modules()}
    layers = set()
    for name, ab in pairs.items():
        parts = name.split('.')
        if name not in names or len(parts) != 5 or '.'.join(parts[3:]) not in LAYERS or set(ab) != {'A', 'B'}:
            raise UserError(f"{path} adapts {name}, which is not a linear layer of this model's blocks "
                            f"(an adapter for another base model?)")
        layers.add('.'.join(parts[3:]))
    targets = ','.join(sorted(layers))
    apply(model, rank, alpha, 0.0, targets)
    model.lora_settings['dropout'] = cfg.get('lora_dropout', 0.0)
    got = dict(adapters(model))
    missing = sorted(set(got) - set(pairs))
    if missing:
        raise UserError(f"{path} has no weights for {missing[0]} (and {len(missing) - 1} more): an adapter for a "
                        f"model with fewer layers?")
    with torch.no_grad():
        for name, m in got.items():
            A, B = pairs[name]['A'], pairs[name]['B']
            if A.shape != m.lora_A.shape or B.shape != m.lora_B.shape:
                raise UserError(f"{path}: {name}'s adapter has shapes A {tuple(A.shape)}, B {tuple(B.shape)}; this "
                                f"model needs A {tuple(m.lora_A.shape)}, B {tuple(m.lora_B.shape)}: an adapter for "
                                f"another base model")
            m.lora_A.copy_(A)
            m.lora_B.copy_(B)
    return model
