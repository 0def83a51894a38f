"""lvq/memory.py: the OS hints loading a run gives must never change what a tensor holds."""
import mmap
import sys

import numpy as np
import pytest

from lvq.memory import mapped_ranges, page_out, release_free_memory

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps and madvise")


@linux
def test_page_out_keeps_a_mapped_file_readable(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, size=3 * mmap.PAGESIZE + 17, dtype=np.uint8)
    path = tmp_path / "weights.bin"
    path.write_bytes(data.tobytes())
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as mm:
        view = np.frombuffer(mm, dtype=np.uint8)
        assert int(view.sum()) == int(data.sum())  # every page resident now
        assert len(mapped_ranges(path)) == 1 and mapped_ranges("weights.bin") == mapped_ranges(path)
        assert page_out(path) >= data.nbytes  # whole pages
        np.testing.assert_array_equal(view, data)  # read back from the file
        del view
    assert mapped_ranges(path) == [] and page_out(path) == 0


def test_unmapped_file_and_heap_release(tmp_path):
    assert mapped_ranges(tmp_path / "nothing.bin") == []
    assert page_out(tmp_path / "nothing.bin") == 0
    release_free_memory()  # a hint: must simply not fail


def test_numba_still_compiles_after_its_library_is_paged_out():
    import numba

    from lvq.memory import page_out_compiler

    assert page_out_compiler() >= 0  # libllvmlite is mapped once numba is imported

    @numba.njit(cache=False)
    def twice(a):
        return 2 * a

    assert twice(21) == 42  # LLVM's pages come back from the file
