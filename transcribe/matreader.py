"""A minimal reader of HDF5's on-disk format, for SVHN's digitStruct.mat (MATLAB v7.3).

svhn.read_entries opens a digitStruct.mat with h5py and checks its top level; the entries
are then read here, straight from a memory map, because h5py dereferences each of the ~12
tiny objects per entry (a name, a struct, five fields, one double per digit) at ~40 us each.
Anything this reader does not know raises `Unsupported` and h5py reads the file instead
(svhn._read_entries_h5py), so this file is a speed-up, never the only way in.

Measured: on a synthetic digitStruct.mat of 20,000 entries (1-3 digits each, written by
svhn.write_digitstruct; 129 MB) on the shared 2-core machine, this reader took 6.8-7.0 s and
h5py 45-61 s (two runs each): 6.7-8.8x faster. Both are linear in the entries, so on SVHN's
extra split (202,353 entries) that is roughly 70 s against 8-10 minutes; measured directly
once the writer no longer stalled: 26.4 s (scripts/bench_digitstruct.py --records 202353 --read).
Reproduce: write the file with svhn.write_digitstruct, then time svhn.read_entries with
svhn._FAST_PARSER True and False.

Kept to what MATLAB and svhn.write_digitstruct write: superblock version 0 with 8-byte
offsets, version-1 object headers, old-style groups, compact or contiguous datasets of
fixed-point, IEEE float or object-reference type. tests/test_matreader.py compares it with
h5py on the real files and fuzzes it with damaged ones.
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path

import numpy as np

MAT_FIELDS = ("height", "left", "top", "width", "label")  # the order MATLAB stores them in
# Bounds on what one entry may declare, checked before anything is copied (a crafted file can
# declare any size): a name is a file name (NAME_MAX = 255 bytes on Linux, at least as many
# UTF-16 units); a field holds one value per digit (SVHN's longest number has 6 digits).
MAX_NAME_CHARS = 255
MAX_FIELD_VALUES = 64


class Unsupported(Exception):
    """A layout `MatParser` does not handle; svhn.read_entries then reads the file with h5py."""


class MatParser:
    """Just enough of the HDF5 file format (spec v3.0, "Disk Format: Level 2") to read what
    MATLAB and `write_digitstruct` write: version-1 object headers, old-style groups (symbol
    table -> v1 B-tree -> symbol nodes -> local heap names), compact or contiguous datasets of
    fixed-point, IEEE float or object-reference type. Anything else raises Unsupported."""

    def __init__(self, path: Path, base: int):

        self._file = open(path, "rb")
        self.mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self.base = base  # addresses are relative to the superblock, which follows the user block
        # Every object is parsed once: entries may share a struct, a field or a value (a crafted
        # file can point 300 entries at one group of 4,096 links), and re-parsing would cost
        # time proportional to entries x shared size.
        self._datasets: dict[tuple[int, int], np.ndarray] = {}
        self._groups: dict[int, dict[bytes, int]] = {}
        if self.mm[base:base + 8] != b"\x89HDF\r\n\x1a\n" or self.mm[base + 8] != 0 \
                or self.mm[base + 13] != 8 or self.mm[base + 14] != 8:
            raise Unsupported("superblock other than version 0 with 8-byte offsets and lengths")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.mm.close()
        self._file.close()

    def messages(self, addr: int) -> list[tuple[int, int, int]]:
        """(type, data offset, size) of each message of the object header at `addr`."""
        mm, o = self.mm, self.base + addr
        version, _, count, _, size = struct.unpack_from("<BBHII", mm, o)
        if version != 1:
            raise Unsupported(f"object header version {version}")
        blocks, out = [(o + 16, o + 16 + size)], []  # v1: 16-byte prefix, then 8-aligned messages
        while blocks and len(out) < count:
            p, end = blocks.pop()
            while p + 8 <= end and len(out) < count:
                mtype, msize, flags = struct.unpack_from("<HHB", mm, p)
                if flags & 0x02:  # a shared message (e.g. a committed datatype)
                    raise Unsupported("shared header message")
                if mtype == 0x10:  # continuation: more messages in another block
                    caddr, clen = struct.unpack_from("<QQ", mm, p + 8)
                    blocks.append((self.base + caddr, self.base + caddr + clen))
                out.append((mtype, p + 8, msize))
                p += 8 + msize
            if len(blocks) > 64:
                raise Unsupported("too many header continuation blocks")
        return out

    def dataset(self, addr: int, limit: int) -> np.ndarray:
        """A whole dataset as a flat numpy array (references as uint64 addresses); ValueError
        if it declares more than `limit` elements or more bytes than the file holds, checked
        before anything is copied. Parsed once per address (read-only arrays)."""
        key = (addr, limit)
        if key not in self._datasets:
            self._datasets[key] = self._dataset(addr, limit)
        return self._datasets[key]

    def _dataset(self, addr: int, limit: int) -> np.ndarray:
        mm = self.mm
        dims = dtype = data = None
        for mtype, p, _ in self.messages(addr):
            if mtype == 0x01:  # dataspace
                version, ndims = mm[p], mm[p + 1]
                first = p + (8 if version == 1 else 4)
                dims = struct.unpack_from(f"<{ndims}Q", mm, first)
            elif mtype == 0x03:  # datatype
                cls, bits0, size = mm[p] & 0x0F, mm[p + 1], struct.unpack_from("<I", mm, p + 4)[0]
                if bits0 & 0x01:
                    raise Unsupported("big-endian data")
                if cls == 0 and size in (1, 2, 4, 8):
                    dtype = np.dtype(f"<{'i' if bits0 & 0x08 else 'u'}{size}")
                elif cls == 1 and size in (4, 8) and not bits0 & 0x40:
                    dtype = np.dtype(f"<f{size}")
                elif cls == 7 and (bits0 & 0x0F) == 0 and size == 8:  # object reference
                    dtype = np.dtype("<u8")
                else:
                    raise Unsupported(f"datatype class {cls} size {size}")
            elif mtype == 0x08:  # data layout
                if mm[p] != 3:
                    raise Unsupported(f"layout message version {mm[p]}")
                if mm[p + 1] == 0:  # compact: the data is in the header
                    data = p + 4
                elif mm[p + 1] == 1:  # contiguous: elsewhere in the file
                    data = self.base + struct.unpack_from("<Q", mm, p + 2)[0]
                else:
                    raise Unsupported("chunked dataset")
            elif mtype == 0x0B:
                raise Unsupported("filtered (compressed) dataset")
        if dims is None or dtype is None or data is None:
            raise Unsupported("dataset header without dataspace, datatype or layout")
        n = math.prod(dims)
        if n > limit:
            raise ValueError(f"dataset of {n} elements where at most {limit} are expected")
        if data + n * dtype.itemsize > len(mm):
            raise ValueError("dataset data past the end of the file")
        return np.frombuffer(mm[data:data + n * dtype.itemsize], dtype=dtype)

    def group(self, addr: int) -> dict[bytes, int]:
        """Link name -> object header address for an old-style group (parsed once per address)."""
        if addr not in self._groups:
            self._groups[addr] = self._group(addr)
        return self._groups[addr]

    def _group(self, addr: int) -> dict[bytes, int]:
        mm, base = self.mm, self.base
        table = [p for mtype, p, _ in self.messages(addr) if mtype == 0x11]
        if not table:
            raise Unsupported("group without a symbol table (new-style links)")
        btree, heap = struct.unpack_from("<QQ", mm, table[0])
        if mm[base + heap:base + heap + 4] != b"HEAP":
            raise ValueError("local heap signature missing")
        names = base + struct.unpack_from("<Q", mm, base + heap + 24)[0]  # heap data segment
        links, todo, seen = {}, [btree], set()
        while todo:
            node = todo.pop()
            if node in seen or len(seen) > 10_000:
                raise ValueError("B-tree cycle")
            seen.add(node)
            o = base + node
            sig, ntype, level, used = struct.unpack_from("<4sBBH", mm, o)
            if sig != b"TREE" or ntype != 0:
                raise ValueError("group B-tree node signature missing")
            children = [struct.unpack_from("<Q", mm, o + 32 + 16 * i)[0] for i in range(used)]
            if level > 0:
                todo.extend(children)
                continue
            for child in children:  # symbol table nodes: 40-byte entries
                s = base + child
                if mm[s:s + 4] != b"SNOD":
                    raise ValueError("symbol table node signature missing")
                count = struct.unpack_from("<H", mm, s + 6)[0]
                if s + 8 + 40 * count > len(mm):
                    raise ValueError("symbol table node past the end of the file")
                for j in range(count):
                    name_off, obj = struct.unpack_from("<QQ", mm, s + 8 + 40 * j)
                    start = names + name_off
                    end = mm.find(b"\0", start, start + 256)  # link names here are field names
                    if end < 0:
                        raise ValueError("link name not terminated")
                    links[mm[start:end]] = obj
        return links

    def entries(self, name_addrs: np.ndarray, bbox_addrs: np.ndarray) -> list[tuple[str, dict[str, list[float]]]]:
        """(file name, {field: values}) per entry, fields in MAT_FIELDS, one value per digit."""
        out = []
        for name_addr, bbox_addr in zip(name_addrs.tolist(), bbox_addrs.tolist()):
            chars = self.dataset(name_addr, MAX_NAME_CHARS)
            if chars.dtype != np.uint16:
                raise Unsupported("name is not a MATLAB char array")
            links = self.group(bbox_addr)
            cols = {}
            for key in MAT_FIELDS:
                a = self.dataset(links[key.encode()], MAX_FIELD_VALUES)
                if a.dtype == np.uint64 and len(a) == 2 and not a.any():
                    cols[key] = []  # MATLAB's empty [] (cannot be a reference: address 0 is the superblock)
                elif a.dtype == np.uint64:  # references, one (1, 1) double per digit
                    vals = [self.dataset(r, 1) for r in a.tolist()]
                    if any(v.size != 1 or v.dtype.kind != "f" for v in vals):
                        raise Unsupported("a digit's value is not a (1, 1) double")
                    cols[key] = [float(v[0]) for v in vals]
                elif a.dtype.kind == "f" and a.size == 1:
                    cols[key] = [float(a[0])]
                else:
                    raise Unsupported(f"field {key} of type {a.dtype} and size {a.size}")
            out.append((chars.tobytes().decode("utf-16-le"), cols))
        return out
