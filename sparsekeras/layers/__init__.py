"""Sparse Keras 3 layers: drop-ins for Keras layers that own their pruning masks.

One module per layer family (`dense`, `conv`, ...), the machinery every prunable layer shares
in `_base`, and the registry `sparsify` uses (Keras class -> sparse class) in `_registry`.

Every layer is a registered Keras serializable: a saved `.keras` file loads after
`import sparsekeras`.
"""
import keras

from sparsekeras.layers._base import (  # noqa: F401  (private names kept for their users)
    AUTO_BLOCK_MAX_FILL, AUTO_BLOCKS, DEFAULT_SWITCH_SPARSITY, SPARSE_INPUT_SWITCH_SPARSITY,
    MaskTarget, NotConvertible, Prunable, _MaskConstraint, _PrunableKernel, _dynamic_variable,
    _pop_unsupported, _resolve_block, _structure_from_mask)
from sparsekeras.layers._registry import register
from sparsekeras.layers.dense import CompactDense, SparseDense
from sparsekeras.layers.conv import (CompactConv2D, DEFAULT_CONV_SWITCH_SPARSITY, SparseConv2D,
                                     SparseDepthwiseConv2D)
from sparsekeras.layers import attention as _attention, embedding as _embedding, rnn as _rnn
from sparsekeras.layers import conv as _conv, norm as _norm
from sparsekeras.layers.attention import *  # noqa: F401,F403
from sparsekeras.layers.embedding import *  # noqa: F401,F403
from sparsekeras.layers.rnn import *  # noqa: F401,F403
from sparsekeras.layers.conv import *  # noqa: F401,F403
from sparsekeras.layers.norm import *  # noqa: F401,F403

__all__ = ["SparseDense", "CompactDense", "SparseConv2D", "SparseDepthwiseConv2D",
           "CompactConv2D", "Prunable", "MaskTarget", "register",
           "DEFAULT_SWITCH_SPARSITY", "SPARSE_INPUT_SWITCH_SPARSITY", "AUTO_BLOCKS",
           "AUTO_BLOCK_MAX_FILL", "DEFAULT_CONV_SWITCH_SPARSITY"]
__all__ += [name for module in (_conv, _attention, _embedding, _rnn, _norm)
            for name in module.__all__
            if name not in __all__]
