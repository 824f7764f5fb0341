"""
Hugging Face interchange: OpenAI's GPT-2 and GPT-1 weights (hub names or local directories written by
transformers' save_pretrained) into our GPT, and our GPT out to a directory transformers loads.

    from gpt import hf
    model = hf.from_pretrained('gpt2')              # OpenAI's 124M weights (downloads once)
    model = hf.from_pretrained('path/to/hf_dir')    # GPT2LMHeadModel / OpenAIGPTLMHeadModel directories
    hf.save_pretrained(model, 'out/hf')             # transformers.AutoModelForCausalLM.from_pretrained('out/hf')

Our state-dict names are GPT-2's, so the mapping is a transpose of the four Conv1D weights (HF stores
them (in, out)) and GPT-1's two embedding names. Every key and shape is checked. transformers is
imported here only, inside the functions that need it.
"""

import json
import os

import torch
import torch.nn as nn

from model import GPT, GPTConfig

# Hugging Face names of OpenAI's released checkpoints, and the preset each corresponds to.
HF_HUB_MODELS = {'gpt2': 'gpt2', 'gpt2-medium': 'gpt2-medium', 'gpt2-large': 'gpt2-large',
                 'gpt2-xl': 'gpt2-xl', 'openai-gpt': 'gpt1'}

_CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')


def config_from_hf(hf_config):
    """GPTConfig from a transformers GPT2Config / OpenAIGPTConfig, refusing variants we do not model."""
    if hf_config.model_type not in ('gpt2', 'openai-gpt'):  # first: other configs lack the GPT-2 field names
        raise ValueError(f"unsupported model_type {hf_config.model_type!r}: expected 'gpt2' or 'openai-gpt'")
    c = hf_config
    common = dict(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                  n_embd=c.n_embd, dropout=0.0, bias=True, layer_norm_eps=c.layer_norm_epsilon)
    if not getattr(hf_config, 'tie_word_embeddings', True):
        raise ValueError("this checkpoint has untied input/output embeddings, which this GPT does not model")
    if hf_config.model_type == 'openai-gpt':
        if hf_config.afn != 'gelu':
            raise ValueError(f"unsupported GPT-1 activation {hf_config.afn!r} (only 'gelu')")
        # GPT-1's "gelu" is the tanh approximation (OpenAI's finetune-transformer-lm; HF maps it to gelu_new)
        return GPTConfig(post_norm=True, gelu_approx='tanh', **common)
    acts = {'gelu_new': 'tanh', 'gelu_pytorch_tanh': 'tanh', 'gelu': 'none'}
    if hf_config.activation_function not in acts:
        raise ValueError(f"unsupported GPT-2 activation {hf_config.activation_function!r}")
    for flag in ('scale_attn_by_inverse_layer_idx', 'reorder_and_upcast_attn', 'add_cross_attention'):
        if getattr(hf_config, flag, False):
            raise ValueError(f"unsupported GPT-2 variant: {flag}=True")
    if not getattr(hf_config, 'scale_attn_weights', True):
        raise ValueError("unsupported GPT-2 variant: scale_attn_weights=False")
    return GPTConfig(post_norm=False, gelu_approx=acts[c.activation_function], n_inner=c.n_inner or 0, **common)


def float32_kwargs():
    """from_pretrained's keyword for float32 weights whatever the files hold (transformers 5 loads in their dtype
    unless told); it was torch_dtype before transformers 4.56."""
    import transformers
    new = tuple(int(x) for x in transformers.__version__.split('.')[:2]) >= (4, 56)
    return {'dtype' if new else 'torch_dtype': torch.float32}


def weight_files(name_or_path):
    """The weight files of a local transformers directory or a hub model (downloaded once into the hub cache):
    model.safetensors, its shards (model.safetensors.index.json), or the older pytorch_model.bin."""
    from transformers.utils import cached_file
    for name in ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin'):
        if os.path.isdir(name_or_path):
            path = os.path.join(name_or_path, name)
            path = path if os.path.isfile(path) else None
        else:
            path = cached_file(name_or_path, name, _raise_exceptions_for_missing_entries=False)
        if path is None:
            continue
        if name.endswith('.index.json'):
            with open(path, encoding='utf-8') as f:
                shards = sorted(set(json.load(f)['weight_map'].values()))
            if os.path.isdir(name_or_path):
                return [os.path.join(name_or_path, s) for s in shards]
            return [cached_file(name_or_path, s) for s in shards]
        return [path]
    raise ValueError(f"no model.safetensors or pytorch_model.bin in {name_or_path!r}")


