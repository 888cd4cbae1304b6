"""Minimal safetensors reader/writer (no third-party package).

File layout: 8-byte little-endian header length N, N bytes of JSON header
({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}), then raw data.
torch 1.13 has no float8 dtypes, so F8_E4M3 / F8_E8M0 are decoded by table lookup into float32
and BF16 by bit shifting; every real-valued tensor comes back as float32 (exact upcast).
"""

import json
import mmap
import os
import struct

import numpy as np
import torch

_INT_DTYPES = {
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_FLOAT_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16}
_ITEM_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E8M0": 1, "I64": 8,
              "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _e4m3_table() -> np.ndarray:
    """float32 value of every F8_E4M3 (e4m3fn: bias 7, no inf, 0x7f/0xff = NaN) byte."""
    table = np.zeros(256, dtype=np.float32)
    for byte in range(256):
        sign = -1.0 if byte & 0x80 else 1.0
        exponent = (byte >> 3) & 0xF
        mantissa = byte & 0x7
        if exponent == 0xF and mantissa == 0x7:
            table[byte] = np.nan
        elif exponent == 0:
            table[byte] = sign * (mantissa / 8.0) * 2.0**-6
        else:
            table[byte] = sign * (1.0 + mantissa / 8.0) * 2.0 ** (exponent - 7)
    return table


def _e8m0_table() -> np.ndarray:
    """float32 value of every F8_E8M0 byte: 2^(byte-127); 255 is NaN."""
    table = np.full(256, np.nan, dtype=np.float32)
    table[:255] = np.array([2.0 ** (b - 127) for b in range(255)], dtype=np.float64)
    return table


E4M3_TABLE = _e4m3_table()
E8M0_TABLE = _e8m0_table()
# E2M1 code -> value; bit 3 is the sign (used by the packed FP4 expert weights).
E2M1_TABLE = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6],
                      dtype=np.float32)


class SafetensorsFile:
    """Read-only, memory-mapped view of one .safetensors file."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if len(self._mm) < 8:
            raise ValueError(f"{path}: too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", self._mm[:8])
        if 8 + header_len > len(self._mm):
            raise ValueError(f"{path}: header length {header_len} exceeds the file size")
        header = json.loads(self._mm[8:8 + header_len].decode("utf-8"))
        self.metadata = header.pop("__metadata__", {}) or {}
        self._data_start = 8 + header_len
        self.entries = header
        for name, entry in header.items():
            dtype = entry["dtype"]
            if dtype not in _ITEM_SIZE:
                raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
            begin, end = entry["data_offsets"]
            expected = int(np.prod(entry["shape"], dtype=np.int64)) * _ITEM_SIZE[dtype]
            if end - begin != expected or self._data_start + end > len(self._mm):
                raise ValueError(f"{path}: tensor {name} has inconsistent data_offsets")

    def keys(self):
        return list(self.entries.keys())

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def dtype(self, name: str) -> str:
        return self.entries[name]["dtype"]

    def shape(self, name: str):
        return list(self.entries[name]["shape"])

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes as a numpy array of the storage type (uint8 for F8, uint16 for BF16)."""
        entry = self.entries[name]
        begin, end = entry["data_offsets"]
        dtype = entry["dtype"]
        if dtype in _INT_DTYPES:
            np_dtype = _INT_DTYPES[dtype]
        elif dtype in _FLOAT_DTYPES:
            np_dtype = _FLOAT_DTYPES[dtype]
        elif dtype == "BF16":
            np_dtype = np.dtype("<u2")
        else:
            np_dtype = np.uint8
        buf = self._mm[self._data_start + begin:self._data_start + end]
        return np.frombuffer(buf, dtype=np.dtype(np_dtype).newbyteorder("<")).reshape(entry["shape"])

    def get(self, name: str) -> torch.Tensor:
        """Decoded tensor: float32 for every real dtype (exact), int64/int32/... for integers."""
        if name not in self.entries:
            raise KeyError(f"{self.path}: no tensor named {name}")
        dtype = self.dtype(name)
        raw = self.raw(name)
        if dtype == "BF16":
            out = (raw.astype(np.uint32) << 16).view(np.float32)
        elif dtype == "F8_E4M3":
            out = E4M3_TABLE[raw]
        elif dtype == "F8_E8M0":
            out = E8M0_TABLE[raw]
        elif dtype in _FLOAT_DTYPES:
            out = raw.astype(np.float32)
        else:
            out = raw.copy()
        return torch.from_numpy(np.ascontiguousarray(out))


