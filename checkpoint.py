"""
Checkpoints: written atomically, loaded safely, and the one loader (load_model) that every script uses
to get a model by init_from: scratch, resume, a hub name or a Hugging Face directory.

A checkpoint is a torch.save'd dict of tensors and plain data only, so it loads with
torch.load(weights_only=True): a file from someone else cannot run code. Layout:
    format        CHECKPOINT_FORMAT
    model_args    GPTConfig fields
    model         state dict (HF GPT-2 names)
    optimizer     AdamW state dict;  scaler: GradScaler state dict (float16 runs)
    iter_num      the next iteration to run;  best_val_loss;  is_best: this state is best.pt's
    config        the resolved training config (plain values)
    data_meta     the dataset's meta.json (tokenizer, vocabulary; a trained BPE's tokenizer.json in
                  tokenizer_json): all that decoding the run's tokens needs
    rng           torch CPU/CUDA, numpy and python RNG states
A karpathy/nanoGPT ckpt.pt is converted to this layout as it loads (import_nanogpt; imported_from='nanoGPT').
"""

import os
import random
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import asdict, fields

import numpy as np
import torch

import hf
from configurator import UserError
from model import GPT, GPTConfig
from tokendata import ROOT, read_meta_pkl

CHECKPOINT_FORMAT = 'gpt-checkpoint/1'


def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not allow opening directories; the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(d):
    """Delete temp files a killed save left behind in d (ckpt.pt.<random>.tmp, best.pt.tmp). They are
    never read (only complete files are renamed into place), so this only frees the space."""
    for name in os.listdir(d):
        if '.pt.' in name and name.endswith('.tmp'):
            try:
                os.unlink(os.path.join(d, name))
            except OSError:
                pass


def save_checkpoint(obj, path):
    """torch.save to a temp file in the same directory, fsync, then rename over `path`: a crash or a
    full disk at any moment leaves either the old or the new checkpoint, never a torn one."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        remove_stale_temps(d)
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + '.', suffix='.tmp', dir=d)
    except OSError as e:
        raise UserError(f"cannot write checkpoint in {d}: {e.strerror}; check that out_dir is writable") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes the file private (0600); give it torch.save's usual mode
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        # torch.save reports a failed write (e.g. a full disk) as a RuntimeError, not an OSError
        if isinstance(e, (OSError, RuntimeError)):
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][:160]
            free = shutil.disk_usage(d).free / 1e6
            raise UserError(f"could not write checkpoint {path} ({reason}; {free:.1f} MB free in {d}); "
                            f"the previous checkpoint is untouched: free some space, then resume") from None
        raise
    fsync_dir(d)


def link_checkpoint(src, dst):
    """Make dst the same file as src (a hard link: no copy), atomically; copies where links fail."""
    tmp = dst + '.tmp'
    try:
        if os.path.exists(tmp):
            os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, 'rb+') as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    except OSError as e:
        raise UserError(f"could not update {dst} ({e.strerror}); {src} is complete and holds the same state") from None
    fsync_dir(os.path.dirname(os.path.abspath(dst)))


def load_checkpoint(path, map_location='cpu'):
    """Load a checkpoint written by train.py, refusing anything that is not plain data."""
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickle protocols before refusing them
            warnings.simplefilter('ignore')
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        # weights_only=True refuses to import any function or class, so nothing in the file has run
        found = re.search(r'GLOBAL ([\w.]+)', str(e))
        if found:
            raise UserError(f"refusing to load {path}: it holds Python objects ({found.group(1)}), not just tensors "
                            f"and plain data; only a checkpoint written by train.py can be loaded") from None
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is truncated or corrupt ({first}); "
                        f"use an earlier checkpoint (e.g. best.pt) or start again") from None
    if isinstance(ckpt, dict) and 'format' not in ckpt and NANOGPT_KEYS <= set(ckpt):
        ckpt = import_nanogpt(ckpt, path)
    if not isinstance(ckpt, dict) or ckpt.get('format') != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a checkpoint written by this repository's train.py "
                        f"(for Hugging Face weights use --init_from=<hf dir or hub name>)")
    missing = [k for k in ('model', 'model_args', 'iter_num', 'best_val_loss') if k not in ckpt]
    if missing:
        raise UserError(f"{path} is incomplete (no {', '.join(missing)}); use an earlier checkpoint or start again")
    return ckpt


# ---------------------------------------------------------------------- nanoGPT runs

NANOGPT_KEYS = {'model_args', 'model', 'optimizer', 'iter_num', 'best_val_loss', 'config'}
# settings of the machine and the session, not of the run: a resume takes the rest of nanoGPT's config
# (batch, schedule, data, model) as its own, but runs these as this machine's defaults or flags say
NANOGPT_MACHINE_KEYS = {'device', 'dtype', 'compile', 'backend', 'out_dir', 'init_from', 'eval_only',
                        'wandb_log', 'wandb_project', 'wandb_run_name'}


def nanogpt_data_meta(path, config, vocab_size):
    """The tokenizer of a nanoGPT run, found as nanoGPT's sample.py finds it: the dataset's meta.pkl
    (character-level), else GPT-2's BPE. Also looks beside the checkpoint, where a user can copy it."""
    dataset = str(config.get('dataset', ''))
    candidates = [os.path.join(os.path.dirname(os.path.abspath(path)), 'meta.pkl')]
    if dataset:
        candidates += [os.path.join('data', dataset, 'meta.pkl'), os.path.join(ROOT, 'data', dataset, 'meta.pkl')]
    found = next((p for p in candidates if os.path.isfile(p)), None)
    if found:
        return read_meta_pkl(found), f"characters from {found}"
    if vocab_size >= 50257:  # nanoGPT's GPT-2 runs: 50257 ids padded to 50304
        return {'tokenizer': 'gpt2', 'vocab_size': 50257}, "GPT-2 BPE (no meta.pkl, as nanoGPT assumes)"
    where = ' or '.join(dict.fromkeys(candidates))
    return {'tokenizer': None, 'missing': f"the nanoGPT run {path} has {vocab_size} token ids but no meta.pkl to decode "
                                          f"them (looked in {where}): copy its dataset's meta.pkl beside the checkpoint"}, \
        "none found (sampling needs its meta.pkl)"


