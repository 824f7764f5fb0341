"""
Sample from a trained model, or from OpenAI's GPT-2 / GPT-1 weights.

$ python sample.py --out_dir=out-shakespeare-char          # a training run's best checkpoint
$ python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --num_samples=1
$ python sample.py --init_from=path/to/hf_dir --start=FILE:prompt.txt --top_p=0.9
$ python sample.py --out_dir=out --num_beams=4 --length_penalty=0.8 --num_samples=1
$ python sample.py --out_dir=../nanoGPT/out-shakespeare-char    # a nanoGPT run, imported as it is (gpt/checkpoint.py)
$ python sample.py --start=FILE:prompts.jsonl --output=results.jsonl --temperature=0   # many prompts, one batch
$ python sample.py --start=FILE:prompts.txt --per_line=True --quantize=int8      # one prompt per line; int8 weights
$ python sample.py --out_dir=out --draft=out-small --prompt_lookup=3 --temperature=0   # speculative decoding

A single sample streams to stdout as it is generated. Several prompts (a .jsonl file: one JSON string or
{"prompt": ...} per line; or a text file with --per_line=True) and their samples decode together as one batch
of the decoding engine (engine.Engine), whatever their lengths. --output writes one JSON line per sample, as
each finishes (Ctrl-C keeps them): prompt, completion, tokens, finish_reason ('stop' or 'length'); an existing
file is replaced only with --overwrite=True. Greedy decoding and beam search give one sample per prompt (more
would be copies). Tokens/s is printed to stderr at the end, timed
from the first token (the prompt's prefill and any compile are reported apart, as time to first token).

Speculative decoding (gpt/speculative.py; docs/sampling.md): --draft (a smaller model of the same tokenizer) and/or
--prompt_lookup (n-grams of the context) draft --draft_tokens tokens that the model checks in one pass; greedy text
is plain greedy's, sampling is exact in distribution; one prompt at a time, each sample after the last.

Decoding picks its own dtype: dtype='auto' is bfloat16 on GPUs and float32 on CPUs, where a one-token step
reads every weight once and bf16 autocast would convert them all again at each step (GPT-2 124M: 11-13
tokens/s bf16 against 43 fp32 on a 2-core AMX Xeon); --quantize=int8 (gpt/quantize.py) halves again what a CPU step
reads.
"""

import codecs
import json
import os
import sys
import time

import torch

import configurator
from gpt.chat import end_token
from gpt.decoding import check_decoding, load_for_decoding
from gpt.device import autocast_ctx, shut_down
from gpt.engine import Engine, beam_search, generate_stream
from gpt.errors import UserError, check_output
from gpt.sampling import SamplingParams, check_sampling_args
from gpt.speculative import LookupThenDraft, PromptLookup, Speculative, Stats, check_speculative, load_drafter
from gpt.stops import StopText, cut_at_stop, find_stop
from gpt.tokendata import get_tokenizer, json_lines, read_text

# -----------------------------------------------------------------------------
# config: overridden by a config file, then by --key=value
init_from = 'resume'        # 'resume' (a checkpoint in out_dir), a hub name (gpt2, gpt2-xl, openai-gpt, ...) or an HF dir
out_dir = 'out'             # the training run to sample from when init_from='resume'
ckpt_name = 'best.pt'       # 'best.pt' (lowest val loss) or 'ckpt.pt' (latest); falls back to ckpt.pt
start = '\n'                # the prompt, or FILE:path to read it from a file (FILE:x.jsonl: one prompt per line)
per_line = False            # with FILE:x.txt, each non-empty line is a prompt (else the whole file is one)
output = ''                 # write the samples as JSON lines to this file: prompt, completion, tokens, finish_reason
overwrite = False           # --output names an existing file: replace it (else sample.py refuses, as export.py does)
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
stop_at_eos = True          # stop at <|endoftext|> (GPT-2 tokenizer), or a chat model's <|end|> (gpt/chat.py)
use_cache = True            # key/value cache: one token per step instead of the whole context
seed = 1337
device = 'auto'             # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', ...
dtype = 'auto'              # 'auto' (bf16 on GPUs, float32 on CPUs: see above), 'float32', 'bfloat16', 'float16'
quantize = 'none'           # 'none' or 'int8' (weight-only int8 for every Linear and the head: gpt/quantize.py)
max_batch = 64              # rows decoded together (prompts x num_samples beyond it wait for a free row)
cuda_graph = False          # CUDA: replay the one-token step from a CUDA graph (fastpath.CUDAGraphDecoder; not yet measured)
compile = False             # compile the one-token steps (fastpath.compile_decoder; not beam search): pays off on long generations
draft = ''                  # speculative decoding (gpt/speculative.py): the draft model's init_from (a run's out_dir, a hub name
                            # or an HF dir; the target's tokenizer); '' off. Greedy text is plain greedy's, sampling exact
