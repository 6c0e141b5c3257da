"""A parquet file whose image-bytes column is copied straight out of the tars, in the kernel.

Why: a parquet writer (polars, pyarrow) needs every image in memory and copies it at least three
times (tar → Python → arrow array → page buffer → file); for an export that is several times the
cost of copying the tars. Here polars writes the file for everything but the image bytes (keys,
paths, captions, the nested json, its schema and `ARROW:schema`) with an empty placeholder in
the bytes column; then the file is rewritten chunk by chunk: each column chunk is copied as
polars wrote it, except the bytes column's, which becomes one PLAIN, uncompressed data page (v1)
per image: page header, definition levels, the 4-byte length, then the member's bytes moved with
`os.copy_file_range` from the shard. The footer is polars' own, decoded and re-encoded with the
chunk offsets and sizes fixed (and the placeholder's statistics dropped).

The thrift compact protocol codec below is generic (field ids and wire types, no schema), so
every field polars writes survives unchanged unless named here. Parquet field ids used:
FileMetaData 4 row_groups; RowGroup 1 columns, 2 total_byte_size, 5 file_offset, 6
total_compressed_size; ColumnChunk 2 file_offset, 3 meta_data, 4-7 page indexes;
ColumnMetaData 2 encodings, 3 path_in_schema, 5 num_values, 6/7 total (un)compressed size, 9 data page
offset, 10 index page offset, 11 dictionary page offset, 12 statistics, 13 encoding stats,
14/15 bloom filter, 16 size statistics.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from kohaku_data.export.files import copy_range, write_all

MAGIC = b"PAR1"
# compact protocol wire types
_TRUE, _FALSE, _I8, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)
_PLAIN, _RLE, _DATA_PAGE = 0, 3, 0


# -- thrift compact protocol: a struct is a list of [field id, wire type, value] -------------------

class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1]

    def varint(self) -> int:
        shift = value = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, wire: int):
        if wire in (_TRUE, _FALSE):
            return wire == _TRUE
        if wire == _I8:
            return struct.unpack("b", bytes([self.byte()]))[0]
        if wire in (_I16, _I32, _I64):
            return self.zigzag()
        if wire == _DOUBLE:
            self.pos += 8
            return struct.unpack("<d", self.data[self.pos - 8:self.pos])[0]
        if wire == _BINARY:
            n = self.varint()
            self.pos += n
            return self.data[self.pos - n:self.pos]
        if wire in (_LIST, _SET):
            head = self.byte()
            size, elem = (head >> 4, head & 0x0F) if head >> 4 != 15 else (self.varint(), head & 0x0F)
            return [elem, [self.byte() == 1 if elem in (_TRUE, _FALSE) else self.value(elem) for _ in range(size)]]
        if wire == _MAP:
            size = self.varint()
            kinds = self.byte() if size else 0
            return [kinds, [(self.value(kinds >> 4), self.value(kinds & 0x0F)) for _ in range(size)]]
        if wire == _STRUCT:
            return self.struct()
        raise ValueError(f"unknown thrift compact type {wire}")

    def struct(self) -> list:
        fields, last = [], 0
        while (head := self.byte()) != 0:
            delta, wire = head >> 4, head & 0x0F
            fid = last + delta if delta else self.zigzag()
            fields.append([fid, wire, self.value(wire)])
            last = fid
        return fields


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append(n & 0x7F | 0x80)
        n >>= 7


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


def _encode_value(wire: int, value) -> bytes:
    if wire in (_TRUE, _FALSE):
        return b""
    if wire == _I8:
        return struct.pack("b", value)
    if wire in (_I16, _I32, _I64):
        return _zigzag(value)
    if wire == _DOUBLE:
        return struct.pack("<d", value)
    if wire == _BINARY:
        return _varint(len(value)) + bytes(value)
    if wire in (_LIST, _SET):
        elem, items = value
        head = bytes([len(items) << 4 | elem]) if len(items) < 15 else bytes([0xF0 | elem]) + _varint(len(items))
        return head + b"".join(bytes([1 if v else 2]) if elem in (_TRUE, _FALSE) else _encode_value(elem, v)
                               for v in items)
    if wire == _MAP:
        kinds, items = value
        if not items:
            return b"\x00"
        return _varint(len(items)) + bytes([kinds]) + b"".join(
            _encode_value(kinds >> 4, k) + _encode_value(kinds & 0x0F, v) for k, v in items)
    if wire == _STRUCT:
        return encode_struct(value)
    raise ValueError(f"unknown thrift compact type {wire}")


def encode_struct(fields: list) -> bytes:
    out, last = bytearray(), 0
    for fid, wire, value in sorted(fields, key=lambda f: f[0]):
        if wire in (_TRUE, _FALSE):
            wire = _TRUE if value else _FALSE
        out += bytes([(fid - last) << 4 | wire]) if 0 < fid - last <= 15 else bytes([wire]) + _zigzag(fid)
        out += _encode_value(wire, value)
        last = fid
    return bytes(out) + b"\x00"


def decode_struct(data: bytes) -> list:
    return _Reader(data).struct()


def _get(fields: list, fid: int, default=None):
    return next((v for f, _, v in fields if f == fid), default)


def _set(fields: list, fid: int, wire: int, value) -> None:
    fields[:] = [f for f in fields if f[0] != fid] + [[fid, wire, value]]


def _drop(fields: list, *fids: int) -> None:
    fields[:] = [f for f in fields if f[0] not in fids]


# -- the file ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """Where one image's bytes lie: an open shard's descriptor, the offset and the size."""

    fd: int
    offset: int
    size: int


def write_with_members(frame: pl.DataFrame, column: str, members: Sequence[Member], out_fd: int, *,
                       row_group_size: int) -> None:
    """Write `frame` as parquet to `out_fd`, the leaf column `column` ("image.bytes", a Binary,
    all placeholder values) holding the bytes of `members` (one per row, in row order)."""
    buf = io.BytesIO()
    frame.write_parquet(buf, compression="uncompressed", statistics=False, row_group_size=row_group_size)
    source = buf.getvalue()
    (footer_len,) = struct.unpack("<I", source[-8:-4])
    meta = decode_struct(source[-8 - footer_len:-8])
    path = column.split(".")
    max_def = _max_definition_level(meta, path)
    out = _Out(out_fd)
    out.write(MAGIC)
    first_row = 0
    for group in _get(meta, 4)[1]:
        rows = members[first_row:first_row + _get(group, 3)]
        for chunk in _get(group, 1)[1]:
            _move_chunk(out, source, chunk, rows if _path(chunk) == path else None, max_def)
        _fix_row_group(group)
        first_row += len(rows)
    footer = encode_struct(meta)
    out.write(footer + struct.pack("<I", len(footer)) + MAGIC)
    out.flush()


def _path(chunk: list) -> list[str]:
    return [part.decode() for part in _get(_get(chunk, 3), 3)[1]]


def _move_chunk(out: _Out, source: bytes, chunk: list, members: Sequence[Member] | None, max_def: int) -> None:
    """Append one column chunk at `out`'s position, fixing its metadata in place: polars' bytes
    as they are, or (`members` given) the image pages."""
    info = _get(chunk, 3)
    start, new_start = _chunk_start(info), out.position
    if members is not None:
        size = _write_pages(out, members, max_def)
        for fid, value in ((6, size), (7, size), (9, new_start)):
            _set(info, fid, _I64, value)
        _set(info, 2, _LIST, [_I32, [_PLAIN, _RLE]])
        _drop(info, 10, 11, 12, 13, 14, 15, 16)  # the placeholder's offsets, statistics, bloom filter
    else:
        out.write(source[start:start + _get(info, 7)])
        for fid in (9, 10, 11):
            if _get(info, fid) is not None:
                _set(info, fid, _I64, _get(info, fid) - start + new_start)
        _drop(info, 14, 15)  # bloom filters are not carried over
    _set(chunk, 2, _I64, new_start)
    _drop(chunk, 4, 5, 6, 7)  # nor page indexes


def _chunk_start(info: list) -> int:
    starts = [_get(info, fid) for fid in (9, 11) if _get(info, fid) is not None]
    return min(starts)


def _fix_row_group(group: list) -> None:
    infos = [_get(chunk, 3) for chunk in _get(group, 1)[1]]
    _set(group, 2, _I64, sum(_get(info, 6) for info in infos))
    _set(group, 6, _I64, sum(_get(info, 7) for info in infos))
    _set(group, 5, _I64, min(_chunk_start(info) for info in infos))


def _max_definition_level(meta: list, path: list[str]) -> int:
    """Count the optional nodes from the root to the leaf `path` (schema is a depth-first list)."""
    elements = _get(meta, 2)[1]
    level, index = 0, 1
    for depth, name in enumerate(path):
        remaining = _get(elements[0], 5) if depth == 0 else children
        for _ in range(remaining):
            element = elements[index]
            if _get(element, 4).decode() == name:
                level += _get(element, 3) == 1  # OPTIONAL
                if _get(element, 3) == 2:
                    raise ValueError(f"{'.'.join(path)} is repeated: no list column can take the image bytes")
                children = _get(element, 5, 0)
                index += 1
                break
            index = _skip_subtree(elements, index)
        else:
            raise ValueError(f"no column {'.'.join(path)} in the parquet schema")
    return level


def _skip_subtree(elements: list, index: int) -> int:
    pending = 1
    while pending:
        pending += _get(elements[index], 5, 0) - 1
        index += 1
    return index


_PAD_FIELD = 32000  # a PageHeader field id parquet-format does not use: thrift readers skip it
_PAGE = 4096
_ALIGN_FROM = 1 << 16  # members smaller than this are not worth padding for


def _page_prefix(size: int, max_def: int, position: int, source_offset: int) -> bytes:
    """Header, definition levels and length of a one-value PLAIN page holding `size` bytes, to be
    written at `position`; the value's bytes then start at the same offset within a page as
    `source_offset` does in the shard.

    Why: the kernel copies page to page when source and target share the offset within a page,
    and ~35% slower otherwise (measured: benchmarks/bench_export.py); tar members lie on 512-byte
    boundaries. The header takes the difference as an unknown binary field (`_PAD_FIELD`), which
    thrift's compact protocol lets every reader skip (that is how parquet-format adds fields)."""
    levels = b""
    if max_def:  # one RLE run of `max_def`: the value is present
        run = _varint(1 << 1) + max_def.to_bytes((max_def.bit_length() + 7) // 8, "little")
        levels = struct.pack("<I", len(run)) + run
    tail = levels + struct.pack("<I", size)
    body = _zigzag(len(tail) + size)
    head = b"\x15\x00\x15" + body + b"\x15" + body + b"\x2c\x15\x02\x15\x00\x15\x06\x15\x06\x00"
    # i.e. fields 1 type=DATA_PAGE, 2/3 page sizes, 5 DataPageHeader{1 num_values=1, 2 PLAIN, 3/4 RLE}
    pad = b""
    if size >= _ALIGN_FROM:
        gap = (source_offset - position - len(head) - len(tail) - 1) % _PAGE
        pad = _pad_field(gap)
    return head + pad + b"\x00" + tail


def _pad_field(gap: int) -> bytes:
    """A skippable field `gap` bytes long in all (none when `gap` is 0; the shortest is 5 bytes,
    so a small gap grows by a page)."""
    if gap == 0:
        return b""
    key = bytes([_BINARY]) + _zigzag(_PAD_FIELD)
    while True:
        for width in (1, 2):
            filler = gap - len(key) - width
            if filler >= 0 and len(_varint(filler)) == width:
                return key + _varint(filler) + bytes(filler)
        gap += _PAGE


def _write_pages(out: _Out, members: Sequence[Member], max_def: int) -> int:
    start = out.position
    for member in members:
        out.write(_page_prefix(member.size, max_def, out.position, member.offset))
        out.copy(member)
    return out.position - start


class _Out:
    """A file descriptor written in order: small pieces buffered, members copied in the kernel."""

    def __init__(self, fd: int) -> None:
        self.fd, self.position, self._pending = fd, 0, bytearray()

    def write(self, data: bytes) -> None:
        self._pending += data
        self.position += len(data)

    def flush(self) -> None:
        write_all(self.fd, self._pending)
        self._pending.clear()

    def copy(self, member: Member) -> None:
        self.flush()
        copy_range(member.fd, self.fd, member.offset, member.size)
        self.position += member.size
