"""Reader for the IDX file format (MNIST / Fashion-MNIST), plain or gzip-compressed."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import torch

from fr_dist.errors import FRError

# IDX type code -> big-endian numpy dtype.
_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: str) -> bytes:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FRError(f"IDX file {path!r} does not exist; check the data root") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise FRError(
            f"IDX file {path!r} is not a valid gzip file ({e}); delete it and download it again"
        ) from None
    except OSError as e:
        raise FRError(f"cannot read IDX file {path!r}: {e}") from None


def read_idx(path: str) -> torch.Tensor:
    """Read an IDX file (gzip if ``path`` ends in ``.gz``) into a CPU tensor.

    The shape is the one in the header (images ``[N, H, W]``, labels ``[N]``) and the
    dtype is the header's type in native byte order (``torch.uint8`` for MNIST-style
    files); the tensor is writable and owns its memory. Any bad file raises FRError.
    """
    path = str(path)
    raw = _read_bytes(path)
    fix = "the file is corrupt or not an IDX file; delete it and download it again"
    if len(raw) < 4:
        raise FRError(f"IDX file {path!r} is only {len(raw)} bytes, shorter than the 4-byte magic; {fix}")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES or raw[3] == 0:
        raise FRError(
            f"IDX file {path!r} has bad magic {raw[:4].hex()} (expected 0000 then a type code "
            f"in {sorted(hex(t) for t in _TYPES)} and ndim >= 1); {fix}"
        )
    dtype, ndim = _TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FRError(
            f"IDX file {path!r} is truncated: header needs {header} bytes for {ndim} dims, "
            f"file has {len(raw)}; {fix}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        what = "truncated" if actual < expected else "corrupt (trailing bytes)"
        raise FRError(
            f"IDX file {path!r} is {what}: dims {list(dims)} need {expected} payload bytes, "
            f"found {actual}; {fix}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return torch.from_numpy(arr.astype(dtype.newbyteorder("="), copy=True))
