"""Swapping a trainable variable in a built Keras optimizer (for SparseDense.compact/decompact).

A compacted `SparseDense` trains a 1-D `values` variable (its nonzeros) in place of its dense
kernel: the optimizer then updates nnz weights instead of input_dim x units. A built optimizer
holds per-variable state (Adam's moments, an EMA, gradient accumulators) in lists indexed like
its trainable variables; `swap_variable` replaces the kernel by the values variable at the same
index and converts each of its state variables (gathered on the pattern, or scattered back), so
training continues exactly where it was: for an elementwise optimizer, the update of a kept
weight depends only on that weight's own gradient and state. The optimizer then saves and loads
that state in the kernel's layout, so its checkpoints are those of the uncompacted model.
"""
import types
import weakref

import numpy as np
import keras
from keras.src.utils import tracking

__all__ = ["ELEMENTWISE_OPTIMIZERS", "base_optimizer", "check_optimizer", "dense_from_values",
           "replace_in_list", "swap_variable"]

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


def base_optimizer(optimizer):
    """The optimizer a LossScaleOptimizer (or a chain of wrappers) wraps; itself otherwise."""
    return _chain(optimizer)[-1] if optimizer is not None else None


def check_optimizer(optimizer):
    """Raise ValueError unless `optimizer` (or the one a LossScaleOptimizer wraps) is
    elementwise."""
    base = base_optimizer(optimizer)
    if not isinstance(base, ELEMENTWISE_OPTIMIZERS):
        names = ", ".join(c.__name__ for c in ELEMENTWISE_OPTIMIZERS)
        raise ValueError(
            "Compaction needs an elementwise optimizer (its state of the kept weights must not "
            f"depend on the pruned ones): one of {names}. "
            f"Received: optimizer={type(base).__name__}")


def _index_by_identity(items, value):
    for i, item in enumerate(items):
        if item is value:
            return i
    return -1


def replace_in_list(items, old, new):
    """Replace `old` (by identity) by `new` in `items`, in place; with new=None, remove it.

    A list that Keras/TensorFlow auto-tracking wrapped (a `ListWrapper`) refuses to be saved
    once an element was replaced: tracking by position assumes append-only lists, so that a
    checkpoint can be restored as objects are created. Here positions are kept (the new
    variable takes the old one's place, in the optimizer's variables and its restored copy
    alike), so the change is made in the wrapped list and acknowledged as the new state."""
    storage = getattr(items, "_storage", items)
    position = _index_by_identity(storage, old)
    if position < 0:
        return False
    if new is None:
        del storage[position]
    else:
        storage[position] = new
    if hasattr(items, "_update_snapshot"):
        items._update_snapshot()
    return True


def dense_from_values(values, positions, shape):
    """The array of `shape` holding `values` (NumPy, 1-D) at the flat `positions`, zeros
    elsewhere: a compacted kernel (or its optimizer state) in the kernel's layout."""
    flat = np.zeros(int(np.prod(shape)), dtype=values.dtype)
    flat[positions] = values
    return flat.reshape(shape)


# optimizer -> {id(state variable of a compacted layer's values): (variable, positions, dense
# shape)}: how the optimizer saves that state (scattered into the kernel's shape) and loads it.
_DENSE_LAYOUT = weakref.WeakKeyDictionary()


def _save_dense_layout(optimizer, store):
    """Optimizer.save_own_variables, writing the state of compacted values in the kernel's
    layout (zeros off the pattern): the file is the one an uncompacted model writes."""
    views = _DENSE_LAYOUT.get(optimizer, {})
    for i, variable in enumerate(optimizer.variables):
        entry = views.get(id(variable))
        if entry is None or entry[0] is not variable:
            store[str(i)] = variable.numpy()
        else:
            _, positions, shape = entry
            store[str(i)] = dense_from_values(variable.numpy(), positions, shape)


def _load_dense_layout(optimizer, store):
    """Optimizer.load_own_variables, reading the state of compacted values from the kernel's
    layout (see _save_dense_layout)."""
    views = _DENSE_LAYOUT.get(optimizer, {})
    variables = optimizer.variables
    if len(store.keys()) != len(variables):
        return type(optimizer).load_own_variables(optimizer, store)  # Keras' own message
    for i, variable in enumerate(variables):
        entry = views.get(id(variable))
        value = store[str(i)]
        if entry is not None and entry[0] is variable:
            _, positions, shape = entry
            value = np.asarray(value).reshape(-1)[positions]
        variable.assign(value)


def _use_dense_layout(optimizer):
    """Route the optimizer's save/load through the dense layout (once per optimizer)."""
    if optimizer.__dict__.get("_sk_dense_layout"):
        return
    # object.__setattr__: past Keras' and TensorFlow's attribute tracking (methods hold no state).
    object.__setattr__(optimizer, "save_own_variables",
                       types.MethodType(_save_dense_layout, optimizer))
    object.__setattr__(optimizer, "load_own_variables",
                       types.MethodType(_load_dense_layout, optimizer))
    object.__setattr__(optimizer, "_sk_dense_layout", True)


def swap_variable(optimizer, old, new, convert, dense_layout=None):
    """In every built optimizer of the chain that trains `old`, train `new` in its place.

    Each state variable of `old` (a list entry at old's index, of old's shape) is replaced by a
    state variable of `new`, valued `convert(old state as a NumPy array)`, at the same position
    of the optimizer's variables. dense_layout=(positions, dense shape): `new` holds the values
    of a kernel at those flat positions; the optimizer then saves and loads the new state in
    the kernel's layout, so that its checkpoints are those of the uncompacted model. An
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
        # `del` and item assignment, not `pop`: the dict is TensorFlow's `_DictWrapper`, which
        # sees only mutations made through its own methods (`pop` goes straight to the wrapped
        # dict) and, after one it did not see, refuses to be saved (`model.export`, SavedModel).
        idx = indices[key]
        del indices[key]
        indices[opt._var_key(new)] = idx
        # A list or a (wrapped) tuple, as the optimizer was built: rebuilt, not mutated, and
        # outside Keras' tracking (as in Optimizer.build: else its variables would be added to
        # the optimizer's own).
        with tracking.DotNotTrackScope():
            opt._trainable_variables = [new if v is old else v for v in opt._trainable_variables]
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
            replace_in_list(attr, slot, new_slot)
            for o in _chain(optimizer):
                views = _DENSE_LAYOUT.setdefault(o, {})
                views.pop(id(slot), None)
                if dense_layout is not None:
                    views[id(new_slot)] = (new_slot, dense_layout[0], tuple(dense_layout[1]))
                    _use_dense_layout(o)
            # add_variable appended new_slot to the optimizer's variables: move it to the old
            # slot's position (the layout of the optimizer's saved state).
            if _index_by_identity(opt._variables, slot) >= 0:
                replace_in_list(opt._variables, new_slot, None)
                replace_in_list(opt._variables, slot, new_slot)
                opt._tracker.stored_ids["variables"].discard(id(slot))
            converted += 1
    return converted
