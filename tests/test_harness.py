"""The evaluation suite against lm-evaluation-harness itself (lm_eval, installed by make setup and CI): the harness's
own task definitions, run in-process by gpt/harness.py on stand-in rows in each hub dataset's schema
(tests/harness_data.py), with transformers' GPT-2 and tokenizer; this repo's side reads the same folders with
gpt/tasks.py, its own model code and tiktoken. For every task, at K = 0 and K = 3: the same request texts byte for
byte (contexts with their few-shot examples, continuations), every log-likelihood within 1e-4 relative and the same
greedy flags, the same metrics; for the generation tasks, the same answers."""
import os

import pytest
import torch
from conftest import SHARED

transformers = pytest.importorskip('transformers')
pytest.importorskip('lm_eval', reason='lm-evaluation-harness is not installed (pip install lm_eval)')
import harness_data  # noqa: E402

pytestmark = pytest.mark.slow  # (the harness runs twelve tasks twice: about a minute)
ALL = tuple(harness_data.TASKS)
GEN_TOKENS = 16  # generation budget on both sides (the harness's default 256 only slows a random model down)


def make_model(folder, n_positions):
    """A random GPT-2 in transformers' format; large initial weights make its predictions peaked, so near-ties
    (which could flip a greedy token or a pick between implementations) are rare."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=n_positions, n_embd=32, n_layer=2, n_head=2,
                                  initializer_range=0.3)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    bpe = SHARED / 'data' / 'gpt2'
    if not (bpe / 'encoder.json').exists():
        pytest.skip(f'{bpe} not found (the offline GPT-2 BPE stand-in)')
    root = tmp_path_factory.mktemp('harness')
    transformers.GPT2TokenizerFast(str(bpe / 'encoder.json'), str(bpe / 'vocab.bpe')).save_pretrained(root / 'tok')
    return dict(root=root, tok=root / 'tok', data=harness_data.write(root / 'data'),
                long=make_model(root / 'gpt2_1024', 1024), short=make_model(root / 'gpt2_64', 64))


def ours(model_dir, tasks, data, k):
    from gpt.loading import load_model
    from gpt.tasks import load_tasks
    model, meta, _ = load_model(str(model_dir))
    return model, load_tasks(list(tasks), meta, model.config.block_size, data={t: str(data[t]) for t in tasks},
                             num_fewshot=k, max_gen_toks=GEN_TOKENS)


def compare(setup, model_dir, tasks, k):
    from gpt.harness import run_harness
    from gpt.tasks import run, score
    from gpt.scoring import generate
    from gpt.tokendata import get_tokenizer
    harness = run_harness(model_dir, tasks, {t: setup['data'][t] for t in tasks}, num_fewshot=k,
                          tokenizer=setup['tok'], batch_size=4, max_gen_toks=GEN_TOKENS)
    model, task_list = ours(model_dir, tasks, setup['data'], k)
    decode = get_tokenizer({'tokenizer': 'gpt2'})[1]
    checked = []
    for name, task in zip(tasks, task_list):
        samples, theirs = harness['samples'][name], harness['results'][name]
        if task.prompts:  # generation: one harness record per document and answer filter; the prompts and answers
            firsts = [s for s in samples if s['filter'] == samples[0]['filter']]
            for (p, _), s in zip(task.prompts, firsts, strict=True):  # (a cut prompt is the end of the harness's)
                assert s['arguments'][0][0].endswith(decode(p)) if task.truncated else decode(p) == s['arguments'][0][0]
            texts = generate(model, [p for p, _ in task.prompts], task.max_gen_toks, task.stops, task.decode,
                             task.eot, batch_size=3)
            assert texts == [s['resps'][0][0] for s in firsts], name
            got = task.metrics(texts)
            want = {k: v for k, v in theirs.items() if k.startswith('exact_match,')}
            assert sorted(v for k, v in got.items() if k.startswith('exact_match') and 'stderr' not in k) == \
                pytest.approx(sorted(float(v) for v in want.values())), name
        else:
            args = [a for s in samples for a in s['arguments']]
            resps = [r[0] for s in samples for r in s['resps']]
            assert len(task.requests) == len(args), name
            for (c, x), a in zip(task.requests, args):  # (a cut context is the end of the harness's)
                assert (a[0] + a[1]).endswith(decode(c) + decode(x)) if task.truncated else \
                    decode(c) + decode(x) == a[0] + a[1], name
            results = score(model, task.requests, batch_size=3, groups=task.groups)
            torch.testing.assert_close(results[:, 0], torch.tensor([float(r[0]) for r in resps], dtype=torch.float64),
                                       rtol=1e-4, atol=1e-6, msg=name)
            assert results[:, 2].tolist() == [float(bool(r[1])) for r in resps], name
            got = run(model, task, batch_size=5)
            for metric, value in theirs.items():
                if not metric.endswith(',none') or 'stderr' in metric:
                    continue
                key = {'perplexity': 'ppl'}.get(metric[:-5], metric[:-5])
                assert got[key] == pytest.approx(float(value), rel=1e-4), (name, metric)
        checked.append(name)
    return task_list, checked


@pytest.mark.parametrize('k', [0, 3])
def test_every_task_equals_the_harness(setup, k):
    task_list, checked = compare(setup, setup['long'], ALL, k)
    assert checked == list(ALL)
    assert all(t.num_fewshot == k and not t.truncated for t in task_list)


def test_requests_longer_than_the_context_are_cut_as_the_harness_cuts_them(setup):
    """A 64-token GPT-2 at K = 3: the few-shot contexts do not fit; both sides cut the start of each request's
    context (generation: of its prompt, to leave room for the answer) and score the same tokens."""
    tasks = ('boolq', 'hellaswag', 'winogrande', 'triviaqa')
    task_list, checked = compare(setup, setup['short'], tasks, 3)
    assert checked == list(tasks)
    assert all(t.truncated for t in task_list), [(t.name, t.truncated) for t in task_list]


def test_exact_match_normalizes_as_the_harness(setup):
    """The answer filters and exact_match's options on written answers, against the harness's own filter and
    metric functions (a random model's answers are all wrong, so the comparison above cannot tell)."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter
    from gpt.tasks import SPECS, generation_metrics
    trivia = SPECS['triviaqa']
    golds = ['The Beatles', "Beatles, the", 'U.S.A.']
    for text in [' the beatles', 'The Beatles!', 'Beatles', ' usa', 'USA.', 'the  beatles', '']:
        want = float(exact_match_hf_evaluate([text.strip()] * 3, golds, ignore_case=True,
                                             ignore_punctuation=True)['exact_match'] > 0)
        assert generation_metrics(trivia, [(None, golds)], [text])['exact_match'] == want, text
    gsm = SPECS['gsm8k']
    gold = 'She pays 3 + 4 = <<3+4=7>>7 dollars.\n#### 1,007'
    for text in [' 3 + 4 = 7 so #### 1,007', ' the answer is $1,007.', ' #### 1007\n', ' no number', ' 12 then 1007.']:
        got = generation_metrics(gsm, [(None, [gold])], [text])
        for name, f in (('strict', RegexFilter(r"#### (\-?[0-9\.\,]+)")),
                        ('flexible', RegexFilter(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1))):
            answer = f.apply([[text]], [None])[0][0]
            want = exact_match_hf_evaluate([answer], [gold], ignore_case=True,
                                           regexes_to_ignore=[',', '\\$', '(?s).*#### ', '\\.$'])['exact_match']
            assert got[f'exact_match_{name}'] == want, (text, name)
    assert os.environ.get('HF_HUB_OFFLINE') == '1'  # (conftest: nothing above may reach the hub)


def test_bench_against_the_harness(setup):
    """bench.py --mode=eval --variants=ours,lm_eval: both on the same rows at K = 3, the same metrics for every task."""
    from conftest import run
    tasks = ('arc_easy', 'copa', 'lambada_openai', 'triviaqa')
    out = run('bench.py', '--mode=eval', f"--init_from={setup['long']}", f"--eval_tasks={','.join(tasks)}",
              '--num_fewshot=3', f"--eval_data={setup['root'] / 'data'}", f"--hf_tokenizer={SHARED / 'data' / 'gpt2'}",
              '--iters=1', '--device=cpu', '--max_new_tokens=8', '--variants=ours,lm_eval').stdout
    assert '24 examples' in out and 'K=3' in out, out
    assert 'same metrics, ours and lm_eval: 6 of 6' in out, out  # acc, acc_norm; acc; acc, ppl; exact_match
    assert all(any(line.startswith(v + ' ') for line in out.splitlines()) for v in ('ours', 'lm_eval')), out
