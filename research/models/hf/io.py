"""Reading and writing Hugging Face checkpoint folders: config.json + safetensors (or PyTorch .bin) weights.

Safetensors is a tiny format (an 8-byte little-endian header length, a JSON
header of name -> dtype/shape/byte range, then the raw bytes), read and written
here with numpy alone, so loading a checkpoint needs neither torch nor the
safetensors package. Only the legacy pickled `pytorch_model.bin` needs torch.
Nothing is ever downloaded: a path is a local folder (or a single weights file).
"""

import json
import os
import struct

import ml_dtypes
import numpy as np

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """name -> numpy array (a copy, little-endian), for every tensor in one .safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: not a safetensors file (header length {n} exceeds the file)")
    header = json.loads(data[8 : 8 + n])
    body = memoryview(data)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}; known {sorted(_DTYPES)}")
        begin, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        out[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(info["shape"]).copy()
    return out


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Writes `tensors` (name -> array) in the safetensors layout, tensors in name order."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        x = np.ascontiguousarray(tensors[name])
        if x.dtype not in _CODES:
            raise ValueError(f"tensor {name!r}: dtype {x.dtype} has no safetensors code; known {sorted(_CODES)}")
        raw = x.astype(x.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _CODES[x.dtype], "shape": list(x.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header so the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for raw in chunks:
            f.write(raw)


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path} is a pickled PyTorch checkpoint: reading it needs torch (pip install torch)") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for name, t in state.items():
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: go through float32 bits
            out[name] = t.float().numpy().astype(ml_dtypes.bfloat16)
        else:
            out[name] = t.numpy().copy()
    return out


def _read_sharded(folder: str, index_file: str, reader) -> dict[str, np.ndarray]:
    with open(os.path.join(folder, index_file)) as f:
        weight_map = json.load(f)["weight_map"]
    out = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(folder, shard)
        if not os.path.exists(shard_path):
            raise FileNotFoundError(f"checkpoint shard {shard!r} listed in {index_file} is missing from {folder}")
        out.update(reader(shard_path))
    return out


def read_config(path: str) -> dict:
    """The Hugging Face config.json of a checkpoint folder, as a dict."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder {path!r} does not exist")
    if not os.path.exists(file):
        raise FileNotFoundError(f"checkpoint folder {path!r} has no {CONFIG_FILE}")
    with open(file) as f:
        return json.load(f)


def read_weights(path: str) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint: a weights file, or a folder holding one of
    model.safetensors, its sharded index, pytorch_model.bin or its sharded index."""
    if os.path.isfile(path):
        return read_safetensors(path) if path.endswith(".safetensors") else _read_torch(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint path {path!r} does not exist")
    if os.path.exists(os.path.join(path, SAFETENSORS_FILE)):
        return read_safetensors(os.path.join(path, SAFETENSORS_FILE))
    if os.path.exists(os.path.join(path, SAFETENSORS_INDEX)):
        return _read_sharded(path, SAFETENSORS_INDEX, read_safetensors)
    if os.path.exists(os.path.join(path, TORCH_FILE)):
        return _read_torch(os.path.join(path, TORCH_FILE))
    if os.path.exists(os.path.join(path, TORCH_INDEX)):
        return _read_sharded(path, TORCH_INDEX, _read_torch)
    raise FileNotFoundError(
        f"checkpoint folder {path!r} holds no weights: expected one of "
        f"{[SAFETENSORS_FILE, SAFETENSORS_INDEX, TORCH_FILE, TORCH_INDEX]}"
    )


def write_checkpoint(path: str, tensors: dict[str, np.ndarray], config: dict) -> None:
    """A folder Hugging Face's `from_pretrained(path)` reads: config.json + model.safetensors."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    write_safetensors(os.path.join(path, SAFETENSORS_FILE), tensors, metadata={"format": "pt"})
