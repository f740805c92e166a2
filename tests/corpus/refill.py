"""Strip weights from corpus models, and refill them deterministically (LSUV-style).

The corpus (tests/corpus/, built by scripts/make_corpus.py) stores architectures only: ONNX
files whose weight initializers keep their dims and dtype but no data, Keras 3 configs
(``*.keras.json``) and legacy Keras 2 JSON. ``materialize`` turns a manifest entry into a
runnable model file in a folder of the caller's choosing, plus calibration/eval ``.npz``
files keyed by the source's input names, in the source's layout.

Refill (why not constants: with a constant fill every output is the same for every input, so
any importer "matches"): weights are drawn from a seeded normal distribution, then, layer by
layer in graph order, each conv/dense weight (and its bias) is rescaled so that the layer's
output has unit standard deviation on the refill data (LSUV), and each batch norm gets its
input's real per-channel mean and variance as running statistics (so var > 0 and its output
is normalized). The layers that produce a model output are normalized per unit (zero mean,
std 4 across samples) so logits differ between inputs and their argmax varies, as a trained
network's do. ONNX layers are measured with onnxruntime (weights fed as inputs, one session,
one requested output per step), Keras layers with Keras itself. Integer tensors, shape
tensors, Constant nodes and float initializers with no weight role are left as they are.

Only NumPy and onnx are imported at module level; onnxruntime, keras and tf_keras lazily.
This file is imported by path (tests/corpus/test_corpus.py, scripts/corpus_matrix.py,
scripts/make_corpus.py), so it must not import anything else from the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

CORPUS_DIR = Path(__file__).resolve().parent
MANIFEST = CORPUS_DIR / "manifest.json"
# Std of every output unit of a layer that produces a model output (logits).
LOGIT_STD = 4.0
# The output scale of a residual branch where it joins the skip: trained residual nets write
# small increments to the skip stream (their last batch norm's gamma is small, zero at init in
# Goyal et al.'s recipe). At unit scale, zoo ResNet50 refilled was chaotic: 1% noise at one
# early layer moved its logits to cosine 0.993, and int8 failed (0.976); at 0.25, 0.99999.
RESIDUAL_BRANCH = 0.25
# Samples the refill measures on.
REFILL_SAMPLES = 20  # two per cluster

# ONNX ops a weight may pass through between its initializer and the op using it.
_PASS_THROUGH = {"Transpose", "Reshape", "Cast", "Identity", "Unsqueeze", "Squeeze", "Flatten"}


def load_manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def seed_of(name: str, base: int = 0) -> int:
    return (zlib.crc32(name.encode()) + base) & 0x7FFFFFFF


# --------------------------------------------------------------------------- input data
# Inputs are clustered, as a trained classifier's data is: CLUSTERS prototypes per model (smooth
# 1/f fields for images, like natural images' spectra; plain normal vectors otherwise), and each
# sample is a prototype plus SPREAD times a field of its own. With i.i.d. noise inputs a random
# network's logits sit a hair apart for every input, so any quantizer "disagrees" on top-1;
# on clustered inputs, with the head fitted to the clusters (_centroid_head), the margins are a
# trained network's and an int8 artifact is judged on what a user would see.
CLUSTERS = 10
SPREAD = 0.15
# Prototypes drawn per model; the refill keeps the CLUSTERS on which the refilled network is
# most stable (_choose_clusters): a random deep net is chaotic around some inputs (EfficientNet-B0:
# within-cluster feature spread from 0.1 to 26 for the same input spread), while a trained
# network is stable on its own data. The first CLUSTERS are the default without a refill.
CANDIDATES = 30
HEAD_SAMPLES_PER_CANDIDATE = 3


def _spatial_axes(shape: tuple) -> tuple[int, ...]:
    """Spatial axes of one sample (no batch axis): all but the channel axis, the smallest of
    the first and last (NCHW exports put channels first, Keras last)."""
    if len(shape) < 2:
        return ()
    channel = 0 if shape[0] <= shape[-1] else len(shape) - 1
    return tuple(i for i in range(len(shape)) if i != channel)


def _field(rng, shape: tuple, axes: tuple[int, ...]) -> np.ndarray:
    """A zero-mean, unit-std field with a 1/f amplitude spectrum over ``axes`` (white if none)."""
    x = rng.standard_normal(shape)
    if axes:
        f2 = np.zeros([shape[a] if a in axes else 1 for a in range(len(shape))])
        for a in axes:
            fr = np.fft.fftfreq(shape[a])
            f2 = f2 + fr.reshape([-1 if i == a else 1 for i in range(len(shape))]) ** 2
        floor = 1.0 / max(shape[a] for a in axes)
        x = np.real(np.fft.ifftn(np.fft.fftn(x, axes=axes) / np.maximum(np.sqrt(f2), floor), axes=axes))
    return (x - x.mean()) / max(float(x.std()), 1e-12)


def _prototypes(entry: dict, base: int) -> dict[str, np.ndarray]:
    """CANDIDATES prototypes per input, fixed by the model's name and ``base``."""
    rng = np.random.default_rng(seed_of(entry["name"], base) ^ 0x5EED)
    out = {}
    for spec in entry["inputs"]:
        shape = tuple(int(d) for d in spec["shape"][1:])
        out[spec["name"]] = np.stack([_field(rng, shape, _spatial_axes(shape)) for _ in range(CANDIDATES)])
    return out


