"""
One-GPU check of this repository (issue 28): in under 8 minutes on one NVIDIA GPU, the figures the README marks
NOT YET MEASURED, as one results table (printed) and the same as JSON.

$ make gpu-check                                        # = python tools/gpu_check.py
$ python tools/gpu_check.py --out=results.json --nanogpt=../nanoGPT
$ python tools/gpu_check.py --smoke=True                      # the same pipeline on the CPU, tiny settings (~1 minute)

Steps (each command a subprocess in its own process group, with its own time limit; on a timeout the whole group
gets SIGTERM, then SIGKILL 5 s later; a step that no longer fits before --deadline is skipped and says so):
  cuda_tests   pytest -m cuda on the test files that hold cuda tests: passed / failed / skipped, with the reasons
               ('partial' on a GPU when any skipped); Tiny Shakespeare goes to them as TINY_SHAKESPEARE
  throughput   bench.py's train step of GPT-2 124M (batch 12 x 1024, compile+bf16+fused AdamW) against nanoGPT's
               bench.py (--nanogpt checkout), else against bench.py's 'reference' variant (fp32 eager): ms/iter,
               tokens/s and the ratio (target >= 1.3x over nanoGPT)
  decode       bench.py --mode=sample of GPT-2 124M, 200 new tokens: cache, cudagraph, hf at batch 1; cache,
               cudagraph at batch 32; tokens/s each
  determinism  a small eager char model: two runs with deterministic=True, two without, and a deterministic run
               SIGKILLed after its first checkpoint and resumed; the max abs weight difference of each pair
  speedrun     train.py config/train_shakespeare_char_gpu_speedrun.py: wall time and val loss (target 1.4697)
  nanogpt_speedrun  nanoGPT's train.py config/train_shakespeare_char.py in the checkout (when there is one), its
               data prepared first: wall time and val loss beside ours
They run in the order cuda_tests, throughput, speedrun, decode, determinism, nanogpt_speedrun: nanoGPT's long run
last, so that a tight deadline drops it first (--steps=speedrun,nanogpt_speedrun --deadline=600 runs the pair alone).
Char data: data/shakespeare_char (or --data_dir) is prepared when it lacks train.bin, from --shakespeare when
that file exists (offline), else downloaded.
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root (python tools/...)
import configurator
from gpt.errors import UserError

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo root

# -----------------------------------------------------------------------------
# config: overridden by --key=value
out = 'gpu_check.json'      # the results as JSON
nanogpt = '../nanoGPT'      # a nanoGPT checkout to compare with (relative to this repository); '' or absent: none
shakespeare = '../shared/data/tinyshakespeare/input.txt'  # Tiny Shakespeare text for offline preparation
data_dir = ''               # prepared char data ('' = data/shakespeare_char, prepared here if it lacks train.bin)
deadline = 450.0            # seconds for the whole check: steps that no longer fit are skipped
smoke = False               # the same pipeline on the CPU with tiny settings (tests/test_gpu_check.py)
steps = ''                  # comma-separated steps to run ('' = all, see STEPS), e.g. 'speedrun,nanogpt_speedrun'
limits = ''                 # per-command time limits in seconds overriding the built-in ones, e.g. 'decode=60'
target_speedup = 1.3        # throughput: ours over nanoGPT's tokens/s
target_loss = 1.4697        # speedrun: nanoGPT's GPU result on character-level Shakespeare
# -----------------------------------------------------------------------------

# in the order they run: ours first, nanoGPT's long speedrun last, so that a tight deadline drops it first
STEPS = ('cuda_tests', 'throughput', 'speedrun', 'decode', 'determinism', 'nanogpt_speedrun')
# seconds per command on a GPU (a compile of GPT-2 takes ~1 minute of them) and on the CPU (--smoke)
LIMITS = {'cuda_tests': (180, 60), 'throughput': (180, 60), 'decode': (150, 60), 'determinism': (150, 60),
          'speedrun': (150, 60), 'nanogpt_speedrun': (300, 60), 'prepare': (60, 30)}
TAIL = 12  # lines of output kept for a step that did not pass


# ----------------------------------------------------------------------------- running commands

def run_command(cmd, cwd, limit, env=None):
    """Run cmd in its own process group with a time limit; on a timeout SIGTERM the group, SIGKILL it 5 s later.
    Returns dict(rc, seconds, timed_out, output). Output goes through a file: a pipe nobody reads could fill and
    stall the command."""
    with tempfile.TemporaryFile('w+', encoding='utf-8', errors='replace') as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                             env=child_env(env))
        timed_out = False
        try:
            p.wait(timeout=max(limit, 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(p)
        else:  # what the command left running in its group (a stray worker) would disturb the next step's timing
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        seconds = time.perf_counter() - t0
        f.seek(0)
        return dict(rc=p.returncode, seconds=seconds, timed_out=timed_out, output=f.read())


def child_env(extra=None):
    """The commands' environment: unbuffered output (the end of it is what a killed command leaves), and under
    --smoke no GPU at all, so that the pipeline is the CPU's on a GPU machine too (the cuda tests skip)."""
    return {**os.environ, 'PYTHONUNBUFFERED': '1', **({'CUDA_VISIBLE_DEVICES': ''} if smoke else {}), **(extra or {})}


