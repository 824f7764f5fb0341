"""
Bad inputs and bad luck end a run with one clear line on stderr (`error: ...`), a non-zero exit and
no traceback, and leave every existing file as it was: missing or inconsistent data, damaged or
incompatible checkpoints, checkpoints carrying code, an unwritable out_dir, a full disk, a diverging
loss. Most runs are in-process (train.py and sample.py run as __main__ via runpy) to stay fast.
"""
import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, run_inprocess, tiny

import model
from gpt import loading
from gpt.errors import UserError

TINY = tiny(batch_size=4, gradient_accumulation_steps=2, eval_iters=2, log_interval=1, dropout=0.1, plot=False,
            peak_flops=1e12, learning_rate=1e-3, warmup_iters=4, lr_decay_iters=24, min_lr=1e-4)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, char_data):
    """A finished 4-iteration run: ckpt.pt and best.pt at iteration 4."""
    out = tmp_path_factory.mktemp('trained')
    code, _, err = run_inprocess('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={out}',
                                 '--max_iters=4', '--eval_interval=2')
    assert code == 0, err
    return out


@pytest.fixture
def run_dir(tmp_path, trained):
    """A copy of the trained run to resume from."""
    return shutil.copytree(trained, tmp_path / 'run')


def data_copy(char_data, dest):
    return shutil.copytree(char_data, dest)


def snapshot(*dirs, skip=('log.jsonl',)):
    """{file: (sha256, mtime)} of every file under dirs (the run log is allowed to grow)."""
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for d in dirs for p in sorted(d.rglob('*')) if p.is_file() and p.name not in skip}


def fails(script, *argv):
    """Run a script in-process; it must fail with exactly one `error: ...` line. Returns that line."""
    code, _, err = run_inprocess(script, *argv)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    return lines[0]


def train_fails(data, out_dir, *args):
    return fails('train.py', *TINY, f'--data_dir={data}', f'--out_dir={out_dir}', *args)


# ----------------------------------------------------------------------------- data

@pytest.mark.parametrize('missing', ['train.bin', 'val.bin'])
def test_missing_data_file_names_the_prepare_script(tmp_path, char_data, run_dir, missing):
    data = data_copy(char_data, tmp_path / 'data')
    (data / missing).unlink()
    before = snapshot(data, run_dir)
    msg = train_fails(data, run_dir, '--dataset=shakespeare_char', '--max_iters=2')
    assert f"{data / missing} not found" in msg
    assert f"python data/shakespeare_char/prepare.py --out_dir {data}" in msg
    assert snapshot(data, run_dir) == before


def test_dataset_vocab_larger_than_the_resumed_model(tmp_path, char_data, run_dir):
    data = data_copy(char_data, tmp_path / 'data')
    meta = json.loads((data / 'meta.json').read_text())
    (data / 'meta.json').write_text(json.dumps({**meta, 'vocab_size': 100}))
    before = snapshot(data, run_dir)
    msg = train_fails(data, run_dir, '--init_from=resume', '--max_iters=6')
    assert 'vocab_size 65' in msg and 'has 100' in msg
    assert snapshot(data, run_dir) == before


def test_dataset_vocab_larger_than_a_pretrained_model(tmp_path, char_data):
    transformers = pytest.importorskip('transformers')
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64,
                                                              vocab_size=50))
    hf.save_pretrained(tmp_path / 'hf')
    before = snapshot(tmp_path / 'hf', char_data)
    code, _, err = run_inprocess('train.py', *TINY, f'--data_dir={char_data}', f'--out_dir={tmp_path / "out"}',
                                 f'--init_from={tmp_path / "hf"}', '--max_iters=2')
    lines = err.strip().splitlines()  # (no progress bar of transformers' before it)
    assert code == 1 and len(lines) == 1 and lines[0].startswith('error: '), err
    assert 'vocab_size 65' in lines[0] and 'only 50' in lines[0]
    assert snapshot(tmp_path / 'hf', char_data) == before


