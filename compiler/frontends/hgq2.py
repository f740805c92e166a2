"""HGQ2 front end: quantization-aware Keras 3 ``.keras`` models trained with HGQ2 into the IR.

A ``.keras`` file whose config names HGQ2 layers (module ``hgq.*``, registered ``hgq>*``)
comes here (compiler.frontends.loader). It passes the same gate as every Keras file
(runtime.model_files: budgets, config shape, no code, Keras safe mode), where HGQ2's classes
are allowed by name (runtime.hgq2_files); :func:`check_config` then refuses, before Keras
builds anything, every quantizer mode or layer setting the IR cannot state. The live model
converts as the Keras front end converts it, with the HGQ2 layers of
``compiler.frontends.hgq2_layers`` added: each trained quantizer becomes a ``fixed_quant``.

HGQ2 is imported only once a file names it (``hgq`` submodules, never the ``qkeras``
package the same wheel installs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tapeout.compiler.errors import FrontendError, MissingToolError
from tapeout.runtime import hgq2_files
from tapeout.runtime.model_files import ModelFileError

MODE_KEYS = ("iq_conf", "oq_conf", "kq_conf", "bq_conf")


def names_hgq2(path: str | Path) -> bool:
    """Whether a ``.keras`` archive's config names an HGQ2 layer. Reads ``config.json`` only,
    within the config budget; False for anything unreadable (the Keras front end reports it)."""
    import zipfile

    from tapeout.runtime.budgets import MAX_CONFIG_BYTES
    from tapeout.runtime.model_files import ARCHIVE_CONFIG, check_shape, layer_entries, parse_config

    p = Path(path)
    if p.suffix.lower() != ".keras":
        return False
    limit = MAX_CONFIG_BYTES.value()
    try:
        with zipfile.ZipFile(p) as z:
            info = z.getinfo(ARCHIVE_CONFIG)
            if info.file_size > limit:
                return False
            with z.open(info) as f:
                raw = f.read(limit + 1)  # the header may understate: never past the budget
        if len(raw) > limit:
            return False
        cfg = parse_config(str(p), raw)
        check_shape(str(p), cfg)
    except (ModelFileError, zipfile.BadZipFile, KeyError, OSError, EOFError, NotImplementedError, RuntimeError):
        return False
    return hgq2_files.names_hgq2(layer_entries(cfg))


def _without_hgq2(cfg: dict) -> dict:
    """The config with HGQ2 layers left out (nested models included), for the Keras checks."""
    body = cfg.get("config")
    if not isinstance(body, dict) or not isinstance(body.get("layers"), list):
        return cfg
    from tapeout.compiler.frontends.keras_layers import MODEL_CLASSES

    layers = [(_without_hgq2(l) if l.get("class_name") in MODEL_CLASSES else l)
              for l in body["layers"] if not hgq2_files.is_hgq2(l)]
    return {**cfg, "config": {**body, "layers": layers}}


def _quantizer_configs(entry: dict) -> list[tuple[str, Any]]:
    c = entry.get("config") or {}
    if entry.get("class_name") == "Quantizer":
        return [("", c.get("config"))]
    out = [(key[:2], c.get(key)) for key in MODE_KEYS if c.get(key) is not None]
    confs = c.get("iq_confs")  # merge layers: one config for every input, or one each
    confs = [confs] if isinstance(confs, dict) else confs if isinstance(confs, list) else []
    return out + [(f"input {j}" if len(confs) > 1 else "iq", q) for j, q in enumerate(confs)]


def check_config(path: Path, cfg: dict) -> None:
    """Refuse, from the stored config, what the IR cannot state: quantizer types and modes,
    scalers, activations. The plain Keras layers get the Keras front end's check."""
    from tapeout.compiler.frontends.hgq2_layers import OVERFLOW, Q_TYPES, ROUNDING, UNARY_ACTIVATIONS
    from tapeout.compiler.frontends.keras import check_config as check_keras
    from tapeout.runtime.model_files import layer_entries

    for _, entry in layer_entries(cfg):
        if not hgq2_files.is_hgq2(entry):
            continue
        cls = entry.get("class_name")
        name = entry.get("name") or (entry.get("config") or {}).get("name")
        where = f"{path}: layer {name!r} ({cls}, HGQ2)"
        for which, q in _quantizer_configs(entry):
            what = f"its {which} quantizer" if which else "it"
            qc = q.get("config") if isinstance(q, dict) else None
            if not isinstance(qc, dict):
                raise FrontendError(f"{where}: {what} has no readable quantizer config")
            q_type = str(qc.get("q_type", "default")).lower()
            if q_type not in (*Q_TYPES, "default"):
                raise FrontendError(f"{where}: {what} is a {q_type!r} quantizer; only HGQ2's fixed-point "
                                    "quantizers (kbi, kif) are supported")
            rnd, ovf = qc.get("round_mode"), qc.get("overflow_mode")
            if isinstance(rnd, str) and rnd.upper() not in ROUNDING:
                raise FrontendError(f"{where}: {what} rounds with {rnd!r}, which has no ap_fixed equivalent; "
                                    f"supported: {', '.join(ROUNDING)}")
            if isinstance(ovf, str) and ovf.upper() not in OVERFLOW:
                raise FrontendError(f"{where}: {what} overflows with {ovf!r}, which has no ap_fixed equivalent; "
                                    f"supported: {', '.join(OVERFLOW)}")
            if qc.get("scaler") is not None or qc.get("affine") is not None:
                raise FrontendError(f"{where}: {what} has a scaler or affine transform, which is not supported")
        if cls == "QUnaryFunctionLUT":
            act = (entry.get("config") or {}).get("activation")
            if isinstance(act, dict):
                act = act.get("config") if act.get("class_name") == "function" else act
            if act not in UNARY_ACTIVATIONS:
                raise FrontendError(f"{where}: activation {act!r} is not supported; supported: "
                                    f"{', '.join(UNARY_ACTIVATIONS)}")
    check_keras(path, _without_hgq2(cfg))


def load_hgq2(path: str | Path) -> Any:
    """Load an HGQ2 ``.keras`` file into a shape-checked IR graph."""
    from tapeout.compiler.quiet import quiet_environment

    quiet_environment()
    p = Path(path)
    if not p.is_file():
        raise FrontendError(f"{p}: no such model file")
    try:
        import hgq  # noqa: F401 - only to report a missing install as such
    except ImportError:
        raise MissingToolError(f"{p} is an HGQ2 model: reading it needs hgq2 (pip install 'tapeout[qat]')") from None
    from tapeout.compiler.frontends.hgq2_layers import CONVERTERS
    from tapeout.compiler.frontends.keras import model_to_graph
    from tapeout.runtime.model_files import load_keras_model

    try:
        loaded = load_keras_model(p, safe_mode=True, check=lambda cfg: check_config(p, cfg))
    except ModelFileError as e:
        raise FrontendError(str(e)) from None
    graph = model_to_graph(loaded.model, converters=CONVERTERS)
    graph.metadata["source_format"] = loaded.format
    graph.metadata["quantization_aware"] = "hgq2"
    return graph
