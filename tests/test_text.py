"""
Bring your own text, take your model anywhere: data/text/prepare.py (char, GPT-2 and trained BPE
tokenizers, uint16/uint32 bins), export.py (a transformers directory whose own classes reproduce
sample.py) and nanoGPT runs (sampled, resumed and exported as they are on disk).
Needs ../shared (Tiny Shakespeare, tiktoken's GPT-2 files, GPT-2's merges); tiny CPU models only.
"""
import importlib.util
import json
import os
import pickle
import types

import numpy as np
import pytest
import torch
from conftest import ROOT, SHARED, events, load_ckpt, run, run_inprocess, tiny

PREPARE = 'data/text/prepare.py'
EOT = '<|endoftext|>'


@pytest.fixture(scope='module')
def corpus(tmp_path_factory, shakespeare_text):
    """A folder of two documents (the start and the end of Tiny Shakespeare), and their texts."""
    text = shakespeare_text.read_text(encoding='utf-8')
    d = tmp_path_factory.mktemp('corpus')
    docs = [text[:120_000], text[-60_000:]]
    (d / 'a.txt').write_text(docs[0], encoding='utf-8')
    (d / 'sub').mkdir()
    (d / 'sub' / 'b.txt').write_text(docs[1], encoding='utf-8')
    (d / '.hidden').write_bytes(b'\0\1 skipped: hidden files are not documents')
    return d, docs


def prepared(tmp_path_factory, corpus, tokenizer, *extra):
    out = tmp_path_factory.getbasetemp() / f'text-{tokenizer}'
    if not (out / 'meta.json').exists():
        run(PREPARE, '--input', corpus[0], f'--tokenizer={tokenizer}', '--out_dir', out, '--num_proc=2', *extra)
    return out


def meta_and_ids(d):
    from gpt import tokendata
    meta = tokendata.load_meta(str(d))
    ids = np.concatenate([np.fromfile(d / f'{s}.bin', dtype=meta['dtype']) for s in ('train', 'val')])
    return meta, ids


# ----------------------------------------------------------------------------- prepare

@pytest.mark.parametrize('tokenizer', ['bpe', 'gpt2', 'char'])
def test_prepare_bins_decode_to_the_corpus(tmp_path_factory, corpus, tokenizer):
    """The bins hold every document, in order, each followed by <|endoftext|> (not for char), exactly."""
    from gpt import tokendata
    d = prepared(tmp_path_factory, corpus, tokenizer, '--vocab_size=600')
    meta, ids = meta_and_ids(d)
    _, decode, eot = tokendata.get_tokenizer(meta)
    sep = EOT if tokenizer != 'char' else ''
    assert decode(ids.tolist()) == sep.join(corpus[1]) + sep
    assert meta['dtype'] == 'uint16' and meta['train_tokens'] + meta['val_tokens'] == len(ids)
    if tokenizer == 'bpe':
        assert meta['vocab_size'] == 600 and (d / 'tokenizer.json').is_file() and eot == meta['eot_id']
        assert (ids == eot).sum() == 2  # only the separators: the text holds no other special token


def test_prepare_reads_a_dataset(tmp_path):
    """--dataset goes through datasets.load_dataset: here a local folder of JSON lines, as offline as a hub name."""
    ds = tmp_path / 'ds'
    ds.mkdir()
    docs = ['hello world\nsecond line', '', 'another doc, <|endoftext|> as text']
    (ds / 'part.jsonl').write_text(''.join(json.dumps({'body': d}) + '\n' for d in docs), encoding='utf-8')
    out = tmp_path / 'out'
    run(PREPARE, '--dataset', ds, '--text_column=body', '--tokenizer=gpt2', '--out_dir', out, '--num_proc=1',
        env={'HF_DATASETS_CACHE': str(tmp_path / 'cache'), 'HF_DATASETS_OFFLINE': '1'})
    from gpt import tokendata
    meta, ids = meta_and_ids(out)
    assert tokendata.get_tokenizer(meta)[1](ids.tolist()) == f'{docs[0]}{EOT}{docs[2]}{EOT}'
    assert (ids == 50256).sum() == 2  # the separators only: the text's '<|endoftext|>' is plain text
    p = run(PREPARE, '--dataset', ds, '--text_column=text', '--out_dir', out, check=False,
            env={'HF_DATASETS_CACHE': str(tmp_path / 'cache'), 'HF_DATASETS_OFFLINE': '1'})
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith("error: no column 'text'")


