"""
"Never lose a run": a training run killed at any moment (SIGKILL, also in the middle of a save),
or stopped by SIGTERM or SIGINT, resumes to exactly the result of an uninterrupted run: the same loss at
every logged iteration and bit-identical final weights and optimizer state.

All runs are tiny (2 layers, 32 wide, dropout on, fp32, CPU) on character-level Shakespeare. Each
run is a separate process running train.py as __main__, forked from a launcher that has already
imported torch (which takes ~5 s per process otherwise); all use one thread, so they compute alike.
"""
import contextlib
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, assert_same_state, load_ckpt, tiny, train_losses

from gpt import checkpoint

M = 24  # iterations of every run compared with the reference
TINY = tiny(batch_size=4, gradient_accumulation_steps=2, eval_iters=2, log_interval=1, dropout=0.1, plot=False,
            peak_flops=1e12, learning_rate=1e-3, warmup_iters=4, lr_decay_iters=M, min_lr=1e-4)
RUN = TINY + [f'--max_iters={M}', '--eval_interval=3', '--always_save_checkpoint=True']

# Reads requests (JSON [argv, kill_at, stdout file, stderr file]) on stdin; for each, forks a process
# that runs train.py with argv, replies "pid N", and when it ends writes its exit code (negative:
# killed by that signal) to "<stdout file>.exit". kill_at makes the run SIGKILL itself at an exact point:
#   save:N  after writing half of the N-th checkpoint (the temp file is left torn)
#   link:N  after ckpt.pt is complete, before best.pt is linked to it (the N-th time)
#   hang    the checkpoint written after a stop signal hangs (to test a second signal)
LAUNCHER = r'''
import io, json, os, runpy, signal, sys, time
sys.path.insert(0, os.getcwd())
import torch, configurator, model
from gpt import checkpoint, device, tokendata
torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # the first optimizer imports torch._dynamo (slow)

def set_kill_point(kill_at):
    point, _, n = kill_at.partition(':')
    calls = []
    if point == 'save':
        real_save = torch.save
        def save(obj, f, *args, **kwargs):
            calls.append(1)
            if len(calls) == int(n):
                buf = io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *args, **kwargs)
        torch.save = save
    elif point == 'link':
        real_link = checkpoint.link_checkpoint
        def link(src, dst):
            calls.append(1)
            if len(calls) == int(n):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_link(src, dst)
        checkpoint.link_checkpoint = link
    elif point == 'hang':
        def hang(obj, path):
            print('HANG', flush=True)
            time.sleep(600)
        checkpoint.save_checkpoint = hang

for line in sys.stdin:
    argv, kill_at, out, err = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # the run: stdout/stderr to files, then train.py as `python train.py argv` would
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        code = 0
        try:
            if kill_at:
                set_kill_point(kill_at)
            sys.argv = ['train.py', *argv]
            runpy.run_path('train.py', run_name='__main__')
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print('pid', pid, flush=True)
    _, status = os.waitpid(pid, 0)
    with open(out + '.exit.tmp', 'w') as f:
        f.write(str(os.waitstatus_to_exitcode(status)))
    os.replace(out + '.exit.tmp', out + '.exit')
'''


# ----------------------------------------------------------------------------- helpers

