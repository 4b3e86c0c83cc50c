import subprocess
import sys

import h5py
import pytest

from defcon.cli import build_parser, main


def run(*args):
    """Run the defcon command in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "defcon.cli", *map(str, args)], capture_output=True, text=True
    )


def test_simulate_build_compact_info_end_to_end(tmp_path, capsys):
    out = tmp_path / "sim"
    assert (
        main(
            [
                "simulate",
                "--frames",
                "40",
                "--height",
                "24",
                "--width",
                "36",
                "--seed",
                "3",
                "--density-sweep",
                "--set",
                "photon_rate=1500",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "40 frames of 24 x 36" in capsys.readouterr().out
    assert (
        main(
            [
                "build",
                str(tmp_path / "t.h5"),
                str(out / "stack.tif"),
                str(out / "frame_logger.csv"),
                "--sigma",
                "1.2",
            ]
        )
        == 0
    )
    assert "sim: shape = (40, 24, 36, 1), dtype = float32" in capsys.readouterr().out
    with h5py.File(tmp_path / "t.h5", "r") as f:
        assert f["target/sim"].attrs["sigma"] == 1.2
    assert (
        main(
            [
                "compact",
                str(tmp_path / "t.h5"),
                str(tmp_path / "c.h5"),
                "--shuffle",
                "--augment",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "input: shape = (40, 24, 36, 1)" in text and "shuffle: True" in text
    assert main(["info", str(tmp_path / "t.h5")]) == 0
    assert "1 dataset(s), 40 frames" in capsys.readouterr().out


def cli(capsys, *args):
    """Run the defcon command in this process: (exit code, stderr)."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    from defcon.errors import MissingFileError

    code, err = cli(capsys, "build", tmp_path / "t.h5", tmp_path / "missing.tif", "gt.csv")
    assert code == 1
    assert err.strip().splitlines() == [
        f"defcon build: error: {tmp_path / 'missing.tif'}: TIFF stack not found"
    ]
    code, err = cli(
        capsys, "simulate", "--frames", "5", "--out", tmp_path, "--set", "photon_rate=-3"
    )
    assert code == 1 and "photon_rate" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(MissingFileError):  # --debug: the exception and its traceback
        main(["--debug", "info", str(tmp_path / "nothing.h5")])


def test_bad_csv_through_the_cli(tmp_path, sim_files, capsys):
    stack, _ = sim_files
    (tmp_path / "gt.csv").write_text("frame,x,y\n1,2,3\n")
    code, err = cli(capsys, "build", tmp_path / "t.h5", stack, tmp_path / "gt.csv")
    assert code == 1
    assert "gt.csv" in err and "brightness" in err
    with h5py.File(tmp_path / "t.h5", "r") as f:
        assert list(f["input"]) == []


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, subparser in sub.choices.items():
        text = subparser.format_help()
        assert subparser.description, name
        assert "usage: defcon " + name in text


