"""gpu_check.py on the CPU: --smoke runs the whole pipeline with tiny settings (one table, JSON with every step, exit
0); a command past its limit is killed with its whole process group and reported as a timeout; a deadline that
leaves no time skips the steps and says so; the parsers read the outputs they are written for."""
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run

from tools import gpu_check

STEPS = ['cuda_tests', 'throughput', 'speedrun', 'decode', 'determinism', 'nanogpt_speedrun']


def check(tmp_path, char_data, *args):
    out = tmp_path / 'results.json'
    # (--nanogpt='': a nanoGPT checkout beside this one would be compared too, on the CPU, minutes of its 124M model)
    p = run('tools/gpu_check.py', '--smoke=True', f'--out={out}', f'--data_dir={char_data}', '--nanogpt=', *args,
            timeout=300)
    return p.stdout, json.loads(out.read_text())


def table_rows(stdout):
    lines = stdout.splitlines()
    start = max(i for i, l in enumerate(lines) if l.startswith('step ') and 'status' in l)
    return {l.split()[0]: l.split()[1] for l in lines[start + 1:] if l.split() and l.split()[0] in STEPS}


@pytest.mark.slow  # (~36 s: every step end to end; the default run checks the steps' parts and the table)
def test_smoke_runs_every_step_and_prints_one_table(tmp_path, char_data):
    stdout, doc = check(tmp_path, char_data)
    rows = {r['step']: r for r in doc['steps']}
    assert list(rows) == STEPS
    expected = {s: 'ok' for s in STEPS[:-1]} | {'nanogpt_speedrun': 'skipped'}  # (--nanogpt='': none)
    assert {s: r['status'] for s, r in rows.items()} == expected, [(r['step'], r['summary'], r.get('tail'))
                                                                  for r in doc['steps']]
    assert 'no nanoGPT checkout' in rows['nanogpt_speedrun']['summary']
    assert table_rows(stdout) == expected  # the table shows what the JSON holds
    tests = rows['cuda_tests']
    assert tests['skipped'] > 0 and tests['passed'] == tests['failed'] == 0  # (no GPU: skipped, with their reason)
    assert tests['skips'] == {'needs a CUDA GPU: torch.cuda.is_available() is False here': tests['skipped']}
    t = rows['throughput']
    assert t['ours']['tok_s'] > 0 and t['reference']['tok_s'] > 0
    assert t['ratio'] == pytest.approx(t['ours']['tok_s'] / t['reference']['tok_s'])
    assert set(rows['decode']['batch1']) == {'cache', 'hf'} and set(rows['decode']['batch32']) == {'cache'}
    d = rows['determinism']
    # training on a CPU is deterministic either way (README), and the SIGKILLed run resumed from a checkpoint
    # strictly before the end
    assert d['deterministic'] == d['nondeterministic'] == d['resume_deterministic'] == 0
    assert 0 < d['killed_checkpoint_iter'] < 100
    s = rows['speedrun']['ours']
    assert s['iters'] == 20 and s['final_val'] > 0 and s['wall_s'] > 0


def test_a_step_past_its_limit_is_killed_and_reported_as_a_timeout(tmp_path, char_data):
    # bench.py cannot even import torch in 1 s: the real timeout path kills it
    stdout, doc = check(tmp_path, char_data, '--steps=decode,speedrun', '--limits=decode=1')
    rows = {r['step']: r for r in doc['steps']}
    assert rows['decode']['status'] == 'timeout' and 'killed after' in rows['decode']['summary']
    assert rows['speedrun']['status'] == 'ok'  # the next step still runs
    assert table_rows(stdout) == {'decode': 'timeout', 'speedrun': 'ok'}


def test_a_deadline_that_leaves_no_time_skips_every_step(tmp_path, char_data):
    stdout, doc = check(tmp_path, char_data, '--deadline=1')
    assert [(r['step'], r['status']) for r in doc['steps']] == [(s, 'skipped') for s in STEPS]
    assert 'deadline' in doc['steps'][0]['summary']
    assert table_rows(stdout) == {s: 'skipped' for s in STEPS}


