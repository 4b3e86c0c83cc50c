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
    cut.write_bytes(data[: len(data) * 2 // 3])
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


# ---------------------------------------------------------------- hyperstacks
# 6 time points, 2 z planes, 3 channels of 40 x 56: plane (t, z, c) is unique.
HYPER = np.random.default_rng(1).integers(0, 4000, (6, 2, 3, 40, 56)).astype(np.uint16)


def write_hyperstack(path, kind, data=HYPER, axes="TZCYX"):
    """Write ``data`` as an ImageJ hyperstack, an OME-TIFF or a compressed shaped file."""
    if kind == "imagej":
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": axes})
    elif kind == "ome":
        tifffile.imwrite(path, data, ome=True, metadata={"axes": axes}, photometric="minisblack")
    else:  # page by page (compressed), tifffile's shaped metadata
        tifffile.imwrite(
            path, data, compression="zlib", metadata={"axes": axes}, photometric="minisblack"
        )
    return path


@pytest.mark.parametrize("kind", ["imagej", "ome", "shaped-zlib"])
def test_hyperstack_reads_the_chosen_channel_and_z(tmp_path, kind):
    path = write_hyperstack(tmp_path / "hyper.tif", kind)
    with pytest.raises(
        UnsupportedFileError,
        match=r"hyper.tif: a 5-D hyperstack \(axes TZCYX, "
        r"shape \(6, 2, 3, 40, 56\)\).*--z N and/or --channel N.*z=N, channel=N",
    ):
        TiffStack(path)
    with pytest.raises(UnsupportedFileError, match="along T and Z.*--z N"):
        TiffStack(path, channel=1)  # T and Z left
    with pytest.raises(UnsupportedFileError, match=r"no channel 3: axis C holds 3 \(0 to 2"):
        TiffStack(path, channel=3, z=0)
    shape, frames, middle = read_all(path, channel=2, z=1)
    assert shape == (6, 40, 56)
    np.testing.assert_array_equal(frames, HYPER[:, 1, 2])
    np.testing.assert_array_equal(middle, HYPER[3:8, 1, 2])


def test_hyperstack_reads_only_the_chosen_pages(tmp_path, monkeypatch):
    path = write_hyperstack(tmp_path / "hyper.tif", "shaped-zlib")
    asked = []
    original = tifffile.TiffFile.asarray

    def spy(self, key=None, **kw):
        asked.append(key)
        return original(self, key=key, **kw)

    monkeypatch.setattr(tifffile.TiffFile, "asarray", spy)
    with TiffStack(path, channel=0, z=1) as stack:
        np.testing.assert_array_equal(stack.read(2, 4), HYPER[2:4, 1, 0])
    assert asked == [[15, 21]]  # page (t, z, c) is t*6 + z*3 + c: two pages decoded


@pytest.mark.parametrize(
    "axes, pick, expected",
    [
        ("TCYX", {"channel": 1}, HYPER[:, 0, 1]),  # time-lapse of 3 channels
        ("ZCYX", {"channel": 0}, HYPER[:, 0, 0]),  # z-stack of 3 channels: z as frames
        ("TZYX", {"z": 1}, HYPER[:, 1, 0]),
        ("TYX", {"channel": 0, "z": 0}, HYPER[:, 0, 0]),  # 0 stands for an axis the file lacks
    ],
)
def test_hyperstacks_of_two_axes(tmp_path, axes, pick, expected):
    data = {
        "TCYX": HYPER[:, 0],
        "ZCYX": HYPER[:, 0],
        "TZYX": HYPER[:, :, 0],
        "TYX": HYPER[:, 0, 0],
    }[axes]
    path = write_hyperstack(tmp_path / "h.tif", "imagej", data, axes)
    if len(axes) == 4:
        with pytest.raises(UnsupportedFileError, match=f"axes {axes}"):
            TiffStack(path)
    np.testing.assert_array_equal(read_all(path, **pick)[1], expected)


def test_choosing_an_axis_the_file_lacks_is_an_error(tmp_path):
    path = write_hyperstack(tmp_path / "h.tif", "imagej", HYPER[:, 0], "TCYX")
    with pytest.raises(UnsupportedFileError, match=r"h.tif: no z 1: the file has no Z axis"):
        TiffStack(path, channel=0, z=1)


def test_unnamed_axes_cannot_be_chosen(tmp_path):
    path = tmp_path / "q.tif"
    tifffile.imwrite(path, HYPER[:, :, 0])  # tifffile's shaped file without axes: QQYX
    with pytest.raises(UnsupportedFileError, match="no option chooses along Q or Q"):
        TiffStack(path)


def test_truncated_hyperstack_names_the_last_complete_frame(tmp_path):
    path = write_hyperstack(tmp_path / "hyper.tif", "imagej")
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    plane = 40 * 56 * 2
    cut.write_bytes(data[: data.index(HYPER[0, 0, 0].tobytes()) + 15 * plane])  # 15 planes
    # (t, z=1, c=0) is plane 6t + 3: planes 3 and 9 are whole, 15 is not
    with pytest.raises(UnsupportedFileError, match="declares 6 frames but ends after frame 2 "):
        TiffStack(cut, channel=0, z=1)
    with TiffStack(cut, channel=0, z=1, allow_truncated=True) as stack:
        assert stack.shape == (2, 40, 56) and stack.truncated == (6, 2)
        np.testing.assert_array_equal(stack.read(), HYPER[:2, 1, 0])


# ---------------------------------------------------------------- truncated files
@pytest.mark.parametrize("imagej", [True, False])
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_allow_truncated_reads_the_intact_frames(tmp_path, imagej, compression, caplog):
    path = tmp_path / "full.tif"
    tifffile.imwrite(path, STACK, imagej=imagej, compression=compression)
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(UnsupportedFileError, match="cut.tif: truncated.*--allow-truncated"):
        TiffStack(cut)
    with TiffStack(cut, allow_truncated=True) as stack:
        n = len(stack)
        assert 4 <= n < 10 and stack.truncated == (10, n)
        np.testing.assert_array_equal(stack.read(), STACK[:n])
    assert f"reading the {n} intact frames" in caplog.text
    with TiffStack(path, allow_truncated=True) as stack:
        assert stack.truncated is None


def test_broken_chain_of_pages_without_metadata_is_an_error(tmp_path):
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for frame in STACK:  # no metadata: nothing declares the number of frames
            tif.write(frame, metadata=None)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(path.read_bytes()[: len(path.read_bytes()) * 2 // 3 + 100])
    with pytest.raises(UnsupportedFileError, match="cut.tif: truncated.*ends after frame 6 "):
        TiffStack(cut)
    with TiffStack(cut, allow_truncated=True) as stack:
        assert stack.truncated == (None, 6)
        np.testing.assert_array_equal(stack.read(), STACK[:6])


# ---------------------------------------------------------------- pages left out
def test_pages_that_the_metadata_leave_out_are_an_error(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, STACK, imagej=True)
    data = path.read_bytes()
    assert b"images=10\n" in data  # now declare 6 of the 10 images
    path.write_bytes(
        data.replace(b"images=10\n", b"images=06\n").replace(b"channels=10\n", b"channels=06\n")
    )
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].shape == (6, 40, 56)  # tifffile alone would drop 4 frames
    with pytest.raises(
        UnsupportedFileError,
        match=r"ij.tif: holds 10 images but its imagej "
        r"metadata describe 6 .*the other 4 would not be read",
    ):
        TiffStack(path)


def ome_xml(planes, files, size_t=None):
    """OME-XML of one TYX image of 40 x 56 uint16 stored in ``files``: [(name, n_planes)]."""
    entries, first = [], 0
    for name, n in files:
        uuid = f'<UUID FileName="{name}">urn:uuid:{name}</UUID>' if name else ""
        entries.append(f'<TiffData FirstT="{first}" IFD="0" PlaneCount="{n}">{uuid}</TiffData>')
        first += n
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        '<Image ID="Image:0" Name="acq"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" '
        f'Type="uint16" SizeX="56" SizeY="40" SizeC="1" SizeZ="1" SizeT="{size_t or planes}">'
        '<Channel ID="Channel:0:0" SamplesPerPixel="1"/>'
        + "".join(entries)
        + "</Pixels></Image></OME>"
    )


def test_ome_metadata_describing_fewer_planes_than_pages_is_an_error(tmp_path):
    path = tmp_path / "short.ome.tif"
    tifffile.imwrite(path, STACK, description=ome_xml(6, [("", 6)]), metadata=None)
    with pytest.raises(
        UnsupportedFileError, match="holds 10 images but its ome metadata describe 6"
    ):
        TiffStack(path)


# ---------------------------------------------------------------- multi-file OME-TIFF
def write_micromanager(folder):
    """A Micro-Manager style acquisition: 6 frames in the first file, 4 in the second."""
    first, second = "acq_MMStack_Pos0.ome.tif", "acq_MMStack_Pos0_1.ome.tif"
    xml = ome_xml(10, [(first, 6), (second, 4)])
    tifffile.imwrite(folder / first, STACK[:6], description=xml, metadata=None)
    tifffile.imwrite(folder / second, STACK[6:], metadata=None)
    return folder / first, folder / second


def test_multi_file_ome_tiff_reads_every_file(tmp_path):
    first, _ = write_micromanager(tmp_path)
    shape, frames, middle = read_all(first)  # frames 3 to 7 span both files
    assert shape == (10, 40, 56)
    np.testing.assert_array_equal(frames, STACK)
    np.testing.assert_array_equal(middle, STACK[3:8])


def test_missing_companion_file_is_an_error_naming_it(tmp_path):
    from defcon.errors import MissingFileError

    first, second = write_micromanager(tmp_path)
    second.unlink()  # tifffile alone would fill its frames with zeros
    with pytest.raises(
        MissingFileError,
        match=r"acq_MMStack_Pos0.ome.tif: multi-file OME-TIFF "
        r"whose companion file\(s\) acq_MMStack_Pos0_1.ome.tif are missing",
    ):
        TiffStack(first)


# ---------------------------------------------------------------- NaN pixels
def test_nonfinite_flag_records_the_frames(tmp_path):
    frames = STACK.astype(np.float32)
    frames[3, 2, 2], frames[6, 0, 0] = np.nan, -np.inf
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, frames)
    with TiffStack(path, nonfinite="flag") as stack:
        np.testing.assert_array_equal(stack.read(0, 5), frames[:5])
        assert stack.nonfinite_frames == {3}
        stack.read()
        assert stack.nonfinite_frames == {3, 6}
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        TiffStack(path, nonfinite="ignore")


def test_predict_tiff_passes_stack_options(tmp_path):
    from defcon.networks import FCN

    model = FCN(output="density", seed=0)
    frames = STACK.astype(np.float32)
    frames[5, 1, 1] = np.nan
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, frames)
    density = model.predict_tiff(path, stack_options={"nonfinite": "flag"})
    assert np.isnan(density[5]).all() and np.isfinite(np.delete(density, 5, axis=0)).all()
    clean = frames.copy()
    clean[5] = 0
    tifffile.imwrite(tmp_path / "clean.tif", clean)
    np.testing.assert_allclose(
        np.delete(density, 5, axis=0),
        np.delete(model.predict_tiff(tmp_path / "clean.tif"), 5, axis=0),
        atol=1e-5,
    )
    hyper = write_hyperstack(tmp_path / "hyper.tif", "imagej")
    tifffile.imwrite(tmp_path / "plane.tif", HYPER[:, 1, 2])
    np.testing.assert_allclose(
        model.predict_tiff(hyper, stack_options={"channel": 2, "z": 1}),
        model.predict_tiff(tmp_path / "plane.tif"),
        atol=1e-5,
    )
