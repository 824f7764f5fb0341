"""
No command loses a result or runs silently wrong (issue 32): each test makes a mistake as a user makes it, the
command line in a subprocess, and checks the one `error: ...` line, the non-zero exit and that every file that
was there before is as it was (bytes and modification times). Also what a user sees change: a new run into a
run's out_dir, a run's out_dir locked while it trains, eval.py keeping earlier results, a resumed run keeping
its own settings over a config file's, the exported directory in transformers' pipeline, the thread count.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SHARED, load_ckpt, run, run_inprocess, tiny

TINY = tiny(batch_size=4, gradient_accumulation_steps=1, eval_iters=2, log_interval=1, plot=False,
            learning_rate=1e-3, warmup_iters=2, lr_decay_iters=6)
ENV = {'OMP_NUM_THREADS': '1', 'WANDB_MODE': 'offline'}


def snapshot(*dirs):
    """{file: (sha256, mtime)} of every file under dirs: nothing may change, the run log included."""
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for d in dirs for p in sorted(Path(d).rglob('*')) if p.is_file()}


def mistake(script, *args):
    """`python script args` as a user types it: it must exit non-zero with exactly one `error: ...` line."""
    p = run(script, *args, check=False, env=ENV, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(lines) == 1 and lines[0].startswith('error: '), (p.returncode, p.stderr[-3000:])
    return lines[0]


@pytest.fixture(scope='module')
def lm_run(tmp_path_factory, char_data):
    """A finished 6-iteration character-level language-model run (ckpt.pt, best.pt, log.jsonl). Read-only."""
    out = tmp_path_factory.mktemp('lm') / 'run'
    code, _, err = run_inprocess('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=6',
                                 '--eval_interval=3')
    assert code == 0, err
    return out


@pytest.fixture
def run_copy(tmp_path, lm_run):
    return Path(shutil.copytree(lm_run, tmp_path / 'run'))


@pytest.fixture(scope='module')
def reward_run(tmp_path_factory, lm_run):
    """A reward model's out_dir as reward.py writes it (rl.reward_checkpoint: kind 'reward', a scalar head)."""
    from gpt import checkpoint, loading, rl
    from gpt.heads import RewardModel
    out = tmp_path_factory.mktemp('rm')
    ckpt = load_ckpt(lm_run / 'ckpt.pt')
    rm = RewardModel(loading.model_from_checkpoint(ckpt))
    checkpoint.save_checkpoint(rl.reward_checkpoint(rm, ckpt['data_meta'], {}, 3), str(out / 'ckpt.pt'))
    return out


@pytest.fixture(scope='module')
def task_run(tmp_path_factory, lm_run):
    """A classifier fine-tuned by finetune.py (kind 'finetune'), and its transformers export."""
    d = tmp_path_factory.mktemp('task')
    data = d / 'd.jsonl'
    data.write_text(''.join(json.dumps({'text': t, 'label': ['no', 'yes'][i % 2]}) + '\n'
                            for i, t in enumerate(['To be', 'Romeo!', 'Now is', 'O, woe!'])))
    out = d / 'cls'
    code, _, err = run_inprocess('finetune.py', f'--init_from={lm_run}', f'--data_files=train={data},val={data}',
                                 '--device=cpu', '--epochs=1', '--batch_size=4', '--fields=text', f'--out_dir={out}')
    assert code == 0, err
    code, _, err = run_inprocess('finetune.py', f'--out_dir={out}', '--device=cpu', f'--export={d / "hf"}')
    assert code == 0, err
    return out, d / 'hf', data


# ----------------------------------------------------------------------------- train.py: never replace a run

def moved(snap, src, dest):
    return {k.replace(str(src), str(dest), 1): v for k, v in snap.items()}


