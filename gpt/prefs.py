"""
SFT and preference data: reading them (a local .jsonl file, or a hub dataset as hf:name[:config[:split]]), writing
SFT conversations as masked examples, and batching prompts and responses.

    SFT          {"prompt": "...", "response": "..."}, or {"messages": [{"role": "user", "content": "..."},
                 {"role": "assistant", "content": "..."}, ...]} (roles alternate, starting with the user)
    preferences  {"prompt": "...", "chosen": "...", "rejected": "..."}          a pair (K = 2)
                 {"prompt": "...", "responses": ["best", ..., "worst"]}        a ranking of K >= 2, best first
                 {"prompt": "...", "responses": [...], "scores": [...]}        ranked by score, higher is better
A missing field, fewer than two responses, or a tie (equal scores, the same text twice) is a one-line error
naming the file and line. SFT examples are written in the masked-example format (tokendata.py) by
write_chat_examples: one conversation a row, padded at the end, so no example attends to another.
"""

import os

import numpy as np
import torch

from gpt import hubdata
from gpt.chat import TOKENIZER_FIELDS, chat_meta, encode_chat
from gpt.datafiles import write_examples
from gpt.errors import UserError
from gpt.tokendata import get_tokenizer, json_lines

# ----------------------------------------------------------------------------- reading data

def read_rows(source):
    """[(where, row)] of a local .jsonl file or a hub dataset hf:name[:config[:split]] (split default 'train'; the
    name may be a local folder of data files, as datasets.load_dataset takes it); where names the file and line
    for error messages."""
    if source.startswith('hf:'):
        import datasets
        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        name, config, split = (source[3:].split(':') + ['', ''])[:3]
        rows = hubdata.load_dataset(name, config or None, split=split or 'train', what=repr(source),
                                    instead='pass a local .jsonl file instead')
        return [(f"{source} row {i + 1}", dict(r)) for i, r in enumerate(rows)]
    if not os.path.isfile(source):
        raise UserError(f"{source} not found: pass a .jsonl file (one JSON object a line) or hf:<dataset name>")
    out = []
    for n, row in json_lines(source, 'the data file'):
        if not isinstance(row, dict):
            raise UserError(f"{source} line {n} is not a JSON object")
        out.append((f"{source} line {n}", row))
    if not out:
        raise UserError(f"{source} holds no examples")
    return out


