"""End to end on the CPU, as a user runs it: prepare Shakespeare-char, train, resume, evaluate,
sample, and start from a local Hugging Face directory."""
import math

import numpy as np
import pytest
import torch

from conftest import events, run, tiny

TINY = tiny(n_embd=64, batch_size=16, gradient_accumulation_steps=1, eval_iters=10, log_interval=10, dropout=0.0,
            learning_rate=3e-3, min_lr=3e-4, warmup_iters=20, beta2=0.99)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, char_data):
    out = tmp_path_factory.mktemp('out')
    run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=300',
        '--lr_decay_iters=600', '--eval_interval=100', '--always_save_checkpoint=True')
    return out


def unigram_entropy(path):
    counts = np.bincount(np.fromfile(path, dtype=np.uint16))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_training_learns_well_below_unigram_entropy(trained, char_data):
    h = unigram_entropy(char_data / 'val.bin')  # ~3.31 nats: the best a model without context can do
    evals = events(trained, 'eval')
    assert [e['iter'] for e in evals] == [0, 100, 200, 300]
    assert evals[0]['val_loss'] > math.log(65) - 0.2      # starts near uniform over 65 symbols
    assert evals[-1]['val_loss'] < h - 0.6, evals[-1]    # learned real structure beyond unigrams
    train = events(trained, 'train')
    assert all(k in train[-1] for k in ('loss', 'lr', 'ms', 'tok_s', 'mfu'))
    assert (trained / 'ckpt.pt').exists() and (trained / 'best.pt').exists() and (trained / 'loss.png').exists()


def test_checkpoint_contents(trained):
    ckpt = torch.load(trained / 'ckpt.pt', weights_only=True)
    assert ckpt['iter_num'] == 300
    assert ckpt['config']['max_iters'] == 300 and ckpt['config']['n_layer'] == 2
    assert ckpt['data_meta']['tokenizer'] == 'char' and len(ckpt['data_meta']['chars']) == 65
    best = min(e['val_loss'] for e in events(trained, 'eval'))
    assert ckpt['best_val_loss'] == pytest.approx(best)


def test_resume_continues_iterations_and_loss(trained, char_data, tmp_path):
    import shutil
    out = tmp_path / 'resumed'
    shutil.copytree(trained, out)
    before = events(out, 'eval')[-1]
    run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--init_from=resume', '--max_iters=400',
        '--lr_decay_iters=600', '--eval_interval=100')
    evals = events(out, 'eval')
    again = [e for e in evals if e['iter'] == 300]
    assert len(again) == 2 and again[1]['val_loss'] == pytest.approx(before['val_loss'], abs=1e-6)
    assert evals[-1]['iter'] == 400 and evals[-1]['val_loss'] < before['val_loss'] + 0.05
    resumed_train = [e['iter'] for e in events(out, 'train') if e['iter'] > 300]
    assert resumed_train and resumed_train[0] == 310  # counting went on from the checkpoint
    assert torch.load(out / 'ckpt.pt', weights_only=True)['iter_num'] == 400


def test_eval_only(trained, char_data):
    p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={trained}', '--init_from=resume',
            '--eval_only=True')
    assert 'step 300: train loss' in p.stdout and 'iter ' not in p.stdout.replace('step', '')


def test_sample_prints_decodable_text(trained):
    p = run('sample.py', f'--out_dir={trained}', '--device=cpu', '--num_samples=2', '--max_new_tokens=100',
            '--start=ROMEO:')
    samples = p.stdout.split('---------------')
    assert len([s for s in samples if s.strip()]) == 2
    assert samples[0].strip().startswith('ROMEO:') and len(samples[0].strip()) >= 100
    assert 'tokens/s' in p.stderr


def test_init_from_local_hf_dir(tmp_path, char_data):
    transformers = pytest.importorskip('transformers')
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64,
                                                              vocab_size=65))
    hf.save_pretrained(tmp_path / 'hf')
    out = tmp_path / 'out'
    p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', f'--init_from={tmp_path / "hf"}',
            '--max_iters=20', '--eval_interval=20')
    assert 'initialising from pretrained weights' in p.stdout
    assert torch.load(out / 'ckpt.pt', weights_only=True)['model_args']['n_embd'] == 32


def test_config_typo_is_one_line_error(char_data):
    p = run('train.py', '--lerning_rate=1e-3', check=False)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and 'learning_rate' in p.stderr
    assert 'Traceback' not in p.stderr
