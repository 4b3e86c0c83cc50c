"""Every frame of a TIFF is read, or the read fails naming the file and the problem."""

import numpy as np
import pytest
import tifffile

from defcon.errors import UnsupportedFileError
from defcon.tiffio import TiffStack

STACK = np.random.default_rng(0).integers(0, 4000, (10, 40, 56)).astype(np.uint16)


def read_all(path, **kw):
    with TiffStack(path, **kw) as stack:
        return stack.shape, stack.read(), stack.read(3, 8)


def test_several_writes_are_one_stack(tmp_path):
    path = tmp_path / "parts.tif"
    with tifffile.TiffWriter(path) as tif:
        for part in (STACK[:4], STACK[4:7], STACK[7:]):
            tif.write(part, photometric="minisblack")
    shape, frames, middle = read_all(path)
    assert shape == (10, 40, 56)
    np.testing.assert_array_equal(frames, STACK)
    np.testing.assert_array_equal(middle, STACK[3:8])
    np.testing.assert_array_equal(read_all(path, series=1)[1], STACK[4:7])


def test_one_page_per_write_is_one_stack(tmp_path):
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for frame in STACK:
            tif.write(frame)
    shape, frames, _ = read_all(path)
    assert shape == (10, 40, 56)
    np.testing.assert_array_equal(frames, STACK)


def test_series_of_different_shapes_are_refused(tmp_path):
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(STACK[:4], photometric="minisblack")
        tif.write(STACK[0, :20], photometric="minisblack")
    with pytest.raises(UnsupportedFileError, match=r"mixed.tif.*series 1: 1 x 20 x 56"):
        TiffStack(path)
    assert read_all(path, series=0)[0] == (4, 40, 56)
    with pytest.raises(UnsupportedFileError, match="no series 5"):
        TiffStack(path, series=5)


@pytest.mark.parametrize("imagej", [True, False])
def test_truncated_file_names_the_last_complete_frame(tmp_path, imagej):
    path = tmp_path / "full.tif"
    tifffile.imwrite(path, STACK, imagej=imagej)
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(UnsupportedFileError, match=r"cut.tif: truncated.*declares 10 frames"):
        TiffStack(cut)
    assert path.read_bytes() == data  # the intact file is untouched and reads whole
    assert read_all(path)[0] == (10, 40, 56)


def test_nan_and_infinite_pixels_are_errors_naming_frames(tmp_path):
    frames = STACK.astype(np.float32)
    frames[3, 2, 2], frames[6, 0, 0] = np.nan, np.inf
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, frames)
    with TiffStack(path) as stack:
        np.testing.assert_array_equal(stack.read(0, 3), frames[:3])
        with pytest.raises(UnsupportedFileError, match=r"nan.tif: frame\(s\) 4, 7 "):
            stack.read()


def test_predict_refuses_nan_frames(tmp_path):
    from defcon.networks import FCN

    frames = STACK.astype(np.float32)
    frames[5] = np.nan
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, frames)
    with pytest.raises(UnsupportedFileError, match="frame\\(s\\) 6 "):
        FCN(output="density", seed=0).predict_tiff(path)
