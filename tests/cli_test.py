"""The `keras-slim` command: convert, inspect, profile, demo."""

import numpy as np
import pytest

from keras_slim import cli
from keras_slim import inspect_tflite


@pytest.fixture
def saved_cnn(trained_cnn, tmp_path):
    path = str(tmp_path / "cnn.keras")
    trained_cnn.save(path)
    return path


def test_convert_calibrates_on_the_digits_and_writes_int8(
    saved_cnn, tmp_path, capsys
):
    out = str(tmp_path / "cnn.tflite")
    code = cli.main(["convert", saved_cnn, "-o", out, "--calibration", "100"])
    assert code == 0
    assert inspect_tflite(out).int8_only
    assert "int8_only: True" in capsys.readouterr().out


def test_convert_takes_representative_data_from_npy(
    saved_cnn, digits, tmp_path
):
    (x, _), _ = digits
    npy = str(tmp_path / "calib.npy")
    np.save(npy, x[:50])
    out = str(tmp_path / "cnn.tflite")
    assert cli.main(["convert", saved_cnn, "-o", out,
                     "--representative-data", npy]) == 0
    assert inspect_tflite(out).int8_only


def test_inspect_and_profile_print_tables(saved_cnn, tmp_path, capsys):
    out = str(tmp_path / "f.tflite")
    assert cli.main(["convert", saved_cnn, "-o", out,
                     "--quantization", "float32"]) == 0
    assert cli.main(["inspect", out]) == 0
    assert "CONV_2D x3" in capsys.readouterr().out
    assert cli.main(["profile", saved_cnn]) == 0
    text = capsys.readouterr().out
    assert "20,394" in text and "conv4" in text


@pytest.mark.parametrize("kind", ["missing", "corrupt", "wrong_kind"])
def test_bad_files_give_one_line_and_exit_1(kind, tmp_path, capsys):
    path = tmp_path / ("m.keras" if kind != "wrong_kind" else "m.txt")
    if kind != "missing":
        path.write_bytes(b"definitely not a model")
    code = cli.main(["convert", str(path), "-o", str(tmp_path / "o.tflite")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("keras-slim: error:") and err.count("\n") == 1
    assert "Traceback" not in err
    assert not (tmp_path / "o.tflite").exists()


def test_inspect_refuses_a_file_that_is_not_tflite(tmp_path, capsys):
    bad = tmp_path / "x.tflite"
    bad.write_text("hello")
    assert cli.main(["inspect", str(bad)]) == 1
    assert "TFLite flatbuffer" in capsys.readouterr().err


def test_convert_asks_for_data_when_the_input_does_not_fit_the_digits(
    tmp_path, capsys
):
    import keras

    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert cli.main(["convert", path, "-o", str(tmp_path / "o.tflite")]) == 1
    assert "--representative-data" in capsys.readouterr().err


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as e:
        cli.main(["convert", "m.keras", "-o", "o.tflite",
                  "--quantization", "int4"])
    assert e.value.code == 2


@pytest.mark.slow
def test_quick_demo_trains_exports_and_verifies(tmp_path, capsys):
    code = cli.main(["demo", "--quick", "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Verified" in out
    assert inspect_tflite(str(tmp_path / "cnn_int8.tflite")).int8_only
    assert (tmp_path / "cnn.keras").exists()