def kill_group(p, grace=5.0):
    """SIGTERM the process group of p (the command and whatever it started: compile workers, torchrun's
    children), then SIGKILL what is left after grace seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=wait)
            if sig == signal.SIGTERM:  # the leader is gone; the rest of its group goes now
                os.killpg(p.pid, signal.SIGKILL)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def tail(text, n=TAIL):
    return '\n'.join(text.rstrip().splitlines()[-n:])


class StepFailed(Exception):
    """A command of a step failed or timed out: the step's row says which, with the end of its output."""

    def __init__(self, status, what, result):
        super().__init__(what)
        self.status, self.what, self.result = status, what, result


class Clock:
    """The overall deadline: each command's limit is its own or the time left, whichever is less."""

    def __init__(self, seconds):
        self.end = time.perf_counter() + seconds

    def left(self):
        return self.end - time.perf_counter()


def limit_for(name):
    custom = dict(kv.split('=', 1) for kv in limits.split(',') if kv.strip())
    if name in custom:
        return float(custom[name])
    return LIMITS[name][1 if smoke else 0]


def call(clock, step, what, cmd, cwd=HERE, env=None, limit=None):
    """Run one command of a step under the step's limit and the overall deadline; raise StepFailed unless it
    succeeded. Returns its result dict."""
    left = clock.left()
    if left < 1:
        raise StepFailed('skipped', f"{what}: no time left before the deadline", dict(output=''))
    own = limit if limit is not None else limit_for(step)
    r = run_command([str(c) for c in cmd], cwd, min(own, left), env)
    if r['timed_out']:
        why = 'its limit' if own <= left else 'the overall deadline'
        raise StepFailed('timeout', f"{what}: killed after {r['seconds']:.0f}s ({why}, {min(own, left):.0f}s)", r)
    if r['rc'] != 0:
        raise StepFailed('failed', f"{what}: exit status {r['rc']}", r)
    return r


# ----------------------------------------------------------------------------- parsing outputs

def parse_pytest(text):
    """{'passed': n, 'failed': n, 'skipped': n, ...} from pytest's summary line."""
    counts = {k: 0 for k in ('passed', 'failed', 'skipped', 'errors', 'deselected')}
    lines = [l for l in text.splitlines() if re.search(r'\d+ (passed|failed|skipped|errors?|deselected)', l)]
    if lines:
        for n, k in re.findall(r'(\d+) (passed|failed|skipped|errors?|deselected)', lines[-1]):
            counts['errors' if k.startswith('error') else k] = int(n)
    return counts


def parse_skips(text):
    """{reason: n} from pytest -rs's 'SKIPPED [n] file:line: reason' lines (a skip added at collection, as
    conftest.py's without a GPU, names no line)."""
    skips = {}
    for n, why in re.findall(r'^SKIPPED \[(\d+)\] [^:\n]+(?::\d+)?: (.*)$', text, re.M):
        skips[why.strip()] = skips.get(why.strip(), 0) + int(n)
    return skips


