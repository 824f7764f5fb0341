"""
Device and precision: which device and dtype a run uses, the autocast context, and the peak FLOP/s
that MFU is measured against. train.py, sample.py, bench.py and eval.py all choose them here.

    python -m gpt.device          # this machine: CPU model and flags, the dtype 'auto' picks, measured peaks
"""

import contextlib
import functools
import os
import platform
import time

import torch
from torch.torch_version import TorchVersion

from gpt.errors import UserError

DTYPES = ('float32', 'bfloat16', 'float16')


MIN_TORCH = (2, 6)  # FSDP2's fully_shard in torch.distributed.fsdp, DTensor, nn.utils.get_total_norm


def check_torch():
    """One line naming the version needed, instead of an ImportError deep inside a run."""
    if TorchVersion(torch.__version__) < MIN_TORCH:
        raise UserError(f"PyTorch {'.'.join(map(str, MIN_TORCH))} or newer is needed, found {torch.__version__}: "
                        f"see https://pytorch.org for the build for your machine")


def pick_device(device='auto'):
    """'auto' picks cuda > mps > cpu; an explicit CUDA device must exist. (Every script calls this first,
    so it also checks the torch version, and sets the CPU's thread count: cpu_threads.)"""
    check_torch()
    device = _pick_device(device)
    if device == 'cpu':
        threads = cpu_threads()
        if threads:
            torch.set_num_threads(threads)
    return device


def cpu_threads():
    """Threads for the CPU's math, or None to leave torch's choice (OMP_NUM_THREADS, when the user sets it).

    torch starts one thread per core the machine has. On a machine other processes keep busy that is
    the worst choice: OpenMP's threads wait for each other at every operation, and a thread that waits for
    a core its neighbour holds stalls all of them (the CPU quick start ran 8x slower on a loaded 2-core
    machine with 2 threads than with 1), while one thread too few costs at most its share. So: the cores
    this process may use (usable_cores), less those other processes keep busy (busy_cores), at least one."""
    if os.environ.get('OMP_NUM_THREADS'):
        return None
    cores = usable_cores()
    return max(1, min(cores, int(cores - busy_cores(cores) + 0.5)))


CGROUP_QUOTAS = ('/sys/fs/cgroup/cpu.max',  # cgroup v2: "max 100000", or "200000 100000" for 2 CPUs
                 '/sys/fs/cgroup/cpu/cpu.cfs_quota_us')  # cgroup v1: "-1" or "200000", beside cpu.cfs_period_us
LOADAVG = '/proc/loadavg'  # "0.52 0.31 0.20 3/412 1234": the 4th field is the processes runnable now


def _words(path):
    try:
        with open(path, encoding='ascii') as f:
            return f.read().split()
    except OSError:
        return []