class Launcher:
    def __init__(self, logs):
        self.logs, self.runs = logs, []
        self.proc = subprocess.Popen([sys.executable, '-c', LAUNCHER], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env={**os.environ, 'OMP_NUM_THREADS': '1'})

    def start(self, argv, kill_at=None):
        run = Run(self.logs / f'run{len(self.runs) + 1}')
        self.runs.append(run)
        self.proc.stdin.write(json.dumps([list(map(str, argv)), kill_at, str(run.out), str(run.err)]) + '\n')
        self.proc.stdin.flush()
        word, pid = self.proc.stdout.readline().split()
        run.pid = int(pid)
        return run

    def kill_running(self):
        """SIGKILL runs a failed test left behind (the launcher waits for each run before the next)."""
        for run in self.runs:
            if run.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(run.pid, signal.SIGKILL)
                run.wait(timeout=60)

    def close(self):
        self.kill_running()
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Run:
    """One train.py process started by the launcher: its pid, output files and exit code."""
    def __init__(self, base):
        self.out, self.err, self.exit = base.with_suffix('.out'), base.with_suffix('.err'), base.with_suffix('.out.exit')

    def poll(self):
        return int(self.exit.read_text()) if self.exit.exists() else None

    def wait(self, timeout=300):
        deadline = time.time() + timeout
        while self.poll() is None:
            assert time.time() < deadline, f"run {self.pid} did not end within {timeout}s"
            time.sleep(0.02)
        return self.poll()

    def stdout(self):
        return self.out.read_text()

    def stderr(self):
        return self.err.read_text()


@pytest.fixture(scope='module')
def launcher(tmp_path_factory):
    launcher = Launcher(tmp_path_factory.mktemp('runs'))
    yield launcher
    launcher.close()


@pytest.fixture
def train(launcher, char_data):
    """train(out_dir, *args, kill_at=None) starts a run with the common settings plus args."""
    def start(out_dir, *args, kill_at=None):
        return launcher.start([*RUN, f'--data_dir={char_data}', f'--out_dir={out_dir}', *args], kill_at)
    yield start
    launcher.kill_running()


def ok(run):
    code = run.wait()
    assert code == 0, f"train.py failed ({code}):\n{run.stdout()[-2000:]}\n{run.stderr()[-2000:]}"
    return run.stdout()


def assert_matches_reference(out_dir, reference, torn=0):
    """Every logged loss (also those logged by killed runs) equals the uninterrupted run's at that
    iteration, every iteration was logged, and the final checkpoint is bit-identical. torn: the log lines a kill
    may have torn (one a kill)."""
    ref = {i: v[0] for i, v in train_losses(reference).items()}
    assert sorted(ref) == list(range(M))
    got = train_losses(out_dir, torn)
    assert sorted(got) == list(range(M))
    for i, values in got.items():
        assert values == [ref[i]] * len(values), (i, values, ref[i])
    assert_same_state(load_ckpt(out_dir / 'ckpt.pt'), load_ckpt(reference / 'ckpt.pt'))
    assert load_ckpt(out_dir / 'ckpt.pt')['iter_num'] == M
    assert not list(out_dir.glob('*.tmp')), "a save left a temp file behind"


