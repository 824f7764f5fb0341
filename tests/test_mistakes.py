"""Mistakes a new user made (issue 40), each run as the user ran it: an --output in a missing or unwritable place, an
existing result file, Ctrl-C in sample.py, eval.py and a prepare script, dpo.py's hint into a finished run, a prepare
over another dataset, greedy decoding with several samples. Every one is one line and loses nothing."""
import hashlib
import json
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run, run_inprocess

from gpt.chat import chat_meta
from gpt.checkpoint import save_checkpoint
from gpt.rl import policy_checkpoint
from gpt.run import make_room
from model import GPT, GPTConfig


@pytest.fixture(scope='module')
def lm(tmp_path_factory, char_data):
    """A tiny untrained character model as a run's out_dir (what it says does not matter here)."""
    out = tmp_path_factory.mktemp('lm')
    meta = json.loads((char_data / 'meta.json').read_text())
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=meta['vocab_size']))
    save_checkpoint(policy_checkpoint(model, meta, {}, 0), str(out / 'ckpt.pt'))
    return out


def sample(lm, *args):
    return run_inprocess('sample.py', f'--out_dir={lm}', '--device=cpu', '--start=ROMEO:', '--max_new_tokens=4', *args)


def one_line(code, err):
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith('error: '), (code, err[-2000:])
    return lines[0]


