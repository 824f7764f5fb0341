"""device.py: the dtype 'auto' picks per machine, the peak FLOP/s MFU is measured against (data sheets for known
GPUs, the fp32 units for emulated bf16 on CPUs), and the torch version check. GPUs are simulated by patching
torch.cuda's queries, since the tests run on CPUs."""
import math
import os

import pytest
import torch

from gpt import device
from gpt.errors import UserError


def test_cpu_peak_is_measured_and_override_wins():
    assert device.device_peak_flops('cpu', override=123e12) == 123e12
    measured = device.device_peak_flops('cpu')
    assert measured > 0 and math.isfinite(measured)


@pytest.fixture
def gpu(monkeypatch):
    """Pretend a GPU of the given name is device 0."""
    def use(name):
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
        monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a: name)
    return use


@pytest.mark.parametrize('name, bf16, fp32', [
    ('NVIDIA A100-SXM4-40GB', 312e12, 156e12),      # fp32 math on tensor cores as TF32
    ('NVIDIA H100 80GB HBM3', 989e12, 494e12),
    ('Tesla V100-SXM2-16GB', 125e12, 15.7e12),      # no TF32: fp32 runs on the plain FP32 units
    ('Tesla T4', 65e12, 8.1e12),
])
def test_gpu_peaks_from_the_data_sheet(gpu, name, bf16, fp32):
    gpu(name)
    assert device.device_peak_flops('cuda', torch.bfloat16) == bf16
    assert device.device_peak_flops('cuda', torch.float16) == bf16
    assert device.device_peak_flops('cuda', torch.float32) == fp32


def test_emulated_bf16_is_measured_against_the_fp32_peak(monkeypatch):
    # on a CPU without bf16 hardware a bf16 matmul is converted and done in fp32 (slowly): its MFU is
    # against the fp32 units, not against the emulation's own (tiny) speed
    monkeypatch.setattr(device, 'cpu_has_native_bf16', lambda: False)
    measured = []
    monkeypatch.setattr(device, 'measure_matmul_flops', lambda dev, dtype: measured.append(dtype) or 1.0)
    device.device_peak_flops('cpu', torch.bfloat16)
    monkeypatch.setattr(device, 'cpu_has_native_bf16', lambda: True)
    device.device_peak_flops('cpu', torch.bfloat16)
    assert measured == [torch.float32, torch.bfloat16]


@pytest.mark.parametrize('fast, expected', [(True, 'bfloat16'), (False, 'float32')])
def test_auto_dtype_on_cpu_is_bf16_only_where_it_is_fast(monkeypatch, fast, expected):
    monkeypatch.setattr(device, 'cpu_has_fast_bf16', lambda: fast)
    assert device.pick_dtype('auto', 'cpu') == expected
    assert device.pick_dtype('float32', 'cpu') == 'float32'  # an explicit choice is kept
    with pytest.raises(UserError, match="dtype must be auto, float32, bfloat16, float16, got 'fp8'"):
        device.pick_dtype('fp8', 'cpu')


@pytest.mark.parametrize('amx, flags, bf16_speed, expected', [
    (True, {'avx512_bf16', 'amx_bf16'}, 0.1, True),   # AMX: bf16, without measuring
    (False, {'avx2'}, 5.0, False),                    # no native bf16: emulated, never
    (False, {'avx2', 'avx512_bf16'}, 1.5, True),      # native bf16 measured 1.5x fp32: bf16
    (False, {'avx2', 'avx512_bf16'}, 1.1, False),     # ... only 1.1x: not worth the precision
])
def test_fast_bf16_is_amx_or_measured_where_bf16_is_native(monkeypatch, amx, flags, bf16_speed, expected):
    device.cpu_has_fast_bf16.cache_clear()
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: amx, raising=False)
    monkeypatch.setattr(device, 'cpu_flags', lambda: flags)
    measured = []
    monkeypatch.setattr(device, 'measure_matmul_flops', lambda dev, dtype, n, seconds: measured.append(dtype) or (
        bf16_speed if dtype == torch.bfloat16 else 1.0))
    try:
        assert device.cpu_has_fast_bf16() is expected
    finally:
        device.cpu_has_fast_bf16.cache_clear()
    assert bool(measured) == (not amx and 'avx512_bf16' in flags)


def test_older_torch_is_one_line_naming_the_version(monkeypatch):
    monkeypatch.setattr(torch, '__version__', '2.5.1+cpu')
    with pytest.raises(UserError, match=r"PyTorch 2\.6 or newer is needed, found 2\.5\.1\+cpu"):
        device.pick_device('cpu')
    monkeypatch.setattr(torch, '__version__', '2.6.0')
    assert device.pick_device('cpu') == 'cpu'


def test_cpu_name_shows_the_flags_that_decide_dtype_speed(monkeypatch):
    # the flags as read on a CPU that has some of them (whatever this machine has), then on one that has none
    for flags, shown in (({'fpu', 'avx2', 'avx512f', 'amx_bf16', 'sse4_2'}, 'avx2, avx512f, amx_bf16'),
                         ({'fpu', 'sse4_2'}, 'no SIMD flags read')):
        monkeypatch.setattr(device, 'cpu_flags', lambda: frozenset(flags))
        device.cpu_name.cache_clear()
        try:
            name = device.cpu_name()
        finally:
            device.cpu_name.cache_clear()
        assert f'({shown}), {os.cpu_count()} CPUs' in name, name
        assert 'fpu' not in name and 'sse4_2' not in name and 'avx512_bf16' not in name
    monkeypatch.undo()  # this machine's own flags: each deciding flag shown exactly where it is read
    name, flags = device.cpu_name(), device.cpu_flags()
    for flag in ('avx2', 'avx512_bf16', 'amx_bf16'):
        assert (flag in name) == (flag in flags)