def _encode(t: torch.Tensor, dtype: str) -> bytes:
    a = t.detach().cpu().contiguous()
    if dtype == "F32":
        return a.to(torch.float32).numpy().astype("<f4").tobytes()
    if dtype == "F64":
        return a.to(torch.float64).numpy().astype("<f8").tobytes()
    if dtype == "BF16":
        bits = a.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2")
        return bits.tobytes()
    if dtype == "F8_E4M3":
        return encode_e4m3(a.to(torch.float32).numpy()).tobytes()
    if dtype == "F8_E8M0":
        return encode_e8m0(a.to(torch.float32).numpy()).tobytes()
    if dtype in _INT_DTYPES:
        return a.numpy().astype(np.dtype(_INT_DTYPES[dtype]).newbyteorder("<")).tobytes()
    raise ValueError(f"cannot write dtype {dtype}")


def encode_e4m3(values: np.ndarray) -> np.ndarray:
    """Bytes of float32 values that are exactly representable in e4m3fn (raises otherwise)."""
    finite = np.arange(256)[~np.isnan(E4M3_TABLE)]
    order = np.argsort(E4M3_TABLE[finite], kind="stable")
    sorted_vals = E4M3_TABLE[finite][order]
    sorted_bytes = finite[order].astype(np.uint8)
    flat = values.reshape(-1)
    pos = np.searchsorted(sorted_vals, flat)
    pos = np.clip(pos, 0, len(sorted_vals) - 1)
    if not np.array_equal(sorted_vals[pos], flat):
        raise ValueError("encode_e4m3: value not representable in F8_E4M3 (quantise first)")
    out = sorted_bytes[pos]
    out[(flat == 0) & np.signbit(flat)] = 0x80
    return out.reshape(values.shape)


def encode_e8m0(values: np.ndarray) -> np.ndarray:
    """Bytes of float32 powers of two 2^-127..2^127."""
    mant, exp = np.frexp(values.astype(np.float64))
    if not np.all(mant == 0.5):
        raise ValueError("encode_e8m0: value is not a power of two")
    byte = exp - 1 + 127
    if np.any(byte < 0) or np.any(byte > 254):
        raise ValueError("encode_e8m0: exponent out of range")
    return byte.astype(np.uint8)


def pack_e2m1(codes: np.ndarray) -> np.ndarray:
    """[out, in] E2M1 codes (0..15) -> [out, in/2] int8, low nibble = even element."""
    codes = codes.astype(np.uint8)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).view(np.int8)


def unpack_e2m1(packed: np.ndarray) -> np.ndarray:
    """[out, in/2] int8 -> [out, in] float32 E2M1 values (unscaled)."""
    u = packed.view(np.uint8)
    out = np.empty(u.shape[:-1] + (u.shape[-1] * 2,), dtype=np.float32)
    out[..., 0::2] = E2M1_TABLE[u & 0xF]
    out[..., 1::2] = E2M1_TABLE[u >> 4]
    return out


def default_dtype(t: torch.Tensor) -> str:
    return {torch.float32: "F32", torch.float64: "F64", torch.bfloat16: "BF16",
            torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
            torch.uint8: "U8", torch.bool: "BOOL"}[t.dtype]


def save_file(tensors: dict, path: str, metadata: dict = None, dtypes: dict = None):
    """Write tensors (name -> torch.Tensor) to path. `dtypes` may override the stored dtype per
    name (e.g. "F8_E4M3" for float32 values on the e4m3 grid); the default follows the torch dtype."""
    dtypes = dtypes or {}
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        dtype = dtypes.get(name, default_dtype(t))
        blob = _encode(t, dtype)
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * ((8 - len(header_bytes) % 8) % 8)  # align data to 8 bytes
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def load_file(path: str) -> dict:
    f = SafetensorsFile(path)
    return {name: f.get(name) for name in f.keys()}
