"""eval.py and tasks.py against independent computations with transformers, on CPU with no network.

The model is a random transformers GPT2LMHeadModel (GPT-2's 50257-token vocabulary, 32 wide) saved with
save_pretrained; the reference side reads it with transformers' own model and tokenizes with transformers'
GPT-2 tokenizer built from the BPE files in ../shared (eval.py uses tiktoken), and follows the written
conventions of lm-evaluation-harness and the Hugging Face perplexity guide step by step.
"""
import json
import math
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
from conftest import ROOT, SHARED, run_inprocess

transformers = pytest.importorskip('transformers')

HELLASWAG = [  # the official field names; WikiHow-style brackets and double spaces exercise the clean-up
    dict(ind=4, activity_label='Removing ice from car', ctx_a='Then, the man writes over the snow covering the window '
         'of a car, and a woman wearing winter clothes smiles.', ctx_b='then', split='val', split_type='indomain',
         endings=[', the man adds wax to the windshield and cuts it.', ', a person board a ski lift, while two men '
                  'supporting the head of the person wearing winter clothes snow as the we girls sled.',
                  ', the man puts on a christmas coat, knitted with netting.', ', the man continues removing the snow '
                  'on his car.'], label=3, source_id='activitynet~v_-1IBHYS3L-Y'),
    dict(ind=5, activity_label='Baking cookies', ctx_a='A female chef in white uniform shows a stack of baking pans '
         'in a large kitchen presenting them.', ctx_b='the pans', split='val', split_type='indomain',
         endings=['contain egg yolks and baking soda.', 'are then sprinkled with brown sugar.',
                  'are placed in a strainer on the counter.', 'are filled with pastries and loaded into the oven.'],
         label=3, source_id='activitynet~v_-2dxp-mv2zo'),
    dict(ind=7, activity_label='Home and Garden', ctx_a='[header] How to keep a tidy garden [title] Pull weeds '
         'every week. [step] Weeds  grow fast.', ctx_b='', split='val', split_type='zeroshot',
         endings=['[substeps] Use gloves [title] Wear them.', 'Water the plants at noon [step] every day.',
                  'Dig  a hole.', 'Call a friend [title] and chat.'], label=0, source_id='wikihow~1'),
    dict(ind=9, activity_label='Sharpening knives', ctx_a='A man is holding a knife.', ctx_b='he',
         split='val', split_type='indomain', endings=['rubs it on a stone.', 'eats it.', 'throws it at a cake.',
                                                      'sings.'], label=0, source_id='activitynet~x'),
    dict(ind=11, activity_label='Playing piano', ctx_a='A girl sits at a piano.', ctx_b='she',
         split='val', split_type='indomain', endings=['plays a song.', 'closes the lid and leaves.', 'jumps.',
                                                      'paints the keys blue with a brush.'], label=1, source_id='y'),
]
LAMBADA = ["He looked at the door and then back at me. \"Are you coming or not?\" he asked. I nodded and followed him",
           "The recipe called for two eggs, but she only had one, so she borrowed another egg",
           "After hours of rain the river rose over its banks and flooded the fields near the river",
           "Alice opened the letter from her grandmother with trembling hands",
           "They sailed for weeks until at last they saw land"]


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
    """A random GPT-2 in transformers' format. Larger-than-default initial weights make its predictions peaked,
    so the choices differ by more than rounding."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                  initializer_range=0.3)
    d = tmp_path_factory.mktemp('hf_gpt2')
    transformers.GPT2LMHeadModel(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope='module')
def hf_model(hf_dir):
    return transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()


@pytest.fixture(scope='module')
def hf_tok():
    """transformers' GPT-2 tokenizer from the plain BPE files (the harness tokenizes with it; eval.py with tiktoken)."""
    bpe = SHARED / 'data' / 'gpt2'
    if not (bpe / 'encoder.json').exists():
        pytest.skip(f'{bpe} not found (the offline GPT-2 BPE stand-in)')
    # (positional: the keywords are vocab_file/merges_file before transformers 5, vocab/merges since)
    return transformers.GPT2TokenizerFast(str(bpe / 'encoder.json'), str(bpe / 'vocab.bpe'))


