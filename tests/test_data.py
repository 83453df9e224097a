"""sparsekeras.data: corpora and scipy.sparse matrices as tf.data pipelines of sparse batches."""
import keras
import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow as tf

import sparsekeras
from sparsekeras import data


def _dense_batches(ds):
    xs, ys = [], []
    for item in ds:
        x, y = item if isinstance(item, tuple) else (item, None)
        assert isinstance(x, tf.SparseTensor)
        xs.append(tf.sparse.to_dense(x).numpy())
        if y is not None:
            ys.append(y.numpy())
    return xs, ys


def test_from_token_ids_counts_binary_and_labels():
    corpus = [[3, 1, 3], [0], [], [4, 4, 4, 2]]
    ds = data.from_token_ids(corpus, vocab_size=5, labels=[1, 0, 1, 0], batch_size=3)
    xs, ys = _dense_batches(ds)
    assert [x.shape for x in xs] == [(3, 5), (1, 5)]
    np.testing.assert_array_equal(np.concatenate(xs), [[0, 1, 0, 2, 0], [1, 0, 0, 0, 0],
                                                       [0] * 5, [0, 0, 1, 0, 3]])
    np.testing.assert_array_equal(np.concatenate(ys), [1, 0, 1, 0])
    assert xs[0].dtype == np.float32
    xs, _ = _dense_batches(data.from_token_ids(corpus, 5, binary=True, batch_size=10,
                                               dtype="float64"))
    np.testing.assert_array_equal(xs[0], [[0, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0] * 5,
                                          [0, 0, 1, 0, 1]])
    assert xs[0].dtype == np.float64


def test_from_scipy_any_format_shuffle_keeps_pairs():
    rng = np.random.default_rng(0)
    m = sp.random_array((23, 40), density=0.2, format="coo", rng=rng)
    y = np.arange(23)
    ds = data.from_scipy(m, y, batch_size=5, shuffle=True, seed=1)
    xs, ys = _dense_batches(ds)
    assert [x.shape[0] for x in xs] == [5, 5, 5, 5, 3]
    order = np.concatenate(ys)
    assert sorted(order.tolist()) == list(range(23)) and order.tolist() != list(range(23))
    np.testing.assert_allclose(np.concatenate(xs), m.toarray()[order].astype(np.float32))
    assert len(list(data.from_scipy(m, batch_size=5, drop_remainder=True))) == 4


def test_from_scipy_sklearn_vectorizers():
    from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer

    texts = ["the cat sat", "the dog ran far", "cats and dogs", ""]
    for vec in (CountVectorizer(), HashingVectorizer(n_features=64)):
        x = vec.fit_transform(texts)
        xs, _ = _dense_batches(data.from_scipy(x, batch_size=4))
        np.testing.assert_allclose(xs[0], x.toarray().astype(np.float32), rtol=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda: data.from_token_ids([[0, 5]], 5), r"token ids must lie in \[0, vocab_size=5\); received 5 in corpus\[0\]"),
    (lambda: data.from_token_ids([[1], [-2]], 5), r"received -2 in corpus\[1\]"),
    (lambda: data.from_token_ids([[1.5]], 5), r"corpus\[0\] must be a sequence of integer token ids"),
    (lambda: data.from_token_ids([[1]], 0), r"Expected a positive integer `vocab_size`. Received: vocab_size=0"),
    (lambda: data.from_token_ids([[1], [2]], 5, labels=[1]), r"labels must have one entry per row \(2\); received labels of shape \(1,\)"),
    (lambda: data.from_scipy(sp.eye(3), batch_size=0), r"Received: batch_size=0"),
    (lambda: data.from_scipy(sp.eye(3), labels=np.ones(4)), r"one entry per row \(3\)"),
])
def test_bad_input_is_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_from_scipy_rejects_dense():
    with pytest.raises(TypeError, match="matrix must be a 2-D scipy.sparse matrix or array; received ndarray"):
        data.from_scipy(np.eye(3))


@pytest.mark.parametrize("source", ["token_ids", "scipy"])
def test_fit_on_sparse_datasets(source):
    """A keras.Input(sparse=True) + SparseDense model trains and predicts on both pipelines."""
    rng = np.random.default_rng(0)
    vocab = 60
    labels = rng.integers(0, 2, 80)
    # class 1 documents use the upper half of the vocabulary more: learnable
    corpus = [rng.integers(vocab // 2 * c, vocab // 2 * (c + 1), rng.integers(1, 9)).tolist()
              for c in labels]
    if source == "token_ids":
        ds = data.from_token_ids(corpus, vocab, labels=labels, batch_size=16, shuffle=True, seed=0)
        x_pred = data.from_token_ids(corpus, vocab, batch_size=16)
    else:
        m = data.token_ids_to_scipy(corpus, vocab)
        ds = data.from_scipy(m, labels, batch_size=16, shuffle=True, seed=0)
        x_pred = data.from_scipy(m, batch_size=16)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((vocab,), sparse=True)
    h = sparsekeras.layers.SparseDense(8, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy", metrics=["accuracy"])
    hist = model.fit(ds, epochs=15, verbose=0, shuffle=False)  # the dataset shuffles
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert hist.history["accuracy"][-1] > 0.9
    assert model.predict(x_pred, verbose=0).shape == (80, 1)
