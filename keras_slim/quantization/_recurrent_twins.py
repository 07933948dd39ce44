"""`quantize_model`'s twins of `LSTM`, `GRU` and `SimpleRNN`: each layer
computed as its int8 file runs it (`_recurrent`), each inner tensor
through a `FakeQuant` sublayer of `step_quants`."""

import keras

from keras_slim.quantization import _recurrent
from keras_slim.quantization import _rules
from keras_slim.quantization import _twins


class _RecurrentQuantMixin(_twins._StepQuantMixin):
    quantize_active = True

    def build(self, sequences_shape, initial_state_shape=None):
        super().build(sequences_shape, initial_state_shape)
        self._build_steps(_recurrent.steps(self))

    def call(self, sequences, initial_state=None, mask=None, training=False):
        if not self.quantize_active:
            return super().call(
                sequences,
                initial_state=initial_state,
                mask=mask,
                training=training,
            )
        sequences, masks = _recurrent.bind(
            self, (sequences,), {"initial_state": initial_state, "mask": mask}
        )
        return _recurrent.forward(
            self, sequences, self._step(training), masks["mask"], training
        )


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedLSTM(_RecurrentQuantMixin, keras.layers.LSTM):
    """`keras.layers.LSTM` computed as its int8 file runs it (unrolled,
    one int8 matmul per gate and time step), each inner tensor through a
    `FakeQuant` sublayer of `step_quants`.

    Same arguments and config as `LSTM`.
    """

    recurrent_kind = "LSTM"


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedGRU(_RecurrentQuantMixin, keras.layers.GRU):
    """`keras.layers.GRU` computed as its int8 file runs it (unrolled),
    each inner tensor through a `FakeQuant` sublayer of `step_quants`.

    Same arguments and config as `GRU`.
    """

    recurrent_kind = "GRU"


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedSimpleRNN(_RecurrentQuantMixin, keras.layers.SimpleRNN):
    """`keras.layers.SimpleRNN` computed as its int8 file runs it
    (unrolled), each inner tensor through a `FakeQuant` sublayer of
    `step_quants`.

    Same arguments and config as `SimpleRNN`.
    """

    recurrent_kind = "SimpleRNN"


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedBidirectional(_RecurrentQuantMixin, keras.layers.Bidirectional):
    """`keras.layers.Bidirectional` over an LSTM, GRU or SimpleRNN, both
    directions computed as the int8 file runs them (unrolled), each inner
    tensor through a `FakeQuant` sublayer of `step_quants`; the
    concatenation's range is the `FakeQuant` after it.

    Same arguments and config as `Bidirectional`.
    """

    recurrent_kind = "Bidirectional"


_TWINS = {
    keras.layers.LSTM: QuantizedLSTM,
    keras.layers.GRU: QuantizedGRU,
    keras.layers.SimpleRNN: QuantizedSimpleRNN,
    keras.layers.Bidirectional: QuantizedBidirectional,
}
_twins.TWINS.update(_TWINS)
_twins.STEP_TWINS = (*_twins.STEP_TWINS, *_TWINS.values())
for _twin in _TWINS.values():
    _rules.register_own_rule(_twin, "recurrent")