def test_argument_errors_exit_with_usage(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "--frames", "0", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        main(["simulate", "--out", str(tmp_path), "--set", "nonsense"])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from defcon.networks import FCN

    path = tmp_path_factory.mktemp("model") / "random.keras"
    FCN(output="density", seed=0).save(path)
    return path


def test_predict_writes_counts_and_densities(tmp_path, sim_files, model_file, capsys):
    import numpy as np
    import pandas as pd
    import tifffile

    stack, _ = sim_files
    counts_file, density_file = tmp_path / "counts.csv", tmp_path / "density.tif"
    assert (
        main(
            [
                "predict",
                str(model_file),
                str(stack),
                "--out",
                str(density_file),
                "--counts",
                str(counts_file),
                "--box",
                "5",
                "--batch-size",
                "7",
            ]
        )
        == 0
    )
    assert "30 frames" in capsys.readouterr().out
    table = pd.read_csv(counts_file)
    assert list(table.columns) == ["frame", "count", "max_local_count", "flag"]
    assert table["flag"].isna().all()  # a random-weight model records no envelope
    assert table.frame.tolist() == list(range(1, 31))
    density = tifffile.imread(density_file)
    assert density.shape == (30, 24, 40) and density.dtype == np.float32
    np.testing.assert_allclose(table["count"], density.sum(axis=(1, 2)), atol=1e-3)
    boxes = np.lib.stride_tricks.sliding_window_view(density, (5, 5), axis=(1, 2))
    np.testing.assert_allclose(
        table["max_local_count"], boxes.sum(axis=(-1, -2)).max(axis=(1, 2)), atol=1e-3
    )


def test_predict_bad_inputs(tmp_path, sim_files, model_file, capsys):
    import numpy as np
    import tifffile

    stack, csv_file = sim_files
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 12, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros((0, 8, 8), np.uint16))
    cases = [
        ((model_file, tmp_path / "missing.tif"), "missing.tif: TIFF stack not found"),
        ((model_file, tmp_path / "rgb.tif"), "rgb.tif: RGB"),
        ((model_file, tmp_path / "empty.tif"), "empty.tif: empty"),
        ((csv_file, stack), "frame_logger.csv: not a model file"),
        ((tmp_path / "none.keras", stack), "none.keras: model file not found"),
    ]
    cases.append(((model_file, stack, "--out", tmp_path / "d.png"), "d.png: density maps are"))
    for args, message in cases:
        code = main(["predict", *map(str, args), "--counts", str(tmp_path / "c.csv")])
        err = capsys.readouterr().err
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "c.csv").exists() and not (tmp_path / "d.png").exists()


def test_one_process_smoke_run_is_quiet_and_names_the_device(tmp_path, sim_files, model_file):
    """As a user runs it: no TensorFlow start-up chatter, one line naming the device."""
    stack, _ = sim_files
    result = run("predict", model_file, stack, "--counts", tmp_path / "c.csv")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("INFO: TensorFlow ") and " on " in lines[0]
    assert "30 frames" in result.stdout and (tmp_path / "c.csv").exists()


def test_output_options_work_before_and_after_the_subcommand(tmp_path, sim_files, capsys):
    from defcon.errors import DuplicateNameError

    stack, truth = sim_files
    build = ["build", str(tmp_path / "ts.h5"), str(stack), str(truth), "--name", "a"]
    assert main(["--quiet", *build]) == 0
    assert "adding" not in capsys.readouterr().err  # no progress bar
    for argv in (["--debug", *build], [*build, "--debug"]):
        with pytest.raises(DuplicateNameError):  # --debug: the exception itself
            main(argv)
    assert main(build) == 1 and "already exists" in capsys.readouterr().err
    args = build_parser().parse_args(["info", "x.h5", "--verbose"])
    assert args.verbose and not args.quiet and not args.debug


def test_export_fiji_folder(tmp_path, model_file, capsys):
    assert main(["export", str(model_file), "--fiji", str(tmp_path / "plugins")]) == 0
    folder = tmp_path / "plugins" / "DEFCoN"
    assert (folder / "tf_density_count" / "saved_model.pb").exists()
    assert (folder / "tf_max_count" / "saved_model.pb").exists()
    assert "Fiji" in (folder / "README.txt").read_text()
    assert "wrote" in capsys.readouterr().out


def test_stack_options_in_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("predict", "build"):
        text = " ".join(sub.choices[name].format_help().split())
        for option in ("--series N", "--channel N", "--z N", "TZCYX"):
            assert option in text, (name, option)
    text = " ".join(sub.choices["predict"].format_help().split())
    assert "--allow-truncated" in text and "'truncated'" in text
    assert "--nan-frames {error,flag}" in text and "'nan_pixels'" in text