def test_rerunning_a_command_keeps_the_old_run_aside(run_copy, char_data):
    """The same command twice: the second run trains in out_dir, the first is kept, every file as it was (bytes and
    modification times), in the folder the log names; --overwrite=True replaces the run instead."""
    before = snapshot(run_copy)
    cmd = [*TINY, f'--data_dir={char_data}', f'--out_dir={run_copy}', '--max_iters=2', '--eval_interval=2']
    p = run('train.py', *cmd, env=ENV)
    aside = [d for d in run_copy.parent.iterdir() if d.name.startswith('run.old-')]
    assert len(aside) == 1 and f'note: {run_copy} held a run (ckpt.pt, best.pt); moved it, untouched, to ' \
                                f'{aside[0]}' in p.stdout
    assert snapshot(aside[0]) == moved(before, run_copy, aside[0])
    assert load_ckpt(run_copy / 'ckpt.pt')['iter_num'] == 2
    starts = [e for e in map(json.loads, (run_copy / 'log.jsonl').read_text().splitlines()) if e['event'] == 'start']
    assert len(starts) == 1  # a log of its own
    # a third time: another folder, the second run kept too; then --init_from=resume continues an old one
    second = snapshot(run_copy)
    run('train.py', *cmd, env=ENV)
    aside = sorted(d for d in run_copy.parent.iterdir() if d.name.startswith('run.old-'))
    assert len(aside) == 2 and snapshot(aside[1]) == moved(second, run_copy, aside[1])  # (named by time: sorted)
    # asked for: the run is replaced, not kept
    p = run('train.py', *cmd, '--overwrite=True', env=ENV)
    assert f'note: --overwrite=True: deleted the run that was in {run_copy}' in p.stdout
    assert len([d for d in run_copy.parent.iterdir() if d.name.startswith('run.old-')]) == 2


def test_a_mistake_in_a_new_run_moves_nothing(run_copy, char_data):
    before = snapshot(run_copy)
    msg = mistake('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={run_copy}', '--max_iters=2',
                  '--learning_rate=-1')
    assert 'learning_rate' in msg
    assert snapshot(run_copy) == before and not list(run_copy.parent.glob('run.old-*'))


def test_a_second_run_into_a_training_out_dir_stops_and_a_killed_run_leaves_no_lock(tmp_path, char_data):
    out = tmp_path / 'out'
    first = subprocess.Popen([sys.executable, 'train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}',
                              '--max_iters=1000000', '--eval_interval=5'], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, **ENV})
    try:
        for line in first.stdout:  # it trains, and has saved a checkpoint (to resume from)
            if line.startswith('saved checkpoint'):
                break
        for args in ([], ['--init_from=resume'], ['--overwrite=True']):
            msg = mistake('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}', '--max_iters=2', *args)
            assert f'another process is training into {out}' in msg
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the OS released the killed run's lock: it resumes at once
    at = load_ckpt(out / 'ckpt.pt')['iter_num']
    run('train.py', '--init_from=resume', f'--out_dir={out}', f'--max_iters={at + 2}', env=ENV)
    assert load_ckpt(out / 'ckpt.pt')['iter_num'] == at + 2


def test_resume_keeps_the_runs_settings_over_a_config_files(run_copy, tmp_path, char_data):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text('max_iters = 5000\nlearning_rate = 0.5\n')
    p = run('train.py', cfg, '--init_from=resume', f'--out_dir={run_copy}', f'--data_dir={char_data}', env=ENV)
    assert "note: kept the run's learning_rate=0.001, max_iters=6 over the config file's" in p.stdout
    assert '--learning_rate=... --max_iters=...' in p.stdout
    assert load_ckpt(run_copy / 'ckpt.pt')['iter_num'] == 6  # the run was finished, and still is
    # on the command line it applies, and the log says so
    p = run('train.py', cfg, '--init_from=resume', f'--out_dir={run_copy}', f'--data_dir={char_data}',
            '--max_iters=7', env=ENV)
    assert 'overridden here: max_iters=7 (the run had 6)' in p.stdout
    assert load_ckpt(run_copy / 'ckpt.pt')['iter_num'] == 7


def test_resume_of_a_finetune_run_names_finetune(task_run, char_data):
    out, _, _ = task_run
    before = snapshot(out)
    msg = mistake('train.py', '--init_from=resume', f'--out_dir={out}', f'--data_dir={char_data}', '--device=cpu')
    assert 'finetune.py' in msg and 'not a train.py run' in msg.replace('not train.py', 'not a train.py run')
    assert 'eval_interval' not in msg
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- tokenizers