def parse_bench(text):
    """{variant: {'ms': ms/iter, 'tok_s': tokens/s}} from bench.py's report (one variant, or a table of several)."""
    rows = {}
    single = re.search(r'^ms/iter ([\d.]+) \(.*?tokens/s ([\d,]+)', text, re.M)
    if single:
        name = text[:single.start()].rstrip().splitlines()[-1].split(' (')[0]
        rows[name] = dict(ms=float(single.group(1)), tok_s=float(single.group(2).replace(',', '')))
    for name, ms, tok_s in re.findall(r'^(\S+) +([\d.]+) +([\d,]+) +[\d.]+% +[\d.]+x ', text, re.M):
        rows[name] = dict(ms=float(ms), tok_s=float(tok_s.replace(',', '')))
    return rows


def parse_nanogpt_bench(text, tokens_per_iter=12 * 1024):
    """nanoGPT's bench.py: 'time per iteration: 123.4567ms, MFU: 40.00%' (its second, timed stage)."""
    found = re.findall(r'time per iteration: ([\d.]+)ms', text)
    if not found:
        return None
    ms = float(found[-1])
    return dict(ms=ms, tok_s=tokens_per_iter / (ms / 1000))


def parse_eval_lines(text):
    """[(step, val loss)] from train.py's 'step N: train loss X, val loss Y' lines (nanoGPT's and ours)."""
    return [(int(s), float(v)) for s, v in re.findall(r'^step (\d+):.*?val loss ([\d.]+|nan|inf)', text, re.M)]


# ----------------------------------------------------------------------------- the steps

def python():
    return sys.executable


def nanogpt_dir(script):
    """The nanoGPT checkout if it holds script, else None."""
    if not nanogpt:
        return None
    d = os.path.abspath(os.path.join(HERE, nanogpt))
    return d if os.path.isfile(os.path.join(d, script)) else None


def char_data(clock):
    """The prepared char data directory, preparing it if it lacks train.bin."""
    d = os.path.abspath(data_dir) if data_dir else os.path.join(HERE, 'data', 'shakespeare_char')
    if not os.path.exists(os.path.join(d, 'train.bin')):
        cmd = [python(), 'data/shakespeare_char/prepare.py', f'--out_dir={d}']
        text = os.path.join(HERE, shakespeare)
        if os.path.isfile(text):
            cmd.append(f'--input={text}')
        call(clock, 'prepare', 'prepare the char data', cmd, limit=limit_for('prepare'))
    return d


def text_for_tests(clock):
    """Tiny Shakespeare for the cuda tests that train: conftest.py looks in ../shared, which a GPU machine rarely
    has, so it is handed over as TINY_SHAKESPEARE: --shakespeare, else the input.txt the char data was prepared
    from (downloaded now if it has to be). None if neither is there (those tests then skip, and say why)."""
    given = os.path.join(HERE, shakespeare)
    if os.path.isfile(given):
        return os.path.abspath(given)
    path = os.path.join(char_data(clock), 'input.txt')
    return path if os.path.isfile(path) else None


def step_cuda_tests(clock, work):
    # only the files that hold cuda tests: a module the GPU machine cannot import (serve's, without the openai
    # client) would otherwise be reported skipped here too
    files = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, 'tests', 'test_*.py'))
                   if 'pytest.mark.cuda' in open(p, encoding='utf-8').read())
    cmd = [python(), '-m', 'pytest', '-q', '-rs', '-m', 'cuda', '-p', 'no:cacheprovider',
           f'--basetemp={os.path.join(work, "pytest")}', *files]
    text = text_for_tests(clock)
    try:
        r = call(clock, 'cuda_tests', 'pytest -m cuda', cmd, env={'TINY_SHAKESPEARE': text} if text else None)
    except StepFailed as e:
        if e.status == 'failed' and e.result.get('output'):  # tests that failed: the counts still say how many
            e.counts = parse_pytest(e.result['output'])
            e.what += f" ({e.counts['passed']} passed, {e.counts['failed']} failed, {e.counts['errors']} errors)"
        raise
    c = parse_pytest(r['output'])
    skips = parse_skips(r['output'])
    return dict(summary=f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"
                        + ''.join(f"; {n} skipped: {why}" for why, n in skips.items()), skips=skips, **c)


