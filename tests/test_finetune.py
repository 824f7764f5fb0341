"""GPT-1's fine-tuning (heads.py, finetune.py): the paper's input layouts, padded batches against single
examples, the objective L3 = L2 + lm_coef * L1 against a direct computation, the multiple-choice head against
transformers' OpenAIGPTDoubleHeadsModel, and an end-to-end run on the Shakespeare tasks."""
import json

import pytest
import torch
from conftest import assert_same_state, events, interrupt, load_ckpt, run, run_inprocess, tiny

from gpt.chat import add_tokens
from gpt.heads import TaskModel, collate, transform
from model import GPT, GPTConfig

S, D, E = 100, 101, 102  # start, delim, extract


def test_input_layouts_follow_the_paper():
    a, b, c = [1, 2, 3], [4, 5], [6]
    assert transform('classification', [a], (S, D, E), 64) == [[S, 1, 2, 3, E]]
    assert transform('entailment', [a, b], (S, D, E), 64) == [[S, 1, 2, 3, D, 4, 5, E]]
    assert transform('similarity', [a, b], (S, D, E), 64) == [[S, 1, 2, 3, D, 4, 5, E], [S, 4, 5, D, 1, 2, 3, E]]
    assert transform('multiple_choice', [a, b, c], (S, D, E), 64) == [[S, 1, 2, 3, D, 4, 5, E], [S, 1, 2, 3, D, 6, E]]


def test_truncation_cuts_the_longest_field():
    premise, hypothesis = list(range(1, 11)), [20, 21]
    assert transform('entailment', [premise, hypothesis], (S, D, E), 9) == [[S, 1, 2, 3, 4, D, 20, 21, E]]
    # a multiple-choice context loses its start (the end leads into the answers)
    assert transform('multiple_choice', [premise, [20], [21, 22]], (S, D, E), 8) == \
        [[S, 8, 9, 10, D, 20, E], [S, 8, 9, 10, D, 21, 22, E]]
    with pytest.raises(ValueError, match="cannot hold even the special tokens"):
        transform('entailment', [[1], [2]], (S, D, E), 2)


def tiny_task_model(task, num_labels=3, seed=0):
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=100))
    gpt, specials = add_tokens(gpt, 3)
    return TaskModel(gpt, task, num_labels).eval(), specials


@pytest.mark.parametrize('task, fields', [
    ('classification', [[[1, 2, 3]], [[4, 5, 6, 7, 8, 9]], [[10]]]),
    ('entailment', [[[1, 2], [3]], [[4, 5, 6, 7], [8, 9, 10]]]),
    ('similarity', [[[1, 2], [3]], [[4, 5, 6, 7], [8, 9, 10, 11, 12]]]),
    ('multiple_choice', [[[1, 2], [3], [4, 5, 6]], [[7, 8, 9, 10], [11], [12, 13]]]),
])
def test_padded_batch_equals_examples_one_at_a_time(task, fields):
    model, specials = tiny_task_model(task)
    examples = [transform(task, f, specials, 32) for f in fields]
    with torch.no_grad():
        idx, _, last = collate(examples)
        batched, _ = model(idx, last, len(examples))
        for i, ex in enumerate(examples):
            idx, _, last = collate([ex])
            alone, _ = model(idx, last, 1)
            torch.testing.assert_close(batched[i:i + 1], alone, atol=1e-5, rtol=0)


def test_new_tokens_keep_the_pretrained_embedding():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50))
    bigger, ids = add_tokens(gpt, 3)
    assert ids == [50, 51, 52] and bigger.config.vocab_size == 53
    assert torch.equal(bigger.transformer.wte.weight[:50], gpt.transformer.wte.weight)
    assert bigger.lm_head.weight is bigger.transformer.wte.weight
    new = bigger.transformer.wte.weight[50:]
    assert 0.005 < new.std().item() < 0.05 and not torch.equal(new[0], new[1])
    x = torch.randint(0, 50, (2, 16))
    with torch.no_grad():  # the pretrained model's predictions over the old vocabulary are unchanged
        torch.testing.assert_close(bigger(x)[0][..., :50], gpt(x)[0][..., :50], atol=1e-6, rtol=0)


