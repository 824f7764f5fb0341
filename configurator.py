"""
Config overrides for the training scripts: config files, then --key=value.

A script (train.py, sample.py, bench.py) declares its config as a block of typed
module-level globals, each with a comment, and then calls configure(globals()):

    batch_size = 12          # micro-batch size per process
    learning_rate = 6e-4     # peak learning rate
    compile = True           # torch.compile the model
    config = configurator.configure(globals())

Users then override it from the command line:

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False
    python train.py --help        # list every key with its default and comment

Arguments without a leading -- are config files (plain Python assignments), applied
in order; --key=value arguments are applied after all files, in order, so the command
line always wins. Unknown keys and values of the wrong type are errors that name the
key; the script exits with one line on stderr instead of a traceback.

The same holds for every other mistake a user can make: code anywhere raises UserError with a
message that says what to do, and configure() installs the hook that prints it as one
`error: ...` line and exits with status 1 (once under torchrun, see report_user_error).
"""
import ast
import difflib
import os
import sys
import tokenize
import types

from gpt.errors import UserError, exit_on_user_error, report_user_error

CONFIG_TYPES = (bool, int, float, str)


class ConfigError(UserError, ValueError):
    """A bad config file or --key=value argument; the message is one line for the user."""


def config_keys(namespace):
    """The config entries of a script's globals: public names holding a bool, int, float or str."""
    return {k: v for k, v in namespace.items()
            if not k.startswith('_') and type(v) in CONFIG_TYPES}


def _unknown_key(key, defaults, where):
    close = difflib.get_close_matches(key, list(defaults), n=3)
    hint = f"did you mean: {', '.join(close)}?" if close else "run with --help to list keys"
    return ConfigError(f"unknown config key {key!r} {where} ({hint})")


def _check_value(key, value, expected, source, auto=False):
    """Type-check a Python value (from a config file or a parsed literal) against the default's type.
    auto: the default is 'auto', which also takes True or False (e.g. compile = 'auto': let the script choose)."""
    ok = type(value) is expected or (expected is float and type(value) is int) or (auto and type(value) is bool)
    if not ok:
        raise ConfigError(f"config key {key!r} expects {expected.__name__}, got {value!r} ({source})")
    return float(value) if expected is float else value


def _parse_value(key, raw, expected, source, auto=False):
    """Turn the text after '=' into a value of the expected type (auto: see _check_value)."""
    if auto and raw.strip().lower() in ('true', 'false'):
        return raw.strip().lower() == 'true'
    if expected is str:
        # raw text is taken as-is; a quoted literal like 'abc' or "a=b" loses its quotes
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in '\'"':
            try:
                value = ast.literal_eval(raw)
                if isinstance(value, str):
                    return value
            except (ValueError, SyntaxError):
                pass
        return raw
    if expected is bool:
        words = {'true': True, '1': True, 'yes': True, 'false': False, '0': False, 'no': False}
        if raw.strip().lower() not in words:
            raise ConfigError(f"config key {key!r} expects bool (True/False), got {raw!r} ({source})")
        return words[raw.strip().lower()]
    try:  # int and float: a Python number literal (1_000, -3, 6e-4); an int is fine for a float key
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw
    if type(value) not in (int, float):
        value = raw  # report the text the user typed, not whatever it evaluated to
    return _check_value(key, value, expected, source)


def _load_file(path, defaults):
    """Run a config file and return the {key: value} pairs it assigns, type-checked."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found")
    try:
        with open(path, encoding='utf-8') as f:
            source = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path!r} ({e.strerror if isinstance(e, OSError) else e.reason}: "
                          f"a config file is Python source in UTF-8)") from None
    # A config file is the user's own Python code (like the script itself), so exec is acceptable;
    # it runs in a fresh namespace and only its assignments are read back.
    namespace = {}
    try:
        exec(compile(source, path, 'exec'), namespace)
    except Exception as e:
        raise ConfigError(f"error in config file {path}: {type(e).__name__}: {e}") from None
    values = {}
    for key, value in namespace.items():
        if key.startswith('_') or isinstance(value, types.ModuleType):
            continue
        if key not in defaults:
            raise _unknown_key(key, defaults, f"in {path}")
        values[key] = _check_value(key, value, type(defaults[key]), f"in {path}", auto=defaults[key] == 'auto')
    return values


def parse(defaults, argv, given=None):
    """Resolve defaults + config files + --key=value arguments into a new dict. Raises ConfigError.
    given: a set that receives the keys the files and arguments set (whatever their values)."""
    config = dict(defaults)
    given = set() if given is None else given
    files = [a for a in argv if not a.startswith('--')]
    flags = [a for a in argv if a.startswith('--')]
    for path in files:
        values = _load_file(path, defaults)
        config.update(values)
        given.update(values)
    for arg in flags:
        if '=' not in arg:
            raise ConfigError(f"argument {arg!r} has no value: use {arg}=value")
        key, raw = arg[2:].split('=', 1)  # first '=' only: values may contain '='
        if key not in defaults:
            raise _unknown_key(key, defaults, "on the command line")
        config[key] = _parse_value(key, raw, type(defaults[key]), "command line", auto=defaults[key] == 'auto')
        given.add(key)
    return config


def _comments(path):
    """{name: comment} for top-level lines `name = value  # comment` in a script; {} if unreadable."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.readlines()
        comments = {}
        for tok in tokenize.generate_tokens(iter(lines).__next__):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip('#').strip()
    except (OSError, SyntaxError, tokenize.TokenError, TypeError):
        return {}
    result = {}
    for lineno, text in comments.items():
        name = lines[lineno - 1].split('=', 1)[0].strip()
        if lines[lineno - 1][:1].isidentifier() and name.isidentifier():
            result.setdefault(name, text)
    return result


def _print_help(defaults, script):
    comments = _comments(script) if script else {}
    name = os.path.basename(script) if script else 'script.py'
    print(f"usage: python {name} [config_file.py ...] [--key=value ...]\n\nconfig keys (default):")
    width = max((len(f"{k} = {v!r}") for k, v in defaults.items()), default=0)
    for k, v in defaults.items():
        line = f"{k} = {v!r}"
        print(f"  {line:<{width}}  # {comments[k]}" if k in comments else f"  {line}")


def configure(namespace, argv=None, verbose=True, given=None):
    """Apply config files and --key=value from argv (default sys.argv[1:]) to a script's globals.

    Updates `namespace` in place and returns the resolved config as a plain dict (for logs and
    checkpoints). On a bad argument prints `error: ...` to stderr and exits with status 2;
    on -h/--help lists the keys and exits with status 0. Installs the hook that prints any later
    uncaught UserError as one line (exit status 1). given: a set that receives the keys the user set
    (train.py's resume takes every other setting from the checkpoint).
    """
    exit_on_user_error()
    argv = sys.argv[1:] if argv is None else list(argv)
    defaults = config_keys(namespace)
    if '-h' in argv or '--help' in argv:
        _print_help(defaults, namespace.get('__file__'))
        sys.exit(0)
    try:
        config = parse(defaults, argv, given)
    except ConfigError as e:
        report_user_error(e)
        sys.exit(2)
    if verbose:
        for k, v in config.items():
            if v != defaults[k] or type(v) is not type(defaults[k]):
                print(f"Overriding: {k} = {v!r}")
    namespace.update(config)
    return config
