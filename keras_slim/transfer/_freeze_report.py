"""The report `freeze` and `unfreeze` return."""


class FreezeReport:
    """What `freeze` or `unfreeze` did to a model.

    Attributes:
        action: `"freeze"` or `"unfreeze"`.
        layers: Paths of the layers now frozen (or trainable).
        skipped: `(path, reason)` for selected layers left as they were.
        trainable_params: Trainable parameters of the model afterwards.
        non_trainable_params: Non-trainable parameters afterwards (frozen
            weights and BatchNormalization moving statistics).
        recompiled: Whether the model was recompiled for the change.
        message: What the user must do, if anything.

    Example:

    >>> import keras
    >>> from keras_slim.transfer import freeze
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(3, name="body"), keras.layers.Dense(2)])
    >>> report = freeze(model, up_to="body")
    >>> report.action, report.trainable_params, report.non_trainable_params
    ('freeze', 8, 15)
    """

    def __init__(
        self,
        action,
        layers,
        skipped,
        trainable_params,
        non_trainable_params,
        recompiled,
        message,
    ):
        self.action = action
        self.layers = list(layers)
        self.skipped = list(skipped)
        self.trainable_params = trainable_params
        self.non_trainable_params = non_trainable_params
        self.recompiled = recompiled
        self.message = message

    def __repr__(self):
        return (
            f"FreezeReport(action={self.action!r}, layers={len(self.layers)}"
            f", skipped={len(self.skipped)}, "
            f"trainable_params={self.trainable_params}, "
            f"non_trainable_params={self.non_trainable_params}, "
            f"recompiled={self.recompiled})"
        )

    def summary(self):
        """Return a multi-line, human-readable account of the change."""
        done = "frozen" if self.action == "freeze" else "unfrozen"
        lines = [
            f"{len(self.layers)} layer(s) {done}: " + ", ".join(self.layers)
        ]
        lines += [f"skipped {p}: {r}" for p, r in self.skipped]
        lines.append(
            f"trainable params: {self.trainable_params:,}, non-trainable "
            f"params: {self.non_trainable_params:,}"
        )
        lines.append(self.message)
        return "\n".join(lines)

    def print_summary(self, print_fn=print):
        """Print `summary()`, line by line, with `print_fn`."""
        for line in self.summary().splitlines():
            print_fn(line)
