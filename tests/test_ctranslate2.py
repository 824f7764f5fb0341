"""bench.py's ctranslate2 variants (sample mode): CTranslate2's Generator on the same weights, converted once per
process, gives the same greedy tokens as ours in float32; the table has the time to the first token and tokens/s
after it in columns of their own; without the package the variants are skipped, saying why. No timing assertions.

    .venv/bin/pytest -q tests/test_ctranslate2.py
"""
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

TINY = ['--mode=sample', '--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=16', '--iters=2', '--warmup=1',
        '--max_new_tokens=8', '--prompt_len=4', '--peak_flops=1e11']
NUM = r'[0-9][0-9,]*\.?[0-9]*'


def bench(*args, env=None):
    r = subprocess.run([sys.executable, str(ROOT / 'bench.py'), *TINY, *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=180, env={**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})})
    return r


def test_ctranslate2_variants_give_our_greedy_tokens_with_first_token_columns():
    pytest.importorskip('ctranslate2', reason="the ctranslate2 package is not installed (requirements-test.txt)")
    r = bench('--variants=cache,hf,ctranslate2,ctranslate2+int8')
    assert r.returncode == 0, r.stderr
    assert re.search(r'variant .* 1st token ms +then tokens/s +settings', r.stdout), r.stdout
    for name in ('cache', 'hf', 'ctranslate2', 'ctranslate2+int8'):
        row = re.search(rf'^{re.escape(name)} +({NUM} +){{2}}{NUM}% +{NUM}x +{NUM} +{NUM}x +({NUM}) +({NUM})  \S',
                        r.stdout, re.M)
        assert row and float(row.group(2)) > 0 and float(row.group(3).replace(',', '')) > 0, (name, r.stdout)
    assert 'CTranslate2' in r.stdout and 'int8 weights' in r.stdout
    # float32 weights: the same greedy tokens as ours and transformers'; int8 may depart
    m = re.search(r'greedy outputs: (.*)', r.stdout)
    assert m and ('identical' in m.group(1) or 'ctranslate2+int8 departs' in r.stdout), r.stdout
    assert 'ctranslate2 departs' not in r.stdout and 'hf departs' not in r.stdout, r.stdout


def test_without_the_package_the_variants_are_skipped_saying_why(tmp_path):
    """A stand-in that fails to import, as where the package is missing: --compare runs the others."""
    (tmp_path / 'ctranslate2').mkdir()
    (tmp_path / 'ctranslate2' / '__init__.py').write_text("raise ImportError('No module named ctranslate2')\n")
    env = {'PYTHONPATH': os.pathsep.join([str(tmp_path), os.environ.get('PYTHONPATH', '')])}
    r = bench('--compare=True', env=env)
    assert r.returncode == 0, r.stderr
    assert 'skipping ctranslate2: the ctranslate2 package is not installed' in r.stdout, r.stdout
    assert re.search(r'^hf +', r.stdout, re.M) and not re.search(r'^ctranslate2 +', r.stdout, re.M), r.stdout
    alone = bench('--variants=ctranslate2', env=env)
    lines = alone.stderr.strip().splitlines()
    assert alone.returncode == 1 and len(lines) == 1 and lines[0].startswith('error: no variant left to run: the '
                                                                          'ctranslate2 package is not installed')


def test_ctranslate2_variant_mistakes_are_one_line():
    for args, message in ((['--variants=ctranslate2+fp16'], "ctranslate2 takes one word, int8"),
                          (['--variants=ctranslate2', '--max_new_tokens=20'], 'exceeds block_size'),
                          (['--variants=ctranslate2', '--mode=train'], "variant 'ctranslate2' is for sample mode")):
        if 'exceeds' in message:
            pytest.importorskip('ctranslate2', reason="the ctranslate2 package is not installed")
        r = bench(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and message in lines[0], r.stderr
