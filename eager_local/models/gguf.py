"""A cheap check that a file is a usable GGUF, reading only its header.

A bad model file (a web page saved as .gguf, an interrupted download) should be reported in one
line that says what is wrong, before llama.cpp spends time loading it. A few KB of header tell
most of it: the magic and version, plausible counts, and whether the file is shorter than its
tensor table says. The check maps the file (mmap) and walks the metadata and tensor table without
touching the tensor data, so it costs the same for a 100 MB and a 10 GB model.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

from .cache import ModelError

_GGUF_MAGIC = b"GGUF"
_MAX_TENSORS = 1 << 20
_MAX_KV = 1 << 20
_MAX_DIMS = 8

# GGUF metadata value types -> fixed byte size (None: string/array, handled apart)
_KV_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_KV_STRING, _KV_ARRAY = 8, 9

# ggml_type id -> (elements per block, bytes per block), from ggml's type traits.
_GGML_TYPES: dict[int, tuple[int, int]] = {
    0: (1, 4),       # F32
    1: (1, 2),       # F16
    2: (32, 18),     # Q4_0
    3: (32, 20),     # Q4_1
    6: (32, 22),     # Q5_0
    7: (32, 24),     # Q5_1
    8: (32, 34),     # Q8_0
    9: (32, 36),     # Q8_1
    10: (256, 84),   # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),   # IQ2_XXS
    17: (256, 74),   # IQ2_XS
    18: (256, 98),   # IQ3_XXS
    19: (256, 50),   # IQ1_S
    20: (32, 18),    # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),   # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),      # I8
    25: (1, 2),      # I16
    26: (1, 4),      # I32
    27: (1, 8),      # I64
    28: (1, 8),      # F64
    29: (256, 56),   # IQ1_M
    30: (1, 2),      # BF16
    34: (256, 54),   # TQ1_0
    35: (256, 66),   # TQ2_0
    39: (32, 17),    # MXFP4
}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class _Truncated(Exception):
    def __init__(self, needed: int):
        self.needed = needed


class _Bad(Exception):
    pass


class _Reader:
    """Little-endian cursor over an mmap; raises _Truncated when reading past the end."""

    __slots__ = ("buf", "pos", "size")

    def __init__(self, buf, size: int):
        self.buf, self.pos, self.size = buf, 0, size

    def need(self, n: int) -> None:
        if self.pos + n > self.size:
            raise _Truncated(self.pos + n)

    def u32(self) -> int:
        self.need(4)
        v = _U32.unpack_from(self.buf, self.pos)[0]
        self.pos += 4
        return v

    def u64(self) -> int:
        self.need(8)
        v = _U64.unpack_from(self.buf, self.pos)[0]
        self.pos += 8
        return v

    def skip(self, n: int) -> None:
        self.need(n)
        self.pos += n

    def string(self) -> bytes:
        n = self.u64()
        self.need(n)
        s = self.buf[self.pos:self.pos + n]
        self.pos += n
        return s

    def skip_strings(self, count: int) -> None:
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        for _ in range(count):
            if pos + 8 > size:
                raise _Truncated(pos + 8)
            pos += 8 + unpack(buf, pos)[0]
        if pos > size:
            raise _Truncated(pos)
        self.pos = pos


def _skip_value(r: _Reader, vtype: int, depth: int = 0) -> None:
    if vtype in _KV_FIXED:
        r.skip(_KV_FIXED[vtype])
    elif vtype == _KV_STRING:
        r.skip(r.u64())
    elif vtype == _KV_ARRAY:
        if depth > 4:
            raise _Bad("metadata arrays nested too deeply")
        etype, count = r.u32(), r.u64()
        if etype in _KV_FIXED:
            r.skip(_KV_FIXED[etype] * count)
        elif etype == _KV_STRING:
            if count * 8 > r.size:
                raise _Truncated(r.pos + count * 8)
            r.skip_strings(count)
        elif etype == _KV_ARRAY:
            for _ in range(count):
                _skip_value(r, _KV_ARRAY, depth + 1)
        else:
            raise _Bad(f"unknown metadata array type {etype}")
    else:
        raise _Bad(f"unknown metadata value type {vtype}")


def _expected_size(r: _Reader) -> int | None:
    """Parse the header after magic; return the minimal file size, or None if a tensor type is unknown."""
    version = r.u32()
    if version not in (2, 3):
        raise _Bad(f"unsupported GGUF version {version} (expected 2 or 3)")
    n_tensors, n_kv = r.u64(), r.u64()
    if n_tensors > _MAX_TENSORS or n_kv > _MAX_KV:
        raise _Bad(f"implausible header counts ({n_tensors} tensors, {n_kv} metadata keys)")
    alignment = 32
    for _ in range(n_kv):
        key = r.string()
        vtype = r.u32()
        if key == b"general.alignment" and vtype == 4:  # uint32
            alignment = r.u32()
            if alignment == 0 or alignment & (alignment - 1):
                raise _Bad(f"bad general.alignment {alignment}")
        else:
            _skip_value(r, vtype)
    data_end = 0
    sizes_known = True
    for _ in range(n_tensors):
        r.string()  # name
        n_dims = r.u32()
        if n_dims > _MAX_DIMS:
            raise _Bad(f"tensor with {n_dims} dimensions")
        n_elems = 1
        for _ in range(n_dims):
            n_elems *= r.u64()
        ttype, offset = r.u32(), r.u64()
        traits = _GGML_TYPES.get(ttype)
        if traits is None:
            sizes_known = False
            continue
        block, nbytes = traits
        data_end = max(data_end, offset + (n_elems + block - 1) // block * nbytes)
    data_start = (r.pos + alignment - 1) // alignment * alignment
    if n_tensors == 0:
        return r.pos
    return data_start + data_end if sizes_known else data_start


def check_gguf(path: str | os.PathLike, *, display: str | None = None) -> None:
    """Cheap validation of a GGUF file, reading only its header. Raises ModelError when it is not usable.

    Checks: the file exists, is at least 24 bytes, has the GGUF magic and version 2 or 3, sane header
    counts, and is not shorter than its tensor table says (truncated download).
    """
    p = Path(path)
    label = display or str(p)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise ModelError(f"model file not found: {label}") from None
    except OSError as exc:
        raise ModelError(f"cannot read model file {label}: {exc.strerror or exc}") from None
    if not p.is_file():
        raise ModelError(f"{label} is not a regular file")
    try:
        with open(p, "rb") as f:
            head = f.read(4)
            if size < 24:
                if head != _GGUF_MAGIC[: len(head)] or not head:
                    raise ModelError(f"{label} is not a GGUF file (bad magic)")
                raise ModelError(f"{label} is truncated: expected at least 24 bytes, found {size}")
            if head != _GGUF_MAGIC:
                raise ModelError(f"{label} is not a GGUF file (bad magic)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                r = _Reader(mm, size)
                r.pos = 4
                try:
                    expected = _expected_size(r)
                except _Truncated as t:
                    raise ModelError(
                        f"{label} is truncated: expected at least {t.needed} bytes, found {size}"
                    ) from None
                except (_Bad, OverflowError) as exc:
                    raise ModelError(f"{label} has a bad GGUF header: {exc}") from None
    except OSError as exc:
        raise ModelError(f"cannot read model file {label}: {exc.strerror or exc}") from None
    if expected is not None and expected > size:
        raise ModelError(f"{label} is truncated: expected at least {expected} bytes, found {size}")
