"""Mutations of parser inputs, driven by a ``random.Random`` (so hypothesis and atheris share them).

Generic: bytes (flip, overwrite, insert, delete, truncate) and JSON structure (values replaced by
other types, keys deleted, deep nesting, spliced subtrees). Format-aware: ONNX protobuf fields,
zip members of a ``.keras``, HDF5 attributes and datasets, .npy headers and .npz members.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import zipfile
from typing import Any

import numpy as np

INTERESTING = (0, 1, -1, 2, 255, 256, 65535, 2**31 - 1, -2**31, 2**32, 2**63 - 1, 10**9)
SPECIAL_VALUES: tuple[Any, ...] = (None, 0, -1, 1, 2**31, 2**63, 10**30, 1e308, -1e-308, True, "", "x" * 300, [],
                                   {}, [None], [[]], {"class_name": "Dense"}, "Lambda", "keras.src.layers",
                                   {"module": "os", "class_name": "system", "config": {}}, [0, 0, 0], "same",
                                   "channels_first", 100000, [1, 100000, 100000])


# ------------------------------------------------------------------ bytes
def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not b:
            b += rng.randbytes(rng.randint(1, 16))
            continue
        i, op = rng.randrange(len(b)), rng.randrange(7)
        if op == 0:
            b[i] = rng.randrange(256)
        elif op == 1:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 2:
            del b[i:i + rng.randint(1, 64)]
        elif op == 3:
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 4:
            del b[i:]
        elif op == 5:
            b[i:i + 4] = (rng.choice(INTERESTING) % 2**32).to_bytes(4, "little")
        else:  # copy a chunk elsewhere (repeats structures)
            j = rng.randrange(len(b))
            b[j:j] = b[i:i + rng.randint(1, 32)]
    return bytes(b)


# ------------------------------------------------------------------- JSON
def _paths(value: Any, prefix: tuple = (), out: list | None = None, limit: int = 4000) -> list[tuple]:
    out = [] if out is None else out
    stack = [(value, prefix)]
    while stack and len(out) < limit:
        v, p = stack.pop()
        out.append(p)
        if isinstance(v, dict):
            stack.extend((c, p + (k,)) for k, c in v.items())
        elif isinstance(v, list):
            stack.extend((c, p + (i,)) for i, c in enumerate(v))
    return out


def _get(value: Any, path: tuple) -> Any:
    for k in path:
        value = value[k]
    return value


def _nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf] if depth % 2 else {"a": leaf}
    return leaf


def mutate_json(rng: random.Random, value: Any, rounds: int | None = None) -> Any:
    """``value`` (a parsed JSON document) with 1-4 structural mutations; the root may be replaced."""
    root = [value]
    for _ in range(rounds or rng.randint(1, 4)):
        paths = _paths(root[0], (0,))
        path = rng.choice(paths)
        parent, key = _get(root, path[:-1]), path[-1]
        old = parent[key]
        op = rng.randrange(9)
        if op == 0:
            new = rng.choice(SPECIAL_VALUES)
        elif op == 1:  # splice another subtree in
            new = json.loads(json.dumps(_get(root, rng.choice(paths))))
        elif op == 2 and isinstance(parent, (dict, list)) and path[:-1]:
            del parent[key]
            continue
        elif op == 3 and isinstance(old, (int, float)) and not isinstance(old, bool):
            new = rng.choice([-old, old + 1, old * 1000, 0, -1, 2**40, old / 3])
        elif op == 4 and isinstance(old, str):
            new = rng.choice(["", old + "_", old[::-1], old.upper(), "../" * 5 + old, old * 50])
        elif op == 5:
            new = _nested(rng.choice([50, 120, 900]), old)
        elif op == 6 and isinstance(old, list) and old:
            new = old + [rng.choice(old)] if rng.random() < 0.5 else old[:-1]
        elif op == 7 and isinstance(old, dict) and old:
            new = dict(old)
            new[rng.choice(list(old))] = rng.choice(SPECIAL_VALUES)
        else:
            new = [old] if rng.random() < 0.5 else {"config": old}
        parent[key] = new
    return root[0]


def mutate_json_text(rng: random.Random, raw: bytes) -> bytes:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return mutate_bytes(rng, raw)
    if rng.random() < 0.1:
        return mutate_bytes(rng, raw)
    if rng.random() < 0.05:  # deeper than json.dumps can write: nesting as text
        n = rng.choice([200, 5000, 100000])
        return b'{"config": ' * n + raw + b"}" * n if rng.random() < 0.5 else b"[" * n + raw + b"]" * n
    try:
        return json.dumps(mutate_json(rng, doc)).encode()
    except (RecursionError, ValueError):
        return raw


# ------------------------------------------------------------------- HDF5
def _h5_objects(f: Any) -> list[tuple[str, Any]]:
    names: list[tuple[str, Any]] = [("/", f)]
    f.visititems(lambda n, o: names.append((n, o)))
    return names


# HDF5 files h5py wrote (the seeds, and this process's own edits). Only these are opened to edit:
# the HDF5 library can loop forever in C on a damaged file, and here nothing would stop it.
_H5_WELL_FORMED: set[str] = set()


def trust_h5(data: bytes) -> bytes:
    _H5_WELL_FORMED.add(hashlib.sha256(data).hexdigest())
    return data


def mutate_h5(rng: random.Random, data: bytes) -> bytes:
    """An HDF5 file's attributes (model_config, weight_names...) or datasets changed; else its bytes."""
    import h5py

    if rng.random() < 0.15 or hashlib.sha256(data).hexdigest() not in _H5_WELL_FORMED:
        return mutate_bytes(rng, data)
    bio = io.BytesIO(data)
    try:
        with h5py.File(bio, "r+") as f:
            objects = _h5_objects(f)
            name, obj = rng.choice(objects)
            attrs = list(obj.attrs)
            op = rng.randrange(6)
            if op <= 1 and attrs:
                key = "model_config" if "model_config" in attrs and op == 0 else rng.choice(attrs)
                val = obj.attrs[key]
                if isinstance(val, (bytes, str)):
                    raw = val.encode() if isinstance(val, str) else val
                    obj.attrs[key] = mutate_json_text(rng, raw)
                else:
                    obj.attrs[key] = rng.choice([np.array([b"x", b"missing:0"]), np.int64(-1), b"", np.zeros(0),
                                                 np.array([1.5]), b"{}"])
            elif op == 2 and isinstance(obj, h5py.Dataset):
                shape = tuple(rng.choice([0, 1, 2, 3, 7, 2**20]) for _ in range(rng.randint(0, 3)))
                dtype = rng.choice(["<f4", "<f8", "<i8", "|u1", "<f2", "|S4"])
                del f[name]
                if np.prod(shape, dtype=np.float64) > 2**16:  # declared, never written: far beyond stored
                    f.create_dataset(name, shape, dtype, chunks=True)
                else:
                    f.create_dataset(name, data=np.ones(shape, dtype))
            elif op == 3 and name != "/":
                del f[name]
            elif op == 4:
                obj.attrs[rng.choice(attrs or ["extra"])] = rng.choice(
                    [b"{}", b"[]", np.array(["a", "b"], dtype="S"), np.float64(np.nan), b"null"])
            elif isinstance(obj, h5py.Group):
                obj.create_dataset(f"extra{rng.randrange(9)}", data=np.zeros(rng.choice([1, 3, 100]), "<f4"))
        return trust_h5(bio.getvalue())
    except Exception:  # noqa: BLE001 - an edit h5py itself refuses: fall back to raw bytes
        return mutate_bytes(rng, data)