def hyperstack(stack_file, tmp_path):
    """A TCYX ImageJ hyperstack: channel 1 is the simulated stack, channel 0 noise."""
    import numpy as np
    import tifffile

    frames = tifffile.imread(stack_file)
    noise = np.random.default_rng(5).integers(0, 200, frames.shape).astype(frames.dtype)
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(
        path, np.stack([noise, frames], axis=1), imagej=True, metadata={"axes": "TCYX"}
    )
    return path, frames


def test_predict_and_build_choose_a_channel(tmp_path, sim_files, model_file, capsys):
    import numpy as np
    import pandas as pd

    stack, csv_file = sim_files
    path, frames = hyperstack(stack, tmp_path)
    code, err = cli(capsys, "predict", model_file, path, "--counts", tmp_path / "c.csv")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(
        f"defcon predict: error: {path}: a 4-D hyperstack (axes TCYX, shape (30, 2, 24, 40))"
    )
    assert "--channel N" in err
    assert not (tmp_path / "c.csv").exists()

    assert (
        main(
            [
                "predict",
                str(model_file),
                str(path),
                "--channel",
                "1",
                "--counts",
                str(tmp_path / "c.csv"),
            ]
        )
        == 0
    )
    assert "30 frames (channel 1)" in capsys.readouterr().out
    assert main(["predict", str(model_file), str(stack), "--counts", str(tmp_path / "d.csv")]) == 0
    np.testing.assert_allclose(
        pd.read_csv(tmp_path / "c.csv")["count"],
        pd.read_csv(tmp_path / "d.csv")["count"],
        atol=1e-4,
    )

    assert (
        main(
            [
                "build",
                str(tmp_path / "t.h5"),
                str(path),
                str(csv_file),
                "--name",
                "h",
                "--channel",
                "1",
            ]
        )
        == 0
    )
    import h5py

    with h5py.File(tmp_path / "t.h5", "r") as f:
        np.testing.assert_allclose(f["input/h"][..., 0], frames / 65535, rtol=1e-6)


