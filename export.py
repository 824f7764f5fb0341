"""
Export a training run (ours or nanoGPT's) as a Hugging Face transformers directory: the weights
(model.safetensors), config.json, generation_config.json, the tokenizer in the files
transformers.AutoTokenizer reads, and a README.md model card with the training config and losses.

$ python export.py --out_dir=out-shakespeare-char --hf_dir=hf/shakespeare-char
$ python export.py --out_dir=out --ckpt_name=ckpt.pt --hf_dir=hf/mine --overwrite=True
$ python export.py --out_dir=out-lora --hf_dir=hf/adapter --adapter=True    # a LoRA run's peft adapter
$ python -c "from transformers import pipeline; print(pipeline('text-generation', 'hf/shakespeare-char')('ROMEO:'))"

The tokenizer, by the run's data:
  gpt2  GPT-2's BPE as vocab.json + merges.txt (rebuilt from tiktoken's files) and tokenizer.json
  bpe   the BPE data/text/prepare.py trained, as tokenizer.json (PreTrainedTokenizerFast)
  char  a tokenizer.json whose ids are the run's character ids (characters outside the vocabulary
        are dropped by it, where sample.py refuses them)
  hf    the transformers tokenizer the run started from, saved as it is
The directory is written beside hf_dir first and renamed into place, so a failed export leaves nothing.
"""

import json
import math
import os
import shutil

import configurator
from gpt import hf, lora, tokendata
from gpt.errors import UserError, check_range
from gpt.loading import load_model
from gpt.tokendata import get_tokenizer

# -----------------------------------------------------------------------------
# config: overridden by a config file, then by --key=value (module-level strings and numbers are config keys,
# so constants are used through their module: tokendata.EOT)
init_from = 'resume'        # 'resume' (a run in out_dir, ours or nanoGPT's), a hub name or an HF dir
out_dir = 'out'             # the training run to export
ckpt_name = 'best.pt'       # 'best.pt' (lowest val loss) or 'ckpt.pt' (latest); falls back to ckpt.pt
hf_dir = ''                 # the directory to write (required)
overwrite = False           # replace hf_dir if it exists (an earlier export: a folder with config.json)
adapter = False             # a LoRA run: write its adapters as a peft directory instead of the merged model
temperature = 0.8           # sampling defaults written to generation_config.json (sample.py's)
top_k = 200                 # sampling default written to generation_config.json
# -----------------------------------------------------------------------------
config = configurator.configure(globals(), verbose=False)


def bytes_to_unicode():
    """GPT-2's map from the 256 bytes to printable characters, which vocab.json and merges.txt spell
    tokens in (printable Latin-1 bytes map to themselves, the others to chr(256 + n))."""
    keep = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + list(range(ord('®'), ord('ÿ') + 1))
    extra = [b for b in range(256) if b not in keep]
    return dict(zip(keep + extra, [chr(b) for b in keep] + [chr(256 + n) for n in range(len(extra))]))


def gpt2_vocab_and_merges():
    """GPT-2's vocab.json ({token: id}) and merges.txt lines, rebuilt from tiktoken's GPT-2 ranks (the same
    files OpenAI published: a token's id is its rank, and the merge that made it is the split BPE
    reaches with only the earlier merges)."""
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    ranks = enc._mergeable_ranks  # bytes -> id; tiktoken keeps no other public accessor for them
    spell = bytes_to_unicode()

    def text(b):
        return ''.join(spell[x] for x in b)

    def bpe(token, max_rank):
        parts = [bytes([b]) for b in token]
        while True:
            pairs = [(ranks.get(a + b), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(((r, i) for r, i in pairs if r is not None and r < max_rank), default=(None, None))
            if rank is None:
                return parts
            parts[i:i + 2] = [parts[i] + parts[i + 1]]

    vocab = {text(b): i for b, i in ranks.items()}
    vocab[tokendata.EOT] = enc.eot_token
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            a, b = bpe(token, rank)  # exactly two parts: the last merge before this rank made the token
            merges.append(f"{text(a)} {text(b)}")
    return vocab, merges


def hf_tokenizer(meta, block_size, out):
    """The run's tokenizer as a transformers tokenizer object, with the tokens a run added to the vocabulary
    (gpt/chat.py's chat tokens) as special tokens at the same ids."""
    tok = base_tokenizer(meta, block_size, out)
    added = meta.get('added_tokens') or {}
    if added:
        tok.add_special_tokens({'additional_special_tokens': sorted(added, key=added.get)})
        wrong = [t for t, i in added.items() if tok.convert_tokens_to_ids(t) != i]
        if wrong:
            raise UserError(f"cannot export the added tokens {', '.join(wrong)} at the ids the model uses: they do "
                            f"not follow the tokenizer's own ids")
    return tok


def base_tokenizer(meta, block_size, out):
    """The run's tokenizer (without added tokens) as a transformers tokenizer object (GPT-2's vocab.json and
    merges.txt are written to `out`, as its source and for tools that read those files)."""
    from transformers import AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerFast
    kind, eot = meta.get('tokenizer'), tokendata.EOT
    common = dict(model_max_length=block_size, clean_up_tokenization_spaces=False)
    if kind == 'gpt2':
        vocab, merges = gpt2_vocab_and_merges()
        with open(os.path.join(out, 'vocab.json'), 'w', encoding='utf-8') as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(os.path.join(out, 'merges.txt'), 'w', encoding='utf-8') as f:
            f.write('#version: 0.2\n' + '\n'.join(merges) + '\n')
        return GPT2TokenizerFast(os.path.join(out, 'vocab.json'), os.path.join(out, 'merges.txt'),
                                 bos_token=eot, eos_token=eot, unk_token=eot, add_prefix_space=False, **common)
    from tokenizers import Tokenizer, decoders, models
    if kind == 'bpe':
        return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(meta['tokenizer_json']),
                                       bos_token=eot, eos_token=eot, **common)
    if kind == 'char':
        # a BPE with no merges over the characters: each character is looked up as one token, in our
        # ids; Fuse joins decoded tokens with nothing between them
        tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(meta['chars'])}, merges=[]))
        tok.decoder = decoders.Fuse()
        return PreTrainedTokenizerFast(tokenizer_object=tok, **common)
    if kind == 'hf':
        return AutoTokenizer.from_pretrained(meta['name'])
    raise UserError(f"cannot export tokenizer {kind!r}: export.py writes char, gpt2, bpe and hf tokenizers")