def test_trained_bpe_round_trips_any_text(tmp_path_factory, corpus):
    from gpt import tokendata
    meta, _ = meta_and_ids(prepared(tmp_path_factory, corpus, 'bpe', '--vocab_size=600'))
    encode, decode, eot = tokendata.get_tokenizer(meta)
    ordinary, _, _ = tokendata.get_tokenizer(meta, ordinary=True)
    held_out = (SHARED / 'data' / 'tinyshakespeare' / 'input.txt').read_text(encoding='utf-8')[500_000:520_000]
    for text in [held_out, 'naïve café — 東京 🙂\r\n\ttabs  and   spaces\x00', ' leading space', '']:
        ids = encode(text)
        assert decode(ids) == text
        assert text == '' or len(ids) < len(text.encode('utf-8'))  # merges were learnt and used
    # in prompts the end-of-text string is the token; in a corpus it is text, several tokens
    assert encode(f'a{EOT}b')[1] == eot and eot not in ordinary(f'a{EOT}b')
    assert decode(ordinary(f'a{EOT}b')) == f'a{EOT}b'


def load_prepare_module():
    spec = importlib.util.spec_from_file_location('text_prepare', ROOT / PREPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pieces_encode_as_the_whole_text(tmp_path_factory, corpus):
    """The cuts that let several processes encode one document never change its tokens."""
    from gpt import tokendata
    prepare = load_prepare_module()
    # line ends with trailing spaces, blank lines and indents, where a careless cut changes the tokens
    seps = ['\n', '  \n', '\n\n', ' \n\n ', '\n ', '\t\n']
    lines = corpus[1][0][:30_000].split('\n')
    text = ''.join(line + seps[i % len(seps)] for i, line in enumerate(lines))
    pieces = prepare.split_safely(text, size=2000)
    assert len(pieces) > 10 and ''.join(pieces) == text
    meta, _ = meta_and_ids(prepared(tmp_path_factory, corpus, 'bpe', '--vocab_size=600'))
    for m in (meta, {'tokenizer': 'gpt2'}):
        encode, _, _ = tokendata.get_tokenizer(m, ordinary=True)
        assert sum((encode(p) for p in pieces), []) == encode(text)


def test_char_matches_shakespeare_char_prepare(tmp_path, char_data, shakespeare_text):
    run(PREPARE, '--input', shakespeare_text, '--tokenizer=char', '--out_dir', tmp_path, '--num_proc=1')
    for name in ('train.bin', 'val.bin'):
        assert (tmp_path / name).read_bytes() == (char_data / name).read_bytes()
    assert json.loads((tmp_path / 'meta.json').read_text())['chars'] == json.loads((char_data / 'meta.json').read_text())['chars']


def test_uint32_bins_train_and_sample(tmp_path):
    """A character vocabulary of ~69,000 code points needs uint32 ids: prepared, trained on and sampled."""
    rng = np.random.default_rng(0)
    alphabet = [chr(c) for c in range(0x100, 0x11400) if not 0xD800 <= c < 0xE000]
    text = ''.join(rng.permutation(alphabet * 3))
    (tmp_path / 'wide.txt').write_text(text, encoding='utf-8')
    data = tmp_path / 'data'
    run(PREPARE, '--input', tmp_path / 'wide.txt', '--tokenizer=char', '--out_dir', data, '--num_proc=2')
    meta = json.loads((data / 'meta.json').read_text(encoding='utf-8'))
    assert meta['vocab_size'] == len(alphabet) > 65_536 and meta['dtype'] == 'uint32'
    assert (data / 'train.bin').stat().st_size == 4 * meta['train_tokens']
    from gpt import tokendata
    batch = tokendata.TokenData(str(data), 16, 8, 'cpu').batch('train', 0)[0]
    assert int(batch.max()) > 65_535  # read back as uint32, not as pairs of uint16 halves
    out = tmp_path / 'out'
    code, stdout, stderr = run_inprocess('train.py', *tiny(data_dir=data, out_dir=out, n_embd=16, block_size=16,
                                                           batch_size=2, max_iters=2, eval_interval=2, eval_iters=1,
                                                           gradient_accumulation_steps=1, plot=False))
    assert code == 0, stderr
    assert np.isfinite(events(out, 'eval')[-1]['val_loss'])
    code, stdout, stderr = run_inprocess('sample.py', f'--out_dir={out}', '--device=cpu', '--num_samples=1',
                                         '--max_new_tokens=5', f'--start={text[:3]}')
    assert code == 0, stderr
    new = stdout[3:].rstrip('\n')
    assert len(new) == 5 and set(new) <= set(alphabet)


# ----------------------------------------------------------------------------- export

def train_tiny(data, out):
    code, _, stderr = run_inprocess('train.py', *tiny(data_dir=data, out_dir=out, max_iters=30, eval_interval=15,
                                                      eval_iters=2, batch_size=4, gradient_accumulation_steps=1,
                                                      plot=False, pad_vocab_multiple=64, learning_rate=3e-3))
    assert code == 0, stderr


def sample_greedy(out_dir, prompt, n=24, *extra):
    code, stdout, stderr = run_inprocess('sample.py', f'--out_dir={out_dir}', '--device=cpu', '--num_samples=1',
                                         '--temperature=0', f'--max_new_tokens={n}', f'--start={prompt}', *extra)
    assert code == 0, stderr
    return stdout[:-1], stderr  # (the stream ends with a newline)


def hf_greedy(hf_dir, prompt, n=24):
    """What a transformers user gets: their own classes, their own greedy generate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    ids = tok(prompt, return_tensors='pt').input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0], skip_special_tokens=True), ids[0].tolist()


@pytest.mark.parametrize('tokenizer', ['char', 'gpt2', 'bpe'])
def test_export_generates_as_sample_py(tmp_path_factory, tmp_path, corpus, tokenizer):
    from gpt import tokendata
    data = prepared(tmp_path_factory, corpus, tokenizer, '--vocab_size=600')
    out, hf_dir = tmp_path / 'out', tmp_path / 'hf'
    train_tiny(data, out)
    code, stdout, stderr = run_inprocess('export.py', f'--out_dir={out}', f'--hf_dir={hf_dir}')
    assert code == 0, stderr
    files = set(os.listdir(hf_dir))
    assert {'config.json', 'model.safetensors', 'generation_config.json', 'README.md', 'tokenizer.json'} <= files
    prompt = 'ROMEO:'  # + 24 new tokens fits the context: transformers' GPT-2 has no sliding window
    ours, _ = sample_greedy(out, prompt)
    theirs, prompt_ids = hf_greedy(hf_dir, prompt)
    assert theirs == ours and len(ours) > len(prompt)
    assert prompt_ids == tokendata.get_tokenizer(load_ckpt(out / 'best.pt')['data_meta'])[0](prompt)
    card = (hf_dir / 'README.md').read_text(encoding='utf-8')
    best = load_ckpt(out / 'best.pt')['best_val_loss']
    assert f'best val loss {best:.4f}' in card and '"learning_rate": 0.003' in card
    if tokenizer == 'gpt2':  # the files GPT-2 tools read: merges.txt as OpenAI published it
        ours_merges = (hf_dir / 'merges.txt').read_text(encoding='utf-8').splitlines()[1:]
        assert ours_merges == (SHARED / 'data' / 'gpt2' / 'vocab.bpe').read_text(encoding='utf-8').splitlines()[1:]
        assert json.loads((hf_dir / 'vocab.json').read_text(encoding='utf-8')) == \
            json.loads((SHARED / 'data' / 'gpt2' / 'encoder.json').read_text(encoding='utf-8'))


# ----------------------------------------------------------------------------- nanoGPT runs

def nanogpt_run(root, text, iters=3):
    """A nanoGPT checkout's files after `python data/shakespeare_char/prepare.py` and a short
    `python train.py config/train_shakespeare_char.py`, written as nanoGPT writes them: meta.pkl by
    pickle.dump, the raw model wrapped by torch.compile (keys '_orig_mod.'), its two-group AdamW,
    best_val_loss a tensor, the config a dict of the script's globals. Returns the nanoGPT model."""
    from tools.bench_reference import RefGPT  # a nanoGPT-style model with nanoGPT's names, independent of ours
    chars = sorted(set(text))
    stoi, itos = {ch: i for i, ch in enumerate(chars)}, {i: ch for i, ch in enumerate(chars)}
    data = root / 'data' / 'shakespeare_char'
    data.mkdir(parents=True)
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    ids[:n].tofile(data / 'train.bin')
    ids[n:].tofile(data / 'val.bin')
    with open(data / 'meta.pkl', 'wb') as f:
        pickle.dump({'vocab_size': len(chars), 'itos': itos, 'stoi': stoi}, f)
    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False, vocab_size=len(chars), dropout=0.0)
    c = types.SimpleNamespace(**model_args, gelu_approx='none', layer_norm_eps=1e-5, d_ff=128,
                              padded_vocab_size=len(chars))
    torch.manual_seed(0)
    raw_model = RefGPT(c)
    for name, p in raw_model.named_parameters():
        torch.nn.init.normal_(p, std=0.2) if p.dim() >= 2 else None
    params = [p for p in raw_model.parameters()]
    optimizer = torch.optim.AdamW([{'params': [p for p in params if p.dim() >= 2], 'weight_decay': 0.1},
                                   {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}],
                                  lr=1e-3, betas=(0.9, 0.99))
    for _ in range(iters):
        x = torch.from_numpy(ids[:64].astype(np.int64)).view(2, 32)
        _, loss = raw_model(x[:, :-1].contiguous(), x[:, 1:].contiguous())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model = torch.compile(raw_model)  # nanoGPT saves the compiled module's state dict
    config = dict(out_dir='out-shakespeare-char', eval_interval=250, eval_iters=200, log_interval=10,
                  eval_only=False, always_save_checkpoint=False, init_from='scratch', wandb_log=False,
                  dataset='shakespeare_char', gradient_accumulation_steps=1, batch_size=64, block_size=32,
                  n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=False, learning_rate=1e-3, max_iters=5000,
                  weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0, decay_lr=True, warmup_iters=100,
                  lr_decay_iters=5000, min_lr=1e-4, backend='nccl', device='cuda', dtype='bfloat16', compile=True)
    out = root / 'out-shakespeare-char'
    out.mkdir()
    torch.save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'model_args': model_args,
                'iter_num': iters, 'best_val_loss': torch.tensor(3.5), 'config': config}, out / 'ckpt.pt')
    return raw_model, itos


