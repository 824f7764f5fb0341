"""The commands in README.md and docs/*.md fit the code: a command in a shell block that runs one of this
repository's Python files names a file that exists, config files that exist and only settings the script has
(with values of the right type); every `make X` names a Makefile target; every relative link resolves. A script,
setting or target renamed in the code fails here, instead of failing for the reader who copies the command."""
import ast
import functools
import re
import shlex

import pytest
from conftest import ROOT, script_defaults

from configurator import ConfigError, parse

DOCS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
SHELL_LANGS = {'', 'bash', 'sh', 'shell', 'console', 'zsh'}  # '' : a bare ``` block, read for commands too
SEPARATORS = {'&&', '||', ';', '|', '&'}


# ----------------------------------------------------------------------------- reading markdown

def fenced_blocks(text):
    """[(language, line number of its first line, lines)] for every fenced code block, indented ones (inside a
    list item) too."""
    blocks, open_fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if open_fence is None:
            m = re.match(r'(`{3,}|~{3,})\s*([\w+-]*)', stripped)
            if m:
                open_fence, lang, start, lines = m.group(1), m.group(2).lower(), number + 1, []
        elif stripped.startswith(open_fence) and not stripped.strip(open_fence[0]):
            blocks.append((lang, start, lines))
            open_fence = None
        else:
            lines.append(line)
    return blocks


def block_commands(lang, start, lines):
    """[(line number, command)] of a shell block: continuation lines (ending in a backslash) joined, '$ ' prompts
    taken off; in a console block only the prompted lines are commands (the rest is their output)."""
    commands, pending, first = [], None, None
    for number, line in enumerate(lines, start):
        text = line.strip()
        if pending is None:
            if lang == 'console' and not text.startswith('$ '):
                continue
            text = text[2:] if text.startswith('$ ') else text
            if not text or text.startswith('#'):
                continue
            pending, first = '', number
        if text.endswith('\\'):
            pending += text[:-1] + ' '
            continue
        commands.append((first, pending + text))
        pending = None
    if pending:
        commands.append((first, pending))
    return commands


def inline_spans(text):
    """The `code spans` outside fenced blocks, each on one line (a span may wrap in the source)."""
    outside = re.sub(r'(?ms)^\s*(`{3,}|~{3,}).*?^\s*\1\s*$', '', text)
    return [' '.join(span.split()) for span in re.findall(r'`([^`\n]+(?:\n[^`\n]+)*)`', outside)]


def words(command):
    """A command line as shell words, split into pipeline / list segments (a && b | c); comments dropped."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments = [[]]
    for word in lexer:
        if word in SEPARATORS:
            segments.append([])
        elif word in ('(', ')'):
            continue
        else:
            segments[-1].append(word)
    return [s for s in segments if s]


# ----------------------------------------------------------------------------- reading the code

@functools.lru_cache(maxsize=None)
def make_targets():
    text = (ROOT / 'Makefile').read_text(encoding='utf-8')
    return set(re.findall(r'(?m)^([A-Za-z0-9_.-]+)\s*:(?!=)', text))


def _added_options(nodes):
    """The '--name' strings of every add_argument(...) call among the nodes (and beneath them)."""
    return {a.value for node in nodes for call in ast.walk(node)
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == 'add_argument'
            for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith('-')}


@functools.lru_cache(maxsize=None)
def shared_parser_options():
    """data/prepare_utils.py's get_parser(doc, script, url=None): (the options it always adds, those it adds
    only when given a url), read from its source: those under an `if` are the url's."""
    tree = ast.parse((ROOT / 'data' / 'prepare_utils.py').read_text(encoding='utf-8'))
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == 'get_parser')
    always = _added_options([s for s in func.body if not isinstance(s, ast.If)])
    with_url = _added_options([s for s in func.body if isinstance(s, ast.If)])
    return always, with_url


@functools.lru_cache(maxsize=None)
def script_kind(script):
    """'configurator' (module globals + configure()), 'argparse' (with its option names), or 'none'."""
    source = (ROOT / script).read_text(encoding='utf-8')
    if 'configurator.configure(' in source:
        return 'configurator', None
    tree = ast.parse(source)
    options = _added_options([tree])
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == 'get_parser':
            always, with_url = shared_parser_options()
            given_url = len(call.args) > 2 or any(k.arg == 'url' for k in call.keywords)
            options |= always | (with_url if given_url else set())
    if options or 'ArgumentParser(' in source:
        return 'argparse', frozenset(options | {'--help', '-h'})
    return 'none', None