def final_losses(ckpt):
    """(train, val) of the run's last evaluation in out_dir/log.jsonl, or (None, None)."""
    path = os.path.join(out_dir, 'log.jsonl')
    last = None
    if os.path.exists(path):
        with open(path, encoding='utf-8') as f:
            for line in f:
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if e.get('event') == 'eval' and e.get('iter', -1) <= ckpt['iter_num'] and 'train_loss' in e:
                    last = e
    return (last['train_loss'], last['val_loss']) if last else (None, None)


def model_card(model, meta, ckpt, name):
    c = model.config
    lines = ['---', 'library_name: transformers', 'pipeline_tag: text-generation', 'tags: [gpt2, nanogpt]', '---', '',
             f'# {name}', '',
             f"A {model.num_params() / 1e6:.2f}M-parameter GPT ({c.n_layer} layers, {c.n_head} heads, width {c.n_embd}, "
             f"context {c.block_size}, vocabulary {c.vocab_size}), tokenizer `{meta.get('tokenizer')}`.", '']
    if ckpt is not None:
        origin = ('a nanoGPT run, imported' if ckpt.get('imported_from') == 'nanoGPT' else
                  f"{ckpt['trained_by']} of this repository" if ckpt.get('trained_by') else 'train.py of this repository')
        train, val = final_losses(ckpt)
        lines += [f"Trained by {origin}: {ckpt['iter_num']:,} iterations"
                  + (f", best val loss {ckpt['best_val_loss']:.4f}" if math.isfinite(ckpt['best_val_loss']) else '')
                  + (f"; last evaluation: train loss {train:.4f}, val loss {val:.4f}" if val is not None else '') + '.',
                  '', f"Data: {meta.get('source', 'see the training config')}.", '']
    else:
        lines += [f"Weights of `{init_from}`, exported unchanged.", '']
    lines += ['## Use', '', '```python', 'from transformers import AutoModelForCausalLM, AutoTokenizer',
              f'tok = AutoTokenizer.from_pretrained("{name}")', f'model = AutoModelForCausalLM.from_pretrained("{name}")',
              'ids = tok("Hello", return_tensors="pt").input_ids',
              'print(tok.decode(model.generate(ids, max_new_tokens=50)[0]))', '```', '']
    if ckpt is not None:
        lines += ['## Training config', '', '```json', json.dumps(ckpt.get('config', {}), indent=2, sort_keys=True,
                                                                   default=str), '```', '']
    return '\n'.join(lines)


def check_apart(init_from, out_dir, hf_dir):
    """The export never writes into what it reads: hf_dir is not the run (or Hugging Face directory) it exports,
    nor inside it, nor around it (--overwrite=True deletes hf_dir first, and with it the run)."""
    source = out_dir if init_from == 'resume' else init_from
    if not os.path.isdir(source):
        return  # a hub name
    src, dst = os.path.realpath(source), os.path.realpath(hf_dir)
    if src == dst or dst.startswith(src + os.sep) or src.startswith(dst + os.sep):
        where = 'is' if src == dst else 'is inside' if dst.startswith(src + os.sep) else 'contains'
        raise UserError(f"--hf_dir={hf_dir} {where} the {'run' if init_from == 'resume' else 'model'} being exported "
                        f"({source}); export to a folder of its own, e.g. --hf_dir=hf/{os.path.basename(src)}")