def test_token_id_beyond_the_vocabulary(tmp_path, char_data, run_dir):
    # a real interpreter (not in-process): the error surfaces from inside the training loop
    data = data_copy(char_data, tmp_path / 'data')
    ids = np.fromfile(data / 'train.bin', dtype=np.uint16)
    ids[::8] = 65  # the vocabulary is ids 0..64; every window of 33 tokens holds some 65s
    ids.tofile(data / 'train.bin')
    before = snapshot(data, run_dir)
    p = subprocess.run([sys.executable, 'train.py', *TINY, f'--data_dir={data}', f'--out_dir={run_dir}',
                        '--init_from=resume', '--max_iters=8'], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=300)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [f"error: train.bin in {data} holds token id 65, beyond the vocabulary "
                                             f"(65); the file is corrupt or from another tokenizer: re-run prepare.py"]
    assert snapshot(data, run_dir) == before


def test_block_size_larger_than_the_validation_split(tmp_path, char_data):
    data = data_copy(char_data, tmp_path / 'data')
    np.fromfile(data / 'val.bin', dtype=np.uint16)[:20].tofile(data / 'val.bin')  # a (consistent) tiny split
    meta = json.loads((data / 'meta.json').read_text())
    (data / 'meta.json').write_text(json.dumps({**meta, 'val_tokens': 20}))
    before = snapshot(data)
    msg = train_fails(data, tmp_path / 'out', '--max_iters=2')
    assert 'val.bin' in msg and 'has 20 tokens, too few for block_size=32' in msg
    assert snapshot(data) == before


def test_split_of_exactly_one_window_trains_and_its_last_window_is_drawn(tmp_path, char_data):
    # a split of block_size + 1 tokens holds one window, starting at 0; a longer one has its last window
    # (start len - block_size - 1) among the windows the loader draws
    from gpt.tokendata import TokenData
    data = data_copy(char_data, tmp_path / 'data')
    ids = np.fromfile(data / 'val.bin', dtype=np.uint16)
    ids[:33].tofile(data / 'val.bin')
    meta = json.loads((data / 'meta.json').read_text())
    (data / 'meta.json').write_text(json.dumps({**meta, 'val_tokens': 33}))
    loader = TokenData(str(data), 32, 4, 'cpu')
    x, y = loader.batch('val', 0)
    assert torch.equal(x, torch.from_numpy(ids[:32].astype(np.int64)).expand(4, 32))
    assert torch.equal(y, torch.from_numpy(ids[1:33].astype(np.int64)).expand(4, 32))
    ids[:40].tofile(data / 'val.bin')  # 8 possible starts: 0..7, all drawn within a few batches
    (data / 'meta.json').write_text(json.dumps({**meta, 'val_tokens': 40}))
    loader = TokenData(str(data), 32, 16, 'cpu')
    starts = {int(np.flatnonzero((np.lib.stride_tricks.sliding_window_view(ids[:40], 32) == row).all(1))[0])
              for k in range(4) for row in loader.batch('val', k)[0].numpy()}
    assert starts == set(range(8))


