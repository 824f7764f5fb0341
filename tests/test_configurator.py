"""Tests for configurator.py: config files, --key=value, type checks and error messages."""
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, script_defaults

import configurator
from configurator import ConfigError, config_keys, parse

DEFAULTS = {'out_dir': 'out', 'batch_size': 12, 'learning_rate': 6e-4,
            'compile': True, 'start': '\n'}


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding='utf-8')
    return str(path)


def test_config_keys_keeps_only_plain_public_values():
    ns = {'a': 1, 'b': 2.0, 'c': 'x', 'd': False, '_e': 3, 'os': os, 'f': len,
          'g': [1], 'h': None, 'cls': ConfigError}
    assert config_keys(ns) == {'a': 1, 'b': 2.0, 'c': 'x', 'd': False}
    assert list(config_keys(ns)) == ['a', 'b', 'c', 'd']


def test_config_file_overrides(tmp_path):
    path = write(tmp_path, 'cfg.py', """
        import math
        batch_size = 32
        learning_rate = 1  # an int for a float key becomes float
        _scratch = 5
        compile = False
    """)
    config = parse(DEFAULTS, [path])
    assert config['batch_size'] == 32
    assert config['learning_rate'] == 1.0 and type(config['learning_rate']) is float
    assert config['compile'] is False
    assert config['out_dir'] == 'out'
    assert DEFAULTS['batch_size'] == 12  # defaults not mutated


def test_cli_wins_over_file(tmp_path):
    path = write(tmp_path, 'cfg.py', "batch_size = 32\nout_dir = 'from-file'\n")
    config = parse(DEFAULTS, ['--batch_size=64', path])
    assert config['batch_size'] == 64
    assert config['out_dir'] == 'from-file'


def test_files_applied_in_order(tmp_path):
    a = write(tmp_path, 'a.py', "batch_size = 1\n")
    b = write(tmp_path, 'b.py', "batch_size = 2\n")
    assert parse(DEFAULTS, [a, b])['batch_size'] == 2


def test_unknown_key_in_file(tmp_path):
    path = write(tmp_path, 'x.py', "lerning_rate = 1e-3\n")
    with pytest.raises(ConfigError) as e:
        parse(DEFAULTS, [path])
    msg = str(e.value)
    assert "'lerning_rate'" in msg and path in msg and 'did you mean: learning_rate?' in msg


def test_unknown_key_on_cli():
    with pytest.raises(ConfigError) as e:
        parse(DEFAULTS, ['--batch_sise=3'])
    msg = str(e.value)
    assert "'batch_sise'" in msg and 'command line' in msg and 'batch_size' in msg


def test_int_given_text():
    with pytest.raises(ConfigError, match=r"config key 'batch_size' expects int, got 'abc'"):
        parse(DEFAULTS, ['--batch_size=abc'])


def test_int_given_float():
    with pytest.raises(ConfigError, match="expects int"):
        parse(DEFAULTS, ['--batch_size=1.5'])


def test_int_given_float_in_file(tmp_path):
    path = write(tmp_path, 'cfg.py', "batch_size = 1.5\n")
    with pytest.raises(ConfigError, match="expects int, got 1.5"):
        parse(DEFAULTS, [path])


def test_bool_given_str_in_file(tmp_path):
    path = write(tmp_path, 'cfg.py', "compile = 'yes'\n")
    with pytest.raises(ConfigError, match="'compile' expects bool"):
        parse(DEFAULTS, [path])


def test_int_accepts_underscores_and_negatives():
    assert parse(DEFAULTS, ['--batch_size=1_000'])['batch_size'] == 1000
    assert parse(DEFAULTS, ['--batch_size=-3'])['batch_size'] == -3


def test_int_rejects_bool():
    with pytest.raises(ConfigError, match="expects int"):
        parse(DEFAULTS, ['--batch_size=True'])


def test_bool_given_maybe():
    with pytest.raises(ConfigError, match="'compile' expects bool.*'maybe'"):
        parse(DEFAULTS, ['--compile=maybe'])


def test_float_key_accepts_int():
    config = parse(DEFAULTS, ['--learning_rate=1'])
    assert config['learning_rate'] == 1.0 and type(config['learning_rate']) is float
    assert parse(DEFAULTS, ['--learning_rate=6e-4'])['learning_rate'] == 6e-4


def test_float_key_rejects_text():
    with pytest.raises(ConfigError, match="'learning_rate' expects float, got 'fast'"):
        parse(DEFAULTS, ['--learning_rate=fast'])


def test_value_containing_equals():
    assert parse(DEFAULTS, ['--start=a=b'])['start'] == 'a=b'
    assert parse(DEFAULTS, ['--start="a=b"'])['start'] == 'a=b'


@pytest.mark.parametrize('raw,expected', [('True', True), ('False', False), ('true', True),
                                          ('false', False), ('1', True), ('0', False),
                                          ('yes', True), ('NO', False)])