def usable_cores():
    """The cores this process may run on: its affinity mask (taskset, a container's cpuset) and a container's
    CPU quota (cgroup v2 or v1), which torch's default ignores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # (macOS and Windows have no affinity mask)
        cores = os.cpu_count() or 1
    v2, v1 = _words(CGROUP_QUOTAS[0]), _words(CGROUP_QUOTAS[1])
    quota = v2 or (v1 + _words(CGROUP_QUOTAS[1].replace('quota', 'period')) if v1 else [])
    try:
        if quota[0] not in ('max', '-1'):
            cores = min(cores, max(1, round(int(quota[0]) / int(quota[1]))))
    except (IndexError, ValueError, ZeroDivisionError):
        pass
    return cores


def busy_cores(cores):
    """How many of our `cores` other processes keep busy: the larger of the last minute's load average and
    the runnable processes now (the median of a few looks, 40 ms, so a load that started seconds ago counts
    and a passing one does not), less this process, as the share of the machine's CPUs that falls on ours."""
    try:
        average = os.getloadavg()[0]
    except (AttributeError, OSError):
        average = 0.0
    now = []
    for _ in range(5):
        time.sleep(0.01 if now else 0)
        try:
            now.append(int(_words(LOADAVG)[3].split('/')[0]) - 1)  # (this process is one of them)
        except (ValueError, IndexError):
            break
    running = sorted(now)[len(now) // 2] if now else 0
    return max(average, running) * cores / max(cores, os.cpu_count() or cores)


def _pick_device(device):
    if device != 'auto':
        if device.startswith('cuda') and not torch.cuda.is_available():
            raise UserError(f"device={device!r} but CUDA is not available; use --device=cpu (or auto)")
        if device.split(':')[0] not in ('cpu', 'cuda', 'mps'):
            raise UserError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
        return device
    if torch.cuda.is_available():
        return 'cuda'
    if getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
        return 'mps'
    return 'cpu'


@functools.lru_cache(maxsize=None)
def cpu_flags():
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith(('flags', 'Features')):
                    return frozenset(line.split(':', 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=None)
def cpu_name():
    """The CPU model and the flags that decide its speed in each dtype, e.g. 'AMD EPYC (avx2)'."""
    name = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('model name'):
                    name = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    shown = [f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'asimd', 'sve') if f in cpu_flags()]
    return f"{name} ({', '.join(shown) or 'no SIMD flags read'}), {os.cpu_count()} CPUs"


def cpu_has_native_bf16():
    """Bfloat16 arithmetic in hardware (AVX512_BF16, AMX, Arm's BF16). Without it, bf16 matmuls are converted
    and computed in fp32 units, slowly: their speed is measured against the fp32 peak."""
    return bool(cpu_flags() & {'avx512_bf16', 'amx_bf16', 'bf16'}) or bool(
        getattr(torch.cpu, '_is_amx_tile_supported', lambda: False)())


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16():
    """True where bfloat16 matmuls beat float32 ones on this CPU. Intel AMX (Xeon 4th gen+): yes, bf16
    autocast trains several times faster than fp32. Other CPUs with native bf16 (AVX512_BF16, Arm BF16): it
    depends on the chip and PyTorch's kernels, so it is measured: a bf16 matmul at least 1.2x as fast as the
    fp32 one (~0.1 s, once per process). Without native bf16 (e.g. AVX2 only) bf16 matmuls are emulated,
    ~1 GFLOP/s against ~120 in fp32 (`python -m gpt.device` measures both): never."""
    if getattr(torch.cpu, '_is_amx_tile_supported', lambda: False)():
        return True
    if not cpu_flags() & {'avx512_bf16', 'bf16'}:
        return False
    return (measure_matmul_flops('cpu', torch.bfloat16, n=512, seconds=0.05)
            >= 1.2 * measure_matmul_flops('cpu', torch.float32, n=512, seconds=0.05))


def pick_dtype(dtype, device):
    """'auto': bfloat16 on GPUs that have it, float16 (with a GradScaler) on older GPUs, bfloat16 on CPUs
    where it is faster than float32 (cpu_has_fast_bf16: AMX, or native bf16 measured faster), float32 elsewhere."""
    if dtype == 'auto':
        if device.startswith('cuda'):
            return 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
        if device == 'cpu' and cpu_has_fast_bf16():
            return 'bfloat16'
        return 'float32'
    if dtype not in DTYPES:
        raise UserError(f"dtype must be auto, {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def decode_dtype(dtype, device):
    """pick_dtype for decoding, which has its own rule: 'auto' is float32 on CPUs, where a one-token step is bound by
    reading every weight once and bf16 autocast converts them all again at each step (GPT-2 124M on a 2-core AMX
    Xeon: 11-13 tokens/s bf16 against 43 fp32), and the training choice (bf16/fp16) on GPUs."""
    return 'float32' if dtype == 'auto' and device == 'cpu' else pick_dtype(dtype, device)


def autocast_ctx(device, dtype):
    """Mixed precision for float16/bfloat16: weights stay fp32, matmuls run in the low precision."""
    if dtype == 'float32':
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, dtype))


def setup_torch(seed, device, deterministic=False):
    """The seed, TF32 on GPUs, and deterministic=True: the same weights from the same command on the same
    machine and software, which a GPU does not give by default. Call it before the first CUDA matmul."""
    if deterministic:
        use_deterministic()
    torch.manual_seed(seed)
    if device.startswith('cuda'):
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls/convs: ~free speed on Ampere+
        torch.backends.cudnn.allow_tf32 = True


# cuBLAS is deterministic on one stream, but with several streams (autograd's backward runs on its own) it
# shares workspace between them unless this fixes the workspace per stream. Read when cuBLAS creates its
# handle, so it is set before the first CUDA matmul; ':4096:8' (8 buffers of 4 MiB) is NVIDIA's and PyTorch's
# advice, ':16:8' the smaller alternative. A user's own setting is kept.
CUBLAS_WORKSPACE = ':4096:8'


def use_deterministic():
    """Where a GPU kernel can give different bits from run to run, take the deterministic one, and fail
    loudly (RuntimeError naming the op) where none exists rather than train irreproducibly. On a GPU that
    means: atomics-free backward kernels (embedding, index_add, scatter_add), flash and memory-efficient
    attention's deterministic backward (cuDNN attention has none, so SDPA leaves it out), cuBLAS on a fixed
    workspace, cuDNN without benchmarking, and inductor without autotuning whose choice varies between runs.
    The cost is a little speed (README: GPU training). On a CPU, where PyTorch's kernels are deterministic
    already, the weights are those of a run without it (tests/test_gpu_check.py checks it)."""
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def describe(device, dtype):
    """One line for logs: the hardware every figure was measured on."""
    hw = torch.cuda.get_device_name(device) if device.startswith('cuda') else cpu_name()
    if device == 'cpu':
        hw += f", {torch.get_num_threads()} thread(s)" + ('' if os.environ.get('OMP_NUM_THREADS') else
                                                       ' (cores free by the load average; OMP_NUM_THREADS=N sets it)')
    return f"device {device} ({hw}), dtype {dtype}, torch {torch.__version__}"


