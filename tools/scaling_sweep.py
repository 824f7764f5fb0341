"""
IsoFLOP sweep (Chinchilla's approach 2, Hoffmann et al. 2022, section 3.2) on character-level
Shakespeare, on the CPU: for each compute budget C, train several model sizes N with train.py,
each for D tokens such that 6 * N * D ~= C, and record the final validation loss.
scaling_laws.ipynb fits the results.

The committed sweep (scaling/sweep_results.json; the exact command is stored in the file): 3 budgets
(1e11, 3e11, 1e12 FLOPs) x 6-7 sizes = 20 runs, 44 min on 2 CPU cores shared with other jobs:
$ OMP_NUM_THREADS=1 python tools/scaling_sweep.py --input=path/to/tinyshakespeare/input.txt
Plan only (model sizes, iterations, FLOPs), no training:
$ python tools/scaling_sweep.py --dry_run
A seconds-long grid for tests (2 budgets x 3 sizes, a few iterations each):
$ python tools/scaling_sweep.py --tiny --work_dir=/tmp/sweep --out=/tmp/sweep/results.json

Each run is `python train.py --key=value ...` in a subprocess (printed before it starts), writing
work_dir/runs/<name>/log.jsonl. The results file is rewritten after every run, and a finished
run is not trained again, so an interrupted sweep continues where it stopped when re-run with
the same arguments (or extended: new sizes or budgets train only the missing runs). Checkpoints
are deleted after each run: only the logs are needed.
"""

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root (python tools/...)
from gpt.errors import UserError, exit_on_user_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo root

# Candidate shapes (n_layer, n_embd), heads of size 16 (one head of 8 for the smallest), ordered by
# size: each has ~2x the parameters of the previous one, so 7 consecutive shapes span ~60x in N.
SHAPES = [(1, 8), (1, 16), (2, 16), (4, 16), (2, 32), (4, 32), (4, 48), (4, 64), (5, 80), (6, 96), (6, 128), (8, 160)]
VOCAB_SIZE = 65  # character-level Shakespeare


def model_size(n_layer, n_embd, block_size):
    """(N, N_total, training FLOPs per token) of a shape, counted on the meta device (no memory).
    N excludes the position table (model.py's non_embedding), as in Kaplan et al. 2020; the token
    embedding stays in, since it is also the output layer (Chinchilla counts all parameters)."""
    import torch  # here, not at the top: argument errors are reported without waiting for torch
    from model import GPT, GPTConfig
    with torch.device('meta'):
        m = GPT(GPTConfig(n_layer=n_layer, n_head=n_heads(n_embd), n_embd=n_embd, block_size=block_size,
                          vocab_size=VOCAB_SIZE, dropout=0.0))
    return m.num_params(non_embedding=True), m.num_params(), m.flops_per_token()


