"""
lm-evaluation-harness itself, run in-process on local copies of its datasets: the reference a test or a benchmark
compares this repo's scores (gpt/tasks.py) with, offline. The harness's tasks read their data from the Hugging
Face hub; while run_harness runs, each task named in `data` reads root/<task>/<split>.jsonl instead (rows in the
hub dataset's schema, as tests/harness_data.py writes them), and a task without a folder is an error rather than
a download. The model and tokenizer are local folders (save_pretrained), loaded by the harness's own HFLM.

    from gpt.harness import run_harness
    out = run_harness('out/hf', ['hellaswag'], {'hellaswag': 'data/harness/hellaswag'}, num_fewshot=0)
    out['results']['hellaswag']['acc_norm,none'], out['samples']['hellaswag'][0]['arguments'], out['seconds']
"""
import contextlib
import json
import os
import pathlib
import time
from unittest import mock

from gpt.errors import UserError


def read_splits(folder):
    """{split: [row, ...]} from folder/<split>.jsonl, one JSON object a line."""
    splits = {}
    for path in sorted(pathlib.Path(folder).glob('*.jsonl')):
        with open(path, encoding='utf-8') as f:
            splits[path.stem] = [json.loads(line) for line in f if line.strip()]
    if not splits:
        raise UserError(f"no <split>.jsonl files in {folder}")
    return splits


@contextlib.contextmanager
def local_data(data):
    """While inside, a harness task named in data ({task: folder}) loads its splits from that folder. Matched by
    task name, not dataset path: arc_easy and arc_challenge share allenai/ai2_arc."""
    import datasets
    from lm_eval.api.task import ConfigurableTask
    folders = {task: pathlib.Path(folder) for task, folder in data.items()}

    def download(self, dataset_kwargs=None, **kwargs):
        # stands in for ConfigurableTask.download, whose one job is to set self.dataset from load_dataset
        task = self.config.task
        if task not in folders:
            raise UserError(f"no local data for harness task {task!r} (have: {', '.join(folders) or 'none'})")
        splits = read_splits(folders[task])
        self.dataset = datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s, rows in splits.items()})

    with mock.patch.object(ConfigurableTask, 'download', download):
        yield


def run_harness(model_dir, tasks, data, num_fewshot=None, tokenizer=None, batch_size=8, device='cpu', limit=None,
                dtype='float32', max_gen_toks=None):
    """Evaluate the model in model_dir on harness tasks (names), each reading data[task] (a folder). Returns
    {'results': {task: lm_eval's metrics}, 'samples': {task: per-document records sorted by doc_id},
    'seconds': wall time of simple_evaluate, the model load excluded}. num_fewshot None keeps each task's own
    default (0, or 5 for gsm8k); max_gen_toks caps generation (the harness's default is 256 tokens)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("lm_eval is not installed: pip install lm_eval") from None
    # absolute paths: HFLM asks the hub for the model's sha when `pretrained` reads as a repo id (like out/hf)
    model_dir = os.path.abspath(model_dir)
    tokenizer = os.path.abspath(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer or model_dir
    lm = HFLM(pretrained=model_dir, tokenizer=tokenizer, batch_size=batch_size, device=device, dtype=dtype)
    task_manager = TaskManager()  # indexes the task YAMLs: seconds, and no part of the evaluation being timed
    # HFLM takes no max_gen_toks; a gen_kwargs entry updates each generation task's own settings (its stop
    # strings stay)
    gen_kwargs = {'max_gen_toks': max_gen_toks} if max_gen_toks else None
    with local_data(data):
        start = time.perf_counter()
        out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                      log_samples=True, gen_kwargs=gen_kwargs, task_manager=task_manager)
        seconds = time.perf_counter() - start
    samples = {task: sorted(rows, key=lambda r: r['doc_id']) for task, rows in out['samples'].items()}
    return {'results': out['results'], 'samples': samples, 'seconds': seconds}