@pytest.fixture(scope='module')
def bpe_run(tmp_path_factory, shakespeare_text):
    d = tmp_path_factory.mktemp('bpe')
    text = d / 'in.txt'
    text.write_text(shakespeare_text.read_text(encoding='utf-8')[:60000], encoding='utf-8')
    run('data/text/prepare.py', '--input', text, '--tokenizer=bpe', '--vocab_size=300', '--num_proc=1',
        '--out_dir', d / 'data', env=ENV)
    code, _, err = run_inprocess('train.py', *TINY, f'--data_dir={d / "data"}', f'--out_dir={d / "run"}',
                                 '--max_iters=2', '--eval_interval=2')
    assert code == 0, err
    return d


def test_a_model_on_a_dataset_of_another_tokenizer_is_refused(tmp_path, bpe_run, char_data, lm_run):
    before = snapshot(bpe_run, char_data)
    msg = mistake('train.py', *TINY, f'--init_from={bpe_run / "run"}', f'--data_dir={char_data}',
                  f'--out_dir={tmp_path / "new"}', '--max_iters=2')
    assert 'trained BPE (300 ids) tokens' in msg and 'character-level (65 characters)' in msg
    assert not (tmp_path / 'new' / 'ckpt.pt').exists()
    # resuming on another dataset of the same size but other characters
    other = Path(shutil.copytree(char_data, tmp_path / 'other'))
    meta = json.loads((other / 'meta.json').read_text())
    (other / 'meta.json').write_text(json.dumps({**meta, 'chars': meta['chars'][::-1]}))
    run_dir = Path(shutil.copytree(lm_run, tmp_path / 'run'))
    before_run = snapshot(run_dir)
    msg = mistake('train.py', *TINY, '--init_from=resume', f'--out_dir={run_dir}', f'--data_dir={other}',
                  '--max_iters=8')
    assert 'with other token ids' in msg
    assert snapshot(bpe_run, char_data) == before and snapshot(run_dir) == before_run


def test_char_data_over_a_bpe_dataset_leaves_no_stale_tokenizer(tmp_path, bpe_run):
    data = Path(shutil.copytree(bpe_run / 'data', tmp_path / 'data'))
    assert (data / 'tokenizer.json').exists()
    p = run('data/text/prepare.py', '--input', bpe_run / 'in.txt', '--tokenizer=char', '--num_proc=1',
            '--out_dir', data, '--overwrite', env=ENV)  # (replacing another dataset is asked for)
    assert 'removed' in p.stdout and not (data / 'tokenizer.json').exists()
    assert json.loads((data / 'meta.json').read_text())['tokenizer'] == 'char'


# ----------------------------------------------------------------------------- kinds of checkpoints

LM_SCRIPTS = [('sample.py', ['--max_new_tokens=3', '--num_samples=1', '--device=cpu']),
              ('eval.py', ['--tasks=perplexity', f'--perplexity_data={SHARED / "data/tinyshakespeare/input.txt"}',
                           '--limit=1', '--device=cpu']),
              ('export.py', ['--hf_dir=HF'])]


@pytest.mark.parametrize('script,args', LM_SCRIPTS, ids=[s for s, _ in LM_SCRIPTS])
def test_a_reward_or_task_model_is_no_language_model(tmp_path, script, args, reward_run, task_run):
    task_out, task_hf, _ = task_run
    args = [a.replace('HF', str(tmp_path / 'hf')) for a in args]
    before = snapshot(reward_run, task_out, task_hf)
    msg = mistake(script, f'--out_dir={reward_run}', '--ckpt_name=ckpt.pt', *args)
    assert 'is a reward model (reward.py), not a language model' in msg
    msg = mistake(script, f'--out_dir={task_out}', *args)
    assert 'is a task model (a classifier fine-tuned by finetune.py), not a language model' in msg
    msg = mistake(script, f'--init_from={task_hf}', *args)
    assert 'ForSequenceClassification' in msg and 'not a language model' in msg
    assert snapshot(reward_run, task_out, task_hf) == before and not (tmp_path / 'hf').exists()


