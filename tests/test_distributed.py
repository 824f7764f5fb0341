"""Distributed training on the CPU: torchrun with 2 processes over gloo, checked against one process.

DDP and FSDP must reproduce a single-process run with the same global batch step by step (losses
from log.jsonl, final weights and optimizer state from ckpt.pt); an FSDP checkpoint must resume in
one process and sample; a failing rank must end the whole job promptly. Each launch costs seconds,
so the runs are made once per module and shared by the tests that read them.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, assert_same_state, events, load_ckpt, tiny
from torch.torch_version import TorchVersion

TOL = 1e-5

# a tiny model; fp32, constant lr (no warmup: the steps must move the weights); dropout on, so that equal runs
# also prove that every rank draws, for each global micro-step, the masks one process draws
TINY = tiny(batch_size=4, dtype='float32', dropout=0.1, plot=False, learning_rate=3e-3, decay_lr=False, warmup_iters=0,
            eval_iters=2, log_interval=1, eval_interval=4, always_save_checkpoint=True, gradient_accumulation_steps=4)


def env():
    e = {k: v for k, v in os.environ.items()
         if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')}
    return {**e, 'OMP_NUM_THREADS': '1', 'WANDB_MODE': 'offline'}


def command(args, nproc=1, script='train.py'):
    """A script in one process, or under torchrun with nproc processes."""
    cmd = [sys.executable]
    if nproc > 1:
        cmd += ['-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}']
    return cmd + [script, *args]


def launch(args, nproc=1, timeout=300, script='train.py'):
    return subprocess.run(command(args, nproc, script), cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def start(out_dir, char_data, *extra):
    """Start a single-process training run in the background; finish() waits for it."""
    err = open(f'{out_dir}.err', 'w+')
    return subprocess.Popen(command([f'--out_dir={out_dir}', f'--data_dir={char_data}', *TINY, *extra]),
                            cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=err), err


def finish(started):
    p, err = started
    assert p.wait(timeout=300) == 0, (err.seek(0), err.read()[-3000:])[1]
    err.close()


def train(out_dir, char_data, *extra, nproc=1):
    p = launch([f'--out_dir={out_dir}', f'--data_dir={char_data}', *TINY, *extra], nproc=nproc)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def losses(out_dir):
    return {e['iter']: e['loss'] for e in events(out_dir, 'train')}


def ckpt(out_dir):
    return load_ckpt(Path(out_dir) / 'ckpt.pt')


# FSDP2 runs on the CPU from torch 2.7 (2.6's CPU streams have no record_event); train.py says so in one line
FSDP_CPU = TorchVersion(torch.__version__) >= (2, 7)


@pytest.fixture(scope='module')
def runs(tmp_path_factory, char_data):
    """Training runs over the same global batch (4 micro-batches of 4 per step):
    single: 1 process, 8 steps        ddp, fsdp: 2 processes x 2 micro-steps, 8 steps
    single10: 1 process, 10 steps     resumed: fsdp's step-8 checkpoint continued to 10 in 1 process
    fsdp_resumed: single's step-8 checkpoint continued to 10 by 2 FSDP processes"""
    d = tmp_path_factory.mktemp('runs')
    out = {name: d / name for name in ('single', 'single10', 'ddp', 'fsdp', 'resumed', 'fsdp_resumed')}
    # the two single-process runs side by side (one thread each, and the machine has 2 cores)
    other = start(out['single10'], char_data, '--max_iters=10')
    train(out['single'], char_data, '--max_iters=8')
    finish(other)
    out['ddp_proc'] = train(out['ddp'], char_data, '--max_iters=8', nproc=2)
    if not FSDP_CPU:
        return out
    train(out['fsdp'], char_data, '--max_iters=8', '--parallelism=fsdp', nproc=2)
    for src, dst in (('fsdp', 'resumed'), ('single', 'fsdp_resumed')):
        out[dst].mkdir()
        shutil.copy(out[src] / 'ckpt.pt', out[dst] / 'ckpt.pt')
    other = start(out['resumed'], char_data, '--max_iters=10', '--init_from=resume')
    train(out['fsdp_resumed'], char_data, '--max_iters=10', '--init_from=resume', '--parallelism=fsdp', nproc=2)
    finish(other)
    return out


