"""Lower a Keras model (the IR's Keras form) plus a precision plan into an hls4ml project."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tapeout.compiler.fixedpoint.model import PrecisionPlan, hls_layers
from tapeout.compiler.ir import Graph
from tapeout.targets.hls4ml.config import Hls4mlOptions, hls_config
from tapeout.targets.hls4ml.project import convert, write_manifest
from tapeout.compiler.layout import is_channels_first


# hls4ml 1.3 layers that exist only in io_parallel (nnet_activation_stream.h has no relu_max).
PARALLEL_ONLY = {"relu6": "relu6 (clip(0, 6)) exists only in io_parallel in hls4ml 1.3"}


def check_io_type(layers: list[Any], io_type: str, graph: Graph | None = None) -> None:
    """Refuse, before any C++ is written, a layer hls4ml has no implementation of in ``io_type``."""
    from tapeout.compiler.fixedpoint.qat import per_tensor_type
    from tapeout.compiler.fixedpoint.types import FixedTypeError

    if io_type != "stream":
        return
    for layer in layers:
        if layer.kind == "fixed_quant" and graph is not None and per_tensor_type(graph, layer.node) is None:
            raise FixedTypeError(f"node {layer.node.name!r}: fixed_quant with a grid per element cannot be compiled "
                                 "with --io-type stream: hls4ml 1.3's FixedPointQuantizer exists only in io_parallel; "
                                 "use --io-type parallel")
        if layer.kind in PARALLEL_ONLY:
            raise FixedTypeError(f"node {layer.node.name!r}: op {layer.node.op!r} cannot be compiled with "
                                 f"--io-type stream: {PARALLEL_ONLY[layer.kind]}; use --io-type parallel")


QUANTIZER_VARIANTS = ("vitis", "vivado")  # where hls4ml 1.3 writes a FixedPointQuantizer's per-element casts


def check_quantizer_variant(layers: list[Any], graph: Graph, variant: str) -> None:
    """Refuse a per-element quantizer on a back end whose hls4ml writer leaves its code out (Quartus:
    the C++ does not compile) or refuses it (Catapult); per-tensor quantizers are casts everywhere."""
    from tapeout.compiler.fixedpoint.qat import per_tensor_type
    from tapeout.compiler.fixedpoint.types import FixedTypeError

    if variant in QUANTIZER_VARIANTS:
        return
    for layer in layers:
        if layer.kind == "fixed_quant" and per_tensor_type(graph, layer.node) is None:
            raise FixedTypeError(f"node {layer.node.name!r}: fixed_quant with a grid per element has no "
                                 f"hls4ml:{variant} code in hls4ml 1.3 (its FixedPointQuantizer is written for "
                                 "Vivado/Vitis); use hls4ml:vitis or hls4ml:vivado")
        if layer.kind == "unary_lut":
            raise FixedTypeError(f"node {layer.node.name!r}: {layer.node.op} between two quantizers is an exact lookup "
                                 f"table (hls4ml's UnaryLUT), which tapeout checks on Vivado/Vitis only; use "
                                 "hls4ml:vitis or hls4ml:vivado")


def keras_model(graph: Graph) -> Any:
    """The IR as the Keras 3 model handed to hls4ml (``KerasModel``): the shared emitter, channels-last,
    with the layers hls4ml reads differently from the emitter's defaults:

    - batch_norm / affine, and add/mul of a per-channel constant -> BatchNormalization(gamma=scale,
      beta=bias, mean 0, variance 1, epsilon 0),
      so hls4ml's scale and bias are exactly ``scale_shift``'s float32 values (its own
      gamma / sqrt(var + eps) would round differently from the NumPy model's);
    - clip(0, 6) -> Activation("relu6") (hls4ml's Keras 3 reader refuses ReLU(max_value=6));
    - fixed_quant -> Activation("linear") (one grid: the cast to its result type) or FixedQuant (a grid
      per element: hls4ml's FixedPointQuantizer); an activation between two quantizers -> UnaryTable
      (hls4ml's UnaryLUT); the handlers for both are registered here (``register_handlers``).
    """
    import keras

    from tapeout.compiler.fixedpoint.model import SCALED, _clip_kind, constant_scaling, scale_shift
    from tapeout.targets.keras.emit import apply, graph_to_keras

    def batch_norm(ctx: Any, n: Any) -> Any:
        s, t = scale_shift(graph, n)
        data = next(i for i in n.inputs if i not in graph.constants)
        layer = keras.layers.BatchNormalization(axis=-1, epsilon=0.0, name=ctx.name(n))
        return apply(layer, ctx.tensor(n, data), [s, t, np.zeros_like(s), np.ones_like(s)])

    def relu6(ctx: Any, n: Any) -> Any:
        return keras.layers.Activation("relu6", name=ctx.name(n))(ctx.tensor(n, n.inputs[0]))

    def linear(ctx: Any, n: Any) -> Any:  # a per-tensor quantizer: the cast to its result type
        return keras.layers.Activation("linear", name=ctx.name(n))(ctx.tensor(n, n.inputs[0]))

    def table(ctx: Any, n: Any) -> Any:  # an activation between two quantizers: hls4ml's UnaryLUT
        from tapeout.compiler.fixedpoint.arith import to_float
        from tapeout.compiler.fixedpoint.qat import lut_table
        from tapeout.targets.hls4ml.layers import UnaryTable

        raw, t_in, t_out = lut_table(graph, n)
        layer = UnaryTable(t_in.width, t_in.frac, t_in.signed, t_out.width, t_out.integer, t_out.signed,
                           name=ctx.name(n))
        return apply(layer, ctx.tensor(n, n.inputs[0]), [to_float(raw, t_out)])

    from tapeout.compiler.fixedpoint.qat import per_tensor_type

    luts = {layer.node.name for layer in hls_layers(graph) if layer.kind == "unary_lut"}
    builders: dict[str, Any] = {}
    for n in graph.nodes:
        if n.name in luts:
            builders[n.name] = table
            register_handlers()
        elif n.op == "fixed_quant":
            # Per element: the shared emitter's FixedQuant layer, which register_handlers makes
            # hls4ml read as its FixedPointQuantizer.
            if per_tensor_type(graph, n) is not None:
                builders[n.name] = linear
            register_handlers()
        elif n.op in SCALED or constant_scaling(graph, n):
            builders[n.name] = batch_norm
        elif n.op == "clip" and _clip_kind(n.attrs.get("min"), n.attrs.get("max")) == "relu6":
            builders[n.name] = relu6
    # hls4ml writes layer names into C++ (types; inputs as variables): '/net/net.0/Gemm' or 'input.1'
    # would not compile, so every name is made a C++ identifier.
    return graph_to_keras(graph, keep_io_layout=False, node_builders=builders, identifiers=True)


def register_handlers() -> None:
    """Teach hls4ml's Keras 3 reader tapeout's layers for quantization-aware models:

    - FixedQuant -> FixedPointQuantizer, whose per-element (k, bits, integer bits) come from the layer's
      grid constants (2**f, 2**width, the lower bound's sign; a step of 0 marks a pruned element);
      hls4ml writes one ap_fixed cast per element (io_parallel);
    - UnaryTable -> UnaryLUT, the table indexed by the input code's bits, in the output quantizer's type.
    """
    from hls4ml.converters.keras_v3._base import KerasV3LayerHandler, registry
    from hls4ml.model.types import FixedPrecisionType

    from tapeout.compiler.keras_model_layers import FixedQuant
    from tapeout.targets.hls4ml.layers import UnaryTable

    key = f"{FixedQuant.__module__}.{FixedQuant.__name__}"
    table_key = f"{UnaryTable.__module__}.{UnaryTable.__name__}"
    if key in registry and table_key in registry:
        return

    class UnaryTableHandler(KerasV3LayerHandler):
        handles = (table_key,)

        def handle(self, layer: Any, in_tensors: Any, out_tensors: Any) -> dict[str, Any]:
            table_t = FixedPrecisionType(layer.out_width, layer.out_integer, layer.out_signed)
            return {"class_name": "UnaryLUT", "activation": "unary_lut", "table_t": table_t,
                    "table_data": np.asarray(layer.table.numpy(), np.float64)}

    class FixedQuantHandler(KerasV3LayerHandler):
        handles = (key,)

        def handle(self, layer: Any, in_tensors: Any, out_tensors: Any) -> dict[str, Any]:
            shape = tuple(int(d) for d in in_tensors[0].shape[1:])
            g = {k: np.broadcast_to(np.asarray(w.numpy(), np.float64), shape) for k, w in layer.grid.items()}
            f = np.rint(np.log2(g["scale"])).astype(np.int64)
            width = np.rint(np.log2(g["modulus"])).astype(np.int64)
            k = (g["lo"] < 0).astype(np.int64)
            # 0 bits, or a signed 1-bit AP_SAT_SYM grid ([-0, 0]; ap_types' cast would give its minimum): 0.
            live = (g["step"] != 0) & ~((layer.overflow == "AP_SAT_SYM") & (k > 0) & (width == 1))
            bits, integer = np.where(live, width, 0), np.where(live, width - f, 0)
            return {"class_name": "FixedPointQuantizer", "mask_kbi": tuple(a[None].astype(np.int16) for a in
                                                                          (k, bits, integer)),
                    "RND": layer.rounding.removeprefix("AP_"), "SAT": layer.overflow.removeprefix("AP_"),
                    "fusible": None, "overrides": {}}

    assert key in registry and table_key in registry


def lower(keras_model: Any, graph: Graph, plan: PrecisionPlan, outdir: Path, *, variant: str,
          options: Hls4mlOptions, names: dict[str, str] | None = None) -> Any:
    """Write the hls4ml project for ``keras_model`` (which computes ``graph``) into ``outdir``."""
    layers = hls_layers(graph)
    config = hls_config(layers, plan, options, names)
    model = convert(keras_model, config, outdir, variant=variant, part=options.part_for(variant),
                    clock_period=options.clock_period, io_type=options.io_type, trace=options.trace)
    def io(v: str) -> dict[str, Any]:
        # The C++ works channels-last (the IR's layout); a channels-first source input/output keeps
        # its layout at the runner's boundary: ``perm`` takes the source layout to the IR's.
        t = graph.type_of(v)
        shape = [int(d) for d in t.shape[1:]]
        entry: dict[str, Any] = {"name": v, "shape": shape}
        if t.rank >= 3 and is_channels_first(graph.io_layouts.get(v), t.rank):
            entry["shape"] = [shape[-1], *shape[:-1]]
            entry["layout"] = graph.io_layouts[v]
            entry["perm"] = [0, *range(2, t.rank), 1]
        return entry

    traced = [{"name": layer.name, "size": int(np.prod(layer.get_output_variable().shape))}
              for layer in model.get_layers()
              if layer.get_attr("function_cpp", None) and layer.get_attr("trace", False)]
    write_manifest(outdir, inputs=[io(i) for i in graph.inputs], outputs=[io(o) for o in graph.outputs],
                   trace=sorted(traced, key=lambda t: t["name"]))
    # The C++ ports (channels-last, hls4ml's variable names) against the source's, for the report
    # (tapeout_io.json, as every target writes); the C-simulation runner works from the manifest.
    from tapeout.targets.io import artifact_graph, io_map

    ports = dict(zip(graph.inputs, (v.name for v in model.get_input_variables())))
    ports.update(zip(graph.outputs, (v.name for v in model.get_output_variables())))
    io_map(graph, artifact_graph(graph, "channels-last"), ports).write(outdir)
    return model