def files(d):
    """{name: sha256} of the files in d."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(d).iterdir()) if p.is_file()}


def interrupt_when(ready, script, *args, timeout=300):
    """Start `python script args...`, wait until ready(its stderr so far) says it is under way (a file it wrote, a
    line it printed: no timing), send SIGINT as Ctrl-C does; returns (exit code, stderr). Fails if the script
    ended first."""
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / 'stderr'
        with open(log, 'a') as err:  # (appended to by the script; read here through a file of its own)
            p = subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.time() + timeout
            while p.poll() is None and time.time() < deadline and not ready(log.read_text(errors='replace')):
                time.sleep(0.005)
            assert p.poll() is None, f"{script} ended before the moment to interrupt it:\n{log.read_text()[-2000:]}"
            p.send_signal(signal.SIGINT)
            code = p.wait(timeout=timeout)
            return code, log.read_text(errors='replace')
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def stopped_line(code, err):
    """Ctrl-C's one line: no traceback, and the process ends by SIGINT as Python's own Ctrl-C does (130 in a
    shell)."""
    assert code == -signal.SIGINT and 'Traceback' not in err, (code, err[-3000:])
    return err.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- 1, 2: where sample.py writes

def test_output_in_a_missing_folder_is_made_and_an_unwritable_one_is_one_line(lm, tmp_path):
    out = tmp_path / 'results' / 'new.jsonl'  # (results/ does not exist: made, as train.py makes its out_dir)
    code, _, err = sample(lm, '--num_samples=2', f'--output={out}')
    assert code == 0, err
    assert [json.loads(line)['prompt'] for line in out.read_text().splitlines()] == ['ROMEO:'] * 2
    for bad, message in (('/proc/x.jsonl', 'cannot be written'), (tmp_path / 'results', 'is a folder')):
        code, stdout, err = sample(lm, f'--output={bad}')
        assert message in one_line(code, err) and stdout == ''  # (refused before generating anything)


def test_an_existing_output_is_replaced_only_when_asked(lm, tmp_path):
    out = tmp_path / 'r.jsonl'
    out.write_text(''.join(json.dumps({'prompt': 'p', 'completion': str(i)}) + '\n' for i in range(12)))
    before = out.read_bytes()
    code, stdout, err = sample(lm, f'--output={out}')
    assert '--overwrite=True' in one_line(code, err) and stdout == '' and out.read_bytes() == before
    code, _, err = sample(lm, '--num_samples=2', f'--output={out}', '--overwrite=True')
    assert code == 0 and f'wrote 2 samples to {out}' in err, err
    assert len(out.read_text().splitlines()) == 2


# ----------------------------------------------------------------------------- 3: Ctrl-C keeps what is done

def lines(path):
    try:
        return Path(path).read_text().count('\n')
    except OSError:
        return 0


@pytest.mark.parametrize('how', [['--max_batch=1'], ['--use_cache=False']], ids=['engine', 'one-by-one'])
def test_ctrl_c_in_sample_keeps_the_finished_samples(lm, tmp_path, how):
    out = tmp_path / 's.jsonl'  # 2000 samples: far more than finish between the first line and the signal
    code, err = interrupt_when(lambda _: lines(out) >= 1, 'sample.py', f'--out_dir={lm}', '--device=cpu',
                               '--start=ROMEO:', '--max_new_tokens=8', '--num_samples=2000', f'--output={out}', *how)
    last = stopped_line(code, err)
    n = lines(out)
    assert 1 <= n < 2000 and last == f"stopped by Ctrl-C after {n} of 2000 samples; wrote {n} to {out}", err
    assert all(json.loads(line)['prompt'] == 'ROMEO:' for line in out.read_text().splitlines())


def test_ctrl_c_in_eval_writes_the_finished_tasks(lm, tmp_path, shakespeare_text):
    (tmp_path / 'mc.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in (
        {'context': 'ROMEO: I', 'choices': [' am', ' was'], 'label': 0},
        {'context': 'JULIET: O', 'choices': [' Romeo', ' night'], 'label': 0})))
    (tmp_path / 'text.txt').write_text(shakespeare_text.read_text()[:50_000])  # stride 1: 50,000 forward passes
    res = tmp_path / 'ev' / 'eval.json'
    # the second task's progress bar has moved: the first has finished, and the second is under way
    second = lambda err: re.search(r'perplexity: +\d+%[^\n\r]* [1-9]\d*/\d+', err)
    code, err = interrupt_when(second, 'eval.py', f'--out_dir={lm}', '--device=cpu', '--tasks=mc,perplexity',
                               f'--mc_data={tmp_path / "mc.jsonl"}', f'--perplexity_data={tmp_path / "text.txt"}',
                               '--stride=1', '--batch_size=1', f'--results_file={res}')
    assert stopped_line(code, err) == f"stopped by Ctrl-C after 1 of 2 tasks; wrote the results of mc to {res}"
    record = json.loads(res.read_text())
    assert list(record['results']) == ['mc'] and record['results']['mc']['n'] == 2
    assert record['stopped'] == 'stopped by Ctrl-C after 1 of 2 tasks'


def test_ctrl_c_in_a_prepare_script_is_one_line(tmp_path):
    """Any script's Ctrl-C is one line (gpt.errors.exit_on_user_error, installed by configure() and by the prepare
    scripts' get_parser): here a download that hangs (a server that accepts and never answers)."""
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(1)
    server.settimeout(0.05)
    accepted = []

    def connected(_):  # (the script's request has connected: it waits for the answer)
        try:
            accepted.append(server.accept()[0])
        except TimeoutError:
            pass
        return bool(accepted)
    try:
        code, err = interrupt_when(connected, 'data/shakespeare_char/prepare.py', '--out_dir', tmp_path / 'd',
                                   '--url', f'http://127.0.0.1:{server.getsockname()[1]}/input.txt')
    finally:
        for s in (*accepted, server):
            s.close()
    assert stopped_line(code, err) == 'stopped by Ctrl-C'
    assert not list((tmp_path / 'd').iterdir())  # (no half-downloaded file)


# ----------------------------------------------------------------------------- 4: each script's own flags