# ------------------------------------------------------------------- ONNX
ONNX_OPS = ("Relu", "Gemm", "MatMul", "Conv", "Softmax", "Reshape", "Add", "Concat", "Slice", "Gather", "Pad",
            "Resize", "Loop", "If", "Split", "Transpose", "Expand", "Tile", "NonMaxSuppression", "Custom")


def mutate_onnx(rng: random.Random, data: bytes) -> bytes:
    import onnx

    if rng.random() < 0.3:
        return mutate_bytes(rng, data)
    try:
        m = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 - damaged protobuf: mutate its bytes
        return mutate_bytes(rng, data)
    g = m.graph
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(10)
        if op == 0 and g.node:
            rng.choice(g.node).op_type = rng.choice(ONNX_OPS)
        elif op == 1 and g.node:
            n = rng.choice(g.node)
            if n.attribute:
                a = rng.choice(n.attribute)
                if a.ints:
                    a.ints[rng.randrange(len(a.ints))] = rng.choice(INTERESTING)
                else:
                    a.i = rng.choice(INTERESTING)
            else:
                n.attribute.add(name=rng.choice(["axis", "perm", "pads", "kernel_shape"]), i=rng.choice(INTERESTING),
                                type=onnx.AttributeProto.INT)
        elif op == 2 and g.initializer:
            t = rng.choice(g.initializer)
            if t.dims:
                t.dims[rng.randrange(len(t.dims))] = rng.choice(INTERESTING)
            else:
                t.dims.append(rng.choice(INTERESTING))
        elif op == 3 and g.initializer:
            t = rng.choice(g.initializer)
            t.raw_data = t.raw_data[:rng.randrange(len(t.raw_data) + 1)]
        elif op == 4 and g.node:
            n = rng.choice(g.node)
            if n.input:
                n.input[rng.randrange(len(n.input))] = rng.choice(["", "x", "y", "missing", n.output[0]])
        elif op == 5:
            m.opset_import[0].version = rng.choice([0, 1, 5, 6, 7, 9, 11, 13, 18, 21, 99, 2**31 - 1])
        elif op == 6 and g.node:
            del g.node[rng.randrange(len(g.node))]
        elif op == 7 and len(g.input) + len(g.output):
            vi = rng.choice(list(g.input) + list(g.output))
            dims = vi.type.tensor_type.shape.dim
            if dims:
                dims[rng.randrange(len(dims))].dim_value = rng.choice([0, 1, 3, 100000, 2**40])
            vi.type.tensor_type.elem_type = rng.choice([1, 1, 1, 7, 10, 11, 9, 0, 16, 99])
        elif op == 8 and g.initializer:
            t = rng.choice(g.initializer)
            t.data_location = onnx.TensorProto.EXTERNAL
            e = t.external_data.add()
            e.key, e.value = "location", rng.choice(["w.bin", "../../etc/hostname", "/etc/hostname", ""])
        else:
            m.ir_version = rng.choice([0, 1, 3, 4, 8, 10, 99])
    try:
        return m.SerializeToString()
    except Exception:  # noqa: BLE001 - the message no longer serializes
        return data


