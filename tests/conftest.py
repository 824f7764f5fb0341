"""Shared test set-up: the repo root on sys.path, the offline stand-ins from ../shared, and the fixtures and
helpers several test files use (tiny training settings, prepared character data, running a script as a user
would or in-process, reading a run's log, comparing checkpoints). Test files import from here, never from
each other."""
import contextlib
import io
import json
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

# tiktoken's own cache variable: get_encoding("gpt2") works with no network
if (SHARED / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# under pytest-xdist (pytest -n N) each worker gets its share of the cores, for itself and the scripts it starts:
# N workers of all the cores each would spin against each other (16 x 16 threads on a 16-core machine)
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    SHARE = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) // WORKERS)
    os.environ.setdefault("OMP_NUM_THREADS", str(SHARE))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    """Tests marked cuda need a GPU: without one they are skipped, each with the reason (pytest -m cuda -rs)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False here")
    for item in items:
        if item.get_closest_marker('cuda'):
            item.add_marker(skip)


def tiny(**overrides):
    """train.py arguments for a tiny CPU model (2 layers, 2 heads, 32 wide, context 32, eager), plus overrides."""
    args = dict(device='cpu', compile=False, n_layer=2, n_head=2, n_embd=32, block_size=32, pad_vocab_multiple=1,
                wandb_log=False)
    return [f'--{k}={v}' for k, v in {**args, **overrides}.items()]


# ----------------------------------------------------------------------------- small random models

VOCAB = 101  # (the random models' vocabulary: no multiple of 64, so padding to one is exercised)


@pytest.fixture(scope='module')
def one_thread():
    """A module of tiny models (pytestmark = pytest.mark.usefixtures('one_thread')) runs on one thread: each step
    is a few small kernels, intra-op threads only add synchronisation, and on a busy machine their spin-waiting
    made such a file 40x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_gpt(seed=0, std=0.5, **overrides):
    """A small random GPT (2 layers, 4 heads, 64 wide, context 48, VOCAB tokens; overrides: GPTConfig's fields).
    The default init (std 0.02) gives near-uniform logits and a model that repeats one token, so greedy agreement
    would prove little; std 0.5 gives varied tokens and clear argmax margins."""
    from model import GPT, GPTConfig
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_head=4, n_embd=64, block_size=48, vocab_size=VOCAB)
    model = GPT(GPTConfig(**{**cfg, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
    return model.eval()


def greedy_by_recompute(model, prompt, n, stop=None):
    """Greedy decoding of one prompt by recomputing the whole context (its last block_size tokens) every step, no
    cache: the reference the engines are held to. Stops after the token stop, if given."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids[-model.config.block_size:]]))
            ids.append(int(logits[0, -1, :VOCAB].argmax()))
            if ids[-1] == stop:
                break
    return ids[len(prompt):]


# ----------------------------------------------------------------------------- data

def shakespeare_candidates():
    """Where Tiny Shakespeare may be, first found wins: $TINY_SHAKESPEARE (a GPU machine without ../shared, as
    gpu_check.py sets it), the offline stand-in in ../shared, and the copy data/shakespeare_char/prepare.py
    downloads beside itself."""
    env = os.environ.get("TINY_SHAKESPEARE")
    return ([Path(env)] if env else []) + [SHARED / "data" / "tinyshakespeare" / "input.txt",
                                           ROOT / "data" / "shakespeare_char" / "input.txt"]


@pytest.fixture(scope="session")
def shakespeare_text():
    found = [p for p in shakespeare_candidates() if p.is_file()]
    if not found:
        pytest.skip(f"Tiny Shakespeare not found at {', '.join(map(str, shakespeare_candidates()))}: set "
                    f"TINY_SHAKESPEARE to its input.txt, or run data/shakespeare_char/prepare.py once")
    return found[0]


@pytest.fixture(scope="session")
def char_data(tmp_path_factory, shakespeare_text):
    """Character-level Shakespeare, prepared once per session by the real prepare script. Read-only: a test
    that changes data files works on a copy."""
    d = tmp_path_factory.getbasetemp() / "shakespeare_char"
    if not (d / "meta.json").exists():
        run("data/shakespeare_char/prepare.py", "--input", shakespeare_text, "--out_dir", d)
    return d


# ----------------------------------------------------------------------------- running scripts

def run(script, *args, check=True, env=None, timeout=600, nproc=1):
    """`python script args...` from the repo root, as a user runs it (under torchrun with nproc > 1 processes,
    one thread each); with check, it must succeed."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ['-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}']
        env = {'OMP_NUM_THREADS': '1', **(env or {})}
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items()
                if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')}
    p = subprocess.run([*launcher, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, timeout=timeout, env=full_env)
    if check and p.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout[-2000:]}\n"
                             f"{p.stderr[-2000:]}")
    return p


def interrupt(script, *args, out_dir, when, sig=signal.SIGKILL, timeout=300):
    """Start `python script args...` and send it sig (SIGKILL: no chance to save; SIGTERM: a preemption) as soon
    as when(entries of out_dir/log.jsonl) holds, as a user or a scheduler would at a moment of the test's choosing.
    Returns the exit code; fails if the run ended before that moment came."""
    import tempfile
    import time
    log = Path(out_dir) / 'log.jsonl'
    output = tempfile.TemporaryFile('w+')  # (a pipe nobody reads could fill and stall the run)
    p = subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, stdout=output,
                         stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    try:
        while p.poll() is None and time.time() < deadline:
            try:
                entries = [json.loads(line) for line in log.read_text().splitlines() if line.endswith('}')]
            except (OSError, ValueError):
                entries = []
            if entries and when(entries):
                p.send_signal(sig)
                break
            time.sleep(0.005)
        else:
            output.seek(0)
            raise AssertionError(f"{script} ended (or timed out) before the moment to interrupt it:\n"
                                 f"{output.read()[-2000:]}")
        return p.wait(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        output.close()


def run_inprocess(script, *argv):
    """Run a script in this process as `python script argv...` would: returns (exit code, stdout, stderr).
    An uncaught exception goes to sys.excepthook (as the interpreter does), so the scripts' one-line
    UserError hook is exercised too. Signal handlers, the excepthook and torch's thread count (one,
    for tiny models on a shared machine) are put back afterwards."""
    saved_argv, saved_hook, saved_threads = sys.argv, sys.excepthook, torch.get_num_threads()
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    saved_omp = os.environ.get('OMP_NUM_THREADS')
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        sys.argv = [str(ROOT / script), *map(str, argv)]
        torch.set_num_threads(1)
        os.environ['OMP_NUM_THREADS'] = '1'  # (so the script's device.pick_device keeps the one thread)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(ROOT / script), run_name='__main__')
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
            except Exception:
                sys.excepthook(*sys.exc_info())
                code = 1
    finally:
        sys.argv, sys.excepthook = saved_argv, saved_hook
        torch.set_num_threads(saved_threads)
        if saved_omp is None:
            os.environ.pop('OMP_NUM_THREADS', None)
        else:
            os.environ['OMP_NUM_THREADS'] = saved_omp
        if hasattr(sys.modules.get('gpt.run'), 'release_out_dirs'):
            sys.modules['gpt.run'].release_out_dirs()  # the out_dir a train.py run locked, as its exit would
        for s, h in saved_signals.items():
            signal.signal(s, h)
    return code, out.getvalue(), err.getvalue()


# ----------------------------------------------------------------------------- reading a run

def events(out_dir, kind, torn=0):
    """The entries of one kind ('start', 'train', 'eval', 'skip') in a run's log.jsonl, in order. torn: how many
    lines may be torn (a run killed while writing one leaves it on a line of its own, checkpoint.append_record)."""
    entries, bad = [], []
    for line in (Path(out_dir) / 'log.jsonl').read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            bad.append(line)
    assert len(bad) <= torn, bad
    return [e for e in entries if e.get('event') == kind]


def train_losses(out_dir, torn=0):
    """{iteration: [loss, ...]} from every 'train' event in log.jsonl (a resumed run repeats some); torn: as for
    events."""
    losses = {}
    for e in events(out_dir, 'train', torn):
        losses.setdefault(e['iter'], []).append(e['loss'])
    return losses


def load_ckpt(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def assert_same_state(a, b, atol=0.0):
    """Two checkpoints hold the same weights and optimizer state in the same layout: bit for bit with
    atol=0, else within atol."""
    def same(x, y, msg):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if atol == 0:
            assert torch.equal(x, y), msg
        else:
            torch.testing.assert_close(y, x, rtol=0, atol=atol, msg=msg)
    assert a['iter_num'] == b['iter_num']
    assert a['model'].keys() == b['model'].keys()
    for k in a['model']:
        same(a['model'][k], b['model'][k], k)
    oa, ob = a['optimizer'], b['optimizer']
    assert oa['param_groups'] == ob['param_groups']  # hyperparameters and parameter numbering
    assert oa['state'].keys() == ob['state'].keys()
    for i in oa['state']:
        assert oa['state'][i].keys() == ob['state'][i].keys()
        for k in oa['state'][i]:
            same(oa['state'][i][k], ob['state'][i][k], f'{i} {k}')


# ----------------------------------------------------------------------------- reading a script's settings

def script_defaults(script):
    """A script's config keys and defaults as configure() sees them: its top-level assignments of plain values
    up to the configure() call, read from the source (importing the scripts would run them)."""
    import ast
    from configurator import config_keys
    tree = ast.parse((ROOT / script).read_text(encoding='utf-8'))
    defaults = {}
    for node in tree.body:
        if 'configurator.configure(' in ast.unparse(node):
            return defaults
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:  # (constant expressions too: gradient_accumulation_steps = 5 * 8)
                value = eval(compile(ast.Expression(node.value), script, 'eval'), {'__builtins__': {}}, dict(defaults))
            except Exception:
                continue
            defaults.update(config_keys({node.targets[0].id: value}))
    raise AssertionError(f"{script} never calls configurator.configure")


# ----------------------------------------------------------------------------- serve.py in a subprocess

# The server dies with the test process, however that ends (Linux: PR_SET_PDEATHSIG), set in the child itself before
# serve.py runs: a preexec_fn would run between fork and exec in a process with threads, where a lock another thread
# held at the fork never opens (a fresh clone's suite hung there once).
DIE_WITH_PARENT = """import ctypes, runpy, signal, sys
try:
    ctypes.CDLL('libc.so.6').prctl(1, signal.SIGKILL)
except OSError:
    pass
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')"""


class Server:
    """python serve.py ... --port=0 in a subprocess (api_key: with that SERVE_API_KEY); .url once it listens, .log()
    its output so far. Killed when the tests end however they end, and after 10 minutes at most."""

    def __init__(self, tmp, *args, env=None, api_key=None):
        import threading
        import time
        self.api_key = api_key
        self.out = open(tmp / f'serve-{time.monotonic_ns()}.log', 'w+')
        self.p = subprocess.Popen([sys.executable, '-c', DIE_WITH_PARENT, str(ROOT / 'serve.py'), '--device=cpu', '--port=0',
                                   *map(str, args)],
                                  cwd=ROOT, stdout=self.out, stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, 'OMP_NUM_THREADS': '1',
                                       **({'SERVE_API_KEY': api_key} if api_key else {}), **(env or {})})
        self.guard = threading.Timer(600, self.p.kill)  # (a hung test never leaves a server behind)
        self.guard.daemon = True
        self.guard.start()
        deadline = time.time() + 120
        while time.time() < deadline and self.p.poll() is None:
            for line in self.log().splitlines():
                if line.startswith('chat page: '):
                    self.url = line.split()[2].rstrip('/')
                    return
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"serve.py did not start:\n{self.log()}")

    def log(self):
        self.out.seek(0)
        return self.out.read()

    def client(self, **kw):
        import openai
        return openai.OpenAI(base_url=self.url + '/v1', api_key=kw.pop('api_key', self.api_key or 'unused'),
                             max_retries=0, **{'timeout': 120, **kw})

    def post(self, path, body, **kw):
        import httpx
        auth = {'authorization': f'Bearer {self.api_key}'} if self.api_key else {}
        return httpx.post(self.url + path, json=body, headers={**auth, **kw.pop('headers', {})}, timeout=120, **kw)

    def health(self):
        import httpx
        return httpx.get(self.url + '/health', timeout=30).json()

    def wait_for(self, what, timeout=60):
        import time
        deadline = time.time() + timeout
        while not what(self.health()):
            assert time.time() < deadline, self.log()
            time.sleep(0.05)

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.guard.cancel()
        self.out.close()