draft_tokens = 4            # speculative decoding: tokens drafted per pass of the model (k >= 1)
prompt_lookup = 0           # speculative decoding: draft what followed the context's last n-gram earlier in it (this n;
                            # 0 off), without a draft model or (with --draft) where the whole n-gram occurred before
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


def read_prompts():
    """--start: one prompt, a text file (whole, or one prompt per line with --per_line), or a JSON-lines file."""
    if not start.startswith('FILE:'):
        return [start]
    path = start[5:]
    if path.endswith('.jsonl'):
        prompts = []
        for n, value in json_lines(path, 'the prompts file'):
            prompt = value.get('prompt') if isinstance(value, dict) else value
            if not isinstance(prompt, str):
                raise UserError(f'{path} line {n}: expected a JSON string or {{"prompt": "..."}}')
            prompts.append(prompt)
    else:
        text = read_text(path, 'the prompt file')
        prompts = [line for line in text.split('\n') if line.strip()] if per_line else [text]
    if not prompts:
        raise UserError(f"{path} holds no prompt")
    return prompts


def main():
    global num_samples  # (one per prompt where every sample would be the same: see below)
    try:
        check_sampling_args(temperature, top_k, top_p, min_p, repetition_penalty)
    except ValueError as e:
        raise UserError(e) from None
    if num_beams < 1 or num_samples < 1 or max_new_tokens < 1 or max_batch < 1:
        raise UserError("num_beams, num_samples, max_new_tokens and max_batch must be >= 1")
    check_decoding(quantize, compile, cuda_graph, use_cache)
    speculative = check_speculative(draft, prompt_lookup, draft_tokens, num_beams, use_cache)
    stops = parse_stops(stop)  # (before the model loads: a mistake costs nothing)
    prompts = read_prompts()
    if output:  # checked now, not after the generation: the folder is made if missing (check_output)
        check_output(output, 'output')
        if os.path.exists(output) and not overwrite:  # (a result is replaced only when asked, as export.py's hf_dir)
            raise UserError(f"{output} exists; pass --overwrite=True to replace it, or choose another --output")
    # greedy decoding (or top_k=1) and beam search give the same result every time: num_samples copies of it
    # would only look like independent samples
    same = ('beam search' if num_beams > 1 else 'greedy decoding (temperature=0)' if temperature == 0
            else 'top_k=1' if top_k == 1 else '')
    if same and num_samples > 1:
        print(f"note: {same} gives the same result every time: one sample per prompt, not {num_samples}",
              file=sys.stderr)
        num_samples = 1
    torch.manual_seed(seed)
    rows = 1 if use_cache and num_beams == 1 and len(prompts) * num_samples == 1 else max(2, num_beams)
    rows = draft_tokens + 1 if speculative else rows  # (a speculative pass: the newest token and k drafts)
    d = load_for_decoding(init_from, out_dir, ckpt_name, device, dtype, quantize, rows,  # (beam search: no decoder)
                          compile=compile and num_beams == 1, cuda_graph=cuda_graph and num_beams == 1)
    model, meta, dev, dt, decoder = d.model, d.meta, d.device, d.dtype, d.decoder
    spec, spec_stats = None, Stats()  # (speculative: one prompt at a time, each sample after the last)
    if speculative:
        drafter = load_drafter(draft, model, meta, dev, dtype, quantize, compile, cuda_graph) if draft else None
        if prompt_lookup:  # (with a draft model too: the lookup where the whole n-gram matched, else the model)
            drafter = PromptLookup(prompt_lookup) if drafter is None else LookupThenDraft(PromptLookup(prompt_lookup),
                                                                                         drafter)
        spec = Speculative(model, drafter, draft_tokens, decoder)
    encode, decode, eot = get_tokenizer(meta)
    if decoder is not None:  # (the timing printed at the end includes it)
        print("compiling the one-token step at the first token: ~20 s the first time, a few once cached",
              file=sys.stderr)
    ids = [encode(p) for p in prompts]
    which = (lambda i: f"prompt {i + 1} of {len(prompts)}") if len(prompts) > 1 else (lambda i: "the prompt")
    for i, p in enumerate(ids):
        if not p:
            raise UserError(f"{which(i)} is empty: pass --start='some text' (or FILE:prompt.txt)")
        if len(p) > model.config.block_size:
            raise UserError(f"{which(i)} is {len(p)} tokens, longer than the model's context "
                            f"({model.config.block_size}); shorten it")
    if num_beams > 1 and max(map(len, ids)) + max_new_tokens - 1 > model.config.block_size:
        raise UserError(f"beam search has no sliding window: the prompt ({max(map(len, ids))} tokens) + max_new_tokens "
                        f"({max_new_tokens}) must fit the context ({model.config.block_size}); lower --max_new_tokens")
    eos = end_token(meta, eot) if stop_at_eos else None  # (a chat model's <|end|>, else <|endoftext|>)
    gen = torch.Generator(device=dev).manual_seed(seed)

    results, clock, early = Results(output), Clock(), {}
    live = num_beams == 1 and len(prompts) == 1 and num_samples == 1  # (one sample streams to stdout)
    try:
        with torch.inference_mode(), autocast_ctx(dev, dt):  # (no autograd bookkeeping at all: cheaper ops)
            if num_beams > 1:
                for prompt, p in zip(prompts, ids):
                    out = beam_search(model, torch.tensor([p], device=dev), max_new_tokens, num_beams=num_beams,
                                      length_penalty=length_penalty, eos_token_id=eos, use_cache=use_cache)
                    clock.tick(out.size(1) - len(p))
                    print(prompt + results.add(finished(prompt, out[0, len(p):].tolist(), eos, stops, decode)))
            elif live or not use_cache or spec is not None:
                for prompt, p in ((pr, pi) for pr, pi in zip(prompts, ids) for _ in range(num_samples)):
                    stream = generate_stream(model, torch.tensor([p], device=dev), max_new_tokens,
                                             temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                             repetition_penalty=repetition_penalty, eos_token_id=eos,
                                             use_cache=use_cache, generator=gen, decoder=decoder)
                    if spec is not None:  # (its tokens as generate_stream's (1, 1) tensors)
                        stream = (torch.tensor([[t]]) for t in spec.stream(p, max_new_tokens, SamplingParams(
                            temperature, top_k, top_p, min_p, repetition_penalty), {eos} - {None}, gen))
                    tokens = stream_tokens(stream, decode, prompt, stops, eos, live, clock)
                    spec_stats.add(spec.stats if spec is not None else Stats())
                    completion = results.add(finished(prompt, tokens, eos, stops, decode))
                    if not live:
                        print(prompt + completion + '\n---------------')
            else:  # every prompt's samples, one batch of the engine
                engine = Engine(model, max_batch=max_batch, decoder=decoder, generator=gen)
                params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
                rows = {engine.add(p, max_new_tokens, params, stop_ids={eos} if eos is not None else ()): (prompt, [])
                        for prompt, p in zip(prompts, ids) for _ in range(num_samples)}
                order = list(rows)
                while engine.pending():
                    events = engine.step()
                    for rid, token, finish in events:
                        rows[rid][1].append(token)
                        if finish:
                            early[rid] = finished(*rows[rid], eos, stops, decode)
                    clock.tick(len(events))
                    # kept and printed in the prompts' order, each as soon as it and those before it are done
                    while order and order[0] in early:
                        print(rows[order[0]][0] + results.add(early.pop(order.pop(0))) + '\n---------------')
                for rid in order:  # (every row ends with a finish event; this is only a safety net)
                    print(rows[rid][0] + results.add(finished(*rows[rid], eos, stops, decode)) + '\n---------------')
    except KeyboardInterrupt:  # Ctrl-C keeps the finished samples (those that finished out of order too)
        for record in early.values():
            results.add(record)
        results.close()
        if live:
            print(flush=True)  # (end the line the stream was printing)
        done = len(results.records)
        raise KeyboardInterrupt(f"stopped by Ctrl-C after {done} of {len(prompts) * num_samples} samples"
                                + (f"; wrote {done} to {output}" if output and done else
                                   f"; wrote nothing to {output}" if output else '')) from None  # (errors.py)
    results.close()
    n_tokens = sum(r['tokens'] for r in results.records)
    print(f"\n{clock.report(n_tokens)}" + (f"; {spec_stats.report()}" if spec is not None else '')
          + (f"; wrote {len(results.records)} samples to {output}" if output else ''),
          file=sys.stderr)


