"""
Measure training, inference and sampling speed, and compare variants side by side.

$ python bench.py                                          # train step of the baby-mini preset, random tokens
$ python bench.py --model=baby --batch_size=12 --compare=True
$ python bench.py --mode=forward --dataset=shakespeare_char
$ python bench.py --mode=sample --model=baby --block_size=1024 --max_new_tokens=500 --iters=3 --warmup=1 --compare=True
$ python bench.py --mode=sample --model=gpt2 --max_new_tokens=200 --iters=3 --warmup=1 --compare=True
$ python bench.py --init_from=resume --out_dir=out-shakespeare-char-cpu --dataset=shakespeare_char
$ python bench.py --model=gpt2 --device=cuda --batch_size=12 --compile=True    # one GPU
$ python bench.py --profile=True                           # also writes a chrome trace to out_dir
$ python bench.py --mode=eval --init_from=gpt2 --eval_tasks=suite --num_fewshot=5 --eval_data=data/eval   # vs lm_eval
$ python bench.py --mode=speedrun          # wall time to val 1.886: the CPU speedrun vs nanoGPT's CPU recipe
$ python bench.py --mode=memory --model=gpt2-medium    # peak memory of a training step: full, LoRA, + checkpointing

Modes: 'train' times one optimizer step (forward, backward, grad clip, AdamW, one host sync: the hot
path of train.py), 'forward' a no-grad forward with loss (what evaluation runs), 'sample' greedy
generation (one iteration = one new token for every row; tokens/s over the whole generation, and the time to the
first token and tokens/s after it in columns of their own), 'eval' HellaSwag scoring (eval_bench below),
'speedrun' whole training runs (speedrun_bench below), 'memory' the peak memory of training steps (memory_bench
below: full fine-tuning, LoRA, each with and without activation checkpointing). Each variant warms up (and
compiles) first; figures are medians over the timed iterations, with the process CPU time beside them (on a busy machine
the less disturbed figure for one thread). MFU is the model's FLOPs (model.flops_per_token) per second
over the device peak of the variant's compute dtype: the data sheet for known GPUs, a measured large
matmul on CPUs (for emulated bf16, the fp32 units' peak). dtype 'auto' is train.py's: bf16/fp16 on GPUs,
bf16 on CPUs with AMX, float32 on other CPUs.

--compare=True runs several variants in one process, taking turns (A, B, C, A, B, C, ...) so that a
change in machine load hits them alike, and reports each against the first (the baseline):
  train/forward: reference, eager+fp32, eager+bf16, compile+fp32, compile+bf16 (the bf16 ones only where
                 the CPU has fast bf16, AMX: elsewhere it is emulated, ~100x slower, and train.py never uses it)
  sample:        nocache, cache, hf, ctranslate2 (where the package is installed; else skipped, saying why)
or pick them with --variants=a,b,... where a variant is 'reference' (a plain nanoGPT-style eager fp32
loop, tools/bench_reference.py, with torch.optim.AdamW's defaults), 'hf' (transformers' GPT2LMHeadModel.generate on
the same weights, sample mode), 'ctranslate2' or 'ctranslate2+int8' (CTranslate2's Generator.generate_batch on the
same weights, converted once per process by its TransformersConverter with quantization float32 or int8; sample
mode), or our model with '+'-joined settings over the config's:
eager|compile, fp32|bf16|fp16, sdpa|explicit, forloop|foreach|fused (AdamW implementation),
cache|nocache, rowmajor|colmajor (sample: the weights as trained, without fastpath.decode_layout, or laid out
column-major by it instead of packed for oneDNN; and in sample mode compile is fastpath.compile_decoder, the
one-token step on a static cache), int8 (sample: quantize.quantize_int8),
cudagraph (sample, CUDA: fastpath.CUDAGraphDecoder, the step replayed from a CUDA graph), dense|local|alternating
(attention pattern, band attn_window), e.g.
--variants=reference,compile+bf16+fused or, for GPT-3's banded attention at long context,
$ python bench.py --model=baby --n_layer=2 --dropout=0 --block_size=2048 --batch_size=1 --variants=dense,local
"""

import copy
import itertools
import math
import os
import statistics
import sys
import tempfile
import time

import torch

import configurator
from gpt import hf
from gpt.decoding import prepare_for_decoding
from gpt.device import (autocast_ctx, cpu_has_fast_bf16, cpu_has_native_bf16, cpu_name, decode_dtype, device_peak_flops,
                        pick_device, pick_dtype, shut_down)
from gpt.engine import generate_stream
from gpt.errors import UserError
from gpt.fastpath import packing_pays
from gpt.loading import load_model
from gpt.optim import configure_optimizers, decay_groups
from gpt.tokendata import TokenData, dataset_dir
from model import PRESETS, cpu_training_avoids_sdpa
from tools.bench_reference import RefGPT

# -----------------------------------------------------------------------------
# config: overridden by a config file, then by --key=value
mode = 'train'              # 'train' (forward+backward+AdamW), 'forward' (no grad), 'sample' (generation), 'eval' (HellaSwag), 'speedrun'
model = 'baby-mini'         # preset for init_from='scratch' (python model.py lists them)
init_from = 'scratch'       # 'scratch' (random init of `model`), 'resume' (out_dir), a hub name or a local HF dir
out_dir = 'out'             # the run to load with init_from='resume'; profiler traces are written here
ckpt_name = 'ckpt.pt'       # checkpoint in out_dir for init_from='resume'
n_layer = 0                 # scratch: override the preset's size (0 keeps the preset's)
n_head = 0
n_embd = 0
vocab_size = 0
block_size = 0              # sequence length (scratch: also the model's context); 0 = the model's context
dropout = -1.0              # override the model's dropout (< 0 keeps it)
batch_size = 0              # rows per step; 0 = 12 for train/forward, 1 for sample
dataset = ''                # real data from data/<dataset>/ ('' = random tokens)
data_dir = ''               # real data from this directory instead
max_new_tokens = 200        # sample: tokens generated per iteration
eval_tasks = 'hellaswag'    # eval: eval.py's tasks or 'suite'
num_fewshot = 0             # eval: K, for every task (-1: each task's default)
eval_data = ''              # eval: a folder of <task>/<split>.jsonl folders, or one task's folder or file ('' = data/eval/)
eval_limit = 200            # eval: examples of each task scored per timed pass
hf_tokenizer = 'gpt2'       # eval, lm_eval variant: the harness's tokenizer (a hub name, a saved tokenizer, or a
                            # folder of GPT-2's encoder.json and vocab.bpe, as ../shared/data/gpt2 offline)