def ref_greedy(model, itos, ids, n):
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids]), torch.zeros(1, len(ids), dtype=torch.long))
            ids = ids + [int(logits[0, -1].argmax())]
    return ''.join(itos[i] for i in ids)


def test_nanogpt_run_samples_resumes_and_exports(tmp_path, shakespeare_text, monkeypatch):
    text = shakespeare_text.read_text(encoding='utf-8')[:50_000]
    ref, itos = nanogpt_run(tmp_path, text)
    ckpt_path = tmp_path / 'out-shakespeare-char' / 'ckpt.pt'
    assert any(k.startswith('_orig_mod.') for k in torch.load(ckpt_path, weights_only=True)['model'])
    monkeypatch.chdir(tmp_path)  # as in a nanoGPT checkout: data/shakespeare_char/meta.pkl
    # the same function: our model's logits are the nanoGPT model's (exact GELU, its eps, its weights)
    from gpt import checkpoint, loading
    model, meta, ckpt = loading.load_model('resume', 'out-shakespeare-char', 'ckpt.pt')
    x = torch.from_numpy(np.frombuffer(text[:32].encode(), dtype=np.uint8).astype(np.int64) % 10)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], ref(x, x)[0], rtol=0, atol=1e-5)
    assert meta['tokenizer'] == 'char' and ckpt['imported_from'] == 'nanoGPT'

    stoi = {c: i for i, c in itos.items()}
    prompt = 'ROMEO:'
    expected = ref_greedy(ref, itos, [stoi[c] for c in prompt], 20)
    ours, stderr = sample_greedy('out-shakespeare-char', prompt, 20)
    assert ours == expected and 'nanoGPT checkpoint' in stderr

    code, _, stderr = run_inprocess('export.py', '--out_dir=out-shakespeare-char', '--hf_dir=hf')
    assert code == 0, stderr
    assert hf_greedy(str(tmp_path / 'hf'), prompt, 20)[0] == expected
    assert 'a nanoGPT run, imported' in (tmp_path / 'hf' / 'README.md').read_text()

    # resume: iterations and the AdamW state continue (nanoGPT's data folder, read through meta.pkl)
    before = torch.load(ckpt_path, weights_only=True)['optimizer']
    code, stdout, stderr = run_inprocess('train.py', *tiny(out_dir='out-shakespeare-char', dataset='shakespeare_char',
                                                           data_dir='data/shakespeare_char', init_from='resume',
                                                           max_iters=5, eval_interval=5, eval_iters=1, batch_size=2,
                                                           gradient_accumulation_steps=1, plot=False))
    assert code == 0, stderr
    assert events('out-shakespeare-char', 'start')[0]['iter_num'] == 3
    after = load_ckpt(ckpt_path)
    assert after['iter_num'] == 5 and after['format'] == checkpoint.CHECKPOINT_FORMAT
    assert {int(s['step']) for s in before['state'].values()} == {3}
    assert {int(s['step']) for s in after['optimizer']['state'].values()} == {5}  # nanoGPT's 3 steps, then 2


