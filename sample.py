"""
Sample from a trained model, or from OpenAI's GPT-2 / GPT-1 weights.

$ python sample.py --out_dir=out-shakespeare-char          # a training run's best checkpoint
$ python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --num_samples=1
$ python sample.py --init_from=path/to/hf_dir --start=FILE:prompt.txt --top_p=0.9
$ python sample.py --out_dir=out --num_beams=4 --length_penalty=0.8 --num_samples=1
$ python sample.py --out_dir=../nanoGPT/out-shakespeare-char    # a nanoGPT run, imported as it is (checkpoint.py)

A single sample streams to stdout as it is generated; tokens/s is printed to stderr at the end.
"""

import codecs
import json
import sys
import time

import torch

import configurator
from checkpoint import load_model
from configurator import UserError
from device import autocast_ctx, pick_device, pick_dtype
from generate import beam_search, check_sampling_args, compile_decoder, decode_layout, generate_stream
from tokendata import get_tokenizer, read_text

# -----------------------------------------------------------------------------
# config: overridden by a config file, then by --key=value
init_from = 'resume'        # 'resume' (a checkpoint in out_dir), a hub name (gpt2, gpt2-xl, openai-gpt, ...) or an HF dir
out_dir = 'out'             # the training run to sample from when init_from='resume'
ckpt_name = 'best.pt'       # 'best.pt' (lowest val loss) or 'ckpt.pt' (latest); falls back to ckpt.pt
start = '\n'                # the prompt, or FILE:path to read it from a file
num_samples = 3             # independent samples (one streams to stdout as it is generated)
max_new_tokens = 500        # tokens generated per sample
temperature = 0.8           # 1.0 = the model's distribution, < 1 sharper, 0 = greedy
top_k = 200                 # keep only the top_k most likely tokens (>= 1; >= vocab size disables)
top_p = 1.0                 # nucleus sampling: smallest set with this much probability, in (0, 1]; 1 disables
min_p = 0.0                 # drop tokens below min_p * p(most likely); 0 disables
repetition_penalty = 1.0    # CTRL-style penalty on tokens already present; 1 disables
num_beams = 1               # > 1: beam search (deterministic, one result per prompt)
length_penalty = 1.0        # beam search: score = logprob / length**length_penalty
stop = ''                   # stop when the text contains this string (escapes like \n allowed; a JSON list for several)
stop_at_eos = True          # stop at <|endoftext|> (GPT-2 tokenizer), or a chat model's <|end|> (align.py)
use_cache = True            # key/value cache: one token per step instead of the whole context
seed = 1337
device = 'auto'             # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', ...
dtype = 'auto'              # 'auto', 'float32', 'bfloat16', 'float16'
compile = False             # compile the one-token steps (generate.compile_decoder; not beam search): pays off on long generations
# -----------------------------------------------------------------------------
config = configurator.configure(globals(), verbose=False)


def parse_stops(s):
    """--stop: one string (with escapes like \\n), or a JSON list of strings."""
    if not s:
        return []
    if s.startswith('['):
        try:
            stops = json.loads(s)
        except json.JSONDecodeError as e:
            raise UserError(f"--stop={s!r} starts with '[' but is not a JSON list ({e.msg}); write a list as "
                            f"--stop='[\"\\n\\n\", \"END\"]', or one string without the '['") from None
        if not isinstance(stops, list) or not stops or not all(isinstance(x, str) and x for x in stops):
            raise UserError(f"--stop={s!r}: a JSON list of non-empty strings is expected")
        return stops
    try:
        # (backslashreplace: characters beyond Latin-1 pass through the escape decoding unchanged)
        return [codecs.decode(s.encode('latin-1', 'backslashreplace'), 'unicode_escape')]
    except UnicodeError as e:
        raise UserError(f"--stop={s!r} has a bad escape ({e.reason}); write a backslash as \\\\") from None