def test_dpo_into_a_finished_run_names_its_own_resume_flag(tmp_path):
    chars = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    meta = chat_meta(dict(tokenizer='char', chars=chars, vocab_size=len(chars)))
    (tmp_path / 'sft').mkdir()
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=48, vocab_size=meta['vocab_size']))
    save_checkpoint(policy_checkpoint(model, meta, {}, 0), str(tmp_path / 'sft' / 'ckpt.pt'))
    rng, words = random.Random(0), ['thee', 'were', 'eye', 'king', 'lord', 'my', 'good', 'and']
    prefs = tmp_path / 'prefs.jsonl'
    prefs.write_text(''.join(json.dumps({'prompt': 'Now', 'responses': rng.sample(words, 2)}) + '\n' for _ in range(8)))
    out = tmp_path / 'dpo'
    args = [f'--init_from={tmp_path / "sft"}', f'--train_data={prefs}', f'--val_data={prefs}', '--device=cpu',
            '--max_iters=1', '--batch_size=2', '--max_val=2', f'--out_dir={out}']
    for _ in range(2):  # the second run moves the first, finished, aside
        code, stdout, err = run_inprocess('dpo.py', *args)
        assert code == 0, err[-2000:]
    (aside,) = tmp_path.glob('dpo.old-*')
    assert f"moved it, untouched, to {aside} (to continue it: --resume=True --out_dir={aside})" in stdout, stdout
    assert 'init_from=resume' not in stdout + err and '--overwrite' not in stdout + err
    code, stdout, err = run_inprocess('dpo.py', '--resume=True', f'--out_dir={aside}')  # the hint works
    assert code == 0 and 'is complete' in stdout, err[-2000:]


def test_train_py_keeps_its_own_hint(tmp_path):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'ckpt.pt').write_bytes(b'x')
    note = make_room(tmp_path / 'run', False, resume_flag='--init_from=resume', overwrite_flag='--overwrite=True')
    assert '(to continue it: --init_from=resume --out_dir=' in note and '--overwrite=True replaces a run' in note


# ----------------------------------------------------------------------------- 5: a prepared dataset is kept

def test_prepare_over_another_dataset_is_refused_and_the_same_one_again_is_not(tmp_path, char_data,
                                                                              shakespeare_text):
    data = Path(shutil.copytree(char_data, tmp_path / 'sc_copy'))
    before = files(data)
    p = run('data/text/prepare.py', '--input', shakespeare_text, '--tokenizer=gpt2', '--out_dir', data, check=False)
    assert '--overwrite' in one_line(p.returncode, p.stderr) and "tokenizer 'char', here 'gpt2'" in p.stderr
    assert files(data) == before
    # the same preparation again (make demo reruns data/shakespeare_char/prepare.py each time): as before
    run('data/shakespeare_char/prepare.py', '--input', shakespeare_text, '--out_dir', data)
    assert files(data) == before
    # asked for: replaced
    (tmp_path / 'few.txt').write_text(shakespeare_text.read_text()[:20_000])
    run('data/text/prepare.py', '--input', tmp_path / 'few.txt', '--tokenizer=gpt2', '--num_proc=1', '--out_dir',
        data, '--overwrite')
    assert json.loads((data / 'meta.json').read_text())['tokenizer'] == 'gpt2'


def test_prepare_of_examples_over_other_examples_is_refused(tmp_path):
    run('data/sort/prepare.py', '--out_dir', tmp_path)
    before = files(tmp_path)
    run('data/sort/prepare.py', '--out_dir', tmp_path)  # the same again
    p = run('data/sort/prepare.py', '--out_dir', tmp_path, '--length=5', check=False)
    assert '--overwrite' in one_line(p.returncode, p.stderr) and 'length 6, here 5' in p.stderr
    assert files(tmp_path) == before
    run('data/sort/prepare.py', '--out_dir', tmp_path, '--length=5', '--overwrite')
    assert json.loads((tmp_path / 'meta.json').read_text())['length'] == 5


# ----------------------------------------------------------------------------- 6: greedy copies

@pytest.mark.parametrize('how,why', [(['--temperature=0'], 'greedy decoding (temperature=0)'),
                                     (['--top_k=1'], 'top_k=1'), (['--num_beams=2'], 'beam search')])
def test_deterministic_decoding_samples_one_per_prompt(lm, tmp_path, how, why):
    out = tmp_path / 'g.jsonl'
    code, stdout, err = sample(lm, *how, f'--output={out}')  # (num_samples: its default, 3)
    assert code == 0, err
    assert f"note: {why} gives the same result every time: one sample per prompt, not 3" in err.splitlines()
    assert len(out.read_text().splitlines()) == 1 and stdout.count('ROMEO:') == 1