def test_a_timeout_kills_the_whole_process_group(tmp_path):
    # the command starts a child that ignores nothing and outlives its parent's death unless its group is killed
    pid_file = tmp_path / 'child.pid'
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            f"open({str(pid_file)!r}, 'w').write(str(c.pid)); print('started', flush=True); time.sleep(600)")
    r = gpu_check.run_command([sys.executable, '-c', code], ROOT, limit=3)
    assert r['timed_out'] and r['rc'] != 0 and 'started' in r['output']
    child = int(pid_file.read_text())
    for _ in range(100):  # (reaped by init once killed; give it a moment)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f'/proc/{child}/stat') as f:  # a zombie awaiting init's reaping is dead too
            if f.read().split(') ')[1].startswith('Z'):
                break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail(f"the command's child {child} survived the timeout")


def test_a_command_that_ignores_sigterm_gets_sigkill():
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
            "time.sleep(600)")
    r = gpu_check.run_command([sys.executable, '-c', code], ROOT, limit=2)
    assert r['timed_out'] and r['rc'] == -9 and 'up' in r['output']


def test_unknown_steps_and_bad_limits_are_one_line_errors():
    for arg in ('--steps=decoding', '--limits=decode:5', '--limits=warp=5'):
        p = subprocess.run([sys.executable, str(ROOT / 'tools' / 'gpu_check.py'), '--smoke=True', arg], capture_output=True,
                           text=True, cwd=ROOT, timeout=60)
        assert p.returncode == 1 and p.stderr.strip().startswith('error:') and len(p.stderr.strip().splitlines()) == 1


def test_parsers_read_the_outputs_they_are_written_for():
    table = ("variant              ms/iter   tokens/s     MFU     vs reference cpu ms/iter  (cpu)  settings\n"
             "reference            141.020     87,132  35.10%          1.00x     141.000  1.00x  plain eager fp32\n"
             "compile+bf16+fused    60.500    203,097  40.20%          2.33x      60.000  2.35x  bfloat16, sdpa\n")
    assert gpu_check.parse_bench(table) == {'reference': dict(ms=141.02, tok_s=87132.0),
                                            'compile+bf16+fused': dict(ms=60.5, tok_s=203097.0)}
    single = ("device cuda: NVIDIA H200, 16 threads\ncache (bfloat16, sdpa, eager, KV cache, CUDA graph)\n"
              "ms/iter 4.000 (one new token; median of 3, min 3.9, max 4.1)  tokens/s 8,000  MFU 1.00%  peak memory "
              "500 MB  cpu ms/iter 4.000\n")
    assert gpu_check.parse_bench(single) == {'cache': dict(ms=4.0, tok_s=8000.0)}
    nano = "0/10 loss: 10.9\n...\n19/20 loss: 10.0\ntime per iteration: 120.0000ms, MFU: 38.50%\n"
    assert gpu_check.parse_nanogpt_bench(nano) == dict(ms=120.0, tok_s=12 * 1024 / 0.12)
    assert gpu_check.parse_nanogpt_bench('Traceback ...') is None
    log = "step 0: train loss 4.2874, val loss 4.2823\niter 0: loss 4.2\nstep 250: train loss 1.9, val loss 2.0\n"
    assert gpu_check.parse_eval_lines(log) == [(0, 4.2823), (250, 2.0)]
    assert gpu_check.parse_pytest("....s\n2 failed, 5 passed, 1 skipped in 40.1s\n") == dict(
        passed=5, failed=2, skipped=1, errors=0, deselected=0)