def test_ddp_matches_one_process(runs):
    single, ddp = losses(runs['single']), losses(runs['ddp'])
    assert sorted(single) == sorted(ddp) == list(range(8))
    for it in single:
        assert abs(single[it] - ddp[it]) < TOL, (it, single[it], ddp[it])
    assert single[7] < single[0] - 0.2  # the steps did move the weights
    assert ckpt(runs['ddp'])['config']['dropout'] == 0.1  # with dropout masks drawn on each rank
    assert_same_state(ckpt(runs['single']), ckpt(runs['ddp']), atol=TOL)


def test_ddp_side_effects_on_rank_zero_only(runs):
    # one log line and one log.jsonl entry per iteration, one start record, one config echo
    out = runs['ddp_proc'].stdout
    for it in range(8):
        assert out.count(f'iter {it}: loss') == 1
    assert len(events(runs['ddp'], 'start')) == 1 and events(runs['ddp'], 'start')[0]['world_size'] == 2
    assert len(events(runs['ddp'], 'train')) == 8
    assert out.count('Overriding: max_iters') == 1
    assert 'tokens per iteration: 512 = 2 accum * 2 processes * 4 batch * 32 block' in out


@pytest.mark.skipif(not FSDP_CPU, reason='FSDP on the CPU needs torch 2.7 or newer')
def test_fsdp_matches_ddp_and_one_process(runs):
    single, fsdp = losses(runs['single']), losses(runs['fsdp'])
    assert sorted(fsdp) == list(range(8))
    for it in single:
        assert abs(single[it] - fsdp[it]) < TOL, (it, single[it], fsdp[it])
    # the gathered checkpoint has a single-process run's layout: same keys, optimizer state by position
    assert_same_state(ckpt(runs['single']), ckpt(runs['fsdp']), atol=TOL)
    assert_same_state(ckpt(runs['ddp']), ckpt(runs['fsdp']), atol=TOL)
    # tied embedding and output layer stay one tensor in the file
    m = ckpt(runs['fsdp'])['model']
    assert m['lm_head.weight'].data_ptr() == m['transformer.wte.weight'].data_ptr()


def assert_continues_straight_run(straight_dir, resumed_dir):
    """The run resumed at step 8 logs steps 8 and 9 as the uninterrupted 10-step run does, and ends
    with its weights and optimizer state."""
    straight, resumed = losses(straight_dir), losses(resumed_dir)
    assert sorted(resumed) == [8, 9]
    for it in resumed:
        assert abs(straight[it] - resumed[it]) < TOL, (it, straight[it], resumed[it])
    assert_same_state(ckpt(straight_dir), ckpt(resumed_dir), atol=TOL)


@pytest.mark.skipif(not FSDP_CPU, reason='FSDP on the CPU needs torch 2.7 or newer')
def test_fsdp_checkpoint_resumes_in_one_process(runs):
    # steps 8 and 9 of the resumed run are those of an uninterrupted 10-step single-process run,
    # which needs the weights and the AdamW moments of the FSDP checkpoint
    assert_continues_straight_run(runs['single10'], runs['resumed'])
    # and its evaluation at step 8 is the single-process run's final evaluation
    ev8 = [e for e in events(runs['resumed'], 'eval') if e['iter'] == 8][0]
    ev_single = [e for e in events(runs['single'], 'eval') if e['iter'] == 8][0]
    assert abs(ev8['val_loss'] - ev_single['val_loss']) < TOL


