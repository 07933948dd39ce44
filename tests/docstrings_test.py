"""Executes every `>>>` example in the public docstrings of keras_slim."""

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import keras_slim

pytestmark = pytest.mark.backends(
    "tensorflow", reason="the examples export with the TFLite converter"
)


def _public_modules():
    names = ["keras_slim"]
    for info in pkgutil.walk_packages(
        keras_slim.__path__, prefix="keras_slim."
    ):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("module_name", _public_modules())
def test_docstring_examples_run(module_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write files
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    tests = [
        t
        for t in finder.find(module, module_name)
        # Only objects defined in this module, not re-exports.
        if t.examples and _defined_here(t, module_name) and _runnable_here(t)
    ]
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed"


# Examples of the optional LiteRT Quantizer route (`keras-slim[litert]`,
# which pins ai-edge-litert 2.3.0): run where that third-party package is
# installed (CI's newest-version run), left out where it is not (the
# lowest versions). tests/ptq_test.py checks the error without it.
NEEDS_LITERT_QUANTIZER = {"keras_slim.quantization.select_precision"}


def _runnable_here(test):
    if test.name not in NEEDS_LITERT_QUANTIZER:
        return True
    return importlib.util.find_spec("litert_quantizer") is not None


def _defined_here(test, module_name):
    return test.name == module_name or test.name.startswith(module_name + ".")
