"""
InstructGPT's three steps (Ouyang et al. 2022) and DPO (Rafailov et al. 2023) on our GPTs: the chat template
and its tokens, preference data, the losses as plain functions on tensors, and the set-up the scripts share.

    python train.py config/sft_shakespeare.py       # 1. SFT: train.py on masked examples (loss on responses only)
    python reward.py config/reward_shakespeare.py   # 2. a reward model from rankings of K responses per prompt
    python ppo.py config/ppo_shakespeare.py         # 3. PPO(-ptx) against it, KL-penalised to the SFT policy
    python dpo.py config/dpo_shakespeare.py         # or DPO straight from the preferences

Chat template. Three tokens are added after the tokenizer's own ids (vocab_size, +1, +2; their embedding rows
drawn from N(0, 0.02) by heads.add_tokens, every other weight kept):

    <|user|>{user text}<|assistant|>{assistant text}<|end|>        (repeated for more turns)

The SFT loss is on the assistant's text and its <|end|> only. A policy is prompted with
`<|user|>{prompt}<|assistant|>` and its response ends at <|end|>. The ids are kept in the dataset's and the
checkpoints' metadata (added_tokens), so sample.py (which stops at <|end|>), eval.py and export.py encode and
decode them (`python sample.py --out_dir=out-sft-shakespeare --start="<|user|>To be<|assistant|>"`).

Data, one JSON object a line: a local .jsonl file, or a hub dataset as hf:name[:config[:split]].
    SFT          {"prompt": "...", "response": "..."}, or {"messages": [{"role": "user", "content": "..."},
                 {"role": "assistant", "content": "..."}, ...]} (roles alternate, starting with the user)
    preferences  {"prompt": "...", "chosen": "...", "rejected": "..."}          a pair (K = 2)
                 {"prompt": "...", "responses": ["best", ..., "worst"]}        a ranking of K >= 2, best first
                 {"prompt": "...", "responses": [...], "scores": [...]}        ranked by score, higher is better
A missing field, fewer than two responses, or a tie (equal scores, the same text twice) is a one-line error
naming the file and line. SFT examples are written in the masked-example format (tokendata.py) by
write_chat_examples: one conversation a row, padded at the end, so no example attends to another.
"""



from gpt.errors import UserError
from gpt.heads import add_tokens

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


def grow_vocab(model, meta):
    """The model with embedding rows for the ids meta's added tokens need (heads.add_tokens), or as it is
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
