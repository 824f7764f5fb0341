"""quantize.py: the int8 layer against a plain dequantized matmul, the rounding bound, whole-model logits and
greedy decoding against fp32, the tied head, kernel vs fallback, and the errors."""
import pytest
import torch
import torch.nn as nn
from torch.nn import functional as F

from gpt import quantize
from gpt.engine import generate
from gpt.quantize import Int8Linear, int8_kernel_dtype, quantize_int8, quantize_weight
from model import GPT, GPTConfig


def linear(K=64, N=40, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(K, N, bias=bias)
    nn.init.normal_(lin.weight, std=0.02)
    if bias:
        nn.init.normal_(lin.bias, std=0.02)
    return lin


def test_rounding_within_half_a_step():
    w = torch.randn(50, 96) * torch.rand(50, 1)  # rows of different ranges
    w[3] = 0  # an all-zero row
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert torch.equal(s.bfloat16().float(), s)  # bf16-exact scales
    deq = q.float() * s[:, None]
    assert ((w - deq).abs() <= s[:, None] / 2 * (1 + 1e-6)).all()
    assert torch.equal(deq[3], torch.zeros(96))


@pytest.mark.parametrize('rows', [1, 3, 40])
def test_layer_computes_the_dequantized_matmul(rows):
    lin = linear()
    layer = Int8Linear.from_linear(lin)
    x = torch.randn(2, rows, 64)
    y = layer(x)
    kd = int8_kernel_dtype('cpu', torch.float32) if rows <= 16 else None
    xr = x if kd is None else x.to(kd).float()  # the activations as the chosen path rounds them
    ref = F.linear(xr.double(), layer.dequantize(torch.float64), lin.bias.double())
    assert y.dtype == torch.float32 and y.shape == (2, rows, 40)
    # fp32 accumulation, and a bf16 kernel's rounding of the matmul's output (before the bias), <= 2^-8 relative
    rtol = 2 ** -8 if kd == torch.bfloat16 else 1e-5
    assert ((y.double() - ref).abs() <= rtol * (ref - lin.bias.double()).abs() + 1e-6).all()


def test_new_weights_loaded_into_a_used_layer_are_the_ones_it_computes_with():
    """The kernel's scales are cached per dtype: loading another layer's state (in place) must replace them."""
    a, b = Int8Linear.from_linear(linear(seed=0)), Int8Linear.from_linear(linear(seed=1))
    x = torch.randn(1, 64)
    before = a(x)
    a.load_state_dict(b.state_dict())
    assert not torch.equal(a(x), before) and torch.equal(a(x), b(x))


@pytest.mark.parametrize('kd', [torch.float32, torch.bfloat16])
def test_kernel_and_fallback_agree(kd):
    layer = Int8Linear.from_linear(linear(K=128, N=36))
    x = torch.randn(5, 128)
    ref = layer.forward_fallback(x.to(kd).float(), torch.float32)
    got = layer.forward_kernel(x, kd).float()
    assert torch.allclose(got, ref, rtol=2 ** -8 if kd == torch.bfloat16 else 1e-5, atol=1e-5)
    # a misaligned view of the activations is copied, not read out of bounds
    buf = torch.randn(5 * 128 + 1)
    xm = buf[1:].view(5, 128)
    assert torch.allclose(layer.forward_kernel(xm, kd).float(), layer.forward_fallback(xm.to(kd).float(), torch.float32),
                          rtol=2 ** -8 if kd == torch.bfloat16 else 1e-5, atol=1e-5)


def test_autocast_computes_in_bf16():
    layer = Int8Linear.from_linear(linear())
    x = torch.randn(3, 64)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), layer.forward_fallback(x, torch.float32) + layer.bias, rtol=0.02, atol=0.02)


def logits_error(model, idx):
    ref, _ = model(idx)
    qm = quantize_int8(model)
    got, _ = qm(idx)
    d = (got - ref).abs()
    return d.max().item() / ref.std().item(), d.mean().item() / ref.std().item()