def labelled_data(entry: dict, n: int, seed: int, base: int = 0,
                  clusters=None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Deterministic clustered inputs keyed by the source's input names, and each sample's
    position in ``clusters`` (prototype indices; default the first CLUSTERS). The prototypes
    depend on the model (and ``base``) only, so refill, calibration and eval data share them;
    ``seed`` draws the samples."""
    clusters = list(range(CLUSTERS)) if clusters is None else [int(c) for c in clusters]
    protos = _prototypes(entry, base)
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(clusters)
    rng.shuffle(labels)
    lo_hi = entry.get("input_range")
    feeds = {}
    for spec in entry["inputs"]:
        p = protos[spec["name"]]
        shape, axes = p.shape[1:], _spatial_axes(p.shape[1:])
        arr = np.stack([p[clusters[c]] + SPREAD * _field(rng, shape, axes) for c in labels]) if n else \
            np.zeros((0, *shape))
        if lo_hi:  # a model with its own preprocessing (0..255 images): map into the range
            arr = lo_hi[0] + (lo_hi[1] - lo_hi[0]) * np.clip(0.5 + 0.2 * arr, 0.0, 1.0)
        feeds[spec["name"]] = arr.astype(np.float32)
    return feeds, labels


def head_data(entry: dict, seed: int, base: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Samples of every candidate prototype, for choosing the clusters and fitting the head."""
    return labelled_data(entry, CANDIDATES * HEAD_SAMPLES_PER_CANDIDATE, seed, base, range(CANDIDATES))


def _choose_clusters(x: np.ndarray, labels: np.ndarray) -> list[int]:
    """The CLUSTERS candidates whose samples' features spread least relative to the distances
    between candidates' feature means."""
    x = x.reshape(len(x), -1).astype(np.float64)
    ids = np.unique(labels)
    mu = np.stack([x[labels == c].mean(axis=0) for c in ids])
    spread = np.array([np.sqrt(((x[labels == c] - m) ** 2).sum(axis=1).mean()) for c, m in zip(ids, mu)])
    d = np.sqrt(((mu[:, None] - mu[None]) ** 2).sum(axis=-1))
    scale = float(np.median(d[np.triu_indices(len(ids), 1)])) if len(ids) > 1 else 1.0
    order = np.argsort(spread / max(scale, 1e-12), kind="stable")
    return sorted(int(ids[i]) for i in order[:CLUSTERS])


def input_data(entry: dict, n: int, seed: int, base: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs for every model input, keyed by the source's input name."""
    return labelled_data(entry, n, seed, base)[0]


def _centroid_head(x: np.ndarray, labels: np.ndarray, n_out: int, rng, clusters=None,
                   bias: bool = True) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A dense head W [d, n_out], b [n_out] classifying features ``x`` [n, d] by cluster, as a
    trained head does. ``labels`` are candidate prototype indices; the CLUSTERS most stable are
    kept (or ``clusters``, chosen by an earlier head) and cluster k of them is class k % n_out.
    Nearest centroid, centred: (x - c)'(mu_k - c) - |mu_k - c|^2 / 2, scaled to a median top-1
    margin of LOGIT_STD. Classes with no cluster get small random weights and logits well below
    the rest (a 1000-class net on 10 clusters). Without a bias (an export with none): unit
    directions (mu_k - c) with the common mean c projected out. Returns W, b and the clusters kept."""
    x = x.reshape(len(x), -1).astype(np.float64)
    if clusters is None:
        clusters = _choose_clusters(x, labels)
    keep = np.isin(labels, clusters)
    x, pos = x[keep], np.searchsorted(clusters, labels[keep])
    cls = pos % n_out
    present = np.unique(cls)
    mu = np.stack([x[cls == c].mean(axis=0) for c in present])
    center = x.mean(axis=0)
    w = (mu - center).T  # [d, k]
    b = -0.5 * ((mu - center) ** 2).sum(axis=1) - center @ w
    if not bias:
        u = center / max(float(np.linalg.norm(center)), 1e-12)
        w = w - np.outer(u, u @ w)
        w = w / np.maximum(np.linalg.norm(w, axis=0, keepdims=True), 1e-12)
        b = np.zeros(w.shape[1])
    logits = x @ w + b
    top2 = np.sort(logits, axis=1)[:, -2:] if logits.shape[1] > 1 else np.concatenate(
        [np.zeros_like(logits), logits], axis=1)
    margin = float(np.median(top2[:, 1] - top2[:, 0]))
    scale = LOGIT_STD / max(margin, 1e-12)
    w, b = w * scale, b * scale
    W = np.zeros((x.shape[1], n_out))
    B = np.zeros(n_out)
    W[:, present], B[present] = w, b
    absent = np.setdiff1d(np.arange(n_out), present)
    if absent.size:
        logits = x @ w + b
        r = rng.standard_normal((x.shape[1], absent.size))
        r = r * (0.5 / max(float((x - center).dot(r).std()), 1e-12))
        W[:, absent] = r
        B[absent] = float(np.percentile(logits, 5)) - LOGIT_STD - center @ r
        if not bias:  # no offsets: centre the random directions' scores below the rest instead
            W[:, absent] = 0.0
            B[absent] = 0.0
    return W.astype(np.float32), B.astype(np.float32), list(clusters)


# --------------------------------------------------------------------------- ONNX roles
def _initializers(model) -> dict:
    return {t.name: t for t in model.graph.initializer}


def _trace_to_initializer(name: str, producers: dict, inits: dict) -> str | None:
    seen = 0
    while name not in inits:
        node = producers.get(name)
        if node is None or node.op_type not in _PASS_THROUGH or seen > 8:
            return None
        name = node.input[0]
        seen += 1
    return name


def weight_roles(model) -> dict[str, dict]:
    """Float initializers with a weight role: name -> {role, node, measure, out_axis}.

    role is weight, bias, bn_scale, bn_bias, bn_mean or bn_var; ``node`` is the index of the
    node whose output ``measure`` is normalized (for batch norm: whose input is measured).
    """
    from onnx import TensorProto

    g = model.graph
    inits = _initializers(model)
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    roles: dict[str, dict] = {}

    def is_float(name):
        return name in inits and inits[name].data_type == TensorProto.FLOAT

    def add(name, role, idx, measure, **kw):
        if name and is_float(name) and name not in roles:
            roles[name] = {"role": role, "node": idx, "measure": measure, **kw}

    for idx, n in enumerate(g.node):
        op = n.op_type
        if op in ("Conv", "ConvTranspose", "Gemm"):
            w = _trace_to_initializer(n.input[1], producers, inits) if len(n.input) > 1 else None
            if op == "Gemm" and w is None:
                w = _trace_to_initializer(n.input[0], producers, inits)
            if w is None:
                continue
            direct = w == n.input[1]
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            out_axis = (0 if trans_b else 1) if op == "Gemm" and direct else (0 if op != "Gemm" else None)
            add(w, "weight", idx, n.output[0], op=op, out_axis=out_axis)
            if len(n.input) > 2 and n.input[2]:
                add(_trace_to_initializer(n.input[2], producers, inits), "bias", idx, n.output[0])
        elif op == "MatMul":
            w = _trace_to_initializer(n.input[1], producers, inits)
            if w is None:
                continue
            measure = n.output[0]
            cons = consumers.get(measure, [])
            if len(cons) == 1 and cons[0].op_type == "Add":
                other = [i for i in cons[0].input if i != measure]
                b = _trace_to_initializer(other[0], producers, inits) if other else None
                if b is not None and is_float(b):
                    measure = cons[0].output[0]
                    add(w, "weight", idx, measure, op=op, out_axis=1 if w == n.input[1] else None)
                    add(b, "bias", idx, measure)
                    continue
            add(w, "weight", idx, measure, op=op, out_axis=1 if w == n.input[1] else None)
        elif op == "BatchNormalization":
            for name, role in zip(n.input[1:5], ("bn_scale", "bn_bias", "bn_mean", "bn_var")):
                add(_trace_to_initializer(name, producers, inits), role, idx, n.input[0])
    return roles


def unshare(model) -> int:
    """Give every layer its own weight tensors. In place; returns how many copies were made.

    Exporters deduplicate initializers with equal values (the TorchScript exporter aliases a
    zero bias of one layer to another's through Identity). Freshly initialized networks have
    many such equal tensors, trained ones do not; a refill must not tie two layers together.
    """
    from onnx import TensorProto

    g = model.graph
    inits = _initializers(model)
    copies = 0
    keep = []
    for n in g.node:
        if n.op_type == "Identity" and n.input[0] in inits and inits[n.input[0]].data_type == TensorProto.FLOAT:
            t = type(inits[n.input[0]])()
            t.CopyFrom(inits[n.input[0]])
            t.name = n.output[0]
            g.initializer.append(t)
            copies += 1
            continue
        keep.append(n)
    if len(keep) != len(g.node):
        del g.node[:]
        g.node.extend(keep)
        inits = _initializers(model)
    seen: set[str] = set()
    for n in g.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Add"):
            continue
        for k, name in enumerate(n.input):
            t = inits.get(name)
            if t is None or t.data_type != TensorProto.FLOAT or int(np.prod(t.dims or [1])) <= 1:
                continue
            if name in seen:
                c = type(t)()
                c.CopyFrom(t)
                c.name = f"{name}__copy{copies}"
                g.initializer.append(c)
                inits[c.name] = c
                n.input[k] = c.name
                copies += 1
            seen.add(name)
    return copies


def strip_onnx(model) -> list[str]:
    """Drop the data of every weight-role float initializer (dims and dtype stay). In place."""
    unshare(model)
    stripped = []
    for name in weight_roles(model):
        t = _initializers(model)[name]
        t.ClearField("raw_data")
        t.ClearField("float_data")
        stripped.append(name)
    model.metadata_props.add(key="tapeout_corpus", value="weights stripped; refill with tests/corpus/refill.py")
    return stripped


def unfill_constant_of_shape(model) -> int:
    """The ONNX light zoo computes its weights as ConstantOfShape(value=0.02): turn each such
    weight back into a (data-less) initializer so the refill gives it real values. In place."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inits = _initializers(model)
    keep, count = [], 0
    for n in g.node:
        if n.op_type == "ConstantOfShape" and n.input and n.input[0] in inits:
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if value is not None and value.data_type == TensorProto.FLOAT:
                dims = numpy_helper.to_array(inits[n.input[0]]).astype(np.int64).tolist()
                t = TensorProto(name=n.output[0], data_type=TensorProto.FLOAT, dims=dims)  # no data
                g.initializer.append(t)
                if model.ir_version < 4 and n.output[0] not in {i.name for i in g.input}:
                    # IR 3: every initializer is also a graph input.
                    g.input.append(helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, dims))
                count += 1
                continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    # Shape initializers nobody reads any more.
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for t in list(g.initializer):
        if t.name.endswith("__SHAPE") and t.name not in used:
            g.initializer.remove(t)
            for i in list(g.input):  # IR 3 lists initializers as inputs too
                if i.name == t.name:
                    g.input.remove(i)
    return count


# --------------------------------------------------------------------------- ONNX refill
def _empty_initializers(model) -> list[str]:
    from onnx import TensorProto

    out = []
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT and len(t.dims) and not t.raw_data and not t.float_data \
                and not t.external_data:
            out.append(t.name)
    return out


def _orthonormal(rng, fan: int, n: int) -> np.ndarray:
    """A [fan, n] matrix with orthonormal columns (n <= fan) or rows: LSUV's own pre-init
    (Mishkin & Matas), before each layer is scaled to unit output variance. A Gaussian draw
    instead made the deep corpus nets chaotic: 1% noise added at every layer of the refilled
    EfficientNetB0 moved its logits to cosine 0.87 (0.9986 from orthonormal), so int8 failed
    with tapeout and TensorFlow's converter alike, which trained networks do not."""
    a = rng.standard_normal((max(fan, n), min(fan, n)))
    q, r = np.linalg.qr(a)
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)  # Haar-uniform
    return q if fan >= n else q.T


def _initial_value(role: dict, shape: tuple, rng) -> np.ndarray:
    r = role["role"]
    if r == "weight":
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if len(shape) < 2 or role.get("out_axis") is None:  # layout unknown (read through a Transpose)
            return rng.standard_normal(shape) / np.sqrt(max(fan, 1))
        if len(shape) == 2 and role["out_axis"] == 1:  # MatMul, Gemm(transB=0): [in, out]
            return _orthonormal(rng, shape[0], shape[1])
        return _orthonormal(rng, fan, shape[0]).T.reshape(shape)  # [out, in/groups, k...]
    if r == "bias":
        return rng.standard_normal(shape) * 0.1
    if r == "bn_scale":
        return rng.uniform(0.7, 1.3, shape)
    if r == "bn_bias":
        return rng.standard_normal(shape) * 0.1
    if r == "bn_mean":
        return np.zeros(shape)
    if r == "bn_var":
        return np.ones(shape)
    raise AssertionError(r)


def _upgraded_for_ort(model):
    """onnxruntime runs opset 7 and newer: measure on an upgraded copy of older models."""
    import onnx
    from onnx import version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset >= 7:
        return model
    inits = _initializers(model)
    for n in model.graph.node:  # PyTorch 0.3 wrote consumed_inputs at opset 6, where it is gone
        for a in list(n.attribute):
            if a.name == "consumed_inputs":
                n.attribute.remove(a)
        attrs = {a.name: a for a in n.attribute}
        # Axis-aligned broadcast of a [C] operand onto NCHW: onnx's converter unsqueezes it to
        # [C, 1, 1, 1], which broadcasts over the batch. Give it numpy's [C, 1, 1] here.
        if "broadcast" in attrs and "axis" in attrs and len(n.input) > 1 and n.input[1] in inits \
                and len(inits[n.input[1]].dims) == 1:
            t = inits[n.input[1]]
            t.dims.extend([1] * (3 - attrs["axis"].i))
            n.attribute.remove(attrs["axis"])
            n.attribute.remove(attrs["broadcast"])
            for i in model.graph.input:
                if i.name == t.name:
                    i.CopyFrom(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return version_converter.convert_version(model, 13)


def refill_onnx(model, seed: int, feeds: dict[str, np.ndarray], head: tuple | None = None):
    """A copy of ``model`` with every empty weight filled (LSUV on ``feeds``), and the clusters
    its dense head was fitted to on ``head`` = (feeds, candidate labels) (None: no such head)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    unfill_constant_of_shape(model)
    unshare(model)
    roles = weight_roles(model)
    # Batch-norm statistics the file still carries belong to the weights it was trained with
    # (the light zoo ships them while its convs are ConstantOfShape): kept beside refilled convs,
    # zoo Inception v2's first one divided by sqrt(3902) and crushed every later signal to ~1%
    # of its bias, so int8 failed on rounding alone. They are refilled with the rest.
    empty = set(_empty_initializers(model)) | {n for n, r in roles.items() if r["role"].startswith("bn_")}
    missing = empty - set(roles)
    # The light zoo also fills Caffe2's affine batch norms (Mul by a scale, Add of a bias) with
    # ConstantOfShape: give those a per-channel scale near 1 and a small bias.
    consumers: dict[str, list] = defaultdict(list)
    for idx, n in enumerate(model.graph.node):
        for i in n.input:
            consumers[i].append((idx, n))
    for name in sorted(missing):
        t = name
        for _ in range(4):  # through Unsqueeze/Reshape to the Mul or Add using it
            use = consumers.get(t, [])
            if len(use) != 1:
                break
            idx, n = use[0]
            if n.op_type in ("Mul", "Add", "Sum"):
                roles[name] = {"role": "bn_scale" if n.op_type == "Mul" else "bn_bias", "node": idx,
                               "measure": None}
                missing.discard(name)
                break
            if n.op_type not in _PASS_THROUGH:
                break
            t = n.output[0]
    if missing:
        raise ValueError(f"stripped initializers with no weight role: {sorted(missing)[:5]}")
    rng = np.random.default_rng(seed)
    inits = _initializers(model)
    values: dict[str, np.ndarray] = {}
    for name in sorted(empty, key=lambda n: (roles[n]["node"], n)):
        shape = tuple(int(d) for d in inits[name].dims)
        values[name] = _initial_value(roles[name], shape, rng).astype(np.float32)

    # Measurement model: refilled tensors are graph inputs, measured tensors graph outputs.
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    g = probe.graph
    for t in list(g.initializer):
        if t.name in values:
            g.initializer.remove(t)
    existing_inputs = {i.name for i in g.input}
    for name, v in values.items():
        if name not in existing_inputs:
            g.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(v.shape)))
    probe = _upgraded_for_ort(probe)
    g = probe.graph
    del g.value_info[:]  # the version converter leaves untyped entries onnxruntime rejects
    graph_outputs = {o.name for o in g.output}
    measures = sorted({r["measure"] for r in roles.values() if r["measure"] is not None and
                       any(n in values for n in _names_at(roles, r["node"]))},
                      key=lambda m: _measure_index(roles, m))
    for m in measures:
        if m not in graph_outputs:
            g.output.append(helper.make_tensor_value_info(m, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed_names = {i.name for i in sess.get_inputs()}
    refill_data = {k: v for k, v in feeds.items() if k in feed_names}
    # A batch-1 export (the version converter may drop input shapes: read the original's).
    fixed_batch = any(i.name in refill_data and i.type.tensor_type.shape.dim and
                      i.type.tensor_type.shape.dim[0].dim_value == 1 for i in model.graph.input)
    final = _final_measures(model, roles)
    branches = residual_branches(model)

    def run(sess, name: str, inputs: dict | None = None) -> np.ndarray:
        """``name`` on every sample with the current weights (a batch-1 export: one sample per run)."""
        weights = {k: v for k, v in values.items() if k in feed_names}
        data = refill_data if inputs is None else {k: v for k, v in inputs.items() if k in feed_names}
        n_samples = len(next(iter(data.values())))
        if fixed_batch:
            return np.concatenate([sess.run([name], {**{k: v[i:i + 1] for k, v in data.items()}, **weights})[0]
                                   for i in range(n_samples)]).astype(np.float64)
        return sess.run([name], {**data, **weights})[0].astype(np.float64)

    clusters = None
    fitted_heads: set[str] = set()

    by_measure: dict[str, list[str]] = defaultdict(list)
    for name, r in roles.items():
        if name in values and r["measure"] is not None:
            by_measure[r["measure"]].append(name)
    for m in measures:
        names = by_measure[m]
        y = run(sess, m)
        kinds = {roles[n]["role"] for n in names}
        if kinds & {"bn_mean", "bn_var", "bn_scale", "bn_bias"}:
            axes = tuple(i for i in range(y.ndim) if i != 1)
            for n in names:
                if roles[n]["role"] == "bn_mean":
                    values[n] = y.mean(axis=axes).astype(np.float32).reshape(values[n].shape)
                elif roles[n]["role"] == "bn_var":
                    values[n] = (y.var(axis=axes) + 1e-3).astype(np.float32).reshape(values[n].shape)
            for n in names:
                if roles[n]["role"] in ("bn_scale", "bn_bias") and \
                        model.graph.node[roles[n]["node"]].output[0] in branches:
                    values[n] = (values[n] * RESIDUAL_BRANCH).astype(np.float32)
            continue
        w = next((n for n in names if roles[n]["role"] == "weight"), None)
        b = next((n for n in names if roles[n]["role"] == "bias"), None)
        if w is None:
            continue
        pooled_head = m in final and y.ndim > 2 and _pooled_logits(model, m) is not None
        if m in final and head is not None and y.ndim >= 2 and y.shape[1] > 1 and \
                (int(np.prod(y.shape[2:])) == 1 or pooled_head):
            fitted = _fit_onnx_head(model, probe, opts, run, values, roles, w, b, head, rng, clusters,
                                    pooled=pooled_head)
            if fitted is not None:
                clusters = fitted
                fitted_heads.add(m)
                continue
        if m in final and y.ndim >= 2 and y.shape[1] > 1:
            # Per output unit: zero mean, LOGIT_STD across samples.
            _per_unit(values, roles[w], w, b, y, LOGIT_STD)
        else:
            std = float(y.std())
            s = (RESIDUAL_BRANCH if m in branches else 1.0) / std if std > 1e-12 else 1.0
            values[w] = (values[w] * s).astype(np.float32)
            if b is not None:
                values[b] = (values[b] * s).astype(np.float32)

    # A conv head (conv, relu, global pool: SqueezeNet): pooling averages the per-sample variation
    # away, so scale each output channel again by the pooled logits' spread across samples (exact:
    # relu and average pooling are positively homogeneous).
    for m in final - fitted_heads:
        pooled = _pooled_logits(model, m)
        w = next((n for n in by_measure.get(m, []) if roles[n]["role"] == "weight"), None)
        if pooled is None or w is None or values[w].ndim < 3:
            continue
        probe.graph.output.append(helper.make_tensor_value_info(pooled, onnx.TensorProto.FLOAT, None))
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        y = run(sess, pooled)
        y = y.reshape(y.shape[0], y.shape[1], -1).mean(axis=2)
        # One scale for all channels: per-channel scales would blow up the differences between the
        # channels' means (which relu keeps) over the differences between samples.
        s = np.full(y.shape[1], LOGIT_STD / max(float(np.median(y.std(axis=0))), 1e-12))
        values[w] = (values[w] * s.reshape((-1,) + (1,) * (values[w].ndim - 1))).astype(np.float32)
        b = next((n for n in by_measure[m] if roles[n]["role"] == "bias"), None)
        if b is not None:
            values[b] = (values[b] * s.reshape(values[b].shape)).astype(np.float32)

    out = onnx.ModelProto.FromString(model.SerializeToString())
    for t in out.graph.initializer:
        if t.name in values:
            t.CopyFrom(numpy_helper.from_array(values[t.name].reshape(tuple(t.dims)), t.name))
    for p in list(out.metadata_props):
        if p.key == "tapeout_corpus":
            out.metadata_props.remove(p)
    return out, clusters


def residual_branches(model) -> set[str]:
    """The tensors that end a residual branch: of each Add/Sum of two computed tensors, the one
    more nodes deep (a block's convs; the skip is its input or a shorter projection)."""
    g = model.graph
    depth: dict[str, int] = {}
    for n in g.node:  # ONNX nodes are in topological order
        d = 1 + max((depth.get(i, 0) for i in n.input), default=0)
        for o in n.output:
            depth[o] = d
    out = set()
    for n in g.node:
        ins = [i for i in n.input if i]
        if n.op_type in ("Add", "Sum") and len(ins) == 2 and all(i in depth for i in ins) \
                and depth[ins[0]] != depth[ins[1]]:
            out.add(max(ins, key=lambda i: depth[i]))
    return out


def _fit_onnx_head(model, probe, opts, run, values, roles, w, b, head, rng, clusters, pooled=False):
    """Refit a final Gemm/MatMul (or 1x1 conv) as a centroid head on its input features; returns
    the clusters kept, or None if its layout is not a plain [d, n] or [n, d] matrix.

    ``pooled``: a 1x1 conv on a map, then relu and a global average pool (SqueezeNet). The head is
    fitted on the spatially averaged features, and its bias raised so that 98% of the classes'
    per-position logits stay positive: relu is then nearly the identity and commutes with the pool, so the
    pooled logits are the fitted head's (plus one offset for all classes, which keeps the argmax,
    as a trained SqueezeNet's logits are all positive too)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    role = roles[w]
    node = model.graph.node[role["node"]]
    W = values[w]
    conv = role.get("op") == "Conv" and W.ndim >= 3 and int(np.prod(W.shape[2:])) == 1  # 1x1, on a 1x1 map
    if not conv and (role.get("op") not in ("Gemm", "MatMul") or role.get("out_axis") is None or W.ndim != 2):
        return None
    feature = node.input[0]
    probe.graph.output.append(helper.make_tensor_value_info(feature, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = run(sess, feature, head[0])
    per_position = None
    if pooled:
        if not conv:
            return None
        per_position = np.moveaxis(x.reshape(x.shape[0], x.shape[1], -1), 1, -1).reshape(-1, x.shape[1])
        x = x.reshape(x.shape[0], x.shape[1], -1).mean(axis=2)
    x = x.reshape(x.shape[0], -1)
    out_axis = 0 if conv else role["out_axis"]
    n_out = W.shape[out_axis]
    if x.shape[1] != W.shape[1 - out_axis]:
        return None
    has_bias = b is not None and values[b].size == n_out
    whiten = None
    if per_position is not None:
        # Fitted in coordinates whitened by the per-position scatter (shrunk by its mean eigenvalue,
        # so that no direction gains without bound), as a head trained through the pool learns:
        # every position gets the gradient. The plain centroid head read the directions in which
        # positions differ most, and its per-position logits spread so far that keeping 98% of
        # them positive lifted zoo SqueezeNet's pooled logits to 534 +- 4 (max 630), beyond what
        # fp16 (0.5 steps there) tells apart: fp16 cosine 0.9976. Whitened: 26 (max 70), 0.999999.
        cov = np.cov(per_position, rowvar=False)
        vals, vecs = np.linalg.eigh(cov + np.eye(len(cov)) * max(float(np.trace(cov)) / len(cov), 1e-12))
        whiten = (vecs / np.sqrt(vals)) @ vecs.T
        x = x @ whiten
    bias_less = per_position is not None and not has_bias
    head_w, head_b, clusters = _centroid_head(x, head[1], n_out, rng, clusters, bias=has_bias or bias_less)
    if whiten is not None:
        head_w = (whiten @ head_w).astype(np.float32)
    if per_position is not None:  # head_w: [d, n_out]
        # The classes' units only: the absent classes' units sit below and relu may zero them.
        k = min(CLUSTERS, n_out)
        if bias_less:
            # No bias (torch's dynamo export of SqueezeNet): the mean feature direction u lifts the
            # logits instead. The features are post-relu, so every position's projection s on u is
            # positive; offsets scaled by s/mean(s) keep the pooled argmax up to that small factor.
            u = per_position.mean(axis=0)
            u = u / max(float(np.linalg.norm(u)), 1e-12)
            s = np.maximum(per_position @ u, 1e-12)
            head_w = head_w + np.outer(u, head_b / float(s.mean()))
            lift = max(0.0, float(np.quantile(-(per_position @ head_w)[:, :k] / s[:, None], 0.98)))
            head_w = (head_w + lift * u[:, None]).astype(np.float32)
        else:
            z = (per_position @ head_w + head_b)[:, :k]
            head_b = head_b + max(0.0, -float(np.quantile(z, 0.02)))
    values[w] = (head_w if out_axis == 1 else np.ascontiguousarray(head_w.T)).reshape(W.shape)
    if b is not None and values[b].size == n_out:
        values[b] = head_b.reshape(values[b].shape)
    return clusters


def _names_at(roles, idx):
    return [n for n, r in roles.items() if r["node"] == idx]


def _measure_index(roles, m):
    return min(r["node"] for r in roles.values() if r["measure"] == m)


def _final_measures(model, roles) -> set[str]:
    """Measured tensors that reach a graph output through no weight layer (the logits)."""
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    measured = {r["measure"] for r in roles.values() if r["role"] == "weight"}
    final = set()
    for o in g.output:
        stack, seen = [o.name], set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in measured:
                final.add(t)
                continue
            n = producers.get(t)
            if n is not None and n.op_type in ("Softmax", "LogSoftmax", "Identity", "Reshape", "Flatten",
                                              "Squeeze", "Sigmoid", "Transpose", "Dropout", "Relu",
                                              "GlobalAveragePool", "AveragePool", "ReduceMean"):
                stack.extend(i for i in n.input[:1] if i)
    return final


def _pooled_logits(model, measure: str) -> str | None:
    """The output of the global/average pool between ``measure`` (a conv) and a model output."""
    g = model.graph
    consumers: dict[str, list] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    t = measure
    for _ in range(4):
        nxt = consumers.get(t, [])
        if len(nxt) != 1:
            return None
        n = nxt[0]
        if n.op_type in ("GlobalAveragePool", "AveragePool", "ReduceMean"):
            return n.output[0]
        if n.op_type not in ("Relu", "Dropout", "Identity"):
            return None
        t = n.output[0]
    return None


def _per_unit(values, role, w, b, y, target):
    """Scale each output unit of a dense layer to ``target`` std across samples, mean zero."""
    if y.ndim > 2:  # a conv head (SqueezeNet): per output channel, over samples and positions
        y = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
    mean, std = y.mean(axis=0), y.std(axis=0)
    s = target / np.maximum(std, 1e-12)
    W = values[w]
    axes = [i for i in range(W.ndim) if W.shape[i] == y.shape[1]]
    if len(axes) > 1:
        axes = [role["out_axis"]] if role.get("out_axis") is not None else []
    if len(axes) != 1 or W.ndim != 2 and axes[0] != 0:
        # Unknown layout: scalar LSUV.
        k = target / max(float(y.std()), 1e-12)
        values[w] = (W * k).astype(np.float32)
        if b is not None:
            values[b] = (values[b] * k).astype(np.float32)
        return
    shape = [1] * W.ndim
    shape[axes[0]] = -1
    values[w] = (W * s.reshape(shape)).astype(np.float32)
    if b is not None and values[b].size == y.shape[1]:
        # y = Wx + b has per-unit mean `mean`; (Wx + b - mean) * s is centred with std target.
        old_b = values[b].reshape(-1).astype(np.float64)
        values[b] = ((old_b - mean) * s).astype(np.float32).reshape(values[b].shape)


# --------------------------------------------------------------------------- Keras refill
_KERAS_WEIGHTED = ("Conv1D", "Conv2D", "Conv3D", "Dense", "DepthwiseConv1D", "DepthwiseConv2D",
                   "SeparableConv1D", "SeparableConv2D", "Conv2DTranspose", "Conv1DTranspose")


def _keras_rescale(layer, x, y, rng, is_final: bool, target: float = 1.0):
    """Return new weights for a conv/dense layer so ``y = layer(x)`` has std ``target`` (logits:
    LOGIT_STD per unit)."""
    y = np.asarray(y, dtype=np.float64)
    ws = layer.get_weights()
    cls = type(layer).__name__
    has_bias = getattr(layer, "use_bias", False)
    # Depthwise/separable: scale the last kernel (pointwise) or the only one.
    k_index = 1 if cls.startswith("Separable") else 0
    if is_final and y.ndim == 2 and y.shape[1] > 1 and cls == "Dense":
        mean, std = y.mean(axis=0), y.std(axis=0)
        s = LOGIT_STD / np.maximum(std, 1e-12)
        ws[0] = ws[0] * s[None, :]
        if has_bias:
            ws[-1] = (ws[-1] - mean) * s
        return ws
    std = float(y.std())
    s = target / std if std > 1e-12 else 1.0
    ws[k_index] = ws[k_index] * s
    if has_bias:
        ws[-1] = ws[-1] * s
    return ws


def _weight_leaf(v) -> str:
    """A Keras weight's own name ("kernel", "moving_mean"), without its layer path or ":0"."""
    return (getattr(v, "path", None) or v.name).split("/")[-1].split(":")[0]


def _keras_initial(layer, rng):
    ws = []
    cls = type(layer).__name__
    for v in layer.weights:
        shape = tuple(int(d) for d in v.shape)
        leaf = _weight_leaf(v)
        if "bias" in leaf or leaf == "beta":
            a = rng.standard_normal(shape) * 0.1
        elif leaf == "gamma":
            a = rng.uniform(0.7, 1.3, shape)
        elif leaf == "moving_mean":
            a = np.zeros(shape)
        elif leaf == "moving_variance":
            a = np.ones(shape)
        elif "kernel" in leaf:
            fan = int(np.prod(shape[:-1]))
            if cls.startswith("DepthwiseConv") or "depthwise" in leaf:
                fan = int(np.prod(shape[:-2]))
            a = _orthonormal(rng, fan, int(np.prod(shape)) // max(fan, 1)).reshape(shape)
        else:
            a = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
        ws.append(np.asarray(a, dtype=np.float32))
    return ws


def _scaled_bn(layer, ws, factor: float):
    """Batch-norm weights with gamma and beta times ``factor`` (its output scaled by it)."""
    names = [_weight_leaf(v) for v in layer.weights]
    return [w * factor if n in ("gamma", "beta") else w for w, n in zip(ws, names)]


# Layers a residual branch's value passes unchanged between its last weighted layer and the add.
_KERAS_PASS_THROUGH = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "Identity", "StochasticDepth")


def keras_residual_branches(model) -> set[int]:
    """ids of the layers that end a residual branch: of each two-input Add whose inputs are both
    computed, the deeper one's last conv/dense/batch norm (as residual_branches for ONNX)."""
    depth: dict[int, int] = {}
    inputs_of: dict[int, list] = {}
    for layer in model.layers:  # a functional model's layers are in topological order
        inp = getattr(layer, "input", None) if type(layer).__name__ != "InputLayer" else None
        ins = inp if isinstance(inp, (list, tuple)) else [] if inp is None else [inp]
        prods = [_producer_layer(model, t) for t in ins]
        inputs_of[id(layer)] = prods
        depth[id(layer)] = 1 + max((depth.get(id(p), 0) for p in prods if p is not None), default=0)
    out = set()
    for layer in model.layers:
        prods = inputs_of[id(layer)]
        if type(layer).__name__ != "Add" or len(prods) != 2 or any(
                p is None or type(p).__name__ == "InputLayer" for p in prods):
            continue
        d0, d1 = (depth[id(p)] for p in prods)
        if d0 == d1:
            continue
        end = prods[0] if d0 > d1 else prods[1]
        while end is not None and type(end).__name__ in _KERAS_PASS_THROUGH:
            ins = inputs_of.get(id(end), [])
            end = ins[0] if len(ins) == 1 else None
        if end is not None and (type(end).__name__ in _KERAS_WEIGHTED or type(end).__name__ == "BatchNormalization"):
            out.add(id(end))
    return out


def refill_keras_model(model, seed: int, feeds: list[np.ndarray], legacy: bool = False,
                       head: tuple | None = None) -> list[int] | None:
    """LSUV-refill a built Keras 3 or tf_keras model in place, layer by layer in graph order; then
    fit each final Dense as a centroid head on ``head`` = (input arrays, candidate labels).
    Returns the clusters kept (None: no such head)."""
    rng = np.random.default_rng(seed)
    layers = [l for l in model.layers if l.weights]
    for l in layers:
        l.set_weights(_keras_initial(l, rng))
    final = {id(_head_layer(model, t)) for t in model.outputs}
    # As in the ONNX refill: each residual branch joins its skip at RESIDUAL_BRANCH. Without it the
    # refilled MobileNetV3Small read logit cosine 0.979 under 1% noise at every layer (its ONNX
    # export, refilled with branches: 0.995), and its int8 cell measured that.
    branches = keras_residual_branches(model)
    if not legacy:
        try:
            _refill_keras3_one_pass(model, feeds, rng, final, branches)
            return _keras_heads(model, final, head, rng, legacy)
        except Exception:  # fall back to one probe model per layer
            pass
    _refill_keras_probing(model, feeds, rng, final, legacy, branches)
    return _keras_heads(model, final, head, rng, legacy)


def _keras_heads(model, final, head, rng, legacy) -> list[int] | None:
    if head is None:
        return None
    if legacy:
        import tf_keras as K
    else:
        import keras as K
    clusters = None
    for layer in model.layers:
        if id(layer) not in final or type(layer).__name__ not in ("Dense", "Conv2D", "Conv1D") \
                or not layer.use_bias:
            continue
        ws = layer.get_weights()
        if ws[0].shape[-1] < 2 or int(np.prod(ws[0].shape[:-2])) != 1:  # dense, or a 1x1 conv
            continue
        arrays = head[0]
        x = np.asarray(K.Model(model.inputs, layer.input)(arrays if len(arrays) > 1 else arrays[0], training=False))
        if int(np.prod(x.shape[1:])) != ws[0].shape[-2]:  # a conv head on a map larger than 1x1
            continue
        w, ws[-1], clusters = _centroid_head(x, head[1], ws[0].shape[-1], rng, clusters)
        ws[0] = w.reshape(ws[0].shape)
        layer.set_weights(ws)
    return clusters


def _producer_layer(model, tensor):
    hist = getattr(tensor, "_keras_history", None)
    if hist is not None:
        return hist[0] if isinstance(hist, tuple) else hist.operation
    return None


# Layers between a classifier's logits and the model output (Keras MobileNetV3: a 1x1 Conv2D
# "Logits", then Flatten and Activation(softmax)).
_KERAS_AFTER_LOGITS = ("Activation", "Flatten", "Reshape", "Dropout", "Softmax")


def _head_layer(model, tensor):
    """The layer computing the logits behind an output: its producer, through _KERAS_AFTER_LOGITS."""
    layer = _producer_layer(model, tensor)
    for _ in range(4):
        if layer is None or type(layer).__name__ not in _KERAS_AFTER_LOGITS:
            return layer
        inp = layer.input
        layer = _producer_layer(model, inp[0] if isinstance(inp, (list, tuple)) else inp)
    return layer


def _bn_stats(layer, x):
    x = np.asarray(x, dtype=np.float64)
    axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
    axis = axis % x.ndim
    axes = tuple(i for i in range(x.ndim) if i != axis)
    ws = layer.get_weights()
    names = [_weight_leaf(v) for v in layer.weights]
    for i, n in enumerate(names):
        if n == "moving_mean":
            ws[i] = x.mean(axis=axes).astype(np.float32)
        elif n == "moving_variance":
            ws[i] = (x.var(axis=axes) + 1e-3).astype(np.float32)
    return ws


def _bn_affine(layer):
    """A Keras 3 batch norm as a plain affine (running mean 0, variance 1; gamma/beta as drawn):
    the convs' LSUV does the normalizing, as in the ONNX refill, where exporters fold batch norms.
    Exact per-channel statistics on random weights made the float model itself hypersensitive
    (1% input noise: MobileNetV2 softmax cosine 0.75), so int8 collapsed with tapeout and
    TensorFlow's converter alike (0.61 and 0.55); as an affine, 0.91 and 0.92."""
    ws = layer.get_weights()
    names = [_weight_leaf(v) for v in layer.weights]
    for i, n in enumerate(names):
        if n == "moving_mean":
            ws[i] = np.zeros_like(ws[i])
        elif n == "moving_variance":
            ws[i] = np.ones_like(ws[i])
    return ws


def _refill_keras3_one_pass(model, feeds, rng, final, branches=frozenset()):
    """Walk the functional graph once (Keras's own traversal), normalizing each layer as it runs."""
    from keras import ops

    def operation_fn(op):
        def call(*args, **kwargs):
            kwargs.pop("training", None)
            cls = type(op).__name__
            target = RESIDUAL_BRANCH if id(op) in branches else 1.0
            if cls == "BatchNormalization":
                op.set_weights(_scaled_bn(op, _bn_affine(op), target))
            y = op(*args, training=False, **kwargs) if _accepts_training(op) else op(*args, **kwargs)
            if cls in _KERAS_WEIGHTED:
                pre = ops.convert_to_numpy(_pre_activation(op, args[0]))
                op.set_weights(_keras_rescale(op, args[0], pre, rng, id(op) in final, target))
                y = op(*args, **kwargs)
            elif op.weights and cls not in ("BatchNormalization", "Normalization", "Rescaling"):
                if hasattr(op, "layers"):
                    raise NotImplementedError("nested model")
            return y

        return call

    inputs = feeds if len(feeds) > 1 else feeds[0]
    model._run_through_graph(model._standardize_inputs(inputs) if hasattr(model, "_standardize_inputs")
                             else inputs, operation_fn=operation_fn)


def _pre_activation(layer, x):
    """The layer's output before its fused activation (a Dense(softmax) is normalized on logits)."""
    act = getattr(layer, "activation", None)
    if act is None:
        return layer(x)
    layer.activation = lambda v: v
    try:
        return layer(x)
    finally:
        layer.activation = act


def _accepts_training(op) -> bool:
    import inspect

    try:
        return "training" in inspect.signature(op.call).parameters
    except (TypeError, ValueError):
        return False


def _refill_keras_probing(model, feeds, rng, final, legacy, branches=frozenset()):
    if legacy:
        import tf_keras as K
    else:
        import keras as K
    for layer in model.layers:
        cls = type(layer).__name__
        if cls not in _KERAS_WEIGHTED and cls != "BatchNormalization":
            continue
        probe = K.Model(model.inputs, layer.input)
        x = probe(feeds if len(feeds) > 1 else feeds[0], training=False)
        target = RESIDUAL_BRANCH if id(layer) in branches else 1.0
        if cls == "BatchNormalization":
            layer.set_weights(_scaled_bn(layer, _bn_stats(layer, np.asarray(x)), target))
            continue
        y = _pre_activation(layer, x)
        layer.set_weights(_keras_rescale(layer, x, np.asarray(y), rng, id(layer) in final, target))


# --------------------------------------------------------------------------- materialize
def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")


def refill_entry(entry: dict, outdir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write a runnable, refilled copy of one manifest entry into ``outdir``.

    Returns {"model": path, "weights": path or absent, "clusters": the prototype indices the head
    was fitted to, or None}: the calibration and eval data are drawn from those (write_data).
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    src = CORPUS_DIR / entry["files"][0]
    s = seed_of(entry["name"], seed)
    feeds = input_data(entry, REFILL_SAMPLES, s + 1, seed)
    head_feeds, head_labels = head_data(entry, s + 4, seed)
    kind = entry["kind"]
    if kind == "onnx":
        import onnx

        model = onnx.load(str(src))
        filled, clusters = refill_onnx(model, s, feeds, (head_feeds, head_labels))
        path = outdir / f"{entry['name']}.onnx"
        path.write_bytes(filled.SerializeToString())
        return {"model": path, "clusters": clusters}
    _quiet_tf()
    arrays = [feeds[i["name"]] for i in entry["inputs"]]
    head = ([head_feeds[i["name"]] for i in entry["inputs"]], head_labels)
    if kind == "keras":
        import keras

        keras.utils.set_random_seed(s % (2**31))
        config = json.loads(src.read_text())
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
        clusters = refill_keras_model(model, s, arrays, head=head)
        path = outdir / f"{entry['name']}.keras"
        model.save(path)
        _fix_zip_dates(path)
        return {"model": path, "clusters": clusters}
    if kind in ("keras2-json", "keras2-h5"):
        import tf_keras

        tf_keras.utils.set_random_seed(s % (2**31))
        text = src.read_text()
        model = tf_keras.models.model_from_json(text)
        clusters = refill_keras_model(model, s, arrays, legacy=True, head=head)
        if kind == "keras2-h5":
            path = outdir / f"{entry['name']}.h5"
            model.save(path, save_format="h5")
            return {"model": path, "clusters": clusters}
        path = outdir / f"{entry['name']}.json"
        shutil.copyfile(src, path)
        weights = outdir / f"{entry['name']}.weights.h5"
        model.save_weights(weights, save_format="h5")
        return {"model": path, "weights": weights, "clusters": clusters}
    raise ValueError(f"unknown kind {kind!r}")


def _fix_zip_dates(path: Path) -> None:
    """Rewrite a .keras zip with fixed entry dates, so the refill is byte-identical."""
    import zipfile

    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in sorted(zin.infolist(), key=lambda i: i.filename):
            data = zin.read(info.filename)
            zi = zipfile.ZipInfo(info.filename, date_time=(2020, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(zi, data)
    tmp.replace(path)


def write_data(entry: dict, outdir: str | Path, n_cal: int, n_eval: int, seed: int = 0,
               clusters=None) -> dict[str, Path]:
    """calibration.npz and eval.npz keyed by the source input names (source layout), drawn from
    ``clusters`` (refill_entry's; default the first CLUSTERS prototypes)."""
    outdir = Path(outdir)
    s = seed_of(entry["name"], seed)
    cal = outdir / "calibration.npz"
    ev = outdir / "eval.npz"
    np.savez(cal, **labelled_data(entry, n_cal, s + 2, seed, clusters)[0])
    np.savez(ev, **labelled_data(entry, n_eval, s + 3, seed, clusters)[0])
    return {"calibration": cal, "eval": ev}


def materialize(entry: dict, outdir: str | Path, seed: int = 0) -> dict[str, Path]:
    paths = refill_entry(entry, outdir, seed)
    n_cal, n_eval = entry.get("samples", [64, 100])
    paths.update(write_data(entry, outdir, n_cal, n_eval, seed, paths.pop("clusters", None)))
    return paths