def test_nanogpt_gpt2_run_keeps_to_the_real_vocabulary(tmp_path, monkeypatch):
    """nanoGPT's GPT-2 runs have 50,304 rows for 50,257 ids and no meta.pkl: they import as GPT-2 BPE
    with the pad rows kept but never sampled, even where a pad row has the highest logit."""
    from gpt import loading
    from gpt.engine import generate
    from tools.bench_reference import RefGPT
    model_args = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, bias=True, vocab_size=50304, dropout=0.0)
    torch.manual_seed(0)
    ref = RefGPT(types.SimpleNamespace(**model_args, gelu_approx='none', layer_norm_eps=1e-5, d_ff=64,
                                       padded_vocab_size=50304))
    x = torch.tensor([[464, 2068, 7586]])
    with torch.no_grad():  # pad rows that win the argmax: 3 times the row of the real winner
        top = int(ref(x, x)[0][0, -1].argmax())
        ref.transformer.wte.weight[50257:] = 3 * ref.transformer.wte.weight[top]
    optimizer = torch.optim.AdamW(ref.parameters())
    out = tmp_path / 'out'
    out.mkdir()
    torch.save({'model': torch.compile(ref).state_dict(), 'optimizer': optimizer.state_dict(),
                'model_args': model_args, 'iter_num': 0, 'best_val_loss': torch.tensor(1e9),
                'config': {'dataset': 'openwebtext'}}, out / 'ckpt.pt')
    monkeypatch.chdir(tmp_path)
    model, meta, _ = loading.load_model('resume', str(out), 'ckpt.pt')
    assert meta['tokenizer'] == 'gpt2' and model.config.vocab_size == 50257
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], ref(x, x)[0], rtol=0, atol=1e-5)  # all 50,304 rows kept
        assert int(ref(x, x)[0][0, -1].argmax()) >= 50257
        assert int(generate(model, x, 5, temperature=0).max()) < 50257