def test_on_a_gpu_the_cuda_tests_get_the_text_and_any_skip_marks_the_step_partial(tmp_path, monkeypatch):
    # what the step does on a GPU machine without ../shared, up to the pytest command (replaced here by its output)
    text = tmp_path / 'input.txt'
    text.write_text('First Citizen:\n')
    seen = {}

    def fake_call(clock, step, what, cmd, cwd=gpu_check.HERE, env=None, limit=None):
        seen.update(cmd=cmd, env=env)
        return dict(rc=0, seconds=1.0, timed_out=False, output=(
            "....s.\n=== short test summary info ===\n"
            "SKIPPED [1] tests/test_cuda.py:132: FSDP needs torch 2.7\n5 passed, 1 skipped in 40.1s\n"))

    monkeypatch.setattr(gpu_check, 'call', fake_call)
    monkeypatch.setattr(gpu_check, 'smoke', False)
    monkeypatch.setattr(gpu_check, 'shakespeare', str(text))
    row = gpu_check.run_step('cuda_tests', gpu_check.Clock(60), str(tmp_path))
    assert seen['env'] == {'TINY_SHAKESPEARE': str(text)}
    files = [c for c in seen['cmd'] if c.startswith('tests/')]
    assert 'tests/test_cuda.py' in files and 'tests/test_serve.py' not in files  # (only files with cuda tests)
    assert (row['status'], row['passed'], row['skipped']) == ('partial', 5, 1)
    assert row['skips'] == {'FSDP needs torch 2.7': 1} and 'FSDP needs torch 2.7' in row['summary']


def test_the_tests_find_tiny_shakespeare_through_its_variable(monkeypatch, tmp_path):
    import conftest
    monkeypatch.setenv('TINY_SHAKESPEARE', str(tmp_path / 'input.txt'))
    assert conftest.shakespeare_candidates()[0] == tmp_path / 'input.txt'
    monkeypatch.delenv('TINY_SHAKESPEARE')
    assert conftest.shakespeare_candidates()[0] == conftest.SHARED / 'data' / 'tinyshakespeare' / 'input.txt'


FAKE_NANOGPT = {
    # stand-ins that print what nanoGPT's scripts print, and note how they were called
    'bench.py': ("import sys\nopen('bench_argv.txt', 'w').write(' '.join(sys.argv[1:]))\n"
                 "print('19/20 loss: 10.0')\nprint('time per iteration: 100.0000ms, MFU: 1.00%')\n"),
    'train.py': ("import sys\nopen('train_argv.txt', 'w').write(' '.join(sys.argv[1:]))\n"
                 "print('step 0: train loss 4.2000, val loss 4.1000')\n"
                 "print('step 250: train loss 1.5000, val loss 1.4600')\n"
                 "print('step 500: train loss 1.4000, val loss 1.4800')\n"),
    'data/shakespeare_char/prepare.py': (
        "import os\nd = os.path.dirname(__file__)\n"
        "assert os.path.getsize(os.path.join(d, 'input.txt')) > 0  # (offline: only a local copy will do)\n"
        "open(os.path.join(d, 'train.bin'), 'wb').write(b'00')\n"),
}


def test_a_nanogpt_checkout_is_compared_against(tmp_path, char_data, shakespeare_text):
    ng = tmp_path / 'nanoGPT'
    for name, text in FAKE_NANOGPT.items():
        (ng / name).parent.mkdir(parents=True, exist_ok=True)
        (ng / name).write_text(text)
    out = tmp_path / 'results.json'
    run('tools/gpu_check.py', '--smoke=True', f'--out={out}', f'--data_dir={char_data}', f'--nanogpt={ng}',
        f'--shakespeare={shakespeare_text}', '--steps=throughput,speedrun,nanogpt_speedrun', timeout=300)
    rows = {r['step']: r for r in json.loads(out.read_text())['steps']}
    assert [r['status'] for r in rows.values()] == ['ok'] * 3, rows
    t = rows['throughput']
    assert t['reference']['ms'] == 100.0 and t['reference']['tok_s'] == pytest.approx(2 * 64 / 0.1)  # (smoke's batch)
    assert t['ratio'] == pytest.approx(t['ours']['tok_s'] / t['reference']['tok_s']) and t['target'] == 1.3
    assert '--real_data=False' in (ng / 'bench_argv.txt').read_text()
    n = rows['nanogpt_speedrun']
    assert (n['final_val'], n['best_val'], n['iters']) == (1.48, 1.46, 500)
    assert n['wall_ratio'] == pytest.approx(rows['speedrun']['ours']['wall_s'] / n['wall_s'])
    assert (ng / 'train_argv.txt').read_text().startswith('config/train_shakespeare_char.py')
    assert (ng / 'data' / 'shakespeare_char' / 'train.bin').exists()  # its data was prepared from our text first
