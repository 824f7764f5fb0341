"""LoRA (lora.py), activation checkpointing and meta-device loading: zero-init adapters leave the base's logits
exactly; merged and unmerged agree after training; frozen weights stay bit-identical; peft's format both ways
against the real peft package on transformers' GPT2LMHeadModel; checkpointed gradients equal plain ones; the
meta-device loader gives the weights transformers holds; the LoRA settings of the scripts, their checkpoints
(adapters only, rebuilt on load), resume and export; one line for each mistake."""
import json

import pytest
import torch
from conftest import load_ckpt, run, tiny
from safetensors.torch import load_file
from torch.torch_version import TorchVersion

from gpt import hf, lora
from gpt.errors import UserError
from model import GPT, GPTConfig

transformers = pytest.importorskip('transformers')
peft = pytest.importorskip('peft')


def small_gpt(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50), **kw}))


def hf_base(tmp_path, seed=0, n_embd=32, n_layer=2):
    """A small random GPT2LMHeadModel saved with save_pretrained (the stand-in for a hub model)."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_head=2, n_embd=n_embd, n_positions=16, vocab_size=50,
                                  bos_token_id=None, eos_token_id=None)
    m = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():  # non-trivial LayerNorms and biases
        for name, p in m.named_parameters():
            if 'ln' in name or name.endswith('bias'):
                p.add_(torch.randn_like(p) * 0.1)
    d = tmp_path / f'base{seed}_{n_embd}_{n_layer}'
    m.save_pretrained(d)
    return d


def randomize_adapters(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, m in lora.adapters(model):
            m.lora_B.normal_(0, 0.05)


def train_steps(model, steps=3, lr=1e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    torch.manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, 50, (4, 16))
        _, loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad()


IDX = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(5))


# ---------------------------------------------------------------------- the adapters

@pytest.mark.parametrize('targets', ['c_attn', 'all', 'q,v', 'c_proj,c_fc'])
def test_zero_init_is_the_base_exactly(targets):
    model = small_gpt().eval()
    want = model(IDX)[0]
    lora.apply(model, rank=4, alpha=8, targets=targets)
    assert lora.adapters(model)
    assert torch.equal(model(IDX)[0], want)


def test_train_merge_unmerge_and_frozen_base():
    model = small_gpt(dropout=0.0)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    lora.apply(model, rank=4, alpha=8, dropout=0.1, targets='all')
    trainable, total = lora.count(model)
    assert 0 < trainable < total / 4
    train_steps(model)
    sd = model.state_dict()
    for k, v in frozen.items():  # every base tensor bit-identical, the adapters moved
        assert torch.equal(sd[k], v), k
    assert all(m.lora_B.abs().sum() > 0 for _, m in lora.adapters(model))
    model.eval()
    unmerged = model(IDX)[0]
    with lora.disabled(model):  # the base itself, no copy
        assert torch.equal(model(IDX)[0], small_gpt().eval()(IDX)[0])
    assert torch.equal(model(IDX)[0], unmerged)
    lora.merge(model)
    torch.testing.assert_close(model(IDX)[0], unmerged, rtol=0, atol=1e-5)
    with lora.disabled(model):  # (unmerged for the duration: equal up to float rounding)
        torch.testing.assert_close(model(IDX)[0], small_gpt().eval()(IDX)[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(model(IDX)[0], unmerged, rtol=0, atol=1e-5)
    lora.unmerge(model)
    torch.testing.assert_close(model(IDX)[0], unmerged, rtol=0, atol=1e-5)


def test_qkv_parts_only_touch_their_rows():
    model = small_gpt()
    lora.apply(model, rank=2, targets='q,v')
    train_steps(model, steps=2)
    m = dict(lora.adapters(model))['transformer.h.0.attn.c_attn']
    d = m.delta()
    C = 32
    assert d[:C].abs().sum() > 0 and d[2 * C:].abs().sum() > 0
    assert torch.equal(d[C:2 * C], torch.zeros_like(d[C:2 * C]))


@pytest.mark.parametrize('kwargs,msg', [
    (dict(rank=0), 'lora_rank must be a positive integer'),
    (dict(rank=64), 'lora_rank=64 is larger than the layer'),
    (dict(rank=4, targets='c_attn,wq'), "unknown lora target 'wq'"),
    (dict(rank=4, dropout=1.0), 'lora_dropout must be in [0, 1)'),
])
def test_setting_errors(kwargs, msg):
    with pytest.raises(UserError, match=msg.replace('[', r'\[').replace(')', r'\)')):
        lora.apply(small_gpt(), **kwargs)


# ---------------------------------------------------------------------- peft round trip

@pytest.mark.parametrize('targets', ['c_attn', 'all', 'q,v'])
def test_ours_to_peft(tmp_path, targets):
    base_dir = hf_base(tmp_path)
    ours = hf.from_pretrained(str(base_dir))
    lora.apply(ours, rank=4, alpha=16, targets=targets)
    train_steps(ours)
    ours.eval()
    lora.save_adapter(ours, tmp_path / 'adapter', base=str(base_dir))
    cfg = json.loads((tmp_path / 'adapter' / 'adapter_config.json').read_text())
    assert cfg['fan_in_fan_out'] and cfg['r'] == 4 and cfg['lora_alpha'] == 16
    theirs = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(base_dir),
                                            tmp_path / 'adapter').eval()
    with torch.no_grad():
        want = theirs(IDX).logits
        got = ours(IDX)[0]
        with theirs.disable_adapter():
            assert (want - theirs(IDX).logits).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_peft_to_ours(tmp_path):
    base_dir = hf_base(tmp_path)
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(base_dir)
    pm = peft.get_peft_model(hf_model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=['c_attn', 'c_proj', 'c_fc'],
                                                       fan_in_fan_out=True, task_type='CAUSAL_LM'))
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if 'lora_B' in n:
                p.normal_(0, 0.05)
    pm.save_pretrained(tmp_path / 'peft')
    pm.eval()
    ours = lora.load_adapter(hf.from_pretrained(str(base_dir)), tmp_path / 'peft').eval()
    assert len(lora.adapters(ours)) == 8
    with torch.no_grad():
        torch.testing.assert_close(ours(IDX)[0], pm(IDX).logits, rtol=0, atol=1e-5)
    # the adapter directory as init_from (sample.py, eval.py, train.py): its base, named in adapter_config.json
    from gpt import loading
    assert json.loads((tmp_path / 'peft' / 'adapter_config.json').read_text())['base_model_name_or_path'] == str(base_dir)
    direct = loading.load_model(str(tmp_path / 'peft'))[0].eval()
    with torch.no_grad():
        torch.testing.assert_close(direct(IDX)[0], pm(IDX).logits, rtol=0, atol=1e-5)
    # and back out: the same tensors peft wrote
    lora.save_adapter(ours, tmp_path / 'again')
    a, b = load_file(tmp_path / 'peft' / 'adapter_model.safetensors'), load_file(tmp_path / 'again' / 'adapter_model.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rslora_peft_adapter_keeps_its_scale_through_a_re_export(tmp_path):
    """A peft adapter trained with use_rslora=True (scale alpha / sqrt(r), not alpha / r) loads here with its
    scale, and export.py --adapter=True writes it so that peft computes the original's logits again."""
    from conftest import run
    base_dir = hf_base(tmp_path)
    pm = peft.get_peft_model(transformers.GPT2LMHeadModel.from_pretrained(base_dir), peft.LoraConfig(
        r=4, lora_alpha=8, use_rslora=True, target_modules=['c_attn', 'c_fc'], fan_in_fan_out=True,
        task_type='CAUSAL_LM'))
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if 'lora_B' in n:
                p.normal_(0, 0.05)
    pm.save_pretrained(tmp_path / 'peft')
    pm.eval()
    ours = lora.load_adapter(hf.from_pretrained(str(base_dir)), tmp_path / 'peft').eval()
    run('export.py', f'--init_from={tmp_path / "peft"}', f'--hf_dir={tmp_path / "again"}', '--adapter=True')
    again = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(base_dir),
                                           tmp_path / 'again').eval()
    with torch.no_grad():
        want = pm(IDX).logits
        with pm.disable_adapter():  # (at r=4 a scale of alpha / r is half the right one: an error of this size)
            assert (want - pm(IDX).logits).abs().max() > 1e-2
        torch.testing.assert_close(ours(IDX)[0], want, rtol=0, atol=1e-5)
        torch.testing.assert_close(again(IDX).logits, want, rtol=0, atol=1e-5)


