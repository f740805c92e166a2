"""HGQ2 in the Keras file gate (runtime.model_files): which HGQ2 classes a ``.keras`` file may name.

HGQ2 (``hgq2`` on PyPI, imported as ``hgq``) registers its layers and their quantizer
configs as Keras serializables under the ``hgq>`` package. A file naming them is loaded with
Keras's safe mode like any other; the gate accepts only the classes below, each by its
registered name and an ``hgq.`` module, and refuses every other HGQ2 class naming it, before
any framework sees the file. Everything else in the file is checked as for plain Keras.

The ``hgq2`` wheel also installs a top-level ``qkeras`` package (a compatibility shim) that
would shadow real QKeras: :func:`register` imports HGQ2's own submodules only, never ``qkeras``.

Runtime module: no imports from the compiler.
"""

from __future__ import annotations

# The HGQ2 layers tapeout converts (tapeout.compiler.frontends.hgq2 keeps the same list).
HGQ2_LAYERS = ("QAdd", "QBatchNormDense", "QBatchNormalization", "QConv1D", "QConv2D", "QDense",
               "QGlobalMaxPooling1D", "QGlobalMaxPooling2D", "QMaxPooling1D", "QMaxPooling2D", "QMaximum",
               "QMinimum", "QMultiply", "QSubtract", "QUnaryFunctionLUT", "Quantizer")
# Serialized objects inside those layers' configs: the quantizer config and its constraints,
# regularizers and bit-width mapper (all plain data to HGQ2).
HGQ2_OBJECTS = ("Constant", "DefaultBitwidthMapper", "Max", "Min", "MinMax", "MonoL1", "QuantizerConfig")
_PACKAGE = "hgq>"


def is_hgq2(entry: dict) -> bool:
    """Whether a serialized object (a layer entry or a nested object) claims to be HGQ2's."""
    module, registered = entry.get("module"), entry.get("registered_name")
    return (isinstance(module, str) and (module == "hgq" or module.startswith("hgq."))) or \
        (isinstance(registered, str) and registered.startswith(_PACKAGE))


def names_hgq2(entries: list[tuple[str, dict]]) -> bool:
    """Whether any layer entry (``model_files.layer_entries``) is an HGQ2 layer."""
    return any(is_hgq2(entry) for _, entry in entries)


def refusal(entry: dict, allowed: tuple[str, ...]) -> str | None:
    """Why an HGQ2 object may not be loaded (None: it may): its class must be one of ``allowed``,
    registered under HGQ2's package name, from an ``hgq`` module."""
    cls, module, registered = entry.get("class_name"), entry.get("module"), entry.get("registered_name")
    if cls not in allowed:
        return "is not supported"
    if registered != f"{_PACKAGE}{cls}" or not (isinstance(module, str) and module.startswith("hgq.")):
        return f"claims HGQ2 class {cls} under module {module!r} and registered name {registered!r}, which " \
               "HGQ2 does not use"
    return None


def register() -> None:
    """Import HGQ2's layers so Keras's deserializer finds its registered classes.

    ``hgq.layers`` pulls in HGQ2's quantizers, constraints and regularizers (and the
    ``quantizers`` package), not the ``qkeras`` shim the same wheel installs.
    """
    import hgq.layers  # noqa: F401 - registers the hgq> serializables
    import hgq.quantizer  # noqa: F401


def supported() -> str:
    return ", ".join(HGQ2_LAYERS)