@pytest.mark.parametrize('cfg', [
    dict(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=65),
    dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=1000),  # GPT-2's shape, smaller
])
def test_logits_within_tolerance_of_fp32(cfg):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**cfg)).eval()
    idx = torch.randint(0, cfg['vocab_size'], (2, 16))
    with torch.no_grad():
        mx, mean = logits_error(model, idx)
    # the module docstring's tolerance: mean |diff| < 3% and max < 15% of the fp32 logits' std
    assert mean < 0.03 and mx < 0.15, (mx, mean)


def test_greedy_agrees_with_fp32():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=128, vocab_size=65)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(8)  # peaked logits (tied head): clear winners, as a trained model has
    idx = torch.randint(0, 65, (4, 4))
    ref = generate(model, idx, 100, temperature=0)
    got = generate(quantize_int8(model), idx, 100, temperature=0)
    agree = (ref[:, 4:] == got[:, 4:]).float().mean().item()
    assert agree >= 0.9, agree


def test_tied_head_quantized_lookup_float():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50))
    wte = model.transformer.wte.weight.detach().clone()
    quantize_int8(model)
    assert isinstance(model.lm_head, Int8Linear)
    assert isinstance(model.transformer.wte, nn.Embedding) and torch.equal(model.transformer.wte.weight, wte)
    assert ((model.lm_head.dequantize() - wte).abs() <= model.lm_head.scale[:, None] / 2 * (1 + 1e-6)).all()
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert 'lm_head.weight_int8' in model.state_dict() and 'lm_head.weight' not in model.state_dict()


def test_errors():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50))
    quantize_int8(model)
    with pytest.raises(ValueError, match='already int8-quantized'):
        quantize_int8(model)
    with torch.device('meta'):
        meta = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50))
    with pytest.raises(ValueError, match='meta device'):
        quantize_int8(meta)


def test_layers_made_and_run_under_inference_mode(monkeypatch):
    """sample.py decodes under torch.inference_mode, where the kernel probe builds its layer: its tensors are
    inference tensors (no version counter), and the layer must still take the kernel where this machine has it.
    The probe's timings are forced (the kernel 10x faster than the fallback), so its decision depends only on
    whether the kernel runs and is right, which is checked apart: torch._weight_int8pack_mm called directly."""
    g = torch.Generator().manual_seed(0)
    x, w, s = torch.randn(1, 768, generator=g), torch.randint(-127, 128, (2304, 768), dtype=torch.int8, generator=g), \
        torch.rand(2304, generator=g) / 1000
    try:
        direct = torch._weight_int8pack_mm(x, w, s)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"this torch has no CPU int8 kernel for float32 ({type(e).__name__}): nothing to probe")
    assert torch.allclose(direct.double(), F.linear(x.double(), w.double() * s.double()[:, None]), rtol=1e-4, atol=1e-6)
    # direct works, so the probe must choose it: float32 (bf16 is not 1.5x faster under the forced times)
    monkeypatch.setattr(quantize, '_best_time', lambda fn, device, reps=20:
                        1.0 if 'forward_fallback' in fn.__code__.co_names else 0.1)
    calls = []
    kernel = Int8Linear.forward_kernel
    monkeypatch.setattr(Int8Linear, 'forward_kernel', lambda self, *a: calls.append(a[1]) or kernel(self, *a))
    quantize._kernel_dtype.cache_clear()
    try:
        torch.manual_seed(0)
        with torch.inference_mode():
            assert quantize.int8_kernel_dtype('cpu', torch.float32) == torch.float32
            lin = nn.Linear(64, 48)
            layer = Int8Linear.from_linear(lin)
            x = torch.randn(2, 64)
            calls.clear()
            y = layer(x)
            assert calls == [torch.float32]  # the layer ran the kernel, not the fallback
            torch.testing.assert_close(y, F.linear(x, layer.dequantize(), lin.bias), atol=1e-5, rtol=1e-5)
        quantize._kernel_dtype.cache_clear()
        assert quantize.int8_kernel_dtype('cpu', torch.float32) == torch.float32  # (and outside inference mode)
    finally:
        quantize._kernel_dtype.cache_clear()