class Results:
    """The finished samples; with --output each is written as it finishes (a JSON line, flushed), so Ctrl-C or a
    crash loses none of them. The file is opened at the first one: no sample, no file (check_output made sure it
    can be written)."""

    def __init__(self, path):
        self.path, self.file, self.records = path, None, []

    def add(self, record):
        """Keep a sample's record; returns its completion."""
        self.records.append(record)
        if self.path:
            try:
                if self.file is None:
                    self.file = open(self.path, 'w', encoding='utf-8')
                self.file.write(json.dumps(record, ensure_ascii=False) + '\n')
                self.file.flush()
            except OSError as e:  # (a disk that filled up)
                raise UserError(f"cannot write {self.path} ({e.strerror or e}); the {len(self.records) - 1} samples "
                                f"before this one are in it") from None
        return record['completion']

    def close(self):
        if self.file is not None:
            self.file.close()


class Clock:
    """Time to the first token (the prefill, and a compile if any) apart from the tokens/s after it."""

    def __init__(self):
        self.t0, self.first, self.last = time.perf_counter(), None, None
        self.tokens = self.first_tokens = 0  # decoded in all, and by the first tick

    def tick(self, tokens=1):
        """tokens: how many the step just finished brought (an engine step: one per row, or a chunk of each)."""
        self.last = time.perf_counter()
        self.tokens += tokens
        if self.first is None:
            self.first, self.first_tokens = self.last, tokens

    def report(self, n_tokens):
        if self.first is None:
            return "no tokens"
        line = f"{n_tokens} tokens in {self.last - self.t0:.2f}s, first token after {self.first - self.t0:.2f}s"
        if self.tokens > self.first_tokens and self.last > self.first:
            line += f"; then {(self.tokens - self.first_tokens) / (self.last - self.first):.1f} tokens/s"
        return line


def finished(prompt, tokens, eos, stops, decode):
    """One sample's record: the completion cut at the end token or a stop string, and why it ended."""
    ended = eos is not None and eos in tokens
    tokens = tokens[:tokens.index(eos)] if ended else tokens
    text = decode(tokens)
    cut = cut_at_stop(text, stops)
    return dict(prompt=prompt, completion=cut, tokens=len(tokens),
                finish_reason='stop' if ended or find_stop(text, stops) >= 0 else 'length')


def stream_tokens(stream, decode, prompt, stops, eos, live, clock):
    """Consume a token stream, printing text as it becomes final when live (stops.StopText: a split character or
    the start of a stop string waits until it is known); returns the tokens up to the end token or the first stop
    string."""
    if live:
        print(prompt, end='', flush=True)
    new, text = [], StopText(decode, stops)
    for tok in stream:
        clock.tick()
        t = tok[0, 0].item()
        new.append(t)
        if t == eos:
            break
        shown = text.push(t)
        if live:
            print(shown, end='', flush=True)
        if text.stopped:
            break
    if live:
        print(text.push(final=True), flush=True)
    return new


if __name__ == '__main__':
    try:
        main()  # a UserError prints one line and exits 1 (gpt/errors.py)
    finally:
        shut_down()
