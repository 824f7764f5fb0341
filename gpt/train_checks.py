"""
train.py's settings checked together, before anything loads or any process group forms: each mistake is one line
naming the key and what it may be (a UserError), so every rank of a torchrun launch stops alike with one message.
They read the resolved config (train.py's settings after config files, --key=value and a resume), so they can be
tested on their own (tests/test_errors.py, tests/test_options.py run train.py with each mistake).
"""
from torch.torch_version import TorchVersion

from gpt.errors import UserError, check_choice, check_range

CHOICES = {'nan_policy': ('stop', 'skip'), 'parallelism': ('ddp', 'fsdp'), 'backend': ('auto', 'nccl', 'gloo'),
           'attn_impl': ('sdpa', 'explicit'), 'gelu_approx': ('tanh', 'none'), 'pos_emb': ('learned', 'rope'),
           'mlp_act': ('gelu', 'relu2'), 'optim': ('adamw', 'muon'), 'lr_schedule': ('cosine', 'wsd')}


def check_settings(c, given):
    """c: the config (a dict of every setting); given: the keys a config file or the command line set."""
    for k in ('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval', 'log_interval',
              'eval_iters', 'n_layer', 'n_head', 'n_embd', 'pad_vocab_multiple'):
        check_range(k, c[k], low=1)
    for k in ('max_iters', 'warmup_iters', 'lr_decay_iters', 'min_lr', 'weight_decay', 'grad_clip', 'max_time',
              'peak_flops', 'warmup_tokens', 'lr_decay_tokens', 'batch_ramp_start', 'batch_ramp_tokens'):
        check_range(k, c[k], low=0)
    in_tokens = c['lr_decay_tokens'] > 0
    if c['decay_on_clock'] and not c['max_time']:
        raise UserError("decay_on_clock=True decays the learning rate over the time budget: set --max_time (seconds)")
    if c['deterministic'] and c['decay_on_clock']:
        raise UserError("deterministic=True promises the same weights from the same command, but decay_on_clock=True "
                        "makes the learning rate follow the clock: drop one of them")
    if c['warmup_tokens'] and not in_tokens:
        raise UserError("warmup_tokens needs lr_decay_tokens: a schedule in tokens sets both (or neither, for "
                        "iterations)")
    both = [k for k in ('warmup_iters', 'lr_decay_iters') if k in given]
    if in_tokens and both:
        raise UserError(f"the schedule is in tokens (lr_decay_tokens={c['lr_decay_tokens']}) or in iterations, not "
                        f"both: drop {', '.join('--' + k for k in both)}")
    micro, start, full = c['batch_size'] * c['block_size'], c['batch_ramp_start'], c['gradient_accumulation_steps']
    if start and not (c['batch_ramp_tokens'] and micro <= start < full * micro):
        raise UserError(f"the batch ramp goes from batch_ramp_start={start} tokens per step (at least one "
                        f"micro-batch of {micro}) up to the full {full * micro} over batch_ramp_tokens > 0 tokens; "
                        f"got batch_ramp_tokens={c['batch_ramp_tokens']}")
    check_range('learning_rate', c['learning_rate'], low=0, low_open=True)
    for k in ('dropout', 'beta1', 'beta2'):
        check_range(k, c[k], low=0, high=1, high_open=True)
    for k, choices in CHOICES.items():
        check_choice(k, c[k], choices)
    check_range('cooldown_frac', c['cooldown_frac'], low=0, high=1)
    check_range('rope_base', c['rope_base'], low=1, low_open=True)
    check_range('muon_lr', c['muon_lr'], low=0, low_open=True)
    check_range('muon_momentum', c['muon_momentum'], low=0, high=1, high_open=True)
    if c['optim'] == 'muon' and c['parallelism'] == 'fsdp':
        raise UserError("optim='muon' orthogonalises whole matrices, which FSDP shards; use parallelism='ddp' or "
                        "optim='adamw'")
    if c['compile'] not in ('auto', True, False):
        raise UserError(f"compile must be True, False or 'auto', got {c['compile']!r}")


def check_world(c, world_size):
    """What must divide among torchrun's processes (checked before joining their group)."""
    accum, micro, start = c['gradient_accumulation_steps'], c['batch_size'] * c['block_size'], c['batch_ramp_start']
    if accum % world_size:
        raise UserError(f"gradient_accumulation_steps ({accum}) must be divisible by the number of processes "
                        f"({world_size}); e.g. --gradient_accumulation_steps={max(1, accum // world_size) * world_size}")
    if start and round(start / micro) < world_size:
        raise UserError(f"batch_ramp_start={start} tokens is {round(start / micro)} micro-batches of {micro}: fewer "
                        f"than the {world_size} processes, each of which needs one; raise it to {world_size * micro}")


def check_device(c, device_type, dtype, fsdp, torch_version):
    """The settings that depend on the device and dtype chosen."""
    if c['optim'] == 'muon' and dtype == 'float16':
        raise UserError("optim='muon' with float16 loss scaling is not supported; use dtype='bfloat16' or 'float32'")
    if fsdp and device_type == 'cpu' and TorchVersion(torch_version) < (2, 7):  # (its CPU streams lack record_event)
        raise UserError(f"FSDP on the CPU needs PyTorch 2.7 or newer, found {torch_version}: use "
                        f"--parallelism=ddp, or upgrade torch")


def choose_compile(compile, device_type, torch_version):
    """(compile or not, a note for the log) for the compile setting on this device."""
    note = ''
    if compile == 'auto':
        # A GPU gains far more than the compile costs. On a CPU the compiled step of a small model is ~1.05-1.2x
        # faster (bench.py --compare=True), while a cold compile (empty inductor cache) costs 30-60 s: eager
        # wins unless the run is long; --compile=True for those (a second run finds the cache warm: ~6 s).
        compile = device_type == 'cuda'
        note = f"compile='auto': {'compiling' if compile else 'eager'} on {device_type}"
    if device_type != 'cuda':
        compile = compile and device_type == 'cpu'  # inductor has no MPS backend worth using yet
    if compile and device_type == 'cpu' and TorchVersion(torch_version) < (2, 7):
        # (measured: torch 2.6's C++ inductor gave the tied embedding of a 2-layer GPT-2 a gradient 67% off eager's
        # and aot_eager's, whose losses then drift; 2.7.0, 2.7.1 and 2.8.0 match eager to 1e-6)
        raise UserError(f"compile=True on the CPU needs PyTorch 2.7 or newer, found {torch_version} (its compiled "
                        f"backward is wrong for this model): use --compile=False, or upgrade torch")
    return compile, note
