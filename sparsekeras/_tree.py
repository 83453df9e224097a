"""Walking a Keras model's layer tree and replacing one layer by another in place, wherever it
is referenced: a Functional graph (its nodes and their output tensors), a Sequential's layer
list, an attribute of any layer (MultiHeadAttention's projections, a user's custom layer, a
keras_hub encoder block), lists and dicts held in attributes, and Keras' tracking lists.

This is what lets `sparsify`, `strip` and `densify` reach nested layers, and match weights by
the path of each layer in the tree (never by position in a flattened list).
"""
import keras

from sparsekeras._compact import replace_in_list

__all__ = ["walk", "replace_layer", "holders_of", "copy_model"]


def children(layer):
    """The direct sublayers of `layer`, in Keras' tracking order."""
    return list(layer._flatten_layers(include_self=False, recursive=False))


def walk(root):
    """Yield (parent, layer, path) for every layer under `root` (depth first, each layer once;
    a shared layer is reported at its first path). path is '/'-joined layer names."""
    seen = set()

    def visit(parent, prefix):
        for child in children(parent):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}/{child.name}" if prefix else child.name
            yield parent, child, path
            yield from visit(child, path)

    yield from visit(root, "")


def _is_graph(model):
    return hasattr(model, "_operations") and hasattr(model, "_nodes_by_depth")


def _rewire_graph(fn, old, new):
    """Make the graph of the Functional `fn` call `new` where it called `old`."""
    from keras.src.ops.node import KerasHistory

    if not any(op is old for op in fn._operations):
        return False
    nodes = list(old._inbound_nodes)
    for node in nodes:
        node.operation = new
        for t in node.outputs:
            h = getattr(t, "_keras_history", None)
            if h is not None and h.operation is old:
                t._keras_history = KerasHistory(new, h.node_index, h.tensor_index)
    new._inbound_nodes = nodes
    new._outbound_nodes = list(getattr(old, "_outbound_nodes", []))
    # The graph's set of node keys names each call by id(operation) (make_node_key).
    keys = getattr(fn, "_nodes", None)
    if isinstance(keys, set):
        prefix = f"{id(old)}_ib-"
        for key in [k for k in keys if isinstance(k, str) and k.startswith(prefix)]:
            keys.discard(key)
            keys.add(f"{id(new)}_ib-{key[len(prefix):]}")
    _replace_in_container(fn._operations, old, new)
    for ops in getattr(fn, "_operations_by_depth", {}).values():
        _replace_in_container(ops, old, new)
    return True


def _replace_in_container(value, old, new):
    """Replace `old` by `new` (by identity) inside a list/tuple/dict attribute value; returns
    the value to store (a new tuple for tuples) and whether anything changed."""
    # The base classes' methods: Keras' tracked containers would track `new` again (and refuse
    # to, once the layer is built).
    if isinstance(value, dict):
        changed = False
        for k, v in list(value.items()):
            if v is old:
                dict.__setitem__(value, k, new)
                changed = True
        return value, changed
    if isinstance(value, tuple):
        if any(v is old for v in value):
            return tuple(new if v is old else v for v in value), True
        return value, False
    if hasattr(value, "_storage"):  # TensorFlow's ListWrapper: the change is acknowledged
        changed = False
        while any(v is old for v in value._storage):
            changed |= replace_in_list(value, old, new)
        return value, changed
    if isinstance(value, list):
        changed = False
        for i, v in enumerate(value):
            if v is old:
                list.__setitem__(value, i, new)
                changed = True
        return value, changed
    return value, False


def replace_layer(parent, old, new, holders=None):
    """Put `new` where `old` is in `parent` (attributes, containers in attributes, tracking
    lists, and the graph when parent is a Functional or Sequential model), and in every other
    layer `holders` (from `holders_of`) names as holding it: a layer shared between blocks,
    such as a tied embedding that a backbone looks up and a task's head calls again, would
    otherwise stay in the model beside its replacement (its weights tracked, trained by
    nothing). Raises if `old` is not found."""
    found = _replace_in(parent, old, new)
    for other in (holders or {}).get(id(old), ()):
        if other is not parent:
            found |= _replace_in(other, old, new)
    if not found:
        raise ValueError(f"cannot find layer {old.name!r} inside {parent.name!r} to replace it")


def _items(value):
    if isinstance(value, dict):
        return list(value.values())
    if hasattr(value, "_storage"):
        return list(value._storage)
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def holders_of(root):
    """{id(layer): [the layers and models under `root` (root too) that hold it in an
    attribute, a container in an attribute or their graph]}, for `replace_layer`."""
    out = {}
    for holder in [root] + [layer for _, layer, _ in walk(root)]:
        values = [v for k, v in vars(holder).items()
                  if k not in ("_inbound_nodes", "_outbound_nodes")]
        functional = getattr(holder, "_functional", None)
        if functional is not None and _is_graph(functional):
            values.append(functional._operations)
        for value in values:
            for item in _items(value):
                if isinstance(item, keras.layers.Layer) and item is not holder:
                    held = out.setdefault(id(item), [])
                    if not any(h is holder for h in held):
                        held.append(holder)
    return out


def _replace_in(parent, old, new):
    """Put `new` where `old` is in `parent`; whether it was there."""
    found = False
    if _is_graph(parent):
        found |= _rewire_graph(parent, old, new)
    functional = getattr(parent, "_functional", None)
    if functional is not None and _is_graph(functional):
        found |= _rewire_graph(functional, old, new)
    for key, value in list(vars(parent).items()):
        if key in ("_inbound_nodes", "_outbound_nodes"):
            continue
        if value is old:
            object.__setattr__(parent, key, new)
            found = True
        elif isinstance(value, (list, tuple, dict)) or hasattr(value, "_storage"):
            stored, changed = _replace_in_container(value, old, new)
            if changed:
                if stored is not value:
                    object.__setattr__(parent, key, stored)
                found = True
    tracker = getattr(parent, "_tracker", None)
    if tracker is not None:
        ids = tracker.stored_ids.get("layers")
        if ids is not None and id(old) in ids:
            ids.discard(id(old))
            ids.add(id(new))
    return found


def copy_model(model, what="sparsify"):
    """An independent copy of `model` (layers, weights, nested structure), made the way Keras
    saves and loads it, so that every layer and weight keeps its path. Not compiled."""
    import os
    import tempfile
    import warnings

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        try:
            with warnings.catch_warnings():
                # Keras' own writer (h5py on a variable's __array__) warns on NumPy 2; the copy
                # is ours, not the user's save.
                warnings.simplefilter("ignore", DeprecationWarning)
                # Without the optimizer's state: the copy is not compiled, and a model that
                # compiles itself when made (keras_hub's tasks: a fresh optimizer, unbuilt)
                # would refuse a built optimizer's saved state.
                optimizer = model.__dict__.get("optimizer")
                if optimizer is not None:
                    object.__setattr__(model, "optimizer", keras.optimizers.Adam())
                try:
                    model.save(path)
                finally:
                    if optimizer is not None:
                        object.__setattr__(model, "optimizer", optimizer)
                copy = keras.saving.load_model(path, compile=False)
        except Exception as e:  # noqa: BLE001  (any serialization failure: say what to do)
            raise ValueError(
                f"cannot copy model {model.name!r} ({type(model).__name__}) through Keras "
                f"serialization ({type(e).__name__}: {e}). Convert it in place instead: "
                f"{what}(model, inplace=True)") from e
    return copy
