"""
Evaluate a model the way papers and leaderboards do: GPT-3's zero-, one- and few-shot suite (HellaSwag, LAMBADA,
ARC, PIQA, Winogrande, OpenBookQA, BoolQ, COPA, SciQ) as lm-evaluation-harness defines it, TriviaQA and GSM8K by
generation, perplexity and bits per byte, or your own multiple-choice set. Prints a table and writes the same
numbers to a JSON file. How each task is read and scored: gpt/tasks.py.

$ python eval.py --init_from=gpt2 --tasks=suite                        # the suite, zero-shot, and its mean
$ python eval.py --init_from=gpt2 --tasks=suite --num_fewshot=5        # 5-shot, the harness's contexts
$ python eval.py --init_from=gpt2 --tasks=triviaqa,gsm8k --limit=200   # generation (gsm8k is 5-shot by default)
$ python eval.py --init_from=gpt2 --tasks=hellaswag,lambada            # OpenAI's weights; data downloads once
$ python eval.py config/eval_tasks_gpt2.py                             # the same, with the published figures beside it
$ python eval.py --out_dir=out-shakespeare-char --tasks=perplexity --perplexity_data=shakespeare_char
$ python eval.py --init_from=path/to/hf_dir --tasks=perplexity --perplexity_data=hf:wikitext:wikitext-2-raw-v1
$ python eval.py --init_from=gpt2 --tasks=mc --mc_data=my_set.jsonl --limit=100
$ torchrun --standalone --nproc_per_node=8 eval.py --init_from=gpt2-xl --tasks=hellaswag   # one node, 8 GPUs
$ torchrun --standalone --nproc_per_node=2 eval.py --init_from=gpt2 --tasks=hellaswag --device=cpu   # CPU, gloo
$ torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 --master_addr=10.0.0.1 --master_port=29500 eval.py ...

Under torchrun every process scores its share of the batches and the results are summed over processes, so the
numbers are those of one process. Data: the harness's hub datasets, downloaded once to data/eval/<task>/ as
<split>.jsonl; offline, put the rows there or pass --<task>_data=folder (one file per split, named by the split)
or a file of the evaluated split.
"""

import json
import math
import os
import sys
import time

import torch

import configurator
from gpt.decoding import load_for_decoding
from gpt.device import autocast_ctx, describe, pick_device, pick_dtype
from gpt.errors import UserError, check_output
from gpt.run import join_process_group, launched_by_torchrun, leave_process_group, rank_device, torchrun_ranks
from gpt.tasks import load_tasks, primary, run

# -----------------------------------------------------------------------------
# config: overridden by a config file, then by --key=value
init_from = 'resume'        # 'resume' (a checkpoint in out_dir), a hub name (gpt2, gpt2-xl, openai-gpt, ...) or an HF dir
out_dir = 'out'             # the training run to evaluate when init_from='resume'
ckpt_name = 'best.pt'       # 'best.pt' (lowest val loss) or 'ckpt.pt' (latest); falls back to ckpt.pt
tasks = 'hellaswag'         # comma-separated: suite (the ten below), hellaswag, lambada_openai (lambada), arc_easy,
                            # arc_challenge, piqa, winogrande, openbookqa, boolq, copa, sciq, triviaqa, gsm8k,
                            # perplexity, mc
