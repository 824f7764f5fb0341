"""
Checkpoint files: written atomically, loaded safely, their kinds, a nanoGPT checkpoint imported as it loads, and
the RNG and optimizer state a resume restores. Making a model from one is gpt/loading.py's job.

A checkpoint is a torch.save'd dict of tensors and plain data only, so it loads with
torch.load(weights_only=True): a file from someone else cannot run code. Layout:
    format        CHECKPOINT_FORMAT
    kind          'lm' (a language model), 'reward' (reward.py) or 'finetune' (finetune.py's task model): every
                  script refuses the wrong kind in one line (check_kind; absent in older files: 'lm')
    model_args    GPTConfig fields
    model         state dict (HF GPT-2 names)
    optimizer     AdamW state dict;  scaler: GradScaler state dict (float16 runs)
    iter_num      the next iteration to run;  best_val_loss;  is_best: this state is best.pt's
    config        the resolved training config (plain values)
    data_meta     the dataset's meta.json (tokenizer, vocabulary; a trained BPE's tokenizer.json in
                  tokenizer_json): all that decoding the run's tokens needs
    rng           torch CPU/CUDA (the GPU's of each rank), numpy and python RNG states (rng_state)
A karpathy/nanoGPT ckpt.pt is converted to this layout as it loads (import_nanogpt; imported_from='nanoGPT').
"""

import os
import random
import re
import shutil
import sys
import tempfile
import warnings

import numpy as np
import torch

from gpt.errors import UserError
from gpt.tokendata import ROOT, read_meta_pkl

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


def rng_state(device=None):
    """This process's RNG states: torch's CPU generator, numpy, python, and the CUDA generator of the device it
    trains on (device, e.g. 'cuda:1': that GPU's, which is not the current one unless torch.cuda.set_device made
    it so; None: the current GPU's; a CPU or MPS device: none). Under torch.distributed on GPUs every rank's
    CUDA state is gathered too ('cuda_ranks', in rank order), so every rank must call this; a resume on the
    same number of GPUs then gives each device its own back (set_rng_state)."""
    np_state = np.random.get_state()
    cuda, cuda_ranks = None, None
    if torch.cuda.is_available() and (device is None or str(device).startswith('cuda')):
        cuda = torch.cuda.get_rng_state(device or 'cuda')
        if torch.distributed.is_available() and torch.distributed.is_initialized() and device is not None:
            mine = cuda.to(device)  # (NCCL gathers device tensors)
            gathered = [torch.empty_like(mine) for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather(gathered, mine)
            cuda_ranks = [t.cpu() for t in gathered]
    return {
        'torch': torch.get_rng_state(),
        # the CUDA generator of this process's GPU (dropout masks are reseeded at every micro-step, so train.py's
        # steps do not depend on it; it is kept for code that draws from it)
        'cuda': cuda,
        'cuda_ranks': cuda_ranks,
        # numpy's state holds an ndarray; stored as a tensor to stay weights_only-loadable
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        'python': random.getstate(),
    }


def set_rng_state(state, device=None):
    """Restore rng_state's states; the CUDA one to the GPU this process trains on (device as for rng_state). Under
    torch.distributed each rank takes its own rank's CUDA state when the checkpoint has one per rank of a run on
    as many GPUs, else the saving process's."""
    torch.set_rng_state(state['torch'])
    cuda = state.get('cuda')
    if isinstance(cuda, list):  # older checkpoints: one state per GPU the saving process could see
        cuda = cuda[0] if cuda else None
    ranks = state.get('cuda_ranks')
    if ranks and torch.distributed.is_available() and torch.distributed.is_initialized() \
            and len(ranks) == torch.distributed.get_world_size():
        cuda = ranks[torch.distributed.get_rank()]
    if cuda is not None and torch.cuda.is_available() and (device is None or str(device).startswith('cuda')):
        torch.cuda.set_rng_state(cuda, device or 'cuda')
    name, keys, *rest = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state['python']))


# ---------------------------------------------------------------------- what a checkpoint holds

# kind: what a checkpoint's model is for, so that every script refuses the wrong one in one line (check_kind).
# train.py, ppo.py and dpo.py write language models ('lm'), reward.py a reward model ('reward', a GPT and a
# scalar head: rl.reward_checkpoint), finetune.py a task model ('finetune': a GPT and a classifier head).
KINDS = {'lm': 'a language model', 'reward': 'a reward model (reward.py)',
         'finetune': 'a task model (a classifier fine-tuned by finetune.py)'}
KIND_HINTS = {'reward': "it scores responses and cannot generate or be trained as a policy: use the SFT or policy "
                        "run it was trained from (ppo.py takes it as --reward_model)",
              'finetune': "it classifies and cannot generate: use finetune.py --out_dir=... --predict=FILE (or "
                          "--export=DIR), or the language-model run it was fine-tuned from"}
MADE_BY = {'lm': 'train.py', 'reward': 'reward.py', 'finetune': 'finetune.py'}


def checkpoint_kind(ckpt):
    """'lm', 'reward' or 'finetune' ('task' is read as 'finetune'). Checkpoints written before kinds were
    recorded are language models, unless they carry a classifier or reward head."""
    kind = ckpt.get('kind')
    if kind == 'task':
        return 'finetune'
    if kind is None:
        return 'finetune' if 'head' in ckpt else 'lm'
    return kind


def check_kind(ckpt, path, want='lm'):
    """One line unless the checkpoint at path holds a model of kind `want`."""
    kind = checkpoint_kind(ckpt)
    if kind != want:
        raise UserError(f"{path} is {KINDS.get(kind, repr(kind))}, not {KINDS.get(want, repr(want))}; "
                        + (KIND_HINTS.get(kind, '') if want == 'lm' else
                           f"make one with {MADE_BY.get(want)} (--init_from=<a language-model run>)"))


def check_trainer(ckpt, path, script):
    """A run is resumed by the script that made it: another's settings and state would be misread (train.py
    took finetune.py's eval_interval=0 and said 'eval_interval must be >= 1')."""
    kind = checkpoint_kind(ckpt)
    made_by = MADE_BY.get(kind) if kind != 'lm' else ckpt.get('trained_by') or 'train.py'
    if made_by != script:
        raise UserError(f"{path} is a {made_by} run, not a {script} run: continue it with {made_by} (its settings and "
                        f"out_dir)" + (f", or start a new {script} run from its weights with --init_from="
                                       f"{os.path.dirname(path) or '.'} --out_dir=<a new folder>" if kind == 'lm' else ''))


# ---------------------------------------------------------------------- FSDP: full state dicts

def gather_full_state(model, optimizer):
    """(model, optimizer) state dicts of an FSDP-sharded model, gathered into the layout a
    single-process run saves (optimizer state keyed by parameter position, not name), so the
    checkpoint loads in one process and on any number of ranks. Every rank must call this (each
    tensor is all-gathered); rank 0 gets full CPU tensors, the other ranks get empty dicts."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
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