def text_field(where, row, key):
    value = row.get(key)
    if not isinstance(value, str):
        raise UserError(f"{where}: missing field {key!r} (a string)" if value is None else
                        f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def chat_messages(where, row):
    """A row of SFT data as [(role, text), ...]: {"prompt", "response"} or {"messages": [...]}."""
    if 'messages' not in row:
        return [('user', text_field(where, row, 'prompt')), ('assistant', text_field(where, row, 'response'))]
    messages = row['messages']
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise UserError(f"{where}: message {i + 1} is not an object with 'role' and 'content'")
        role = text_field(f"{where} message {i + 1}", m, 'role')
        expected = 'user' if i % 2 == 0 else 'assistant'
        if role != expected:
            raise UserError(f"{where}: message {i + 1} has role {role!r}; roles alternate user, assistant, ... "
                            f"starting with the user")
        out.append((role, text_field(f"{where} message {i + 1}", m, 'content')))
    if out[-1][0] != 'assistant':
        raise UserError(f"{where}: the last message must be the assistant's (the loss is taken on it)")
    return out


def preference_group(where, row):
    """(prompt, [responses, best first]) of a row of preference data (see the top of this file)."""
    prompt = text_field(where, row, 'prompt')
    if 'responses' in row:
        responses = row['responses']
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise UserError(f"{where}: 'responses' must be a list of strings")
        if 'scores' in row:
            scores = row['scores']
            if not isinstance(scores, list) or len(scores) != len(responses) or \
                    not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
                raise UserError(f"{where}: 'scores' must be a list of numbers, one per response")
            if len(set(scores)) != len(scores):
                raise UserError(f"{where}: tied scores {scores}: a ranking needs distinct scores (drop or merge the "
                                f"tied responses)")
            responses = [r for _, r in sorted(zip(scores, responses), key=lambda p: -p[0])]
    elif 'chosen' in row or 'rejected' in row:
        responses = [text_field(where, row, 'chosen'), text_field(where, row, 'rejected')]
    else:
        raise UserError(f"{where}: missing field 'chosen' and 'rejected' (a pair) or 'responses' (a ranking)")
    if len(responses) < 2:
        raise UserError(f"{where}: K={len(responses)} response(s); a comparison needs K >= 2")
    if len(set(responses)) != len(responses):
        raise UserError(f"{where}: the same response appears twice in one comparison (a tie); every response of "
                        f"a group must differ")
    return prompt, responses


def read_prompts(source):
    """The prompts of a file or hub dataset: the 'prompt' field of each row (other fields are ignored)."""
    return [text_field(where, row, 'prompt') for where, row in read_rows(source)]


def read_preferences(source):
    return [preference_group(where, row) for where, row in read_rows(source)]


def write_chat_examples(out_dir, splits, meta, block_size, extra=None):
    """Write SFT conversations as masked examples (datafiles.write_examples): splits {'train': source,
    'val': source} of SFT data, meta: the tokenizer's metadata (the chat tokens are added to it). Conversations
    longer than block_size + 1 tokens are cut at the end; rows are padded at the end with mask 0."""
    meta = chat_meta(meta)
    encode, _, _ = get_tokenizer(meta)
    arrays, cut = {}, 0
    for split, source in splits.items():
        rows = [encode_chat(encode, meta, chat_messages(where, row)) for where, row in read_rows(source)]
        L = min(block_size + 1, max(len(ids) for ids, _ in rows))
        tokens, mask = np.zeros((len(rows), L), dtype=np.int64), np.zeros((len(rows), L), dtype=np.uint8)
        for i, (ids, m) in enumerate(rows):
            cut += len(ids) > L
            tokens[i, :min(L, len(ids))], mask[i, :min(L, len(ids))] = ids[:L], m[:L]
        keep = mask.any(axis=1)  # a conversation cut before its first response token teaches nothing
        arrays[split] = (tokens[keep], mask[keep])
    L = max(t.shape[1] for t, _ in arrays.values())  # one length for all splits
    arrays = {s: (np.pad(t, ((0, 0), (0, L - t.shape[1]))), np.pad(m, ((0, 0), (0, L - m.shape[1]))))
              for s, (t, m) in arrays.items()}
    if cut:
        print(f"note: {cut} conversations were longer than block_size + 1 = {block_size + 1} tokens and were cut")
    tokenizer = {k: v for k, v in meta.items() if k in TOKENIZER_FIELDS}
    write_examples(out_dir, arrays, meta['vocab_size'], **tokenizer, **(extra or {}))


# ----------------------------------------------------------------------------- batches of sequences

def collate(prompts, responses, pad_id=0):
    """Prompt + response id lists as a right-padded batch: idx (N, T), mask (N, T - 1) with 1 where the target
    idx[:, t + 1] is a response token, and last (N,) the position of each row's last token."""
    seqs = [p + r for p, r in zip(prompts, responses)]
    T = max(map(len, seqs))
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T - 1)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        idx[i, :len(s)] = torch.tensor(s)
        mask[i, len(p) - 1:len(s) - 1] = 1
    return idx, mask, torch.tensor([len(s) - 1 for s in seqs])


# ----------------------------------------------------------------------------- sampling responses

def fit(prompt, response, block_size):
    """Prompt and response ids cut to block_size tokens in all: the response loses its end first, then the prompt
    its start (the end of a prompt leads into the response)."""
    response = response[:max(1, block_size - len(prompt))]
    return prompt[-(block_size - len(response)):], response