def bench_args():
    if smoke:  # a one-layer GPT-2-shaped model, a small vocabulary, eager fp32
        return ['--model=gpt2', '--device=cpu', '--n_layer=1', '--n_head=2', '--n_embd=32', '--vocab_size=256',
                '--block_size=64', '--dropout=0']
    return ['--model=gpt2', '--device=cuda']


def step_throughput(clock, work):
    ours_variant = 'eager+fp32+fused' if smoke else 'compile+bf16+fused'
    size = ['--batch_size=2', '--iters=3', '--warmup=1', '--rounds=1'] if smoke else \
        ['--batch_size=12', '--block_size=1024', '--iters=20', '--warmup=3', '--rounds=2']
    ng = nanogpt_dir('bench.py')
    have_nanogpt = ng is not None
    variants = ours_variant if have_nanogpt else f'reference,{ours_variant}'
    r = call(clock, 'throughput', 'bench.py (ours)',
             [python(), 'bench.py', *bench_args(), *size, f'--variants={variants}'])
    rows = parse_bench(r['output'])
    if ours_variant not in rows:
        raise StepFailed('failed', f"bench.py printed no figures for {ours_variant}", r)
    ours = rows[ours_variant]
    if have_nanogpt:
        # (its model is fixed at GPT-2 124M, bias=False; only these settings are its to change)
        cmd = [python(), 'bench.py', '--real_data=False', '--batch_size=12', '--block_size=1024']
        if smoke:
            cmd += ['--device=cpu', '--compile=False', '--dtype=float32', '--batch_size=2', '--block_size=64']
        r2 = call(clock, 'throughput', "nanoGPT's bench.py", cmd, cwd=ng)
        theirs = parse_nanogpt_bench(r2['output'], 2 * 64 if smoke else 12 * 1024)
        if theirs is None:
            raise StepFailed('failed', "nanoGPT's bench.py printed no 'time per iteration'", r2)
        against, note = f'nanoGPT bench.py ({ng})', "nanoGPT: compile, bf16, its own AdamW, bias=False"
    else:
        if 'reference' not in rows:
            raise StepFailed('failed', "bench.py printed no figures for 'reference'", r)
        theirs = rows['reference']
        against = "bench.py 'reference' (tools/bench_reference.py)"
        note = ("no nanoGPT checkout: the reference is nanoGPT's model in fp32 eager (bench.py fixes it so), so the "
                f"{target_speedup}x target, set against nanoGPT's compile+bf16, is not tested by this ratio")
    ratio = ours['tok_s'] / theirs['tok_s']
    return dict(summary=f"ours {ours['ms']:.1f} ms/iter {ours['tok_s']:,.0f} tok/s; {against} {theirs['ms']:.1f} "
                        f"ms/iter {theirs['tok_s']:,.0f} tok/s; {ratio:.2f}x"
                        + (f" (target >= {target_speedup}x: {'met' if ratio >= target_speedup else 'NOT met'})"
                           if have_nanogpt else ''),
                ours=dict(variant=ours_variant, **ours), reference=dict(name=against, **theirs), ratio=ratio,
                target=target_speedup if have_nanogpt else None,
                target_met=(ratio >= target_speedup) if have_nanogpt else None, note=note)


def step_decode(clock, work):
    runs = [('1', 'cache,hf' if smoke else 'cache,cudagraph,hf'), ('32', 'cache' if smoke else 'cache,cudagraph')]
    size = ['--max_new_tokens=20', '--iters=2', '--warmup=1', '--rounds=1'] if smoke else \
        ['--max_new_tokens=200', '--iters=3', '--warmup=1']
    result, parts = {}, []
    for batch, variants in runs:
        r = call(clock, 'decode', f'bench.py --mode=sample --batch_size={batch}',
                 [python(), 'bench.py', '--mode=sample', *bench_args(), *size, f'--batch_size={batch}',
                  f'--variants={variants}'])
        rows = parse_bench(r['output'])
        missing = [v for v in variants.split(',') if v not in rows]
        if missing:
            raise StepFailed('failed', f"bench.py --batch_size={batch} printed no figures for {', '.join(missing)}", r)
        result[f'batch{batch}'] = {v: rows[v]['tok_s'] for v in variants.split(',')}
        parts.append(f"batch {batch}: " + ', '.join(f"{v} {rows[v]['tok_s']:,.0f}" for v in variants.split(',')))
    return dict(summary='tokens/s ' + '; '.join(parts), **result)


