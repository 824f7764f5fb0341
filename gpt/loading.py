"""
The one loader every script uses to get a model by init_from (load_model): 'scratch', 'resume' (out_dir's
checkpoint), another run's out_dir, a hub name (gpt2, gpt2-xl, openai-gpt, ...), a Hugging Face directory, or a
peft adapter directory; a LoRA run's checkpoint is rebuilt on its base. Reading the files is gpt/checkpoint.py's job.
"""

import json
import os
from dataclasses import asdict, fields

from gpt import hf
from gpt.checkpoint import KINDS, check_kind, load_checkpoint, strip_wrappers
from gpt.errors import UserError
from model import GPT, GPTConfig


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
    from gpt import lora
    from gpt.chat import add_tokens
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

    from gpt import lora
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