def wait_for_iter(run, out_dir, it, timeout=120):
    """Wait until log.jsonl shows a 'train' event for iteration >= it (False if the run ended first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if run.poll() is not None:
            return False
        try:
            if max(train_losses(out_dir, torn=100), default=-1) >= it:
                return True
        except OSError:
            pass  # not created yet (a line being written, or torn by a kill, is skipped)
        time.sleep(0.005)
    raise AssertionError(f"no iteration {it} within {timeout}s")


@pytest.fixture(scope='module')
def reference(tmp_path_factory, launcher, char_data):
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp('reference')
    ok(launcher.start([*RUN, f'--data_dir={char_data}', f'--out_dir={out}']))
    return out


# ----------------------------------------------------------------------------- tests

def test_reference_run_is_sane(reference):
    # evaluations (and saves) every 3 iterations and at the end, dropout on, best.pt the lowest val loss
    ckpt = load_ckpt(reference / 'ckpt.pt')
    assert ckpt['iter_num'] == M and ckpt['config']['dropout'] == 0.1
    events = [json.loads(line) for line in (reference / 'log.jsonl').read_text().splitlines()]
    evals = [e for e in events if e['event'] == 'eval']
    assert [e['iter'] for e in evals] == list(range(0, M + 1, 3))
    best = min(evals[1:], key=lambda e: e['val_loss'])  # (iteration 0 is never saved)
    assert load_ckpt(reference / 'best.pt')['iter_num'] == best['iter']
    assert ckpt['best_val_loss'] == min(e['val_loss'] for e in evals)  # never a worse loss recorded as best
    assert all(ckpt['rng'][k] is not None for k in ('torch', 'numpy', 'python'))


def test_stop_and_resume_is_exact(tmp_path, train, reference):
    # M/2 iterations, then resume for the rest: same losses, bit-identical weights and optimizer state
    ok(train(tmp_path, f'--max_iters={M // 2}'))
    assert load_ckpt(tmp_path / 'ckpt.pt')['iter_num'] == M // 2
    out = ok(train(tmp_path, '--init_from=resume'))
    assert f"at step {M // 2} with the run's settings; overridden here: max_iters={M} (the run had {M // 2})" in out
    assert_matches_reference(tmp_path, reference)


def test_bare_resume_of_a_killed_run_takes_its_settings_from_the_checkpoint(tmp_path, launcher, char_data,
                                                                           reference):
    # the run is SIGKILLed after a checkpoint, then resumed with nothing but --init_from=resume --out_dir:
    # batch, accumulation, schedule, dropout, data, seed and max_iters all come from the checkpoint
    run = launcher.start([*RUN, f'--data_dir={char_data}', f'--out_dir={tmp_path}'])
    assert wait_for_iter(run, tmp_path, 10)
    os.kill(run.pid, signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    assert load_ckpt(tmp_path / 'ckpt.pt')['iter_num'] < M
    out = ok(launcher.start(['--init_from=resume', f'--out_dir={tmp_path}']))
    assert "with the run's settings; overridden here: none" in out
    assert_matches_reference(tmp_path, reference, torn=1)


@pytest.mark.parametrize('seed', [1, 2, 3])
def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path, train, reference, seed):
    rng = random.Random(seed)
    kills = 0
    for attempt in range(6):
        # after a kill, always the resume command: killed before the first checkpoint, it starts the run again
        resume = attempt > 0
        done = max(train_losses(tmp_path, torn=kills), default=-1) if (tmp_path / 'ckpt.pt').exists() else -1
        run = train(tmp_path, '--init_from=resume' if resume else '--init_from=scratch')
        # a step, evaluation and save of this tiny model take ~25 ms together: the kill lands 0-2 steps
        # after the chosen iteration, which leaves 8 for the run not to have ended first
        if kills < 2 and done < M - 9:
            if wait_for_iter(run, tmp_path, rng.randint(done + 1, M - 8)):
                time.sleep(rng.uniform(0, 0.05))  # lands anywhere: a step, an evaluation, a save
                try:
                    os.kill(run.pid, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass  # it ended first (a much faster machine): not a kill, and `kills >= 1` below says so
        code = run.wait()
        if code == 0:
            break
        assert code == -signal.SIGKILL, run.stderr()[-2000:]
    assert kills >= 1 and code == 0
    assert_matches_reference(tmp_path, reference, torn=kills)


def test_sigkill_inside_save_and_before_best_link(tmp_path, train, reference):
    # killed halfway through writing the 3rd checkpoint (iteration 9): the torn temp file is left
    # behind and ignored; ckpt.pt still holds iteration 6
    assert train(tmp_path, kill_at='save:3').wait() == -signal.SIGKILL
    assert load_ckpt(tmp_path / 'ckpt.pt')['iter_num'] == 6 and list(tmp_path.glob('ckpt.pt.*.tmp'))
    # resumed, then killed once its first new checkpoint (iteration 9, a new best) is in place but
    # before best.pt is linked to it: the stale temp file is gone, best.pt is one checkpoint behind
    assert train(tmp_path, '--init_from=resume', kill_at='link:1').wait() == -signal.SIGKILL
    ckpt = load_ckpt(tmp_path / 'ckpt.pt')
    assert ckpt['iter_num'] == 9 and ckpt['is_best'] and load_ckpt(tmp_path / 'best.pt')['iter_num'] == 6
    assert not list(tmp_path.glob('*.tmp'))
    # resuming repairs best.pt before anything else (this run stops at once: max_iters is reached)
    assert 'was behind' in ok(train(tmp_path, '--init_from=resume', '--max_iters=9'))
    assert os.path.samefile(tmp_path / 'ckpt.pt', tmp_path / 'best.pt')
    # and then finishes exactly like the uninterrupted run, best.pt included
    ok(train(tmp_path, '--init_from=resume'))
    assert_matches_reference(tmp_path, reference)
    assert_same_state(load_ckpt(tmp_path / 'best.pt'), load_ckpt(reference / 'best.pt'))


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_checkpoints_exits_0_and_resumes_exactly(tmp_path, launcher, train, reference, sig):
    run = train(tmp_path, '--eval_interval=100')  # no periodic checkpoints: only the one on the signal
    assert wait_for_iter(run, tmp_path, 10)
    os.kill(run.pid, sig)
    assert run.wait() == 0, run.stderr()[-2000:]
    last = max(train_losses(tmp_path))
    assert load_ckpt(tmp_path / 'ckpt.pt')['iter_num'] == last + 1  # the step in flight finished and was saved
    assert sig.name in run.stderr()
    # the message gives the command to resume; run exactly that
    cmd = shlex.split(run.stdout().split('--init_from=resume: ')[1].splitlines()[0])
    assert cmd[:2] == ['python', 'train.py'] and cmd.count('--init_from=resume') == 1
    ok(launcher.start(cmd[2:]))
    assert_matches_reference(tmp_path, reference)


def test_second_signal_aborts_a_stuck_stop(tmp_path, train):
    # the checkpoint after SIGTERM hangs (as a hung collective or file system would): SIGINT ends it at once
    run = train(tmp_path, '--eval_interval=100', kill_at='hang')
    assert wait_for_iter(run, tmp_path, 2)
    os.kill(run.pid, signal.SIGTERM)
    deadline = time.time() + 60
    while 'HANG' not in run.stdout():
        assert run.poll() is None and time.time() < deadline, run.stderr()[-2000:]
        time.sleep(0.02)
    t0 = time.time()
    os.kill(run.pid, signal.SIGINT)
    assert run.wait(timeout=30) == -signal.SIGINT and time.time() - t0 < 10
    assert 'send it again to abort' in run.stderr()
    assert not (tmp_path / 'ckpt.pt').exists()


def test_stop_signal_leaves_forked_processes_and_its_caller_as_they_were():
    # a multiprocessing pool forked from a process with a StopSignal (lm_eval's bootstrap, once, in a test worker)
    # is ended by terminate()'s SIGTERM: a worker that took it as "save after this step" left terminate() waiting
    import multiprocessing
    from gpt.run import StopSignal
    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignal(announce=False)
    try:
        child = multiprocessing.get_context('fork').Process(target=time.sleep, args=(60,))
        child.start()
        time.sleep(0.2)
        child.terminate()
        child.join(timeout=30)
        assert child.exitcode == -signal.SIGTERM
        assert not stop  # (the child's signal is not this process's)
    finally:
        if child.is_alive():
            child.kill()
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_rng_state_resumes_on_any_number_of_gpus(monkeypatch):
    # a checkpoint holds the saving process's own GPU state; older ones held one per visible GPU (8 here),
    # which used to be restored by index and failed on fewer GPUs. Simulated: these tests run on CPUs.
    set_calls = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_rng_state', lambda *a: torch.full((16,), 7, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, 'set_rng_state', lambda s, *a: set_calls.append(s))
    state = checkpoint.rng_state()
    assert torch.equal(state['cuda'], torch.full((16,), 7, dtype=torch.uint8))  # one state, not a list
    checkpoint.set_rng_state(state)
    eight = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    checkpoint.set_rng_state({**state, 'cuda': eight})  # an older checkpoint from 8 GPUs, resumed on 1
    assert len(set_calls) == 2 and torch.equal(set_calls[0], state['cuda']) and torch.equal(set_calls[1], eight[0])
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)  # and on a machine without GPUs
    checkpoint.set_rng_state({**state, 'cuda': eight})
    assert len(set_calls) == 2