SAFETENSORS_DTYPES = {'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16,
                      'I64': torch.int64, 'I32': torch.int32, 'I16': torch.int16, 'I8': torch.int8, 'U8': torch.uint8,
                      'BOOL': torch.bool}


def read_safetensors(path):
    """(name, tensor) of each tensor of a .safetensors file, read straight into its own buffer (the format: an
    8-byte little-endian header length, a JSON header of dtype, shape and byte offsets, then the data). Not
    memory-mapped: a mapped file's pages count in the process's memory too while they are read."""
    with open(path, 'rb') as f:
        n = int.from_bytes(f.read(8), 'little')
        header = json.loads(f.read(n))
        header.pop('__metadata__', None)
        for name, info in sorted(header.items(), key=lambda kv: kv[1]['data_offsets'][0]):
            begin, end = info['data_offsets']
            if info['dtype'] not in SAFETENSORS_DTYPES:
                raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, which this loader does not read")
            buf = torch.empty(end - begin, dtype=torch.uint8)
            f.seek(8 + n + begin)
            if f.readinto(buf.numpy()) != end - begin:
                raise ValueError(f"{path} is truncated (tensor {name})")
            yield name, buf.view(SAFETENSORS_DTYPES[info['dtype']]).reshape(info['shape'])


def read_weights(name_or_path):
    """(name, tensor) of every tensor in a transformers checkpoint, read one at a time (safetensors) or from a
    memory-mapped file (pytorch_model.bin, weights-only), so only about one copy of the weights is ever held."""
    for path in weight_files(name_or_path):
        if path.endswith('.safetensors'):
            yield from read_safetensors(path)
        else:
            sd = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
            yield from sd.items()