def tiny_run_args(data, device):
    """A small eager char model with dropout (so the CUDA generator matters) and a checkpoint halfway."""
    if smoke:
        # (enough steps after the first checkpoint that the kill comes before the run ends on a fast CPU)
        size = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, max_iters=100, eval_interval=20,
                    eval_iters=2, warmup_iters=2, lr_decay_iters=100)
    else:
        size = dict(n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=32, max_iters=300,
                    eval_interval=150, eval_iters=10, warmup_iters=30, lr_decay_iters=300)
    args = dict(device=device, compile=False, dtype='float32' if smoke else 'auto', dropout=0.1,
                learning_rate=3e-3, always_save_checkpoint=True, plot=False, wandb_log=False, log_interval=1,
                gradient_accumulation_steps=1, dataset='shakespeare_char', data_dir=data, **size)
    return [f'--{k}={v}' for k, v in args.items()]


def max_weight_diff(a, b):
    from gpt.checkpoint import load_checkpoint
    sa, sb = load_checkpoint(a)['model'], load_checkpoint(b)['model']
    if sa.keys() != sb.keys():
        raise UserError(f"{a} and {b} hold different weights")
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)


def kill_after_first_checkpoint(clock, cmd, out_dir, first_ckpt):
    """Start a training run in its own process group and SIGKILL the group a few steps after its first
    checkpoint (as a crash would: no chance to save). Returns the iteration of the checkpoint it left."""
    from gpt.checkpoint import load_checkpoint
    from gpt.run import read_records
    log = os.path.join(out_dir, 'log.jsonl')
    limit = min(limit_for('determinism'), clock.left())
    with tempfile.TemporaryFile('w+', encoding='utf-8', errors='replace') as f:
        p = subprocess.Popen(cmd, cwd=HERE, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                             env=child_env())
        t0 = time.perf_counter()
        killed = False
        while p.poll() is None and time.perf_counter() - t0 < limit:
            if any(e.get('event') == 'train' and e.get('iter', 0) >= first_ckpt + 2 for e in read_records(log)):
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                killed = True
                break
            time.sleep(0.01)
        if not killed:
            timed_out = p.poll() is None
            if timed_out:
                kill_group(p)
            f.seek(0)
            r = dict(output=f.read(), seconds=time.perf_counter() - t0)
            raise StepFailed('timeout' if timed_out else 'failed',
                             'the run to kill ' + ('timed out before its first checkpoint' if timed_out
                                                   else f'ended (exit {p.returncode}) before it could be killed'), r)
    return load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))['iter_num']


def step_determinism(clock, work):
    data = char_data(clock)
    device = 'cpu' if smoke else 'cuda'
    base = [python(), 'train.py', *tiny_run_args(data, device)]
    d = os.path.join(work, 'determinism')
    runs = {'det_a': ['--deterministic=True'], 'det_b': ['--deterministic=True'], 'nondet_a': [], 'nondet_b': []}
    for name, extra in runs.items():
        call(clock, 'determinism', f'train.py ({name})', [*base, *extra, f'--out_dir={os.path.join(d, name)}'])
    killed = os.path.join(d, 'killed')
    first = int(re.search(r'--eval_interval=(\d+)', ' '.join(base)).group(1))
    at = kill_after_first_checkpoint(clock, [*base, '--deterministic=True', f'--out_dir={killed}'], killed, first)
    call(clock, 'determinism', 'train.py --init_from=resume',
         [python(), 'train.py', '--init_from=resume', f'--out_dir={killed}'])
    ck = {n: os.path.join(d, n, 'ckpt.pt') for n in (*runs, 'killed')}
    diffs = dict(deterministic=max_weight_diff(ck['det_a'], ck['det_b']),
                 nondeterministic=max_weight_diff(ck['nondet_a'], ck['nondet_b']),
                 resume_deterministic=max_weight_diff(ck['det_a'], ck['killed']))
    return dict(summary=f"max |w diff|: deterministic runs {diffs['deterministic']:.3g}, without "
                        f"{diffs['nondeterministic']:.3g}, SIGKILL at {at}+resume vs straight "
                        f"{diffs['resume_deterministic']:.3g} (deterministic)",
                killed_checkpoint_iter=at, **diffs)


