"""
Weight-only int8 quantization for decoding: every nn.Linear of a GPT (attention c_attn/c_proj, MLP c_fc/c_proj
and lm_head) becomes an Int8Linear holding an int8 weight (out, in) and one symmetric scale per output channel
(absmax / 127, rounded up to a bfloat16 value so the bf16 kernel uses it exactly); biases stay in float.
Activations stay in float: only the weights shrink, 4x against fp32.

    from gpt.quantize import quantize_int8
    model = quantize_int8(model)          # in place; then generate(model, idx, n) as usual

When it pays: weight-bound decoding. Every one-token step reads all the weights once for one row of
activations, so reading 1 byte per weight instead of 4 is the cost that shrinks. Prefill (many rows at once) is
compute-bound: above KERNEL_MAX_ROWS rows a layer dequantizes its weight and calls the BLAS, as fp32 would.

The tied head: transformer.wte stays an fp32 nn.Embedding for the lookup, and lm_head gets its own int8 copy
of the same matrix, so the tie is broken (the quantized model is for inference; train the float model).
State-dict names are weight_int8 and scale, not weight: a float checkpoint loaded into a quantized model fails
on the names instead of being truncated to int8. Quantize after loading. Quantizing twice, a model on the
meta device, or a LoRA model (merge it first: lora.strip) raises ValueError with one line.

Kernels (each decided on this machine, by trying and timing, once per process):
- One row on the CPU (a one-token step of one prompt, as sample.py decodes): gemv_kernel, one loop compiled by
  inductor that converts each int8 weight as it reads it and accumulates in float32 (float32 activations: no
  rounding besides the weights'), where gemv_pays finds it faster than the kernel below. It is bound by reading
  the weights from memory (~26 GB/s on 2 threads of an AMD EPYC, against ~13-15 G weights/s for
  torch._weight_int8pack_mm on weights streamed from memory; the latter is faster, ~38 G/s, only on weights
  already in the cache). Compiling it costs ~4 s once per process with inductor's cache warm (~10 s cold).
- Up to KERNEL_MAX_ROWS rows (batched decoding; one row elsewhere): torch._weight_int8pack_mm(x (M, K), w_int8
  (N, K), scales (N,)), torch 2.6 and 2.13 alike (int8_kernel_dtype). x and scales must have the same dtype
  (float32, bfloat16 or float16). On x86 only bfloat16 is vectorized (AVX2/AVX-512); float32 and float16 run a
  scalar loop ~3-4x slower than an fp32 matmul. Its bf16 path loads 16 (AVX-512) or 8 (AVX2) values at a time
  with aligned loads: K must be a multiple of 16 and x's rows 32-byte aligned, or it reads garbage (NaN) or
  segfaults (checked here: never called otherwise). Its time grows with rows (4-row tiles, no reuse). An fp32
  model on such a CPU rounds the activations to bf16 for it, accumulates in fp32, and gets the output rounded to
  bf16 (relative error <= 2^-8, below int8's). CUDA/MPS: the same op where this torch has it and it computes
  the right thing.
- Otherwise (prefill, or no kernel): dequantize to the activations' dtype and F.linear (correct, no faster than
  float).
Under autocast the layer computes in the autocast dtype, as nn.Linear would.

Measured (GPT-2 124M, random init, KV cache, greedy, `python bench.py --mode=sample --model=gpt2 --device=cpu
--max_new_tokens=50 --iters=3 --warmup=1 --threads=2 --variants=fp32,int8`, AMD EPYC (avx512f, avx512_bf16,
no AMX), 2 threads, torch 2.13): int8 112-123 against 38-42 tokens/s for fp32 on oneDNN-packed weights (2.7-2.9x
in three runs; 1 thread 74 against 30, 2.5x); with torch._weight_int8pack_mm for the one row instead, 74-79
tokens/s (1.7-1.9x). Greedy tokens identical to fp32's over 200 tokens; logits within 0.065 (max) and 0.010
(mean) of fp32's (std 0.555). At 8 rows
(torch._weight_int8pack_mm) int8 is slower than packed fp32 (165 against 241 tokens/s): its time grows with
rows while oneDNN reuses each weight for all of them.

Tolerance (tests/test_quantize.py): per-channel int8 rounds each weight by at most scale/2, an RMS error of
step/sqrt(12) ~ 0.7% of a Gaussian row's std (absmax ~3.2 std over 768 values); with bf16 activations a
quantized GPT's logits differ from fp32 by a mean absolute difference below 3% of the logits' std and a
maximum below 15% of it on the test models, and greedy decoding agrees for at least 90% of tokens on a model
with peaked logits.
"""