def test_predict_allow_truncated(tmp_path, sim_files, model_file, capsys):
    import pandas as pd

    stack, _ = sim_files
    data = stack.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    code, err = cli(capsys, "predict", model_file, cut, "--counts", tmp_path / "c.csv")
    assert code == 1 and "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"defcon predict: error: {cut}: truncated or damaged file: it declares 30 frames"
        )
    )
    assert "--allow-truncated" in err
    assert (
        main(
            [
                "predict",
                str(model_file),
                str(cut),
                "--allow-truncated",
                "--counts",
                str(tmp_path / "c.csv"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "c.csv")
    n = len(table)
    assert 10 < n < 30 and table.frame.tolist() == list(range(1, n + 1))
    assert f"{n} frames" in out
    assert f"warning: truncated or damaged file: {n} intact frames counted of the 30" in out
    assert table["flag"].iloc[-1] == "truncated" and table["flag"].iloc[:-1].isna().all()
    assert table["count"].notna().all()


def test_predict_nan_frames_flag(tmp_path, sim_files, model_file, capsys):
    import numpy as np
    import pandas as pd
    import tifffile

    stack, _ = sim_files
    frames = tifffile.imread(stack).astype(np.float32)
    frames[4, 3, 5], frames[17] = np.nan, np.inf
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, frames)
    code, err = cli(capsys, "predict", model_file, path, "--counts", tmp_path / "c.csv")
    assert code == 1 and "frame(s) 5, 18 (1-based)" in err
    assert (
        main(
            [
                "predict",
                str(model_file),
                str(path),
                "--nan-frames",
                "flag",
                "--counts",
                str(tmp_path / "c.csv"),
                "--out",
                str(tmp_path / "d.tif"),
            ]
        )
        == 0
    )
    assert "warning: 2 frame(s) hold NaN or infinite pixels: not counted" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "c.csv")
    assert table.frame.tolist() == list(range(1, 31))
    bad = table.frame.isin([5, 18])
    assert (table.flag[bad] == "nan_pixels").all() and table.flag[~bad].isna().all()
    assert table["count"][bad].isna().all() and table["max_local_count"][bad].isna().all()
    assert table["count"][~bad].notna().all()
    text = (tmp_path / "c.csv").read_text().splitlines()
    assert text[5] == "5,,,nan_pixels"
    density = tifffile.imread(tmp_path / "d.tif")
    assert np.isnan(density[[4, 17]]).all() and np.isfinite(density[~bad.to_numpy()]).all()
    # the other frames are counted as in a clean stack
    clean = frames.copy()
    clean[[4, 17]] = 0
    tifffile.imwrite(tmp_path / "clean.tif", clean)
    assert (
        main(
            [
                "predict",
                str(model_file),
                str(tmp_path / "clean.tif"),
                "--counts",
                str(tmp_path / "k.csv"),
            ]
        )
        == 0
    )
    np.testing.assert_allclose(
        table["count"][~bad], pd.read_csv(tmp_path / "k.csv")["count"][~bad], atol=1e-4
    )


def test_predict_reads_every_file_of_a_micromanager_acquisition(tmp_path, model_file, capsys):
    import numpy as np
    import pandas as pd
    import tifffile
    from test_tiffio import STACK, write_micromanager

    first, second = write_micromanager(tmp_path)
    assert main(["predict", str(model_file), str(first), "--counts", str(tmp_path / "c.csv")]) == 0
    assert f"{first}: 10 frames" in capsys.readouterr().out
    tifffile.imwrite(tmp_path / "all.tif", STACK)
    assert (
        main(
            [
                "predict",
                str(model_file),
                str(tmp_path / "all.tif"),
                "--counts",
                str(tmp_path / "a.csv"),
            ]
        )
        == 0
    )
    np.testing.assert_allclose(
        pd.read_csv(tmp_path / "c.csv")["count"],
        pd.read_csv(tmp_path / "a.csv")["count"],
        atol=1e-4,
    )
    second.unlink()
    code, err = cli(capsys, "predict", model_file, first, "--counts", tmp_path / "m.csv")
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1:] == [
        f"defcon predict: error: {first}: multi-file OME-TIFF whose companion file(s) "
        f"acq_MMStack_Pos0_1.ome.tif are missing from {tmp_path} (its OME-XML lists 2 files); "
        "put them beside it"
    ]


def test_predict_series_option(tmp_path, model_file, capsys):
    import numpy as np
    import pandas as pd
    import tifffile

    path = tmp_path / "two.tif"
    rng = np.random.default_rng(3)
    with tifffile.TiffWriter(path) as tif:
        tif.write(rng.integers(0, 900, (4, 24, 40)).astype(np.uint16), photometric="minisblack")
        tif.write(rng.integers(0, 900, (7, 16, 20)).astype(np.uint16), photometric="minisblack")
    code, err = cli(capsys, "predict", model_file, path, "--counts", tmp_path / "c.csv")
    assert code == 1 and "--series N" in err
    assert (
        main(
            [
                "predict",
                str(model_file),
                str(path),
                "--series",
                "1",
                "--counts",
                str(tmp_path / "c.csv"),
            ]
        )
        == 0
    )
    assert "7 frames (series 1)" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "c.csv")) == 7
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(model_file), str(path), "--series", "-1"])
    assert exit_.value.code == 2 and "0-based index" in capsys.readouterr().err


def test_info_loads_tensorflow_only_for_networks(tmp_path, sim_files, model_file):
    from defcon.datasets import TrainingSet
    from defcon.info import loads_a_network

    with TrainingSet(tmp_path / "ts.h5") as ts:
        ts.add_dataset("a", *sim_files)
    assert not loads_a_network(tmp_path / "ts.h5")  # a training set: no TensorFlow start-up
    assert loads_a_network(model_file)
    assert not loads_a_network(tmp_path / "missing.h5")