num_fewshot = -1            # K solved examples before each one (the harness's contexts); -1: each task's default
data = ''                   # the data of the one task in `tasks` (shorthand for <task>_data)
hellaswag_data = ''         # each task's local data: a folder of <split>.jsonl (.json, .parquet) files with the hub
lambada_data = ''           # dataset's rows, or a file of the evaluated split; '' reads data/eval/<task>/ or
arc_easy_data = ''          # downloads the hub dataset there
arc_challenge_data = ''
piqa_data = ''
winogrande_data = ''
openbookqa_data = ''
boolq_data = ''
copa_data = ''
sciq_data = ''
triviaqa_data = ''
gsm8k_data = ''
mc_data = ''                # your multiple-choice jsonl, a line each: {"context": str, "choices": [str, ...], "label": int}
perplexity_data = ''        # a text file, a prepared dataset (data/<name> or its folder) or hf:name[:config[:split]]
split = ''                  # perplexity on a prepared dataset: 'val' (default) or 'train'; on the hub: 'test' (default)
stride = 0                  # perplexity: the sliding window's step in tokens; 0 = half the context; block_size = disjoint
block_size = 0              # evaluate at a shorter context than the model's (0: the model's own)
limit = 0                   # only the first N examples of each task (perplexity: N windows); 0 = all
batch_size = 8              # examples per forward pass (an example's choices share one packed row)
max_gen_toks = 0            # generation tasks: tokens to generate at most (0: the task's, 256 as the harness)
results_file = ''           # the JSON output (earlier results kept); '' = <out_dir>/eval.json, or eval_<model>.json
progress = True             # a progress bar with an ETA per task (stderr)
device = 'auto'             # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', ...; under torchrun cuda:LOCAL_RANK
dtype = 'float32'           # float32 reproduces the harness's numbers; 'auto' / 'bfloat16' are faster on GPUs
compile = False             # torch.compile the forward (pays off on full runs on a GPU)
# -----------------------------------------------------------------------------
config = configurator.configure(globals(), verbose=int(os.environ.get('RANK', 0)) == 0)


def main():
    names = [t.strip() for t in tasks.split(',') if t.strip()]
    paths = {name[:-len('_data')]: value for name, value in globals().items()
             if name.endswith('_data') and name != 'perplexity_data' and value}
    paths['perplexity'] = perplexity_data
    if data:
        if len(names) != 1:
            raise UserError("--data is for one task; with several use --<task>_data (e.g. --hellaswag_data=...)")
        paths[names[0]] = data
    if batch_size < 1 or limit < 0 or stride < 0 or max_gen_toks < 0 or num_fewshot < -1:
        raise UserError("batch_size must be >= 1, limit, stride and max_gen_toks >= 0, num_fewshot >= 0 (or -1)")

    # torchrun: one process per device; every rank loads the model and the tasks, then scores its share
    ddp = launched_by_torchrun()
    rank, _, world = torchrun_ranks()
    dev = pick_device(rank_device(device))
    dt = pick_dtype(dtype, dev)  # (scoring is batched forward passes: training's rule, bf16 where it is fast)
    path = results_file or (os.path.join(out_dir, 'eval.json') if init_from == 'resume'
                            else f"eval_{os.path.basename(os.path.normpath(init_from))}.json")
    read_results(path)  # a file there that is not ours stops the run now, not after the evaluation
    if results_file:  # (so does one that cannot be written; a missing folder is made. The default's is the run's)
        check_output(results_file, 'results_file')

    # (the weights as trained, no decode layout: scoring runs whole sequences, not one-token steps)
    d = load_for_decoding(init_from, out_dir, ckpt_name, dev, dt, layout='none', block_size=block_size)
    model, meta = d.model, d.meta
    task_list = load_tasks(names, meta, model.config.block_size, limit=limit, data=paths, stride=stride, split=split,
                           num_fewshot=None if num_fewshot < 0 else num_fewshot, max_gen_toks=max_gen_toks)
    for task in task_list:
        if task.truncated and rank == 0:
            print(f"note: {task.name}: {task.truncated} of its requests are longer than the context "
                  f"({model.config.block_size}); their context's start is cut, as the harness does", file=sys.stderr)
    if ddp:  # joined only now: a mistake above stops every rank alike, with one message from rank 0
        join_process_group(dev)
    if compile:
        model.forward = torch.compile(model.forward, dynamic=True)
    ctx = autocast_ctx(dev, dt)
    if rank == 0:
        print(f"{init_from if init_from != 'resume' else out_dir}: {model.num_params() / 1e6:.2f}M parameters, "
              f"context {model.config.block_size}; {describe(dev, dt)}, {world} process(es)", file=sys.stderr)

    results, stopped = {}, ''
    try:
        for task in task_list:
            t0 = time.time()
            metrics = run(model, task, batch_size, dev, ctx, progress=progress)
            seconds = time.time() - t0
            n = metrics.get('n', len(task.requests))
            results[task.name] = {**metrics, 'num_fewshot': task.num_fewshot, 'seconds': seconds,
                                  'examples_per_s': n / seconds}
    except KeyboardInterrupt:  # Ctrl-C: the finished tasks' results are written, the one under way is dropped
        stopped = f"stopped by Ctrl-C after {len(results)} of {len(task_list)} tasks"

    if rank == 0 and (results or not stopped):
        print_table(results)
        record = dict(model=init_from if init_from != 'resume' else os.path.join(out_dir, ckpt_name), results=results,
                      config=config, device=describe(dev, dt), world_size=world, torch=torch.__version__,
                      argv=sys.argv, time=time.strftime('%Y-%m-%dT%H:%M:%S%z'))
        if stopped:  # (the file says these results are those of the tasks finished before Ctrl-C)
            record['stopped'] = stopped
        kept = write_results(path, record)
        if not stopped:
            print(f"results written to {path}" + (f" (beside {kept} earlier evaluation(s), kept in its history)"
                                                   if kept else ''))
    if stopped:  # (one line; the other ranks' process group goes with the process)
        raise KeyboardInterrupt(stopped + (f"; wrote the results of {', '.join(results)} to {path}" if results
                                           else f"; nothing written to {path}"))  # (printed as it is: errors.py)
    leave_process_group()