# ----------------------------------------------------------------------------- mistakes: one line each

def one_line_error(p):
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), p.stderr
    return lines[0]


def test_prepare_mistakes(tmp_path):
    (tmp_path / 'empty.txt').write_text('')
    (tmp_path / 'pic.png').write_bytes(b'\x89PNG\r\n\x1a\n\0\0\0\rIHDR')
    (tmp_path / 'latin1.txt').write_bytes('caf\xe9'.encode('latin-1'))
    (tmp_path / 'ok.txt').write_text('some text\n')
    out = tmp_path / 'out'
    cases = {('--input', tmp_path / 'empty.txt'): 'empty',
             ('--input', tmp_path / 'pic.png'): 'not text',
             ('--input', tmp_path / 'latin1.txt'): 'not UTF-8',
             ('--input', tmp_path / 'ok.txt', '--vocab_size=256'): 'at least 257',
             ('--input', tmp_path / 'nothing.txt'): 'no such file'}
    for args, message in cases.items():
        assert message in one_line_error(run(PREPARE, *args, '--out_dir', out, check=False))
    assert not out.exists() or not any(out.glob('*.bin'))  # nothing half-written


def test_load_and_sample_mistakes(tmp_path_factory, tmp_path, corpus, shakespeare_text, monkeypatch):
    import shutil

    from gpt import tokendata
    from gpt.errors import UserError

    # a tokenizer.json that is not the one the bins were made with
    d = tmp_path / 'bpe'
    shutil.copytree(prepared(tmp_path_factory, corpus, 'bpe', '--vocab_size=600'), d)
    (d / 'tokenizer.json').write_text((d / 'tokenizer.json').read_text().replace('"e"', '"E"', 1))
    with pytest.raises(UserError, match='not the tokenizer the bins'):
        tokendata.load_meta(str(d))
    # bins whose size does not fit the dtype meta.json records
    meta = json.loads((d / 'meta.json').read_text())
    (d / 'meta.json').write_text(json.dumps({**meta, 'dtype': 'uint32'}))
    (d / 'tokenizer.json').write_bytes(
        (tmp_path_factory.getbasetemp() / 'text-bpe' / 'tokenizer.json').read_bytes())
    ids = np.fromfile(d / 'train.bin', dtype=np.uint16)
    ids[:len(ids) // 2 * 2 - 1].tofile(d / 'train.bin')  # an odd number of uint16 ids: 2 bytes over a uint32
    with pytest.raises(UserError, match='uint32 tokens meta.json describes'):
        tokendata.TokenData(str(d), 8, 2, 'cpu')
    # a nanoGPT run whose meta.pkl is nowhere to be found: sampling says where it looked
    nanogpt_run(tmp_path / 'nano', shakespeare_text.read_text(encoding='utf-8')[:5_000], iters=1)
    monkeypatch.chdir(tmp_path)
    p = run('sample.py', f'--out_dir={tmp_path / "nano" / "out-shakespeare-char"}', '--device=cpu', check=False)
    note, error = p.stderr.strip().splitlines()  # the import note, then the one-line error
    assert p.returncode == 1 and note.startswith('note: ') and error.startswith('error: ')
    assert 'no meta.pkl to decode' in error
    # a meta.pkl that would run code when unpickled is refused, and nothing runs
    evil = tmp_path / 'evil'
    evil.mkdir()
    with open(evil / 'meta.pkl', 'wb') as f:
        f.write(b"cos\nsystem\n(S'touch " + str(tmp_path / 'pwned').encode() + b"'\ntR.")
    with pytest.raises(UserError, match='only plain data'):
        tokendata.read_meta_pkl(str(evil / 'meta.pkl'))
    assert not (tmp_path / 'pwned').exists()
    # export refuses a model transformers' GPT-2/GPT-1 classes cannot express, and writes nothing
    from gpt import checkpoint
    from model import GPT, GPTConfig
    post_norm = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=5, post_norm=True,
                              gelu_approx='none'))
    (tmp_path / 'odd').mkdir()
    torch.save(dict(format=checkpoint.CHECKPOINT_FORMAT, model=post_norm.state_dict(), iter_num=1,
                    best_val_loss=1.0, model_args=vars(post_norm.config), config={},
                    data_meta={'tokenizer': 'char', 'chars': 'abcde', 'vocab_size': 5}), tmp_path / 'odd' / 'ckpt.pt')
    p = run('export.py', f'--out_dir={tmp_path / "odd"}', f'--hf_dir={tmp_path / "odd-hf"}', check=False)
    assert 'cannot export this model' in one_line_error(p) and not (tmp_path / 'odd-hf').exists()
    assert not list(tmp_path.glob('*export-tmp*'))
    # export refuses to overwrite a directory
    (tmp_path / 'taken').mkdir()
    (tmp_path / 'taken' / 'x').write_text('keep')
    p = run('export.py', f'--out_dir={tmp_path / "nano" / "out-shakespeare-char"}', f'--hf_dir={tmp_path / "taken"}',
            check=False)
    assert 'exists' in one_line_error(p) and (tmp_path / 'taken' / 'x').read_text() == 'keep'


