"""Reading and writing Hugging Face checkpoint folders: config.json + safetensors (or PyTorch .bin) weights.

Safetensors go through the `safetensors` package, memory-mapped: `read_safetensors`
returns a lazy name -> array mapping whose tensors are read from the page cache
only when a converter takes them (each one once, cast straight to the model's
dtype), so a checkpoint is never held in memory whole, let alone twice. Only the
legacy pickled `pytorch_model.bin` needs torch. Nothing is ever downloaded: a path
is a local folder (or a single weights file).
"""

import json
import os
from collections.abc import Iterator, Mapping

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, which safetensors' numpy reader needs)
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"


class LazyTensors(Mapping):
    """name -> numpy array over safetensors files, each tensor read when it is looked up.

    `shape(name)` answers from the header alone; iterating yields names without reading data.
    """

    def __init__(self, files: dict[str, str]):
        self._files = files  # tensor name -> the file holding it
        self._handles: dict[str, object] = {}

    @classmethod
    def open(cls, paths) -> "LazyTensors":
        files = {}
        for path in paths:
            for name in _handle(path).keys():
                files[name] = path
        return cls(files)

    def _open(self, path):
        if path not in self._handles:
            self._handles[path] = _handle(path)
        return self._handles[path]

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._files:
            raise KeyError(name)
        try:
            return self._open(self._files[name]).get_tensor(name)
        except (SafetensorError, TypeError) as e:  # TypeError: a dtype numpy cannot hold
            raise ValueError(f"{self._files[name]}: cannot read tensor {name!r}: {e}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open(self._files[name]).get_slice(name).get_shape())

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def _handle(path: str):
    try:
        return safe_open(path, framework="numpy")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file: {e}") from None


def read_safetensors(path: str) -> LazyTensors:
    """name -> numpy array for every tensor in one .safetensors file, read lazily (memory-mapped)."""
    return LazyTensors.open([path])


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Writes `tensors` (name -> array) as one safetensors file."""
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata=metadata)


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


def _read_sharded(folder: str, index_file: str, reader) -> Mapping[str, np.ndarray]:
    with open(os.path.join(folder, index_file)) as f:
        weight_map = json.load(f)["weight_map"]
    shards = []
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(folder, shard)
        if not os.path.exists(shard_path):
            raise FileNotFoundError(f"checkpoint shard {shard!r} listed in {index_file} is missing from {folder}")
        shards.append(shard_path)
    if reader is read_safetensors:
        return LazyTensors.open(shards)
    out = {}
    for shard_path in shards:
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


def read_weights(path: str) -> Mapping[str, np.ndarray]:
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