import functools
import time
import warnings

import torch
import torch.nn as nn
from torch.nn import functional as F

KERNEL_MAX_ROWS = 16  # above this many rows (prefill) dequantize + BLAS beats the row-by-row kernel (measured 16-32)
ALIGN = 32            # bytes: the x86 bf16 kernel's aligned 256-bit loads of activation rows


def quantize_weight(w):
    """(out, in) float -> (int8 (out, in), float32 scales (out,)). Symmetric per output channel; the scale is
    absmax / 127 rounded UP to a bfloat16 value, so |w / scale| <= 127 (no clipping: every weight is within
    scale / 2 of its dequantized value) and bf16/fp32 kernels use the same scale."""
    w = w.detach().float()
    s = w.abs().amax(dim=1) / 127
    if not torch.isfinite(s).all():
        raise ValueError("quantize_int8: the weights hold inf or NaN; quantize a model with finite weights")
    b = s.to(torch.bfloat16)
    low = b.float() < s
    b[low] = (b[low].view(torch.int16) + 1).view(torch.bfloat16)  # next bf16 up (positive values)
    s = b.float().clamp_min(torch.finfo(torch.bfloat16).tiny)  # (an all-zero row: any scale, q = 0)
    q = torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8)
    return q, s


class Int8Linear(nn.Module):
    """A Linear with an int8 weight (out, in) and per-output-channel float scales; bias in float."""

    def __init__(self, in_features, out_features, bias=True, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer('weight_int8', torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer('scale', torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None
        self._scales = {}  # the scales in a kernel's dtype, made once (a per-step cast costs ~5 us per layer)

    @classmethod
    def from_linear(cls, linear):
        m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=linear.weight.device)
        q, s = quantize_weight(linear.weight)
        m.weight_int8.copy_(q)
        m.scale.copy_(s)
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return m

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"

    def dequantize(self, dtype=torch.float32):
        """The weight the layer computes with, (out, in) in dtype: w_int8 * scale."""
        return (self.weight_int8.to(dtype) * self.scale.to(dtype)[:, None])

    def scale_as(self, dtype):
        # Remade when the buffer is another tensor (.to(), a device move) or was changed in place (load_state_dict
        # bumps its version). (An inference tensor, made under torch.inference_mode, has no version counter:
        # nothing outside that mode can change it in place.)
        src = self.scale
        version = 0 if src.is_inference() else src._version
        s = self._scales.get(dtype)
        if s is None or s[0] is not src or s[1] != version:
            s = self._scales[dtype] = (src, version, src.to(dtype).contiguous())
        return s[2]

    def kernel_fits(self, x2):
        """Can torch._weight_int8pack_mm run on these (M, K) activations without reading out of bounds?"""
        return (self.in_features % 16 == 0 and x2.is_contiguous() and x2.data_ptr() % ALIGN == 0
                and self.weight_int8.is_contiguous() and self.weight_int8.data_ptr() % ALIGN == 0)

    def forward_kernel(self, x2, kdtype):
        """(M, K) -> (M, N) in kdtype via torch._weight_int8pack_mm; copies x when it is misaligned."""
        x2 = x2.to(kdtype)
        if not self.kernel_fits(x2):
            x2 = x2.clone(memory_format=torch.contiguous_format)  # (a fresh allocation is 64-byte aligned)
            if not self.kernel_fits(x2):
                raise RuntimeError("Int8Linear: in_features must be a multiple of 16 for the int8 kernel")
        return torch._weight_int8pack_mm(x2, self.weight_int8, self.scale_as(kdtype))

    def forward_fallback(self, x2, dtype):
        return F.linear(x2.to(dtype), self.dequantize(dtype))

    def forward_row(self, x1):
        """One row (1, K) -> (1, N) float32 through the compiled one-row kernel (gemv_kernel), bias included."""
        kernel = gemv_kernel(self.in_features, self.out_features, self.bias is not None)
        args = (x1.float().contiguous(), self.weight_int8, self.scale.float())  # (float32: what it was built for)
        return kernel(*args, self.bias.float()) if self.bias is not None else kernel(*args)

    def forward(self, x):
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        x2 = x.reshape(-1, self.in_features)
        if x2.size(0) == 1 and dev == 'cpu' and not x.requires_grad and not torch.compiler.is_compiling() \
                and self.weight_int8.is_contiguous() and gemv_pays():
            return self.forward_row(x2).to(dtype).view(*x.shape[:-1], self.out_features)
        kd = None
        if (x2.size(0) <= KERNEL_MAX_ROWS and self.in_features % 16 == 0
                and not torch.compiler.is_compiling()):  # (compiled: alignment is not promised; fallback)
            kd = int8_kernel_dtype(x.device, dtype)
        y = self.forward_kernel(x2, kd) if kd is not None else self.forward_fallback(x2, dtype)
        if self.bias is not None:  # (bf16 kernel output + fp32 bias: the add promotes, one op instead of two)
            y = torch.add(y, self.bias if self.bias.dtype == dtype else self.bias.to(dtype))
        return y.to(dtype).view(*x.shape[:-1], self.out_features)


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type == 'mps':
        torch.mps.synchronize()


def _best_time(fn, device, reps=20):
    fn()
    _sync(device)
    best = float('inf')
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


@functools.lru_cache(maxsize=None)
def _kernel_dtype(device, dtype):
    """Try torch._weight_int8pack_mm on this device in `dtype` (and in bfloat16 for float32 activations), check
    it against the dequantized reference, time it against the fallback at a GPT-2 layer's shape (768 -> 2304,
    one row), and return the fastest correct kernel dtype, or None for the fallback. bf16 for fp32 activations
    only when it is 1.5x faster than the fp32 kernel (it rounds the activations). ~50 ms, once per process."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(768, 2304, bias=False)
    nn.init.normal_(lin.weight, std=0.02, generator=g)
    layer = Int8Linear.from_linear(lin).to(device)
    x = torch.randn(1, 768, generator=g).to(device)
    ref = F.linear(x.double(), layer.dequantize(torch.float64))
    tol = 1e-2 * ref.abs().max().item()
    candidates = [dtype] + ([torch.bfloat16] if dtype == torch.float32 else [])
    times = {}
    for kd in candidates:
        try:
            y = layer.forward_kernel(x, kd)
            if (y.double() - ref).abs().max().item() > tol:
                continue
        except (RuntimeError, NotImplementedError):  # (no such kernel for this device or dtype)
            continue
        times[kd] = _best_time(lambda: layer.forward_kernel(x, kd), device)
    if not times:
        return None
    if dtype in times and torch.bfloat16 in times and dtype != torch.bfloat16:
        best = torch.bfloat16 if times[torch.bfloat16] * 1.5 < times[dtype] else dtype
    else:
        best = min(times, key=times.get)
    fallback = _best_time(lambda: layer.forward_fallback(x, dtype), device)
    return best if times[best] < fallback else None


def int8_kernel_dtype(device, dtype):
    """The dtype Int8Linear runs torch._weight_int8pack_mm in for activations of `dtype` on `device` (few rows),
    or None where the dequantize fallback is used. Decided on this machine (see _kernel_dtype)."""
    device = torch.device(device)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    return _kernel_dtype(device, dtype)


def _gemv(x, w, s, *bias):
    """One row of activations against an int8 weight: (1, K) float32, (N, K) int8, (N,) scales -> (1, N) float32.
    Written as a product and a sum over K so that inductor emits one loop that converts each weight as it reads it
    (vectorized, threaded over N, accumulating in float32), instead of a dequantized copy and a matmul."""
    y = (x * w.float()).sum(-1) * s
    return (y + bias[0] if bias else y)[None]


@functools.lru_cache(maxsize=None)
def gemv_kernel(K, N, bias):
    """_gemv compiled by inductor for one (K, N) shape (~0.1 s with inductor's cache warm, ~1 s cold, plus ~4-10 s
    to start inductor once per process). Traced with make_fx and compiled directly, not through torch.compile:
    no guards to check on each call (a call costs ~6 us against ~25), and no recompile limit to fall off into
    eager (which would materialize every weight in float) when a model has many shapes. The compiled function
    asserts the shapes and strides it was built for."""
    from torch.fx.experimental.proxy_tensor import make_fx
    example = [torch.zeros(1, K), torch.zeros(N, K, dtype=torch.int8), torch.zeros(N)] + [torch.zeros(N)] * bias
    with torch.inference_mode(False), torch.no_grad():
        return torch._inductor.compile(make_fx(_gemv)(*example), example)


def gemv_pays():
    """Does one-row decoding on this CPU run faster through gemv_kernel than through torch._weight_int8pack_mm
    (or the fallback)? Tried once per process at the first one-row call (int8 layers of GPT-2's MLP shape,
    768 -> 3072, 75 MB in all: out of the caches, as a model's weights are): the compiled kernel must match the
    dequantized matmul and take at most 0.9x the time. False, with a warning, where inductor cannot compile here
    (no C++ compiler).

    Why it wins: torch._weight_int8pack_mm runs at ~38 G weights/s on weights in the cache but ~13-15 G/s on
    weights streamed from memory (its reads do not keep the memory busy), while the compiled loop streams them
    at ~26 G/s; a one-token step reads every weight from memory. GPT-2 124M's 49 layers, one row, 2 threads,
    AMD EPYC (AVX-512): 4.7-5.4 against 8.4-10.2 ms."""
    return _gemv_pays(torch.get_num_threads())


@functools.lru_cache(maxsize=None)
def _gemv_pays(threads):
    g = torch.Generator().manual_seed(0)
    layers = []
    for _ in range(32):
        layer = Int8Linear(768, 3072, bias=False)
        layer.weight_int8.copy_(torch.randint(-127, 128, (3072, 768), dtype=torch.int8, generator=g))
        layer.scale.copy_(torch.rand(3072, generator=g) / 1000)
        layers.append(layer)
    x = torch.randn(1, 768, generator=g)
    try:
        got = layers[0].forward_row(x)
    except Exception as e:  # (inductor's failures are many kinds: no compiler, a broken toolchain, ...)
        warnings.warn(f"quantize: one-row int8 decoding uses torch._weight_int8pack_mm, inductor could not compile "
                      f"its own kernel here ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})")
        return False
    ref = F.linear(x.double(), layers[0].dequantize(torch.float64))
    if not torch.allclose(got.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item()):
        return False
    kd = int8_kernel_dtype(x.device, torch.float32)
    other = (lambda m: m.forward_kernel(x, kd)) if kd is not None else (lambda m: m.forward_fallback(x, torch.float32))

    def each(step):  # one one-row pass over all the layers
        return lambda: [step(m) for m in layers]
    with torch.no_grad():
        compiled, current = (_best_time(each(s), x.device, reps=2) for s in (lambda m: m.forward_row(x), other))
    return compiled <= 0.9 * current


def prepare_one_row(model):
    """Settle now, not at the first token, what a one-row step of this model's CPU int8 layers will run: probe
    gemv_pays and, where it pays, compile gemv_kernel for each layer shape. generate.decode_layout calls it
    (sample.py, serve.py, bench.py): any decoding reaches one row, at least when the other rows have finished."""
    layers = [m for m in model.modules() if isinstance(m, Int8Linear) and m.weight_int8.device.type == 'cpu']
    if layers and gemv_pays():
        for m in layers:
            gemv_kernel(m.in_features, m.out_features, m.bias is not None)


def quantize_int8(model):
    """Replace every nn.Linear of the model by an Int8Linear, in place; returns the model. The tied head gets its
    own int8 copy (wte stays float for the lookup)."""
    if any(isinstance(m, Int8Linear) for m in model.modules()):
        raise ValueError("quantize_int8: the model is already int8-quantized; quantize the float model once")
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, m in linears:
        if type(m) is not nn.Linear:
            raise ValueError(f"quantize_int8: {name} is a {type(m).__name__}, not a plain nn.Linear; "
                             f"merge the adapters first (lora.strip(model))")
        if m.weight.device.type == 'meta':
            raise ValueError("quantize_int8: the model's weights are on the meta device (no values yet); "
                             "load or initialise them first")
    for name, m in linears:
        owner, _, attr = name.rpartition('.')
        setattr(model.get_submodule(owner) if owner else model, attr, Int8Linear.from_linear(m))
    return model
