"""Hand-built IR graphs covering every op and the emitter's special cases.

Shared by the Keras emitter tests (each graph on its own) and the TFLite tests (a group
merged into one graph, so one conversion covers it). Not a test module: conftests load it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from tapeout.compiler.ir import BATCH, Activation, Graph, Node, TensorType
from tapeout.compiler.ops import infer_node

IMG = ((6, 6, 4), "NHWC")
SEQ = ((9, 3), "NWC")
VOL = ((4, 5, 4, 2), "NDHWC")

ACTIVATIONS = [
    Activation.of("relu"), Activation.of("clip", min=0.0, max=6.0), Activation.of("clip", min=-0.5, max=None),
    Activation.of("clip", min=None, max=0.25), Activation.of("clip", min=None, max=None),
    Activation.of("clip", min=0.0, max=None), Activation.of("clip", min=-1.0, max=1.0),
    Activation.of("leaky_relu", alpha=0.2), Activation.of("leaky_relu", alpha=0.1), Activation.of("elu", alpha=0.7),
    Activation.of("elu", alpha=1.0), Activation.of("sigmoid"), Activation.of("hard_sigmoid", alpha=0.2, beta=0.5),
    Activation.of("hard_sigmoid", alpha=1.0 / 6.0, beta=0.5), Activation.of("tanh"),
    Activation.of("softmax", axis=-1), Activation.of("softmax", axis=1), Activation.of("swish"),
    Activation.of("hard_swish"), Activation.of("gelu", approximate=False), Activation.of("gelu", approximate=True),
    Activation.of("identity"),
]


class GraphMaker:
    """Builds a typed IR graph node by node; every node's output is named like the node."""

    def __init__(self, **inputs: tuple[tuple[int, ...], str]) -> None:
        self.g = Graph("test", inputs=list(inputs), outputs=[])
        for name, (shape, layout) in inputs.items():
            self.g.types[name] = TensorType((BATCH, *shape))
            self.g.io_layouts[name] = layout
        self.rng = np.random.default_rng(7)

    def const(self, shape: tuple[int, ...], scale: float = 0.5, offset: float = 0.0) -> str:
        data = (self.rng.standard_normal(shape) * scale + offset).astype(np.float32)
        return self.g.add_constant("w", data)

    def shape(self, value: str) -> tuple:
        return self.g.type_of(value).shape

    def node(self, op: str, *inputs: str, **attrs: Any) -> str:
        name = self.g.unique_name(op)
        n = Node(op, name, list(inputs), [name], attrs)
        self.g.nodes.append(n)
        self.g.types[name] = infer_node(n, [self.g.type_of(i) for i in inputs], self.g)[0]
        return name

    def conv(self, x: str, filters: int, kernel: tuple[int, ...], groups: int = 1, bias: bool = True,
             **attrs: Any) -> str:
        c = self.shape(x)[-1]
        w = self.const((*kernel, c // groups, filters))
        ins = [x, w, self.const((filters,))] if bias else [x, w]
        return self.node("conv", *ins, groups=groups, **attrs)

    def dense(self, x: str, units: int, bias: bool = True, **attrs: Any) -> str:
        w = self.const((self.shape(x)[-1], units))
        return self.node("dense", *([x, w, self.const((units,))] if bias else [x, w]), **attrs)

    def done(self, *outputs: str, layouts: dict[str, str] | None = None) -> Graph:
        self.g.outputs = list(outputs)
        self.g.io_layouts.update(layouts or {})
        self.g.check()
        return self.g


M = GraphMaker
SAME = ((1, 1), (1, 1))


def conv_cases() -> dict[str, Graph]:
    out: dict[str, Graph] = {}
    m = M(x=IMG)
    out["conv_bias_relu_same"] = m.done(m.conv("x", 5, (3, 3), pads=SAME, activation=Activation.of("relu")))
    m = M(x=IMG)
    out["conv_relu6_valid"] = m.done(m.conv("x", 5, (3, 3), activation=Activation.of("clip", min=0.0, max=6.0)))
    m = M(x=IMG)
    out["conv_stride2_same_asym"] = m.done(m.conv("x", 3, (3, 3), strides=(2, 2), pads=((0, 1), (0, 1))))
    m = M(x=IMG)
    out["conv_stride_asym_pads_dilation"] = m.done(
        m.conv("x", 3, (3, 2), strides=(2, 1), pads=((0, 1), (1, 2)), dilations=(2, 1)))
    m = M(x=IMG)
    out["conv_dilated_same"] = m.done(m.conv("x", 3, (3, 3), dilations=(2, 2), pads=((2, 2), (2, 2)),
                                             activation=Activation.of("relu")))
    m = M(x=IMG)
    out["conv_groups_no_bias"] = m.done(m.conv("x", 6, (3, 3), groups=2, bias=False, pads=SAME))
    m = M(x=IMG)
    out["depthwise_multiplier_2"] = m.done(m.conv("x", 8, (3, 3), groups=4, strides=(2, 2), pads=((1, 1), (0, 1))))
    m = M(x=IMG)
    out["depthwise_relu6_same"] = m.done(m.conv("x", 4, (3, 3), groups=4, pads=SAME,
                                                activation=Activation.of("clip", min=0.0, max=6.0)))
    m = M(x=SEQ)
    out["conv1d"] = m.done(m.conv("x", 4, (3,), strides=(2,), dilations=(2,), pads=((2, 1),),
                                  activation=Activation.of("elu", alpha=1.0)))
    m = M(x=SEQ)
    out["depthwise1d"] = m.done(m.conv("x", 3, (2,), groups=3, pads=((0, 1),)))
    m = M(x=VOL)
    out["conv3d_same"] = m.done(m.conv("x", 3, (3, 3, 3), pads=((1, 1),) * 3, activation=Activation.of("relu")))
    return out


def pool_cases() -> dict[str, Graph]:
    out: dict[str, Graph] = {}
    for op in ("max_pool", "avg_pool"):
        for include in (False, True):
            if op == "max_pool" and include:
                continue
            extra = {"count_include_pad": include} if op == "avg_pool" else {}
            m = M(x=IMG)
            out[f"{op}2d_pad_{include}"] = m.done(
                m.node(op, "x", kernel=(3, 2), strides=(2, 2), pads=((1, 1), (0, 1)), **extra))
            m = M(x=IMG)
            out[f"{op}2d_same_{include}"] = m.done(
                m.node(op, "x", kernel=(3, 3), strides=(2, 2), pads=((1, 1), (1, 1)), **extra))
            m = M(x=SEQ)
            out[f"{op}1d_pad_{include}"] = m.done(m.node(op, "x", kernel=(3,), strides=(2,), pads=((1, 1),), **extra))
    m = M(x=IMG)
    out["max_pool_default_strides"] = m.done(m.node("max_pool", "x", kernel=(2, 2)))
    m = M(x=VOL)
    out["avg_pool3d"] = m.done(m.node("avg_pool", "x", kernel=(2, 2, 2), strides=(2, 2, 2)))
    for op in ("global_avg_pool", "global_max_pool"):
        for keep in (False, True):
            m = M(x=IMG)
            out[f"{op}_keep_{keep}"] = m.done(m.node(op, m.conv("x", 3, (1, 1)), keepdims=keep))
            m = M(x=SEQ)
            out[f"{op}1d_keep_{keep}"] = m.done(m.node(op, "x", keepdims=keep))
    return out


def elementwise_cases() -> dict[str, Graph]:
    out: dict[str, Graph] = {}
    m = M(x=IMG)
    c = m.conv("x", 4, (3, 3), pads=SAME)
    gate = m.node("sigmoid", m.node("global_avg_pool", c, keepdims=True))
    out["mul_se_gate_broadcast"] = m.done(m.node("mul", c, gate))
    m = M(x=IMG)
    out["add_residual"] = m.done(m.node("add", "x", m.conv("x", 4, (1, 1))))
    m = M(x=IMG)
    c = m.conv("x", 4, (1, 1))
    y = m.node("sub", c, m.const((4,)))
    y = m.node("div", y, m.const((6, 6, 4), scale=0.1, offset=2.0))
    y = m.node("maximum", y, m.const((1, 6, 1), scale=0.1))
    out["binaries_with_constants"] = m.done(m.node("minimum", y, m.const(())))
    m = M(x=IMG)
    c = m.conv("x", 4, (1, 1))
    out["constant_first_operands"] = m.done(m.node("sub", m.const((4,)), c),
                                            m.node("div", m.const((4,), offset=3.0), m.node("sigmoid", c)))
    m = M(a=((5,), "NC"), b=((5,), "NC"))
    out["binaries_rank2"] = m.done(m.node("maximum", m.node("add", "a", "b"), m.const((5,))),
                                   m.node("sub", "a", "b"), m.node("minimum", "a", "b"),
                                   m.node("div", "a", m.node("add", m.node("mul", "b", "b"), m.const((5,), scale=0.0, offset=1.0))))
    m = M(x=IMG)
    out["affine_after_conv"] = m.done(m.node("affine", m.conv("x", 3, (1, 1)), m.const((3,)), m.const((3,))))
    m = M(x=IMG)
    out["affine_scalar"] = m.done(m.node("affine", "x", m.const(()), m.const(())))
    m = M(x=IMG)
    c = m.conv("x", 3, (1, 1))
    out["batch_norm_2d"] = m.done(m.node("batch_norm", c, m.const((3,)), m.const((3,)), m.const((3,)),
                                         m.const((3,), scale=0.1, offset=1.0), epsilon=1e-3))
    m = M(x=((5,), "NC"))
    out["batch_norm_rank2"] = m.done(m.node("batch_norm", "x", m.const((5,)), m.const((5,)), m.const((5,)),
                                            m.const((5,), scale=0.1, offset=1.0)))
    m = M(x=IMG)
    out["lrn_2d"] = m.done(m.node("lrn", m.conv("x", 4, (1, 1)), size=3, alpha=0.5, beta=0.6, bias=2.0))
    m = M(x=SEQ)
    out["lrn_1d_and_rank2"] = m.done(m.node("lrn", "x", size=3, alpha=0.3),
                                     m.node("lrn", m.node("flatten", "x"), size=5, alpha=0.3))
    m = M(x=IMG)
    a, b = m.conv("x", 2, (1, 1)), m.conv("x", 3, (3, 3), pads=SAME)
    out["concat_channels"] = m.done(m.node("concat", a, b, "x", axis=-1))
    m = M(x=IMG)
    a = m.conv("x", 2, (1, 1))
    out["concat_height"] = m.done(m.node("concat", a, m.node("relu", a), axis=1))
    m = M(x=IMG)
    out["identity_dropout"] = m.done(m.node("dropout", m.node("identity", m.conv("x", 2, (1, 1))), rate=0.5))
    return out


def shaping_cases() -> dict[str, Graph]:
    out: dict[str, Graph] = {}
    m = M(x=IMG)
    out["flatten_dense"] = m.done(m.dense(m.node("flatten", m.conv("x", 3, (3, 3))), 4,
                                          activation=Activation.of("relu")))
    m = M(x=IMG)
    out["reshape_after_conv"] = m.done(m.node("reshape", m.conv("x", 2, (3, 3)), shape=(-1, 4)))
    m = M(x=IMG)
    c = m.conv("x", 3, (1, 1))
    out["transpose_after_conv"] = m.done(m.node("transpose", c, perm=(0, 2, 1, 3)),
                                         m.node("transpose", c, perm=(0, 3, 1, 2)))
    m = M(x=SEQ)
    out["transpose_input"] = m.done(m.node("transpose", "x", perm=(0, 2, 1)))
    m = M(x=IMG)
    c = m.conv("x", 3, (1, 1))
    out["pad_spatial_and_channels"] = m.done(m.node("pad", c, pads=((0, 0), (1, 2), (0, 1), (0, 0)), value=0.5),
                                             m.node("pad", c, pads=((0, 0), (0, 0), (0, 0), (1, 2))),
                                             m.node("pad", c, pads=((0, 0), (2, 0), (1, 1), (0, 0))))
    m = M(x=SEQ)
    out["pad_1d_zero"] = m.done(m.node("pad", "x", pads=((0, 0), (1, 2), (0, 0))))
    m = M(x=IMG)
    c = m.conv("x", 4, (1, 1))
    out["slice_channels_spatial_flip"] = m.done(
        m.node("slice", c, axes=(3,), starts=(1,), ends=(3,)),
        m.node("slice", c, axes=(1, 2), starts=(5, 0), ends=(-7, 6), steps=(-2, 2)))
    m = M(x=SEQ)
    out["slice_input_open_end"] = m.done(m.node("slice", "x", axes=(-2,), starts=(-4,), ends=(2**63 - 1,)))
    m = M(x=IMG)
    out["resize_2d"] = m.done(m.node("resize", m.conv("x", 2, (1, 1)), scales=(2, 3)))
    m = M(x=SEQ)
    out["resize_1d"] = m.done(m.node("resize", "x", scales=(2,)))
    m = M(x=((3, 4), "NWC"))
    out["matmul_rank2_const"] = m.done(m.node("matmul", m.node("flatten", "x"), m.const((12, 5))))
    m = M(a=((4, 3), "NWC"), b=((3, 5), "NWC"))
    out["matmul_runtime_rank3"] = m.done(m.node("matmul", "a", "b"))
    m = M(x=SEQ)
    out["matmul_after_conv1d"] = m.done(m.node("matmul", m.conv("x", 4, (1,)), m.const((4, 2))))
    m = M(x=SEQ)
    out["dense_rank3"] = m.done(m.dense(m.conv("x", 4, (3,)), 3, activation=Activation.of("tanh")),
                                m.dense("x", 2, bias=False))
    m = M(x=((6,), "NC"))
    out["dense_rank2_no_bias_softmax"] = m.done(m.dense("x", 3, bias=False,
                                                        activation=Activation.of("softmax", axis=-1)))
    return out


def activation_cases() -> dict[str, Graph]:
    out: dict[str, Graph] = {}
    for i, act in enumerate(ACTIVATIONS):
        m = M(x=IMG)
        out[f"fused_conv_{i}_{act.op}"] = m.done(m.conv("x", 3, (3, 3), activation=act))
        m = M(x=((5,), "NC"))
        out[f"fused_dense_{i}_{act.op}"] = m.done(m.dense("x", 4, activation=act))
        m = M(x=IMG)
        out[f"standalone_{i}_{act.op}"] = m.done(m.node(act.op, m.conv("x", 3, (1, 1)), **act.attr_dict()))
    return out


def layout_cases() -> dict[str, Graph]:
    out: dict[str, Graph] = {}
    m = M(x=((8, 8, 3), "NCHW"))
    y = m.node("avg_pool", m.conv("x", 4, (3, 3), activation=Activation.of("relu")), kernel=(2, 2), strides=(2, 2))
    out["channels_first_io"] = m.done(y, layouts={y: "NCHW"})
    return out


def _kif(m: GraphMaker, k: Any, i: Any, f: Any) -> list[str]:
    return [m.g.add_constant(n, np.asarray(v, np.int8)) for n, v in (("k", k), ("i", i), ("f", f))]


def quant_cases() -> dict[str, Graph]:
    """fixed_quant in every rounding x overflow mode; the input first goes to a 1/16 grid, so half
    the values tie on the 1/8 grid after it. Per-element grids (one element 0 bits wide) after a conv."""
    from tapeout.compiler.fixedpoint.types import OVERFLOW, ROUNDING

    out: dict[str, Graph] = {}
    m = M(x=((16,), "NC"))
    fine = m.node("fixed_quant", "x", *_kif(m, 1, 3, 4))
    ys = [m.node("fixed_quant", fine, *_kif(m, j % 2, 1 + j % 3, 3 - j % 2), rounding=r, overflow=o)
          for j, (r, o) in enumerate((r, o) for r in ROUNDING for o in OVERFLOW)]
    out["fixed_quant_modes"] = m.done(*ys)
    m = M(x=IMG)
    c = m.conv("x", 4, (1, 1))
    k, i, f = [1, 1, 0, 0], np.array([0, 1, 2, 3, 1, 2]).reshape(6, 1, 1), [2, -1, 3, 0]
    out["fixed_quant_per_element_conv"] = m.done(m.node("fixed_quant", c, *_kif(m, k, i, f), rounding="AP_RND",
                                                        overflow="AP_SAT"))
    m = M(x=((8,), "NC"))  # grids wider than float32's 24 bits: overflow compares and wraps stay exact
    ys = [m.node("fixed_quant", "x", *_kif(m, k, i, f), rounding=r, overflow=o)
          for o in OVERFLOW for (k, i, f, r) in ((1, 1, 38, "AP_RND_CONV"), (0, 2, 28, "AP_TRN"),
                                                  ([1, 0] * 4, [3, 10] * 4, [30, 20] * 4, "AP_RND"))]
    out["fixed_quant_wide"] = m.done(*ys)
    return out


GROUPS: dict[str, Callable[[], dict[str, Graph]]] = {
    "conv": conv_cases, "pool": pool_cases, "elementwise": elementwise_cases, "shaping": shaping_cases,
    "activation": activation_cases, "layout": layout_cases, "quant": quant_cases,
}


def all_graphs() -> dict[str, Graph]:
    graphs: dict[str, Graph] = {}
    for make in GROUPS.values():
        graphs.update(make())
    return graphs


def feeds_for(graph: Graph, batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Standard-normal inputs in the IR's (channels-last) layout."""
    rng = np.random.default_rng(seed)
    return {i: rng.standard_normal((batch, *graph.types[i].shape[1:])).astype(np.float32) for i in graph.inputs}


def merge(graphs: dict[str, Graph]) -> Graph:
    """One graph running every case side by side: each case's names get a ``<case>.`` prefix."""
    merged = Graph("merged", [], [])
    for case, g in graphs.items():
        def p(name: str) -> str:
            return f"{case}.{name}" if name else name

        merged.inputs += [p(i) for i in g.inputs]
        merged.outputs += [p(o) for o in g.outputs]
        merged.nodes += [Node(n.op, p(n.name), [p(i) for i in n.inputs], [p(o) for o in n.outputs], dict(n.attrs))
                         for n in g.nodes]
        merged.constants.update({p(k): v for k, v in g.constants.items()})
        merged.types.update({p(k): v for k, v in g.types.items()})
        merged.io_layouts.update({p(k): v for k, v in g.io_layouts.items()})
    merged.check()
    return merged
