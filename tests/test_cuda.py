"""What only a GPU exercises: deterministic=True (two runs, and a SIGKILLed run resumed, give the same weights bit for
bit), the CUDA RNG state of the GPU a run trains on across a resume, float16's GradScaler state across a resume,
bf16 autocast, FSDP's mixed precision (torchrun, one process) and greedy decoding on the GPU.

Every test here is marked cuda: where torch.cuda.is_available() is False, conftest.py skips it with that reason,
so CI (CPU) reports them skipped. On a GPU: `pytest -m cuda tests/test_cuda.py -rs`, or `make gpu-check`, which
runs them among its steps (gpu_check.py).
"""
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, assert_same_state, events, interrupt, load_ckpt, run, tiny, train_losses

pytestmark = pytest.mark.cuda

# a small model on the GPU, eager (the determinism of compiled code is gpu_check.py's to measure: a compile costs
# a minute), dropout on, so that equal runs also prove the per-micro-step reseeding of the CUDA generator; 20 steps
# with a checkpoint at 10
GPU = tiny(device='cuda', n_layer=2, n_head=4, n_embd=64, block_size=64, batch_size=8, dropout=0.1, plot=False,
           learning_rate=3e-3, warmup_iters=2, lr_decay_iters=20, max_iters=20, eval_interval=10, eval_iters=2,
           log_interval=1, always_save_checkpoint=True)


def gpu_run(out_dir, char_data, *extra, timeout=300):
    return run('train.py', f'--out_dir={out_dir}', f'--data_dir={char_data}', *GPU, *extra, timeout=timeout)


@pytest.fixture(scope='module')
def deterministic_runs(tmp_path_factory, char_data):
    """Two uninterrupted bf16 runs with deterministic=True ('a', 'b'), and one SIGKILLed after its step-10
    checkpoint and resumed ('killed')."""
    d = tmp_path_factory.mktemp('deterministic')
    args = ('--dtype=bfloat16', '--deterministic=True')
    for name in ('a', 'b'):
        gpu_run(d / name, char_data, *args)
    killed = d / 'killed'
    code = interrupt('train.py', f'--out_dir={killed}', f'--data_dir={char_data}', *GPU, *args, out_dir=killed,
                     when=lambda entries: any(e.get('event') == 'train' and e['iter'] >= 13 for e in entries))
    assert code == -signal.SIGKILL
    assert load_ckpt(killed / 'ckpt.pt')['iter_num'] == 10
    gpu_run(killed, char_data, '--init_from=resume')
    return d


def test_two_deterministic_runs_give_the_same_weights(deterministic_runs):
    a, b = (load_ckpt(deterministic_runs / n / 'ckpt.pt') for n in 'ab')
    assert a['iter_num'] == 20
    assert_same_state(a, b)  # bit for bit: weights and AdamW's moments
    assert train_losses(deterministic_runs / 'a') == train_losses(deterministic_runs / 'b')


def test_sigkill_then_resume_gives_the_uninterrupted_weights(deterministic_runs):
    straight, resumed = (load_ckpt(deterministic_runs / n / 'ckpt.pt') for n in ('a', 'killed'))
    assert_same_state(straight, resumed)
    losses = train_losses(deterministic_runs / 'a')
    for it, seen in train_losses(deterministic_runs / 'killed', torn=1).items():  # (a kill can tear a line)
        assert all(v == losses[it][0] for v in seen), (it, seen, losses[it])  # also the steps run twice


def test_cuda_rng_state_is_saved_and_restored_for_the_gpu_in_use():
    from gpt import checkpoint

    # the last GPU, which is not the current device on a machine with several: its generator must be the one
    # saved and restored, not the current device's
    dev = f'cuda:{torch.cuda.device_count() - 1}'
    torch.cuda.manual_seed_all(1234)
    torch.rand(7, device=dev)  # (a generator that has moved on from its seed)
    state = checkpoint.rng_state(dev)
    assert torch.equal(state['cuda'], torch.cuda.get_rng_state(dev))
    expected = torch.rand(5, device=dev)
    other = torch.rand(3, device='cuda:0') if dev != 'cuda:0' else None
    torch.rand(100, device=dev)  # drawn after the save: a resume must not see these
    # through a file, as a checkpoint goes (weights_only)
    path = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'rng-{os.getpid()}.pt')
    torch.save(state, path)
    try:
        restored = torch.load(path, weights_only=True)
    finally:
        os.remove(path)
    before0 = torch.cuda.get_rng_state('cuda:0')
    checkpoint.set_rng_state(restored, dev)
    assert torch.equal(torch.rand(5, device=dev), expected)
    if other is not None:  # the other GPU's generator was left alone
        assert torch.equal(torch.cuda.get_rng_state('cuda:0'), before0)


def test_train_saves_the_cuda_rng_state_of_its_gpu(deterministic_runs):
    rng = load_ckpt(deterministic_runs / 'a' / 'ckpt.pt')['rng']
    assert rng['cuda'] is not None and rng['cuda'].dtype == torch.uint8
    assert rng['cuda_ranks'] is None  # (one process: no process group to gather over)


