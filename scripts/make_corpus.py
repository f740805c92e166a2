"""Build the public-model corpus in tests/corpus/ (architectures only, weights stripped).

    # PyTorch exports (torch, torchvision, timm: only in .venv-corpus, see `make corpus-sources`)
    .venv-corpus/bin/python scripts/make_corpus.py --part torch
    # keras.applications (.keras configs, Keras's ONNX exporter, tf2onnx), legacy tf-keras files,
    # the onnx package's light zoo and hand-built opset-6/7 models
    .venv/bin/python scripts/make_corpus.py --part keras --part legacy --part onnx-zoo --part old-opset
    # or: make corpus-sources (both)

Each part rewrites its own files and its own entries of tests/corpus/manifest.json (the
manifest is merged, so the parts can run in different virtual environments). Weight
initializers keep dims and dtype but no data; tests/corpus/refill.py refills them. torch is
needed by this script only, never by `make test`. See docs/corpus.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus"
MANIFEST = CORPUS / "manifest.json"


def _refill_module():
    spec = importlib.util.spec_from_file_location("corpus_refill", CORPUS / "refill.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


R = _refill_module()


# The subset `make test` runs (tests/corpus/test_corpus.py): one small model per kind of source,
# within ~2-3 minutes on 2 cores. hls4ml (a C++ build) for the first only.
FAST_MODELS = {"torch_jet_tagger_ts_op11", "torch_conv2d_small_dynamo_op18", "legacy_cnn_h5",
               "legacy_list_sequential_json", "onnx_opset6_cnn"}
FAST_HLS4ML = {"torch_jet_tagger_ts_op11"}


def entry(name, files, family, inputs, *, kind="onnx", classifier=True, fpga=False, fast=None,
          input_range=None, samples=None, heavy=False, notes=None):
    targets = ["onnx", "tflite:fp32", "tflite:int8", "tensorrt:fp16"] + (["hls4ml"] if fpga else [])
    e = {"name": name, "files": files, "family": family, "kind": kind, "inputs": inputs,
         "classifier": classifier, "targets": targets, "fast": name in FAST_MODELS}
    if name in FAST_HLS4ML:
        e["fast_hls4ml"] = True
    if input_range:
        e["input_range"] = input_range
    if samples:
        e["samples"] = samples
    if heavy:
        e["heavy"] = True
    if notes:
        e["notes"] = notes
    return e


def onnx_inputs(model) -> list[dict]:
    inits = {t.name for t in model.graph.initializer}
    out = []
    for i in model.graph.input:
        if i.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else "N"
                for d in i.type.tensor_type.shape.dim]
        out.append({"name": i.name, "shape": dims})
    return out


def freeze_extra_inputs(model, keep: str) -> list[str]:
    """tf2onnx (also under Keras's exporter) turns a Keras Normalization layer's mean and variance
    into graph inputs of shape [1, 1, 1, C]. Make them initializers holding the layer's values
    for weights=None (mean 0, variance 1), so the model has its one real input. In place."""
    import numpy as np
    from onnx import numpy_helper

    frozen = []
    for i in list(model.graph.input):
        if i.name == keep or "normalization" not in i.name:
            continue
        dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
        value = np.ones(dims, np.float32) if "Sqrt" in i.name else np.zeros(dims, np.float32)
        model.graph.initializer.append(numpy_helper.from_array(value, i.name))
        model.graph.input.remove(i)
        frozen.append(i.name)
    return frozen


def save_stripped_onnx(model, path: Path) -> None:
    import onnx

    R.strip_onnx(model)
    path.write_bytes(model.SerializeToString())


# --------------------------------------------------------------------------- torch
def _torch_imports():
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import timm
    import torchvision

    return torch, torchvision, timm


def _small_torch_models(torch):
    nn = torch.nn

    class JetTagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                                     nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5), nn.Softmax(dim=1))

        def forward(self, x):
            return self.net(x)

    class Conv1DNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv1d(2, 8, 5), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
                                          nn.Conv1d(8, 16, 3), nn.ReLU(), nn.MaxPool1d(2))
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 6, 16), nn.ReLU(), nn.Linear(16, 4))

        def forward(self, x):
            return self.head(self.features(x))

    class Conv2DNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                          nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                                          nn.MaxPool2d(2))
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 10), nn.Softmax(dim=1))

        def forward(self, x):
            return self.head(self.features(x))

    return JetTagger, Conv1DNet, Conv2DNet


# name, builder key, input shape (no batch), classifier, fpga, fast, [(exporter, opset, batch)]
# exporter: "ts" (TorchScript, dynamo=False) or "dynamo"; batch: "dyn" (dynamic axis) or 1.
TORCH_MODELS = [
    ("jet_tagger", "jet", (16,), True, True, True, [("ts", 11, "dyn"), ("ts", 13, 1), ("dynamo", 18, "dyn"),
                                                               ("dynamo", 13, 1)]),
    ("conv1d_small", "conv1d", (2, 32), True, True, False, [("ts", 13, "dyn"), ("dynamo", 18, 1), ("dynamo", 11, "dyn")]),
    ("conv2d_small", "conv2d", (1, 16, 16), True, True, True, [("ts", 11, 1), ("dynamo", 18, "dyn"), ("dynamo", 13, 1)]),
    ("resnet18", "tv:resnet18", (3, 64, 64), True, False, False, [("ts", 11, "dyn"), ("dynamo", 18, "dyn")]),
    ("resnet18_224", "tv:resnet18", (3, 224, 224), True, False, False, [("ts", 13, 1)]),
    ("mobilenet_v2", "tv:mobilenet_v2", (3, 96, 96), True, False, False, [("ts", 13, "dyn"), ("dynamo", 18, 1)]),
    ("mobilenet_v3_small", "tv:mobilenet_v3_small", (3, 96, 96), True, False, False,
     [("ts", 13, "dyn"), ("dynamo", 18, "dyn")]),
    ("efficientnet_b0", "tv:efficientnet_b0", (3, 96, 96), True, False, False, [("ts", 13, 1), ("dynamo", 18, "dyn")]),
    ("shufflenet_v2", "tv:shufflenet_v2_x0_5", (3, 96, 96), True, False, False, [("ts", 11, "dyn"), ("dynamo", 18, 1)]),
    ("squeezenet1_1", "tv:squeezenet1_1", (3, 96, 96), True, False, False, [("ts", 11, 1), ("dynamo", 18, "dyn")]),
    ("densenet121", "tv:densenet121", (3, 64, 64), True, False, False, [("ts", 13, "dyn")]),
    ("regnet_x_400mf", "tv:regnet_x_400mf", (3, 64, 64), True, False, False, [("ts", 18, "dyn"), ("dynamo", 18, 1)]),
    ("mobilenet_v2_224", "tv:mobilenet_v2", (3, 224, 224), True, False, False, [("dynamo", 18, 1)]),
    ("timm_mobilenetv3_small_050", "timm:mobilenetv3_small_050", (3, 96, 96), True, False, False,
     [("ts", 13, "dyn"), ("dynamo", 18, 1)]),
    ("timm_resnet10t", "timm:resnet10t", (3, 64, 64), True, False, False, [("ts", 11, "dyn")]),
    ("timm_regnetx_002", "timm:regnetx_002", (3, 64, 64), True, False, False, [("dynamo", 18, "dyn")]),
]


NOT_BUILT: list[dict] = []  # exports that failed, kept in the manifest under "not_built"


def record_failure(name: str, exc: Exception, log) -> None:
    """Log a failed export and keep it for the manifest's "not_built" list."""
    msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    log(f"FAILED {name}: {msg}")
    NOT_BUILT.append({"name": name, "error": msg[:300]})


def build_torch(only: set[str] | None, log) -> list[dict]:
    import onnx

    torch, torchvision, timm = _torch_imports()
    torch.manual_seed(0)
    jet, c1, c2 = _small_torch_models(torch)
    entries = []
    for name, key, shape, classifier, fpga, fast, exports in TORCH_MODELS:
        if only and name not in only:
            continue
        if key == "jet":
            net = jet()
        elif key == "conv1d":
            net = c1()
        elif key == "conv2d":
            net = c2()
        elif key.startswith("tv:"):
            net = getattr(torchvision.models, key[3:])(weights=None, num_classes=10)
        else:
            net = timm.create_model(key[5:], pretrained=False, num_classes=10)
        net.eval()
        for exporter, opset, batch in exports:
            stem = f"torch_{name}_{exporter}_op{opset}"
            path = CORPUS / "torch" / f"{stem}.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            x = torch.randn(2 if batch == "dyn" else 1, *shape)
            t0 = time.time()
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    raw = Path(tmp) / "m.onnx"
                    if exporter == "ts":
                        kw = {}
                        if batch == "dyn":
                            kw = {"input_names": ["input"], "output_names": ["logits"],
                                  "dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}
                        torch.onnx.export(net, (x,), str(raw), dynamo=False, opset_version=opset, **kw)
                    else:
                        kw = {}
                        if batch == "dyn":
                            kw["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=1024)},)
                        torch.onnx.export(net, (x,), str(raw), dynamo=True, opset_version=opset,
                                          external_data=False, **kw)
                    model = onnx.load(str(raw))
                actual = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
                if actual != opset:  # the dynamo exporter keeps 18 when it cannot convert down
                    raise RuntimeError(f"asked for opset {opset}, the exporter wrote opset {actual} "
                                       f"(its version conversion failed)")
                inputs = onnx_inputs(model)
                save_stripped_onnx(model, path)
            except Exception as exc:  # record and go on: the manifest lists exports that failed
                record_failure(stem, exc, log)
                continue
            family = f"{'timm' if key.startswith('timm:') else 'torchvision' if key.startswith('tv:') else 'torch'}" \
                     f"/{'torchscript' if exporter == 'ts' else 'dynamo'}/opset{opset}"
            heavy = name in ("densenet121",) or shape[-1] >= 224
            e = entry(stem, [str(path.relative_to(CORPUS))], family, inputs, classifier=classifier, fpga=fpga,
                      fast=fast and exporter == "ts" and opset == 11 or (fast and exporter == "dynamo"),
                      samples=[16, 8] if heavy else None, heavy=heavy)
            entries.append(e)
            log(f"{stem}: {path.stat().st_size // 1024} KB, {time.time() - t0:.1f}s")
    return entries


# --------------------------------------------------------------------------- keras
KERAS_APPS = [
    # name, constructor, kwargs, input shape, input range, export onnx via (keras exporter, tf2onnx)
    ("MobileNetV2", {"input_shape": (96, 96, 3), "alpha": 0.35}, None, (True, True)),
    ("MobileNetV3Small", {"input_shape": (96, 96, 3), "minimalistic": False}, (0.0, 255.0), (True, True)),
    ("EfficientNetB0", {"input_shape": (64, 64, 3)}, (0.0, 255.0), (True, True)),
    ("ResNet50", {"input_shape": (64, 64, 3)}, None, (True, True)),
    ("DenseNet121", {"input_shape": (64, 64, 3)}, None, (True, True)),
    ("NASNetMobile", {"input_shape": (96, 96, 3)}, None, (True, True)),
]


def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")


def build_keras(only, log) -> list[dict]:
    _quiet_tf()
    import keras
    import onnx

    entries = []
    for app, kw, rng, (kexp, t2o) in KERAS_APPS:
        name = app.lower()
        if only and name not in only:
            continue
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, app)(weights=None, classes=10, **kw)
        shape = list(kw["input_shape"])
        # The InputLayer's name (a saved model's input name; inputs[0].name is a per-process tensor id).
        in_name = next(l.name for l in model.layers if type(l).__name__ == "InputLayer")
        heavy = app in ("ResNet50", "DenseNet121", "NASNetMobile")
        samples = [16, 8] if heavy else None
        d = CORPUS / "keras"
        d.mkdir(parents=True, exist_ok=True)
        cfg = d / f"keras_{name}.keras.json"
        cfg.write_text(json.dumps(json.loads(model.to_json()), indent=None, sort_keys=True) + "\n")
        entries.append(entry(f"keras_{name}", [str(cfg.relative_to(CORPUS))], "keras.applications/.keras",
                             [{"name": in_name, "shape": ["N", *shape]}], kind="keras", input_range=rng,
                             samples=samples, heavy=heavy, fast=app == "MobileNetV2"))
        log(f"keras_{name}.keras.json: {cfg.stat().st_size // 1024} KB")
        if kexp:
            t0 = time.time()
            path = d / f"keras_{name}_kerasexport.onnx"
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    raw = Path(tmp) / "m.onnx"
                    import numpy as np

                    model(np.zeros((1, *shape), np.float32), training=False)  # the exporter needs a called model
                    model.export(str(raw), format="onnx", verbose=False)
                    m = onnx.load(str(raw))
                freeze_extra_inputs(m, m.graph.input[0].name)
                inputs = onnx_inputs(m)
                save_stripped_onnx(m, path)
                entries.append(entry(path.stem, [str(path.relative_to(CORPUS))], "keras.applications/keras-export-onnx",
                                     inputs, input_range=rng, samples=samples, heavy=heavy))
                log(f"{path.name}: {path.stat().st_size // 1024} KB, {time.time() - t0:.1f}s")
            except Exception as exc:
                record_failure(path.stem, exc, log)
        if t2o:
            t0 = time.time()
            path = d / f"keras_{name}_tf2onnx_op13.onnx"
            try:
                import tensorflow as tf
                import tf2onnx

                spec = (tf.TensorSpec((None, *shape), tf.float32, name=in_name),)
                fn = tf.function(lambda x: model(x, training=False))
                m, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=13)
                freeze_extra_inputs(m, in_name)
                inputs = onnx_inputs(m)
                save_stripped_onnx(m, path)
                entries.append(entry(path.stem, [str(path.relative_to(CORPUS))], "keras.applications/tf2onnx/opset13",
                                     inputs, input_range=rng, samples=samples, heavy=heavy))
                log(f"{path.name}: {path.stat().st_size // 1024} KB, {time.time() - t0:.1f}s")
            except Exception as exc:
                record_failure(path.stem, exc, log)
    return entries


# --------------------------------------------------------------------------- legacy tf-keras
# Keras 1 / early Keras 2 wrote a Sequential's config as a plain list of layers. No installed
# Keras writes it, so it is written here by hand (tf-keras still reads it).
LIST_SEQUENTIAL = {
    "class_name": "Sequential",
    "keras_version": "2.0.8",
    "backend": "tensorflow",
    "config": [
        {"class_name": "Dense", "config": {"name": "dense_1", "trainable": True,
                                           "batch_input_shape": [None, 16], "dtype": "float32",
                                           "units": 64, "activation": "relu", "use_bias": True,
                                           "kernel_initializer": {"class_name": "VarianceScaling",
                                                                  "config": {"scale": 1.0, "mode": "fan_avg",
                                                                             "distribution": "uniform", "seed": None}},
                                           "bias_initializer": {"class_name": "Zeros", "config": {}},
                                           "kernel_regularizer": None, "bias_regularizer": None,
                                           "activity_regularizer": None, "kernel_constraint": None,
                                           "bias_constraint": None}},
        {"class_name": "Dense", "config": {"name": "dense_2", "trainable": True, "units": 32,
                                           "activation": "relu", "use_bias": True}},
        {"class_name": "Dropout", "config": {"name": "dropout_1", "trainable": True, "rate": 0.2}},
        {"class_name": "Dense", "config": {"name": "dense_3", "trainable": True, "units": 5,
                                           "activation": "softmax", "use_bias": True}},
    ],
}


def build_legacy(only, log) -> list[dict]:
    _quiet_tf()
    import tf_keras as K

    d = CORPUS / "legacy"
    d.mkdir(parents=True, exist_ok=True)
    entries = []
    K.utils.set_random_seed(0)

    def want(n):
        return not only or n in only

    # Sequential jet MLP as JSON (+ weights .h5 written by the refill).
    if want("legacy_jet_mlp_json"):
        m = K.Sequential([K.layers.Dense(64, activation="relu", input_shape=(16,), name="fc1"),
                          K.layers.Dense(32, activation="relu", name="fc2"),
                          K.layers.Dense(32, activation="relu", name="fc3"),
                          K.layers.Dense(5, activation="softmax", name="output")], name="jet_mlp")
        p = d / "legacy_jet_mlp_json.json"
        p.write_text(m.to_json(sort_keys=True) + "\n")
        entries.append(entry(p.stem, [str(p.relative_to(CORPUS))], "tf-keras legacy json+h5",
                             [{"name": m.inputs[0].name.split(":")[0], "shape": ["N", 16]}], kind="keras2-json",
                             fpga=True, fast=True))
    # Functional CNN as a full .h5 (BN, pooling, dropout).
    if want("legacy_cnn_h5"):
        inp = K.Input((16, 16, 1), name="image")
        x = K.layers.Conv2D(8, 3, padding="same", name="conv1")(inp)
        x = K.layers.BatchNormalization(name="bn1")(x)
        x = K.layers.Activation("relu", name="relu1")(x)
        x = K.layers.MaxPooling2D(2, name="pool1")(x)
        x = K.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
        x = K.layers.GlobalAveragePooling2D(name="gap")(x)
        x = K.layers.Dropout(0.25, name="drop")(x)
        out = K.layers.Dense(10, activation="softmax", name="probs")(x)
        m = K.Model(inp, out, name="legacy_cnn")
        p = d / "legacy_cnn_h5.json"
        p.write_text(m.to_json(sort_keys=True) + "\n")
        entries.append(entry(p.stem, [str(p.relative_to(CORPUS))], "tf-keras legacy h5",
                             [{"name": "image", "shape": ["N", 16, 16, 1]}], kind="keras2-h5", fpga=True,
                             fast=True))
    # Conv1D Sequential as a full .h5.
    if want("legacy_conv1d_h5"):
        m = K.Sequential([K.layers.Conv1D(8, 5, activation="relu", input_shape=(32, 2), name="c1"),
                          K.layers.MaxPooling1D(2, name="p1"),
                          K.layers.Conv1D(8, 3, activation="relu", name="c2"),
                          K.layers.Flatten(name="flat"),
                          K.layers.Dense(4, activation="softmax", name="out")], name="legacy_conv1d")
        p = d / "legacy_conv1d_h5.json"
        p.write_text(m.to_json(sort_keys=True) + "\n")
        entries.append(entry(p.stem, [str(p.relative_to(CORPUS))], "tf-keras legacy h5",
                             [{"name": m.inputs[0].name.split(":")[0], "shape": ["N", 32, 2]}], kind="keras2-h5",
                             fpga=True))
    # List-style Sequential (Keras 1 style), by hand.
    if want("legacy_list_sequential_json"):
        p = d / "legacy_list_sequential_json.json"
        p.write_text(json.dumps(LIST_SEQUENTIAL, indent=1, sort_keys=True) + "\n")
        probe = K.models.model_from_json(p.read_text())  # tf-keras must read it, or the entry is useless
        entries.append(entry(p.stem, [str(p.relative_to(CORPUS))], "keras1 list-style sequential json (hand-written)",
                             [{"name": probe.inputs[0].name.split(":")[0], "shape": ["N", 16]}], kind="keras2-json",
                             fpga=True, fast=True))
    for e in entries:
        log(f"{e['name']}: {(CORPUS / e['files'][0]).stat().st_size // 1024} KB")
    return entries


# --------------------------------------------------------------------------- onnx light zoo
def build_zoo(only, log) -> list[dict]:
    import onnx

    src = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    d = CORPUS / "onnx_zoo"
    d.mkdir(parents=True, exist_ok=True)
    entries = []
    for f in sorted(src.glob("light_*.onnx")):
        name = f"zoo_{f.stem[len('light_'):]}"
        if only and name not in only:
            continue
        m = onnx.load(str(f))
        inputs_all = onnx_inputs(m)
        # Weight inputs of these IR-3 files are produced by ConstantOfShape fills; the data input is
        # the one no node produces.
        produced = {o for n in m.graph.node for o in n.output}
        inputs = [i for i in inputs_all if i["name"] not in produced]
        # Keep the file as the zoo has it (the refill replaces its constant fills).
        p = d / f"{name}.onnx"
        p.write_bytes(m.SerializeToString())
        big = name in ("zoo_vgg19", "zoo_bvlc_alexnet", "zoo_zfnet512")
        entries.append(entry(name, [str(p.relative_to(CORPUS))], "onnx light zoo (opset 9, refilled)", inputs,
                             samples=[8, 4], heavy=True,
                             notes="fully connected layers of 100M+ parameters" if big else None))
        log(f"{name}: {p.stat().st_size // 1024} KB")
    return entries


# --------------------------------------------------------------------------- old opsets
def _own_old_opset_models():
    """Opset-6/7 models the way early PyTorch (0.2-0.3) exports wrote them: Gemm-6 with
    broadcast=1, BatchNormalization-6 with is_test and consumed_inputs, IR version 3 (every
    initializer also listed as a graph input)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def model(name, nodes, inits, inp, out, opset):
        g = helper.make_graph(nodes, name, [inp] + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                                  for t in inits], [out], initializer=inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="pytorch",
                              producer_version="0.3")
        m.ir_version = 3
        return m

    def t(name, *shape):
        return numpy_helper.from_array(np.zeros(shape, np.float32), name)

    out = []
    for opset in (6, 7):
        gemm_attrs = {"broadcast": 1, "transB": 1} if opset == 6 else {"transB": 1}
        bn_attrs = {"is_test": 1, "epsilon": 1e-5, "momentum": 0.9, "consumed_inputs": [0, 0, 0, 1, 1]} \
            if opset == 6 else {"epsilon": 1e-5, "momentum": 0.9}
        # MLP 16-64-32-5 with softmax.
        nodes = [helper.make_node("Gemm", ["0", "1", "2"], ["7"], **gemm_attrs),
                 helper.make_node("Relu", ["7"], ["8"]),
                 helper.make_node("Gemm", ["8", "3", "4"], ["9"], **gemm_attrs),
                 helper.make_node("Relu", ["9"], ["10"]),
                 helper.make_node("Gemm", ["10", "5", "6"], ["11"], **gemm_attrs),
                 helper.make_node("Softmax", ["11"], ["12"], axis=1)]
        inits = [t("1", 64, 16), t("2", 64), t("3", 32, 64), t("4", 32), t("5", 5, 32), t("6", 5)]
        out.append((f"onnx_opset{opset}_mlp", model("mlp", nodes, inits,
                    helper.make_tensor_value_info("0", TensorProto.FLOAT, [1, 16]),
                    helper.make_tensor_value_info("12", TensorProto.FLOAT, [1, 5]), opset), [1, 16], True))
        # CNN: Conv, BN, Relu, MaxPool, Flatten, Gemm.
        nodes = [helper.make_node("Conv", ["0", "1", "2"], ["8"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                  strides=[1, 1], dilations=[1, 1], group=1),
                 helper.make_node("BatchNormalization", ["8", "3", "4", "5", "6"], ["9"], **bn_attrs),
                 helper.make_node("Relu", ["9"], ["10"]),
                 helper.make_node("MaxPool", ["10"], ["11"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0]),
                 helper.make_node("Flatten", ["11"], ["12"], axis=1),
                 helper.make_node("Gemm", ["12", "7", "13"], ["14"], **gemm_attrs)]
        inits = [t("1", 8, 1, 3, 3), t("2", 8), t("3", 8), t("4", 8), t("5", 8), t("6", 8), t("7", 10, 8 * 4 * 4),
                 t("13", 10)]
        out.append((f"onnx_opset{opset}_cnn", model("cnn", nodes, inits,
                    helper.make_tensor_value_info("0", TensorProto.FLOAT, [1, 1, 8, 8]),
                    helper.make_tensor_value_info("14", TensorProto.FLOAT, [1, 10]), opset), [1, 1, 8, 8], True))
    return out


def build_old_opset(only, log) -> list[dict]:
    d = CORPUS / "old_opset"
    d.mkdir(parents=True, exist_ok=True)
    builders = ROOT / "tests" / "compiler" / "frontends" / "old_opset_builders.py"
    if builders.is_file():  # the front-end tests' builders: the same forms, written once
        spec = importlib.util.spec_from_file_location("old_opset_builders", builders)
        B = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(B)
        models = [(f"onnx_opset{o}_{k}", getattr(B, k)(o), None, True) for o in (6, 7) for k in ("mlp", "cnn")]
        source = "tests/compiler/frontends/old_opset_builders.py"
    else:
        models = _own_old_opset_models()
        source = "own builders (scripts/make_corpus.py)"
    entries = []
    for name, m, shape, classifier in models:
        if only and name not in only:
            continue
        inputs = onnx_inputs(m)
        p = d / f"{name}.onnx"
        save_stripped_onnx(m, p)
        opset = m.opset_import[0].version
        entries.append(entry(name, [str(p.relative_to(CORPUS))], f"onnx.helper opset{opset}", inputs,
                             classifier=classifier, fpga=True, fast=opset == 6, notes=source))
        log(f"{name}: {p.stat().st_size} B")
    return entries


# --------------------------------------------------------------------------- main
PARTS = {"torch": build_torch, "keras": build_keras, "legacy": build_legacy, "onnx-zoo": build_zoo,
         "old-opset": build_old_opset}
PART_PREFIX = {"torch": "torch_", "keras": "keras_", "legacy": "legacy_", "onnx-zoo": "zoo_",
               "old-opset": "onnx_opset"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", action="append", choices=[*PARTS, "all"], required=True)
    ap.add_argument("--only", action="append", help="build only these model names (base names)")
    args = ap.parse_args(argv)
    parts = list(PARTS) if "all" in args.part else args.part
    only = set(args.only) if args.only else None
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {"models": []}

    def log(msg):
        print(msg, flush=True)

    for part in parts:
        new = PARTS[part](only, log)
        names = {e["name"] for e in new}
        keep = [e for e in manifest["models"] if e["name"] not in names and
                (only is not None or not e["name"].startswith(PART_PREFIX[part]))]
        manifest["models"] = sorted(keep + new, key=lambda e: e["name"])
        failed = {f["name"] for f in NOT_BUILT}
        manifest["not_built"] = sorted([f for f in manifest.get("not_built", [])
                                        if f["name"] not in failed and f["name"] not in names
                                        and (only is not None or not f["name"].startswith(PART_PREFIX[part]))]
                                       + [f for f in NOT_BUILT if f["name"].startswith(PART_PREFIX[part])],
                                       key=lambda f: f["name"])
    manifest["about"] = ("tapeout's public-model corpus: architecture-only files, weights refilled by "
                         "tests/corpus/refill.py; built by scripts/make_corpus.py (docs/corpus.md)")
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"manifest: {len(manifest['models'])} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
