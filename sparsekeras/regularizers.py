"""Regularizers for sparse representations.

`KLSparsity` is the classic sparse-autoencoder penalty (Ng, "Sparse autoencoder", CS294A notes):
each unit's mean activation over the batch, rho_hat_j, is pulled towards a small target rho by
beta * sum_j KL(rho || rho_hat_j). Use it as a layer's `activity_regularizer`, on activations in
(0, 1) (sigmoid units).
"""
import keras
from keras import ops

__all__ = ["KLSparsity"]


@keras.saving.register_keras_serializable(package="sparsekeras")
class KLSparsity(keras.regularizers.Regularizer):
    """Activity regularizer: beta * sum_j KL(rho || mean activation of unit j).

    KL(rho || q) = rho log(rho / q) + (1 - rho) log((1 - rho) / (1 - q)), with q clipped to
    [epsilon, 1 - epsilon]. The mean runs over every axis but the last (batch and, for rank > 2,
    positions).

    Args:
        rho: target mean activation, in (0, 1). Default 0.05.
        beta: weight of the penalty, >= 0. Default 1.0.
        epsilon: clipping of the mean activation, for finite logs.

    Example:
        >>> encoder = keras.layers.Dense(
        ...     64, activation="sigmoid",
        ...     activity_regularizer=sparsekeras.regularizers.KLSparsity(rho=0.05, beta=3.0))
    """

    def __init__(self, rho=0.05, beta=1.0, epsilon=1e-6):
        if not 0.0 < float(rho) < 1.0:
            raise ValueError(f"Expected `rho` in (0, 1). Received: rho={rho}")
        if float(beta) < 0.0:
            raise ValueError(f"Expected `beta` >= 0. Received: beta={beta}")
        if not 0.0 < float(epsilon) < 0.5:
            raise ValueError(f"Expected `epsilon` in (0, 0.5). Received: epsilon={epsilon}")
        self.rho = float(rho)
        self.beta = float(beta)
        self.epsilon = float(epsilon)

    def __call__(self, x):
        x = ops.convert_to_tensor(x)
        axes = tuple(range(len(x.shape) - 1))
        q = ops.clip(ops.mean(x, axis=axes), self.epsilon, 1.0 - self.epsilon)
        rho = self.rho
        kl = rho * ops.log(rho / q) + (1.0 - rho) * ops.log((1.0 - rho) / (1.0 - q))
        return self.beta * ops.sum(kl)

    def get_config(self):
        return {"rho": self.rho, "beta": self.beta, "epsilon": self.epsilon}