prompt_len = 8              # sample: prompt tokens
warmup = 3                  # untimed iterations per variant first (compilation happens here)
iters = 20                  # timed iterations per variant
rounds = 5                  # several variants: they take turns in this many rounds
compare = False             # run the mode's standard variants side by side (see the docstring)
variants = ''               # comma-separated variants to run ('' = this config alone, or the standard set)
learning_rate = 1e-3        # train: AdamW settings (only the work matters here, not the values)
weight_decay = 0.1
grad_clip = 1.0             # train: clip the global grad norm (as train.py); 0 disables
device = 'auto'             # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', ...
dtype = 'auto'              # 'auto' (as train.py: bf16/fp16 on GPUs, bf16 on AMX CPUs, else float32), 'float32', 'bfloat16', 'float16'
compile = False             # torch.compile our model
attn_impl = ''              # 'sdpa' or 'explicit' ('' keeps the model's)
attn_window = 256           # the band of the variant words 'local' and 'alternating' (GPT-3's banded attention)
threads = 0                 # torch.set_num_threads (0 = gpt/device.py's choice: the cores free of other work)
profile = False             # write a chrome trace per variant to out_dir (open in chrome://tracing or perfetto)
peak_flops = 0.0            # device peak FLOP/s for MFU; 0 looks it up (GPUs) or measures a matmul (CPU)
seed = 1337
speedrun_config = 'config/train_shakespeare_char_speedrun_1886.py'  # speedrun: our run (train.py with this config)
target_loss = 1.886         # speedrun: the val loss to reach (nanoGPT's README CPU result)
reference = 'auto'          # speedrun: 'auto' (../nanoGPT if it is there, else tools/bench_reference.py), 'builtin', or a nanoGPT checkout
runs = 3                    # speedrun: runs of each, taking turns
lora_rank = 8               # memory: the rank of the 'lora' variants (alpha = 2 * rank)
lora_targets = 'c_attn'     # memory: the layers the 'lora' variants adapt (gpt/lora.py)
memory_child = ''           # (memory: set on the fresh process that measures one variant)
# -----------------------------------------------------------------------------
config = configurator.configure(globals(), verbose=False)

STANDARD = {'train': 'reference,eager+fp32,eager+bf16,compile+fp32,compile+bf16',
            'forward': 'reference,eager+fp32,eager+bf16,compile+fp32,compile+bf16',
            'sample': 'nocache,cache,hf,ctranslate2',
            'eval': 'ours,lm_eval'}
DTYPES = {'fp32': 'float32', 'bf16': 'bfloat16', 'fp16': 'float16'}
OPTIMS = ('forloop', 'foreach', 'fused')
PATTERNS = ('dense', 'local', 'alternating')


# ----------------------------------------------------------------------------- set-up

def build_model(dev):
    """Our model (on dev, train mode) from a preset / explicit sizes or any init_from."""
    overrides = {}
    if dropout >= 0:
        overrides['dropout'] = dropout
    if attn_impl:
        overrides['attn_impl'] = attn_impl
    scratch = None
    if init_from == 'scratch':
        if model not in PRESETS:
            raise UserError(f"unknown preset {model!r}; choose one of: {', '.join(PRESETS)}")
        sizes = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab_size, block_size=block_size)
        scratch = {**PRESETS[model], **{k: v for k, v in sizes.items() if v}}
    m, _, _ = load_model(init_from, out_dir, ckpt_name, scratch=scratch, **overrides)
    return m.to(dev).train()


def batches(m, dev, B, T):
    """A few (X, Y) batches drawn before timing, cycled through by every variant alike."""
    if dataset or data_dir:
        data = TokenData(dataset_dir(dataset, data_dir)[0], T, B, dev, seed=seed, vocab_size=m.config.vocab_size)
        return [data.batch('train', i) for i in range(8)]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(8):
        xy = torch.randint(m.config.vocab_size, (B, T + 1), generator=g)
        out.append((xy[:, :-1].contiguous().to(dev), xy[:, 1:].contiguous().to(dev)))
    return out


def parse_variant(name, dev):
    """A variant name -> its settings; '+'-joined words override the config's."""
    if name.split('+')[0] == 'ctranslate2':  # CTranslate2's Generator on the same weights (sample mode)
        if mode != 'sample':
            raise UserError("variant 'ctranslate2' is for sample mode")
        if not set(name.split('+')[1:]) <= {'int8'} or name.count('+') > 1:
            raise UserError(f"variant {name!r}: ctranslate2 takes one word, int8 (ctranslate2 or ctranslate2+int8)")
        return dict(kind='ct2', dtype='float32', compile=False, attn='sdpa', optim='forloop', cache=True, pattern='',
                    layout='', int8='int8' in name, cudagraph=False)
    if name in ('reference', 'hf'):
        if name == 'reference' and mode == 'sample':
            raise UserError("variant 'reference' is for train/forward modes; in sample mode compare against 'hf'")
        if name == 'hf' and mode != 'sample':
            raise UserError("variant 'hf' is for sample mode")
        return dict(kind=name, dtype='float32', compile=False, attn='sdpa', optim='forloop', cache=True, pattern='',
                    layout='', int8=False, cudagraph=False)
    dt = (decode_dtype if mode == 'sample' else pick_dtype)(dtype, dev)  # (decoding's own rule: float32 on CPUs)
    v = dict(kind='ours', dtype=dt, compile=compile, attn=attn_impl, optim='', cache=True, pattern='', layout='',
             int8=False, cudagraph=False)
    for word in name.split('+'):
        if word == 'ours':
            pass  # the config as it is
        elif word in ('eager', 'compile'):
            v['compile'] = word == 'compile'
        elif word in DTYPES:
            v['dtype'] = DTYPES[word]
        elif word in ('sdpa', 'explicit'):
            v['attn'] = word
        elif word in PATTERNS:
            v['pattern'] = word
        elif word in OPTIMS:
            v['optim'] = word
        elif word in ('cache', 'nocache'):
            v['cache'] = word == 'cache'
        elif word in ('rowmajor', 'colmajor'):
            v['layout'] = word  # sample mode: the training layout of the weights (no decode_layout), or column-major
        elif word in ('int8', 'cudagraph'):
            if mode != 'sample':
                raise UserError(f"variant word {word!r} is for sample mode")
            if word == 'cudagraph' and not dev.startswith('cuda'):
                raise UserError("variant word 'cudagraph' needs --device=cuda")
            v[word] = True  # int8: quantize.quantize_int8; cudagraph: fastpath.CUDAGraphDecoder
        else:
            raise UserError(f"unknown variant word {word!r} in {name!r}: use reference, hf, or '+'-joined "
                            f"eager|compile, fp32|bf16|fp16, sdpa|explicit, {'|'.join(OPTIMS)}, cache|nocache, "
                            f"rowmajor|colmajor, int8, cudagraph, {'|'.join(PATTERNS)}")
    return v


