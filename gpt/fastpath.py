"""
The fast decode paths: CPU weight layouts for decoding steps (decode_layout: oneDNN-packed float32 where it pays on
this machine, else column-major), the one-token step compiled with torch.compile (compile_decoder), and replayed
from a CUDA graph (CUDAGraphDecoder). gpt/decoding.py applies them; gpt/engine.py steps through them.
"""

import functools
import time

import torch
from torch.nn import functional as F

from gpt.quantize import prepare_one_row


def decode_layout(model, pack=True, rows=1):
    """Lay out a model used only for generation (sample.py, serve.py, bench.py) for its decoding steps on the
    CPU, where a step is a few rows of activations against every weight, and how the BLAS reads the weights
    sets the speed. rows: how many rows its steps will decode together (1: one prompt; a batch). Returns the
    model.

    pack=True, where oneDNN pays on this machine at that many rows (packing_pays): every float32 nn.Linear
    becomes a PackedLinear, its weight reordered once into oneDNN's blocked layout for this CPU (the layout
    torch.compile's CPU backend gives frozen weights). GPT-2 124M on a 2-core AMD EPYC (AVX-512), fp32, two
    threads: 24.7 against 32.0 ms a token at batch 1, 33 against 94 ms a step at batch 8, where MKL runs a skinny
    matrix product far below the memory's speed (`python bench.py --mode=sample --model=gpt2 --threads=2
    --variants=fp32,fp32+colmajor`); one thread: 38 against 34 ms at batch 1 (oneDNN loses), 51-62 against
    95-98 ms at batch 8. Logits equal the Linear's within float rounding. The packed weight replaces the
    Parameter (no second copy); a tied head gets its own packed copy (the embedding keeps the original), so the
    model no longer trains or saves as before: pack after loading, for decoding only.
    Otherwise (pack=False, e.g. for torch.compile, which does not trace oneDNN's opaque tensors, or where oneDNN
    loses): every Linear weight is stored column-major (the memory of its transpose; the same (out, in)
    Parameter and values), which MKL streams through x @ W faster at batch 1 (1.17x at 124M on a 2-core AVX2
    EPYC); tied weights stay tied. Only CPU weights are touched, and calling it twice changes nothing.
    Int8 layers (quantize.py) keep their layout; their one-row kernel is chosen and compiled here, at load time."""
    prepare_one_row(model)
    pack = pack and packing_pays(rows)
    for parent in list(model.modules()):
        for name, module in list(parent.named_children()):
            if not isinstance(module, torch.nn.Linear) or module.weight.device.type != 'cpu':
                continue
            if pack and type(module) is torch.nn.Linear and module.weight.dtype == torch.float32:
                setattr(parent, name, PackedLinear(module))  # (not a LoRA layer: merge it first, lora.strip)
            elif module.weight.is_contiguous():
                module.weight.data = module.weight.data.t().contiguous().t()
    return model