@pytest.mark.skipif(not FSDP_CPU, reason='FSDP on the CPU needs torch 2.7 or newer')
def test_one_process_checkpoint_resumes_under_fsdp(runs):
    # the other way round: each rank loads the full checkpoint and keeps its shard of the weights and
    # of the AdamW moments; steps 8 and 9 and the gathered final state match the uninterrupted run
    assert_continues_straight_run(runs['single10'], runs['fsdp_resumed'])


@pytest.mark.skipif(not FSDP_CPU, reason='FSDP on the CPU needs torch 2.7 or newer')
def test_fsdp_checkpoint_samples(runs, tmp_path):
    # sample.py reads the gathered FSDP checkpoint as a one-process run's: with the same seed it samples the same
    # 20 tokens from both (their weights agree to TOL), and streams them to stdout
    samples = {}
    for name in ('fsdp', 'single'):
        out = tmp_path / f'{name}.jsonl'
        p = launch([f'--out_dir={runs[name]}', '--ckpt_name=ckpt.pt', '--max_new_tokens=20', '--num_samples=1',
                    '--device=cpu', f'--output={out}'], script='sample.py', timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        (sample,) = [json.loads(line) for line in out.read_text().splitlines()]
        assert sample['tokens'] == 20 and len(sample['completion']) == 20, sample  # (characters: one per token)
        assert sample['prompt'] + sample['completion'] in p.stdout
        samples[name] = sample
    assert samples['fsdp'] == samples['single']


@pytest.mark.skipif(FSDP_CPU, reason='this torch runs FSDP on the CPU (the check is for torch 2.6)')
def test_fsdp_on_the_cpu_of_an_old_torch_is_one_line(char_data, tmp_path):
    p = launch([f'--out_dir={tmp_path}', f'--data_dir={char_data}', *TINY, '--max_iters=2', '--parallelism=fsdp'],
               nproc=2)
    assert p.returncode != 0 and 'error: FSDP on the CPU needs PyTorch 2.7 or newer' in p.stderr, p.stderr[-2000:]


def test_failed_rank_ends_the_job(char_data, tmp_path):
    # a real per-rank failure, no test hook: rank 0 cannot write its checkpoint (ckpt.pt is a
    # directory) and exits at step 3, while rank 1 goes on into the next step's collectives
    (tmp_path / 'ckpt.pt').mkdir()
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py',
           f'--out_dir={tmp_path}', f'--data_dir={char_data}', *TINY, '--max_iters=1000', '--eval_interval=3']
    p = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    watchdog = threading.Timer(180, lambda: os.killpg(p.pid, signal.SIGKILL))  # a hang must not hang pytest
    watchdog.start()
    lines, t_error = [], None
    try:
        for line in p.stdout:  # timestamp rank 0's error line as it arrives
            lines.append(line)
            if t_error is None and line.startswith('error: '):
                t_error = time.monotonic()
        p.wait()
    finally:
        watchdog.cancel()
    t_exit = time.monotonic()
    out = ''.join(lines)
    assert p.returncode != 0
    assert 'iter 2: loss' in out  # training had started
    assert t_error is not None and 'could not write checkpoint' in out, out[-3000:]
    print(f"job ended {t_exit - t_error:.1f}s after rank 0 failed")
    assert t_exit - t_error < 30, f"job took {t_exit - t_error:.1f}s to end after rank 0 failed"


def test_indivisible_accumulation_fails_once_on_every_rank(char_data, tmp_path):
    t0 = time.monotonic()
    p = launch([f'--out_dir={tmp_path}', f'--data_dir={char_data}', *TINY, '--gradient_accumulation_steps=3'], nproc=2,
               timeout=120)
    assert p.returncode != 0
    errors = [line for line in p.stderr.splitlines() if line.startswith('error: ')]
    assert errors == ["error: gradient_accumulation_steps (3) must be divisible by the number of processes (2); "
                      "e.g. --gradient_accumulation_steps=2"]
    assert '[rank' not in p.stderr  # no worker traceback (torchrun still prints its own summary)
    assert time.monotonic() - t0 < 60
