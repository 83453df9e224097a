"""Swapping a trainable variable in a built Keras optimizer (for SparseDense.compact/decompact).

A compacted `SparseDense` trains a 1-D `values` variable (its nonzeros) in place of its dense
kernel: the optimizer then updates nnz weights instead of input_dim x units. A built optimizer
holds per-variable state (Adam's moments, an EMA, gradient accumulators) in lists indexed like
its trainable variables; `swap_variable` replaces the kernel by the values variable at the same
index and converts each of its state variables (gathered on the pattern, or scattered back), so
training continues exactly where it was: for an elementwise optimizer, the update of a kept
weight depends only on that weight's own gradient and state.
"""
import numpy as np
import keras

__all__ = ["ELEMENTWISE_OPTIMIZERS", "check_optimizer", "swap_variable"]

# Keras optimizers whose update is elementwise (each weight's update reads only its own gradient
# and state), so that a kernel's state restricted to its nonzeros is the state of those weights.
# Muon, Adafactor (factored second moments) and LAMB (per-variable trust ratio) are not.
ELEMENTWISE_OPTIMIZERS = (
    keras.optimizers.SGD, keras.optimizers.Adam, keras.optimizers.AdamW,
    keras.optimizers.Adamax, keras.optimizers.Nadam, keras.optimizers.RMSprop,
    keras.optimizers.Adagrad, keras.optimizers.Adadelta, keras.optimizers.Lion,
    keras.optimizers.Ftrl)


def _chain(optimizer):
    """The optimizer and the ones it wraps (LossScaleOptimizer.inner_optimizer), outermost first."""
    chain = []
    while optimizer is not None and optimizer not in chain:
        chain.append(optimizer)
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return chain


def check_optimizer(optimizer):
    """Raise ValueError unless `optimizer` (or the one a LossScaleOptimizer wraps) is elementwise."""
    base = _chain(optimizer)[-1]
    if not isinstance(base, ELEMENTWISE_OPTIMIZERS):
        names = ", ".join(c.__name__ for c in ELEMENTWISE_OPTIMIZERS)
        raise ValueError(
            "Compaction needs an elementwise optimizer (its state of the kept weights must not "
            f"depend on the pruned ones): one of {names}. Received: optimizer={type(base).__name__}")


def _index_by_identity(items, value):
    for i, item in enumerate(items):
        if item is value:
            return i
    return -1


def swap_variable(optimizer, old, new, convert):
    """In every built optimizer of the chain that trains `old`, train `new` in its place.

    Each state variable of `old` (a list entry at old's index, of old's shape) is replaced by a
    state variable of `new`, valued `convert(old state as a NumPy array)`, at the same position
    of the optimizer's variables, so that a checkpoint of the optimizer keeps its layout. An
    unbuilt optimizer needs nothing (it builds on the model's trainable variables). Returns the
    number of state variables converted.
    """
    converted = 0
    for opt in _chain(optimizer):
        if not getattr(opt, "built", False):
            continue
        indices = opt._trainable_variables_indices
        key = opt._var_key(old)
        if key not in indices:
            continue
        idx = indices.pop(key)
        indices[opt._var_key(new)] = idx
        if _index_by_identity(opt._trainable_variables, old) == idx:
            opt._trainable_variables[idx] = new
        n_trainable = len(opt._trainable_variables)
        prefix = old.path.replace("/", "_") + "_" if hasattr(old, "path") else ""
        for attr_name, attr in list(vars(opt).items()):
            if attr_name in ("_variables", "_trainable_variables") or not isinstance(attr, list):
                continue
            if len(attr) != n_trainable:
                continue
            slot = attr[idx]
            if (not isinstance(slot, keras.Variable) or slot is old or slot is new
                    or tuple(slot.shape) != tuple(old.shape)):
                continue
            suffix = slot.name[len(prefix):] if prefix and slot.name.startswith(prefix) else "slot"
            new_slot = opt.add_variable_from_reference(new, name=suffix)  # appended to _variables
            new_slot.assign(np.asarray(convert(keras.ops.convert_to_numpy(slot)),
                                       dtype=np.dtype(new_slot.dtype)))
            attr[idx] = new_slot
            variables = opt._variables
            position = _index_by_identity(variables, slot)
            if position >= 0:
                variables.pop(_index_by_identity(variables, new_slot))
                variables[position] = new_slot
                opt._tracker.stored_ids["variables"].discard(id(slot))
            converted += 1
    return converted