@pytest.mark.parametrize('task', ['classification', 'multiple_choice', 'similarity'])
def test_objective_is_task_loss_plus_weighted_lm_loss(task):
    model, specials = tiny_task_model(task)
    fields = ([[[1, 2, 3]], [[4, 5]]] if task == 'classification' else
              [[[1, 2], [3], [4, 5]], [[6], [7, 8], [9]]] if task == 'multiple_choice' else [[[1, 2], [3]], [[4], [5, 6]]])
    examples = [transform(task, f, specials, 32) for f in fields]
    idx, targets, last = collate(examples)
    labels = torch.tensor([1.5, -0.5]) if task == 'similarity' else torch.tensor([1, 0])
    out, lm_loss = model(idx, last, 2, targets)
    got = model.loss(out, labels, lm_loss, 0.5)
    # by hand: LM loss over every real position predicting the next token of its own sequence
    logits = model.gpt(idx)[0][..., :model.gpt.config.vocab_size].log_softmax(-1)
    terms = [-logits[i, t, seq[t + 1]] for i, seq in enumerate(s for ex in examples for s in ex)
             for t in range(len(seq) - 1)]
    lm = torch.stack(terms).mean()
    task_loss = ((out - labels) ** 2).mean() if task == 'similarity' else -out.log_softmax(-1)[[0, 1], labels].mean()
    torch.testing.assert_close(got, task_loss + 0.5 * lm, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model.loss(out, labels, lm_loss, 0), task_loss, atol=1e-6, rtol=1e-6)


def test_multiple_choice_head_matches_transformers_double_heads(tmp_path):
    transformers = pytest.importorskip('transformers')
    from gpt import hf
    torch.manual_seed(0)
    theirs = transformers.OpenAIGPTDoubleHeadsModel(transformers.OpenAIGPTConfig(
        n_layer=2, n_head=2, n_embd=32, n_positions=24, vocab_size=60)).eval()
    theirs.save_pretrained(tmp_path)
    model = TaskModel(hf.from_pretrained(str(tmp_path)), 'multiple_choice', 1).eval()
    model.head.load_state_dict(hf.load_summary_head(str(tmp_path)))
    ids = torch.randint(0, 60, (3, 4, 24))  # 3 questions, 4 answers each
    cls = torch.randint(5, 24, (3, 4))       # where each answer's extract token is
    with torch.no_grad():
        want = theirs(ids, mc_token_ids=cls).mc_logits
        got, _ = model(ids.view(12, 24), cls.view(12), 3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # and back: our model exported as a DoubleHeads directory gives transformers the same scores
    hf.save_task_model(model, str(tmp_path / 'back'))
    again = transformers.OpenAIGPTDoubleHeadsModel.from_pretrained(tmp_path / 'back').eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mc_token_ids=cls).mc_logits, want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no class for GPT-1's similarity head"):
        hf.save_task_model(TaskModel(model.gpt, 'similarity', 1), str(tmp_path / 'nope'))


@pytest.mark.parametrize('task, post_norm', [('classification', False), ('entailment', True),
                                             ('multiple_choice', False)])
def test_exported_head_matches_transformers(tmp_path, task, post_norm):
    """Classification and entailment export as GPT2/OpenAIGPTForSequenceClassification (their bias-free score
    layer, ours folded into the final LayerNorm); multiple choice on a GPT-2 network as GPT2DoubleHeadsModel."""
    transformers = pytest.importorskip('transformers')
    from gpt import hf
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=100, post_norm=post_norm,
                        gelu_approx='tanh' if post_norm else 'none'))
    gpt, specials = add_tokens(gpt, 3)
    model = TaskModel(gpt, task, 3).eval()
    torch.nn.init.normal_(model.head.bias, std=1.0)  # a bias as large as a trained head's, or larger
    fields = {'classification': [[[1, 2, 3]], [[0, 4, 5, 6, 7, 8, 0, 9]]],  # (0, the padding id, inside a text)
              'entailment': [[[1, 2], [3]], [[0, 5, 6], [7, 0]]],
              'multiple_choice': [[[1, 2, 3], [4, 5], [6]], [[7, 8, 9, 10], [11], [0, 12]]]}[task]
    examples = [transform(task, f, specials, 32) for f in fields]
    idx, _, last = collate(examples)
    with torch.no_grad():
        want, _ = model(idx, last, len(examples))
    hf.save_task_model(model, str(tmp_path), classes=['x', 'y', 'z'], specials=specials)
    cfg = json.loads((tmp_path / 'config.json').read_text())
    assert cfg['gpt1_task'] == dict(task=task, start=100, delim=101, extract=102)
    if task == 'multiple_choice':
        theirs = transformers.GPT2DoubleHeadsModel.from_pretrained(tmp_path).eval()
        with torch.no_grad():
            got = theirs(idx.view(2, 2, -1), mc_token_ids=last.view(2, 2)).mc_logits
    else:
        cls = transformers.GPT2ForSequenceClassification if not post_norm else \
            transformers.OpenAIGPTForSequenceClassification
        theirs = cls.from_pretrained(tmp_path).eval()
        assert theirs.config.id2label == {0: 'x', 1: 'y', 2: 'z'}
        with torch.no_grad():
            got = theirs(idx).logits  # right-padded with 0: the last other token is the extract token
        if tuple(int(x) for x in transformers.__version__.split('.')[:2]) < (4, 49):
            # before 4.49 transformers reads the token before the first padding id, so a text holding id 0 is
            # read there (README, export): only the first example, without an inner 0, is read as ours
            got, want = got[:1], want[:1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, char_data):
    out = tmp_path_factory.mktemp('pretrained')
    run('train.py', *tiny(n_embd=32, block_size=64, batch_size=8, gradient_accumulation_steps=1, max_iters=30,
                          eval_interval=30, eval_iters=2, plot=False, learning_rate=3e-3, warmup_iters=5),
        f'--data_dir={char_data}', f'--out_dir={out}')
    return out


