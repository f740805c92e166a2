"""Reuse factors HLS can build: raise a layer's reuse factor when its unrolled multiplications
would exceed what ``vitis_hls`` unrolls in io_parallel/latency (about 4,096 per layer)."""

from __future__ import annotations

MAX_UNROLLED_MULTS = 4096


def valid_reuse_factor(n_in: int, n_out: int, rf: int) -> bool:
    """hls4ml 1.3's rule for a dense layer's reuse factor (FPGABackend._validate_reuse_factor)."""
    mult_factor = min(n_in, rf)
    mult_limit = -(-(n_in * n_out) // mult_factor)
    ok = (mult_limit % n_out == 0) or rf >= n_in
    ok = ok and (rf % n_in == 0 or rf < n_in)
    return ok and (n_in * n_out) % rf == 0


def auto_reuse(n_in: int, n_out: int, requested: int = 1, limit: int = MAX_UNROLLED_MULTS) -> int:
    """The smallest valid reuse factor >= ``requested`` with at most ``limit`` multipliers."""
    total = n_in * n_out
    for rf in range(max(1, requested), total + 1):
        if valid_reuse_factor(n_in, n_out, rf) and -(-total // rf) <= limit:
            return rf
    return total