def from_pretrained(name_or_path, **overrides):
    """Load GPT-2 / GPT-1 weights through transformers.

    name_or_path: a hub name ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', 'openai-gpt')
    or a local directory written by transformers' save_pretrained (model_type gpt2 or openai-gpt).
    overrides: settings that do not change the weights' meaning: dropout, attn_impl,
    pad_vocab_multiple, block_size (only to shorten the context); anything else must agree
    with the checkpoint.
    """
    import transformers
    from transformers import AutoConfig
    transformers.logging.disable_progress_bar()  # its 'Loading weights' bar would come before a one-line error
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
    config = config_from_hf(hf_config)
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
    config.__post_init__()
    # Built on the meta device (no memory, no random init) and materialised from the file's tensors one at a
    # time: loading peaks at about one copy of the weights (transformers' model and then ours made two)
    with torch.device('meta'):
        model = GPT(config)
    expected = {k: v.shape for k, v in model.state_dict().items() if k != 'lm_head.weight'}  # (tied to wte)
    sd = {}
    V = config.vocab_size
    head = None
    for k, src in read_weights(name_or_path):
        if k == 'lm_head.weight':  # tied to wte: files keep one of the two (which one varies by class)
            head = src
            continue
        if k.endswith(('.attn.bias', '.attn.masked_bias')):
            continue  # old HF causal-mask buffers
        if k.split('.')[0] not in ('transformer', 'h', 'wte', 'wpe', 'ln_f', 'tokens_embed', 'positions_embed'):
            continue  # another model's head (DoubleHeads' multiple-choice head, a classifier's score): not ours
        if hf_config.model_type == 'openai-gpt':  # GPT-1 names its embeddings differently
            k = k.replace('tokens_embed', 'wte').replace('positions_embed', 'wpe')
        if not k.startswith('transformer.'):  # OpenAI's hub files were saved from the bare GPT2Model
            k = 'transformer.' + k
        if k not in expected:
            raise ValueError(f"checkpoint keys do not match a {hf_config.model_type} model: unexpected {k}")
        src = src.float()
        if k.endswith(_CONV1D):
            src = src.t()  # HF Conv1D stores (in, out); nn.Linear wants (out, in)
        if k == 'transformer.wte.weight' and expected[k][0] != src.shape[0] and src.shape[0] == V:
            pad = torch.empty(expected[k][0] - V, src.shape[1]).normal_(0.0, 0.02)  # padded rows: GPT's init
            src = torch.cat((src, pad))
        if src.shape != expected[k]:
            raise ValueError(f"shape mismatch for {k}: checkpoint {tuple(src.shape)}, model {tuple(expected[k])}")
        sd[k] = src.contiguous()
    if 'transformer.wte.weight' not in sd and head is not None:
        sd['transformer.wte.weight'] = head.float().contiguous()
        if config.padded_vocab_size != head.shape[0]:
            pad = torch.empty(config.padded_vocab_size - head.shape[0], head.shape[1]).normal_(0.0, 0.02)
            sd['transformer.wte.weight'] = torch.cat((sd['transformer.wte.weight'], pad))
    del head
    if set(sd) != set(expected):
        raise ValueError(f"checkpoint keys do not match a {hf_config.model_type} model: missing "
                         f"{sorted(set(expected) - set(sd))[:5]}")
    for k, v in sd.items():
        if v.shape != expected[k]:
            raise ValueError(f"shape mismatch for {k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k])}")
    model.load_state_dict(sd, strict=False, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # re-tie (assign replaced wte's Parameter)
    del sd
    if block_size < config.block_size:
        model.crop_block_size(block_size)
    elif block_size > config.block_size:
        raise ValueError(f"cannot override block_size={block_size}: the checkpoint has only "
                         f"{config.block_size} positions")
    return model

def save_pretrained(model, path, eos_token_id='gpt2'):
    """Write a transformers directory (config.json + model.safetensors).
    eos_token_id: the end-of-text id written as bos/eos in config.json: 'gpt2' for GPT-2's 50256
    when the vocabulary has it, else an id or None (export.py passes its tokenizer's).

    Pre-norm models are written as GPT2LMHeadModel, post-norm ones as OpenAIGPTLMHeadModel.
    Padded vocabulary rows are dropped. bias=False models are written with zero biases in every
    Linear and LayerNorm, which computes the same function."""
    from safetensors.torch import save_file
    c = model.config
    if c.attn_pattern != 'dense':
        raise ValueError(f"attn_pattern={c.attn_pattern!r}: transformers' GPT-2 and GPT-1 have dense attention "
                         f"only, so this model cannot be exported as one")
    custom = [f"{k}={getattr(c, k)!r}" for k, default in (('pos_emb', 'learned'), ('qk_norm', False), ('mlp_act', 'gelu'))
              if getattr(c, k) != default]
    if custom:
        raise ValueError(f"{', '.join(custom)}: transformers' GPT-2 and GPT-1 have learned positions, plain attention "
                         f"and GELU, so this model cannot be exported as one")
    if not c.tie_embeddings:
        raise ValueError("this model has its own output matrix (tie_embeddings=False); "
                         "the GPT-2 and GPT-1 formats tie it to the token embeddings")
    if c.post_norm and (c.gelu_approx != 'tanh' or c.d_ff != 4 * c.n_embd):
        raise ValueError("a post-norm model exports as openai-gpt, which needs GPT-1's tanh GELU "
                         "(gelu_approx='tanh') and d_ff = 4 * n_embd")
    os.makedirs(path, exist_ok=True)
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    sd['transformer.wte.weight'] = sd['transformer.wte.weight'][:c.vocab_size]
    del sd['lm_head.weight']  # tied: transformers re-ties it from wte
    for name, mod in model.named_modules():  # bias=False: write the zero biases HF expects
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
        eot = (50256 if c.vocab_size > 50256 else None) if eos_token_id == 'gpt2' else eos_token_id
        act = 'gelu_new' if c.gelu_approx == 'tanh' else 'gelu'  # HF's names for tanh / exact GELU
        hf = dict(model_type='gpt2', architectures=['GPT2LMHeadModel'], activation_function=act,
                  n_inner=c.n_inner or None, bos_token_id=eot, eos_token_id=eot, **common)
    with open(os.path.join(path, 'config.json'), 'w', encoding='utf-8') as f:
        json.dump(hf, f, indent=2)
    save_file(sd, os.path.join(path, 'model.safetensors'), metadata={'format': 'pt'})


def load_summary_head(path):
    """The multiple-choice head of a transformers OpenAIGPTDoubleHeadsModel / GPT2DoubleHeadsModel directory (its
    SequenceSummary projection: a linear layer on the hidden state at the cls token), as a state dict for
    heads.TaskModel.head."""
    from safetensors.torch import load_file
    file = os.path.join(path, 'model.safetensors')
    sd = load_file(file) if os.path.isfile(file) else {}
    keys = ('multiple_choice_head.summary.weight', 'multiple_choice_head.summary.bias')
    if not all(k in sd for k in keys):
        raise ValueError(f"{path} has no multiple-choice head (a DoubleHeads model saved with safetensors)")
    return {'weight': sd[keys[0]], 'bias': sd[keys[1]]}


def save_task_model(task_model, path, classes=None, specials=None, pad_token_id=0):
    """Export a fine-tuned heads.TaskModel as the transformers class that computes the same scores:
      multiple_choice            GPT2DoubleHeadsModel / OpenAIGPTDoubleHeadsModel (GPT-2 / GPT-1 network): the head
                                 is their SequenceSummary on the cls token (pass mc_token_ids: the extract positions)
      classification, entailment GPT2ForSequenceClassification / OpenAIGPTForSequenceClassification: they read the
                                 last token that is not pad_token_id, which is the extract token of a right-padded
                                 input (collate pads with 0), through a linear layer without a bias
    Their classifier has no bias, so ours is folded into the LayerNorm that makes the final hidden state (ln_f, or
    the last block's ln_2 on a GPT-1 network): a shift d of its bias with W d = b adds b to every logit. The
    classifier's scores are then exact, but that directory's hidden states are shifted: use it as a classifier
    only. classes: the label names, in the head's order (config.json's id2label); specials: the (start, delim,
    extract) ids, recorded in config.json as gpt1_task. Similarity is refused:
    transformers has no model that adds the extract states of the two orders (GPT-1's similarity head)."""
    from safetensors.torch import load_file, save_file
    task, c = task_model.task, task_model.gpt.config
    if task == 'similarity':
        raise ValueError("transformers has no class for GPT-1's similarity head (the extract states of both "
                         "orders added); score with --predict, or export the network alone with "
                         "hf.save_pretrained(model.gpt, dir)")
    w = task_model.head.weight.detach().float().cpu()
    b = task_model.head.bias.detach().float().cpu()
    if task != 'multiple_choice':  # fold the bias: the least-squares d with W d = b, exact when W has full row rank
        d = torch.linalg.lstsq(w.double(), b.double().unsqueeze(1)).solution.squeeze(1)
        if (w.double() @ d - b.double()).abs().max() > 1e-5 * (1 + b.abs().max()):
            raise ValueError(f"the {task} head's bias cannot be folded into the final LayerNorm (its {w.size(0)} "
                             f"rows are linearly dependent), and transformers' classifier has no bias")
    save_pretrained(task_model.gpt, path)
    with open(os.path.join(path, 'config.json'), encoding='utf-8') as f:
        cfg = json.load(f)
    kind = 'OpenAIGPT' if c.post_norm else 'GPT2'
    if task == 'multiple_choice':
        cfg.update(architectures=[f'{kind}DoubleHeadsModel'], summary_type='cls_index', summary_use_proj=True,
                   summary_proj_to_labels=True, summary_activation=None, num_labels=1,
                   summary_first_dropout=task_model.dropout.p)
    else:
        names = [str(x) for x in classes] if classes else [str(i) for i in range(w.size(0))]
        cfg.update(architectures=[f'{kind}ForSequenceClassification'], num_labels=w.size(0),
                   id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
                   pad_token_id=pad_token_id)
    if specials:  # the ids the input transformation uses, for whoever builds inputs for this directory
        cfg['gpt1_task'] = dict(task=task, **dict(zip(('start', 'delim', 'extract'), specials)))
    with open(os.path.join(path, 'config.json'), 'w', encoding='utf-8') as f:
        json.dump(cfg, f, indent=2)
    sd = load_file(os.path.join(path, 'model.safetensors'))
    if task == 'multiple_choice':
        sd['multiple_choice_head.summary.weight'] = w.contiguous()
        sd['multiple_choice_head.summary.bias'] = b.contiguous()
    else:
        final_ln = f'transformer.h.{c.n_layer - 1}.ln_2.bias' if c.post_norm else 'transformer.ln_f.bias'
        sd[final_ln] = (sd[final_ln].double() + d).float().contiguous()
        sd['score.weight'] = w.contiguous()
    save_file(sd, os.path.join(path, 'model.safetensors'), metadata={'format': 'pt'})
