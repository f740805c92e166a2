"""Every pass by its name, and the pipeline the compiler runs by default."""

from __future__ import annotations

from tapeout.compiler.passes.base import Pass
from tapeout.compiler.passes.canonicalize import Canonicalize, FoldConstants, MergePad, RemoveDead, RemoveIdentity
from tapeout.compiler.passes.fuse import Fuse, FuseActivation, FuseBatchNorm, FuseReshapeTranspose
from tapeout.compiler.passes.pipeline import Pipeline
from tapeout.compiler.passes.prune import PruneChannels, PruneMagnitude, PruneNM
from tapeout.compiler.passes.quantize import Quantize, SplitActivations

PASSES: dict[str, type[Pass]] = {
    "canonicalize": Canonicalize,
    "remove-identity": RemoveIdentity,
    "fold-constants": FoldConstants,
    "remove-dead": RemoveDead,
    "merge-pad": MergePad,
    "fuse": Fuse,
    "fuse-batch-norm": FuseBatchNorm,
    "fuse-activation": FuseActivation,
    "fuse-reshape-transpose": FuseReshapeTranspose,
    # Quantization (run by compile_model for quantized targets, not in the default pipeline).
    "split-activations": SplitActivations,
    "quantize": Quantize,
    # Pruning (run by compile_model for --prune, after the default pipeline).
    "prune:magnitude": PruneMagnitude,
    "prune:channels": PruneChannels,
    "prune:2:4": PruneNM,
}


def default_pipeline() -> Pipeline:
    """canonicalize, then fuse (each a nested pipeline run to its fixed point); fusing leaves
    nothing canonicalize would clean up again."""
    return Pipeline([Canonicalize(), Fuse()], name="default")
