"""Normalization layers of stripped models.

- `FusedLayerNormalization`: `keras.layers.LayerNormalization` computed by one compiled op
  (`sparsekeras.ops.layer_norm`) when it normalizes over the last axis. Keras' layer runs as ten
  TensorFlow ops, each a pass over the whole activation (~0.26 ms a layer on a BERT encoder's
  8 x 128 x 256 floats, about as long as one of its pruned projections); the op makes one pass
  with each row in L1. `sparsekeras.strip` puts it in place of every LayerNormalization
  (`fuse_layernorm=True`, the default); `sparsekeras.densify` puts the Keras layer back. It is
  not a sparse layer: it has no mask and nothing to prune.
"""
import keras
import tensorflow as tf

from sparsekeras import ops as sk_ops
from sparsekeras.layers._base import build_like, copy_weights

__all__ = ["FusedLayerNormalization"]


@keras.saving.register_keras_serializable(package="sparsekeras")
class FusedLayerNormalization(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` with the same arguments, weights and outputs (within
    float rounding), computed by one compiled op when it normalizes over the last axis alone
    and `rms_scaling=False`; any other configuration runs Keras' own computation.

    Example:
        >>> import keras, numpy as np
        >>> from sparsekeras.layers import FusedLayerNormalization
        >>> ln = FusedLayerNormalization(epsilon=1e-6)
        >>> ln(np.ones((2, 3, 8), "float32")).shape
        (2, 3, 8)
    """

    def _fused(self, x):
        axes = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        rank = x.shape.rank
        return (not getattr(self, "rms_scaling", False) and rank is not None and len(axes) == 1
                and int(axes[0]) % rank == rank - 1)

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        if not self._fused(x):
            return super().call(inputs)
        y = sk_ops.layer_norm(x, self.gamma, self.beta, epsilon=self.epsilon)
        return tf.cast(y, self.compute_dtype)

    @classmethod
    def from_keras(cls, layer):
        """A built FusedLayerNormalization with `layer`'s configuration and weights."""
        return _twin(cls, layer)

    def to_keras(self):
        """The `keras.layers.LayerNormalization` with this configuration and these weights."""
        return _twin(keras.layers.LayerNormalization, self)


def _twin(cls, layer):
    """A `cls` with `layer`'s configuration, built as it is, holding its weights (by path)."""
    twin = build_like(cls.from_config(layer.get_config()), layer)
    if layer.built:
        copy_weights(layer, twin)
    return twin
