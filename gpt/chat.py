"""
The chat template of InstructGPT's steps (SFT, reward model, PPO, DPO: gpt/prefs.py and gpt/rl.py, run by train.py,
reward.py, ppo.py and dpo.py) and its tokens, and the one way a vocabulary grows (add_tokens, grow_vocab).

Three tokens are added after the tokenizer's own ids (vocab_size, +1, +2; their embedding rows drawn from
N(0, 0.02) by add_tokens, every other weight kept):

    <|user|>{user text}<|assistant|>{assistant text}<|end|>        (repeated for more turns)

The SFT loss is on the assistant's text and its <|end|> only. A policy is prompted with
`<|user|>{prompt}<|assistant|>` and its response ends at <|end|>. The ids are kept in the dataset's and the
checkpoints' metadata (added_tokens), so sample.py (which stops at <|end|>), serve.py, eval.py and export.py
encode and decode them (`python sample.py --out_dir=out-sft-shakespeare --start="<|user|>To be<|assistant|>"`).
GPT-1's task tokens (finetune.py, gpt/heads.py) grow the vocabulary the same way.
"""

from dataclasses import replace

import torch

from gpt.errors import UserError
from model import GPT

SPECIAL_TOKENS = ('<|user|>', '<|assistant|>', '<|end|>')
USER, ASSISTANT, END = SPECIAL_TOKENS
TOKENIZER_FIELDS = ('tokenizer', 'chars', 'name', 'tokenizer_json', 'tokenizer_sha256', 'tokenizer_file',
                    'added_tokens')  # what a dataset's meta.json says about its tokenizer


# ----------------------------------------------------------------------------- the chat template

def chat_meta(meta):
    """A tokenizer's metadata with the chat tokens added after its ids (as it is, if they are there already)."""
    added, v = dict(meta.get('added_tokens') or {}), meta['vocab_size']
    for t in SPECIAL_TOKENS:
        if t not in added:
            added[t], v = v, v + 1
    return {**meta, 'added_tokens': added, 'vocab_size': v}


def special_ids(meta):
    """(user, assistant, end) ids of a tokenizer's metadata with the chat tokens."""
    added = meta.get('added_tokens') or {}
    if not all(t in added for t in SPECIAL_TOKENS):
        raise UserError(f"this model's tokenizer has no chat tokens ({', '.join(SPECIAL_TOKENS)}); start from an "
                        f"SFT run (python train.py config/sft_shakespeare.py) or a pretrained model")
    return tuple(int(added[t]) for t in SPECIAL_TOKENS)


def add_tokens(model, n):
    """A copy of model with n more vocabulary entries: the new embedding rows drawn from N(0, 0.02) as GPT-1's
    fine-tuning code does, every other weight kept. Returns (model, the new ids)."""
    c = model.config
    bigger = GPT(replace(c, vocab_size=c.vocab_size + n))
    sd = model.state_dict()
    with torch.no_grad():
        for name, p in bigger.state_dict().items():
            if name in ('transformer.wte.weight', 'lm_head.weight'):
                p[:c.vocab_size].copy_(sd[name][:c.vocab_size])  # (lm_head is tied to wte: copied twice, alike)
            else:
                p.copy_(sd[name])
    return bigger, list(range(c.vocab_size, c.vocab_size + n))


def end_token(meta, eot):
    """The id a completion ends at: a chat model's <|end|>, else the tokenizer's end of text (eot; None if it has
    none, as a character tokenizer). sample.py and serve.py stop there."""
    end = ((meta or {}).get('added_tokens') or {}).get(END, eot)
    return None if end is None else int(end)


def grow_vocab(model, meta):
    """The model with embedding rows for the ids meta's added tokens need (add_tokens), or as it is
    when it has them."""
    v, want = model.config.vocab_size, meta['vocab_size']
    if v == want:
        return model
    added = sorted(int(i) for i in (meta.get('added_tokens') or {}).values())
    if v > want or added != list(range(v, want)):
        raise UserError(f"the model has {v} token ids and the data {want}; only tokens added after the model's own "
                        f"ids ({v}..{want - 1}) can be grown into it")
    return add_tokens(model, want - v)[0]


def encode_prompt(encode, meta, prompt):
    """The ids a policy is prompted with: <|user|>prompt<|assistant|>."""
    user, assistant, _ = special_ids(meta)
    return [user, *encode(prompt), assistant]


def encode_response(encode, meta, response):
    """A response's ids: its text and <|end|>."""
    return [*encode(response), special_ids(meta)[2]]


def encode_chat(encode, meta, messages):
    """(ids, mask) of a conversation [(role, text), ...]: mask 1 on the assistant's tokens (text and <|end|>),
    0 on the user's turns and the role tokens."""
    ids, mask = [], []
    for role, text in messages:
        if role == 'user':
            part = encode_prompt(encode, meta, text)
            ids += part[:-1]
            mask += [0] * (len(part) - 1)
            continue
        part = [special_ids(meta)[1]] if not ids or ids[-1] != special_ids(meta)[1] else []
        response = encode_response(encode, meta, text)
        ids += part + response
        mask += [0] * len(part) + [1] * len(response)
    return ids, mask