def describe(v, c, dev):
    if v['kind'] == 'reference':
        return "plain eager fp32 loop, torch.optim.AdamW defaults"
    if v['kind'] == 'hf':
        return "transformers GPT2LMHeadModel.generate(do_sample=False, use_cache=True), fp32"
    if v['kind'] == 'ct2':
        import ctranslate2
        return (f"CTranslate2 {ctranslate2.__version__} Generator.generate_batch(sampling_topk=1), "
                f"{'int8' if v['int8'] else 'float32'} weights")
    attn = (v['attn'] or c.attn_impl) + (f" {v['pattern']}" if v['pattern'] else '') \
        + (f" (window {attn_window})" if v['pattern'] in ('local', 'alternating') else '')
    if (attn == 'sdpa' and mode == 'train' and dev.startswith('cpu')
            and cpu_training_avoids_sdpa(getattr(torch, v['dtype']), c.dropout)):
        attn = 'sdpa->explicit (CPU training in bf16 or with dropout)'
    dtype = v['dtype']
    if dtype == 'bfloat16' and dev == 'cpu' and not cpu_has_fast_bf16():
        dtype += ' (slow here: no AMX; train.py would use float32)'
    parts = [dtype, attn, 'compiled' if v['compile'] else 'eager']
    if mode == 'train':
        parts.append(f"AdamW {v['optim'] or 'as train.py'}")
    if mode == 'sample':
        parts.append('KV cache' if v['cache'] else 'no cache')
        if v['int8']:  # (which kernel its one-token steps take here: gpt/quantize.py)
            from gpt.quantize import gemv_pays
            one_row = dev.startswith('cpu') and batch_size <= 1 and not v['compile'] and gemv_pays()
            parts.append('int8 weights' + ' (compiled one-row kernel)' * one_row)
        parts += ['CUDA graph'] * v['cudagraph']
        if dev.startswith('cpu'):
            packed = packs(v) and not v['int8'] and packing_pays(batch_size)
            parts.append({'rowmajor': 'row-major weights', 'colmajor': 'column-major weights'}.get(
                v['layout'], 'oneDNN-packed weights' if packed else 'decode layout'))
    return ', '.join(parts)


def make_step(v, base, data, dev, prompt):
    """A function running one timed unit of variant v (with its own copy of the model), and the
    number of tokens that unit processes."""
    if v['kind'] == 'hf':
        return hf_generate_step(base, dev, prompt)
    if v['kind'] == 'ct2':
        return ct2_generate_step(base, dev, prompt, v['int8'])
    if v['kind'] == 'reference':
        if base.config.post_norm:
            raise UserError("variant 'reference' needs a pre-norm (GPT-2) model")
        m = RefGPT(base.config).to(dev)
        m.load_state_dict(base.state_dict())
    else:
        m = copy.deepcopy(base)
        for i, block in enumerate(m.transformer.h):
            block.attn.attn_impl = v['attn'] or block.attn.attn_impl
            if v['pattern']:  # GPT-3's banded attention on every layer ('local') or every other one
                local = v['pattern'] == 'local' or (v['pattern'] == 'alternating' and i % 2 == 1)
                block.attn.window = attn_window if local else 0
    m.train(mode == 'train')
    ctx = autocast_ctx(dev, v['dtype'])
    if mode == 'sample':
        return sample_step(m, v, ctx, dev, prompt)
    fwd = torch.compile(m) if v['compile'] else m
    B, T = data[0][0].shape
    batch = iter(data[i % len(data)] for i in itertools.count(1))
    if mode == 'forward':
        def step():
            X, Y = next(batch)
            with torch.no_grad(), ctx:
                _, loss = fwd(X, Y)
            loss.item()
        return step, B * T
    return train_step(m, fwd, v, ctx, dev, batch), B * T


def hf_generate_step(base, dev, prompt):
    """transformers' GPT2LMHeadModel.generate on our weights (exported and loaded back), greedy, cached."""
    if base.config.post_norm:
        raise UserError("variant 'hf' needs a pre-norm (GPT-2) model")
    if prompt.size(1) + max_new_tokens > base.config.block_size:
        raise UserError(f"variant 'hf': prompt_len + max_new_tokens ({prompt.size(1) + max_new_tokens}) exceeds "
                        f"block_size ({base.config.block_size}) and transformers' GPT-2 has no sliding window; "
                        f"use a longer --block_size or fewer --max_new_tokens")
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix='bench-') as tmp:
        hf.save_pretrained(base, tmp)
        theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp, **hf.float32_kwargs()).to(dev).eval()
    theirs.generation_config.eos_token_id = None  # always generate max_new_tokens, like ours
    theirs.generation_config.pad_token_id = 0
    mask = torch.ones_like(prompt)

    class FirstToken(transformers.StoppingCriteria):
        """Never stops; notes when the first new token is there (stopping criteria run after each token; a
        streamer would too, but transformers streams batch 1 only)."""
        def __init__(self):
            self.at = None

        def __call__(self, input_ids, scores, **kwargs):
            if self.at is None:
                self.at = time.perf_counter()
            return torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)

    def step():
        first, t0 = FirstToken(), time.perf_counter()
        out = theirs.generate(prompt, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                              use_cache=True, stopping_criteria=transformers.StoppingCriteriaList([first]))
        return out[:, prompt.size(1):], first.at - t0
    return step, max_new_tokens * prompt.size(0)


CT2_MODELS = {}  # (weights, int8) -> a CTranslate2 Generator: each variant's model is converted once per process