def n_heads(n_embd):
    return max(1, n_embd // 16)


def learning_rate(n_embd):
    # narrower models tolerate larger Adam steps (roughly lr ~ 1/width, as in muP), capped at 3e-3
    return min(3e-3, 2e-3 * 64 / n_embd)


def plan(budgets, sizes_per_budget, tokens_per_param, batch_size, block_size, min_iters=20, max_iters=None):
    """The runs of the sweep: for each budget, the sizes_per_budget consecutive shapes centred on
    the size that would see tokens_per_param tokens per parameter (a guess of the optimum that only
    places the grid), each trained for round(C / (6 N tokens_per_iter)) iterations. Runs with
    fewer than min_iters or more than max_iters iterations are left out (and said so)."""
    tokens_per_iter = batch_size * block_size
    sizes = [model_size(L, d, block_size) for L, d in SHAPES]
    runs = []
    for C in budgets:
        n_centre = math.sqrt(C / (6 * tokens_per_param))  # C = 6 N D and D = r N
        closest = min(range(len(SHAPES)), key=lambda i: abs(math.log(sizes[i][0] / n_centre)))
        first = max(0, min(closest - sizes_per_budget // 2, len(SHAPES) - sizes_per_budget))
        for i in range(first, first + sizes_per_budget):
            (L, d), (N, N_total, fpt) = SHAPES[i], sizes[i]
            iters = round(C / (6 * N * tokens_per_iter))
            if iters < min_iters or (max_iters and iters > max_iters):  # meaningless / too slow on a CPU
                print(f"skipping L{L} d{d} at C={C:.3g}: {iters} iterations")
                continue
            D = iters * tokens_per_iter
            lr = learning_rate(d)
            runs.append(dict(name=f"C{C:.0e}_L{L}_d{d}".replace('+', ''), budget=C, n_layer=L, n_head=n_heads(d),
                             n_embd=d, N=N, N_total=N_total, iters=iters, D=D, C_6ND=6 * N * D,
                             C_with_attention=fpt * D, learning_rate=lr, min_lr=lr / 10,
                             warmup_iters=max(1, min(100, iters // 10))))
    return runs


def train_command(run, data_dir, run_dir, batch_size, block_size, eval_iters):
    # cosine decay to lr/10 over exactly the run's length: Chinchilla (section 3.1 and appendix B)
    # showed that a schedule longer than the run overstates the loss of short runs
    settings = dict(out_dir=run_dir, data_dir=data_dir, device='cpu', dtype='float32', compile=False,
                    n_layer=run['n_layer'], n_head=run['n_head'], n_embd=run['n_embd'], block_size=block_size,
                    batch_size=batch_size, gradient_accumulation_steps=1, dropout=0.0, pad_vocab_multiple=1,
                    max_iters=run['iters'], eval_interval=run['iters'], eval_iters=eval_iters,
                    log_interval=max(1, run['iters'] // 10), learning_rate=run['learning_rate'],
                    min_lr=run['min_lr'], warmup_iters=run['warmup_iters'], lr_decay_iters=run['iters'],
                    beta2=0.99, plot=False, always_save_checkpoint=False, wandb_log=False, seed=1337,
                    peak_flops=1e11)  # a fixed peak skips train.py's matmul measurement; MFU is not used here
    return [sys.executable, os.path.join(ROOT, 'train.py')] + [f"--{k}={v}" for k, v in settings.items()]


def final_eval(log_path, iters):
    """(train_loss, val_loss) of the evaluation at iteration `iters` in a train.py log, or None."""
    if not os.path.exists(log_path):
        return None
    with open(log_path, encoding='utf-8') as f:
        for line in f:
            e = json.loads(line)
            if e.get('event') == 'eval' and e.get('iter') == iters:
                return e['train_loss'], e['val_loss']
    return None


def machine_info():
    import torch
    from gpt.device import cpu_name
    return dict(cpu=cpu_name(), cpu_count=os.cpu_count(), platform=platform.platform(), python=platform.python_version(),
                torch=torch.__version__, omp_num_threads=os.environ.get('OMP_NUM_THREADS', ''))


def load_average():
    # other jobs on a shared machine slow the runs down: record how busy it was
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, 'getloadavg') else None


def write_json(path, obj):
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=1)
        f.write('\n')
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--budgets', default='1e11,3e11,1e12', help="compute budgets C in FLOPs (6ND), comma-separated")
    p.add_argument('--sizes_per_budget', type=int, default=7, help="model sizes trained per budget")
    # Chinchilla's ~20 put the optimum at the small edge of every budget in a first sweep: at these
    # budgets the larger models get only ~100-300 optimizer steps, so small models with more steps win
    p.add_argument('--tokens_per_param', type=float, default=100.0,
                   help="where to centre each budget's sizes (D/N of the middle size)")
    p.add_argument('--max_iters', type=int, default=6000, help="leave out runs needing more iterations (CPU time)")
    p.add_argument('--batch_size', type=int, default=32)
    p.add_argument('--block_size', type=int, default=64)
    p.add_argument('--eval_iters', type=int, default=20, help="batches per split in the final evaluation")
    p.add_argument('--work_dir', default=os.path.join(ROOT, 'out-scaling'), help="prepared data and run logs")
    p.add_argument('--data_dir', default='', help="prepared shakespeare_char data (default: prepare into work_dir/data)")
    p.add_argument('--input', default='', help="Tiny Shakespeare input.txt for preparing the data (default: download)")
    p.add_argument('--out', default=os.path.join(ROOT, 'scaling', 'sweep_results.json'), help="results file")
    p.add_argument('--tiny', action='store_true', help="2 budgets x 3 sizes, a few iterations each: for tests")
    p.add_argument('--dry_run', action='store_true', help="print the plan and exit")
    args = p.parse_args()

    if args.tiny:  # smallest shapes, tiny batches, a handful of iterations each
        args.budgets, args.sizes_per_budget, args.tokens_per_param = '1e8,3e8', 3, 20.0
        args.batch_size, args.block_size, args.eval_iters = 4, 32, 2
    try:
        budgets = sorted(float(b) for b in args.budgets.split(','))
    except ValueError:
        raise UserError(f"--budgets must be comma-separated numbers of FLOPs like 1e11,3e11, got {args.budgets!r}")
    if not budgets or min(budgets) <= 0:
        raise UserError(f"--budgets must be positive, got {args.budgets!r}")
    if not 1 <= args.sizes_per_budget <= len(SHAPES):
        raise UserError(f"--sizes_per_budget must be between 1 and {len(SHAPES)}, got {args.sizes_per_budget}")
    for k in ('batch_size', 'block_size', 'eval_iters', 'tokens_per_param'):
        if getattr(args, k) <= 0:
            raise UserError(f"--{k} must be positive, got {getattr(args, k)}")

    runs = plan(budgets, args.sizes_per_budget, args.tokens_per_param, args.batch_size, args.block_size,
                min_iters=5 if args.tiny else 20, max_iters=args.max_iters)
    print(f"{len(runs)} runs, {args.batch_size * args.block_size} tokens per iteration, "
          f"{sum(r['C_6ND'] for r in runs):.3g} FLOPs in all (6ND)")
    for r in runs:
        print(f"  {r['name']:<20} N={r['N']:>9,}  iters={r['iters']:>6}  D={r['D']:>11,}  D/N={r['D'] / r['N']:7.1f}  "
              f"6ND={r['C_6ND']:.3g}  lr={r['learning_rate']:.2g}")
    if args.dry_run or not runs:
        return

    os.makedirs(args.work_dir, exist_ok=True)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    data_dir = args.data_dir or os.path.join(args.work_dir, 'data')
    if not os.path.exists(os.path.join(data_dir, 'train.bin')):
        if args.data_dir:
            raise UserError(f"{data_dir} has no train.bin; prepare it with data/shakespeare_char/prepare.py --out_dir={data_dir}")
        cmd = [sys.executable, os.path.join(ROOT, 'data', 'shakespeare_char', 'prepare.py'), f"--out_dir={data_dir}"]
        cmd += [f"--input={args.input}"] if args.input else []
        if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
            raise UserError("preparing the data failed (see above); pass --input=path/to/input.txt when offline")
    with open(os.path.join(data_dir, 'meta.json'), encoding='utf-8') as f:
        meta = json.load(f)
    if meta.get('tokenizer') != 'char' or meta.get('vocab_size') != VOCAB_SIZE:
        raise UserError(f"{data_dir} is not character-level Shakespeare (tokenizer {meta.get('tokenizer')!r}, "
             f"vocab_size {meta.get('vocab_size')}); the sweep's model sizes assume a {VOCAB_SIZE}-symbol vocabulary")

    # an interrupted or extended sweep is re-run with the same --out: keep the record of earlier invocations
    history = []
    if os.path.exists(args.out):
        try:
            with open(args.out, encoding='utf-8') as f:
                history = json.load(f).get('history', [])
        except (OSError, ValueError):
            pass
    command = ' '.join(['python', 'tools/scaling_sweep.py'] + [shlex.quote(a) for a in sys.argv[1:]])
    this = dict(started=datetime.now(timezone.utc).isoformat(timespec='seconds'), command=command,
                load_average_at_start=load_average(), trained=[], wall_s=0.0)
    results = dict(command=command,
                   note="python tools/scaling_sweep.py --help; fitted in scaling_laws.ipynb. N excludes the position "
                        "table; C_6ND = 6 N D is the budget the iterations were chosen for; "
                        "C_with_attention adds 12 L T d per token (model.flops_per_token); val_loss in nats/char; "
                        "wall_s per run; total_wall_s sums the invocations in history (those that trained runs).",
                   machine=machine_info(),
                   settings=dict(budgets=budgets, sizes_per_budget=args.sizes_per_budget,
                                 tokens_per_param=args.tokens_per_param, batch_size=args.batch_size,
                                 block_size=args.block_size, eval_iters=args.eval_iters,
                                 train_tokens=meta.get('train_tokens'), val_tokens=meta.get('val_tokens')),
                   total_wall_s=0.0, sum_run_wall_s=0.0, history=history, runs=[])
    t_start = time.time()
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
    for k, run in enumerate(runs):
        run_dir = os.path.join(args.work_dir, 'runs', run['name'])
        log_path = os.path.join(run_dir, 'log.jsonl')
        done = final_eval(log_path, run['iters'])
        if done is None:
            shutil.rmtree(run_dir, ignore_errors=True)  # a half-finished run starts over
            cmd = train_command(run, data_dir, run_dir, args.batch_size, args.block_size, args.eval_iters)
            print(f"[{k + 1}/{len(runs)}] {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
            t0 = time.time()
            proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            wall = time.time() - t0
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ['(no output)'])[-1]
                raise UserError(f"run {run['name']} failed (exit {proc.returncode}): {last}")
            done = final_eval(log_path, run['iters'])
            if done is None:
                raise UserError(f"run {run['name']} finished without an evaluation at iteration {run['iters']} in {log_path}")
            with open(os.path.join(run_dir, 'wall_s.txt'), 'w', encoding='utf-8') as f:
                f.write(f"{wall:.2f}\n")
            for name in ('ckpt.pt', 'best.pt'):
                if os.path.exists(os.path.join(run_dir, name)):
                    os.remove(os.path.join(run_dir, name))
            this['trained'].append(run['name'])
        else:
            with open(os.path.join(run_dir, 'wall_s.txt'), encoding='utf-8') as f:
                wall = float(f.read())
            print(f"[{k + 1}/{len(runs)}] {run['name']}: already done")
        run.update(train_loss=round(done[0], 5), val_loss=round(done[1], 5), wall_s=round(wall, 2),
                   epochs=round(run['D'] / meta['train_tokens'], 3) if meta.get('train_tokens') else None)
        print(f"    val loss {done[1]:.4f}, {wall:.1f}s", flush=True)
        results['runs'].append(run)
        this.update(wall_s=round(time.time() - t_start, 1), load_average_at_end=load_average())
        results['history'] = history + ([this] if this['trained'] else [])
        results['total_wall_s'] = round(sum(h['wall_s'] for h in results['history']), 1)
        results['sum_run_wall_s'] = round(sum(r['wall_s'] for r in results['runs']), 1)
        write_json(args.out, results)
    print(f"wrote {args.out}: {len(runs)} runs, {this['wall_s'] / 60:.1f} min now, "
          f"{results['total_wall_s'] / 60:.1f} min in all")


if __name__ == '__main__':
    exit_on_user_error()  # a UserError prints one `error: ...` line and exits 1
    main()