def main():
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    try:
        check_sampling_args(temperature, top_k, top_p, min_p, repetition_penalty)
    except ValueError as e:
        raise UserError(e) from None
    if num_beams < 1 or num_samples < 1 or max_new_tokens < 1:
        raise UserError("num_beams, num_samples and max_new_tokens must be >= 1")
    stops = parse_stops(stop)  # (before the model loads: a mistake costs nothing)
    torch.manual_seed(seed)
    model, meta, _ = load_model(init_from, out_dir, ckpt_name, dropout=0.0)
    decode_layout(model.to(dev).eval())  # (only generates: weights laid out for one-token steps)
    encode, decode, eot = get_tokenizer(meta)
    try:
        decoder = compile_decoder(model) if compile and num_beams == 1 else None
    except ValueError as e:
        raise UserError(f"{e}: sample without --compile") from None
    if decoder is not None and not use_cache:
        raise UserError("--compile=True compiles the cached one-token step: drop --use_cache=False")
    if decoder is not None:  # (the timing printed at the end includes it)
        print("compiling the one-token step at the first token: ~20 s the first time, a few once cached",
              file=sys.stderr)

    prompt = start
    if prompt.startswith('FILE:'):
        prompt = read_text(prompt[5:], 'the prompt file')
    ids = encode(prompt)
    if not ids:
        raise UserError("the prompt is empty: pass --start='some text' (or FILE:prompt.txt)")
    if len(ids) > model.config.block_size:
        raise UserError(f"the prompt is {len(ids)} tokens, longer than the model's context "
                        f"({model.config.block_size}); shorten it")
    if num_beams > 1 and len(ids) + max_new_tokens - 1 > model.config.block_size:
        raise UserError(f"beam search has no sliding window: the prompt ({len(ids)} tokens) + max_new_tokens "
                        f"({max_new_tokens}) must fit the context ({model.config.block_size}); lower --max_new_tokens")
    eos = ((meta or {}).get('added_tokens') or {}).get('<|end|>', eot) if stop_at_eos else None  # a chat model's end
    x = torch.tensor(ids, dtype=torch.long, device=dev)[None]
    gen = torch.Generator(device=dev).manual_seed(seed)

    n_tokens, t0 = 0, time.time()
    with torch.inference_mode(), autocast_ctx(dev, dt):  # (no autograd bookkeeping at all: cheaper ops)
        if num_beams > 1:
            out = beam_search(model, x, max_new_tokens, num_beams=num_beams, length_penalty=length_penalty,
                              eos_token_id=eos, use_cache=use_cache)
            new = out[0, len(ids):].tolist()
            new = new[:new.index(eos)] if eos in new else new  # the end-of-text token is not text
            n_tokens += len(new)
            print(prompt + cut_at_stop(decode(new), stops))
        else:
            for s in range(num_samples):
                stream = generate_stream(model, x, max_new_tokens, temperature=temperature, top_k=top_k,
                                         top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                                         eos_token_id=eos, use_cache=use_cache, generator=gen, decoder=decoder)
                text = stream_text(stream, decode, prompt, stops, eos, live=(num_samples == 1))
                n_tokens += text[1]
                if num_samples > 1:
                    print(text[0])
                    print('---------------')
    elapsed = time.time() - t0
    print(f"\n{n_tokens} tokens in {elapsed:.2f}s: {n_tokens / elapsed:.1f} tokens/s", file=sys.stderr)


def cut_at_stop(text, stops):
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text if cut < 0 else text[:cut]


def stream_text(stream, decode, prompt, stops, eos, live):
    """Consume a token stream, printing text as it becomes final when live. Decodes the whole
    continuation each step, so multi-byte characters split across BPE tokens print whole."""
    if live:
        print(prompt, end='', flush=True)
    new, shown = [], 0
    for tok in stream:
        t = tok[0, 0].item()
        if t == eos:
            break
        new.append(t)
        text = decode(new)
        done = any(s in text for s in stops)
        text = cut_at_stop(text, stops)
        if live and not text.endswith('\ufffd'):  # wait for the rest of a split character
            print(text[shown:], end='', flush=True)
            shown = len(text)
        if done:
            break
    text = cut_at_stop(decode(new), stops)
    if live:
        print(text[shown:], flush=True)
    return prompt + text, len(new)


if __name__ == '__main__':
    main()  # a UserError prints one line and exits 1 (configurator.py)