# ---------------------------------------------------------------------- peak FLOP/s for MFU

# Dense tensor-core peaks from the vendors' data sheets (FLOP/s, no sparsity): (bf16/fp16, tf32).
# tf32 is None for GPUs without TF32 (before Ampere), whose fp32 peak is the plain FP32 figure.
GPU_PEAK_FLOPS = {
    'B200': (2250e12, 1100e12), 'H200': (989e12, 494e12), 'H100 SXM': (989e12, 494e12),
    'H100 NVL': (835e12, 418e12), 'H100 PCIe': (756e12, 378e12), 'H100': (989e12, 494e12),
    'GH200': (989e12, 494e12), 'A100': (312e12, 156e12), 'A800': (312e12, 156e12),
    'L40S': (362e12, 183e12), 'L40': (181e12, 90e12), 'L4': (121e12, 60e12), 'A10G': (70e12, 35e12),
    'A10': (125e12, 62.5e12), 'A6000': (155e12, 77e12), 'RTX 4090': (165e12, 83e12),
    'RTX 3090': (71e12, 35.6e12), 'MI300X': (1307e12, 654e12), 'MI250X': (383e12, 95.7e12),
    'V100': (125e12, None), 'T4': (65e12, None),
}
GPU_FP32_FLOPS = {'V100': 15.7e12, 'T4': 8.1e12}  # plain FP32 (no TF32) of the GPUs above without it

_measured_peak = {}


def measure_matmul_flops(device='cpu', dtype=torch.float32, n=1024, seconds=0.2):
    """Achieved FLOP/s of a large square matmul (best of repeated runs): the practical peak of a CPU
    or an unknown device in that dtype. Cached per (device, dtype, n)."""
    key = (str(device), dtype, n)
    if key not in _measured_peak:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm-up
        best, t_end = float('inf'), time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            a @ b
            if str(device).startswith('cuda'):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        _measured_peak[key] = 2 * n ** 3 / best
    return _measured_peak[key]


def gpu_data_sheet(name, dtype):
    """(the table's name for the GPU, its data-sheet peak FLOP/s in dtype) for a GPU name such as
    'NVIDIA H200', or None if the table does not know it."""
    for key in sorted(GPU_PEAK_FLOPS, key=len, reverse=True):  # most specific name first
        if key in name:
            half, tf32 = GPU_PEAK_FLOPS[key]
            if dtype in (torch.bfloat16, torch.float16):
                return key, half
            return key, tf32 if tf32 is not None else GPU_FP32_FLOPS[key]
    return None


def device_peak_flops(device='cpu', dtype=torch.float32, override=0.0):
    """Peak FLOP/s of the dtype doing the math, for MFU: a user-given figure, else the data sheet of a
    known GPU, else a measured matmul (CPUs, unknown GPUs)."""
    return peak_flops_and_source(device, dtype, override)[0]


def peak_flops_and_source(device='cpu', dtype=torch.float32, override=0.0):
    """device_peak_flops, and where the figure comes from, for the log line that says what MFU is against."""
    if override:
        return override, 'given by peak_flops'
    if str(device).startswith('cuda') and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
        sheet = gpu_data_sheet(name, dtype)
        if sheet:
            return sheet[1], f"{name}: data sheet of the {sheet[0]}, dense {str(dtype).replace('torch.', '')}"
        return measure_matmul_flops(device, dtype), f"{name}: not in device.py's table, a measured matmul"
    if str(device) == 'cpu' and dtype == torch.bfloat16 and not cpu_has_native_bf16():
        dtype = torch.float32  # emulated bf16 runs on the fp32 units: that is the peak it is measured against
    return measure_matmul_flops(device, dtype), 'a measured matmul'


if __name__ == '__main__':
    dev = pick_device('auto')
    print(describe(dev, pick_dtype('auto', dev)))
    for dt in DTYPES[:2] if dev == 'cpu' else DTYPES:
        print(f"matmul 1024x1024 {dt}: {measure_matmul_flops(dev, getattr(torch, dt)) / 1e9:,.1f} GFLOP/s")


def shut_down():
    """Let a script end promptly once its work is done: inductor's pool of compile workers (subprocesses) is shut
    down and the GPU's queued work finished. On an H200, `bench.py --mode=sample --device=cuda` printed its table
    and then had not exited 70 s later; these are what a compiled CUDA run leaves behind at exit."""
    import sys
    if 'torch._inductor.async_compile' in sys.modules:
        from torch._inductor.async_compile import shutdown_compile_workers
        shutdown_compile_workers()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