def test_peft_adapter_for_another_base(tmp_path):
    pm = peft.get_peft_model(transformers.GPT2LMHeadModel.from_pretrained(hf_base(tmp_path, n_embd=48)),
                             peft.LoraConfig(r=4, target_modules=['c_attn'], fan_in_fan_out=True))
    pm.save_pretrained(tmp_path / 'wide')
    with pytest.raises(UserError, match='an adapter for another base model'):
        lora.load_adapter(hf.from_pretrained(str(hf_base(tmp_path))), tmp_path / 'wide')
    pm = peft.get_peft_model(transformers.GPT2LMHeadModel.from_pretrained(hf_base(tmp_path, n_layer=3)),
                             peft.LoraConfig(r=4, target_modules=['c_attn'], fan_in_fan_out=True))
    pm.save_pretrained(tmp_path / 'deep')
    with pytest.raises(UserError, match='another base model'):
        lora.load_adapter(hf.from_pretrained(str(hf_base(tmp_path))), tmp_path / 'deep')


# ---------------------------------------------------------------------- activation checkpointing

@pytest.mark.parametrize('use_lora', [False, True])
def test_grad_checkpoint_same_gradients(use_lora):
    grads = []
    for ckpt in (False, True):
        model = small_gpt(dropout=0.1)
        if use_lora:
            lora.apply(model, rank=4, targets='all', dropout=0.1)
            randomize_adapters(model)
        model.grad_checkpoint = ckpt
        torch.manual_seed(7)  # the same dropout masks: checkpoint replays the RNG in the recomputation
        _, loss = model(IDX, IDX)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=0, atol=1e-6, msg=n)