@functools.lru_cache(maxsize=None)
def settings(script):
    return script_defaults(script)


# ----------------------------------------------------------------------------- checking one command

def is_python(program):
    return re.fullmatch(r'(.*/)?python3?(\.\d+)?', program) is not None


def check_script(script, args, strict):
    """What is wrong with running `script args` as the docs say. strict (shell blocks): config files are loaded
    and every value type-checked, as the script would; else (a code span in prose, which may hold placeholders
    like N or ...) only the names of the settings and files are checked."""
    if not (ROOT / script).is_file():
        return [f"{script} does not exist"]
    problems = []
    args = [a.strip('[]') for a in args if a.strip('[]') not in ('', '...')]
    for a in args:
        if re.fullmatch(r'config/\S+\.py', a) and '<' not in a and not (ROOT / a).is_file():
            problems.append(f"{a} does not exist")
    kind, options = script_kind(script)
    if kind == 'configurator':
        if '--help' in args or '-h' in args:
            return problems
        defaults = settings(script)
        files = [a for a in args if not a.startswith('--')]
        flags = [a for a in args if a.startswith('--')]
        for f in files:
            if not re.fullmatch(r'config/\S+\.py', f):
                problems.append(f"{script} reads {f!r} as a config file")
        if problems:
            return problems
        if strict:
            try:
                parse(defaults, [str(ROOT / f) for f in files] + flags)
            except ConfigError as e:
                problems.append(str(e))
        else:
            for flag in flags:
                key = flag[2:].split('=', 1)[0]
                if '=' not in flag:
                    problems.append(f"{flag!r} has no value: {script} takes {flag}=value")
                elif key not in defaults:
                    problems.append(f"{script} has no setting {key!r}")
    elif kind == 'argparse':
        for a in args:
            if a.startswith('-') and not re.fullmatch(r'-\d.*', a) and a.split('=', 1)[0] not in options:
                problems.append(f"{script} has no option {a.split('=', 1)[0]!r}")
    else:
        problems += [f"{script} takes no options, got {a!r}" for a in args if a.startswith('--')]
    return problems


def check_words(ws, strict=True):
    """(checked: whether the segment runs something of this repository, problems) for one command segment."""
    while ws and re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*=.*', ws[0]):  # TIKTOKEN_CACHE_DIR=... python ...
        ws = ws[1:]
    if not ws:
        return False, []
    program, args = ws[0], ws[1:]
    if program == 'make':
        targets = [a for a in args if not a.startswith('-') and '=' not in a]
        return True, [f"the Makefile has no target {t!r}" for t in targets if t not in make_targets()]
    if is_python(program) and args[:2] == ['-m', 'pytest']:
        program, args = 'pytest', args[2:]
    if program == 'pytest':
        paths = [a.split('::')[0] for a in args if not a.startswith('-') and ('/' in a or a == 'tests')]
        return True, [f"{p} does not exist" for p in paths if not (ROOT / p).exists()]
    if is_python(program):
        if not args or args[0] == '-c':
            return False, []
        if args[0] == '-m':  # python -m gpt.device: a module of this repository must exist
            module = args[1].split('.') if len(args) > 1 else ['']
            if not (ROOT / module[0]).is_dir() and not (ROOT / f'{module[0]}.py').is_file():
                return False, []  # pip, venv, ...: not ours
            path = ROOT.joinpath(*module)
            return True, [] if path.with_suffix('.py').is_file() or (path / '__main__.py').is_file() else \
                [f"no module {args[1]} in this repository"]
        return True, check_script(args[0], args[1:], strict)
    if program == 'torchrun':
        scripts = [i for i, a in enumerate(args) if a.endswith('.py') and not a.startswith('-')]
        if not scripts:
            return strict, ["torchrun without a script"] if strict else []  # prose may name torchrun alone
        return True, check_script(args[scripts[0]], args[scripts[0] + 1:], strict)
    if not strict and re.fullmatch(r'(\w+/)*\w+\.py', program) and not program.startswith('config/') \
            and any(a.startswith('--') for a in args):
        return True, check_script(program, args, strict)  # a span such as `sample.py --compile=True`
    return False, []


