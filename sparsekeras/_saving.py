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
    """Whether the layer is one of sparsekeras' own (a marked layer is not: it is the user's)."""
    return (type(layer).__module__.startswith("sparsekeras.")
            and not isinstance(layer, _Sparsified))


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


def records(owner):
    """[(steps from owner, sparse layer)] for each sparsekeras layer under `owner` that code
    (owner's, or a block's inside it; not a Functional/Sequential config) would recreate as a
    plain Keras layer. sparsekeras' own layers make their sublayers themselves: not entered."""
    out = []

    def visit(layer, steps, code_built):
        for child in _tree.children(layer):
            step = _step(layer, child)
            if step is None:
                continue  # not reachable by an attribute: Keras would not save it either
            path = steps + [step]
            inside_code = code_built or not _config_built(layer)
            if _own_module(child):
                if inside_code:
                    out.append((path, child))
                continue
            visit(child, path, inside_code)

    visit(owner, [], not _config_built(owner))
    return out


def _apply(owner, entries, custom_objects=None):
    """Put the recorded sparse layers back at their paths under `owner` (built)."""
    holders = _tree.holders_of(owner)
    for entry in entries:
        steps = entry["path"]
        parent = owner
        for step in steps[:-1]:
            parent = _follow(parent, step)
        old = _follow(parent, steps[-1])
        spec = entry["layer"]
        if type(old).__name__ == spec.get("class_name") and _own_module(old):
            continue  # already sparse (its parent made it so)
        new = keras.saving.deserialize_keras_object(spec, custom_objects=custom_objects)
        _tree.replace_layer(parent, old, new, holders)


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
        return {"layer": inner,
                "sparse_layers": [{"path": path, "layer": keras.saving.serialize_keras_object(layer)}
                                  for path, layer in found]}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        layer = keras.saving.deserialize_keras_object(config["layer"],
                                                      custom_objects=custom_objects)
        entries = config["sparse_layers"]
        object.__setattr__(layer, "__class__", _subclass(type(layer)))
        if layer.built:
            _apply(layer, entries, custom_objects)
            mark_tree(layer)
        else:  # its sublayers are made when it is built (by a call in the model's graph)
            object.__setattr__(layer, "_sk_pending", (entries, custom_objects))
        return layer

    def _post_build(self):
        super()._post_build()
        pending = self.__dict__.pop("_sk_pending", None)
        if pending is not None:
            _apply(self, *pending)
            mark_tree(self)


object_registration.GLOBAL_CUSTOM_OBJECTS[_REGISTERED_NAME] = _Sparsified


def _subclass(base):
    sub = _SUBCLASSES.get(base)
    if sub is None:
        sub = type(base.__name__, (_Sparsified, base), {"__module__": __name__,
                                                         "__qualname__": base.__qualname__})
        object_registration.GLOBAL_CUSTOM_NAMES[sub] = _REGISTERED_NAME
        _SUBCLASSES[base] = sub
    return sub


def is_marked(layer):
    return isinstance(layer, _Sparsified)


def unmark(layer):
    if is_marked(layer):
        object.__setattr__(layer, "__class__", type(layer).__mro__[2])


def _layers_under(root):
    """root and every layer under it, not entering sparsekeras' own layers."""
    out = [root]
    for child in _tree.children(root):
        if _own_module(child):
            continue
        out.extend(_layers_under(child))
    return out


def mark_tree(root):
    """Give every layer under `root` (root included) that makes sparse sublayers' places in
    code the saving subclass, and take it away from those that no longer hold any. Each marked
    layer records its whole subtree, so it saves right wherever it is put (the root of a model,
    or a layer of a new Functional model built on the old one's tensors)."""
    for layer in _layers_under(root):
        unmark(layer)
        if not _config_built(layer) and not _own_module(layer) and records(layer):
            object.__setattr__(layer, "__class__", _subclass(type(layer)))
    return root


mark = mark_tree