def read_evals(out_dir):
    from gpt.run import read_records
    return [e for e in read_records(os.path.join(out_dir, 'log.jsonl')) if e.get('event') == 'eval']


def step_speedrun(clock, work):
    data = char_data(clock)
    od = os.path.join(work, 'speedrun')
    cmd = [python(), 'train.py', 'config/train_shakespeare_char_gpu_speedrun.py', f'--out_dir={od}',
           f'--data_dir={data}', '--overwrite=True']
    if smoke:
        cmd += ['--device=cpu', '--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4',
                '--max_iters=20', '--lr_decay_iters=20', '--warmup_iters=2', '--eval_interval=10', '--eval_iters=2',
                '--log_interval=10']
    r = call(clock, 'speedrun', 'train.py (GPU speedrun config)', cmd)
    evals = read_evals(od)
    if not evals:
        raise StepFailed('failed', 'the speedrun logged no evaluation', r)
    reached = [e for e in evals if e['val_loss'] <= target_loss]
    ours = dict(wall_s=r['seconds'], final_val=evals[-1]['val_loss'], best_val=min(e['val_loss'] for e in evals),
                iters=evals[-1]['iter'], reached_at_iter=reached[0]['iter'] if reached else None,
                reached_loop_s=reached[0]['seconds'] if reached else None)
    summary = (f"ours {ours['wall_s']:.0f}s wall, val {ours['final_val']:.4f} at {ours['iters']} "
               f"(target {target_loss}: " + (f"reached at iter {ours['reached_at_iter']}" if reached else 'NOT reached')
               + ')')
    MEASURED['speedrun'] = ours
    return dict(summary=summary, ours=ours, target=target_loss)


def step_nanogpt_speedrun(clock, work):
    """nanoGPT's own GPU recipe in its checkout (its data prepared first, from our text when offline), beside
    ours: a step of its own, last, since it is the longest (5000 iterations) and only a comparison."""
    ng = nanogpt_dir('train.py')
    if not ng:
        raise StepFailed('skipped', f"no nanoGPT checkout (train.py) at {nanogpt!r}", dict(output=''))
    nd = os.path.join(ng, 'data', 'shakespeare_char')
    if not os.path.exists(os.path.join(nd, 'train.bin')):
        text = os.path.join(HERE, shakespeare)
        if not os.path.exists(os.path.join(nd, 'input.txt')) and os.path.isfile(text):
            shutil.copyfile(text, os.path.join(nd, 'input.txt'))  # (its prepare.py downloads only when absent)
        call(clock, 'prepare', "nanoGPT's prepare.py", [python(), 'data/shakespeare_char/prepare.py'], cwd=ng,
             limit=limit_for('prepare'))
    cmd = [python(), 'train.py', 'config/train_shakespeare_char.py', f'--out_dir={os.path.join(work, "nanogpt")}']
    if smoke:
        cmd += ['--device=cpu', '--compile=False', '--dtype=float32', '--n_layer=1', '--n_head=2', '--n_embd=32',
                '--block_size=32', '--batch_size=4', '--max_iters=20', '--lr_decay_iters=20', '--eval_interval=10',
                '--eval_iters=2']
    r = call(clock, 'nanogpt_speedrun', "nanoGPT's train.py", cmd, cwd=ng)
    evals = parse_eval_lines(r['output'])
    if not evals:
        raise StepFailed('failed', "nanoGPT's train.py printed no 'step N: ... val loss' line", r)
    theirs = dict(wall_s=r['seconds'], final_val=evals[-1][1], best_val=min(v for _, v in evals), iters=evals[-1][0])
    ours = MEASURED.get('speedrun')
    return dict(summary=f"nanoGPT {theirs['wall_s']:.0f}s wall, val {theirs['final_val']:.4f} at {theirs['iters']} "
                        f"(best {theirs['best_val']:.4f})"
                        + (f"; ours/nanoGPT wall time {ours['wall_s'] / theirs['wall_s']:.2f}" if ours else ''),
                checkout=ng, **theirs, wall_ratio=ours['wall_s'] / theirs['wall_s'] if ours else None)


