"""Training-side behaviour on the other Keras backends, each in a child
process (the backend is fixed when Keras is first imported)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

_QAT_UNDER_JIT = textwrap.dedent(
    """
    import json
    import keras
    import numpy as np
    from keras_slim.quantization import QuantizationAwareTraining
    from keras_slim.quantization import is_quantization_aware
    from keras_slim.quantization import quantize_model

    rng = np.random.default_rng(0)
    x = rng.random((256, 8, 8, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype("int32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(2),
    ])
    model.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    model.fit(x, y, epochs=2, batch_size=32, verbose=0,
              callbacks=[QuantizationAwareTraining()])
    state = {v.name: keras.ops.convert_to_numpy(v).tolist()
             for v in model.non_trainable_variables
             if v.name.startswith("qat_")}
    twin = quantize_model(model)
    diff = np.abs(twin.predict(x[:64], verbose=0)
                  - model.predict(x[:64], verbose=0)).max()
    model.save_weights("m.weights.h5")
    saved = dict(state)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0,
              callbacks=[QuantizationAwareTraining()])
    moved = keras.ops.convert_to_numpy(
        [v for v in model.non_trainable_variables
         if v.name == "qat_input_max"][0]).tolist()
    model.load_weights("m.weights.h5")
    restored = {v.name: keras.ops.convert_to_numpy(v).tolist()
                for v in model.non_trainable_variables
                if v.name.startswith("qat_")}
    print(json.dumps({
        "backend": keras.backend.backend(),
        "aware": bool(is_quantization_aware(model)),
        "state": state,
        "twin_diff": float(diff),
        "restored_equal": restored == saved,
        "moved": moved != saved["qat_input_max"],
    }))
    """
)


def _run(backend, code, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["jax"])
def test_qat_ranges_are_learned_inside_a_jitted_step(backend, tmp_path):
    result = _run(backend, _QAT_UNDER_JIT, tmp_path)
    assert result["backend"] == backend
    # A jitted JAX step threads the model's variables through: the ranges
    # moved off their (-6, 6) start and are marked learned.
    state = result["state"]
    assert result["aware"]
    assert state["qat_input_initialized"] == 1.0
    assert 0.9 < state["qat_input_max"] <= 1.0  # the inputs are in [0, 1)
    assert state["qat_input_min"] == 0.0
    assert state["qat_phase"] == [1.0, 0.0, 0.0]
    # quantize_model copies them exactly.
    assert result["twin_diff"] < 1e-5
    # save_weights / load_weights carry them.
    assert result["moved"] and result["restored_equal"]
