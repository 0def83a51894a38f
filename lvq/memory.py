"""Process memory housekeeping for inference on the CPU.

Three things keep a loaded run's process larger than what decoding needs:

* the C heap keeps freed blocks (glibc returns them only on ``malloc_trim``): the temporaries of
  loading and of preparing the kernels, ~100 MB on the bundled model;
* numba's compiler: compiling the kernels (or loading them from numba's cache) runs LLVM,
  whose library (libllvmlite, ~75 MB of it touched) stays resident although decoding never
  enters it again unless a new kernel specialisation compiles;
* the run's ``model.safetensors`` is memory-mapped (transformers' loader reads tensors from the
  mapping without copying them), and preparing the kernels reads every stored code once: the
  file's pages stay resident although decoding reads the kernels' own layout, not the stored
  form. They are clean file pages, so the kernel can drop them and read them back from the file
  if a stored tensor is used again (saving, ``.weight``, a mode change).

The remedies (``malloc_trim``, ``madvise``) are hints to the C library and the operating system;
none changes a tensor's value. Linux with glibc only; elsewhere they do nothing.
"""
from __future__ import annotations

import ctypes
import gc
import os
from pathlib import Path

MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages now (clean file pages are dropped)


def _libc():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


def release_free_memory() -> None:
    """Collect Python's garbage, then return the C heap's free pages to the OS (``malloc_trim``)."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def mapped_ranges(path: str | Path) -> list[tuple[int, int]]:
    """(start, end) address ranges of this process's mappings of the file ``path`` (a full path,
    or a bare file name such as ``libllvmlite.so`` for every mapped file of that name)."""
    target = os.path.realpath(path) if os.sep in str(path) else str(path)
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                name = parts[5].strip() if len(parts) == 6 else ""
                if name and (name == target or os.path.basename(name) == target):
                    a, b = parts[0].split("-")
                    out.append((int(a, 16), int(b, 16)))
    except OSError:  # not Linux
        return []
    return out


def page_out(path: str | Path) -> int:
    """Ask the OS to reclaim the resident pages of this process's mappings of ``path`` (see
    ``mapped_ranges``; what a later read needs comes back from the file); returns the bytes
    advised (0 where unsupported)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "madvise"):
        return 0
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    done = 0
    for start, end in mapped_ranges(path):
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_PAGEOUT) == 0:
            done += end - start
    return done


def page_out_compiler() -> int:
    """``page_out`` numba's LLVM library once the kernels a process needs are compiled; 0 if
    numba was never imported here."""
    import sys

    if "llvmlite.binding" not in sys.modules:
        return 0
    return page_out("libllvmlite.so")