def test_scrambled_task_follows_its_rule(tmp_path, shakespeare_text):
    """data/shakespeare_tasks/prepare.py's 'scrambled' task: a real example is a line of its split of the text
    (train: the first 90%, val: the rest), a scrambled one such a line with the inside of each word shuffled
    (the same characters, length and first and last character of every word) and differing from it; about
    half each."""
    tasks = tmp_path / 'tasks'
    code, _, err = run_inprocess('data/shakespeare_tasks/prepare.py', '--input', shakespeare_text, '--out_dir', tasks)
    assert code == 0, err
    text = shakespeare_text.read_text(encoding='utf-8')
    n = int(0.9 * len(text))

    def shape(line):  # what scrambling keeps
        return tuple((w[:1], ''.join(sorted(w[1:-1])), w[1:][-1:]) for w in line.split(' '))

    for split, part in (('train', text[:n]), ('val', text[n:])):
        by_shape = {}
        for line in part.split('\n'):
            by_shape.setdefault(shape(line), set()).add(line)
        examples = [json.loads(line) for line in (tasks / f'scrambled_{split}.jsonl').read_text().splitlines()]
        assert len(examples) > 1000 and 0.45 < sum(e['label'] == 'real' for e in examples) / len(examples) < 0.55
        for e in examples:
            same_shape = by_shape.get(shape(e['text']), set())
            assert same_shape, e
            if e['label'] == 'real':
                assert e['text'] in same_shape, e
            else:
                assert e['label'] == 'scrambled' and e['text'] not in same_shape, e


def test_finetune_runs_resumes_and_predicts(tmp_path, pretrained, shakespeare_text):
    tasks = tmp_path / 'tasks'
    run('data/shakespeare_tasks/prepare.py', '--input', shakespeare_text, '--out_dir', tasks)
    for name in ('next_line_train', 'next_line_val'):  # a few examples: this is about the plumbing
        lines = (tasks / f'{name}.jsonl').read_text().splitlines()[:40]
        (tasks / f'{name}.jsonl').write_text('\n'.join(lines) + '\n')
    args = [f'--init_from={pretrained}', '--task=multiple_choice', '--fields=context,answer0,answer1,answer2,answer3',
            f'--data_files=train={tasks / "next_line_train.jsonl"},val={tasks / "next_line_val.jsonl"}',
            '--batch_size=8', '--device=cpu', '--epochs=2', '--learning_rate=1e-3']
    out = tmp_path / 'ft'
    code, stdout, err = run_inprocess('finetune.py', *args, f'--out_dir={out}')
    assert code == 0, err
    assert 'majority-class accuracy' in stdout and 'at the last step; best val accuracy' in stdout
    evals = events(out, 'eval')
    assert [e['step'] for e in evals] == [5, 10] and all(0 <= e['value'] <= 1 for e in evals)
    ckpt = torch.load(out / 'best.pt', weights_only=True)
    assert ckpt['kind'] == 'finetune' and ckpt['model_args']['vocab_size'] == 68  # 65 characters + 3 special
    # stopped mid-epoch and resumed, a second run ends where the uninterrupted one did
    again = tmp_path / 'again'
    assert run_inprocess('finetune.py', *args, f'--out_dir={again}', '--stop_after=3')[0] == 0
    assert torch.load(again / 'ckpt.pt', weights_only=True)['iter_num'] == 3
    assert run_inprocess('finetune.py', *args, f'--out_dir={again}', '--resume=True')[0] == 0
    a, b = torch.load(out / 'ckpt.pt', weights_only=True), torch.load(again / 'ckpt.pt', weights_only=True)
    assert a['iter_num'] == b['iter_num'] == 10
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    unlabelled = tmp_path / 'new.jsonl'  # new inputs: no label column needed
    unlabelled.write_text(''.join(json.dumps({k: v for k, v in json.loads(line).items() if k != 'label'}) + '\n'
                                  for line in (tasks / 'next_line_val.jsonl').read_text().splitlines()))
    code, stdout, err = run_inprocess('finetune.py', '--task=multiple_choice', f'--out_dir={out}', '--device=cpu',
                                      f'--predict={unlabelled}')
    assert code == 0, err
    predictions = [json.loads(line) for line in stdout.splitlines()]
    assert len(predictions) == 40 and all(p['prediction'] in range(4) for p in predictions)