def test_sample_decodes_a_file_of_prompts_as_one_batch(tmp_path, char_data):
    """--start=FILE:x.jsonl: prompts of different lengths in one batch, each completion equal to sample.py's greedy
    output for that prompt alone; --output records them; a stop string ends a row with finish_reason 'stop'."""
    out = tmp_path / 'out'
    train_tiny(char_data, out)
    prompts = ['ROMEO:', 'a', 'What light through yonder window', 'KING']  # (context: 32)
    (tmp_path / 'p.jsonl').write_text('\n'.join([json.dumps(prompts[0]), json.dumps({'prompt': prompts[1]}), '',
                                                 json.dumps(prompts[2]), json.dumps({'prompt': prompts[3]})]))
    alone = [sample_greedy(out, p, 40)[0] for p in prompts]
    code, stdout, stderr = run_inprocess('sample.py', f'--out_dir={out}', '--device=cpu', '--temperature=0',
                                         '--max_new_tokens=40', '--num_samples=1', f'--start=FILE:{tmp_path / "p.jsonl"}',
                                         f'--output={tmp_path / "r.jsonl"}')
    assert code == 0, stderr
    records = [json.loads(line) for line in (tmp_path / 'r.jsonl').read_text().splitlines()]
    assert [r['prompt'] for r in records] == prompts
    assert [r['prompt'] + r['completion'] for r in records] == alone
    assert all(r['tokens'] == 40 and r['finish_reason'] == 'length' for r in records)
    assert 'tokens/s' in stderr and 'first token after' in stderr
    # a stop string: the text up to it, finish_reason 'stop'; a text file with one prompt per line
    stop = records[0]['completion'][5:8]
    (tmp_path / 'p.txt').write_text(prompts[0] + '\n\n' + prompts[3] + '\n')
    code, stdout, stderr = run_inprocess('sample.py', f'--out_dir={out}', '--device=cpu', '--temperature=0',
                                         '--max_new_tokens=40', '--num_samples=2', f'--start=FILE:{tmp_path / "p.txt"}',
                                         '--per_line=True', f'--stop={stop}', f'--output={tmp_path / "s.jsonl"}')
    assert code == 0, stderr
    # (greedy: one sample per prompt, the 2 asked for would be copies)
    first, second = [json.loads(line) for line in (tmp_path / 's.jsonl').read_text().splitlines()]
    assert first['completion'] == records[0]['completion'][:records[0]['completion'].index(stop)]
    assert first['finish_reason'] == 'stop'
    assert second['prompt'] == prompts[3]
    # mistakes: one line each
    (tmp_path / 'bad.jsonl').write_text('{"text": 1}\n')
    code, _, stderr = run_inprocess('sample.py', f'--out_dir={out}', '--device=cpu', f'--start=FILE:{tmp_path / "bad.jsonl"}')
    assert code == 1 and 'line 1: expected a JSON string' in stderr
    (tmp_path / 'long.txt').write_text('ok\n' + 'x' * 40 + '\n')
    code, _, stderr = run_inprocess('sample.py', f'--out_dir={out}', '--device=cpu', f'--start=FILE:{tmp_path / "long.txt"}',
                                    '--per_line=True')
    assert code == 1 and "prompt 2 of 2 is 40 tokens, longer than the model's context (32)" in stderr
