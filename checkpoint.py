"""
Checkpoints: written atomically, loaded safely, and the one loader (load_model) that every script uses
to get a model by init_from: scratch, resume, a hub name or a Hugging Face directory.

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

import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, fields

import numpy as np
import torch

import hf
from configurator import UserError, command_line_keys
from model import GPT, GPTConfig
from tokendata import ROOT, check_same_tokenizer, read_meta_pkl

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


INIT_FROM = (f"'scratch', 'resume', a training run's out_dir, a hub model ({', '.join(hf.HF_HUB_MODELS)}) or a local "
             f"Hugging Face directory")


def find_checkpoint(out_dir, ckpt_name='ckpt.pt'):
    """out_dir/ckpt_name, or one line saying what to do. Only the default best.pt falls back to ckpt.pt (the
    latest state, e.g. of a run that has not improved on its first evaluation yet); any other name the user
    gives must exist: a typo never quietly loads another checkpoint."""
    path = os.path.join(out_dir, ckpt_name)
    if os.path.isfile(path):
        return path
    fallback = os.path.join(out_dir, 'ckpt.pt')
    if ckpt_name == 'best.pt' and os.path.exists(fallback):
        return fallback
    there = sorted(n for n in os.listdir(out_dir) if n.endswith('.pt')) if os.path.isdir(out_dir) else []
    if there:
        raise UserError(f"no checkpoint {path}; {out_dir} holds {', '.join(there)}: pass --ckpt_name=one of those")
    candidates = [os.path.join(out_dir, name) for name in dict.fromkeys((ckpt_name, 'ckpt.pt'))]
    raise UserError(f"no checkpoint at {' or '.join(candidates)}: train with --init_from=scratch first, "
                    f"or point --out_dir at a training run")


# ---------------------------------------------------------------------- what a checkpoint holds

# kind: what a checkpoint's model is for, so that every script refuses the wrong one in one line (check_kind).
# train.py, ppo.py and dpo.py write language models ('lm'), reward.py a reward model ('reward', a GPT and a
# scalar head: align.reward_checkpoint), finetune.py a task model ('finetune': a GPT and a classifier head).
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


def check_hf_kind(path):
    """A transformers directory of a task model (finetune.py --export: *ForSequenceClassification or
    *DoubleHeadsModel) is not a language model: its head would be dropped without a word."""
    try:
        with open(os.path.join(path, 'config.json'), encoding='utf-8') as f:
            archs = json.load(f).get('architectures') or []
    except (OSError, ValueError, AttributeError):
        return  # hf.from_pretrained reports an unreadable config.json
    heads = [a for a in archs if isinstance(a, str) and ('For' in a and not a.endswith('ForCausalLM')
                                                         or 'DoubleHeads' in a)]
    if heads:
        raise UserError(f"{path} holds a {heads[0]}, {KINDS['finetune']}, not a language model; it classifies "
                        f"and cannot generate: load it with transformers' AutoModelForSequenceClassification, or "
                        f"use the finetune.py run it came from (--predict=FILE)")


# ---------------------------------------------------------------------- one run per out_dir

_held_locks = {}  # real path of out_dir -> (pid, fd): this process's lock on it


def lock_out_dir(out_dir):
    """Take out_dir for this process: a second train.py writing into it (and overwriting this one's
    checkpoints, interleaving its log) stops with one line instead. flock on the directory itself: no file
    is created, and the OS releases it when the process ends however it ends (a SIGKILL included), so a
    killed run never leaves a stale lock behind. Held until the process exits (or release_out_dirs)."""
    import fcntl
    key = os.path.realpath(out_dir)
    if key in _held_locks and _held_locks[key][0] == os.getpid():
        return  # (this process already holds it: e.g. a script run twice in one interpreter, as tests do)
    try:
        fd = os.open(key, os.O_RDONLY)
    except OSError:
        return  # a directory that cannot be opened (some filesystems); the write probe reports real trouble
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"another process is training into {out_dir} right now; wait for it to finish (or stop it), "
                        f"or choose another --out_dir") from None
    except OSError:
        os.close(fd)
        return  # a filesystem without flock on directories (e.g. some network filesystems): no lock
    _held_locks[key] = (os.getpid(), fd)


def release_out_dirs():
    """Release this process's out_dir locks (a script's end does it anyway; for scripts run in-process)."""
    for key, (pid, fd) in list(_held_locks.items()):
        if pid == os.getpid():
            os.close(fd)
        del _held_locks[key]


RUN_FILES = ('ckpt.pt', 'best.pt')


def make_room(out_dir, overwrite, act=True):
    """Ready out_dir for a new run (not a resume) without losing the run it may hold, and keep the habit of
    rerunning a command: the old run (everything in out_dir) moves, untouched, to a sibling folder named by
    when it was last saved, <out_dir>.old-YYYYmmdd-HHMMSS; with overwrite its checkpoints, log and plot are
    deleted instead (the new log is not appended to the old one's). act=False: only say what would happen (the
    processes other than the one that writes). Returns a note for the log, or '' when out_dir holds no run."""
    found = [n for n in RUN_FILES if os.path.isfile(os.path.join(out_dir, n))]
    if not found:
        return ''
    if overwrite:
        for name in (*RUN_FILES, 'log.jsonl', 'loss.png') if act else ():
            try:
                os.unlink(os.path.join(out_dir, name))
            except FileNotFoundError:
                pass
        return f"note: --overwrite=True: deleted the run that was in {out_dir} ({', '.join(found)}, its log and plot)"
    saved = max(os.path.getmtime(os.path.join(out_dir, n)) for n in found)
    base = os.path.normpath(out_dir) if os.path.basename(os.path.normpath(out_dir)) not in ('.', '..') \
        else os.path.abspath(out_dir)
    stamp = f"{base}.old-{time.strftime('%Y%m%d-%H%M%S', time.localtime(saved))}"
    dest, n = stamp, 1
    while os.path.exists(dest):
        n += 1
        dest = f"{stamp}-{n}"
    if act:
        try:
            os.makedirs(dest)
            for name in sorted(os.listdir(out_dir)):  # a rename each: nothing is copied, nothing rewritten
                os.rename(os.path.join(out_dir, name), os.path.join(dest, name))
        except OSError as e:
            raise UserError(f"{out_dir} holds a run ({', '.join(found)}) that could not be moved aside to {dest} "
                            f"({e.strerror}; what was moved is there): continue it with --init_from=resume, "
                            f"replace it with --overwrite=True, or choose another --out_dir") from None
        fsync_dir(dest)
        fsync_dir(out_dir)
    return (f"note: {out_dir} held a run ({', '.join(found)}); moved it, untouched, to {dest} (to continue it: "
            f"--init_from=resume --out_dir={dest}; --overwrite=True replaces a run instead of keeping it)")


def load_model(init_from, out_dir='out', ckpt_name='ckpt.pt', scratch=None, block_size=0, expect=None, ckpt=None,
               kind='lm', **overrides):
    """The one way scripts get a model: returns (model on the CPU, data_meta or None, ckpt or None).

    init_from: 'scratch' (a new GPT with the GPTConfig fields in the dict scratch), 'resume'
    (out_dir/ckpt_name, falling back to out_dir/ckpt.pt; or ckpt, a checkpoint already loaded), another
    run's out_dir (its best.pt's weights), a Hugging Face hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl,
    openai-gpt), a local transformers directory, or a peft LoRA adapter directory (on the base it names).
    overrides: GPTConfig fields that leave the weights' meaning alone (dropout, attn_impl, ...).
    block_size: run at this context (0 keeps the model's; see GPT.crop_block_size).
    expect: architecture settings the user asked for explicitly, which a resumed checkpoint must have.
    kind: the kind of model the script needs (check_kind): a reward or task model is refused as a language model.
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
            check_kind(ckpt, ckpt.get('path', out_dir), kind)
            for k, v in (expect or {}).items():
                if ckpt['model_args'].get(k) != v:
                    raise UserError(f"the checkpoint in {out_dir} has {k}={ckpt['model_args'].get(k)} but you asked "
                                    f"for {k}={v}; drop that setting to resume, or use a new --out_dir")
            model, meta = model_from_checkpoint(ckpt, **overrides), ckpt.get('data_meta')
        elif os.path.isdir(init_from) and any(os.path.exists(os.path.join(init_from, n)) for n in ('best.pt', 'ckpt.pt')):
            # another training run of ours: its weights (best.pt, else ckpt.pt) start this one
            path = find_checkpoint(init_from, 'best.pt')
            run = load_checkpoint(path, map_location='cpu')
            check_kind(run, path, kind)
            model, meta = model_from_checkpoint(run, **overrides), run.get('data_meta')
        elif os.path.isfile(os.path.join(init_from, 'adapter_config.json')):
            model, meta = load_peft_adapter(init_from, **overrides)
        elif init_from in hf.HF_HUB_MODELS or os.path.isdir(init_from):
            if kind == 'lm' and os.path.isdir(init_from):
                check_hf_kind(init_from)
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
    check_same_tokenizer(ckpt.get('data_meta'), data_meta, ckpt.get('path', 'the checkpoint'), data_dir)


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


# ---------------------------------------------------------------------- resuming a run (every trainer)
# What makes a resume exact, shared by train.py, finetune.py, reward.py, ppo.py and dpo.py: each writes ckpt.pt
# atomically (save_checkpoint) with the weights, the optimizer state, the next step to run and the RNG states;
# its batches and dropout masks are functions of (seed, step), so the steps after a resume are the ones the run
# would have taken; SIGTERM or Ctrl-C ends the current step and saves (StopSignal); and the resume command may
# be bare, the settings not given again coming from the checkpoint (resume_settings).

def resume_settings(out_dir, config, given, script, resume_flag='--resume=True', per_launch=()):
    """The checkpoint of the run in out_dir, and a note for the log. Every setting of config (a script's
    resolved config; the caller updates its globals from it) that the command line did not set takes the run's
    value, so `python SCRIPT --resume=True --out_dir=X` continues the run as it was configured. A config file on
    the resume command changes nothing the run set either: it is usually the file the run started with (its
    values are in the checkpoint, with that launch's command-line overrides), so re-reading it could only undo
    those (its max_iters=5000 over the run's --max_iters=400); the note names each value it kept over the file's.
    given: the keys a config file or the command line set; script: the trainer that wrote the run (another's is
    refused); per_launch: settings of one launch, not of the run (e.g. stop after N steps), never taken from it.
    A run stopped before its first checkpoint has only its log's start record: its settings come from there,
    and it starts again from the beginning (the same steps); then the checkpoint returned is None."""
    path, log = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'log.jsonl')
    if os.path.exists(path):
        ckpt = load_checkpoint(path)
        ckpt['path'] = path
        check_trainer(ckpt, path, script)  # (another script's run: its settings would be misread)
        theirs = ckpt.get('config') or {}
        note = f"resuming {path} at step {ckpt['iter_num']} with the run's settings"
    else:
        starts = [e for e in read_records(log) if e.get('event') == 'start' and isinstance(e.get('config'), dict)]
        if not starts:
            raise UserError(f"{resume_flag} but there is no run in {out_dir} (no ckpt.pt): start one without "
                            f"{resume_flag}, or point --out_dir at the run to continue")
        ckpt, theirs, by = None, starts[0]['config'], starts[0].get('script', script)
        if by != script:
            raise UserError(f"{out_dir} holds a {by} run, not a {script} run: continue it with {by} (its settings "
                            f"and out_dir)")
        note = (f"{out_dir} holds a run stopped before its first checkpoint: starting it again from the beginning "
                f"(the same steps) with its settings")
    from_files = {k: config[k] for k in set(given) - command_line_keys(sys.argv[1:])}
    mine = (set(given) - set(from_files)) | set(per_launch) | {'resume'}
    config.update({k: v for k, v in theirs.items() if k in config and k not in mine})
    if ckpt is None and resume_flag.startswith('--init_from='):  # (train.py) starting again: from where it started
        config['init_from'] = theirs.get('init_from', 'scratch')
    changed = [f"{k}={config[k]!r} (the run had {theirs[k]!r})" for k in sorted(mine)
               if k in theirs and k not in ('resume', 'init_from') and theirs[k] != config[k]]
    note += f"; overridden here: {', '.join(changed) or 'none'}"
    kept = sorted(k for k, v in from_files.items() if k in theirs and config[k] != v)
    if kept:
        note += ("\nnote: kept the run's " + ', '.join(f"{k}={config[k]!r}" for k in kept) + " over the config "
                 "file's; to change them pass " + ' '.join(f"--{k}=..." for k in kept) + " on the command line")
    return ckpt, note