# ---------------------------------------------------------------------- meta-device loading

def test_meta_loading_equals_transformers_weights(tmp_path):
    d = hf_base(tmp_path)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(d).state_dict()
    ours = hf.from_pretrained(str(d))
    assert not any(p.is_meta for p in ours.parameters())
    assert ours.lm_head.weight is ours.transformer.wte.weight
    for k, v in ours.state_dict().items():
        want = theirs[k]
        if k.endswith(hf._CONV1D):
            want = want.t()
        assert torch.equal(v, want), k
    padded = hf.from_pretrained(str(d), pad_vocab_multiple=64)
    assert padded.transformer.wte.weight.shape[0] == 64
    assert torch.equal(padded.transformer.wte.weight[:50], ours.transformer.wte.weight)


# ---------------------------------------------------------------------- the scripts: train, resume, load, export

def char_base(tmp_path):
    """A random GPT-2 over character Shakespeare's 65 ids, as a transformers directory: the 'pretrained' base."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=65,
                                  bos_token_id=None, eos_token_id=None)
    d = tmp_path / 'base'
    transformers.GPT2LMHeadModel(cfg).save_pretrained(d)
    return d


def lora_run(char_data, base, out, *extra, nproc=1):
    args = tiny(batch_size=4, gradient_accumulation_steps=2, eval_iters=2, log_interval=1, dropout=0.1, plot=False,
                learning_rate=1e-2, warmup_iters=0, lr_decay_iters=6, min_lr=1e-3, block_size=16, eval_interval=3,
                always_save_checkpoint=True, lora_rank=4, lora_alpha=8, lora_dropout=0.1, lora_targets='q,v,c_fc')
    return run('train.py', *args, f'--data_dir={char_data}', f'--out_dir={out}', f'--init_from={base}', *extra,
               nproc=nproc)


@pytest.mark.slow  # (~24 s; LoRA's training, export and peft agreement are also checked apart in the default run)
def test_train_lora_checkpoint_resume_and_export(tmp_path, char_data):
    from gpt import loading
    base = char_base(tmp_path)
    out = tmp_path / 'run'
    p = lora_run(char_data, base, out, '--max_iters=6', '--grad_checkpoint=True')
    assert 'LoRA r=4' in p.stdout
    ck = load_ckpt(out / 'ckpt.pt')
    # only the adapters, and the base by name
    assert ck['model'] and all('.lora_' in k for k in ck['model'])
    assert ck['lora']['base'] == str(base) and ck['lora']['rank'] == 4
    assert (out / 'ckpt.pt').stat().st_size < 200_000
    # load_model (sample.py, eval.py) rebuilds base + adapters; the base weights are the base's
    model, _, _ = loading.load_model('resume', str(out), 'ckpt.pt')
    plain = hf.from_pretrained(str(base), block_size=16)  # (the run's context)
    assert lora.is_lora(model)
    sd, base_sd = model.state_dict(), plain.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in base_sd.items())
    assert all(torch.equal(sd[k], v) for k, v in ck['model'].items())
    assert run('sample.py', f'--out_dir={out}', '--ckpt_name=ckpt.pt', '--num_samples=1', '--max_new_tokens=5',
               '--device=cpu', '--compile=False').returncode == 0

    # resume: stopped at 3 and resumed to 6 equals the uninterrupted run
    half = tmp_path / 'half'
    lora_run(char_data, base, half, '--max_iters=3', '--grad_checkpoint=True')
    run('train.py', f'--out_dir={half}', '--init_from=resume', '--max_iters=6', f'--data_dir={char_data}')
    assert_same = load_ckpt(half / 'ckpt.pt')
    assert assert_same['model'].keys() == ck['model'].keys()
    for k in ck['model']:
        assert torch.equal(assert_same['model'][k], ck['model'][k]), k

    # export: the merged model for transformers, and the adapter for peft, with our logits
    model.eval()
    idx = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(idx)[0][..., :65]
    run('export.py', f'--out_dir={out}', '--ckpt_name=ckpt.pt', f'--hf_dir={tmp_path / "merged"}')
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'merged').eval()
    run('export.py', f'--out_dir={out}', '--ckpt_name=ckpt.pt', f'--hf_dir={tmp_path / "adapter"}', '--adapter=True')
    assert sorted(p.name for p in (tmp_path / 'adapter').iterdir()) == ['adapter_config.json', 'adapter_model.safetensors']
    theirs = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(base),
                                            tmp_path / 'adapter').eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(idx).logits, ours, rtol=0, atol=1e-5)
        torch.testing.assert_close(theirs(idx).logits, ours, rtol=0, atol=1e-5)


def test_script_errors_are_one_line(tmp_path, char_data):
    base = char_base(tmp_path)
    cases = [
        (['--lora_rank=64'], 'lora_rank=64 is larger than the layer'),
        (['--lora_rank=-1'], 'lora_rank must be a positive integer'),
        (['--lora_targets=c_attn,wq'], "unknown lora target 'wq'"),
    ]
    for extra, msg in cases:
        p = run('train.py', *tiny(lora_rank=4), f'--data_dir={char_data}', f'--out_dir={tmp_path / "bad"}',
                f'--init_from={base}', '--max_iters=1', *extra, check=False)
        assert p.returncode == 1 and p.stderr.strip().splitlines() == [f"error: {p.stderr.strip()[7:]}"], p.stderr
        assert msg in p.stderr
    p = run('train.py', *tiny(lora_rank=4), f'--data_dir={char_data}', f'--out_dir={tmp_path / "s"}',
            '--max_iters=1', check=False)
    assert p.returncode == 1 and 'LoRA adapts a pretrained model' in p.stderr and len(p.stderr.strip().splitlines()) == 1
    # --adapter=True on a run without LoRA
    plain = tmp_path / 'plain'
    run('train.py', *tiny(), f'--data_dir={char_data}', f'--out_dir={plain}', '--max_iters=1', '--eval_iters=1')
    p = run('export.py', f'--out_dir={plain}', '--ckpt_name=ckpt.pt', f'--hf_dir={tmp_path / "a"}', '--adapter=True',
            check=False)
    assert p.returncode == 1 and 'is not a LoRA run' in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_finetune_lora_head_resume_and_export(tmp_path, char_data):
    """finetune.py with LoRA on a run of ours as the base: the checkpoint holds adapters, the grown embedding and
    the head; stopped and resumed it ends as the uninterrupted run; --export merges the adapters."""
    from conftest import run_inprocess
    base = tmp_path / 'pre'
    run('train.py', *tiny(max_iters=2, eval_interval=2, eval_iters=1, plot=False), f'--data_dir={char_data}',
        f'--out_dir={base}')
    texts = ['To be, or not to be', 'Romeo, Romeo!', 'Now is the winter', 'O, woe!', 'Friends, Romans',
             'Is this a dagger', 'All the world', 'Out, damned spot!']
    data = tmp_path / 'd.jsonl'
    data.write_text(''.join(json.dumps({'text': t, 'label': ['no', 'yes'][i % 2]}) + '\n' for i, t in enumerate(texts)))
    args = [f'--init_from={base}', f'--data_files=train={data},val={data}', '--device=cpu', '--epochs=2',
            '--batch_size=4', '--learning_rate=1e-2', '--fields=text', '--lora_rank=2', '--lora_targets=all',
            '--grad_checkpoint=True']
    code, out, err = run_inprocess('finetune.py', *args, f'--out_dir={tmp_path / "a"}')
    assert code == 0, err
    assert 'LoRA r=2' in out
    a = load_ckpt(tmp_path / 'a' / 'ckpt.pt')
    assert a['lora']['base'] == str(base) and a['head']
    assert all('.lora_' in k or k == 'transformer.wte.weight' for k in a['model'])
    assert run_inprocess('finetune.py', *args, f'--out_dir={tmp_path / "b"}', '--stop_after=2')[0] == 0
    code, _, err = run_inprocess('finetune.py', *args, f'--out_dir={tmp_path / "b"}', '--resume=True')
    assert code == 0, err
    b = load_ckpt(tmp_path / 'b' / 'ckpt.pt')
    assert a['model'].keys() == b['model'].keys() and all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    code, _, err = run_inprocess('finetune.py', '--task=classification', f'--out_dir={tmp_path / "a"}',
                                 f'--export={tmp_path / "hf"}', '--device=cpu')
    assert code == 0, err
    assert (tmp_path / 'hf' / 'model.safetensors').exists()


# ---------------------------------------------------------------------- RLHF: the reference is the base itself

def rlhf_models(tmp_path):
    """A tiny SFT policy (a run's out_dir), a reward model and ranked preference groups."""
    import random

    from gpt.chat import chat_meta
    from gpt.checkpoint import save_checkpoint
    from gpt.heads import RewardModel
    from gpt.rl import policy_checkpoint, reward_checkpoint
    chars = sorted(set(" \n!',-.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ&$3"))
    meta = chat_meta(dict(tokenizer='char', chars=chars, vocab_size=len(chars)))
    for name in ('sft', 'rm'):
        (tmp_path / name).mkdir()
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=48, vocab_size=meta['vocab_size'])
    save_checkpoint(policy_checkpoint(GPT(cfg), meta, {}, 0), str(tmp_path / 'sft' / 'ckpt.pt'))
    rm = RewardModel(GPT(cfg))
    torch.nn.init.normal_(rm.head.weight, std=1.0)
    save_checkpoint(reward_checkpoint(rm, meta, {}, 0), str(tmp_path / 'rm' / 'ckpt.pt'))
    rng, words, rows = random.Random(0), ['thee', 'were', 'eye', 'king', 'lord', 'my', 'good', 'night'], []
    for _ in range(16):
        cands = [' '.join(rng.sample(words, 3)) for _ in range(2)]
        rows.append(dict(prompt='Now', chosen=cands[0], rejected=cands[1]))
    (tmp_path / 'prefs.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return tmp_path


def test_dpo_and_ppo_with_lora(tmp_path, monkeypatch):
    """DPO and PPO with LoRA: no copy of the model is made for the reference (it is the policy with its adapters
    off, lora.Reference); the checkpoint holds the adapters only and loads as the SFT run plus them."""
    import copy

    from conftest import run_inprocess

    from gpt import loading
    d = rlhf_models(tmp_path)
    copies = []
    real_deepcopy = copy.deepcopy
    monkeypatch.setattr(copy, 'deepcopy', lambda x, *a: copies.append(type(x).__name__) or real_deepcopy(x, *a))
    common = ['--device=cpu', '--lora_rank=2', '--lora_targets=all', '--learning_rate=1e-2']
    code, out, err = run_inprocess('dpo.py', f'--init_from={d / "sft"}', f'--train_data={d / "prefs.jsonl"}',
                                   f'--val_data={d / "prefs.jsonl"}', f'--out_dir={d / "dpo"}', '--max_iters=3',
                                   '--batch_size=8', '--eval_interval=3', *common)
    assert code == 0, err
    assert 'GPT' not in copies  # no second policy
    ck = load_ckpt(d / 'dpo' / 'ckpt.pt')
    assert ck['lora']['base'] == str(d / 'sft') and all('.lora_' in k for k in ck['model'])
    policy = loading.load_model(str(d / 'dpo'))[0]
    sft = loading.load_model(str(d / 'sft'))[0]
    assert lora.is_lora(policy) and any(m.lora_B.abs().sum() > 0 for _, m in lora.adapters(policy))
    ref = lora.Reference(policy)
    with torch.no_grad():
        assert torch.equal(ref(IDX)[0], sft.eval()(IDX)[0])
    code, out, err = run_inprocess('ppo.py', f'--init_from={d / "sft"}', f'--reward_model={d / "rm"}',
                                   f'--prompts={d / "prefs.jsonl"}', f'--out_dir={d / "ppo"}', '--iters=2',
                                   '--batch_size=4', '--micro_batch=4', '--minibatches=1', '--ppo_epochs=1',
                                   '--max_new_tokens=6', '--value_lr=1e-3', *common)
    assert code == 0, err
    assert copies.count('GPT') == 0
    assert all('.lora_' in k for k in load_ckpt(d / 'ppo' / 'ckpt.pt')['model'])


def test_bench_memory_mode():
    """bench.py --mode=memory: one fresh process per variant, a row each; LoRA trains a small share."""
    p = run('bench.py', '--mode=memory', '--model=baby-mini', '--device=cpu', '--dtype=float32', '--n_layer=2',
            '--block_size=32', '--lora_rank=2', '--variants=full,lora+ckpt')
    rows = {line.split()[0]: line.split() for line in p.stdout.splitlines()[2:]}
    assert set(rows) == {'full', 'lora+ckpt'}, p.stdout
    trained = {k: int(v[1].replace(',', '')) for k, v in rows.items()}
    assert 0 < trained['lora+ckpt'] < trained['full'] / 20
    assert all(float(v[4].replace(',', '')) > 0 for v in rows.values())
    p = run('bench.py', '--mode=memory', '--variants=lora+full', check=False)
    assert p.returncode == 1 and 'memory variants are full or lora' in p.stderr


@pytest.mark.parametrize('parallelism', [pytest.param('ddp', marks=pytest.mark.slow), pytest.param('fsdp', marks=(
    pytest.mark.skipif(TorchVersion(torch.__version__) < (2, 7), reason='FSDP on the CPU needs torch 2.7 or newer')))])
def test_lora_with_checkpointing_on_two_processes_equals_one(tmp_path, char_data, parallelism):
    """LoRA with activation checkpointing under DDP and FSDP (2 CPU processes, gloo): the same losses and adapters
    as one process with the same global batch."""
    base = char_base(tmp_path)
    args = ['--max_iters=4', '--eval_interval=4', '--dtype=float32', '--grad_checkpoint=True', '--lora_dropout=0.0']
    lora_run(char_data, base, tmp_path / 'one', *args)
    lora_run(char_data, base, tmp_path / 'two', *args, f'--parallelism={parallelism}', nproc=2)
    a, b = load_ckpt(tmp_path / 'one' / 'ckpt.pt'), load_ckpt(tmp_path / 'two' / 'ckpt.pt')
    assert a['model'].keys() == b['model'].keys() and all('.lora_' in k for k in b['model'])
    for k in a['model']:
        torch.testing.assert_close(b['model'][k], a['model'][k], rtol=0, atol=1e-5, msg=k)


def test_a_lora_run_as_the_base_of_another(tmp_path):
    """init_from a LoRA run: its adapters are merged into the new run's base, and the new run's checkpoint rebuilds
    through it (two levels); resuming a full run as LoRA is one line."""
    from gpt import loading
    from gpt.checkpoint import save_checkpoint
    from gpt.rl import policy_checkpoint
    base = tmp_path / 'base'
    base.mkdir()
    meta = dict(tokenizer='char', chars=[chr(65 + i) for i in range(50)], vocab_size=50)
    save_checkpoint(policy_checkpoint(small_gpt(), meta, {}, 0), str(base / 'ckpt.pt'))
    first = loading.load_model(str(base))[0]
    lora.setup(first, str(base), 2, 4, 0.0, 'c_attn')
    randomize_adapters(first)
    (tmp_path / 'one').mkdir()
    save_checkpoint(policy_checkpoint(first, meta, {}, 1), str(tmp_path / 'one' / 'ckpt.pt'))
    second = loading.load_model(str(tmp_path / 'one'))[0]
    note = lora.setup(second, str(tmp_path / 'one'), 2, 4, 0.0, 'all')
    assert note.startswith('the adapters of the LoRA run this starts from are merged')
    randomize_adapters(second, seed=2)
    (tmp_path / 'two').mkdir()
    save_checkpoint(policy_checkpoint(second, meta, {}, 2), str(tmp_path / 'two' / 'ckpt.pt'))
    again = loading.load_model(str(tmp_path / 'two'))[0].eval()
    with torch.no_grad():
        torch.testing.assert_close(again(IDX)[0], second.eval()(IDX)[0], rtol=0, atol=1e-6)
    with pytest.raises(UserError, match='cannot continue as LoRA'):
        lora.setup(small_gpt(), 'resume', 4, 8, 0.0, 'c_attn')
    # a base that changed under a LoRA run is refused in one line
    other = small_gpt()
    with torch.no_grad():
        other.transformer.h[0].attn.c_attn.weight.mul_(1.01)  # same shapes, other weights: the fingerprint differs
    save_checkpoint(policy_checkpoint(other, meta, {}, 0), str(base / 'ckpt.pt'))
    with pytest.raises(UserError, match='is not the model it was trained on'):
        loading.load_model(str(tmp_path / 'one'))


def test_frozen_matrices_in_bf16_change_nothing_under_autocast():
    """lora.cast_frozen (train.py with LoRA in bf16/fp16): the frozen matrices stored in bf16 give bit-identical
    losses and adapters under bf16 autocast, since autocast casts them to bf16 for every matmul anyway; outside
    autocast (an fp32 evaluation) the model still runs."""
    results = []
    for cast in (False, True):
        model = small_gpt()
        lora.apply(model, rank=4, targets='q,v,c_fc')
        if cast:
            lora.cast_frozen(model, torch.bfloat16)
            assert model.transformer.h[0].mlp.c_proj.weight.dtype == torch.bfloat16  # (no adapter: FrozenLinear)
            assert model.transformer.h[0].attn.c_attn.lora_A.dtype == torch.float32
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        losses = []
        for i in range(3):
            with torch.autocast('cpu', dtype=torch.bfloat16):
                _, loss = model(IDX, IDX)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        results.append((losses, lora.trained_state(model)))
        with torch.no_grad():
            assert torch.isfinite(model.eval()(IDX)[0]).all()
    assert results[0][0] == results[1][0]
    assert all(torch.equal(results[0][1][k], results[1][1][k]) for k in results[0][1])


@pytest.mark.slow
def test_grad_checkpoint_under_torch_compile():
    """The checkpointed blocks compile (non-reentrant checkpoint is traced by dynamo) and give eager's gradients."""
    grads = []
    for compiled in (False, True):
        model = small_gpt()
        lora.apply(model, rank=4, targets='all')
        randomize_adapters(model)
        model.grad_checkpoint = True
        fwd = torch.compile(model) if compiled else model
        _, loss = fwd(IDX, IDX)
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-5, msg=n)