def ct2_generate_step(base, dev, prompt, int8):
    """CTranslate2's Generator on our weights (exported as a transformers directory, converted by its
    TransformersConverter with quantization float32 or int8), greedy, all max_new_tokens generated."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter
    if base.config.post_norm:
        raise UserError("variant 'ctranslate2' needs a pre-norm (GPT-2) model")
    if prompt.size(1) + max_new_tokens > base.config.block_size:
        raise UserError(f"variant 'ctranslate2': prompt_len + max_new_tokens ({prompt.size(1) + max_new_tokens}) "
                        f"exceeds block_size ({base.config.block_size}) and CTranslate2's GPT-2 has no sliding window; "
                        f"use a longer --block_size or fewer --max_new_tokens")
    V = base.config.vocab_size

    class Vocabulary:
        """What the converter reads from a tokenizer: one token string per id (<0>, <1>, ...): the benchmark
        feeds ids and reads ids, so the tokenizer never matters."""
        bos_token = eos_token = unk_token = '<0>'

        def get_vocab(self):
            return {f'<{i}>': i for i in range(V)}

    class Converter(TransformersConverter):
        def load_tokenizer(self, *args, **kwargs):
            return Vocabulary()

    key = (id(base), int8)
    if key not in CT2_MODELS:
        import transformers
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        with tempfile.TemporaryDirectory(prefix='bench-') as tmp:
            hf.save_pretrained(base, os.path.join(tmp, 'hf'))
            Converter(os.path.join(tmp, 'hf')).convert(os.path.join(tmp, 'ct2'),
                                                      quantization='int8' if int8 else 'float32', force=True)
            CT2_MODELS[key] = ctranslate2.Generator(os.path.join(tmp, 'ct2'), device=torch.device(dev).type,
                                                    inter_threads=1, intra_threads=torch.get_num_threads())
    generator = CT2_MODELS[key]
    start = [[f'<{i}>' for i in row] for row in prompt.tolist()]

    def step():
        first, t0 = [], time.perf_counter()
        # end_token=[]: no end token at all (the converter's would be suppressed until min_length, changing the
        # greedy tokens); the callback notes the first token (it runs once per token and row)
        out = generator.generate_batch(start, max_length=max_new_tokens, min_length=max_new_tokens, sampling_topk=1,
                                       include_prompt_in_result=False, end_token=[],
                                       callback=lambda _: first.append(time.perf_counter()) and False)
        return torch.tensor([r.sequences_ids[0] for r in out]), first[0] - t0
    return step, max_new_tokens * prompt.size(0)


def packs(v):
    """Does sample mode ask decode_layout to pack this variant's weights for oneDNN? (decoding.prepare_for_decoding's
    rule: not when compiled, which traces no oneDNN tensors, nor for bf16/fp16, which packed float32 does not serve.)"""
    return not v['layout'] and not v['compile'] and v['dtype'] == 'float32'


def sample_step(m, v, ctx, dev, prompt):
    """Greedy generation of max_new_tokens, set up by the recipe sample.py and serve.py take (gpt/decoding.py)."""
    if (v['compile'] or v['cudagraph']) and not v['cache']:
        raise UserError("variants 'compile'/'cudagraph' step on the KV cache; drop nocache")
    decoder, _ = prepare_for_decoding(m, v['dtype'], 'int8' if v['int8'] else 'none', prompt.size(0), v['compile'],
                                      v['cudagraph'], layout={'rowmajor': 'none', 'colmajor': 'colmajor'}.get(
                                          v['layout'], 'auto'))
    sync = torch.cuda.synchronize if dev.startswith('cuda') else (lambda: None)

    def step():
        tokens, t0 = [], time.perf_counter()
        with torch.inference_mode(), ctx:
            for token in generate_stream(m, prompt, max_new_tokens, temperature=0.0, use_cache=v['cache'],
                                         decoder=decoder):
                if not tokens:
                    first = time.perf_counter() - t0  # (the token is on the host: the engine read it)
                tokens.append(token)
        sync()
        return torch.cat(tokens, dim=1), first
    return step, max_new_tokens * prompt.size(0)


def train_step(m, fwd, v, ctx, dev, batch):
    """The hot path of train.py's loop: forward, backward, grad clip, AdamW, one host sync."""
    device_type = torch.device(dev).type
    if v['kind'] == 'reference':
        opt = torch.optim.AdamW(decay_groups(m.parameters(), weight_decay), lr=learning_rate, betas=(0.9, 0.99))
    else:
        # the fused AdamW kernel on CUDA and CPU, train.py's choice
        opt = configure_optimizers(m, weight_decay, learning_rate, (0.9, 0.99), device_type, verbose=False,
                                     fused=device_type in ('cuda', 'cpu'))
        if v['optim']:  # the same groups with the AdamW implementation asked for
            groups = [{'params': g['params'], 'weight_decay': g['weight_decay']} for g in opt.param_groups]
            impl = {'forloop': dict(foreach=False), 'foreach': dict(foreach=True), 'fused': dict(fused=True)}
            opt = torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.99), **impl[v['optim']])
    scaler = torch.amp.GradScaler(device_type, enabled=v['dtype'] == 'float16')

    def step():
        X, Y = next(batch)
        with ctx:
            _, loss = fwd(X, Y)
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(m.parameters(), grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        loss.item()  # train.py's one host sync per iteration
    return step


def peak_memory_mb(dev):
    """Peak memory: allocated on CUDA; the process's peak resident set elsewhere."""
    if dev.startswith('cuda'):
        return torch.cuda.max_memory_allocated(dev) / 2 ** 20
    try:
        import resource
    except ImportError:  # Windows
        return float('nan')
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == 'darwin' else rss / 2 ** 10  # bytes on macOS, KiB on Linux


def flops_per_unit_token(m, T, ctx_len):
    """Model FLOPs per token processed: training 6N + attention (model.flops_per_token); a forward
    pass is a third of it; a generated token is a forward at the context length it sees."""
    if mode == 'train':
        return m.flops_per_token(T)
    return m.flops_per_token(ctx_len if mode == 'sample' else T) / 3


# ----------------------------------------------------------------------------- main

def main():
    dev = pick_device(device)
    if mode == 'eval':
        return eval_bench(dev)
    if mode == 'speedrun':
        return speedrun_bench()
    if mode == 'memory':
        return memory_one(dev, memory_child) if memory_child else memory_bench(dev)
    names, specs = check_settings(dev)
    base = build_model(dev)
    B = batch_size or (1 if mode == 'sample' else 12)
    T = block_size or base.config.block_size
    if T > base.config.block_size:
        raise UserError(f"block_size={T} exceeds the model's context ({base.config.block_size})")
    if mode == 'sample' and prompt_len >= base.config.block_size:
        raise UserError(f"prompt_len ({prompt_len}) must be shorter than the context ({base.config.block_size})")
    data = batches(base, dev, B, T)
    prompt = data[0][0][:, :prompt_len]
    c = base.config
    shape = (f"{B} x {max_new_tokens} new tokens after a {prompt_len}-token prompt" if mode == 'sample'
             else f"batch {B} x block {T}")
    print(f"{mode}: {base.num_params() / 1e6:.2f}M params ({c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, "
          f"context {c.block_size}, vocab {c.vocab_size}, dropout {c.dropout}), {shape}, "
          f"{'real' if dataset or data_dir else 'random'} tokens, torch {torch.__version__}")
    hw = torch.cuda.get_device_name(dev) if dev.startswith('cuda') else cpu_name()
    print(f"device {dev}: {hw}, {torch.get_num_threads()} threads")
    steps, work = {}, {}
    for n in names:
        steps[n], work[n] = make_step(specs[n], base, data, dev, prompt)
    ctx_len = min(prompt_len + max_new_tokens / 2, c.block_size)  # mean context of a new token
    fpt = flops_per_unit_token(base, T, ctx_len)
    del base  # every variant has its own copy
    times, cpu_times, outputs, firsts = time_variants(names, specs, steps, dev)
    report(names, specs, times, cpu_times, work, fpt, c, dev, firsts)
    if mode == 'sample' and len(names) > 1:
        compare_outputs(names, outputs)
    if profile:
        write_traces(names, steps, dev)
    CT2_MODELS.clear()  # (CTranslate2's worker threads end now: destroyed at interpreter exit, they may abort it)


def check_settings(dev):
    """The variants to run, after checking the settings that need no model."""
    if mode not in ('train', 'forward', 'sample', 'eval', 'speedrun', 'memory'):
        raise UserError(f"mode must be 'train', 'forward', 'sample', 'eval', 'speedrun' or 'memory', got {mode!r}")
    if iters < 1 or warmup < 0 or rounds < 1 or max_new_tokens < 1 or prompt_len < 1:
        raise UserError("iters, rounds, max_new_tokens and prompt_len must be >= 1 and warmup >= 0")
    if profile:  # before the benchmark, not after it
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot write profiler traces to out_dir {out_dir!r} ({e.strerror})") from None
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    names = [s.strip() for s in (variants or (STANDARD[mode] if compare else 'ours')).split(',') if s.strip()]
    if len(set(names)) != len(names):
        raise UserError(f"variants are listed twice: {variants}")
    specs = {n: parse_variant(n, dev) for n in names}
    if not variants and dev == 'cpu' and not cpu_has_fast_bf16():
        # emulated bf16 runs ~100x slower than fp32 here: the standard set leaves it out (--variants=bf16 runs it)
        slow = [n for n in names if specs[n]['dtype'] == 'bfloat16']
        if slow:
            print(f"skipping {', '.join(slow)}: this CPU has no fast bf16 (AMX), so dtype 'auto' never uses it here")
        names = [n for n in names if n not in slow]
    absent = [n for n in names if specs[n]['kind'] == 'ct2'] and ct2_missing()
    if absent:  # (an optional package: the other variants still run)
        print(f"skipping {', '.join(n for n in names if specs[n]['kind'] == 'ct2')}: {absent}")
        names = [n for n in names if specs[n]['kind'] != 'ct2']
        if not names:
            raise UserError(f"no variant left to run: {absent}")
    return names, {n: specs[n] for n in names}


def ct2_missing():
    """Why the ctranslate2 variants cannot run here ('' if they can): the package is optional."""
    import importlib
    try:
        importlib.import_module('ctranslate2')
    except ImportError as e:  # (not installed, or its shared libraries missing)
        return f"the ctranslate2 package is not installed ({e}); pip install ctranslate2 to compare against it"
    return ''


def time_variants(names, specs, steps, dev):
    """Warm up (and compile) each variant, then let them take turns: A, B, C, A, B, C, ... so that a change
    in machine load hits them alike. Returns wall and process-CPU seconds per run, and the last outputs."""
    if dev.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats(dev)
    for n in names:
        t0 = time.perf_counter()
        for _ in range(warmup):
            steps[n]()
        if warmup and specs[n]['compile']:
            print(f"{n}: warm-up and compilation {time.perf_counter() - t0:.1f}s")
    n_rounds = min(rounds, iters) if len(names) > 1 else 1
    times = {n: [] for n in names}
    cpu_times = {n: [] for n in names}  # process CPU time: less sensitive to other load on the machine
    outputs = {}  # sample mode: the generated tokens, to check that the variants agree
    firsts = {n: [] for n in names}  # sample mode: seconds to the first new token of each run
    for r in range(n_rounds):
        k = iters // n_rounds + (r < iters % n_rounds)
        for n in names:
            for _ in range(k):
                c0, t0 = time.process_time(), time.perf_counter()
                outputs[n] = steps[n]()
                times[n].append(time.perf_counter() - t0)
                cpu_times[n].append(time.process_time() - c0)
                if isinstance(outputs[n], tuple):  # (a sample step's tokens and its time to the first)
                    outputs[n], first = outputs[n]
                    firsts[n].append(first)
    return times, cpu_times, outputs, firsts


def pct(share):
    """A share as a percentage with two decimals, or two significant digits below 0.01% (a tiny model against a
    chip's peak, e.g. decoding on an AMX CPU, is not 0.00%)."""
    v = share * 100
    return f"{v:.2f}" if v >= 0.01 or v <= 0 else f"{v:.{1 - math.floor(math.log10(v))}f}"


def report(names, specs, times, cpu_times, work, fpt, c, dev, firsts=None):
    """Medians per iteration (optimizer step / forward pass / new token), tokens/s, MFU and ratios; in sample mode
    tokens/s counts the whole generation, and the time to the first new token (the prompt's prefill) and tokens/s
    after it have their own columns."""
    mem = peak_memory_mb(dev)
    later = {}  # sample mode: variant -> (median ms to the first token, median tokens/s after it)
    for n in names if mode == 'sample' and max_new_tokens > 1 else ():
        if firsts and len(firsts[n]) == len(times[n]):
            rates = [work[n] * (max_new_tokens - 1) / max_new_tokens / max(t - f, 1e-9)
                     for t, f in zip(times[n], firsts[n])]
            later[n] = (statistics.median(firsts[n]) * 1000, statistics.median(rates))
    per = max_new_tokens if mode == 'sample' else 1
    peaks, rows = {}, []
    for n in names:
        med = statistics.median(times[n]) / per
        dt_name = specs[n]['dtype']
        if dt_name not in peaks:
            peaks[dt_name] = device_peak_flops(dev, getattr(torch, dt_name), override=peak_flops)
        tok_s = work[n] / per / med
        mfu = fpt * tok_s / peaks[dt_name]
        cpu = statistics.median(cpu_times[n]) / per
        rows.append((n, med, tok_s, mfu, min(times[n]) / per, max(times[n]) / per, cpu))
    unit = 'new token' if mode == 'sample' else ('optimizer step' if mode == 'train' else 'forward pass')
    if len(names) == 1:
        n, med, tok_s, mfu, lo, hi, cpu = rows[0]
        print(f"{n} ({describe(specs[n], c, dev)})")
        print(f"ms/iter {med * 1000:.3f} (one {unit}; median of {len(times[n])}, min {lo * 1000:.3f}, "
              f"max {hi * 1000:.3f})  tokens/s {tok_s:,.0f}  MFU {pct(mfu)}%  peak memory {mem:,.0f} MB  "
              f"cpu ms/iter {cpu * 1000:.3f}"
              + (f"  first token {later[n][0]:.1f} ms  after it {later[n][1]:,.0f} tokens/s" if n in later else ''))
    else:
        base_speed, base_cpu = rows[0][2], rows[0][6]
        w = max(len(n) for n in names + ['variant'])
        print(f"{'variant':<{w}} {'ms/iter':>9} {'tokens/s':>10} {'MFU':>7} {'vs ' + names[0]:>14} "
              f"{'cpu ms/iter':>11} {'(cpu)':>6}" + (f" {'1st token ms':>12} {'then tokens/s':>13}" if later else '')
              + "  settings")
        for n, med, tok_s, mfu, lo, hi, cpu in rows:
            print(f"{n:<{w}} {med * 1000:>9.3f} {tok_s:>10,.0f} {pct(mfu):>6}% {tok_s / base_speed:>13.2f}x "
                  f"{cpu * 1000:>11.3f} {base_cpu / cpu:>5.2f}x"
                  + (f" {later[n][0]:>12.2f} {later[n][1]:>13,.0f}" if n in later else ' ' * 27 * bool(later))
                  + f"  {describe(specs[n], c, dev)}")
        print(f"(one iteration = one {unit}; medians of {iters} timed iterations per variant in "
              f"{min(rounds, iters)} interleaved rounds after {warmup} warm-up; ratios are speed-ups over "
              f"{names[0]}, from wall time and from process CPU time; peak memory {mem:,.0f} MB for all variants "
              f"together)")
    for dt_name, p in peaks.items():
        how = 'data sheet' if dev.startswith('cuda') and not peak_flops else 'given' if peak_flops else 'measured matmul'
        if dev == 'cpu' and dt_name == 'bfloat16' and not peak_flops and not cpu_has_native_bf16():
            how = 'measured float32 matmul: bf16 is emulated in fp32 on this CPU'
        print(f"peak {dt_name}: {p / 1e9:,.1f} GFLOP/s ({how})")


# ----------------------------------------------------------------------------- eval mode

def eval_bench(dev):
    """Evaluation throughput (examples/s over all the tasks, reading and tokenizing included): 'ours' is eval.py's
    path (gpt/tasks.py: an example's choices packed in one row, its shared context run once, many examples a
    pass); 'lm_eval' is lm-evaluation-harness itself (`lm_eval --model hf`, in-process: gpt/harness.py) on the
    same weights, rows, tasks and K; 'hf' a plain transformers loop, one example's choices per padded forward
    pass, as llm.c and build-nanogpt score HellaSwag (choice tasks only). All pick the same choices: the metrics
    must agree. float32, no autocast (the harness's numbers)."""
    import transformers

    from gpt.tasks import SUITES, load_tasks, primary, run
    if threads:
        torch.set_num_threads(threads)
    names = [s.strip() for s in (variants or STANDARD['eval']).split(',') if s.strip()]
    if not names or set(names) - {'hf', 'ours', 'lm_eval'}:
        raise UserError(f"eval mode compares the variants ours, lm_eval and hf, got {variants!r}")
    base = build_model(dev).eval()
    if base.config.post_norm or base.config.vocab_size < 50257:
        raise UserError("eval mode needs a GPT-2 model (pre-norm, GPT-2 vocabulary): e.g. --init_from=gpt2 or --model=gpt2")
    task_names = [t for n in eval_tasks.split(',') if n.strip() for t in SUITES.get(n.strip(), (n.strip(),))]
    folders = {t: (os.path.join(eval_data, t) if os.path.isdir(os.path.join(eval_data, t)) else eval_data)
               for t in task_names} if eval_data else {}
    k = None if num_fewshot < 0 else num_fewshot
    load = lambda: load_tasks(task_names, {'tokenizer': 'gpt2'}, base.config.block_size, limit=eval_limit,
                              data=folders, num_fewshot=k, max_gen_toks=max_new_tokens)
    tasks = load()
    if 'hf' in names and any(not t.examples for t in tasks):
        raise UserError("the 'hf' loop scores choice tasks only: leave out lambada and generation tasks, or 'hf'")
    B = batch_size or 8
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    tmp = tempfile.TemporaryDirectory(prefix='bench-')
    hf.save_pretrained(base, tmp.name)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp.name, **hf.float32_kwargs()).to(dev).eval()

    def ours():
        return {t.name: run(base, t, B, dev) for t in load()}

    def harness():
        from gpt.harness import run_harness
        if not folders:
            raise UserError("the lm_eval variant reads local rows: --eval_data=folder of <task>/<split>.jsonl folders "
                            "(eval.py's data/eval/ after a download, or tools/eval_standins.py's)")
        out = run_harness(tmp.name, task_names, folders, num_fewshot=k, tokenizer=harness_tokenizer(tmp.name),
                          batch_size=B, device=dev, limit=eval_limit or None, max_gen_toks=max_new_tokens)
        harness.seconds = out['seconds']  # (simple_evaluate alone: its model and task index load are not timed)
        return {t.name: {ours_key(k): float(v) for k, v in out['results'][name].items() if 'stderr' not in k and ',' in k}
                for t, name in zip(tasks, task_names)}

    def ours_key(key):  # the harness's 'metric,filter' names as gpt/tasks.py's
        metric, filt = key.split(',')
        if metric == 'exact_match' and filt in ('strict-match', 'flexible-extract'):
            return f"exact_match_{filt.split('-')[0]}"
        return {'perplexity': 'ppl'}.get(metric, metric)

    @torch.no_grad()
    def hf_loop():
        out = {}
        for task in tasks:
            total = []
            for _, first, lengths in task.examples:
                reqs = task.requests[first:first + len(lengths)]
                tokens = torch.zeros(len(reqs), max(len(c) + len(x) for c, x in reqs), dtype=torch.long)
                mask = torch.zeros_like(tokens)
                for i, (c, x) in enumerate(reqs):
                    tokens[i, :len(c) + len(x)] = torch.tensor(c + x)
                    mask[i, len(c):len(c) + len(x)] = 1
                tokens, mask = tokens.to(dev), mask.to(dev)
                logits = theirs(tokens).logits[:, :-1]
                losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(),
                                                           reduction='none').view(len(reqs), -1) * mask[:, 1:]
                total.append(-losses.sum(1).double().cpu())
            ll = torch.cat(total)
            out[task.name] = task.metrics(torch.stack([ll, torch.tensor([len(x) for _, x in task.requests]).double(),
                                                       torch.zeros_like(ll)], 1))
        return out

    steps = {'ours': ours, 'hf': hf_loop, 'lm_eval': harness}
    n_examples = sum(len(t.examples) or len(t.requests) or len(t.prompts) for t in tasks)
    n_tok = [len(c) + len(x) - 1 for t in tasks for c, x in t.requests]
    print(f"eval: {base.num_params() / 1e6:.2f}M params, {', '.join(t.name for t in tasks)}: {n_examples} examples "
          f"({len(n_tok)} scored sequences, {sum(n_tok) / max(1, len(n_tok)):.0f} tokens each on average), "
          f"K={k if k is not None else 'per task'}, batches of {B}, torch {torch.__version__}")
    hw = torch.cuda.get_device_name(dev) if dev.startswith('cuda') else cpu_name()
    print(f"device {dev}: {hw}, {torch.get_num_threads()} threads")
    outputs, times = {}, {n: [] for n in names}
    for n in names:  # warm-up: one pass
        outputs[n] = steps[n]()
    for _ in range(iters if iters < 20 else 3):  # passes are long: 20 (the train default) would take a while
        for n in names:  # taking turns, so a change in machine load hits both alike
            t0 = time.perf_counter()
            steps[n]()
            times[n].append(harness.seconds if n == 'lm_eval' else time.perf_counter() - t0)
    speed = {n: n_examples / statistics.median(times[n]) for n in names}
    print(f"{'variant':<8} {'examples/s':>10} {'vs ' + names[0]:>10}  s/pass (median of {len(times[names[0]])})")
    for n in names:
        print(f"{n:<8} {speed[n]:>10.2f} {speed[n] / speed[names[0]]:>9.2f}x  {statistics.median(times[n]):.2f}")
    for n in names[1:]:  # every metric both report, per task
        a, b = outputs[names[0]], outputs[n]
        pairs = [(t, k, a[t][k], b[t][k]) for t in a for k in a[t] if k in b.get(t, {}) and k not in ('n',)
                 and not k.endswith('stderr')]
        differ = [f"{t}/{k} {x:.4f} vs {y:.4f}" for t, k, x, y in pairs if abs(x - y) > 1e-4 * max(1, abs(y))]
        print(f"same metrics, {names[0]} and {n}: {len(pairs) - len(differ)} of {len(pairs)}"
              + (f"; differ: {', '.join(differ)}" if differ else ''))
    print(f"mean of the primary metrics ({names[0]}): "
          f"{statistics.mean(primary(m) for m in outputs[names[0]].values() if primary(m) is not None):.4f}")
    tmp.cleanup()