RUNNERS = {'cuda_tests': step_cuda_tests, 'throughput': step_throughput, 'speedrun': step_speedrun,
           'decode': step_decode, 'determinism': step_determinism, 'nanogpt_speedrun': step_nanogpt_speedrun}
MEASURED = {}  # figures a later step compares with (ours speedrun's wall time)


# ----------------------------------------------------------------------------- main

def run_step(name, clock, work):
    t0 = time.perf_counter()
    try:
        row = dict(step=name, status='ok', **RUNNERS[name](clock, work))
    except StepFailed as e:
        row = dict(step=name, status=e.status, summary=e.what, tail=tail(e.result.get('output', '')),
                   **getattr(e, 'counts', {}))
    except Exception as e:  # anything else (a missing checkpoint, a parse surprise): a row, not a crash
        import traceback
        row = dict(step=name, status='error', summary=f"{type(e).__name__}: {e}", tail=tail(traceback.format_exc()))
    row['seconds'] = round(time.perf_counter() - t0, 1)
    if name == 'cuda_tests' and row['status'] == 'ok' and row.get('failed'):
        row['status'] = 'failed'
    elif name == 'cuda_tests' and row['status'] == 'ok' and row.get('skipped') and not smoke:
        row['status'] = 'partial'  # on a GPU every cuda test should run: the summary says why some did not
    return row


def print_table(rows, header):
    print('\n' + header)
    w = max(len(r['step']) for r in rows)
    print(f"{'step':<{w}}  {'status':<8} {'seconds':>7}  result")
    for r in rows:
        print(f"{r['step']:<{w}}  {r['status']:<8} {r['seconds']:>7.1f}  {r['summary']}")
    for r in rows:
        if r.get('tail'):
            print(f"\n--- {r['step']} ({r['status']}): last lines of its output\n{r['tail']}")


def main():
    configurator.configure(globals(), verbose=False)
    chosen = [s.strip() for s in steps.split(',') if s.strip()] or list(STEPS)
    bad = [s for s in chosen if s not in STEPS]
    if bad:
        raise UserError(f"unknown step {bad[0]!r}: choose from {', '.join(STEPS)}")
    chosen = [s for s in STEPS if s in chosen]  # (in STEPS' order: nanoGPT's speedrun is compared with ours)
    for kv in (kv for kv in limits.split(',') if kv.strip()):
        k, _, v = kv.partition('=')
        if k not in LIMITS or not re.fullmatch(r'\d+(\.\d+)?', v):
            raise UserError(f"limits: {kv!r} is not step=seconds with a step among {', '.join(LIMITS)}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):  # (found now, not after 8 minutes of work)
        raise UserError(f"out: the folder of {out!r} does not exist")
    clock = Clock(deadline)
    import torch  # (after the config checks: a typo answers at once)
    if smoke:
        hw = 'CPU (smoke: tiny settings)'
    elif torch.cuda.is_available():
        hw = torch.cuda.get_device_name(0)
    else:
        raise UserError("no CUDA GPU here (torch.cuda.is_available() is False); --smoke=True runs the pipeline on "
                        "the CPU")
    header = f"gpu_check: {hw}, torch {torch.__version__}, deadline {deadline:.0f}s"
    print(header, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix='gpu_check-') as work:
        for name in chosen:
            if clock.left() < (5 if smoke else 30):
                rows.append(dict(step=name, status='skipped', seconds=0.0,
                                 summary=f"skipped: {max(clock.left(), 0):.0f}s left before the {deadline:.0f}s "
                                         f"deadline"))
            else:
                print(f"[{deadline - clock.left():6.1f}s] {name} ...", flush=True)
                rows.append(run_step(name, clock, work))
                print(f"[{deadline - clock.left():6.1f}s] {name}: {rows[-1]['status']}", flush=True)
    print_table(rows, header)
    doc = dict(device=hw, torch=torch.__version__, smoke=smoke, deadline_s=deadline,
               total_s=round(deadline - clock.left(), 1), steps=rows)
    with open(out, 'w', encoding='utf-8') as f:
        json.dump(doc, f, indent=1)
    print(f"\nwritten to {out}")


if __name__ == '__main__':
    main()