@pytest.mark.parametrize('script,args', [('ppo.py', ['--prompts=p.jsonl']),
                                         ('dpo.py', ['--train_data=t.jsonl', '--val_data=v.jsonl']),
                                         ('reward.py', ['--train_data=t.jsonl', '--val_data=v.jsonl'])])
def test_a_reward_model_is_no_policy(tmp_path, script, args, reward_run):
    before = snapshot(reward_run)
    msg = mistake(script, f'--init_from={reward_run}', f'--out_dir={tmp_path / "out"}', '--device=cpu', *args)
    assert 'is a reward model (reward.py), not a language model' in msg
    assert snapshot(reward_run) == before


def test_old_checkpoints_without_a_kind(tmp_path, lm_run):
    from gpt import checkpoint
    ckpt = load_ckpt(lm_run / 'ckpt.pt')
    assert ckpt['kind'] == 'lm'
    del ckpt['kind']
    assert checkpoint.checkpoint_kind(ckpt) == 'lm'
    assert checkpoint.checkpoint_kind({**ckpt, 'head': {}}) == 'finetune'
    assert checkpoint.checkpoint_kind({**ckpt, 'kind': 'task'}) == 'finetune'


@pytest.mark.parametrize('script,args', LM_SCRIPTS[:2], ids=[s for s, _ in LM_SCRIPTS[:2]])
def test_a_missing_ckpt_name_is_an_error(script, args, run_copy):
    before = snapshot(run_copy)
    msg = mistake(script, f'--out_dir={run_copy}', '--ckpt_name=foo.pt', *args)
    assert f'no checkpoint {run_copy / "foo.pt"}' in msg and 'best.pt, ckpt.pt' in msg
    assert snapshot(run_copy) == before
    (run_copy / 'best.pt').unlink()  # the default, best.pt, still falls back to the latest state
    run(script, f'--out_dir={run_copy}', *args, env=ENV)


# ----------------------------------------------------------------------------- export.py

@pytest.mark.parametrize('hf_dir', ['.', 'hf', '..'])
def test_export_never_writes_into_the_run_it_reads(run_copy, hf_dir):
    before = snapshot(run_copy.parent)
    target = run_copy / hf_dir
    msg = mistake('export.py', f'--out_dir={run_copy}', f'--hf_dir={target}', '--overwrite=True')
    assert {'.': ' is the run', 'hf': 'is inside the run', '..': 'contains the run'}[hf_dir] in msg
    assert snapshot(run_copy.parent) == before


@pytest.mark.parametrize('arg', ['--temperature=-1', '--temperature=nan', '--top_k=0'])
def test_export_checks_its_sampling_settings(tmp_path, run_copy, arg):
    msg = mistake('export.py', f'--out_dir={run_copy}', f'--hf_dir={tmp_path / "hf"}', arg)
    assert arg.split('=')[0][2:] in msg
    assert not (tmp_path / 'hf').exists()


def test_exported_run_works_in_the_transformers_pipeline(tmp_path, lm_run):
    transformers = pytest.importorskip('transformers')
    run('export.py', f'--out_dir={lm_run}', f'--hf_dir={tmp_path / "hf"}', env=ENV)
    gen = json.loads((tmp_path / 'hf' / 'generation_config.json').read_text())
    assert gen['max_length'] == 32  # the context: the pipeline's default generation stops there
    pipe = transformers.pipeline('text-generation', str(tmp_path / 'hf'))
    text = pipe('ROMEO:')[0]['generated_text']
    assert text.startswith('ROMEO:') and len(text) <= 32
    run('export.py', f'--out_dir={lm_run}', f'--hf_dir={tmp_path / "greedy"}', '--temperature=0', env=ENV)
    # (read as transformers reads it: before 5.x it leaves default values such as do_sample=False out of the file)
    assert transformers.GenerationConfig.from_pretrained(tmp_path / 'greedy').do_sample is False


# ----------------------------------------------------------------------------- eval.py keeps results

