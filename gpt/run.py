"""
What every trainer's run shares: its out_dir (one run at a time holds its lock; a new run moves an old one aside,
never deletes it unasked), resuming (the settings a resume takes from the checkpoint), log.jsonl, the stop signals
(SIGTERM or Ctrl-C: finish the step, checkpoint, exit 0), and torchrun's process group (join_process_group,
leave_process_group). Run bundles them for reward.py, ppo.py and dpo.py; train.py uses the parts.
"""

import gc
import json
import math
import os
import sys
import time

import torch

from gpt.checkpoint import check_trainer, fsync_dir, load_checkpoint, save_checkpoint, set_rng_state
from gpt.errors import UserError, exit_on_user_error
from gpt.tokendata import check_same_tokenizer, seed_from

# ---------------------------------------------------------------------- one run per out_dir

_held_locks = {}  # real path of out_dir -> (pid, fd): this process's lock on it


def lock_out_dir(out_dir):
    """Take out_dir for this process: a second train.py writing into it (and overwriting this one's
    checkpoints, interleaving its log) stops with one line instead. flock on the directory itself: no file
    is created, and the OS releases it when the process ends however it ends (a SIGKILL included), so a
    killed run never leaves a stale lock behind. Held until the process exits (or release_out_dirs)."""
    import fcntl
    key = os.path.realpath(out_dir)
    if key in _held_locks and _held_locks[key][0] == os.getpid():
        return  # (this process already holds it: e.g. a script run twice in one interpreter, as tests do)
    try:
        fd = os.open(key, os.O_RDONLY)
    except OSError:
        return  # a directory that cannot be opened (some filesystems); the write probe reports real trouble
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"another process is training into {out_dir} right now; wait for it to finish (or stop it), "
                        f"or choose another --out_dir") from None
    except OSError:
        os.close(fd)
        return  # a filesystem without flock on directories (e.g. some network filesystems): no lock
    _held_locks[key] = (os.getpid(), fd)