@pytest.mark.slow  # (~26 s; resume is also checked by test_resume.py's kills of train.py in the default run)
def test_finetune_killed_anywhere_resumes_to_the_uninterrupted_weights(tmp_path, pretrained):
    """SIGKILL after the second checkpoint, SIGTERM, and a kill before the first checkpoint; each resumed with the
    bare command (out_dir alone): the weights, head and optimizer state of the run that was never stopped."""
    import random
    import signal
    rng = random.Random(0)
    words = ['thee', 'lord', 'night', 'sweet', 'king', 'blood', 'good', 'death']
    for split, n in (('train', 96), ('val', 16)):
        rows = [dict(text=' '.join(rng.choices(words, k=4)), label=rng.choice(['a', 'b'])) for _ in range(n)]
        (tmp_path / f'{split}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    args = [f'--init_from={pretrained}', '--task=classification', '--fields=text', '--batch_size=8', '--device=cpu',
            f'--data_files=train={tmp_path / "train.jsonl"},val={tmp_path / "val.jsonl"}', '--epochs=2',
            '--eval_interval=4', '--learning_rate=1e-3', '--dtype=float32']
    straight = tmp_path / 'straight'
    run('finetune.py', *args, f'--out_dir={straight}')
    moments = {'SIGKILL-late': (signal.SIGKILL, 8), 'SIGTERM': (signal.SIGTERM, 4), 'SIGKILL-early': (signal.SIGKILL, 0)}
    for name, (sig, step) in moments.items():
        out = tmp_path / name
        # (step 0: as soon as the run has started, before its first checkpoint; resuming then starts it again)
        when = lambda log: any(e.get('event') == ('eval' if step else 'start') and e.get('step', 0) >= step
                               for e in log)
        code = interrupt('finetune.py', *args, f'--out_dir={out}', out_dir=out, sig=sig, when=when)
        if step == 0:
            assert not (out / 'ckpt.pt').exists()
        if sig == signal.SIGTERM:
            assert code == 0 and load_ckpt(out / 'ckpt.pt')['iter_num'] >= step
        p = run('finetune.py', '--resume=True', f'--out_dir={out}')
        assert 'resuming' in p.stdout or 'before its first checkpoint' in p.stdout, p.stdout
        a, b = load_ckpt(straight / 'ckpt.pt'), load_ckpt(out / 'ckpt.pt')
        assert_same_state(a, b)
        for k in a['head']:
            assert torch.equal(a['head'][k], b['head'][k]), (name, k)