def test_bools(raw, expected):
    assert parse(DEFAULTS, [f'--compile={raw}'])['compile'] is expected


def test_missing_config_file(tmp_path):
    missing = str(tmp_path / 'nope.py')
    with pytest.raises(ConfigError, match=f"config file '{missing}' not found"):
        parse(DEFAULTS, [missing])


def test_key_without_value():
    with pytest.raises(ConfigError, match='--compile=value'):
        parse(DEFAULTS, ['--compile'])


def test_str_keys_keep_raw_strings():
    config = parse(DEFAULTS, ['--out_dir=out-x', '--start=hello world'])
    assert config['out_dir'] == 'out-x'
    assert config['start'] == 'hello world'
    assert parse(DEFAULTS, ["--out_dir='abc'"])['out_dir'] == 'abc'
    assert parse(DEFAULTS, ['--out_dir=123'])['out_dir'] == '123'  # digits stay a string


def test_configure_updates_namespace_and_returns_plain_dict(capsys):
    ns = dict(DEFAULTS, os=os, __file__='nowhere.py')
    config = configurator.configure(ns, ['--batch_size=32'])
    assert ns['batch_size'] == 32 and config['batch_size'] == 32
    assert 'os' not in config
    assert 'Overriding: batch_size = 32' in capsys.readouterr().out


SCRIPT = """\
import configurator
# -----------------------------------------------------------------------------
out_dir = 'out'          # where checkpoints and logs go
batch_size = 12          # micro-batch size per process
learning_rate = 6e-4     # peak learning rate
compile = True           # torch.compile the model
# -----------------------------------------------------------------------------
config = configurator.configure(globals())
print('batch_size', batch_size)
"""


def run_script(tmp_path, *args):
    script = write(tmp_path, 'script.py', SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path)


def test_script_typo_exits_2_with_one_line(tmp_path):
    result = run_script(tmp_path, '--batch_sise=32')
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error:')
    assert 'batch_size' in lines[0] and 'Traceback' not in result.stderr


def test_script_override_applies(tmp_path):
    result = run_script(tmp_path, '--batch_size=32')
    assert result.returncode == 0, result.stderr
    assert 'batch_size 32' in result.stdout


def test_script_help_lists_keys(tmp_path):
    result = run_script(tmp_path, '--help')
    assert result.returncode == 0, result.stderr
    for key in ('out_dir', 'batch_size', 'learning_rate', 'compile'):
        assert key in result.stdout
    assert 'micro-batch size per process' in result.stdout
    assert 'batch_size 12' not in result.stdout  # exited before the script went on


def test_auto_keys_also_take_a_bool(tmp_path):
    """A key whose default is 'auto' (train.py's compile) takes 'auto', True or False, from files and flags;
    other strings stay strings for the script to refuse, and other keys keep their strict types."""
    defaults = {**DEFAULTS, 'compile': 'auto', 'dtype': 'auto'}
    assert parse(defaults, [])['compile'] == 'auto'
    assert parse(defaults, ['--compile=False'])['compile'] is False
    assert parse(defaults, ['--compile=true'])['compile'] is True
    assert parse(defaults, [write(tmp_path, 'a.py', "compile = False\n")])['compile'] is False
    assert parse(defaults, [write(tmp_path, 'b.py', "compile = 'auto'\n")])['compile'] == 'auto'
    assert parse(defaults, ['--dtype=float32'])['dtype'] == 'float32'
    assert parse(defaults, ['--compile=maybe'])['compile'] == 'maybe'
    with pytest.raises(ConfigError, match="'compile' expects str"):
        parse(defaults, [write(tmp_path, 'c.py', "compile = 1\n")])
    with pytest.raises(ConfigError, match="'batch_size' expects int"):
        parse(defaults, ['--batch_size=True'])


def test_every_config_file_fits_the_commands_its_header_gives():
    # each config/*.py names in its header the command that uses it (`$ python train.py config/x.py`, or torchrun,
    # sometimes after another config file): every key it sets must be one of that script's, with the default's type
    import re
    checked = []
    for cfg in sorted((ROOT / 'config').glob('*.py')):
        header = [line for line in cfg.read_text(encoding='utf-8').splitlines() if line.startswith('#')]
        commands = [(script, files.split()) for line in header
                    for script, files in re.findall(r'(?:python|torchrun(?: --\S+)*) (\w+\.py)((?: config/\S+\.py)+)',
                                                    line)
                    if f'config/{cfg.name}' in files.split()]
        assert commands, f"{cfg.name}: no '$ python (or torchrun) <script>.py config/{cfg.name}' line in its header"
        for script, files in commands:
            parse(script_defaults(script), [str(ROOT / f) for f in files])  # raises ConfigError on a stale key
            checked.append(script)
    assert {'train.py', 'finetune.py', 'eval.py', 'dpo.py', 'ppo.py', 'reward.py'} <= set(checked)