def test_eval_keeps_earlier_results(tmp_path, lm_run, shakespeare_text):
    mc = tmp_path / 'mc.jsonl'
    mc.write_text(''.join(json.dumps({'context': 'ROMEO', 'choices': [':', 'x'], 'label': 0}) + '\n'
                          for _ in range(2)))
    results = tmp_path / 'r.json'
    common = [f'--out_dir={lm_run}', '--device=cpu', '--progress=False', f'--results_file={results}']
    run('eval.py', *common, '--tasks=perplexity', f'--perplexity_data={shakespeare_text}', '--limit=1', env=ENV)
    first = json.loads(results.read_text())
    p = run('eval.py', *common, '--tasks=mc', f'--mc_data={mc}', env=ENV)
    assert 'earlier evaluation' in p.stdout
    got = json.loads(results.read_text())
    assert set(got['results']) == {'perplexity', 'mc'} and got['results']['perplexity'] == first['results']['perplexity']
    assert got['history'] == [{k: v for k, v in first.items() if k != 'history'}]  # (as it was written)
    # a file that is not eval.py's is left alone
    other = tmp_path / 'notes.json'
    other.write_text('my notes')
    before = snapshot(tmp_path)
    msg = mistake('eval.py', f'--out_dir={lm_run}', '--device=cpu', '--tasks=mc', f'--mc_data={mc}',
                  f'--results_file={other}')
    assert 'is not an eval.py results file' in msg
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- tracebacks made one line

@pytest.fixture
def latin1(tmp_path):
    path = tmp_path / 'latin1.txt'
    path.write_bytes('Roméo et Juliette\n'.encode('latin-1'))
    return path


def test_sample_bad_stop_and_undecodable_prompt(run_copy, latin1):
    before = snapshot(run_copy, latin1.parent)
    msg = mistake('sample.py', f'--out_dir={run_copy}', '--device=cpu', "--stop=[bad json")
    assert "--stop='[bad json' starts with '[' but is not a JSON list" in msg
    msg = mistake('sample.py', f'--out_dir={run_copy}', '--device=cpu', '--stop=x\\')
    assert 'bad escape' in msg
    msg = mistake('sample.py', f'--out_dir={run_copy}', '--device=cpu', f'--start=FILE:{latin1}')
    assert f'the prompt file {latin1} is not UTF-8 text' in msg
    assert snapshot(run_copy, latin1.parent) == before


def test_eval_undecodable_files(tmp_path, run_copy, latin1):
    before = snapshot(run_copy, latin1.parent)
    msg = mistake('eval.py', f'--out_dir={run_copy}', '--device=cpu', '--tasks=perplexity',
                  f'--perplexity_data={latin1}')
    assert f'the perplexity text {latin1} is not UTF-8 text' in msg
    msg = mistake('eval.py', f'--out_dir={run_copy}', '--device=cpu', '--tasks=mc', f'--mc_data={latin1}')
    assert 'is not UTF-8 text' in msg
    assert snapshot(run_copy, latin1.parent) == before


@pytest.mark.parametrize('name,content,message', [
    ('bad.jsonl', b'{"text": "To be", "label": "yes"}\n{"text": "O", \n', 'as json: line 2 is not JSON'),
    ('bad.json', b'[{"text": "To be"', 'cannot read BAD as json'),
    ('bad.jsonl', 'Rom\u00e9o'.encode('latin-1'), 'the data file BAD is not UTF-8 text')])
def test_finetune_predict_on_a_malformed_file(tmp_path, task_run, name, content, message):
    out, _, _ = task_run
    bad = tmp_path / name
    bad.write_bytes(content)
    before = snapshot(out, tmp_path)
    msg = mistake('finetune.py', f'--out_dir={out}', '--device=cpu', f'--predict={bad}')
    assert message.replace('BAD', str(bad)) in msg
    assert snapshot(out, tmp_path) == before


# ----------------------------------------------------------------------------- the machine and the README