# --------------------------------------------------------- .keras archives
def _zip(members: dict[str, bytes], compress: bool) -> bytes:
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    return b.getvalue()


def mutate_archive(rng: random.Random, data: bytes) -> bytes:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = {n: z.read(n) for n in z.namelist()}
    except Exception:  # noqa: BLE001 - no longer a readable zip
        return mutate_bytes(rng, data)
    op = rng.randrange(12)
    names = list(members)
    if op <= 5 and "config.json" in members:
        members["config.json"] = mutate_json_text(rng, members["config.json"])
    elif op == 6 and "metadata.json" in members:
        members["metadata.json"] = mutate_json_text(rng, members["metadata.json"])
    elif op == 7 and "model.weights.h5" in members:
        members["model.weights.h5"] = mutate_h5(rng, members["model.weights.h5"])
    elif op == 8 and names:
        del members[rng.choice(names)]
    elif op == 9 and names:
        src = rng.choice(names)
        members[rng.choice(["assets/v.txt", "../escape.txt", "/abs.txt", "config.json", src + "2"])] = members[src]
    elif op == 10:
        return mutate_bytes(rng, data)
    else:
        members["assets/zeros.bin"] = bytes(rng.choice([10, 4 << 20]))
    return _zip(members, compress=rng.random() < 0.5)


