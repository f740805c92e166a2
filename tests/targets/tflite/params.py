"""Reading quantization parameters back out of a .tflite (shared by the TFLite and ONNX int8 tests).

Test folders are not packages: other test files load this module by path (``load_params_module``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tapeout.compiler.ir import Graph


def details(path: Path) -> list[dict]:
    """LiteRT's tensor details with ``scales``/``zps`` arrays and ``value`` (constants only, else None)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    out = []
    for d in interp.get_tensor_details():
        qp = d["quantization_parameters"]
        d = dict(d, scales=np.asarray(qp["scales"], np.float32), zps=np.asarray(qp["zero_points"]))
        try:
            d["value"] = interp.get_tensor(d["index"])  # constants (weights) have data before allocation
        except ValueError:
            d["value"] = None
        out.append(d)
    return out


def layer_params(folder: Path, layer: str) -> tuple[float, int]:
    """(scale, zero point) of the int8 activation tensor a Keras layer writes (its name's first op scope)."""
    for d in details(folder / "model.tflite"):
        first = d["name"].split(";")[0]
        if d["dtype"] == np.int8 and d["value"] is None and re.search(rf"/{re.escape(layer)}(_\d+)?/", first):
            return float(d["scales"][0]), int(d["zps"][0])
    raise KeyError(layer)


def tflite_params(folder: Path, graph: Graph, value: str) -> tuple[float, int]:
    """(scale, zero point) of IR ``value`` in ``folder/model.tflite``.

    TFLite keeps no IR value names, only the Keras layer scopes the emitter named after IR
    nodes: a node output is found by its producer's layer, a graph input by its FakeQuant
    layer (``<value>_quant``).
    """
    producer = graph.producers().get(value)
    return layer_params(folder, producer.name if producer is not None else f"{value}_quant")