def take_out_dir(out_dir):
    """Make out_dir, check it can be written, and lock it (lock_out_dir): what every trainer does first."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, '.write_test')
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as e:
        raise UserError(f"out_dir {out_dir!r} is not writable ({e.strerror}); choose another with --out_dir=...") from None
    lock_out_dir(out_dir)


def release_out_dirs():
    """Release this process's out_dir locks (a script's end does it anyway; for scripts run in-process)."""
    for key, (pid, fd) in list(_held_locks.items()):
        if pid == os.getpid():
            os.close(fd)
        del _held_locks[key]


RUN_FILES = ('ckpt.pt', 'best.pt')


def make_room(out_dir, overwrite, act=True, resume_flag='--resume=True', overwrite_flag=None):
    """Ready out_dir for a new run (not a resume) without losing the run it may hold, and keep the habit of
    rerunning a command: the old run (everything in out_dir) moves, untouched, to a sibling folder named by
    when it was last saved, <out_dir>.old-YYYYmmdd-HHMMSS; with overwrite its checkpoints, log and plot are
    deleted instead (the new log is not appended to the old one's). act=False: only say what would happen (the
    processes other than the one that writes). Returns a note for the log, or '' when out_dir holds no run.
    resume_flag, overwrite_flag: the calling script's own settings that continue a run and replace one (None: it
    has none), named in the hints (as resume_settings' resume_flag): train.py's are --init_from=resume and
    --overwrite=True, the other trainers' --resume=True."""
    found = [n for n in RUN_FILES if os.path.isfile(os.path.join(out_dir, n))]
    if not found:
        return ''
    if overwrite:
        for name in (*RUN_FILES, 'log.jsonl', 'loss.png') if act else ():
            try:
                os.unlink(os.path.join(out_dir, name))
            except FileNotFoundError:
                pass
        return f"note: --overwrite=True: deleted the run that was in {out_dir} ({', '.join(found)}, its log and plot)"
    saved = max(os.path.getmtime(os.path.join(out_dir, n)) for n in found)
    base = os.path.normpath(out_dir) if os.path.basename(os.path.normpath(out_dir)) not in ('.', '..') \
        else os.path.abspath(out_dir)
    stamp = f"{base}.old-{time.strftime('%Y%m%d-%H%M%S', time.localtime(saved))}"
    dest, n = stamp, 1
    while os.path.exists(dest):
        n += 1
        dest = f"{stamp}-{n}"
    if act:
        try:
            os.makedirs(dest)
            for name in sorted(os.listdir(out_dir)):  # a rename each: nothing is copied, nothing rewritten
                os.rename(os.path.join(out_dir, name), os.path.join(dest, name))
        except OSError as e:
            replace = f"replace it with {overwrite_flag}, " if overwrite_flag else ''
            raise UserError(f"{out_dir} holds a run ({', '.join(found)}) that could not be moved aside to {dest} "
                            f"({e.strerror}; what was moved is there): continue it with {resume_flag}, "
                            f"{replace}or choose another --out_dir") from None
        fsync_dir(dest)
        fsync_dir(out_dir)
    replace = f"; {overwrite_flag} replaces a run instead of keeping it" if overwrite_flag else ''
    return (f"note: {out_dir} held a run ({', '.join(found)}); moved it, untouched, to {dest} (to continue it: "
            f"{resume_flag} --out_dir={dest}{replace})")


def check_resume_data(ckpt, data_meta, data_dir):
    """A resumed run continues on a dataset with the vocabulary it was trained on."""
    saved = (ckpt.get('data_meta') or {}).get('vocab_size')
    if saved is not None and saved != data_meta['vocab_size']:
        raise UserError(f"the checkpoint was trained on a dataset with vocab_size {saved}, "
                        f"but the one in {data_dir} has {data_meta['vocab_size']}")
    check_same_tokenizer(ckpt.get('data_meta'), data_meta, ckpt.get('path', 'the checkpoint'), data_dir)


# ---------------------------------------------------------------------- resuming a run (every trainer)
# What makes a resume exact, shared by train.py, finetune.py, reward.py, ppo.py and dpo.py: each writes ckpt.pt
# atomically (save_checkpoint) with the weights, the optimizer state, the next step to run and the RNG states;
# its batches and dropout masks are functions of (seed, step), so the steps after a resume are the ones the run
# would have taken; SIGTERM or Ctrl-C ends the current step and saves (StopSignal); and the resume command may
# be bare, the settings not given again coming from the checkpoint (resume_settings).

def command_line_keys(argv):
    """The keys set by --key=value arguments (not by config files)."""
    return {a[2:].split('=', 1)[0] for a in argv if a.startswith('--')}


def resume_settings(out_dir, config, given, script, resume_flag='--resume=True', per_launch=()):
    """The checkpoint of the run in out_dir, and a note for the log. Every setting of config (a script's
    resolved config; the caller updates its globals from it) that the command line did not set takes the run's
    value, so `python SCRIPT --resume=True --out_dir=X` continues the run as it was configured. A config file on
    the resume command changes nothing the run set either: it is usually the file the run started with (its
    values are in the checkpoint, with that launch's command-line overrides), so re-reading it could only undo
    those (its max_iters=5000 over the run's --max_iters=400); the note names each value it kept over the file's.
    given: the keys a config file or the command line set; script: the trainer that wrote the run (another's is
    refused); per_launch: settings of one launch, not of the run (e.g. stop after N steps), never taken from it.
    A run stopped before its first checkpoint has only its log's start record: its settings come from there,
    and it starts again from the beginning (the same steps); then the checkpoint returned is None."""
    path, log = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'log.jsonl')
    if os.path.exists(path):
        ckpt = load_checkpoint(path)
        ckpt['path'] = path
        check_trainer(ckpt, path, script)  # (another script's run: its settings would be misread)
        theirs = ckpt.get('config') or {}
        note = f"resuming {path} at step {ckpt['iter_num']} with the run's settings"
    else:
        starts = [e for e in read_records(log) if e.get('event') == 'start' and isinstance(e.get('config'), dict)]
        if not starts:
            raise UserError(f"{resume_flag} but there is no run in {out_dir} (no ckpt.pt): start one without "
                            f"{resume_flag}, or point --out_dir at the run to continue")
        ckpt, theirs, by = None, starts[0]['config'], starts[0].get('script', script)
        if by != script:
            raise UserError(f"{out_dir} holds a {by} run, not a {script} run: continue it with {by} (its settings "
                            f"and out_dir)")
        note = (f"{out_dir} holds a run stopped before its first checkpoint: starting it again from the beginning "
                f"(the same steps) with its settings")
    from_files = {k: config[k] for k in set(given) - command_line_keys(sys.argv[1:])}
    mine = (set(given) - set(from_files)) | set(per_launch) | {'resume'}
    config.update({k: v for k, v in theirs.items() if k in config and k not in mine})
    if ckpt is None and resume_flag.startswith('--init_from='):  # (train.py) starting again: from where it started
        config['init_from'] = theirs.get('init_from', 'scratch')
    changed = [f"{k}={config[k]!r} (the run had {theirs[k]!r})" for k in sorted(mine)
               if k in theirs and k not in ('resume', 'init_from') and theirs[k] != config[k]]
    note += f"; overridden here: {', '.join(changed) or 'none'}"
    kept = sorted(k for k, v in from_files.items() if k in theirs and config[k] != v)
    if kept:
        note += ("\nnote: kept the run's " + ', '.join(f"{k}={config[k]!r}" for k in kept) + " over the config "
                 "file's; to change them pass " + ' '.join(f"--{k}=..." for k in kept) + " on the command line")
    return ckpt, note


