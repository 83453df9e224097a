"""Layers for the model-conversion tests: a registered custom block that makes its own Dense
sublayers in code (as keras_hub's blocks do), and a user layer that joins pruning through the
`sparsekeras.layers.Prunable` protocol. A module of its own so that a fresh process loading a
saved model can import it (with or without sparsekeras)."""
import keras


@keras.saving.register_keras_serializable(package="convert_blocks")
class Block(keras.layers.Layer):
    """x -> LayerNorm(x + proj(ffn(x))): two Dense sublayers made in __init__."""

    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.ffn = keras.layers.Dense(units * 2, activation="relu", name="ffn")
        self.proj = keras.layers.Dense(units, name="proj")
        self.norm = keras.layers.LayerNormalization(name="norm")

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.ffn.build(input_shape)
        self.proj.build(input_shape[:-1] + (self.units * 2,))
        self.norm.build(input_shape[:-1] + (self.units,))

    def call(self, x):
        return self.norm(x + self.proj(self.ffn(x)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="convert_blocks")
class OwnWeights(keras.layers.Layer):
    """A layer with its own weight matrix and no sparse counterpart."""

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), name="w")

    def call(self, x):
        return keras.ops.matmul(x, self.w)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def prunable_scale():
    """A user layer declaring its prunable weights (sparsekeras imported only here)."""
    import sparsekeras

    @keras.saving.register_keras_serializable(package="convert_blocks")
    class PrunableScale(sparsekeras.layers.Prunable, keras.layers.Layer):
        def __init__(self, units=6, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], self.units), name="w")
            self.b = self.add_weight(shape=(self.units,), name="b", initializer="zeros")

        def call(self, x):
            return keras.ops.matmul(x, self.w) + self.b

        def get_prunable_weights(self):
            return [self.w]

        def get_config(self):
            return {**super().get_config(), "units": self.units}

    return PrunableScale