def test_threads_respect_the_user_and_the_load(monkeypatch, tmp_path):
    from gpt import device
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    assert device.cpu_threads() is None  # the user's choice stands (torch reads it)
    monkeypatch.delenv('OMP_NUM_THREADS')
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, 'cpu_count', lambda: 2)
    monkeypatch.setattr(device, 'CGROUP_QUOTAS', (str(tmp_path / 'cpu.max'), str(tmp_path / 'cpu.cfs_quota_us')))
    loadavg = tmp_path / 'loadavg'
    monkeypatch.setattr(device, 'LOADAVG', str(loadavg))

    def machine(average, running):
        monkeypatch.setattr(os, 'getloadavg', lambda: (average, 0.0, 0.0))
        loadavg.write_text(f'{average} 0.0 0.0 {running}/300 123\n')  # (running counts this process)
        return device.cpu_threads()

    assert machine(0.1, 1) == 2  # an idle machine: every core
    assert machine(1.6, 1) == 1  # another process kept a core busy over the last minute
    assert machine(0.1, 2) == 1  # ... or is running now (a load that started seconds ago)
    assert machine(9.0, 9) == 1  # never fewer than one
    # a container's CPU quota counts as fewer cores (torch's default takes the host's)
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, 'cpu_count', lambda: 8)
    assert machine(0.0, 1) == 8
    (tmp_path / 'cpu.max').write_text('200000 100000\n')
    assert device.usable_cores() == 2 and machine(0.0, 1) == 2
    (tmp_path / 'cpu.max').write_text('max 100000\n')
    assert device.usable_cores() == 8


def test_the_offline_note_names_every_folder_that_reads_input_txt():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    note = readme[readme.index('Offline?'):][:800]
    readers = sorted(p.parent.name for p in (ROOT / 'data').glob('*/prepare.py')
                     if 'get_input_text' in p.read_text(encoding='utf-8'))
    assert len(readers) >= 3
    for name in readers:
        assert f'data/{name}/input.txt' in note or f'data/{name}/' in note, name


def test_finetune_predict_with_a_language_model(lm_run, task_run):
    _, _, data = task_run
    before = snapshot(lm_run)
    msg = mistake('finetune.py', f'--out_dir={lm_run}', '--device=cpu', f'--predict={data}')
    assert 'is a language model, not a task model' in msg and 'make one with finetune.py' in msg
    assert snapshot(lm_run) == before


def test_other_undecodable_files_are_one_line(tmp_path, lm_run, char_data, latin1):
    """A config file, a dataset's meta.json, preference data, a corpus to prepare: not UTF-8, one line each."""
    cfg = tmp_path / 'cfg.py'
    cfg.write_bytes('max_iters = 5  # café\n'.encode('latin-1'))
    assert 'cannot read config file' in mistake('train.py', cfg, '--device=cpu')
    data = Path(shutil.copytree(char_data, tmp_path / 'data'))
    (data / 'meta.json').write_bytes(b'\xff\xfe{')
    assert f'cannot read {data / "meta.json"}' in mistake('train.py', *TINY, f'--data_dir={data}',
                                                          f'--out_dir={tmp_path / "out"}')
    msg = mistake('dpo.py', f'--init_from={lm_run}', f'--train_data={latin1}', f'--val_data={latin1}',
                  '--device=cpu', f'--out_dir={tmp_path / "dpo"}')
    assert f'the data file {latin1} is not UTF-8 text' in msg
    for script in ('data/shakespeare_char/prepare.py', 'data/shakespeare_prefs/prepare.py'):
        msg = mistake(script, '--input', latin1, '--out_dir', tmp_path / 'prep')
        assert f'{latin1} is not UTF-8 text' in msg


def test_finetune_rerun_keeps_the_old_run_aside(tmp_path, lm_run, task_run):
    _, _, data = task_run
    out = tmp_path / 'cls'
    args = [f'--init_from={lm_run}', f'--data_files=train={data},val={data}', '--device=cpu', '--epochs=1',
            '--batch_size=4', '--fields=text', f'--out_dir={out}']
    run('finetune.py', *args, env=ENV)
    before = snapshot(out)
    p = run('finetune.py', *args, env=ENV)
    aside = list(tmp_path.glob('cls.old-*'))
    assert len(aside) == 1 and f'moved it, untouched, to {aside[0]}' in p.stdout
    assert snapshot(aside[0]) == moved(before, out, aside[0])