def harness_tokenizer(tmp):
    """hf_tokenizer as the harness's HFLM takes it: a name or a saved tokenizer; a folder of GPT-2's plain BPE files
    (encoder.json, vocab.bpe) is made a transformers tokenizer, saved under tmp."""
    if os.path.isfile(os.path.join(hf_tokenizer, 'encoder.json')):
        import transformers
        tok = transformers.GPT2TokenizerFast(os.path.join(hf_tokenizer, 'encoder.json'),
                                             os.path.join(hf_tokenizer, 'vocab.bpe'))
        tok.save_pretrained(os.path.join(tmp, 'tokenizer'))
        return os.path.join(tmp, 'tokenizer')
    return hf_tokenizer


def compare_outputs(names, outputs):
    """Greedy decoding is deterministic, so fp32 variants should agree token for token; low precision
    and different kernels may flip near-ties."""
    ref = outputs[names[0]]
    differ = [n for n in names[1:] if not torch.equal(outputs[n].cpu(), ref.cpu())]
    if not differ:
        print("greedy outputs: identical in all variants")
    for n in differ:
        same = (outputs[n].cpu() == ref.cpu()).all(0).long()
        first = int(same.argmin()) if not same.all() else same.numel()
        print(f"greedy outputs: {n} departs from {names[0]} at new token {first}")