def test_float16_grad_scaler_state_survives_a_resume(tmp_path, char_data):
    # 12 steps straight, against 6 then a resume for 6 more: the GradScaler's scale and its count of steps since
    # the last overflow (which decides when the scale grows) must carry over, and the weights be the same
    args = ('--dtype=float16', '--deterministic=True', '--max_iters=12', '--lr_decay_iters=12', '--eval_interval=6')
    gpu_run(tmp_path / 'straight', char_data, *args)
    gpu_run(tmp_path / 'resumed', char_data, *args, '--max_iters=6')
    gpu_run(tmp_path / 'resumed', char_data, '--init_from=resume', '--max_iters=12')
    a, b = (load_ckpt(tmp_path / n / 'ckpt.pt') for n in ('straight', 'resumed'))
    assert a['scaler'] is not None and a['scaler'].keys() == b['scaler'].keys()
    assert a['scaler'] == b['scaler'], (a['scaler'], b['scaler'])
    assert a['scaler']['_growth_tracker'] > 6 or a['scaler']['scale'] != 2.0 ** 16  # (the resume had to carry it)
    assert_same_state(a, b)


def test_bf16_autocast_forward_and_backward():
    from gpt.device import autocast_ctx
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=65, pad_vocab_multiple=64)).cuda()
    idx = torch.randint(65, (4, 64), device='cuda')
    _, ref = m(idx, idx)  # fp32
    with autocast_ctx('cuda', 'bfloat16'):
        logits, loss = m(idx, idx)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32  # (the loss is taken in fp32)
    assert abs(loss.item() - ref.item()) < 2e-2
    loss.backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in m.parameters())
    # the explicit masked-softmax path computes what SDPA's kernels do, in bf16 too
    for block in m.transformer.h:
        block.attn.attn_impl = 'explicit'
    with torch.no_grad(), autocast_ctx('cuda', 'bfloat16'):
        explicit, _ = m(idx, idx)
    torch.testing.assert_close(explicit.float(), logits.detach().float(), atol=5e-2, rtol=0)


def test_fsdp_mixed_precision_in_one_process(tmp_path, char_data):
    # FSDP2 under torchrun (one process): parameters gathered in bf16, gradients reduced in fp32, fp32 weights
    # kept; its losses follow a plain bf16 autocast run's closely (the two round differently)
    common = ('--dtype=bfloat16', '--max_iters=10', '--lr_decay_iters=10', '--eval_interval=10', '--dropout=0.0')
    gpu_run(tmp_path / 'plain', char_data, *common)
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR',
                                                            'MASTER_PORT')}
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1',
                        'train.py', f'--out_dir={tmp_path / "fsdp"}', f'--data_dir={char_data}', *GPU, *common,
                        '--parallelism=fsdp'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    plain, fsdp = train_losses(tmp_path / 'plain'), train_losses(tmp_path / 'fsdp')
    assert sorted(fsdp) == list(range(10))
    for it in plain:
        assert abs(plain[it][0] - fsdp[it][0]) < 5e-2, (it, plain[it], fsdp[it])
    assert fsdp[9][0] < fsdp[0][0] - 0.2  # it trained
    ck = load_ckpt(tmp_path / 'fsdp' / 'ckpt.pt')
    assert all(v.dtype == torch.float32 for v in ck['model'].values())  # the master weights stay fp32
    assert events(tmp_path / 'fsdp', 'start')[0]['world_size'] == 1


def test_greedy_decoding_on_the_gpu_is_the_argmax_of_full_forwards():
    from gpt.engine import generate
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=65)).cuda().eval()
    prompt = torch.randint(65, (2, 5), device='cuda')
    out = generate(m, prompt, 30, temperature=0)
    assert out.shape == (2, 35) and out.device.type == 'cuda' and torch.equal(out[:, :5], prompt)
    # the plain reference: the whole sequence through the model at every step, no cache
    seq = prompt
    with torch.no_grad():
        for _ in range(30):
            logits, _ = m(seq)
            seq = torch.cat((seq, logits[:, -1, :65].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, seq)
    # and the same tokens as on the CPU (fp32 both: a flipped near-tie would show as a late departure)
    cpu = generate(m.cpu(), prompt.cpu(), 30, temperature=0)
    assert torch.equal(out.cpu(), cpu)


def test_engine_with_cuda_graphs_and_chunked_reads_gives_the_tokens_of_one_step_at_a_time():
    """On the GPU the engine reads tokens every 8 steps (Engine.SYNC_EVERY) and CUDAGraphDecoder replays the
    one-token step: ragged prompts, an end token inside a chunk, more requests than slots, greedy and seeded rows,
    against the eager model read at every step."""
    from gpt.engine import Engine
    from gpt.fastpath import CUDAGraphDecoder
    from gpt.sampling import SamplingParams
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=65)).cuda().eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)  # (varied tokens with clear margins, as tests/test_engine.py's models)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(65, (n,), generator=g).tolist() for n in (3, 17, 1, 40, 9)]
    settings = [dict(temperature=0), dict(temperature=0), dict(temperature=1.0, seed=1),
                dict(temperature=0.8, top_p=0.9, seed=2), dict(temperature=0)]

    def run(decoder, sync_every, stop=None):
        engine = Engine(m, max_batch=3, decoder=decoder, sync_every=sync_every)
        rids = {engine.add(p, 20, SamplingParams(**s), stop_ids={stop} if stop is not None else ()): i
                for i, (p, s) in enumerate(zip(prompts, settings))}
        out = {i: [] for i in rids.values()}
        while engine.pending():
            for rid, token, _ in engine.step():
                out[rids[rid]].append(token)
        return out

    assert Engine(m).sync_every == 8
    plain = run(None, 1)
    stop = plain[0][5]  # request 0 ends at its 6th token at the latest: inside a chunk of 8
    plain = run(None, 1, stop)
    assert run(None, None, stop) == plain
    assert run(CUDAGraphDecoder(m), None, stop) == plain
    assert plain[0][-1] == stop and len(plain[0]) <= 6
