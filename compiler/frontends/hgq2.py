"""HGQ2 front end: quantization-aware Keras 3 ``.keras`` models trained with HGQ2 into the IR.

A ``.keras`` file whose config names HGQ2 layers (module ``hgq.*``, registered ``hgq>*``) is
loaded by the Keras front end (``keras.load_keras``) through the same gate as every Keras file
(runtime.model_files: budgets, config shape, no code, Keras safe mode), where HGQ2's classes
are allowed by name (runtime.hgq2_files). The gate reads the config once; the Keras front
end's check sends an HGQ2 config to :func:`check_file`, which refuses, before Keras builds
anything, every quantizer mode or layer setting the IR cannot state. The live model converts
as the Keras front end converts it, with the HGQ2 layers of ``compiler.frontends.hgq2_layers``
added: each trained quantizer becomes a ``fixed_quant``.

HGQ2 is imported only once a file names it (``hgq`` submodules, never the ``qkeras``
package the same wheel installs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tapeout.compiler.errors import FrontendError, MissingToolError
from tapeout.runtime import hgq2_files

MODE_KEYS = ("iq_conf", "oq_conf", "kq_conf", "bq_conf")


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


def check_file(path: Path, cfg: dict) -> None:
    """The Keras front end's check (``keras.load_keras``) for a ``.keras`` config that names HGQ2
    layers: hgq2 must be installed, then :func:`check_config`."""
    import importlib

    try:
        importlib.import_module("hgq")  # only to report a missing install as such
    except ImportError:
        raise MissingToolError(f"{path} is an HGQ2 model: reading it needs hgq2 (pip install 'tapeout[qat]')") from None
    check_config(path, cfg)