class PackedLinear(torch.nn.Module):
    """A float32 Linear for decoding on the CPU, its weight in oneDNN's blocked layout (decode_layout). Float32
    activations go through oneDNN's matmul on the packed weight; anything else (bf16 autocast, another dtype)
    through F.linear on the weight unpacked for the call (correct, slow)."""

    def __init__(self, linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, oneDNN"

    def forward(self, x):
        if x.dtype == torch.float32 and not torch.is_autocast_enabled('cpu'):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, 'none', [], '')
        return F.linear(x, self.packed.to_dense().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def packing_pays(rows=1):
    """Does this CPU decode `rows` rows at a time faster on oneDNN-packed weights than on column-major ones?
    Tried once per process for one row and for a batch (8 rows stand for any rows > 1), on 8 layers of GPT-2's
    MLP shape (768 -> 3072, 75 MB: out of the caches, as a model's weights are): the packed result must equal
    F.linear's within float rounding and take at most 0.9x its time. False where this torch has no oneDNN
    (~0.3 s)."""
    return _packing_pays(1 if rows <= 1 else 8)


@functools.lru_cache(maxsize=None)
def _packing_pays(rows):
    if not torch.backends.mkldnn.is_available():
        return False
    g = torch.Generator().manual_seed(0)
    layers = [torch.nn.Linear(768, 3072, bias=False) for _ in range(8)]
    for lin in layers:
        torch.nn.init.normal_(lin.weight, std=0.02, generator=g)
    x = torch.randn(rows, 768, generator=g)
    try:
        packed = [PackedLinear(lin) for lin in layers]
        ref = F.linear(x, layers[0].weight)
        if not torch.allclose(packed[0](x), ref, rtol=1e-4, atol=1e-5):
            return False
    except (RuntimeError, AttributeError, NotImplementedError):  # (no such op in this build)
        return False
    decode_layout(torch.nn.Sequential(*layers), pack=False)  # (column-major: what decoding would use instead)

    def best(mods):
        with torch.inference_mode():
            for m in mods:
                m(x)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                for m in mods:
                    m(x)
                times.append(time.perf_counter() - t0)
        return min(times)
    return best(packed) <= 0.9 * best(layers)


def compile_decoder(model, backend='inductor'):
    """The model compiled for one-token decoding steps: pass it as generate(..., decoder=...). Those steps then
    run on a static KV cache (kvcache.KVCache), so the graph is built once, for every position and every prompt of
    the generation (the prompt itself is prefilled by the eager model); on the CPU inductor's C++ wrapper
    launches the kernels without Python in between. Worth it where Python is the cost: a 4-layer 128-wide model
    decodes 1.3-2.4x faster than eager (~4x transformers' generate) on a 2-core AVX2 EPYC (2.1x the oneDNN-packed
    eager, 2.5x transformers', on a 2-core AVX-512 EPYC at context 256, 200 tokens), once the compile is paid
    (~20 s the first time, ~5 s with inductor's cache warm); at the 124M shape, where reading the weights is the
    cost, it is 0.93x (every step also reads the whole static cache). `python bench.py --mode=sample
    --variants=cache,compile+cache,hf` measures it. backend='eager': dynamo's tracing and guards alone (tests)."""
    return CompiledDecoder(model, backend)


class CompiledDecoder:
    """compile_decoder's decoder: the model under torch.compile(fullgraph=True, dynamic=False), stepping on a
    static cache whose host lengths it counts itself, outside the graph (counted inside, each step's lengths
    would be guards of the graph, and every position a new compile). Each number of rows stepped together gets
    its own graph: the Engine's batch shrinks as ragged rows pass the context, so up to one per slot of the
    cache, past dynamo's default limit of 8 (which fullgraph=True turns into an error)."""

    def __init__(self, model, backend='inductor'):
        cpu = model.transformer.wte.weight.device.type == 'cpu'
        self.model = model
        self.compiled = torch.compile(model, fullgraph=True, dynamic=False, backend=backend,
                                      options={'cpp_wrapper': True} if cpu and backend == 'inductor' else None)
        # dynamo's limit on graphs per function: 'cache_size_limit' before torch 2.7 (an alias of the new name since)
        self.limit = 'recompile_limit' if hasattr(torch._dynamo.config, 'recompile_limit') else 'cache_size_limit'

    def __call__(self, idx, kv_cache):
        if not kv_cache.static:
            raise ValueError("a compiled decoder steps on a static KV cache")
        kv_cache.host_counts = False
        try:
            with torch._dynamo.config.patch(**{self.limit: max(8, kv_cache.batch_size + 1)}):
                logits, _ = self.compiled(idx, kv_cache=kv_cache)
        finally:
            kv_cache.host_counts = True
        kv_cache.count(idx.size(1))
        return logits, None


class CUDAGraphDecoder:
    """The one-token step captured in a CUDA graph (gpt-fast's idea, with torch's own torch.cuda.CUDAGraph): pass
    it as a decoder (generate, Engine, sample.py --cuda_graph=True). On a GPU a small model's step is mostly
    kernel launches from Python; a replayed graph launches them all at once. One graph per batch of rows,
    captured at its first step on a static cache (every address and shape fixed; positions only on the device),
    then replayed: the tokens go into the graph's input buffer, the cache's keys and positions advance on the
    device, and the host's copy of the lengths is advanced here (the captured Python does not run again).
    Not yet measured on a GPU in this repository (no GPU was lent when it was written): the GPU check runs it."""

    def __init__(self, model):
        """model: the GPT, or compile_decoder's CompiledDecoder of it (captured as it runs)."""
        base = model.model if isinstance(model, CompiledDecoder) else model
        if base.transformer.wte.weight.device.type != 'cuda':
            raise ValueError("a CUDA graph decoder needs the model on a CUDA device")
        self.model, self.graphs = model, {}

    def __call__(self, idx, kv_cache):
        if not kv_cache.static:
            raise ValueError("a CUDA graph replays fixed addresses: use a static KV cache")
        key = (id(kv_cache), kv_cache.rows, idx.shape)
        if key not in self.graphs:
            self.graphs[key] = self.capture(idx, kv_cache)
        graph, tokens, logits = self.graphs[key]
        tokens.copy_(idx)
        graph.replay()
        kv_cache.count(idx.size(1))
        return logits, None

    def capture(self, idx, cache):
        """Warm up on a side stream (as CUDA graphs need), then capture; the cache is put back as it was after
        each, so the step that follows is the real one."""
        tokens = idx.clone()
        pos, lengths = cache.pos.clone(), list(cache.lengths)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.model(tokens, kv_cache=cache)
                cache.pos.copy_(pos)
                cache.lengths = list(lengths)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits, _ = self.model(tokens, kv_cache=cache)
        cache.lengths = list(lengths)  # (capture ran the Python once, launching nothing)
        return graph, tokens, logits