@pytest.mark.parametrize('K,N,bias', [(64, 40, True), (40, 37, False)])  # (40: not a multiple of the vector width)
def test_one_row_kernel_computes_the_dequantized_matmul(K, N, bias, monkeypatch):
    """The inductor-compiled one-row kernel (quantize.gemv_kernel) against a float64 matmul on the dequantized
    weight: float32 activations and accumulation, so float32 rounding only. layer(x) routes one row to it where
    the probe says it pays; forced here, so every machine tests it."""
    monkeypatch.setattr(quantize, 'gemv_pays', lambda: True)
    lin = linear(K=K, N=N, bias=bias)
    layer = Int8Linear.from_linear(lin)
    x = torch.randn(1, 1, K)
    ref = F.linear(x.double(), layer.dequantize(torch.float64), lin.bias.double() if bias else None)
    for mode in (torch.no_grad, torch.inference_mode):  # (generate runs under one, sample.py under the other)
        with mode():
            y = layer(x)
        assert y.dtype == torch.float32 and y.shape == (1, 1, N)
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-6)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    half = Int8Linear.from_linear(lin).to(torch.bfloat16)  # (scale and bias now bf16: the kernel is built for fp32)
    ref16 = F.linear(x.double(), half.dequantize(torch.float64), half.bias.double() if bias else None)
    torch.testing.assert_close(half(x.bfloat16()).double(), ref16, rtol=2 ** -7, atol=1e-3)


def test_one_row_decoding_is_the_float_model_on_the_dequantized_weights(monkeypatch):
    """Greedy decoding of one prompt through the compiled one-row kernel gives the tokens of the float model whose
    Linear weights are the int8 weights dequantized (an independent reference: nn.Linear, float64), and its
    logits within float32 rounding."""
    monkeypatch.setattr(quantize, 'gemv_pays', lambda: True)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=65)).eval()
    qm = quantize_int8(model)
    ref = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=65)).double().eval()
    ref.transformer.load_state_dict(qm.transformer.state_dict(), strict=False)  # (embeddings, norms, biases)
    for name, m in qm.named_modules():
        if isinstance(m, Int8Linear):
            target = ref.get_submodule(name)
            target.weight = nn.Parameter(m.dequantize(torch.float64))
            if m.bias is not None:
                target.bias = nn.Parameter(m.bias.double())
    idx = torch.randint(0, 65, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(qm(idx[:, :1])[0].double(), ref(idx[:, :1])[0], rtol=1e-4, atol=1e-4)
        got, want = generate(qm, idx, 40, temperature=0), generate(ref, idx, 40, temperature=0)
    assert torch.equal(got, want)


def test_without_a_compiler_one_row_falls_back_with_a_warning(monkeypatch):
    def broken(*args):
        raise RuntimeError("no C++ compiler found\nmore detail")
    monkeypatch.setattr(quantize, 'gemv_kernel', broken)
    quantize._gemv_pays.cache_clear()
    try:
        with pytest.warns(UserWarning, match='could not compile.*no C\\+\\+ compiler found'):
            assert quantize.gemv_pays() is False
        lin = linear()
        layer = Int8Linear.from_linear(lin)
        x = torch.randn(1, 64)
        with torch.no_grad():  # (one row: the torch._weight_int8pack_mm path, which this machine was probed for)
            torch.testing.assert_close(layer(x), F.linear(x, layer.dequantize(), lin.bias), atol=2e-2, rtol=2e-2)
    finally:
        quantize._gemv_pays.cache_clear()