def import_nanogpt(raw, path):
    """A karpathy/nanoGPT ckpt.pt (loaded weights-only: it is dicts, tensors and numbers) as our checkpoint.

    nanoGPT's model is ours with exact GELU, LayerNorm eps 1e-5 and the same parameter names and order
    (so its AdamW state, two groups by dimension, loads as it is); it saves the torch.compile wrapper's
    names ('_orig_mod.'), no RNG state and best_val_loss as a tensor. Its GPT-2 runs pad 50257 ids to 50304
    rows: we keep vocab_size at the tokenizer's 50257 and pad the rows, so sampling never picks a pad row."""
    args = raw['model_args']
    data_meta, tokenizer_note = nanogpt_data_meta(path, raw['config'], args['vocab_size'])
    rows = args['vocab_size']
    vocab = data_meta.get('vocab_size', rows)
    pad = next((m for m in (1, 64, rows) if vocab <= rows and -(-vocab // m) * m == rows), None)
    if pad is None:
        raise UserError(f"the nanoGPT run {path} has {rows} embedding rows, fewer than its tokenizer's {vocab} ids")
    model_args = dict(n_layer=args['n_layer'], n_head=args['n_head'], n_embd=args['n_embd'],
                      block_size=args['block_size'], bias=args['bias'], vocab_size=vocab, pad_vocab_multiple=pad,
                      dropout=args.get('dropout', 0.0), gelu_approx='none', layer_norm_eps=1e-5, post_norm=False)
    # the causal-mask buffer nanoGPT registers when flash attention is missing (torch < 2) is not a weight
    model_sd = {k: v for k, v in strip_wrappers(raw['model']).items() if not k.endswith('.attn.bias')}
    best = raw['best_val_loss']
    if int(os.environ.get('RANK', '0') or 0) == 0:
        print(f"note: {path} is a nanoGPT checkpoint (iteration {raw['iter_num']}); imported it: "
              f"exact GELU, tokenizer {tokenizer_note}. The next save writes this repository's format.",
              file=sys.stderr, flush=True)
    return dict(format=CHECKPOINT_FORMAT, imported_from='nanoGPT', model_args=model_args, model=model_sd,
                optimizer=raw['optimizer'], scaler=None, iter_num=int(raw['iter_num']),
                best_val_loss=float(best), data_meta=data_meta,
                config={k: v for k, v in raw['config'].items() if k not in NANOGPT_MACHINE_KEYS},
                nanogpt_config=dict(raw['config']),
                # nanoGPT keeps no RNG state; the present one makes restoring it change nothing (batches and
                # dropout are seeded per step here anyway)
                rng=rng_state())


def strip_wrappers(state_dict):
    """Remove the prefixes torch.compile ('_orig_mod.') and DDP ('module.') add to parameter names."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ('_orig_mod.', 'module.'):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def model_from_checkpoint(ckpt, **overrides):
    """Build the GPT a checkpoint describes and load its weights (overrides: e.g. dropout)."""
    if ckpt.get('lora'):
        return lora_model_from_checkpoint(ckpt, **overrides)
    known = {f.name for f in fields(GPTConfig)}
    args = dict(ckpt['model_args'])
    unknown = sorted(set(args) - known)
    if unknown:
        raise UserError(f"checkpoint has model settings this model.py does not know: {', '.join(unknown)}")
    args.update(overrides)
    try:
        model = GPT(GPTConfig(**args))
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        model.load_state_dict(strip_wrappers(ckpt['model']))
    except RuntimeError as e:
        # torch's message is a header line, then one line per problem: report the first problem
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise UserError(f"checkpoint weights do not fit its model settings: {lines[min(1, len(lines) - 1)][:200]} "
                        f"(the checkpoint is corrupt or was edited)") from None
    return model


def lora_model_from_checkpoint(ckpt, **overrides):
    """A LoRA run's checkpoint holds only what it trained (lora.py) and the name of its base: the base is loaded
    as init_from loads it (a hub name, an HF directory or another run), grown and cropped as the run had it, and
    the adapters put on and filled. One line if the base is missing or is no longer the one the run trained on."""
    import lora
    from heads import add_tokens
    spec, args = ckpt['lora'], ckpt['model_args']
    free = {k: v for k, v in overrides.items() if k in ('dropout', 'attn_impl')}
    free.setdefault('dropout', args.get('dropout', 0.0))
    try:
        model, _, _ = load_model(spec['base'], block_size=args['block_size'], **free)
    except UserError as e:
        raise UserError(f"this LoRA run's base {spec['base']!r} cannot be loaded: {e}") from None
    if lora.is_lora(model):  # the base is itself a LoRA run: its adapters are part of this run's base
        lora.strip(model)
    if model.config.vocab_size < args['vocab_size']:  # tokens the run added (chat or task tokens)
        model = add_tokens(model, args['vocab_size'] - model.config.vocab_size)[0]
    arch = {k: v for k, v in asdict(model.config).items() if k not in ('dropout', 'attn_impl')}
    changed = [k for k, v in arch.items() if args.get(k, v) != v]
    if changed or abs(lora.fingerprint(model) - spec['base_check']) > 1e-6 * (1 + abs(spec['base_check'])):
        what = f"{changed[0]}={arch[changed[0]]!r}, the run had {args[changed[0]]!r}" if changed else "other weights"
        raise UserError(f"this LoRA run's base {spec['base']!r} is not the model it was trained on ({what})")
    lora.apply(model, spec['rank'], spec['alpha'], spec['dropout'], spec['targets'], spec.get('train', ()))
    model.lora_settings = dict(spec)
    sd = strip_wrappers(ckpt['model'])
    trained = lora.trained_state(model)
    if set(sd) != set(trained) or any(sd[k].shape != v.shape for k, v in trained.items()):
        raise UserError("this LoRA checkpoint's tensors do not fit its settings (it is corrupt or was edited)")
    model.load_state_dict(sd, strict=False)
    return model


def rng_state():
    np_state = np.random.get_state()
    return {
        'torch': torch.get_rng_state(),
        # this process's GPU only: a run may resume on another number of GPUs (dropout masks are reseeded at
        # every micro-step, so nothing depends on it; it is kept for code that draws from it)
        'cuda': torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        # numpy's state holds an ndarray; stored as a tensor to stay weights_only-loadable
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        'python': random.getstate(),
    }


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    cuda = state.get('cuda')
    if isinstance(cuda, list):  # older checkpoints: one state per GPU the saving process could see
        cuda = cuda[0] if cuda else None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)
    name, keys, *rest = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state['python']))


INIT_FROM = (f"'scratch', 'resume', a training run's out_dir, a hub model ({', '.join(hf.HF_HUB_MODELS)}) or a local "
             f"Hugging Face directory")


def find_checkpoint(out_dir, ckpt_name='ckpt.pt'):
    """out_dir/ckpt_name, falling back to out_dir/ckpt.pt (the latest state), or one line saying what to do."""
    candidates = [os.path.join(out_dir, name) for name in dict.fromkeys((ckpt_name, 'ckpt.pt'))]
    path = next((p for p in candidates if os.path.exists(p)), None)
    if path is None:
        raise UserError(f"no checkpoint at {' or '.join(candidates)}: train with --init_from=scratch first, "
                        f"or point --out_dir at a training run")
    return path


def load_model(init_from, out_dir='out', ckpt_name='ckpt.pt', scratch=None, block_size=0, expect=None, ckpt=None,
               **overrides):
    """The one way scripts get a model: returns (model on the CPU, data_meta or None, ckpt or None).

    init_from: 'scratch' (a new GPT with the GPTConfig fields in the dict scratch), 'resume'
    (out_dir/ckpt_name, falling back to out_dir/ckpt.pt; or ckpt, a checkpoint already loaded), another
    run's out_dir (its best.pt's weights), a Hugging Face hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl,
    openai-gpt), a local transformers directory, or a peft LoRA adapter directory (on the base it names).
    overrides: GPTConfig fields that leave the weights' meaning alone (dropout, attn_impl, ...).
    block_size: run at this context (0 keeps the model's; see GPT.crop_block_size).
    expect: architecture settings the user asked for explicitly, which a resumed checkpoint must have.
    """
    meta = None
    try:
        if init_from == 'scratch':
            if scratch is None:
                raise UserError("init_from='scratch' needs model settings; this script loads trained models: "
                                f"use {INIT_FROM.split(', ', 1)[1]}")
            model = GPT(GPTConfig(**{**scratch, **overrides}))
        elif init_from == 'resume':
            if ckpt is None:
                path = find_checkpoint(out_dir, ckpt_name)
                ckpt = load_checkpoint(path, map_location='cpu')
                ckpt['path'] = path
            for k, v in (expect or {}).items():
                if ckpt['model_args'].get(k) != v:
                    raise UserError(f"the checkpoint in {out_dir} has {k}={ckpt['model_args'].get(k)} but you asked "
                                    f"for {k}={v}; drop that setting to resume, or use a new --out_dir")
            model, meta = model_from_checkpoint(ckpt, **overrides), ckpt.get('data_meta')
        elif os.path.isdir(init_from) and any(os.path.exists(os.path.join(init_from, n)) for n in ('best.pt', 'ckpt.pt')):
            # another training run of ours: its weights (best.pt, else ckpt.pt) start this one
            path = find_checkpoint(init_from, 'best.pt')
            run = load_checkpoint(path, map_location='cpu')
            model, meta = model_from_checkpoint(run, **overrides), run.get('data_meta')
        elif os.path.isfile(os.path.join(init_from, 'adapter_config.json')):
            model, meta = load_peft_adapter(init_from, **overrides)
        elif init_from in hf.HF_HUB_MODELS or os.path.isdir(init_from):
            try:
                model = hf.from_pretrained(init_from, **overrides)
            except (ValueError, OSError) as e:
                raise UserError(f"cannot load {init_from!r}: {str(e).splitlines()[0]}") from None
            # GPT-2 models use tiktoken's GPT-2 BPE; GPT-1 and directories that ship a tokenizer use theirs
            own_tokenizer = init_from == 'openai-gpt' or any(
                os.path.exists(os.path.join(init_from, f)) for f in ('tokenizer.json', 'vocab.json', 'tokenizer_config.json'))
            meta = {'tokenizer': 'hf', 'name': init_from} if own_tokenizer else {'tokenizer': 'gpt2'}
            meta['vocab_size'] = model.config.vocab_size
        else:
            raise UserError(f"init_from={init_from!r}: expected {INIT_FROM}")
        if block_size:
            model.crop_block_size(block_size)
    except ValueError as e:
        raise UserError(str(e)) from None
    return model, meta, (ckpt if init_from == 'resume' else None)


def load_peft_adapter(path, **overrides):
    """A peft LoRA adapter directory (ours from export.py --adapter=True, or one peft trained on a GPT-2) on its
    base, which adapter_config.json names (base_model_name_or_path: a hub name or a directory): (model, meta)."""
    import json
    import lora
    with open(os.path.join(path, 'adapter_config.json'), encoding='utf-8') as f:
        base = json.load(f).get('base_model_name_or_path')
    if not base:
        raise UserError(f"the adapter {path} does not name its base model (base_model_name_or_path in "
                        f"adapter_config.json); set it to the hub name or directory it was trained on")
    model, meta, _ = load_model(base, **overrides)
    lora.strip(model)  # (a LoRA run of ours as the base: its own adapters are part of it)
    lora.load_adapter(model, path)
    model.lora_settings.update(base=base, train=[], base_check=lora.fingerprint(model))
    return model, meta


def check_resume_data(ckpt, data_meta, data_dir):
    """A resumed run continues on a dataset with the vocabulary it was trained on."""
    saved = (ckpt.get('data_meta') or {}).get('vocab_size')
    if saved is not None and saved != data_meta['vocab_size']:
        raise UserError(f"the checkpoint was trained on a dataset with vocab_size {saved}, "
                        f"but the one in {data_dir} has {data_meta['vocab_size']}")


# ---------------------------------------------------------------------- FSDP: full state dicts

def gather_full_state(model, optimizer):
    """(model, optimizer) state dicts of an FSDP-sharded model, gathered into the layout a
    single-process run saves (optimizer state keyed by parameter position, not name), so the
    checkpoint loads in one process and on any number of ranks. Every rank must call this (each
    tensor is all-gathered); rank 0 gets full CPU tensors, the other ranks get empty dicts."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=options)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=options)
    if not model_sd:
        return {}, {}
    # tied weights (wte/lm_head) come back as two copies; share one, as model.state_dict() does
    first = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        model_sd[name] = model_sd[first.setdefault(id(p), name)]
    # torch.optim numbers parameters 0, 1, ... across param_groups in order
    index = {}
    groups = [{**g, 'params': [index.setdefault(name, len(index)) for name in g['params']]}
              for g in optim_sd['param_groups']]
    return model_sd, {'state': {index[name]: s for name, s in optim_sd['state'].items()}, 'param_groups': groups}


ADAMW_KERNEL_KEYS = ('fused', 'foreach', 'capturable', 'differentiable')


def own_kernels(state, optimizer):
    """An AdamW state dict with the loading optimizer's kernel choice in every param group."""
    return {**state, 'param_groups': [{**saved, **{k: own[k] for k in ADAMW_KERNEL_KEYS if k in own}}
                                      for saved, own in zip(state['param_groups'], optimizer.param_groups)]
            + state['param_groups'][len(optimizer.param_groups):]}  # (a count mismatch is still reported)


def load_optimizer_state(model, optimizer, state):
    """Load an optimizer state dict as saved by train.py (single-process layout) into `optimizer`,
    which may be over FSDP-sharded parameters (then every rank calls this with the full dict and
    keeps its own shard). The kernel choice (fused, foreach, ...) stays the loading optimizer's: it belongs
    to this machine, not to the run (a nanoGPT run's non-fused AdamW resumes in train.py's fused one)."""
    from torch.distributed.tensor import DTensor
    if hasattr(optimizer, 'muon') != ('muon' in state):  # model.MuonAdamW's state is {'muon': ..., 'adamw': ...}
        raise UserError(f"the checkpoint's optimizer is {'Muon with AdamW' if 'muon' in state else 'AdamW'}, "
                         f"this run's is {'Muon with AdamW' if hasattr(optimizer, 'muon') else 'AdamW'}; "
                         f"resume with the optim setting the run had")
    if hasattr(optimizer, 'muon'):  # (never sharded: train.py refuses Muon under FSDP)
        optimizer.load_state_dict({'muon': state['muon'], 'adamw': own_kernels(state['adamw'], optimizer.adamw)})
        return
    state = own_kernels(state, optimizer)
    if not any(isinstance(p, DTensor) for p in model.parameters()):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    names = {id(p): name for name, p in model.named_parameters()}
    fqns = [names[id(p)] for g in optimizer.param_groups for p in g['params']]
    if [len(g['params']) for g in state['param_groups']] != [len(g['params']) for g in optimizer.param_groups]:
        raise ValueError("loaded state dict contains a parameter group that doesn't match the size of optimizer's group")
    named = {'state': {fqns[i]: s for i, s in state['state'].items()},
             'param_groups': [{**g, 'params': [fqns[i] for i in g['params']]} for g in state['param_groups']]}
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))
    for group, saved in zip(optimizer.param_groups, state['param_groups']):  # as saved (it turns tuples into lists)
        group.update({k: v for k, v in saved.items() if k != 'params'})
