"""One registry from Keras layer classes to their sparse counterparts (and back).

`sparsekeras.sparsify` looks a layer's exact class up here; a subclass of a registered Keras
class is not converted (its `call` may differ), and says so in the report. User layers join
through `register` (a Keras class and the sparse class that replaces it), or become prunable
without conversion by subclassing `sparsekeras.layers.Prunable`.
"""
import sys

import keras

__all__ = ["register", "register_when_imported", "lookup", "registered", "sparse_to_keras"]

_SPARSE_OF = {}   # Keras class -> _Entry
_KERAS_OF = {}    # sparse class -> Keras class
_PENDING = []     # (module name, fn): registrations for an optional package, once it is imported


def register_when_imported(module, fn):
    """Call `fn()` (which calls `register`) as soon as `module` has been imported: now if it
    already is, else at the next lookup after it is. Lets a family support an optional package
    (keras_hub) without importing it: a layer of that package can only exist once it has been
    imported, and lookups come after."""
    _PENDING.append((module, fn))
    _run_pending()


def _run_pending():
    for item in list(_PENDING):
        if item[0] in sys.modules:
            _PENDING.remove(item)
            item[1]()


class _Entry:
    def __init__(self, keras_class, sparse_class, convert, check):
        self.keras_class = keras_class
        self.sparse_class = sparse_class
        self.convert = convert
        self.check = check


def register(keras_class, sparse_class, convert=None, check=None):
    """Map `keras_class` to `sparse_class` for `sparsify` (and `sparse_class` back to
    `keras_class` for `densify`).

    Args:
        keras_class: the Keras layer class (matched exactly, not its subclasses).
        sparse_class: the sparse layer class. Unless `convert` is given, it must provide
            `from_keras(layer, **options)` returning a built layer with the same weights.
        convert: optional `fn(layer, **options)` to use instead of `sparse_class.from_keras`.
        check: optional `fn(layer)` returning None if this instance converts, else the reason
            it does not (a string: it appears in sparsify's report).
    """
    if not (isinstance(keras_class, type) and issubclass(keras_class, keras.layers.Layer)):
        raise ValueError(f"Expected a Keras layer class. Received: keras_class={keras_class!r}")
    if not (isinstance(sparse_class, type) and issubclass(sparse_class, keras.layers.Layer)):
        raise ValueError(f"Expected a Keras layer class. Received: sparse_class={sparse_class!r}")
    convert = convert or sparse_class.from_keras
    _SPARSE_OF[keras_class] = _Entry(keras_class, sparse_class, convert, check)
    _KERAS_OF.setdefault(sparse_class, keras_class)
    return sparse_class


def lookup(layer):
    """The registry entry for the exact class of `layer`, or None."""
    _run_pending()
    return _SPARSE_OF.get(type(layer))


def registered():
    """{Keras class: sparse class} of every registered pair."""
    _run_pending()
    return {k: e.sparse_class for k, e in _SPARSE_OF.items()}


def sparse_to_keras(layer):
    """The Keras class a sparse layer's class stands for (walking its bases), or None."""
    _run_pending()
    for cls in type(layer).__mro__:
        if cls in _KERAS_OF:
            return _KERAS_OF[cls]
    return None


def registered_base(layer):
    """The registered Keras class `layer` is a (strict) subclass of, or None."""
    _run_pending()
    for cls in type(layer).__mro__[1:]:
        if cls in _SPARSE_OF:
            return cls
    return None
