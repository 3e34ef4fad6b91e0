"""A byte-level text corpus: the reStructuredText sources of the Python documentation.

Debian's python3.11-doc ships them as *.txt files (about 11 MB). Files are read
in sorted order; every VAL_EVERY-th file, counted back from the last one, goes
to validation and the rest to training: the split is deterministic, no document
straddles it, and even a corpus of two files has both parts. Each
split is one byte string cut into windows of seq_len + 1 bytes that overlap by
one: window i gives inputs bytes[i L : (i+1) L] and targets shifted by one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fr_dist.errors import FRError

PYTHON_DOCS = "/usr/share/doc/python3.11/html/_sources"
VAL_EVERY = 20  # of n files (sorted by path), file i is validation when (n - 1 - i) % VAL_EVERY == 0
VOCAB = 256  # bytes


def corpus_files(root: str | None) -> tuple[Path, list[Path]]:
    """The corpus directory and its text files, sorted; an FRError naming the fix when there are none."""
    where = Path(root or PYTHON_DOCS)
    fix = ("install Debian's python3.11-doc (apt-get install python3.11-doc; launch/train_lm.sh does it) "
           "or set data.data_root to a directory of .txt files")
    if not where.is_dir():
        raise FRError(f"no text corpus at {where}: {fix}")
    files = sorted(p for p in where.rglob("*.txt") if p.is_file())
    if len(files) < 2:
        raise FRError(f"the text corpus at {where} has {len(files)} .txt file(s), at least 2 are needed (one for "
                      f"training, one for validation): {fix}")
    return where, files


def read_corpus(root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) bytes of the corpus as uint8 tensors."""
    where, files = corpus_files(root)
    parts: tuple[list[bytes], list[bytes]] = ([], [])
    for i, path in enumerate(files):
        try:
            raw = path.read_bytes()
            raw.decode("utf-8")  # text: a file that is no UTF-8 is damaged (or not this corpus)
        except OSError as e:
            raise FRError(f"cannot read {path} of the text corpus: {e.strerror}; reinstall it "
                          f"(apt-get install --reinstall python3.11-doc) or set data.data_root") from None
        except UnicodeDecodeError as e:
            raise FRError(f"{path} of the text corpus is not UTF-8 text (byte {e.start}): the corpus is damaged; "
                          f"reinstall it (apt-get install --reinstall python3.11-doc) or set data.data_root") from None
        parts[(len(files) - 1 - i) % VAL_EVERY == 0].append(raw)
    joined = [b"".join(p) for p in parts]
    for text, what in zip(joined, ("training", "validation")):
        if len(text) < 2:
            raise FRError(f"the {what} files of the text corpus at {where} are empty: set data.data_root to a "
                          f"corpus with text in them")
    return tuple(torch.frombuffer(bytearray(text), dtype=torch.uint8) for text in joined)


def windows(data: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (N, seq_len) views of `data`: targets are the inputs shifted by one byte."""
    n = (len(data) - 1) // seq_len
    return data[:n * seq_len].view(n, seq_len), data[1:n * seq_len + 1].view(n, seq_len)