# ------------------------------------------------------------- .npy / .npz
def _npy_header_edit(rng: random.Random, data: bytes) -> bytes:
    """Rewrite the header dict of an .npy (shape, dtype, order) keeping its length field consistent."""
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        return mutate_bytes(rng, data)
    hlen = int.from_bytes(data[8:10], "little")
    header, body = data[10:10 + hlen].decode("latin1"), data[10 + hlen:]
    choice = rng.randrange(4)
    if choice == 0:
        shape = tuple(rng.choice([0, 1, 4, 5, 3, 10**6, 2**31, 2**62, -1]) for _ in range(rng.randint(0, 4)))
        new = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape!r}, }}"
    elif choice == 1:
        new = header.replace("'<f4'", repr(rng.choice(["|O", "<U8", ">f8", "V8", "<c16", "|b1", "<M8[s]", "zz",
                                                       "[('a', '<f4')]"])))
    elif choice == 2:
        new = header.replace("False", rng.choice(["True", "1", "None"]))
    else:
        new = rng.choice(["{}", "", "[1, 2]", "{'descr': '<f4'}", "__import__('os')", "{" * 200])
    raw = new.encode("latin1")
    raw += b" " * (-(10 + len(raw) + 1) % 64) + b"\n"
    return data[:8] + len(raw).to_bytes(2, "little") + raw + body


def mutate_data(rng: random.Random, name: str, data: bytes) -> tuple[str, bytes]:
    """A mutated data file; the name's suffix may change (.npz <-> .npy) as a user could get it wrong."""
    if name.endswith(".npy"):
        if rng.random() < 0.5:
            return name, _npy_header_edit(rng, data)
        return name, mutate_bytes(rng, data)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = {n: z.read(n) for n in z.namelist()}
    except Exception:  # noqa: BLE001 - no longer a zip
        return name, mutate_bytes(rng, data)
    op = rng.randrange(8)
    names = list(members)
    if op <= 2 and names:
        k = rng.choice(names)
        members[k] = _npy_header_edit(rng, members[k]) if op < 2 else mutate_bytes(rng, members[k])
    elif op == 3 and names:
        k = rng.choice(names)
        members[rng.choice(["y.npy", "x.npy", "z.npy", "x", "../x.npy"])] = members.pop(k)
    elif op == 4 and names:
        del members[rng.choice(names)]
    elif op == 5:
        b = io.BytesIO()
        arr = rng.choice([np.zeros((5, 4), np.complex64), np.array(["a"] * 5), np.zeros((5, 4, 1), np.float32),
                          np.zeros((0, 4), np.float32), np.full((5, 4), np.nan, np.float32), np.zeros(5, np.bool_),
                          np.array([[1.5, 2.5]] * 5), np.arange(5) * 10**6, np.zeros((5, 4), np.float16)])
        np.save(b, arr)
        members[rng.choice(["x.npy", "y.npy"])] = b.getvalue()
    elif op == 6:
        return name, mutate_bytes(rng, data)
    else:
        return ("data.npy" if rng.random() < 0.5 else name), data
    return name, _zip(members, compress=rng.random() < 0.5)


# ------------------------------------------------------------------ cases
def mutate_case(parser: str, rng: random.Random, case: dict[str, bytes]) -> dict[str, bytes]:
    """One mutation of an input of ``parser`` (tests.fuzz.seeds.PARSERS)."""
    case = dict(case)
    if parser == "onnx":
        case["model.onnx"] = mutate_onnx(rng, case["model.onnx"])
    elif parser == "keras3":
        case["model.keras"] = mutate_archive(rng, case["model.keras"])
    elif parser == "legacy-h5":
        case["model.h5"] = mutate_h5(rng, case["model.h5"])
    elif parser == "json":
        if rng.random() < 0.7:
            case["arch.json"] = mutate_json_text(rng, case["arch.json"])
        else:
            case["weights.h5"] = mutate_h5(rng, case["weights.h5"])
    elif parser == "data":
        (name, data), = case.items()
        new_name, new = mutate_data(rng, name, data)
        case = {new_name: new}
    else:
        raise ValueError(parser)
    return case