def read_records(path):
    """The entries of a run's log (one JSON object a line), skipping a line torn by a kill; [] if there is none."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def append_record(path, entry):
    """Append entry to a run's log (path, one JSON object a line). A run killed while writing a line leaves it
    torn, without its newline: the next line then starts on a line of its own, so every later entry still
    reads as JSON (readers skip the one torn line)."""
    with open(path, 'a+b') as f:
        torn = False
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b'\n'
        f.write((('\n' if torn else '') + json.dumps(entry) + '\n').encode())


class StopSignal:
    """SIGTERM (a preemption, torchrun's shutdown) or Ctrl-C: the trainer finishes its current step, saves a
    checkpoint and exits 0. The first signal puts back the default action, so a second one ends the process at
    once (e.g. if it hangs in a collective). Truthy once a signal came; len() counts them."""

    def __init__(self, announce=True, what='saving a checkpoint after this step'):
        import signal
        self.received, self.announce, self.what, self.signal = [], announce, what, signal
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        self.received.append(signum)
        for sig in (self.signal.SIGTERM, self.signal.SIGINT):
            self.signal.signal(sig, self.signal.SIG_DFL)
        if self.announce:  # os.write: print() is not safe inside a signal handler
            os.write(2, f"\n{self.signal.Signals(signum).name}: {self.what} (send it again to abort without "
                        f"saving)\n".encode())

    def __len__(self):
        return len(self.received)