def write_jsonl(path, docs):
    path.write_text(''.join(json.dumps(d) + '\n' for d in docs))
    return path


@pytest.fixture(scope='module')
def hellaswag_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp('hs') / 'hellaswag_val.jsonl', HELLASWAG)


@pytest.fixture(scope='module')
def lambada_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp('lambada') / 'lambada_test.jsonl', [{'text': t} for t in LAMBADA])


# ----------------------------------------------------------------------------- the references

def harness_preprocess(text):
    # lm_eval/tasks/hellaswag/utils.py, written out again
    import re
    text = text.strip().replace(' [title]', '. ')
    return re.sub('\\[.*?\\]', '', text).replace('  ', ' ')


@torch.no_grad()
def ref_loglikelihood(model, tok, context, continuation):
    """(sum of log-probabilities, tokens, greedy) of a continuation, by the harness's HFLM recipe, with
    transformers' tokenizer and model."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, ctx = tok.encode(context + continuation), tok.encode(context)
    cont = whole[len(ctx):]
    logits = model(torch.tensor((ctx + cont)[:-1])[None]).logits[0, -len(cont):]
    logp = torch.log_softmax(logits.double(), -1)
    ll = sum(logp[i, t].item() for i, t in enumerate(cont))
    return ll, len(cont), all(logits[i].argmax().item() == t for i, t in enumerate(cont))


def ref_hellaswag(model, tok):
    """Per example: the four log-likelihoods, and the choices acc, acc_norm and acc_token pick."""
    out = []
    for d in HELLASWAG:
        query = harness_preprocess(d['activity_label'] + ': ' + d['ctx_a'] + ' ' + d['ctx_b'].capitalize())
        endings = [harness_preprocess(e) for e in d['endings']]
        scores = [ref_loglikelihood(model, tok, query, ' ' + e) for e in endings]
        ll = [s[0] for s in scores]
        pick = lambda v: max(range(len(v)), key=lambda i: (v[i], -i))  # first of equal maxima, like argmax
        out.append(dict(ll=ll, label=int(d['label']), acc=pick(ll),
                        acc_norm=pick([l / len(e) for l, e in zip(ll, endings)]),
                        acc_token=pick([l / s[1] for l, s in zip(ll, scores)])))
    return out


@torch.no_grad()
def ref_perplexity(model, ids, max_length, stride):
    """The Hugging Face perplexity guide's loop (https://huggingface.co/docs/transformers/perplexity), as written,
    returning the summed negative log-likelihood and the number of predicted tokens."""
    ids = torch.tensor(ids)[None]
    seq_len, nll, n_tokens, prev_end = ids.size(1), 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        loss = model(input_ids, labels=target_ids).loss
        n_valid = (target_ids[:, 1:] != -100).sum().item()  # labels are shifted inside the model
        nll += loss.item() * n_valid
        n_tokens += n_valid
        prev_end = end
        if end == seq_len:
            break
    return nll, n_tokens


def eval_json(tmp_path, *args, name='r.json'):
    """Run eval.py in this process; its JSON results."""
    out = tmp_path / name
    code, stdout, err = run_inprocess('eval.py', *args, f'--results_file={out}', '--progress=False', '--device=cpu')
    assert code == 0, err[-3000:]
    return json.loads(out.read_text())['results']


# ----------------------------------------------------------------------------- tests

def test_hellaswag_preprocessing_is_the_harness_one():
    from gpt.tasks import hellaswag_preprocess
    text = 'Home and Garden: [header] How to keep a tidy garden [title] Pull weeds every week. [step] Weeds  grow fast. '
    assert hellaswag_preprocess(text) == 'Home and Garden: How to keep a tidy garden. Pull weeds every week. Weeds grow fast.'


def test_hellaswag_matches_transformers(tmp_path, hf_dir, hf_model, hf_tok, hellaswag_file):
    from gpt.loading import load_model
    from gpt.tasks import choice_picks, load_tasks, score
    ref = ref_hellaswag(hf_model, hf_tok)
    model, meta, _ = load_model(str(hf_dir))
    task, = load_tasks(['hellaswag'], meta, model.config.block_size, data={'hellaswag': str(hellaswag_file)})
    results = score(model, task.requests, batch_size=3)  # batches that mix examples and pad
    ll = results[:, 0].view(len(HELLASWAG), 4)
    # sums of 20-80 float32 token log-probabilities of size 100-330: their rounding grows with the size (a few
    # float32 ulps of 3e-5 each), so the tolerance is relative; a wrong token or offset moves a sum by >= 1e-2
    torch.testing.assert_close(ll, torch.tensor([r['ll'] for r in ref], dtype=torch.float64), rtol=1e-5, atol=1e-5)
    picks = choice_picks(task.examples, results)
    for key in ('acc', 'acc_norm', 'acc_token'):
        assert picks[key] == [r[key] for r in ref], key
    # the three rules disagree somewhere, so each normalization is checked
    assert len({tuple(p) for p in picks.values()}) == 3, picks
    # the same through the script, its JSON against the reference's choices
    got = eval_json(tmp_path, f'--init_from={hf_dir}', '--tasks=hellaswag', f'--data={hellaswag_file}', '--batch_size=5')
    for key in ('acc', 'acc_norm', 'acc_token'):
        assert got['hellaswag'][key] == pytest.approx(sum(r[key] == r['label'] for r in ref) / len(ref)), key
    assert got['hellaswag']['n'] == len(HELLASWAG)
    limited = eval_json(tmp_path, f'--init_from={hf_dir}', '--tasks=hellaswag', f'--data={hellaswag_file}', '--limit=2')
    assert limited['hellaswag']['n'] == 2
    assert limited['hellaswag']['acc'] == pytest.approx(sum(r['acc'] == r['label'] for r in ref[:2]) / 2)


def test_lambada_matches_transformers(tmp_path, hf_dir, hf_model, hf_tok, lambada_file):
    ref = []
    for text in LAMBADA:  # lambada_openai: context = all but the last word, target = ' ' + last word
        words = text.split(' ')
        ref.append(ref_loglikelihood(hf_model, hf_tok, ' '.join(words[:-1]), ' ' + words[-1]))
    got = eval_json(tmp_path, f'--init_from={hf_dir}', '--tasks=lambada', f'--lambada_data={lambada_file}')['lambada']
    assert got['ppl'] == pytest.approx(math.exp(-sum(r[0] for r in ref) / len(ref)), rel=1e-5)
    assert got['acc'] == pytest.approx(sum(r[2] for r in ref) / len(ref))
    assert got['n'] == len(LAMBADA)


@pytest.mark.parametrize('block_size,stride,chars', [(16, 16, 600), (16, 5, 600), (16, 0, 600), (40, 0, 30)])
def test_perplexity_matches_the_hf_guide(tmp_path, hf_dir, hf_model, hf_tok, shakespeare_text, block_size, stride,
                                         chars):
    """Disjoint windows, a sliding window, the default stride (half the context), and a text shorter than the
    context (one window: transformers' own loss). Windows hold block_size inputs, so the guide's max_length is
    block_size + 1 (the model has 64 positions; eval.py runs it at block_size). BPE texts start with
    <|endoftext|>, as the harness's rolling log-likelihood does."""
    text = shakespeare_text.read_text(encoding='utf-8')[:chars]
    path = tmp_path / 'text.txt'
    path.write_text(text, encoding='utf-8')
    ids = [hf_tok.eos_token_id] + hf_tok.encode(text)
    nll, n = ref_perplexity(hf_model, ids, block_size + 1, stride or block_size // 2)
    assert n == len(ids) - 1  # every token but the first predicted once
    if len(ids) <= block_size + 1:
        with torch.no_grad():
            assert nll / n == pytest.approx(hf_model(torch.tensor(ids)[None], labels=torch.tensor(ids)[None]).loss.item(),
                                            rel=1e-6)
    got = eval_json(tmp_path, f'--init_from={hf_dir}', '--tasks=perplexity', f'--perplexity_data={path}',
                    f'--block_size={block_size}', f'--stride={stride}', '--batch_size=4')['perplexity']
    assert got['tokens'] == n
    assert got['loss'] == pytest.approx(nll / n, rel=1e-5)
    assert got['ppl'] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert got['bits_per_byte'] == pytest.approx(nll / math.log(2) / len(text.encode('utf-8')), rel=1e-5)


def test_evaluate_for_train_py(tmp_path, hf_dir, hellaswag_file, lambada_file):
    """tasks.evaluate, as train.py calls it on its model mid-training (train mode, dropout on): eval.py's numbers
    under 'task/metric' keys, and the model is left in train mode."""
    from gpt.loading import load_model
    from gpt.tasks import evaluate, load_tasks
    model, meta, _ = load_model(str(hf_dir), dropout=0.5)
    model.train()
    task_list = load_tasks(['hellaswag', 'lambada'], meta, model.config.block_size, limit=4,
                           data={'hellaswag': str(hellaswag_file), 'lambada': str(lambada_file)})
    got = evaluate(model, task_list, batch_size=4)
    assert model.training
    want = eval_json(tmp_path, f'--init_from={hf_dir}', '--tasks=hellaswag,lambada', f'--hellaswag_data={hellaswag_file}',
                     f'--lambada_data={lambada_file}', '--limit=4')
    for task, metrics in want.items():
        for k, v in metrics.items():
            if k not in ('seconds', 'examples_per_s', 'num_fewshot'):
                assert got[f'{task}/{k}'] == pytest.approx(v, rel=1e-9, nan_ok=True), (task, k)


def test_perplexity_on_a_dataset_equals_its_joined_text(tmp_path, hf_dir, shakespeare_text):
    """hf:<name or folder>[:config[:split]] reads a datasets text column and joins the rows with blank lines, as the
    Hugging Face perplexity guide does with WikiText: the same numbers as that text in a file."""
    rows = shakespeare_text.read_text(encoding='utf-8')[:900].split('\n\n')
    folder = tmp_path / 'local_dataset'
    folder.mkdir()
    write_jsonl(folder / 'train.jsonl', [{'text': r} for r in rows])
    (tmp_path / 'joined.txt').write_text('\n\n'.join(rows), encoding='utf-8')
    args = (f'--init_from={hf_dir}', '--tasks=perplexity', '--stride=32')
    from_dataset = eval_json(tmp_path, *args, f'--perplexity_data=hf:{folder}::train', name='a.json')['perplexity']
    from_file = eval_json(tmp_path, *args, f'--perplexity_data={tmp_path / "joined.txt"}', name='b.json')['perplexity']
    for k in ('loss', 'tokens', 'bytes', 'bits_per_byte'):
        assert from_dataset[k] == pytest.approx(from_file[k], rel=1e-9), k


@pytest.fixture(scope='module')
def char_ckpt(tmp_path_factory, char_data):
    """A random character-level model saved as train.py saves a checkpoint, with the dataset's metadata."""
    from gpt.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    from model import GPT, GPTConfig
    meta = json.loads((char_data / 'meta.json').read_text())
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=meta['vocab_size']))
    out = tmp_path_factory.mktemp('char_run')
    save_checkpoint(dict(format=CHECKPOINT_FORMAT, model_args=asdict(model.config), model=model.state_dict(),
                         iter_num=0, best_val_loss=9.9, data_meta=meta), str(out / 'ckpt.pt'))
    return out, model


