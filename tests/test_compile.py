"""torch.compile on the CPU (inductor's C++ backend), as users turn it on: train.py and sample.py with
--compile=True give what the eager runs give. The first compile of each graph takes tens of seconds,
so the runs are short and shared by the tests here."""
import pytest
import torch
from conftest import events, run, tiny
from torch.torch_version import TorchVersion

pytestmark = pytest.mark.slow  # compiling takes most of a minute per run

COMMON = [a for a in tiny(dtype='float32', max_iters=6, eval_interval=3, log_interval=1, eval_iters=2, plot=False,
                          batch_size=16, gradient_accumulation_steps=1, dropout=0.0, learning_rate=3e-3,
                          warmup_iters=2)
          if not a.startswith('--compile=')]


# torch 2.6's C++ inductor computes a wrong backward for this model: train.py refuses compile=True on its CPU
COMPILED_TRAINING = TorchVersion(torch.__version__) >= (2, 7)


@pytest.fixture(scope='module')
def runs(tmp_path_factory, char_data):
    out = {}
    for compiled in (False, True) if COMPILED_TRAINING else (False,):
        out[compiled] = tmp_path_factory.mktemp(f'compile_{compiled}')
        p = run('train.py', *COMMON, f'--compile={compiled}', f'--data_dir={char_data}', f'--out_dir={out[compiled]}')
        assert ('compiling the model' in p.stdout) == compiled
    return out


@pytest.mark.skipif(not COMPILED_TRAINING, reason='compiled training on the CPU needs torch 2.7 or newer')
def test_compiled_training_matches_eager(runs):
    eager, compiled = runs[False], runs[True]
    # the compiled graphs (training, then evaluation in no_grad mode) compute the same losses...
    for kind, key in (('train', 'loss'), ('eval', 'val_loss'), ('eval', 'train_loss')):
        a, b = [e[key] for e in events(eager, kind)], [e[key] for e in events(compiled, kind)]
        assert len(a) == len(b) > 1
        assert b == pytest.approx(a, rel=1e-4), (kind, key)
    # ...and the checkpoint holds the plain model (no torch.compile wrapper names) with the same weights
    a = torch.load(eager / 'ckpt.pt', weights_only=True)['model']
    b = torch.load(compiled / 'ckpt.pt', weights_only=True)['model']
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4, msg=k)


def test_compiled_sampling_matches_eager(runs):
    # greedy, beyond the 32-token context: the cached one-token steps run compiled (the prefill and the
    # sliding window's refills, eager)
    args = [f'--out_dir={runs[False]}', '--device=cpu', '--dtype=float32', '--temperature=0', '--num_samples=1',
            '--max_new_tokens=48', '--start=ROMEO:']
    eager = run('sample.py', *args, '--compile=False').stdout
    compiled = run('sample.py', *args, '--compile=True').stdout
    assert compiled == eager and len(eager) > 48


@pytest.mark.skipif(COMPILED_TRAINING, reason='this torch trains compiled on the CPU (the check is for torch 2.6)')
def test_compiled_training_on_the_cpu_of_an_old_torch_is_one_line(tmp_path, char_data):
    p = run('train.py', *COMMON, '--compile=True', f'--data_dir={char_data}', f'--out_dir={tmp_path}', check=False)
    assert p.returncode != 0 and 'Traceback' not in p.stderr, p.stderr[-2000:]
    assert 'error: compile=True on the CPU needs PyTorch 2.7 or newer' in p.stderr, p.stderr[-2000:]


def test_compiled_decoder_is_one_graph_for_every_position_and_prompt():
    # a static cache gives every one-token step the same shapes: one compile serves the positions of a
    # generation and the next prompts of any length; a new batch size adds a graph, and the tokens stay eager's
    from torch._dynamo.utils import counters

    from gpt.engine import generate
    from gpt.fastpath import compile_decoder
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=48, vocab_size=50)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)  # varied tokens (the default init repeats one)
    torch._dynamo.reset()
    counters.clear()
    decoder = compile_decoder(model)
    with torch.inference_mode():
        for B, T in [(1, 5), (1, 11), (1, 30), (2, 7)]:
            x = torch.randint(0, 50, (B, T), generator=torch.Generator().manual_seed(T))
            assert torch.equal(generate(model, x, 25, temperature=0, decoder=decoder), generate(model, x, 25, temperature=0))
    assert counters['stats']['unique_graphs'] == 2  # batch 1, batch 2