def problems_in(text, where):
    """(commands checked, ['where:line: command: problem']) for one markdown text."""
    checked, problems = 0, []
    for lang, start, lines in fenced_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        for number, command in block_commands(lang, start, lines):
            try:
                segments = words(command)
            except ValueError as e:  # an unclosed quote
                problems.append(f"{where}:{number}: {command}: {e}")
                continue
            for ws in segments:
                ran, found = check_words(ws)
                checked += ran
                problems += [f"{where}:{number}: {command}: {p}" for p in found]
    for span in inline_spans(text):
        try:
            segments = words(span)
        except ValueError:
            continue
        for ws in segments:
            ran, found = check_words(ws, strict=False)
            checked += ran
            problems += [f"{where}: `{span}`: {p}" for p in found]
    return checked, problems


# ----------------------------------------------------------------------------- the tests

def test_every_documented_command_fits_the_code():
    total, problems = 0, []
    for path in DOCS:
        checked, found = problems_in(path.read_text(encoding='utf-8'), path.relative_to(ROOT))
        total += checked
        problems += found
    assert not problems, "commands in the docs that the code no longer runs:\n" + "\n".join(problems)
    assert total > 100, f"only {total} commands found: is the parser still reading the shell blocks?"


def test_the_checker_reports_drift():
    # a page with one mistake of each kind, and a command that is right: each mistake is reported, the right one not
    page = "\n".join([
        "```sh",
        "$ python train.py config/train_shakespeare_char_cpu.py --batch_size=4 \\",
        "    --max_iters=10                                   # right",
        "python train.py --no_such_key=1",
        "python train.py --batch_size=four",
        ".venv/bin/python train.py config/no_such_config.py",
        "TIKTOKEN_CACHE_DIR=/tmp python3 no_such_script.py --x=1",
        "torchrun --standalone --nproc_per_node=2 sample.py --tempreature=0.5",
        "python data/sort/prepare.py --length 6 --bogus 3 && make no-such-target",
        "python data/shakespeare_char/prepare.py --input input.txt   # right: get_parser(url=...) adds --input",
        "python data/sort/prepare.py --input input.txt",
        "```",
        "Prose with `python tools/gpu_check.py --no_such=1` and `make gpu-check` (right).",
    ])
    checked, problems = problems_in(page, 'page.md')
    assert checked == 12
    expected = ["'no_such_key'", "'batch_size' expects int", "config/no_such_config.py does not exist",
                "no_such_script.py does not exist", "'tempreature'", "no option '--bogus'", "target 'no-such-target'",
                "no option '--input'", "no setting 'no_such'"]
    for text in expected:
        assert sum(text in p for p in problems) == 1, (text, problems)
    assert len(problems) == len(expected), problems


def test_make_targets_named_in_prose_exist():
    missing = [(path.name, target) for path in DOCS
               for target in re.findall(r'`make ([\w-]+)', path.read_text(encoding='utf-8'))
               if target not in make_targets()]
    assert not missing


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def test_relative_links_and_anchors_resolve():
    broken = []
    for path in DOCS:
        text = path.read_text(encoding='utf-8')
        outside = re.sub(r'(?ms)^\s*(`{3,}|~{3,}).*?^\s*\1\s*$', '', text)
        for target in re.findall(r'\]\(([^)\s]+)\)', outside):
            if re.match(r'\w+:', target):
                continue  # http(s)://, mailto:
            file, _, anchor = target.partition('#')
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{path.name}: {target}")
            elif anchor and dest.suffix == '.md':
                headings = re.findall(r'(?m)^#+ (.*)$', re.sub(r'(?ms)^\s*```.*?^\s*```\s*$', '', dest.read_text(
                    encoding='utf-8')))
                if anchor not in {slug(h) for h in headings}:
                    broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken


@pytest.mark.parametrize('page', sorted((ROOT / 'docs').glob('*.md')), ids=lambda p: p.name)
def test_each_page_says_what_it_is_and_links_back(page):
    lines = page.read_text(encoding='utf-8').splitlines()
    assert lines[0].startswith('# ') and lines[1] == '', "a title, then a blank line"
    assert lines[2] and '](../README.md)' in lines[2], "then a one-line summary that links back to the README"
    assert f'](docs/{page.name})' in (ROOT / 'README.md').read_text(encoding='utf-8'), "and the README links to it"
