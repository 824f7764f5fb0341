"""
scaling_laws.ipynb, executed headless with nbclient in its tiny setting (SCALING_TINY=1: a 2-budget
x 3-size sweep with train.py, then every fit and plot), writing only into a pytest temp dir; and
scaling_sweep.py's plan and error handling on their own.
"""

import hashlib
import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT

from model import GPT, GPTConfig
from tools import scaling_sweep

NOTEBOOK = ROOT / 'scaling_laws.ipynb'
PLOTS = ('chinchilla_parametric.png', 'chinchilla_frontiers.png', 'isoflop.png', 'parametric_fit.png')


def test_plan_matches_budgets_and_model_sizes():
    budgets = [1e11, 3e11, 1e12]
    runs = scaling_sweep.plan(budgets, sizes_per_budget=5, tokens_per_param=20, batch_size=32, block_size=64)
    assert sorted({r['budget'] for r in runs}) == budgets
    for C in budgets:
        sizes = [r['N'] for r in runs if r['budget'] == C]
        assert len(sizes) == 5 and sizes == sorted(sizes) and len(set(sizes)) == 5
        # the middle size is the one closest to D/N = 20 (C = 6 N D and D = 20 N)
        middle = sizes[2]
        assert all(abs(math.log(middle ** 2 * 120 / C)) <= abs(math.log(n ** 2 * 120 / C)) for n in sizes)
    for r in runs:
        # N counted independently from a real (CPU) model of that shape
        m = GPT(GPTConfig(n_layer=r['n_layer'], n_head=r['n_head'], n_embd=r['n_embd'], block_size=64, vocab_size=65))
        assert r['N'] == m.num_params() - 64 * r['n_embd']
        assert r['D'] == r['iters'] * 32 * 64
        assert abs(6 * r['N'] * r['D'] / r['budget'] - 1) < 0.01  # iterations rounded to the budget
        assert r['C_with_attention'] > r['C_6ND']
    # runs needing more iterations than allowed are left out, the others kept
    capped = scaling_sweep.plan(budgets, 5, 20, 32, 64, max_iters=1000)
    assert [r for r in runs if r['iters'] <= 1000] == capped and len(capped) < len(runs)


@pytest.mark.parametrize('args, message', [
    (['--budgets=abc'], '--budgets must be comma-separated numbers'),
    (['--budgets=-1e11'], '--budgets must be positive'),
    (['--sizes_per_budget=0'], '--sizes_per_budget must be between'),
    (['--data_dir=/nonexistent/scaling', '--tiny'], 'has no train.bin'),
])
def test_user_errors_are_one_line(args, message, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'scaling_sweep.py'), f'--work_dir={tmp_path}',
                        f'--out={tmp_path / "r.json"}', *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.startswith('error: ') and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert 'Traceback' not in r.stderr and not (tmp_path / 'r.json').exists()


def python3_kernel_manager(tmp_path):
    """A kernel manager whose 'python3' kernel is this interpreter (the venv's), whatever
    kernelspecs the machine has: a kernelspec written into a temp dir that is the only one searched."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    spec_dir = tmp_path / 'kernels' / 'python3'
    spec_dir.mkdir(parents=True)
    (spec_dir / 'kernel.json').write_text(json.dumps({
        'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
        'display_name': 'Python 3', 'language': 'python'}))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / 'kernels')])
    km = KernelManager(kernel_name='python3', kernel_spec_manager=ksm)
    assert km.kernel_spec.argv[0] == sys.executable
    return km


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_notebook_runs_tiny_sweep_and_fits(tmp_path, shakespeare_text, monkeypatch):
    nbformat = pytest.importorskip('nbformat')
    nbclient = pytest.importorskip('nbclient')
    out = tmp_path / 'out'
    monkeypatch.setenv('SCALING_TINY', '1')
    monkeypatch.setenv('SCALING_OUT', str(out))
    monkeypatch.setenv('SCALING_INPUT', str(shakespeare_text))
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    monkeypatch.delenv('SCALING_RUN_SWEEP', raising=False)
    committed = {p: digest(p) for p in [NOTEBOOK, *(ROOT / 'scaling').glob('*')] if p.is_file()}

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, km=python3_kernel_manager(tmp_path), timeout=600,
                                     resources={'metadata': {'path': str(ROOT)}})
    client.execute()  # raises CellExecutionError on any failing cell, including the notebook's asserts
    nbformat.write(nb, tmp_path / 'executed.ipynb')  # for inspection; the committed notebook is not touched

    assert {p: digest(p) for p in committed} == committed
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', name
    summary = json.loads((out / 'fit_summary.json').read_text())
    assert summary['tiny'] is True and summary['n_runs'] == 6 and len(summary['budgets']) == 2
    values = [summary['isoflop']['a'], summary['isoflop']['b']]
    values += [summary['parametric'][k] for k in ('E', 'A', 'B', 'alpha', 'beta', 'a', 'b')]
    values += [o[k] for o in summary['isoflop']['optima'] for k in ('N_opt', 'D_opt', 'loss_opt')]
    assert all(math.isfinite(v) for v in values), summary
    assert abs(summary['isoflop']['a'] + summary['isoflop']['b'] - 1) < 1e-6  # D_opt = C / 6 N_opt
    # the paper's side, recomputed from Tables 3 / A3: Table 2's exponents come back
    fits = summary['chinchilla']['table_fits']
    for approach, (a, b) in {'approach 1': (0.50, 0.50), 'approach 2': (0.49, 0.51), 'approach 3': (0.46, 0.54)}.items():
        assert abs(fits[approach]['a'] - a) < 0.006 and abs(fits[approach]['b'] - b) < 0.006, (approach, fits)

    # the sweep the notebook ran: 6 real train.py runs, each at its budget and better than chance
    results = json.loads((out / 'sweep_results_tiny.json').read_text())
    assert len(results['runs']) == 6
    for r in results['runs']:
        assert abs(r['C_6ND'] / r['budget'] - 1) < 0.05
        assert math.isfinite(r['val_loss']) and r['val_loss'] < math.log(65)  # uniform over 65 symbols
        log = [json.loads(line) for line in (out / 'tiny_sweep' / 'runs' / r['name'] / 'log.jsonl').open()]
        final = [e for e in log if e['event'] == 'eval' and e['iter'] == r['iters']]
        assert final and final[0]['val_loss'] == pytest.approx(r['val_loss'], abs=1e-5)
