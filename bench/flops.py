"""FLOPs of the value phase (counted by torch's FlopCounterMode) and the device's peak FLOP/s."""
from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense tensor-core peaks from the vendors' data sheets (FLOP/s, no sparsity), by name fragment.
SPEC_PEAKS = {
    ("H100", torch.bfloat16): 989e12, ("H100", torch.float16): 989e12, ("H100", torch.float32): 67e12,
    ("H200", torch.bfloat16): 989e12, ("H200", torch.float16): 989e12, ("H200", torch.float32): 67e12,
    ("A100", torch.bfloat16): 312e12, ("A100", torch.float16): 312e12, ("A100", torch.float32): 19.5e12,
    ("A40", torch.bfloat16): 149.7e12, ("A40", torch.float16): 149.7e12, ("A40", torch.float32): 37.4e12,
}


def count_value_flops(editor, requests: list[dict]) -> int:
    """Matmul and attention FLOPs (forward and backward) of computing these requests' values again."""
    with FlopCounterMode(display=False) as counter:
        editor._compute_values(requests)
    return int(counter.get_total_flops())


def measured_matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` n x n matmuls: the practical peak of this device and dtype."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first warms up
        if device.type != "cpu":
            torch.accelerator.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type != "cpu":
            torch.accelerator.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> dict:
    """The measured matmul peak, and the data-sheet peak where the GPU is known."""
    n = 2048 if device.type == "cpu" else 8192
    out = {"peak_flop_per_s": measured_matmul_peak(device, dtype, n),
           "peak_source": f"measured {n}x{n} {str(dtype).removeprefix('torch.')} matmul"}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        spec = next((v for (k, dt), v in SPEC_PEAKS.items() if k in name and dt == dtype), None)
        out.update({"gpu": name, "spec_peak_flop_per_s": spec})
    return out