def read_results(path):
    """The results file eval.py wrote at path earlier, None if there is none, or one line if the file there is
    something else (which is left alone)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            old = json.load(f)
        if not isinstance(old, dict) or not isinstance(old.get('results'), dict):
            raise ValueError('no results in it')
    except (OSError, ValueError) as e:
        raise UserError(f"{path} exists but is not an eval.py results file ({str(e).splitlines()[0][:80]}); "
                        f"it is left as it is: choose another --results_file") from None
    return old


def write_results(path, record):
    """Write the results to path without losing earlier ones: the file's `results` is this evaluation's,
    joined with the earlier ones of the same model for the tasks not run now, and `history` lists every
    earlier evaluation as it was written (each one appended). Written to a temp file and renamed, so an
    interrupted write leaves the old file. Returns how many earlier evaluations the file holds."""
    history = []
    old = read_results(path)
    if old is not None:
        history = old.pop('history', []) + [old]
        if old.get('model') == record['model']:
            record['results'] = {**{k: v for k, v in old['results'].items() if k not in record['results']},
                                 **record['results']}
    tmp = f"{path}.{os.getpid()}.tmp"  # (two evaluations writing at once each rename a whole file)
    try:
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump({**record, 'history': history}, f, indent=2)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}); choose another --results_file") from None
    return len(history)


def print_table(results):
    """A row per metric, the examples per second per task, and the mean of each task's primary number (acc_norm,
    else acc, else exact match) when several tasks ran."""
    print(f"{'task':<22} {'metric':<18} {'value':>10} {'stderr':>8}")
    for name, metrics in results.items():
        for k, v in metrics.items():
            if k.endswith('_stderr') or k in ('seconds', 'examples_per_s', 'num_fewshot'):
                continue
            err = metrics.get(f'{k}_stderr')
            value = f"{v:>10,}" if isinstance(v, int) else f"{v:>10.4f}"
            print(f"{name:<22} {k:<18} {value} {'' if err is None or math.isnan(err) else f'{err:>8.4f}'}")
        print(f"{name:<22} {'examples/s':<18} {metrics['examples_per_s']:>10.1f}   ({metrics['seconds']:.1f}s)")
    scored = {name: primary(m) for name, m in results.items() if primary(m) is not None}
    if len(scored) > 1:
        print(f"{'mean':<22} {'of ' + str(len(scored)) + ' tasks':<18} {sum(scored.values()) / len(scored):>10.4f}")


if __name__ == '__main__':
    main()  # a UserError prints one line and exits 1 (gpt/errors.py)
