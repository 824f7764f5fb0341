"""
The one recipe that turns an init_from into a model ready to generate: sample.py, serve.py, bench.py, demos.py and
eval.py all take it, so a speed-up or a fix to how a decoding model is set up lands in every script at once.

    d = load_for_decoding('gpt2', device='auto', dtype='auto', quantize='int8', rows=8)
    Engine(d.model, decoder=d.decoder, ...)

In order: the device and decoding's dtype (float32 on CPUs: device.decode_dtype), the weights (loading.load_model,
dropout off, eval mode), int8 weights if asked (quantize.py), the CPU weight layout for `rows` rows a step
(fastpath.decode_layout: oneDNN-packed float32 where it pays, else column-major), and the one-token step compiled
or replayed from a CUDA graph if asked (fastpath.compile_decoder, fastpath.CUDAGraphDecoder).
"""
from dataclasses import dataclass
from typing import Any, Optional

import torch

from gpt.device import decode_dtype, pick_device
from gpt.errors import UserError, check_choice
from gpt.fastpath import CUDAGraphDecoder, compile_decoder, decode_layout
from gpt.loading import load_model

QUANTIZE = ('none', 'int8')


@dataclass
class Decoding:
    model: torch.nn.Module
    meta: Optional[dict]          # the tokenizer's metadata (get_tokenizer takes it)
    ckpt: Optional[dict]          # the checkpoint it came from (None for hub and HF models)
    device: str
    dtype: str                    # a dtype name, as device.autocast_ctx takes it
    decoder: Any = None           # the compiled or CUDA-graph one-token step, or None (the model's own forward)
    int8_layers: int = 0          # Linear layers holding int8 weights
    n_params: int = 0             # the parameters as loaded (before int8 and the CPU layouts change their storage)
    rows: int = 1                 # the rows a step it was laid out for

    @property
    def step(self):
        """What steps the decoding: the decoder if there is one, else the model."""
        return self.model if self.decoder is None else self.decoder


def check_decoding(quantize='none', compile=False, cuda_graph=False, use_cache=True):
    """The settings' mistakes, before anything loads (a mistake costs nothing)."""
    check_choice('quantize', quantize, QUANTIZE)
    if (compile or cuda_graph) and not use_cache:
        raise UserError("--compile/--cuda_graph run the cached one-token step: drop --use_cache=False")


def prepare_for_decoding(model, dtype, quantize='none', rows=1, compile=False, cuda_graph=False, layout='auto'):
    """Set up a loaded model (on its device, in eval mode) for generation only; returns (decoder, int8 layers).
    layout: 'auto' (packed for oneDNN where it pays and nothing traces the weights: not compiled, float32; else
    column-major), 'colmajor', or 'none' (the weights as trained). compile, cuda_graph: the one-token step compiled
    (fastpath.compile_decoder) and/or replayed from a CUDA graph."""
    check_decoding(quantize, compile, cuda_graph)
    check_choice('layout', layout, ('auto', 'colmajor', 'none'))
    int8_layers = 0
    if quantize == 'int8':
        from gpt.quantize import Int8Linear, quantize_int8
        int8_layers = sum(isinstance(m, Int8Linear) for m in quantize_int8(model).modules())
    if layout != 'none':  # (compiled: column-major, which torch.compile traces; packed weights serve float32 only)
        decode_layout(model, pack=layout == 'auto' and not compile and dtype == 'float32', rows=rows)
    try:
        decoder = compile_decoder(model) if compile else None
    except ValueError as e:
        raise UserError(f"{e}: decode without --compile") from None
    if cuda_graph:
        try:
            decoder = CUDAGraphDecoder(model if decoder is None else decoder)
        except ValueError as e:
            raise UserError(f"--cuda_graph=True: {e} (--device=cuda)") from None
    return decoder, int8_layers


def load_for_decoding(init_from, out_dir='out', ckpt_name='best.pt', device='auto', dtype='auto', quantize='none',
                      rows=1, compile=False, cuda_graph=False, layout='auto', **load_args):
    """A model from init_from (as loading.load_model reads it) set up to generate `rows` rows a step, as a Decoding.
    device, dtype: settings ('auto' or a name); rows: a number, or a function of the loaded model that gives one
    (serve.py sizes its batch by the model's KV cache); load_args: load_model's other arguments (block_size, ...)."""
    check_decoding(quantize, compile, cuda_graph)
    dev = pick_device(device)
    dt = decode_dtype(dtype, dev)
    model, meta, ckpt = load_model(init_from, out_dir, ckpt_name, dropout=0.0, **load_args)
    model.to(dev).eval()
    n_params = sum(p.numel() for p in model.parameters())
    rows = rows(model) if callable(rows) else rows
    decoder, int8_layers = prepare_for_decoding(model, dt, quantize, rows, compile, cuda_graph, layout)
    return Decoding(model, meta, ckpt, dev, dt, decoder, int8_layers, n_params, rows)