def test_char_model_perplexity_on_prepared_data(tmp_path, char_ckpt, char_data):
    """Bits per byte of a character model on its prepared val split: the windows' losses from our own forward,
    and bytes = predicted characters (Shakespeare is ASCII)."""
    import numpy as np
    out, model = char_ckpt
    got = eval_json(tmp_path, f'--out_dir={out}', '--tasks=perplexity', f'--perplexity_data={char_data}',
                    '--limit=3', '--stride=32')['perplexity']
    val = torch.from_numpy(np.fromfile(char_data / 'val.bin', dtype=np.uint16).astype(np.int64))
    with torch.no_grad():  # three disjoint windows of 32 inputs, each predicting its 32 next characters
        losses = [model(val[i:i + 32][None], val[i + 1:i + 33][None])[1].item() for i in (0, 32, 64)]
    assert got['tokens'] == got['bytes'] == 96
    assert got['loss'] == pytest.approx(sum(losses) / 3, rel=1e-5)
    assert got['bits_per_byte'] == pytest.approx(got['loss'] / math.log(2), rel=1e-6)


def torchrun_eval(args, nproc, out):
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR',
                                                            'MASTER_PORT')}
    cmd = [sys.executable] + (['-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}']
                              if nproc > 1 else [])
    p = subprocess.run(cmd + ['eval.py', *args, f'--results_file={out}', '--progress=False', '--device=cpu'], cwd=ROOT,
                       env={**env, 'OMP_NUM_THREADS': '1'}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_processes_give_the_numbers_of_one(tmp_path, hf_dir, hellaswag_file, lambada_file, shakespeare_text):
    text = tmp_path / 'text.txt'
    text.write_text(shakespeare_text.read_text(encoding='utf-8')[:800], encoding='utf-8')
    args = [f'--init_from={hf_dir}', '--tasks=hellaswag,lambada,perplexity', f'--hellaswag_data={hellaswag_file}',
            f'--lambada_data={lambada_file}', f'--perplexity_data={text}', '--stride=24', '--batch_size=3']
    one = torchrun_eval(args, 1, tmp_path / 'one.json')
    two = torchrun_eval(args, 2, tmp_path / 'two.json')
    assert two['world_size'] == 2 and one['world_size'] == 1
    for task, metrics in one['results'].items():
        for k, v in metrics.items():
            if k not in ('seconds', 'examples_per_s'):
                assert two['results'][task][k] == pytest.approx(v, rel=1e-9, nan_ok=True), (task, k)


# ----------------------------------------------------------------------------- one-line errors

def assert_error(code, err, *words):
    """Exit status 1 and one `error: ...` line, no traceback (transformers' loading bar may come before it)."""
    line = err.strip().splitlines()[-1]
    assert code == 1 and line.startswith('error: ') and 'Traceback' not in err, err[-2000:]
    for w in words:
        assert w in line, line


def test_errors(tmp_path, monkeypatch, hf_dir, char_ckpt, hellaswag_file):
    from gpt import taskdata
    monkeypatch.setattr(taskdata, 'CACHE_DIR', str(tmp_path / 'cache'))  # no downloaded copy; conftest sets offline mode
    base = (f'--init_from={hf_dir}', '--device=cpu', '--progress=False', f'--results_file={tmp_path / "r.json"}')
    assert_error(*run_inprocess('eval.py', *base, '--tasks=hellaswag,winogrand')[::2], 'unknown task winogrand')
    assert_error(*run_inprocess('eval.py', *base, '--tasks=hellaswag')[::2], 'offline', 'Rowan/hellaswag',
                 str(tmp_path / 'cache' / 'hellaswag' / 'validation.jsonl'), '--hellaswag_data')
    assert_error(*run_inprocess('eval.py', *base, '--tasks=lambada')[::2], 'EleutherAI/lambada_openai', 'split test')
    assert_error(*run_inprocess('eval.py', *base, '--tasks=hellaswag', f'--data={hellaswag_file}',
                                '--num_fewshot=2')[::2], 'no train split in', 'few-shot')
    assert_error(*run_inprocess('eval.py', f'--out_dir={char_ckpt[0]}', *base[1:], '--tasks=hellaswag',
                                f'--data={hellaswag_file}')[::2], 'character vocabulary', 'bits_per_byte')
    long_mc = write_jsonl(tmp_path / 'mc.jsonl', [dict(context='Yes.', choices=['a', 'b'], label=1),
                                                  dict(context='Yes.', choices=['a', 'word ' * 30], label=0)])
    assert_error(*run_inprocess('eval.py', *base, '--tasks=mc', f'--mc_data={long_mc}', '--block_size=16')[::2],
                 "mc: example 2's continuation is 31 tokens, longer than the model's context (16)")
    bad_mc = write_jsonl(tmp_path / 'bad.jsonl', [dict(context='Yes.', choices=['a', 'b'], label=2)])
    assert_error(*run_inprocess('eval.py', *base, '--tasks=mc', f'--data={bad_mc}')[::2], 'label 2 is not an index')
    odd_mc = write_jsonl(tmp_path / 'odd.jsonl', [dict(context='Yes.', options=['a', 'b'], label=0)])
    assert_error(*run_inprocess('eval.py', *base, '--tasks=mc', f'--data={odd_mc}')[::2], 'mc: example 1',
                 "lacks what the task reads (KeyError: 'choices')")
    assert_error(*run_inprocess('eval.py', *base, '--tasks=mc')[::2], '--mc_data')
    assert_error(*run_inprocess('eval.py', *base, '--tasks=perplexity', f'--perplexity_data={hellaswag_file}',
                                '--stride=99')[::2], 'stride must be in 1..block_size (64)')
    assert_error(*run_inprocess('eval.py', *base, '--tasks=perplexity', '--perplexity_data=no_such_thing')[::2],
                 'neither a text file')
    assert_error(*run_inprocess('eval.py', *base, '--tasks=mc,hellaswag', f'--data={bad_mc}')[::2], '--data is for one task')


def test_bench_eval_mode(hellaswag_file):
    """bench.py --mode=eval times eval.py's scoring against a plain transformers loop, and both give the same metrics
    (the lm_eval variant: tests/test_harness.py)."""
    from conftest import run
    out = run('bench.py', '--mode=eval', '--model=gpt2', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=64',
              f'--eval_data={hellaswag_file}', '--iters=1', '--device=cpu', '--threads=1', '--variants=ours,hf').stdout
    assert 'hellaswag: 5 examples (20 scored sequences' in out, out
    assert 'same metrics, ours and hf: 3 of 3' in out, out
    for variant in ('hf', 'ours'):
        assert any(line.startswith(variant + ' ') for line in out.splitlines()), out


# ----------------------------------------------------------------------------- the suite, few-shot, its data

@pytest.fixture(scope='module')
def suite_data(tmp_path_factory):
    import harness_data  # (tests/: the stand-in rows in each hub dataset's schema)
    return harness_data.write(tmp_path_factory.mktemp('suite'))


def test_suite_few_shot_table_and_results_file(tmp_path, hf_dir, suite_data):
    """--tasks=suite runs the ten tasks and prints their mean; a K = 3 run is filed per task under <task>_3shot
    with its K, and a later 0-shot run keeps it (tests/test_harness.py checks the numbers against the harness)."""
    from gpt.tasks import SUITES
    flags = [f'--{t}_data={suite_data[t]}' for t in SUITES['suite']]
    flags = [f.replace('--lambada_openai_data', '--lambada_data') for f in flags]
    out = tmp_path / 'r.json'
    base = ('eval.py', f'--init_from={hf_dir}', '--device=cpu', '--progress=False', f'--results_file={out}', *flags)
    code, stdout, err = run_inprocess(*base, '--tasks=suite', '--num_fewshot=3')
    assert code == 0, err[-3000:]
    results = json.loads(out.read_text())['results']
    assert sorted(results) == sorted(f'{t}_3shot' for t in SUITES['suite'])
    assert all(r['num_fewshot'] == 3 and r['n'] == 6 for r in results.values())
    from gpt.tasks import primary
    mean = sum(primary(r) for r in results.values()) / 10
    assert f"{'mean':<22} {'of 10 tasks':<18} {mean:>10.4f}" in stdout, stdout
    assert 'arc_easy_3shot         acc_norm' in stdout
    code, stdout, err = run_inprocess(*base, '--tasks=arc_easy', '--num_fewshot=0')
    assert code == 0, err[-3000:]
    record = json.loads(out.read_text())
    assert set(record['results']) == {'arc_easy'} | set(results) and len(record['history']) == 1
    assert record['results']['arc_easy']['num_fewshot'] == 0 and 'mean' not in stdout


def test_task_data_from_the_hub_is_cached_and_read_in_each_format(tmp_path, monkeypatch, suite_data):
    """Without local files a task's split comes from its hub dataset (the harness's id, config and split), once:
    the rows are cached under data/eval/<task>/<split>.jsonl and read from there next time. Local folders may
    hold .jsonl, .json or .parquet files; rows without a field the task reads are one line naming it."""
    import datasets
    import harness_data
    from gpt import hubdata, taskdata
    from gpt.tasks import load_tasks
    monkeypatch.setattr(taskdata, 'CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '0')
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '0')
    calls = []

    def hub(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(harness_data.TASKS['arc_challenge']['splits'][split])
    monkeypatch.setattr(hubdata, 'load_dataset', hub)
    meta = {'tokenizer': 'gpt2'}
    want, = load_tasks(['arc_challenge'], meta, 1024, num_fewshot=2, data={'arc_challenge': str(suite_data['arc_challenge'])})
    for _ in range(2):
        got, = load_tasks(['arc_challenge'], meta, 1024, num_fewshot=2)
        assert got.requests == want.requests and got.examples == want.examples
    assert calls == [('allenai/ai2_arc', 'ARC-Challenge', 'test'), ('allenai/ai2_arc', 'ARC-Challenge', 'train')]
    assert sorted(os.listdir(tmp_path / 'cache' / 'arc_challenge')) == ['test.jsonl', 'train.jsonl']

    folder = tmp_path / 'formats'
    folder.mkdir()
    rows = harness_data.TASKS['arc_challenge']['splits']
    datasets.Dataset.from_list(rows['test']).to_parquet(str(folder / 'test.parquet'))
    (folder / 'train.json').write_text(json.dumps(rows['train']))
    got, = load_tasks(['arc_challenge'], meta, 1024, num_fewshot=2, data={'arc_challenge': str(folder)})
    assert got.requests == want.requests

    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'test.jsonl').write_text(''.join(json.dumps({k: v for k, v in r.items() if k != 'question'}) + '\n'
                                            for r in rows['test']))
    with pytest.raises(Exception, match=r"arc_challenge: example 1 \(or its few-shot examples\) lacks what the task "
                                        r"reads \(KeyError: 'question'\)"):
        load_tasks(['arc_challenge'], meta, 1024, data={'arc_challenge': str(bad)})
    (bad / 'test.jsonl').write_text('{"question": \n')
    with pytest.raises(Exception, match='test.jsonl'):
        load_tasks(['arc_challenge'], meta, 1024, data={'arc_challenge': str(bad)})


def test_two_processes_answer_as_one(tmp_path, hf_dir, suite_data):
    """Few-shot scoring and generation under torchrun: each rank answers its share of the prompts and every rank
    gets all the texts in order. The TriviaQA rows' gold answers are made to be what one process generates for
    half of them, so a text given to the wrong example changes the score."""
    import harness_data
    from gpt.loading import load_model
    from gpt.tasks import load_tasks, run
    from gpt.scoring import generate
    model, meta, _ = load_model(str(hf_dir))
    task, = load_tasks(['triviaqa'], meta, model.config.block_size, data={'triviaqa': str(suite_data['triviaqa'])},
                       num_fewshot=2, max_gen_toks=6)
    texts = generate(model, [p for p, _ in task.prompts], task.max_gen_toks, task.stops, task.decode, task.eot)
    assert len(set(texts)) > 1, texts  # (different answers: a mix-up would show)
    folder = tmp_path / 'triviaqa'
    folder.mkdir()
    rows = harness_data.TASKS['triviaqa']['splits']
    (folder / 'train.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows['train']))
    gold = [dict(r, answer={**r['answer'], 'aliases': [t.strip() if i % 2 == 0 else 'no such answer']})
            for i, (r, t) in enumerate(zip(rows['validation'], texts))]
    (folder / 'validation.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in gold))
    task, = load_tasks(['triviaqa'], meta, model.config.block_size, data={'triviaqa': str(folder)}, num_fewshot=2,
                       max_gen_toks=6)
    assert run(model, task)['exact_match'] == 0.5
    args = [f'--init_from={hf_dir}', '--tasks=triviaqa,arc_easy', f'--triviaqa_data={folder}',
            f"--arc_easy_data={suite_data['arc_easy']}", '--num_fewshot=2', '--max_gen_toks=6', '--batch_size=2']
    one = torchrun_eval(args, 1, tmp_path / 'one.json')
    two = torchrun_eval(args, 2, tmp_path / 'two.json')
    assert two['world_size'] == 2 and one['results']['triviaqa_2shot']['exact_match'] == 0.5
    for task, metrics in one['results'].items():
        for k, v in metrics.items():
            if k not in ('seconds', 'examples_per_s'):
                assert two['results'][task][k] == pytest.approx(v, rel=1e-9, nan_ok=True), (task, k)
