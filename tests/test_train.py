"""End to end on the CPU, as a user runs it: prepare Shakespeare-char, train, resume, evaluate,
sample, and start from a local Hugging Face directory."""
import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import events, run, run_inprocess, tiny

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


def test_final_state_is_saved_even_without_improvement(tmp_path, char_data):
    # a learning rate of 10 scrambles the weights: the val loss never beats iteration 0's, yet the run
    # leaves its final state in ckpt.pt; best.pt is never written, since nothing improved on the start
    out = tmp_path / 'out'
    run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=4', '--eval_interval=2',
        '--learning_rate=10', '--warmup_iters=0', '--decay_lr=False', '--always_save_checkpoint=False')
    evals = events(out, 'eval')
    assert [e['iter'] for e in evals] == [0, 2, 4] and min(e['val_loss'] for e in evals[1:]) > evals[0]['val_loss']
    ckpt = torch.load(out / 'ckpt.pt', weights_only=True)
    assert ckpt['iter_num'] == 4 and not ckpt['is_best']
    assert not (out / 'best.pt').exists()


def test_beam_search_output_ends_at_end_of_text(tmp_path, monkeypatch):
    # sample.py prints beam search's best hypothesis as text: the <|endoftext|> token (and anything a
    # beam generated after it) is not text. The search itself is tested in test_generate.py; here it
    # returns a fixed hypothesis, so the test is about what sample.py prints.
    transformers = pytest.importorskip('transformers')
    import tiktoken

    from gpt import engine
    enc = tiktoken.get_encoding('gpt2')
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64)) \
        .save_pretrained(tmp_path / 'hf')
    prompt, said, after = 'Once upon', ' a time', ' and then some'

    def best_hypothesis(model, x, *args, eos_token_id=None, **kwargs):
        assert eos_token_id == enc.eot_token
        return torch.tensor([x[0].tolist() + enc.encode(said) + [eos_token_id] + enc.encode(after)])
    monkeypatch.setattr(engine, 'beam_search', best_hypothesis)
    code, out, err = run_inprocess('sample.py', f'--init_from={tmp_path / "hf"}', '--device=cpu', '--num_beams=2',
                                   f'--start={prompt}', '--max_new_tokens=10')
    assert code == 0, err
    assert out.strip() == prompt + said


def test_log_lines_show_no_sentinels_and_eta_leaves_evaluation_out(tmp_path, char_data):
    # evaluations of 2 x 20 batches cost ~20 training steps each: an ETA from the last step's wall time
    # would jump after every one. MFU appears once measured, never as a placeholder.
    p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--max_iters=12',
            '--eval_interval=4', '--eval_iters=20', '--log_interval=1', '--peak_flops=1e12', '--plot=False')
    lines = {int(m.group(1)): m.group(0) for m in re.finditer(r'^iter (\d+): .*$', p.stdout, re.M)}
    assert sorted(lines) == list(range(12))
    assert not re.search(r'-\d+\.\d+%|nan|inf', p.stdout.split('step 0:')[1]), p.stdout
    assert 'mfu' not in lines[0] and 'mfu' in lines[11]
    eta = {i: float(re.search(r'eta ([\d.]+)min', line).group(1)) for i, line in lines.items() if 'eta' in line}
    for i in (5, 9):  # the first step after each evaluation
        assert eta[i] <= 3 * eta[i - 2] + 0.01, (i, eta)


def test_training_scores_eval_tasks_at_each_evaluation(tmp_path, char_data):
    # eval.py's tasks scored by train.py as it evaluates: a multiple-choice set on the character model, its
    # accuracy logged with the losses (log.jsonl, the log line) and equal to what eval.py gives the checkpoint
    mc = tmp_path / 'mc.jsonl'
    mc.write_text(''.join(json.dumps({'context': 'ROMEO:', 'choices': [' O, she doth teach', ' qzx vvq', ' jjj kk'],
                                      'label': 0}) + '\n' for _ in range(3)))
    out = tmp_path / 'out'
    p = run('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=20', '--eval_interval=10',
            '--eval_tasks=mc', f'--eval_tasks_data={mc}', '--plot=True')
    evals = events(out, 'eval')
    assert [e['iter'] for e in evals] == [0, 10, 20] and all(0 <= e['mc/acc'] <= 1 for e in evals)
    assert f"mc/acc {evals[-1]['mc/acc']:.4f}" in p.stdout and (out / 'loss.png').exists()
    r = run('eval.py', '--init_from=resume', f'--out_dir={out}', '--ckpt_name=ckpt.pt', '--tasks=mc',
            f'--mc_data={mc}', '--device=cpu', f'--results_file={tmp_path / "r.json"}')
    assert r.returncode == 0
    scored = json.loads((tmp_path / 'r.json').read_text())['results']['mc']
    assert scored['acc'] == pytest.approx(evals[-1]['mc/acc']) and scored['acc_norm'] == pytest.approx(
        evals[-1]['mc/acc_norm'])