def test_shakespeare_char_over_a_bpe_dataset_leaves_no_stale_tokenizer(tmp_path, bpe_run, shakespeare_text):
    data = Path(shutil.copytree(bpe_run / 'data', tmp_path / 'data'))
    assert (data / 'tokenizer.json').exists()  # the BPE dataset's tokenizer, which the char data must remove
    run('data/shakespeare_char/prepare.py', '--input', shakespeare_text, '--out_dir', data, '--overwrite', env=ENV)
    assert not (data / 'tokenizer.json').exists()
    assert json.loads((data / 'meta.json').read_text())['tokenizer'] == 'char'


def test_ppo_pretraining_data_of_another_tokenizer(tmp_path, lm_run, char_data):
    from gpt import checkpoint, rl
    from gpt.heads import RewardModel
    policy, meta = rl.load_policy(str(lm_run))  # the policy as ppo.py reads it, with the chat tokens
    rm = tmp_path / 'rm'
    rm.mkdir()
    checkpoint.save_checkpoint(rl.reward_checkpoint(RewardModel(policy), meta, {}, 1), str(rm / 'ckpt.pt'))
    prompts = tmp_path / 'p.jsonl'
    prompts.write_text('{"prompt": "ROMEO"}\n')
    other = Path(shutil.copytree(char_data, tmp_path / 'other'))  # the same size, other characters
    meta = json.loads((other / 'meta.json').read_text())
    (other / 'meta.json').write_text(json.dumps({**meta, 'chars': meta['chars'][::-1]}))
    before = snapshot(lm_run, other)
    msg = mistake('ppo.py', f'--init_from={lm_run}', f'--reward_model={rm}', f'--prompts={prompts}', '--device=cpu',
                  '--ptx_coef=0.5', f'--ptx_data_dir={other}', f'--out_dir={tmp_path / "ppo"}')
    assert 'with other token ids' in msg
    assert snapshot(lm_run, other) == before


@pytest.mark.parametrize('what', ['another run', 'a file', 'a folder of notes'])
def test_export_overwrite_replaces_only_an_earlier_export(tmp_path, lm_run, run_copy, what):
    target = {'another run': run_copy, 'a file': tmp_path / 'notes.txt', 'a folder of notes': tmp_path / 'notes'}[what]
    if what == 'a file':
        target.write_text('mine')
    elif what == 'a folder of notes':
        target.mkdir()
        (target / 'a.txt').write_text('mine')
    before = snapshot(tmp_path)
    msg = mistake('export.py', f'--out_dir={lm_run}', f'--hf_dir={target}', '--overwrite=True')
    assert 'is not an exported model' in msg
    assert snapshot(tmp_path) == before
    if what == 'another run':  # an earlier export is replaced when asked
        run('export.py', f'--out_dir={lm_run}', f'--hf_dir={tmp_path / "hf"}', env=ENV)
        run('export.py', f'--out_dir={lm_run}', f'--hf_dir={tmp_path / "hf"}', '--overwrite=True', env=ENV)


def test_finetune_export_never_writes_into_its_run(task_run):
    out, _, _ = task_run
    before = snapshot(out)
    msg = mistake('finetune.py', f'--out_dir={out}', '--device=cpu', f'--export={out}')
    assert 'is not an exported model' in msg
    assert snapshot(out) == before


def test_dpo_rerun_keeps_the_old_run_aside(tmp_path):
    """reward.py, ppo.py and dpo.py share run.Run: a run already in out_dir is kept, untouched, beside it."""
    from gpt.run import Run
    out = tmp_path / 'dpo'
    out.mkdir()
    (out / 'ckpt.pt').write_bytes(b'an earlier policy')
    before = snapshot(out)
    Run(str(out), 'cpu', new_run=True)  # (as reward.py, ppo.py and dpo.py pass new_run=not resume)
    aside = list(tmp_path.glob('dpo.old-*'))
    assert len(aside) == 1 and snapshot(aside[0]) == moved(before, out, aside[0]) and not list(out.iterdir())
    from gpt import run
    run.release_out_dirs()