def read_records(path):
    """The entries of a run's log (one JSON object a line), skipping a line torn by a kill; [] if there is none."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def append_record(path, entry):
    """Append entry to a run's log (path, one JSON object a line). A run killed while writing a line leaves it
    torn, without its newline: the next line then starts on a line of its own, so every later entry still
    reads as JSON (readers skip the one torn line)."""
    with open(path, 'a+b') as f:
        torn = False
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b'\n'
        f.write((('\n' if torn else '') + json.dumps(entry) + '\n').encode())


class StopSignal:
    """SIGTERM (a preemption, torchrun's shutdown) or Ctrl-C: the trainer finishes its current step, saves a
    checkpoint and exits 0. The first signal puts back the default action, so a second one ends the process at
    once (e.g. if it hangs in a collective). Truthy once a signal came; len() counts them."""

    def __init__(self, announce=True, what='saving a checkpoint after this step'):
        import signal
        self.received, self.announce, self.what, self.signal = [], announce, what, signal
        self.pid = os.getpid()
        self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handle(self, signum, frame):
        for sig in (self.signal.SIGTERM, self.signal.SIGINT):
            self.signal.signal(sig, self.signal.SIG_DFL)
        if os.getpid() != self.pid:
            # a process forked from this one (a multiprocessing pool's worker, e.g. lm_eval's bootstrap) has no
            # checkpoint to save: it ends as the default action would, or the pool's terminate() waits for it forever
            os.kill(os.getpid(), signum)
            return
        self.received.append(signum)
        if self.announce:  # os.write: print() is not safe inside a signal handler
            os.write(2, f"\n{self.signal.Signals(signum).name}: {self.what} (send it again to abort without "
                        f"saving)\n".encode())

    def __len__(self):
        return len(self.received)

    def restore(self):
        """Put back the handlers there were before (for a caller that goes on after its run, e.g. in-process)."""
        for sig, handler in self.previous.items():
            self.signal.signal(sig, handler)


# ----------------------------------------------------------------------------- torchrun's process group

def torchrun_ranks():
    """(rank, local_rank, world_size) as torchrun tells each process; (0, 0, 1) for a plain `python` run."""
    return int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))


def launched_by_torchrun():
    return int(os.environ.get('RANK', -1)) != -1


def rank_device(device):
    """The device setting as this process reads it: under torchrun 'auto' and 'cuda' mean this rank's own GPU
    (cuda:LOCAL_RANK; 'auto' without GPUs: the CPU); anything else, and every setting without torchrun, as given."""
    if not launched_by_torchrun() or device not in ('auto', 'cuda'):
        return device
    if device == 'auto' and not torch.cuda.is_available():
        return 'cpu'
    return f"cuda:{os.environ['LOCAL_RANK']}"


def join_process_group(device, backend='auto'):
    """Join torchrun's process group (backend 'auto': nccl on CUDA, gloo elsewhere) on this rank's device, and leave
    it cleanly however the script ends. Join only after every check of the settings and data: a mistake found
    before stops every rank alike, with one line from rank 0 (errors.report_user_error). Returns torch.distributed."""
    import atexit

    import torch.distributed as dist
    if device.startswith('cuda'):
        torch.cuda.set_device(device)
    dist.init_process_group(backend=('nccl' if device.startswith('cuda') else 'gloo') if backend == 'auto' else backend)
    exit_on_user_error()  # (torch's hook, installed just now, would prefix the line with [rankN])
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return dist


def leave_process_group():
    """Every rank leaves together (rank 0 may still be writing the last checkpoint), and the group goes while
    Python is whole: a rank tearing it down alone, or the group freed during the interpreter's exit, aborted now
    and then ("terminate called without an active exception"; 1 run of train.py in 15, once in a CI run of ppo.py).
    Drop the models and optimizers first (DDP's reducer holds the group). Without a group: nothing."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def share(m, rank, world):
    """Rank's global micro-batches out of m: a contiguous block, as even as m allows (rank r of W takes
    r*m//W .. (r+1)*m//W - 1), so N processes together take the micro-batches one process takes."""
    return range(rank * m // world, (rank + 1) * m // world)


def all_sum(t):
    """A tensor summed over the processes, in place (as it is without a process group)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_mean(t):
    """A tensor averaged over the processes, in place."""
    _, _, world = torchrun_ranks()
    all_sum(t)
    if world > 1:
        t /= world
    return t


def shard_fsdp(model, dtype):
    """FSDP2: shard each transformer block, then the root, which holds the embeddings, ln_f and the lm_head (tied
    to wte: one Parameter, sharded once). Shards are gathered in dtype for compute and gradients reduced in fp32.
    Build the optimizer on the sharded parameters, after this."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp_policy = MixedPrecisionPolicy(param_dtype=getattr(torch, dtype), reduce_dtype=torch.float32)
    for block in model.transformer.h:
        fully_shard(block, mp_policy=mp_policy)
    fully_shard(model, mp_policy=mp_policy)
    return model


# ----------------------------------------------------------------------------- processes and logs

class Run:
    """What reward.py, ppo.py and dpo.py share: under torchrun the process group (gloo on CPU, nccl on CUDA),
    each rank's share of a step's micro-batches, gradients averaged over ranks (DDP's all-reduce, done by hand
    since a step may train two models), and the log (stdout and out_dir/log.jsonl) on rank 0 only."""

    def __init__(self, out_dir, device, divide=None, new_run=False):
        """divide: {setting: count} of what each step splits among the processes, checked before joining the
        group (a count that does not divide stops every rank alike, with one line from rank 0). new_run=True: a
        run already in out_dir is moved aside, untouched (make_room); the scripts pass not resume."""
        import torch.distributed as dist
        self.dist = dist
        self.ddp = launched_by_torchrun()
        self.rank, _, self.world = torchrun_ranks()
        self.master = self.rank == 0
        for name, count in (divide or {}).items():
            if count % self.world:
                raise UserError(f"{name} ({count}) must divide among the {self.world} processes")
        self.device = rank_device(device)
        if self.ddp:
            join_process_group(self.device)
        self.out_dir, self.wandb = out_dir, None
        if self.master:
            take_out_dir(out_dir)
            moved = make_room(out_dir, overwrite=False) if new_run else ''
            if moved:  # (rerunning a command keeps the earlier run)
                print(moved, flush=True)
        self.stop = StopSignal(announce=self.master)

    def begin(self, ckpt, note, total, complete=None):
        """The step a run starts at: 0, or a resumed checkpoint's next step, after logging the resume note and
        restoring the RNG (the caller then loads its models' and optimizers' states from ckpt). A run already
        complete (its step reached total, or complete says so) exits 0 here, its files untouched."""
        if note:
            self.log(note)
        if ckpt is None:
            return 0
        if (complete if complete is not None else ckpt['iter_num'] >= total):
            self.log(f"the run in {self.out_dir} is complete ({ckpt['iter_num']} of {total} steps): nothing to resume")
            self.close()
            raise SystemExit(0)
        set_rng_state(ckpt['rng'])
        return ckpt['iter_num']

    def close(self):
        """Every rank leaves together (leave_process_group), and SIGTERM and Ctrl-C act as they did before."""
        leave_process_group()
        self.stop.restore()

    def stop_if_signalled(self, save, done, total, unit='step'):
        """After a step: if SIGTERM or Ctrl-C reached any process (every rank agrees, so all stop after the same
        step), save(done) and exit 0 with the command that resumes. done: the steps done, total: the run's."""
        if done < total and self.sum(torch.tensor(float(len(self.stop)), device=self.device)).item() > 0:
            save(done)
            self.log(f"stopped by signal after {unit} {done} of {total}, checkpoint saved; continue with "
                     f"`python {os.path.basename(sys.argv[0])} --resume=True --out_dir={self.out_dir}`")
            self.close()
            raise SystemExit(0)

    def share(self, m):
        """This rank's global micro-batches out of m (share)."""
        return share(m, self.rank, self.world)

    def part(self, items):
        """This rank's contiguous share of a list (e.g. held-out examples to score)."""
        return items[self.rank * len(items) // self.world:(self.rank + 1) * len(items) // self.world]

    def pick(self, n, batch_size, *seed_parts):
        """This rank's share of a step's batch_size indices drawn from range(n): a function of seed_parts alone, so
        N processes together take the batch one process takes."""
        g = torch.Generator().manual_seed(seed_from(*seed_parts))
        return self.part(torch.randint(n, (batch_size,), generator=g).tolist())

    def step(self, model, optimizer, grad_clip):
        """One optimizer step on the gradients summed over ranks, clipped to grad_clip (0: not clipped)."""
        self.reduce_gradients([p for p in model.parameters() if p.requires_grad])  # (LoRA: not the frozen base)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def mean(self, values):
        """Floats averaged over processes."""
        return (self.sum(torch.tensor(values, dtype=torch.float64)) / self.world).tolist()

    def sum(self, t):
        """A tensor summed over processes."""
        return all_sum(t)

    def reduce_gradients(self, params):
        """Sum the gradients over processes (each rank's loss is already divided by the global count). A rank
        with no share of a minibatch contributes zeros: every rank takes part in every all-reduce."""
        if self.ddp:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                self.dist.all_reduce(p.grad, op=self.dist.ReduceOp.SUM)

    def log(self, *args):
        if self.master:
            print(*args, flush=True)

    def start_wandb(self, project, name, config):
        """Also send every record's numbers to Weights & Biases (WANDB_MODE=offline needs no account)."""
        if self.master:
            import wandb
            wandb.init(project=project, name=name, config=config)
            self.wandb = wandb

    def record(self, **entry):
        if entry.get('event') == 'start':  # (which trainer's run this is: a resume checks it)
            entry = {'event': 'start', 'script': os.path.basename(sys.argv[0]), **entry}
        if self.master:
            append_record(os.path.join(self.out_dir, 'log.jsonl'), entry)
            if self.wandb is not None and entry.get('event') != 'start':
                self.wandb.log({f"{entry['event']}/{k}": v for k, v in entry.items()
                                if isinstance(v, (int, float)) and k != 'iter'}, step=entry.get('iter'))

    def save(self, obj, name='ckpt.pt'):
        if self.master:
            save_checkpoint(obj, os.path.join(self.out_dir, name))


def fmt(stats):
    """'name value, ...' for a log line."""
    return ', '.join(f"{k} {v:.4f}" if isinstance(v, float) and math.isfinite(v) else f"{k} {v}"
                     for k, v in stats.items())