def test_finetuned_classifier_exports_and_similarity_is_refused(tmp_path, pretrained):
    """--export from the command line: the transformers classifier gives new text the probabilities --predict
    gives it; a similarity model (no transformers class) is refused in one line with a non-zero exit."""
    transformers = pytest.importorskip('transformers')
    from gpt.tokendata import get_tokenizer
    texts = ['To be, or not to be', 'Romeo, Romeo!', 'Now is the winter', 'O, woe!', 'Friends, Romans',
             'Is this a dagger', 'All the world', 'Out, damned spot!']
    data = tmp_path / 'd.jsonl'
    data.write_text(''.join(json.dumps({'text': t, 'other': t[::-1], 'label': ['no', 'yes'][i % 2], 'score': i / 8})
                            + '\n' for i, t in enumerate(texts)))
    common = [f'--init_from={pretrained}', f'--data_files=train={data},val={data}', '--device=cpu', '--epochs=1',
              '--batch_size=4', '--learning_rate=1e-2']
    assert run_inprocess('finetune.py', *common, f'--out_dir={tmp_path / "cls"}', '--fields=text')[0] == 0
    code, stdout, err = run_inprocess('finetune.py', f'--out_dir={tmp_path / "cls"}', '--device=cpu',
                                      f'--export={tmp_path / "hf"}')
    assert code == 0, err
    code, stdout, err = run_inprocess('finetune.py', f'--out_dir={tmp_path / "cls"}', '--device=cpu',
                                      f'--predict={data}')
    assert code == 0, err
    predictions = [json.loads(line) for line in stdout.splitlines()]
    theirs = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path / 'hf').eval()
    special = theirs.config.gpt1_task
    encode, _, _ = get_tokenizer(torch.load(tmp_path / 'cls' / 'best.pt', weights_only=True)['data_meta'])
    for text, p in zip(texts, predictions):
        with torch.no_grad():
            probs = theirs(torch.tensor([[special['start'], *encode(text), special['extract']]])).logits.softmax(-1)[0]
        assert theirs.config.id2label[int(probs.argmax())] == p['prediction']
        assert abs(probs.max().item() - p['probability']) < 1e-4
    args = ['--task=similarity', '--fields=text,other', '--label=score']
    assert run_inprocess('finetune.py', *common, *args, f'--out_dir={tmp_path / "sim"}')[0] == 0
    code, _, err = run_inprocess('finetune.py', '--task=similarity', f'--out_dir={tmp_path / "sim"}', '--device=cpu',
                                 f'--export={tmp_path / "nope"}')
    assert code == 1 and len(err.strip().splitlines()) == 1 and "no class for GPT-1's similarity head" in err, err


@pytest.mark.parametrize('task, rows, args, message', [
    ('classification', [{'text': 'a b', 'label': 'x'}, {'text': 'b a', 'label': 'y'}, 'val',
                        {'text': 'a', 'label': 'z'}],
     [], "the val data has labels z, which are not among the classes of the training data (x, y)"),
    ('classification', [{'text': 'a b', 'label': 'x'}, {'text': 'b a', 'label': 'maybe'}, 'val',
                        {'text': 'a', 'label': 'x'}],
     ['--classes=x,y'], "the train data has labels maybe, which are not among the classes declared by --classes"),
    ('classification', [{'text': 'a' * 70, 'label': 'x'}, {'text': 'b' * 80, 'label': 'y'}, 'val',
                        {'text': 'c' * 90, 'label': 'x'}],
     [], "the model's context (64 tokens) cannot hold the shortest classification example (72 tokens"),
    ('multiple_choice', [{'context': 'a', 'answer0': 'b', 'answer1': 'c', 'label': 2}, 'val',
                         {'context': 'a', 'answer0': 'b', 'answer1': 'c', 'label': 0}],
     [], "labels 2 are not answer indices (0 to 1)"),
    ('multiple_choice', [{'context': 'a', 'answer0': 'b', 'answer1': 'c', 'label': 'B'}, 'val',
                         {'context': 'a', 'answer0': 'b', 'answer1': 'c', 'label': 0}],
     [], "the train data has a 'label' value 'B'; multiple_choice needs the index of the right answer"),
])
def test_finetune_data_errors_are_one_line(tmp_path, pretrained, task, rows, args, message):
    """Labels outside the classes (found in training, or declared), answer indices out of range, and a model
    whose context cannot hold even the shortest example of the task."""
    cut = rows.index('val')
    for name, part in (('train', rows[:cut]), ('val', rows[cut + 1:])):
        (tmp_path / f'{name}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in part))
    fields = 'text' if task == 'classification' else 'context,answer0,answer1'
    code, _, err = run_inprocess('finetune.py', f'--init_from={pretrained}', f'--task={task}', f'--fields={fields}',
                                 f'--data_files=train={tmp_path / "train.jsonl"},val={tmp_path / "val.jsonl"}',
                                 f'--out_dir={tmp_path / "out"}', '--device=cpu', *args)
    assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize('args, message', [
    (['--task=entailment', '--fields=a'], "task 'entailment' takes 2 input column(s)"),
    (['--task=regression'], "task must be one of"),
    (['--fields=nope', '--label=label'], "has no column 'nope'"),
    (['--fields=text', '--label=nope'], "has no column 'nope'"),
    (['--task=similarity', '--fields=text,text', '--classes=x,y'], "--classes is for classification and entailment"),
])
def test_finetune_mistakes_are_one_line(tmp_path, args, message):
    data = tmp_path / 'd.jsonl'
    data.write_text(json.dumps({'text': 'a b', 'label': 1}) + '\n')
    code, _, err = run_inprocess('finetune.py', f'--data_files=train={data},val={data}', '--init_from=gpt2',
                                 '--device=cpu', *args)
    assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err
