"""The speed options of model.py and train.py (issue: fewer steps to the same loss): rotary position embeddings,
QK-norm, ReLU^2, Muon and the warmup-stable-decay schedule. Off, each leaves the model and the run bit-identical
to GPT-2's (checked against bench_reference.py's independent nanoGPT-style model, and train.py runs with and
without the settings); on, each equals its reference formulation computed directly on fixed tensors."""
import math

import pytest
import torch
from conftest import assert_same_state, events, load_ckpt, run, run_inprocess, tiny

from gpt.optim import configure_optimizers
from model import GPT, GPTConfig, rotary, rotary_angles
from tools.bench_reference import RefGPT

CFG = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=40, gelu_approx='none')


def assert_equal_tensors(a, b, where=''):
    """Nested dicts/lists of tensors (state dicts), equal bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal_tensors(a[k], b[k], f'{where}/{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_tensors(x, y, f'{where}/{i}')
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def batch(V=40, B=3, T=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)


def test_defaults_are_gpt2_bit_for_bit():
    """The default model (every option off) computes what the independent reference does, to the bit: logits,
    loss, every gradient, and one AdamW step."""
    torch.manual_seed(0)
    ours = GPT(GPTConfig(**CFG))
    ref = RefGPT(ours.config)
    ref.load_state_dict(ours.state_dict())
    x, y = batch()
    (lo, loss), (lr, loss_r) = ours(x, y), ref(x, y)
    assert torch.equal(lo, lr) and torch.equal(loss, loss_r)
    loss.backward()
    loss_r.backward()
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert torch.equal(p.grad, ref_params[name].grad), name
    opt = configure_optimizers(ours, 0.1, 1e-3, (0.9, 0.95), 'cpu', verbose=False)
    ref_opt = torch.optim.AdamW([{'params': [ref_params[n] for n, p in ours.named_parameters() if p.dim() >= 2],
                                  'weight_decay': 0.1},
                                 {'params': [ref_params[n] for n, p in ours.named_parameters() if p.dim() < 2],
                                  'weight_decay': 0.0}], lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    opt.step()
    ref_opt.step()
    for name, p in ours.named_parameters():
        assert torch.equal(p, ref_params[name]), name


def test_options_at_their_defaults_change_nothing():
    """Naming every option at its default builds the same parameters from the same random draws."""
    torch.manual_seed(0)
    a = GPT(GPTConfig(**CFG))
    torch.manual_seed(0)
    b = GPT(GPTConfig(**CFG, pos_emb='learned', rope_base=500.0, qk_norm=False, mlp_act='gelu'))
    assert_equal_tensors(a.state_dict(), b.state_dict())
    x, y = batch()
    assert torch.equal(a(x, y)[1], b(x, y)[1])
    assert type(configure_optimizers(a, 0.1, 1e-3, (0.9, 0.95), 'cpu', verbose=False, muon_lr=0)) is torch.optim.AdamW


def test_rotary_is_a_rotation_of_each_pair_by_position_times_frequency():
    """Against the definition written out: pair (2i, 2i+1) of a head at position p turned by the angle
    p * base^(-2i/d), as an explicit 2x2 rotation per pair."""
    c = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=12, vocab_size=10, pos_emb='rope', rope_base=100.0)
    d, past, T = 8, 3, 5
    x = torch.randn(2, 2, T, d)
    got = rotary(x, rotary_angles(c, torch.arange(past, past + T)))
    want = torch.empty_like(x, dtype=torch.float64)
    for t in range(T):
        for i in range(d // 2):
            a = (past + t) * 100.0 ** (-2 * i / d)
            rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
            want[..., t, 2 * i:2 * i + 2] = x[..., t, 2 * i:2 * i + 2].double() @ rot.T
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)  # (angles in fp32, as the model has them)
    assert rotary(x.bfloat16(), rotary_angles(c, torch.arange(past, past + T))).dtype == torch.bfloat16  # autocast's dtype kept


def test_rotary_scores_depend_on_relative_position_only():
    c = GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=64, vocab_size=10, pos_emb='rope')
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(p, s):
        return (rotary(q, rotary_angles(c, torch.tensor([p]))) * rotary(k, rotary_angles(c, torch.tensor([s])))).sum()

    torch.testing.assert_close(score(7, 3), score(40, 36), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(7, 3), score(7, 5))


@pytest.mark.parametrize('kw', [dict(pos_emb='rope'), dict(pos_emb='rope', qk_norm=True, mlp_act='relu2')])
def test_rotary_model_decodes_with_the_cache_as_in_one_pass(kw):
    from gpt.kvcache import KVCache
    torch.manual_seed(0)
    m = GPT(GPTConfig(**CFG, **kw)).eval()
    assert 'wpe' not in m.transformer and m.num_params(non_embedding=True) == m.num_params()
    x, _ = batch()
    full, _ = m(x, x)
    cache = KVCache(m.config, x.size(0), 'cpu', torch.float32)
    steps = [m(x[:, :5], kv_cache=cache)[0]] + [m(x[:, t:t + 1], kv_cache=cache)[0] for t in range(5, 16)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_qk_norm_and_relu2_are_their_formulas():
    """The attention and MLP of a one-layer model with the options, recomputed by hand."""
    torch.manual_seed(0)
    c = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=10, qk_norm=True, mlp_act='relu2')
    m = GPT(c).eval()
    blk = m.transformer.h[0]
    x = torch.randn(2, 8, 16)
    q, k, v = blk.attn.c_attn(x).split(16, dim=2)
    q, k, v = (t.view(2, 8, 2, 8).transpose(1, 2) for t in (q, k, v))
    q = (q - q.mean(-1, keepdim=True)) / (q.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    k = (k - k.mean(-1, keepdim=True)) / (k.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    att = (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~torch.ones(8, 8, dtype=torch.bool).tril(), -math.inf)
    y = (att.softmax(-1) @ v).transpose(1, 2).reshape(2, 8, 16)
    torch.testing.assert_close(blk.attn(x), blk.attn.c_proj(y), atol=1e-5, rtol=1e-5)
    h = blk.mlp.c_fc(x)
    torch.testing.assert_close(blk.mlp(x), blk.mlp.c_proj(torch.where(h > 0, h * h, torch.zeros_like(h))))


def test_newton_schulz_is_the_quintic_applied_to_the_singular_values():
    """Against an SVD: G = U S V^T; five iterations of X <- aX + bX^3 + cX^5 (on X^T X's side) give
    U phi(S / ||G||_F) V^T, phi the scalar quintic iterated five times; for tall and wide matrices, batched."""
    from gpt.optim import NS_COEFFICIENTS, newton_schulz
    a, b, c = NS_COEFFICIENTS
    torch.manual_seed(0)
    for shape in ((3, 12, 20), (2, 24, 8), (1, 16, 16)):
        G = torch.randn(shape, dtype=torch.float64)
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
        s = S / G.norm(dim=(-2, -1), keepdim=True)[..., 0]
        for _ in range(5):
            s = a * s + b * s ** 3 + c * s ** 5
        want = U @ torch.diag_embed(s) @ Vh
        torch.testing.assert_close(newton_schulz(G, dtype=torch.float64), want, atol=1e-10, rtol=1e-10)
        got = newton_schulz(G.float())  # (the dtype train.py uses on CPUs without fast bf16)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)
        sv = torch.linalg.svdvals(want)
        assert 0.6 < sv.min() and sv.max() < 1.25  # roughly orthogonal: near, not at, 1


def test_muon_step_is_nesterov_then_orthogonalised_and_the_rest_is_adamw():
    """Two steps of configure_optimizers(muon_lr=...) recomputed by hand: Muon's momentum buffer, the Nesterov
    direction, newton_schulz, decoupled weight decay and the sqrt(rows/cols) scale on the blocks' matrices;
    exactly torch.optim.AdamW's steps on everything else."""
    from gpt.optim import newton_schulz
    torch.manual_seed(0)
    m = GPT(GPTConfig(**CFG))
    opt = configure_optimizers(m, 0.1, 1e-3, (0.9, 0.95), 'cpu', verbose=False, muon_lr=0.02, muon_momentum=0.9)
    ref = GPT(m.config)
    ref.load_state_dict(m.state_dict())
    named, ref_named = dict(m.named_parameters()), dict(ref.named_parameters())
    hidden = {f'transformer.h.{i}.{s}.weight' for i in range(2)
              for s in ('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj')}
    assert {id(p) for p in opt.param_groups[0]['params']} == {id(named[n]) for n in hidden}
    assert len(opt.param_groups) == 3 and opt.param_groups[0]['lr_scale'] == pytest.approx(20.0)
    rest = [n for n in named if n not in hidden]
    ref_opt = torch.optim.AdamW([{'params': [ref_named[n] for n in rest if ref_named[n].dim() >= 2],
                                  'weight_decay': 0.1},
                                 {'params': [ref_named[n] for n in rest if ref_named[n].dim() < 2],
                                  'weight_decay': 0.0}], lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    start = {n: named[n].detach().clone() for n in hidden}
    want = dict(start)
    buf = {n: torch.zeros_like(want[n]) for n in hidden}
    for seed in (1, 2):
        x, y = batch(seed=seed)
        for model, o in ((m, opt), (ref, ref_opt)):
            o.zero_grad()
            model(x, y)[1].backward()
        for n in hidden:
            g = named[n].grad
            buf[n] = 0.9 * buf[n] + g
            update = newton_schulz((g + 0.9 * buf[n])[None])[0]
            rows, cols = g.shape
            want[n] = want[n] * (1 - 0.02 * 0.1) - 0.02 * max(1.0, rows / cols) ** 0.5 * update
        opt.step()
        ref_opt.step()
        with torch.no_grad():  # the reference takes Muon's matrices as they are, so both see the same gradients
            for n in hidden:
                ref_named[n].copy_(named[n])
    for n in rest:
        assert torch.equal(named[n], ref_named[n]), n
    for n in hidden:
        assert not torch.equal(named[n], start[n]), n
        torch.testing.assert_close(named[n], want[n], atol=1e-6, rtol=1e-5, msg=n)


def test_muon_state_round_trips():
    torch.manual_seed(0)
    m = GPT(GPTConfig(**CFG))
    opt = configure_optimizers(m, 0.1, 1e-3, (0.9, 0.95), 'cpu', verbose=False, muon_lr=0.02)
    x, y = batch()
    m(x, y)[1].backward()
    opt.step()
    state = opt.state_dict()
    assert set(state) == {'muon', 'adamw'} and state['muon']['state']
    fresh = configure_optimizers(m, 0.1, 1e-3, (0.9, 0.95), 'cpu', verbose=False, muon_lr=0.02)
    fresh.load_state_dict(state)
    assert_equal_tensors(fresh.state_dict(), state)
    adamw_only = configure_optimizers(m, 0.1, 1e-3, (0.9, 0.95), 'cpu', verbose=False)
    with pytest.raises(ValueError, match="did not use Muon"):
        fresh.load_state_dict(adamw_only.state_dict())


# ----------------------------------------------------------------------------- train.py

RUN = tiny(dtype='float32', plot=False, eval_interval=6, eval_iters=2, log_interval=1, max_iters=12,
           learning_rate=3e-3, min_lr=3e-4, warmup_iters=2, lr_decay_iters=12, batch_size=4)


def test_train_with_the_options_named_at_their_defaults_is_bit_identical(tmp_path, char_data):
    data = f'--data_dir={char_data}'
    run('train.py', *RUN, data, f'--out_dir={tmp_path / "a"}')
    run('train.py', *RUN, data, f'--out_dir={tmp_path / "b"}', '--pos_emb=learned', '--qk_norm=False',
        '--mlp_act=gelu', '--optim=adamw', '--lr_schedule=cosine', '--muon_lr=0.5', '--cooldown_frac=0.7')
    assert_same_state(load_ckpt(tmp_path / 'a' / 'ckpt.pt'), load_ckpt(tmp_path / 'b' / 'ckpt.pt'))
    assert [e['loss'] for e in events(tmp_path / 'a', 'train')] == [e['loss'] for e in events(tmp_path / 'b', 'train')]


def test_wsd_schedule_and_muon_lr_follow_their_formulas(tmp_path, char_data):
    """Warmup as before, the peak until the last cooldown_frac of the decay, then linear to min_lr; Muon's group
    runs the same shape scaled to muon_lr. Then a resumed Muon run equals the uninterrupted one."""
    data = f'--data_dir={char_data}'
    args = [*RUN, data, '--optim=muon', '--muon_lr=0.03', '--lr_schedule=wsd', '--cooldown_frac=0.5',
            '--pos_emb=rope', '--qk_norm=True', '--mlp_act=relu2']
    run('train.py', *args, f'--out_dir={tmp_path / "full"}')
    lrs = [e['lr'] for e in events(tmp_path / 'full', 'train')]

    def wsd(it):  # warmup 2 iterations, decay over iterations 2..12, cooldown the last half of it
        if it < 2:
            return 3e-3 * (it + 1) / 3
        return 3e-4 + min(1.0, (1 - (it - 2) / 10) / 0.5) * (3e-3 - 3e-4)

    assert lrs == pytest.approx([wsd(i) for i in range(12)], rel=1e-12)
    assert lrs[2:7] == [3e-3] * 5 and lrs[-1] < lrs[-2] < 3e-3
    run('train.py', *args, f'--out_dir={tmp_path / "resumed"}', '--max_iters=6')
    run('train.py', '--init_from=resume', f'--out_dir={tmp_path / "resumed"}', '--max_iters=12')
    full, resumed = load_ckpt(tmp_path / 'full' / 'ckpt.pt'), load_ckpt(tmp_path / 'resumed' / 'ckpt.pt')
    assert_equal_tensors(full['model'], resumed['model'])
    assert_equal_tensors(full['optimizer'], resumed['optimizer'])
    muon_lr = full['optimizer']['muon']['param_groups'][0]['lr']
    assert muon_lr == pytest.approx(wsd(12) * 10, rel=1e-12)  # (set for iteration 12 at the final save) x 0.03 / 3e-3


def test_decay_on_clock_cools_down_by_the_time_budget(tmp_path, char_data, monkeypatch):
    """decay_on_clock: with iterations to spare, the WSD decay follows seconds / max_time, so the run ends at its
    time budget with the learning rate cooled down. Each step's lr is the formula at the clock of the step
    before (recorded with it); the checkpoint keeps the clock for a resume. The run reads a fake clock that
    advances 25 ms at every reading, so the test means the same on a fast, a slow or a busy machine."""
    import time
    T, now = 4.0, [time.time()]

    def clock():
        now[0] += 0.025
        return now[0]

    monkeypatch.setattr(time, 'time', clock)
    code, out, err = run_inprocess('train.py', *RUN, f'--data_dir={char_data}', f'--out_dir={tmp_path}',
                                   '--max_iters=100000', '--lr_decay_iters=100000', '--eval_interval=100000',
                                   '--lr_schedule=wsd', '--cooldown_frac=0.5', '--decay_on_clock=True',
                                   f'--max_time={T}', '--gradient_accumulation_steps=1')
    monkeypatch.undo()
    assert code == 0, err
    ev = events(tmp_path, 'train')
    lrs, secs = [e['lr'] for e in ev], [e['seconds'] for e in ev]
    assert 20 < len(ev) < 100000 and secs[-1] >= T  # stopped by the clock, not by max_iters

    def wsd(seconds):  # the iterations' share of the decay is < 1e-3 here, so the clock's share rules
        ratio = min(1.0, seconds / T)
        return 3e-4 + min(1.0, (1 - ratio) / 0.5) * (3e-3 - 3e-4)

    assert lrs[3:] == pytest.approx([wsd(s) for s in secs[2:-1]], rel=1e-9)
    assert lrs[2] == 3e-3 and min(lrs) < 3e-4 + 0.2 * (3e-3 - 3e-4)  # from the peak to near min_lr
    assert any(3e-4 + 0.3 * 2.7e-3 < lr < 3e-4 + 0.7 * 2.7e-3 for lr in lrs)  # through the cooldown, not a jump
    assert all(b <= a for a, b in zip(lrs[2:], lrs[3:]))
    assert load_ckpt(tmp_path / 'ckpt.pt')['train_seconds'] >= secs[-1]
    code, out, err = run_inprocess('train.py', *RUN, f'--data_dir={char_data}', f'--out_dir={tmp_path / "x"}',
                                   '--decay_on_clock=True')
    assert code == 1 and 'set --max_time' in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize('args, message', [
    (['--optim=sgd'], "optim must be 'adamw' or 'muon', got 'sgd'"),
    (['--pos_emb=alibi'], "pos_emb must be 'learned' or 'rope', got 'alibi'"),
    (['--n_head=4', '--n_embd=36', '--pos_emb=rope'], "head size 9 is odd"),
    (['--lr_schedule=wsd', '--cooldown_frac=1.5'], "cooldown_frac"),
    (['--compile=maybe'], "compile must be True, False or 'auto'"),
])
def test_option_mistakes_are_one_line(tmp_path, char_data, args, message):
    code, out, err = run_inprocess('train.py', *RUN, f'--data_dir={char_data}', f'--out_dir={tmp_path}', *args)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err


def test_val_only_evaluations_without_the_one_at_start(tmp_path, char_data):
    """eval_train=False, eval_at_start=False: evaluations at 6 and 12 only, val alone, and the same val losses
    as a default run's (the evaluation windows are fixed, and skipping evaluations changes no training step)."""
    data = f'--data_dir={char_data}'
    run('train.py', *RUN, data, f'--out_dir={tmp_path / "full"}')
    p = run('train.py', *RUN, data, f'--out_dir={tmp_path / "lean"}', '--eval_train=False', '--eval_at_start=False')
    full, lean = events(tmp_path / 'full', 'eval'), events(tmp_path / 'lean', 'eval')
    assert [e['iter'] for e in full] == [0, 6, 12] and [e['iter'] for e in lean] == [6, 12]
    assert [e['val_loss'] for e in lean] == [e['val_loss'] for e in full[1:]]
    assert all(e['train_loss'] is None for e in lean) and all(e['train_loss'] > 0 for e in full)
    steps = [line for line in p.stdout.splitlines() if line.startswith('step ')]
    assert len(steps) == 2 and all('train loss' not in line and 'val loss' in line for line in steps), steps
