"""The explicit registry of back ends: target name -> class."""

from __future__ import annotations

from tapeout.compiler.errors import UsageError
from tapeout.targets.base import Target
from tapeout.targets.ethos_u.target import EthosUTarget
from tapeout.targets.hls4ml.target import Hls4mlTarget
from tapeout.targets.onnx.target import OnnxTarget
from tapeout.targets.tensorrt.target import TensorrtTarget
from tapeout.targets.tflite.target import TfliteTarget

TARGETS: dict[str, type[Target]] = {
    Hls4mlTarget.name: Hls4mlTarget,
    OnnxTarget.name: OnnxTarget,
    TfliteTarget.name: TfliteTarget,
    TensorrtTarget.name: TensorrtTarget,
    EthosUTarget.name: EthosUTarget,
}


def parse_target(spec: str) -> tuple[type[Target], str]:
    """'onnx' or 'onnx:fp32' -> (class, variant)."""
    name, _, variant = spec.partition(":")
    cls = TARGETS.get(name)
    if cls is None:
        raise UsageError(f"unknown target {name!r}; available: {', '.join(sorted(TARGETS))}")
    variant = variant or cls.default_variant
    if variant not in cls.variants:
        raise UsageError(f"target {name!r} has no variant {variant!r}; variants: {', '.join(cls.variants)}")
    return cls, variant
