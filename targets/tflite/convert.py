"""IR graph -> Keras model -> one traced, frozen TensorFlow function -> a .tflite per variant.

The Keras model and the traced function are built once per graph (keyed by its contents)
and shared by every variant compiled from it in the same process (``trace``), so
``-t tflite:fp32 -t tflite:fp16`` pays for the Keras build and TensorFlow tracing once.
The function's variables are frozen to constants before conversion: TFLite then sees
constant weights (so it fuses bias adds and activations into CONV_2D / FULLY_CONNECTED)
and no resource variables. It is saved once as a SavedModel that every variant's converter
reads. It returns a dict
keyed by the IR's output names and takes inputs named after the IR's inputs, so the
.tflite's signature keeps the source model's I/O names.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tapeout.compiler.errors import TapeoutError
from tapeout.compiler.ir import Graph, IRError
from tapeout.compiler.quiet import captured_output, quiet_environment

CACHE_SIZE = 4  # traced models kept: the float one and each integer scheme of one command


class ConversionError(TapeoutError):
    """TensorFlow's converter refused the emitted model: a tapeout bug, so exit code 4."""

    exit_code = 4


@dataclass
class Traced:
    keras: Any  # tapeout.targets.keras.emit.KerasModel
    function: Any  # ConcreteFunction: {IR output name: tensor}, variables frozen to constants
    saved: tempfile.TemporaryDirectory  # the function as a SavedModel (its "serving_default" signature)
    input_names: list[str]  # signature input names, in graph.inputs order (identifiers: see spec_names)
    seconds: float  # Keras build + trace + freeze
    fake_quants: int = 0  # FakeQuant layers (integer variants): none means a float model, see convert()


_CACHE: list[tuple[str, Traced]] = []
STATS = {"traces": 0, "hits": 0}  # how often trace() really traced / reused; tests read it


def fingerprint(graph: Graph) -> str:
    """What the float Keras model depends on: I/O, types, layouts, nodes and constant contents.

    Content, not object identity: the quantize pass hands each scheme an annotated copy of
    the same graph, and an fp16 copy must still share the fp32 trace. Annotations are left out.
    """
    h = hashlib.sha256()
    h.update(repr((graph.name, graph.inputs, graph.outputs, sorted(graph.io_layouts.items()))).encode())
    h.update(repr(sorted((k, str(v)) for k, v in graph.types.items())).encode())
    for n in graph.nodes:
        h.update(repr((n.op, n.name, n.inputs, n.outputs, sorted((k, repr(v)) for k, v in n.attrs.items()))).encode())
    for name in sorted(graph.constants):
        a = np.ascontiguousarray(graph.constants[name])
        h.update(f"{name}:{a.dtype}:{a.shape};".encode())
        h.update(a.data)
    return h.hexdigest()


def _annotation_digest(graph: Graph) -> str:
    q = graph.quant
    text = "" if q is None else repr((q.scheme, sorted(q.tensors.items()), q.float_nodes))
    return hashlib.sha256(text.encode()).hexdigest()


def trace(graph: Graph, *, integer: bool = False) -> tuple[Traced, bool]:
    """The traced function for ``graph`` and whether it came from the cache.

    ``integer``: the model of an integer variant (fake-quant ranges from ``graph.quant``,
    see ``quantized``), keyed by the annotations too.
    """
    key = fingerprint(graph) + (":" + _annotation_digest(graph) if integer else "")
    for k, traced in _CACHE:
        if k == key:
            STATS["hits"] += 1
            return traced, True
    traced = _trace(graph, integer)
    STATS["traces"] += 1
    _CACHE.insert(0, (key, traced))
    del _CACHE[CACHE_SIZE:]
    return traced, False


def clear_cache() -> None:
    _CACHE.clear()


# What TensorFlow keeps verbatim as a signature input name; it rewrites others ('/' -> '_').
_TF_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-]*$")


def spec_names(names: list[str]) -> list[str]:
    """The model's input names: the source's where TensorFlow keeps them, else with each other
    character made '_' (and an 'x' in front of a leading one TensorFlow refuses), unique.
    Choosing them here makes the signature's names known exactly (tapeout_io.json records them)."""
    out: list[str] = []
    for name in names:
        base = name if _TF_NAME.match(name) else re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
        base = base if _TF_NAME.match(base) else "x" + base
        candidate, i = base, 1
        while candidate in out:
            candidate, i = f"{base}_{i}", i + 1
        out.append(candidate)
    return out


