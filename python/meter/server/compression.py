"""Request body decompression: gzip and zstd, bounded, whole or refused.

A client may send `Content-Encoding: gzip` or `zstd` (`http.read_body` refuses any other with a 415). `decompress`
runs on the app's thread pool, never on the event loop: a 16 MiB body can expand to seconds of work.

Invariants:
- At most `limit` bytes come out, whatever the input claims: a decompression bomb stops there with a 413
  `body_too_large`, having allocated at most `limit` + one chunk.
- Every member (gzip) or frame (zstd) is decoded, concatenated ones too; a body cut short, followed by bytes that
  are not of the encoding, or empty is a 400 (`invalid_gzip`, `invalid_zstd`): never a partial body.
- Input is fed in fixed chunks so that many small members or frames cost linear time.
"""

from __future__ import annotations

import zlib

import zstandard

from meter.server.errors import ApiError

__all__ = ["decompress", "gunzip", "unzstd"]


def decompress(encoding: str, body: bytes, limit: int) -> bytes:
    """`body` decoded from `encoding` (`gzip`, `zstd`, or identity: as it is), at most `limit` bytes."""
    if encoding == "gzip":
        return gunzip(body, limit)
    if encoding == "zstd":
        return unzstd(body, limit)
    return body


_CHUNK = 64 * 1024


def gunzip(body: bytes, limit: int) -> bytes:
    """Every member of a gzip body (concatenated members are one stream, RFC 1952).

    At most `limit` bytes out (a bomb stops there: 413). Anything after the last member, or a member cut short, is a
    400 `invalid_gzip`: a body is read whole or refused. The input is fed in chunks so that many small members cost
    linear time.
    """
    out: list[bytes] = []
    size = 0
    view = memoryview(body)
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    fed = False  # whether the current member has had any input
    pending: bytes | memoryview = b""
    pos = 0
    while True:
        if not pending:
            if pos >= len(view):
                break
            pending, pos = view[pos : pos + _CHUNK], pos + _CHUNK
        try:
            chunk = d.decompress(pending, limit + 1 - size)
        except zlib.error as e:
            what = "trailing bytes after the last gzip member" if out and not fed else "the gzip body"
            raise ApiError(400, "invalid_gzip", f"{what} could not be decompressed: {e}") from None
        fed = True
        size += len(chunk)
        out.append(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the decompressed body exceeds {limit} bytes")
        if d.eof:
            pending = d.unused_data  # the start of the next member (at most one chunk)
            d, fed = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), False
        else:
            pending = d.unconsumed_tail  # empty: output stops short of max_length only when input runs out
    if fed or not out:
        raise ApiError(
            400,
            "invalid_gzip",
            "the gzip body is empty, truncated, or followed by bytes that are not "
            "gzip: send every byte of it and nothing else",
        )
    return b"".join(out)


def unzstd(body: bytes, limit: int) -> bytes:
    """Every frame of a zstd body, at most `limit` bytes out (413 past it).

    A truncated frame or trailing garbage is a 400 `invalid_zstd`. The bounded read decodes across frames (and stops
    a bomb); then a frame-by-frame pass over the same bytes, whose output the first pass has bounded, checks that the
    last frame is complete.
    """
    try:
        with zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True) as reader:
            out = reader.read(limit + 1)
        if len(out) > limit:
            raise ApiError(413, "body_too_large", f"the decompressed body exceeds {limit} bytes")
        view, pos, pending, fed = memoryview(body), 0, b"", False
        d = zstandard.ZstdDecompressor().decompressobj()
        while pending or pos < len(view):
            if not pending:
                pending, pos = bytes(view[pos : pos + _CHUNK]), pos + _CHUNK
            d.decompress(pending)
            fed = True
            if d.eof:  # the rest of the chunk starts the next frame (fed in chunks: many small frames stay linear)
                pending, fed = d.unused_data, False
                d = zstandard.ZstdDecompressor().decompressobj()
            else:
                pending = b""
        if fed:
            raise ApiError(400, "invalid_zstd", "the zstd body is truncated: its last frame is incomplete")
    except zstandard.ZstdError as e:
        raise ApiError(400, "invalid_zstd", f"the zstd body could not be decompressed: {e}") from None
    if not body:
        raise ApiError(400, "invalid_zstd", "the zstd body is empty")
    return out