@pytest.mark.parametrize('damage', ['odd size', 'truncated'])
def test_damaged_token_file(tmp_path, char_data, damage):
    data = data_copy(char_data, tmp_path / 'data')
    raw = (data / 'val.bin').read_bytes()
    (data / 'val.bin').write_bytes(raw[:-1] if damage == 'odd size' else raw[:len(raw) // 2])
    before = snapshot(data)
    msg = train_fails(data, tmp_path / 'out', '--max_iters=2', '--dataset=shakespeare_char')
    assert f"{data / 'val.bin'} is" in msg and 'truncated or corrupt' in msg
    assert f"python data/shakespeare_char/prepare.py --out_dir {data}" in msg
    assert snapshot(data) == before


@pytest.mark.parametrize('meta, what', [([1, 2], 'not a JSON object'), ({'tokenizer': 'char', 'vocab_size': 'x',
                                                                          'dtype': 'uint16'}, "vocab_size 'x'"),
                                        ({'tokenizer': 'char', 'vocab_size': 65, 'dtype': 'float64'}, "'float64'")])
def test_bad_meta(tmp_path, char_data, meta, what):
    data = data_copy(char_data, tmp_path / 'data')
    (data / 'meta.json').write_text(json.dumps(meta))
    msg = train_fails(data, tmp_path / 'out', '--max_iters=2')
    assert what in msg and 'prepare.py' in msg


# ----------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize('damage', ['truncated', 'random bytes', 'empty'])
def test_damaged_checkpoint(char_data, run_dir, damage):
    path = run_dir / 'ckpt.pt'
    data = path.read_bytes()
    path.write_bytes({'truncated': data[:len(data) * 2 // 3], 'random bytes': os.urandom(len(data)),
                      'empty': b''}[damage])
    before = snapshot(run_dir)
    msg = train_fails(char_data, run_dir, '--init_from=resume', '--max_iters=6')
    assert f"{path} is truncated or corrupt" in msg
    msg = fails('sample.py', f'--out_dir={run_dir}', '--ckpt_name=ckpt.pt', '--device=cpu', '--max_new_tokens=5')
    assert f"{path} is truncated or corrupt" in msg
    assert snapshot(run_dir) == before


def test_checkpoint_whose_weights_do_not_fit_its_model_args(char_data, run_dir):
    ckpt = torch.load(run_dir / 'ckpt.pt', weights_only=True)
    ckpt['model_args']['n_embd'] = 48
    torch.save(ckpt, run_dir / 'ckpt.pt')
    before = snapshot(run_dir)
    args = [a for a in TINY if not a.startswith('--n_embd=')]  # (an explicit n_embd is checked first)
    msg = fails('train.py', *args, f'--data_dir={char_data}', f'--out_dir={run_dir}', '--init_from=resume')
    assert 'checkpoint weights do not fit its model settings' in msg and 'size mismatch' in msg
    assert snapshot(run_dir) == before


def test_resume_with_a_conflicting_architecture(char_data, run_dir):
    before = snapshot(run_dir)
    msg = train_fails(char_data, run_dir, '--init_from=resume', '--max_iters=6', '--n_layer=3')
    assert 'has n_layer=2 but you asked for n_layer=3' in msg
    assert snapshot(run_dir) == before


def test_resume_without_a_checkpoint(tmp_path, char_data):
    msg = train_fails(char_data, tmp_path, '--init_from=resume')
    assert f"--init_from=resume but there is no run in {tmp_path} (no ckpt.pt)" in msg, msg


class WritesFile:
    """Unpickling this calls open(path, 'w'): creates the file."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


class RunsShell:
    """Unpickling this calls os.system('touch path')."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f'touch {self.path}',))


@pytest.mark.parametrize('payload', [WritesFile, RunsShell])
def test_checkpoint_with_pickled_code_is_refused_everywhere(tmp_path, char_data, trained, payload):
    evil_dir, target = tmp_path / 'evil', tmp_path / 'pwned'
    evil_dir.mkdir()
    ckpt = torch.load(trained / 'ckpt.pt', weights_only=True)
    ckpt['config']['note'] = payload(str(target))
    torch.save(ckpt, evil_dir / 'ckpt.pt')
    before = snapshot(evil_dir)

    msg = train_fails(char_data, evil_dir, '--init_from=resume', '--max_iters=6')  # train.py resume
    assert 'refusing to load' in msg and not target.exists()
    msg = fails('sample.py', f'--out_dir={evil_dir}', '--device=cpu', '--max_new_tokens=5')  # sample.py
    assert 'refusing to load' in msg and not target.exists()
    with pytest.raises(UserError, match='refusing to load'):  # the loader bench.py uses
        loading.load_model('resume', str(evil_dir))
    assert not target.exists()
    assert snapshot(evil_dir) == before

    # the payload is real: the file names the callable an unsafe load would run (found without running it)
    fn = payload(str(target)).__reduce__()[0]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(evil_dir / 'ckpt.pt') == \
        [f'{fn.__module__}.{fn.__qualname__}']
    assert not target.exists()


# ----------------------------------------------------------------------------- out_dir and disk

def test_out_dir_under_a_file(tmp_path, char_data):
    # chmod does not stop root; a path through a regular file fails for everyone
    (tmp_path / 'afile').write_text('x')
    msg = train_fails(char_data, tmp_path / 'afile' / 'sub', '--max_iters=2')
    assert 'is not writable' in msg and 'afile' in msg
    assert (tmp_path / 'afile').read_text() == 'x'


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(dir, options) mounts a small tmpfs (needs root); unmounted afterwards."""
    mounted = []

    def mount(d, options):
        d.mkdir(exist_ok=True)
        p = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(d)], capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
        mounted.append(d)
        return d
    yield mount
    for d in mounted:
        subprocess.run(['umount', str(d)], check=True)


def test_out_dir_on_a_read_only_file_system(tmp_path, char_data, mount_tmpfs):
    ro = mount_tmpfs(tmp_path / 'ro', 'ro,size=64k')
    msg = train_fails(char_data, ro / 'out', '--max_iters=2')
    assert 'is not writable (Read-only file system)' in msg


class FillsUp:
    """A file that takes `room` bytes, then fails every write as a full disk does."""
    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


@pytest.mark.parametrize('where', ['inside torch.save', 'after torch.save'])
def test_disk_full_during_save_simulated(char_data, run_dir, monkeypatch, where):
    # the disk fills up halfway through the checkpoint: torch.save reports a failed write as a
    # RuntimeError; a failure it does not see (e.g. when the buffered rest is flushed) is an OSError
    real_save = torch.save
    room = (run_dir / 'ckpt.pt').stat().st_size // 2

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        if where == 'inside torch.save':
            return real_save(obj, FillsUp(f, room), *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[:room])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, 'save', save_on_a_full_disk)
    before = snapshot(run_dir)
    msg = train_fails(char_data, run_dir, '--init_from=resume', '--max_iters=8', '--eval_interval=2')
    assert f"could not write checkpoint {run_dir / 'ckpt.pt'}" in msg and 'untouched' in msg
    if where == 'after torch.save':
        assert 'No space left on device' in msg
    assert snapshot(run_dir) == before and not list(run_dir.glob('*.tmp'))


def test_disk_full_during_save_real(tmp_path, char_data, trained, mount_tmpfs):
    # room for one checkpoint and a half: the next save (a second copy until it replaces the first) fails
    size = (trained / 'ckpt.pt').stat().st_size
    out = mount_tmpfs(tmp_path / 'small', f'size={(size * 3 // 2 // 4096 + 16) * 4096}')
    shutil.copy2(trained / 'ckpt.pt', out / 'ckpt.pt')
    os.link(out / 'ckpt.pt', out / 'best.pt')
    before = snapshot(out)
    msg = train_fails(char_data, out, '--init_from=resume', '--max_iters=8', '--eval_interval=2')
    assert 'could not write checkpoint' in msg and 'untouched' in msg
    assert snapshot(out) == before and not list(out.glob('*.tmp'))


# ----------------------------------------------------------------------------- divergence

@pytest.mark.parametrize('eval_interval, what', [(100, 'loss is nan at iteration 5'),
                                                 (1, 'eval loss is nan at iteration 5')])
def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(char_data, run_dir, eval_interval, what):
    # resumed at iteration 4 with an absurd learning rate and no clipping: step 4 blows the weights
    # up, so iteration 5's loss (or, evaluating every step, its eval loss) is NaN
    before = snapshot(run_dir)
    msg = train_fails(char_data, run_dir, '--init_from=resume', '--max_iters=10', '--learning_rate=1e9',
                      '--grad_clip=0', '--decay_lr=False', f'--eval_interval={eval_interval}')
    assert what in msg and 'ckpt.pt still holds the last good state' in msg
    assert snapshot(run_dir) == before


def test_nan_policy_skip_leaves_weights_and_optimizer_as_they_were(tmp_path, char_data, monkeypatch):
    args = [*TINY, f'--data_dir={char_data}', '--gradient_accumulation_steps=1', '--eval_interval=100']
    # A: three steps
    code, _, err = run_inprocess('train.py', *args, f'--out_dir={tmp_path / "a"}', '--max_iters=3')
    assert code == 0, err
    # B: four steps, the last with a NaN loss (a forward hook: no real input makes a finite model emit NaN)
    real_forward, calls = model.GPT.forward, []

    def forward(self, idx, targets=None, *a, **kw):
        logits, loss = real_forward(self, idx, targets, *a, **kw)
        if self.training:
            calls.append(1)
            if len(calls) == 4:
                loss = loss * float('nan')
        return logits, loss
    monkeypatch.setattr(model.GPT, 'forward', forward)
    code, out, err = run_inprocess('train.py', *args, f'--out_dir={tmp_path / "b"}', '--max_iters=4',
                                   '--nan_policy=skip')
    assert code == 0, err
    assert "iter 3: loss is nan; skipping this step (nan_policy='skip')" in out
    events = [json.loads(line) for line in (tmp_path / 'b' / 'log.jsonl').read_text().splitlines()]
    assert [e['iter'] for e in events if e['event'] == 'train'] == [0, 1, 2]
    assert [e['iter'] for e in events if e['event'] == 'skip'] == [3]
    a = torch.load(tmp_path / 'a' / 'ckpt.pt', weights_only=True)
    b = torch.load(tmp_path / 'b' / 'ckpt.pt', weights_only=True)
    assert (a['iter_num'], b['iter_num']) == (3, 4)
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    for i, state in a['optimizer']['state'].items():
        for k, v in state.items():
            assert torch.equal(v, b['optimizer']['state'][i][k]), (i, k)


def test_bad_nan_policy(tmp_path, char_data):
    msg = train_fails(char_data, tmp_path, '--nan_policy=ignore')
    assert msg == "error: nan_policy must be 'stop' or 'skip', got 'ignore'"


# ----------------------------------------------------------------------------- settings

@pytest.mark.parametrize('arg, message', [
    ('--eval_interval=0', 'eval_interval must be >= 1, got 0'),
    ('--log_interval=0', 'log_interval must be >= 1, got 0'),
    ('--batch_size=-3', 'batch_size must be >= 1, got -3'),
    ('--eval_iters=0', 'eval_iters must be >= 1, got 0'),
    ('--learning_rate=1e400', 'learning_rate must be > 0, got inf'),
    ('--learning_rate=0', 'learning_rate must be > 0, got 0.0'),
    ('--dropout=1.0', 'dropout must be in [0, 1), got 1.0'),
    ('--beta2=1.5', 'beta2 must be in [0, 1), got 1.5'),
    ('--max_iters=-1', 'max_iters must be >= 0, got -1'),
    ('--grad_clip=-1', 'grad_clip must be >= 0, got -1.0'),
    ('--backend=mpi', "backend must be one of 'auto', 'nccl', 'gloo', got 'mpi'"),
    ('--attn_impl=flash', "attn_impl must be 'sdpa' or 'explicit', got 'flash'"),
    ('--n_head=3', 'n_embd (32) must be divisible by n_head (3)'),
])
def test_bad_setting_is_one_line_naming_the_key(tmp_path, char_data, arg, message):
    msg = train_fails(char_data, tmp_path / 'out', '--max_iters=2', arg)
    assert msg == f"error: {message}" or (arg == '--n_head=3' and message in msg)
    assert not (tmp_path / 'out' / 'ckpt.pt').exists()


def test_module_constants_are_not_settings(tmp_path, char_data):
    # the checkpoint format is the loader's business: not a key that --help lists or a user can change
    code, out, _ = run_inprocess('train.py', '--help')
    assert code == 0 and 'batch_size' in out and 'CHECKPOINT_FORMAT' not in out
    msg = train_fails(char_data, tmp_path / 'out', '--CHECKPOINT_FORMAT=x')
    assert "unknown config key 'CHECKPOINT_FORMAT'" in msg


@pytest.mark.parametrize('script', ['sample.py', 'bench.py', 'eval.py', 'export.py', 'demos.py', 'finetune.py'])
def test_no_script_offers_a_module_constant_as_a_setting(script):
    # settings are the lower-case globals a script declares; imported constants (formats, token names) are not
    code, out, _ = run_inprocess(script, '--help')
    assert code == 0 and 'config keys' in out
    assert not [line for line in out.splitlines() if line.strip()[:1].isupper() and ' = ' in line], out