def _trace(graph: Graph, integer: bool = False) -> Traced:
    quiet_environment()
    t0 = time.perf_counter()
    with captured_output():
        import tensorflow as tf
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        from tapeout.targets.keras.emit import graph_to_keras

        if len(set(graph.outputs)) != len(graph.outputs):
            raise IRError(f"graph outputs {graph.outputs} repeat a value; TFLite outputs need distinct names")
        fake_quants = 0
        if integer:
            from tapeout.targets.tflite.lowering import lower_channel_scales, lowered_nodes, reshape_builders
            from tapeout.targets.tflite.quantized import fake_quant_hook, float_builders, on_grid

            lowered = lowered_nodes(graph)
            graph = lower_channel_scales(graph)  # standalone per-channel norms as integer depthwise convs
            hook = fake_quant_hook(graph)
            builders = {**float_builders(graph), **reshape_builders(graph)}
            emitted = graph_to_keras(on_grid(graph), value_hook=hook, node_builders=builders)
            fake_quants = hook.count
            if lowered:
                emitted.notes.append(f"{len(lowered)} standalone batch_norm/affine node(s) as integer 1x1 "
                                     f"DEPTHWISE_CONV_2D (TFLite would run them in float), e.g. {lowered[0]!r}")
        else:
            emitted = graph_to_keras(graph)
        model = emitted.model
        names = spec_names(list(graph.inputs))
        specs = [tf.TensorSpec(t.shape, t.dtype, name=n) for t, n in zip(model.inputs, names)]
        n_out = len(graph.outputs)

        def run(*args: Any) -> list[Any]:
            out = model(list(args) if len(args) > 1 else args[0], training=False)
            out = list(out) if isinstance(out, (list, tuple)) else [out]
            assert len(out) == n_out
            return out

        # A list keeps graph order through freezing (a dict would be flattened in key order).
        frozen = convert_variables_to_constants_v2(
            tf.function(run, input_signature=specs, autograph=False).get_concrete_function())

        def serve(*args: Any) -> dict[str, Any]:
            return dict(zip(graph.outputs, frozen(*args)))

        function = tf.function(serve, input_signature=specs, autograph=False).get_concrete_function()
        # Saved once for every variant. Custom gradients (Keras's silu/gelu register some) are
        # left out: inference needs none, and saving them fails on captured constants.
        saved = tempfile.TemporaryDirectory(prefix="tapeout-tflite-")
        tf.saved_model.save(tf.Module(), saved.name, signatures={"serving_default": function},
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
    return Traced(emitted, function, saved, names, time.perf_counter() - t0, fake_quants)


def convert(traced: Traced, variant: str, io: str = "float") -> bytes:
    """The .tflite bytes of ``variant``; ``io`` ("float", "int8", "uint8", "int16") is the
    input/output type of the integer variants (traced with ``integer=True``)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(traced.saved.name)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant in ("int8", "int16x8") and traced.fake_quants == 0:
        # Every layer kept float (--keep-float, --fallback): with no FakeQuant the converter's
        # Optimize.DEFAULT would be dynamic-range quantization (int8 weights), not float.
        if io != "float":
            from tapeout.compiler.errors import UsageError

            raise UsageError(f"--io {io}: tflite:{variant} has no quantized input or output, every layer is "
                             "kept float; use --io float")
    elif variant in ("int8", "int16x8"):
        from tapeout.targets.tflite.quantized import configure

        configure(converter, variant, io)
    elif variant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        # No representative dataset: int8 weights, float activations quantized on the fly.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant != "fp32":
        raise ValueError(f"convert() does not build variant {variant!r}")
    return run_converter(converter)


def run_converter(converter: Any) -> bytes:
    """``converter.convert()`` with its log captured; a failure names the converter's reason."""
    failure: Exception | None = None
    with captured_output() as log:
        try:
            data = converter.convert()
        except Exception as exc:  # noqa: BLE001 - the converter raises many unrelated types
            failure = exc
    if failure is not None:
        from tapeout.runtime.errors import one_line

        errors = [ln.strip() for ln in "".join(log).splitlines() if "error" in ln.lower()]
        detail = f"; {one_line(without_locations(errors[-1]))}" if errors else ""
        raise ConversionError(f"TensorFlow's TFLite converter failed: {one_line(without_locations(str(failure)))}"
                              f"{detail}") from None
    return bytes(data)


def without_locations(text: str) -> str:
    """MLIR's messages without their ``loc(...)`` call-site chains, which run to hundreds of
    characters before the reason and left a one-line error without one."""
    out, i = [], 0
    while (j := text.find("loc(", i)) >= 0:
        out.append(text[i:j])
        depth, k = 0, j + 3
        while k < len(text):
            depth += {"(": 1, ")": -1}.get(text[k], 0)
            k += 1
            if depth == 0:
                break
        i = k
    out.append(text[i:])
    return " ".join("".join(out).replace(": :", ":").split())