def write_traces(names, steps, dev):
    """A chrome trace per variant in out_dir, and the top operators by CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.startswith('cuda') else [])
    for n in names:
        with torch_profile(activities=acts, record_shapes=True) as prof:
            for _ in range(1 if mode == 'sample' else 3):
                steps[n]()
        path = os.path.join(out_dir, f"bench_trace_{mode}_{n.replace('+', '_')}.json")
        prof.export_chrome_trace(path)
        print(f"\n{n}: trace written to {path}")
        print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=12))


# ----------------------------------------------------------------------------- speedrun

def speedrun_bench():
    """Whole runs, side by side: wall time from launching the command to the evaluation line that first shows
    val loss <= target_loss, for our train.py with speedrun_config and for nanoGPT's README CPU recipe (nanoGPT
    itself from a checkout, or tools/bench_reference.py's plain copy of its loop). Runs take turns (ours, reference,
    ours, ...) so that a change in machine load hits both alike; a run is stopped once it reaches the target."""
    import re
    here = os.path.dirname(os.path.abspath(__file__))
    if not os.path.exists(os.path.join(here, speedrun_config)):
        raise UserError(f"speedrun_config {speedrun_config!r} not found")
    data = os.path.abspath(data_dir) if data_dir else os.path.join(here, 'data', 'shakespeare_char')
    if not os.path.exists(os.path.join(data, 'train.bin')):
        raise UserError(f"no train.bin in {data}: run python data/shakespeare_char/prepare.py")
    nanogpt = os.path.join(here, '..', 'nanoGPT') if reference == 'auto' else reference
    if reference == 'builtin' or (reference == 'auto' and not os.path.exists(os.path.join(nanogpt, 'train.py'))):
        ref = ([sys.executable, 'tools/bench_reference.py', f'--data_dir={data}'], here,
               'tools/bench_reference.py (nanoGPT recipe)')
    else:
        if not os.path.exists(os.path.join(nanogpt, 'data', 'shakespeare_char', 'train.bin')):
            raise UserError(f"nanoGPT at {nanogpt} has no data/shakespeare_char/train.bin: run its "
                            f"data/shakespeare_char/prepare.py (or use --reference=builtin)")
        ref = ([sys.executable, 'train.py', 'config/train_shakespeare_char.py', '--device=cpu', '--compile=False',
                '--eval_iters=20', '--log_interval=1', '--block_size=64', '--batch_size=12', '--n_layer=4',
                '--n_head=4', '--n_embd=128', '--max_iters=2000', '--lr_decay_iters=2000', '--dropout=0.0',
                f'--out_dir={tempfile.mkdtemp()}'], nanogpt, f'nanoGPT ({os.path.abspath(nanogpt)})')
    out = tempfile.mkdtemp()
    ours = ([sys.executable, 'train.py', speedrun_config, f'--out_dir={out}', f'--data_dir={data}',
             '--overwrite=True'], here,  # (each repeat replaces the last: a scratch folder)
            f'train.py {speedrun_config}')
    print(f"speedrun to val loss {target_loss}: {cpu_name()}, torch {torch.__version__}")
    results = {ours[2]: [], ref[2]: []}
    for r in range(runs):
        for cmd, cwd, name in (ours, ref):
            seconds, step, val = time_to_loss(cmd, cwd, re.compile(r'step (\d+): .*val loss ([\d.naif]+)'))
            results[name].append(seconds)
            print(f"run {r + 1}/{runs} {name}: " + (f"val {val:.4f} at step {step} after {seconds:.1f}s" if seconds
                                                    else f"did not reach it (last val {val} at step {step})"))
    med = {n: statistics.median(t) if all(t) else None for n, t in results.items()}
    for n, t in results.items():
        print(f"{n}: median {med[n]:.1f}s" if med[n] else f"{n}: did not always reach the target", f"(runs: {t})")
    if med[ours[2]] and med[ref[2]]:
        print(f"ours / reference: {med[ours[2]] / med[ref[2]]:.3f} (a third or less is the goal)")


def time_to_loss(cmd, cwd, pattern):
    """Launch cmd; return (seconds until it printed an eval line with val <= target_loss, its step, its val),
    stopping it there, or (None, last step, last val) if it ended first."""
    import subprocess
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    step = val = None
    tail = []
    for line in p.stdout:
        tail = (tail + [line])[-5:]
        m = pattern.search(line)
        if m:
            step, val = int(m.group(1)), float(m.group(2))
            if val <= target_loss:
                seconds = time.perf_counter() - t0
                p.kill()
                p.wait()
                return seconds, step, val
    if p.wait() != 0:
        raise UserError(f"{' '.join(cmd)} failed (exit {p.returncode}): {tail[-1].strip() if tail else ''}")
    return None, step, val


# ----------------------------------------------------------------------------- memory

MEMORY_VARIANTS = 'full,full+ckpt,lora,lora+ckpt'


def memory_bench(dev):
    """Peak memory of two training steps (forward, backward, AdamW: the second step holds the optimizer's moments
    and the activations at once) for each variant, each measured in a fresh process so that nothing another
    variant allocated counts: on CUDA torch.cuda.max_memory_allocated, elsewhere the process's peak resident set
    (which includes ~0.3-0.5 GB of torch itself: the 'start' column). Variants: full (every weight trained) or
    lora (rank lora_rank on lora_targets, the rest frozen), +ckpt for activation checkpointing."""
    import json
    import subprocess
    names = [n.strip() for n in (variants or MEMORY_VARIANTS).split(',') if n.strip()]
    bad = [n for n in names if n not in ('load', 'load_copy') and (not set(n.split('+')) <= {'full', 'lora', 'ckpt'}
                                                                   or ('full' in n) == ('lora' in n))]
    if bad:
        raise UserError(f"memory variants are full or lora, optionally +ckpt (e.g. {MEMORY_VARIANTS}), or load / "
                        f"load_copy (loading init_from, a Hugging Face directory); got {bad[0]!r}")
    if any(n.startswith('load') for n in names) and not os.path.isdir(init_from):
        raise UserError("the load variants measure loading a Hugging Face directory: pass --init_from=DIR")
    hw = torch.cuda.get_device_name(dev) if dev.startswith('cuda') else cpu_name()
    print(f"memory: preset {model}, batch {batch_size or 1}, block {block_size or 'the model context'}, dtype {dtype}, "
          f"device {dev} ({hw}), torch {torch.__version__}; each variant in a fresh process", flush=True)
    print(f"{'variant':<12} {'trained':>14} {'start MB':>9} {'weights MB':>11} {'peak MB':>9} {'step s':>7}",
          flush=True)
    for n in names:
        cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], f'--memory_child={n}']
        p = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in p.stdout.splitlines() if line.startswith('{')]
        if p.returncode != 0 or not lines:
            last = (p.stderr.strip().splitlines() or ['killed (out of memory?)'])[-1]
            print(f"{n:<12} failed (exit {p.returncode}): {last}", flush=True)
            continue
        r = json.loads(lines[-1])
        print(f"{n:<12} {r['trained']:>14,} {r['start_mb']:>9,.0f} {r['weights_mb']:>11,.0f} {r['peak_mb']:>9,.0f} "
              f"{r['step_s']:>7.1f}", flush=True)


def load_copy(path):
    """The loader hf.from_pretrained replaced, for comparison: transformers' model, then a randomly initialised
    GPT, then a copy of every tensor (two copies of the weights at the peak)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from model import GPT
    theirs = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()
    m = GPT(hf.config_from_hf(AutoConfig.from_pretrained(path)))
    with torch.no_grad():
        for k, v in m.state_dict().items():
            if k != 'lm_head.weight':
                v.copy_(theirs[k].t() if k.endswith(hf._CONV1D) else theirs[k])
    return m


