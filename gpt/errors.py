"""
Mistakes a user can fix, reported as one line: code anywhere in the library raises UserError with a message
that says what to do; the scripts' entry (configurator.configure, or exit_on_user_error directly) installs the
hook that prints it as `error: ...` and exits with status 1; the same hook makes Ctrl-C one line, never a
traceback (a script that kept what it finished raises KeyboardInterrupt('stopped by Ctrl-C after ...; wrote ...')
again, and that message is the line). check_range and check_choice are the value checks every script's settings go
through, so a bad value is one line naming the key; check_output checks a file a script will write before the work
that ends in writing it.
"""
import math
import os
import sys
import tempfile
import time


class UserError(Exception):
    """A mistake the user can fix (bad setting, missing file, ...): printed as one `error: ...` line."""


def report_user_error(message):
    """Print `error: message` to stderr. Under torchrun, before the process group exists, every rank runs the
    same checks on the same settings and files: rank 0 prints at once, the others only after a pause, by which
    time torchrun has ended them if rank 0 failed alike (one line in all), while a failure of their own is
    still reported. Once the group exists a failure may be one rank's own (its disk, its device), so every
    failing rank prints at once."""
    dist = sys.modules.get('torch.distributed')
    grouped = dist is not None and dist.is_available() and dist.is_initialized()
    if not grouped and int(os.environ.get('RANK', '0') or 0) != 0:
        time.sleep(5)
    print(f"error: {message}", file=sys.stderr, flush=True)


def exit_on_user_error():
    """From now on an uncaught UserError prints one `error: ...` line and exits 1 (configure() calls it), and
    Ctrl-C (KeyboardInterrupt) one line on rank 0, its message or `stopped by Ctrl-C`, where Python prints a
    traceback; other exceptions go to the hook that was in place. train.py calls it again after joining a process
    group, whose hook would put `[rankN]: ` before the line."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, UserError):
            report_user_error(value)  # the interpreter then exits with status 1
        elif issubclass(kind, KeyboardInterrupt):
            # the interpreter then ends itself by SIGINT, as after its traceback: status 130 in a shell, and a
            # shell loop running the script stops too (which an exit(130) would not do). It does so only for
            # KeyboardInterrupt itself, not a subclass: a script's message rides in its argument
            if int(os.environ.get('RANK', '0') or 0) == 0:
                print(str(value) or "stopped by Ctrl-C", file=sys.stderr, flush=True)
        else:
            previous(kind, value, tb)
    sys.excepthook = hook


def check_range(name, value, low=None, high=None, low_open=False, high_open=False):
    """Raise a UserError naming the key unless value is a finite number with low <= value <= high
    (low < value with low_open, value < high with high_open)."""
    ok = math.isfinite(value) and (low is None or (value > low if low_open else value >= low)) \
        and (high is None or (value < high if high_open else value <= high))
    if not ok:
        lo = '' if low is None else f"{'(' if low_open else '['}{low}"
        hi = '' if high is None else f"{high}{')' if high_open else ']'}"
        allowed = (f"in {lo}, {hi}" if low is not None and high is not None
                   else f"{'>' if low_open else '>='} {low}" if low is not None
                   else f"{'<' if high_open else '<='} {high}")
        raise UserError(f"{name} must be {allowed}, got {value!r}")


def check_choice(name, value, choices):
    """Raise a UserError naming the key unless value is one of choices."""
    if value not in choices:
        names = list(map(repr, choices))
        allowed = ' or '.join(names) if len(names) == 2 else f"one of {', '.join(names)}"
        raise UserError(f"{name} must be {allowed}, got {value!r}")


def check_output(path, key):
    """Check, before the work that ends in writing it, that the file a script's --key names can be written, so a
    mistake is one line now and not a traceback after the work. A missing folder is made, as train.py makes its
    out_dir and the prepare scripts theirs (the script's last line names the file written, so a mistyped folder
    shows); the folder is probed with a temp file, removed at once. An existing file is left as it is: whether
    to replace it is the caller's choice."""
    if os.path.isdir(path):
        raise UserError(f"--{key}={path} is a folder: name a file in it")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        if os.path.exists(path):
            open(path, 'a').close()  # (appends nothing: the file is unchanged)
    except OSError as e:
        raise UserError(f"--{key}={path} cannot be written ({e.strerror or e}): choose a writable place") from None