def export_adapter(model):
    """A LoRA run's adapters as peft's adapter directory, for peft.PeftModel.from_pretrained(base model, hf_dir)."""
    if not lora.is_lora(model):
        run = out_dir if init_from == 'resume' else init_from
        raise UserError(f"--adapter=True writes a LoRA run's adapters, and {run} is not a LoRA run (train with "
                        f"--lora_rank=R); drop --adapter to export the whole model")
    tmp = os.path.abspath(hf_dir).rstrip('/') + '.export-tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        lora.save_adapter(model, tmp, base=model.lora_settings.get('base'))
        if os.path.exists(hf_dir):
            shutil.rmtree(hf_dir) if os.path.isdir(hf_dir) else os.unlink(hf_dir)
        os.replace(tmp, hf_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {hf_dir}: {', '.join(sorted(os.listdir(hf_dir)))} (a peft LoRA adapter for "
          f"{model.lora_settings.get('base')})")


def main():
    from transformers import GenerationConfig
    if not hf_dir:
        raise UserError("pass --hf_dir=DIR, the directory to write")
    check_range('temperature', temperature, low=0)  # (written into generation_config.json: checked here, once)
    check_range('top_k', top_k, low=1)
    check_apart(init_from, out_dir, hf_dir)
    if os.path.exists(hf_dir) and not overwrite and (not os.path.isdir(hf_dir) or os.listdir(hf_dir)):
        raise UserError(f"{hf_dir} exists; pass --overwrite=True to replace it, or choose another --hf_dir")
    # --overwrite=True replaces an earlier export (or an empty folder), never anything else: a file, a run, a home
    replaceable = os.path.isdir(hf_dir) and (not os.listdir(hf_dir) or any(
        os.path.isfile(os.path.join(hf_dir, f)) for f in ('config.json', 'adapter_config.json')))
    if overwrite and os.path.exists(hf_dir) and not replaceable:
        raise UserError(f"{hf_dir} is not an exported model (a folder with config.json), so --overwrite=True does not "
                        f"replace it; choose another --hf_dir")
    model, meta, ckpt = load_model(init_from, out_dir, ckpt_name, dropout=0.0)
    if adapter:
        return export_adapter(model)
    lora.strip(model)  # a LoRA run: the adapters merged into the weights (a plain model: nothing to do)
    if meta is None:
        raise UserError("this checkpoint does not say which tokenizer its data used; nothing to export it with")
    _, _, eot = get_tokenizer(meta)  # a tokenizer that cannot be loaded stops here, with its reason
    tmp = os.path.abspath(hf_dir).rstrip('/') + '.export-tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        try:
            hf.save_pretrained(model, tmp, eos_token_id=eot)
        except ValueError as e:  # an architecture GPT-2 / GPT-1 in transformers cannot express
            raise UserError(f"cannot export this model: {e}") from None
        tok = hf_tokenizer(meta, model.config.block_size, tmp)
        tok.save_pretrained(tmp)  # tokenizer.json and tokenizer_config.json (beside GPT-2's vocab.json, merges.txt)
        # sample.py's defaults: `pipeline(...)` and model.generate() sample as sample.py does (temperature 0:
        # greedy). transformers' GPT-2 has no sliding window, so generation stops at the context: max_length
        # (prompt and new tokens) is the context, and pipeline()'s own default of max_new_tokens is capped by it
        sampling = dict(do_sample=True, temperature=temperature, top_k=top_k) if temperature > 0 else dict(do_sample=False)
        GenerationConfig(**sampling, max_length=model.config.block_size, bos_token_id=eot, eos_token_id=eot,
                         pad_token_id=eot).save_pretrained(tmp)
        name = os.path.basename(os.path.abspath(hf_dir))
        with open(os.path.join(tmp, 'README.md'), 'w', encoding='utf-8') as f:
            f.write(model_card(model, meta, ckpt, name))
        if os.path.exists(hf_dir):
            shutil.rmtree(hf_dir) if os.path.isdir(hf_dir) else os.unlink(hf_dir)
        os.replace(tmp, hf_dir)
    except OSError as e:  # an unwritable or full disk: one line, and nothing half-written is left
        raise UserError(f"cannot write {hf_dir} ({e.strerror or e}): choose a writable --hf_dir with space") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {hf_dir}: {', '.join(sorted(os.listdir(hf_dir)))}")


if __name__ == '__main__':
    main()  # a UserError prints one line and exits 1 (configurator.py)
