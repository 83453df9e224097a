"""Saving models whose sparse layers sit inside layers that build their own sublayers.

A Functional or Sequential model serializes every layer's class and config, so a `SparseDense`
in its graph comes back as a `SparseDense`. A layer that makes its sublayers in code (a user's
custom block, a keras_hub `TransformerEncoder` or `BertBackbone`, whose configs hold only
constructor arguments) makes plain Keras sublayers again when it is loaded, and the weights
saved by the sparse ones no longer fit them.

So when `sparsify`, `strip` or `compact` leave sparse layers under such a layer, the model's
class is given a thin subclass (same name, same behaviour) whose config carries, besides the
original config, each such sparse layer's serialized form and its path in the layer tree. Loading
(`keras.saving.load_model` after `import sparsekeras`) rebuilds the original model, puts the
sparse layers back at their paths, and Keras then loads the weights as usual. The loaded model
has the subclass again, so it saves the same way.
"""
import keras
from keras.src.saving import object_registration

from sparsekeras import _tree

__all__ = ["mark", "unmark", "is_marked"]

_REGISTERED_NAME = "sparsekeras>Sparsified"
_SUBCLASSES = {}


def _config_built(layer):
    """Whether `layer` serializes its sublayers' classes (Functional, Sequential exactly)."""
    from keras.src.models.functional import Functional

    return type(layer) in (Functional, keras.Sequential)


def _own_module(layer):
    return type(layer).__module__.startswith("sparsekeras.")


def _step(parent, child):
    """How to reach `child` from `parent`: ["layer", name] in a graph model, ["attr", key] or
    ["attr", key, index] for an attribute (or an element of a list/dict attribute)."""
    if hasattr(parent, "_operations") and any(op is child for op in parent._operations):
        return ["layer", child.name]
    for key, value in vars(parent).items():
        if key.startswith("_inbound") or key.startswith("_outbound") or key in ("_layers",):
            continue
        if value is child:
            return ["attr", key]
        if isinstance(value, dict):
            for k, v in value.items():
                if v is child and isinstance(k, str):
                    return ["attr", key, k]
        elif isinstance(value, (list, tuple)) or hasattr(value, "_storage"):
            for i, v in enumerate(getattr(value, "_storage", value)):
                if v is child:
                    return ["attr", key, i]
    return None


def _follow(parent, step):
    if step[0] == "layer":
        for op in parent._operations:
            if getattr(op, "name", None) == step[1]:
                return op
        raise ValueError(f"no layer {step[1]!r} in {parent.name!r}")
    value = getattr(parent, step[1])
    if len(step) == 3:
        value = getattr(value, "_storage", value)[step[2]]
    return value


def records(root):
    """[(steps from root, sparse layer)] for each sparsekeras layer that a layer building its
    own sublayers (not a Functional/Sequential) would recreate as a plain Keras layer."""
    out = []

    def visit(layer, steps, code_built):
        for child in _tree.children(layer):
            step = _step(layer, child)
            if step is None:
                continue  # not reachable by an attribute: Keras would not save it either
            path = steps + [step]
            inside_code = code_built or not _config_built(layer)
            if _own_module(child) and inside_code:
                out.append((path, child))
            visit(child, path, inside_code)

    visit(root, [], False)
    return out


class _Sparsified:
    """The mixin of the thin subclasses (see the module docstring)."""

    def get_config(self):
        base = type(self).__mro__[2]  # (subclass, _Sparsified, original class, ...)
        cls = type(self)
        object.__setattr__(self, "__class__", base)
        try:
            inner = keras.saving.serialize_keras_object(self)
            # The outer config carries the compile config (load_model(compile=False) drops it
            # there only).
            inner.pop("compile_config", None)
            found = records(self)
        finally:
            object.__setattr__(self, "__class__", cls)
        return {"model": inner,
                "sparse_layers": [{"path": path, "layer": keras.saving.serialize_keras_object(layer)}
                                  for path, layer in found]}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        model = keras.saving.deserialize_keras_object(config["model"],
                                                      custom_objects=custom_objects)
        for entry in config["sparse_layers"]:
            steps = entry["path"]
            parent = model
            for step in steps[:-1]:
                parent = _follow(parent, step)
            old = _follow(parent, steps[-1])
            spec = entry["layer"]
            if type(old).__name__ == spec.get("class_name") and _own_module(old):
                continue  # its parent already made it sparse (e.g. SparseMultiHeadAttention)
            new = keras.saving.deserialize_keras_object(spec, custom_objects=custom_objects)
            _tree.replace_layer(parent, old, new)
        mark(model)
        return model


object_registration.GLOBAL_CUSTOM_OBJECTS[_REGISTERED_NAME] = _Sparsified


def _subclass(base):
    sub = _SUBCLASSES.get(base)
    if sub is None:
        sub = type(base.__name__, (_Sparsified, base), {"__module__": __name__,
                                                         "__qualname__": base.__qualname__})
        object_registration.GLOBAL_CUSTOM_NAMES[sub] = _REGISTERED_NAME
        _SUBCLASSES[base] = sub
    return sub


def is_marked(model):
    return isinstance(model, _Sparsified)


def unmark(model):
    if is_marked(model):
        object.__setattr__(model, "__class__", type(model).__mro__[2])


def mark(model):
    """Give `model` the saving subclass if it holds sparse layers that its own code would
    recreate as plain ones on loading (and take it away when it holds none)."""
    unmark(model)
    if records(model):
        object.__setattr__(model, "__class__", _subclass(type(model)))
    return model