def rss_mb(field):
    """VmRSS (resident now) or VmHWM (peak resident since the last reset_peak_rss) in MB, from /proc (Linux), or 0."""
    try:
        with open('/proc/self/status', encoding='utf-8') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0


def reset_peak_rss():
    """Start VmHWM again from the present resident set (Linux: clear_refs 5); elsewhere nothing."""
    import gc
    gc.collect()
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass


def memory_one(dev, name):
    """One variant of memory_bench, in this (fresh) process: prints one JSON line."""
    import json

    from gpt import lora
    parts = set(name.split('+'))
    cuda = dev.startswith('cuda')
    start = torch.cuda.memory_allocated(dev) / 2 ** 20 if cuda else peak_memory_mb(dev)
    torch.manual_seed(seed)
    if name.startswith('load'):  # hf.from_pretrained (meta device, one copy), or the earlier two-copy way
        t0 = time.perf_counter()
        m = build_model(dev) if name == 'load' else load_copy(init_from)
        peak = torch.cuda.max_memory_allocated(dev) / 2 ** 20 if cuda else peak_memory_mb(dev)
        print(json.dumps(dict(variant=name, trained=m.num_params(), start_mb=start, weights_mb=peak, peak_mb=peak,
                              step_s=time.perf_counter() - t0)), flush=True)
        return
    m = build_model(dev)
    dt = pick_dtype(dtype, dev)
    if 'lora' in parts:  # as train.py: the frozen matrices stored in the compute dtype (lora.cast_frozen)
        lora.apply(m, lora_rank, 2 * lora_rank, 0.0, lora_targets)
        if dt != 'float32':
            lora.cast_frozen(m, getattr(torch, dt))
    m.grad_checkpoint = 'ckpt' in parts
    weights = torch.cuda.memory_allocated(dev) / 2 ** 20 if cuda else rss_mb('VmRSS') or peak_memory_mb(dev)
    reset_peak_rss()  # the steps' peak, not building the model (random fp32 weights, then cast)
    ctx = autocast_ctx(dev, dt)
    device_type = torch.device(dev).type
    opt = configure_optimizers(m, weight_decay, learning_rate, (0.9, 0.99), device_type, verbose=False,
                                 fused=device_type in ('cuda', 'cpu'))
    B, T = batch_size or 1, block_size or m.config.block_size
    g = torch.Generator().manual_seed(seed)
    X = torch.randint(0, m.config.vocab_size, (B, T + 1), generator=g).to(dev)
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(2):
        with ctx:
            _, loss = m(X[:, :-1], X[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), grad_clip or 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    step = (time.perf_counter() - t0) / 2
    peak = torch.cuda.max_memory_allocated(dev) / 2 ** 20 if cuda else rss_mb('VmHWM') or peak_memory_mb(dev)
    trained = sum(p.numel() for p in m.parameters() if p.requires_grad)
    print(json.dumps(dict(variant=name, trained=trained, start_mb=start, weights_mb=weights, peak_mb=peak,
                          step_s=step)), flush=True)


if __name__ == '__main__':
    try:
        main()  # a UserError prints one line and exits 1 (configurator.py)
    finally:
        shut_down()
