"""Each artifact's I/O boundary: the layout it presents and its names, against the source's.

``--io-layout`` picks, per target, the layout of rank >= 3 inputs and outputs: ``source``
(an NCHW source stays NCHW at the artifact's boundary, transposed inside) or
``channels-last`` (NHWC, as TFLite and microcontroller users feed it; the IR's own layout,
so no transpose at the edges). ``artifact_graph`` gives the graph an emitter sees (its
``io_layouts`` are the artifact's); ``io_map`` is what the target records next to its
artifact (``tapeout.runtime.io_map``) so the runtime maps names and layouts back.
"""

from __future__ import annotations

from typing import Mapping

from tapeout.compiler.ir import Graph
from tapeout.runtime.io_map import IOMap, Port
from tapeout.compiler.layout import channels_last_layout, is_channels_first, to_channels_first, to_channels_last

from tapeout.compiler.schemes import IO_LAYOUTS  # noqa: E402  (re-exported)


def artifact_graph(graph: Graph, io_layout: str) -> Graph:
    """``graph`` with the I/O layouts the artifact presents (itself for ``source``)."""
    if io_layout not in IO_LAYOUTS:
        raise ValueError(f"unknown I/O layout {io_layout!r}; one of {', '.join(IO_LAYOUTS)}")
    moved = {k: channels_last_layout(v) for k, v in graph.io_layouts.items()
             if io_layout == "channels-last" and k in graph.types and is_channels_first(v, graph.type_of(k).rank)}
    if not moved:
        return graph
    g = graph.copy()
    g.io_layouts.update(moved)
    return g


def has_channels_first_io(graph: Graph) -> bool:
    """Whether some input/output of ``graph`` is channels-first in the source (where --io-layout matters)."""
    return any(is_channels_first(graph.io_layouts.get(v), graph.type_of(v).rank)
               for v in [*graph.inputs, *graph.outputs])


def io_map(source: Graph, artifact: Graph, names: Mapping[str, str] | None = None) -> IOMap:
    """How ``artifact`` (``artifact_graph(source, ...)``) relates to ``source``; ``names`` maps
    source names the artifact changed to its own."""
    names = names or {}

    def port(v: str) -> Port:
        t = artifact.type_of(v)
        src, art = source.io_layouts.get(v) or None, artifact.io_layouts.get(v) or None
        src_cf, art_cf = is_channels_first(src, t.rank), is_channels_first(art, t.rank)
        shape = tuple(t.shape[a] for a in to_channels_first(t.rank)) if art_cf else tuple(t.shape)
        perm = None if src_cf == art_cf else tuple(to_channels_last(t.rank) if src_cf else to_channels_first(t.rank))
        return Port(v, names.get(v, v), shape, art, src, perm)

    return IOMap(tuple(port(v) for v in source.inputs), tuple(port(v) for v in source.outputs))
