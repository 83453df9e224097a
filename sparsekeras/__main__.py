"""Command line: `python -m sparsekeras demo` (or the `sparsekeras` console script).

  demo     prune a 64-2048-2048-10 MLP to 90% during model.fit on scikit-learn's digits, strip
           it, and compare accuracy, size and latency with the dense network (plus a plot);
           `demo --cnn` does the same for a small CNN whose convolutions are pruned to 80%;
           `demo --rigl` trains the MLP sparse from the first step with RigL instead and
           compares accuracy, sparsity and training time with the same network trained dense
  kernels  time the sparse kernel against dense and scipy products on a 4096 x 4096 layer
  info     print the build: version, SIMD path, thread count
"""
import argparse
import sys


def info():
    import sparsekeras
    from sparsekeras import _kernels

    print(f"sparsekeras {sparsekeras.__version__}")
    print(f"  kernels: {_kernels.__file__}")
    print(f"  SIMD path: {_kernels.isa()} (CPU supports: {', '.join(_kernels.available_isas())})")
    print(f"  threads: {sparsekeras.get_num_threads()}")


def kernels(args):
    """A 4096 x 4096 layer at several sparsities, batch 256: sparse kernel vs dense vs scipy."""
    import numpy as np
    import scipy.sparse as sp

    import sparsekeras
    from sparsekeras import linalg
    from sparsekeras._demo import _median_ms

    info()
    rng = np.random.default_rng(0)
    n_in = n_out = args.size
    batch = args.batch
    x = rng.standard_normal((batch, n_in), dtype=np.float32)
    print(f"\nY = X @ W, X: {batch} x {n_in} float32, W: {n_in} x {n_out} with random sparsity; "
          f"median of {args.repeats} runs\n")
    header = (f"{'sparsity':>8} {'nnz':>9} {'dense np':>10} {'scipy':>10} {'sparsekeras':>12} "
              f"{'vs dense':>9} {'vs scipy':>9} {'max err':>9}")
    print(header)
    print("-" * len(header))
    for s in args.sparsity:
        w = sp.random_array((n_in, n_out), density=1.0 - s, format="csc", dtype=np.float32, rng=rng)
        w_dense = w.toarray()
        w_csr = sp.csr_matrix(w)
        t_dense = _median_ms(lambda: x @ w_dense, args.repeats)
        t_scipy = _median_ms(lambda: x @ w_csr, args.repeats)
        t_sk = _median_ms(lambda: linalg.matmul(x, w), args.repeats)
        err = float(np.abs(linalg.matmul(x, w) - x @ w_dense).max())
        print(f"{s:>8.2f} {w.nnz:>9d} {t_dense:>8.2f}ms {t_scipy:>8.2f}ms {t_sk:>10.2f}ms "
              f"{t_dense / t_sk:>8.1f}x {t_scipy / t_sk:>8.1f}x {err:>9.1e}", flush=True)
    print(f"\n{sparsekeras.get_num_threads()} threads. Benchmarks against TensorFlow: "
          "benchmarks/bench_matmul.py")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="sparsekeras", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from sparsekeras._version import __version__  # no TensorFlow import for --version

    parser.add_argument("--version", action="version", version=f"sparsekeras {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="prune a network during fit and compare it with the dense one")
    p_demo.add_argument("--hidden", type=int, default=2048, help="hidden layer width")
    p_demo.add_argument("--epochs-dense", type=int, default=15)
    p_demo.add_argument("--epochs-prune", type=int, default=25)
    p_demo.add_argument("--sparsity", type=float, default=0.9, help="target sparsity")
    p_demo.add_argument("--block", type=int, default=1,
                        help="prune in (1, BLOCK) blocks (e.g. 8: faster sparse layers)")
    p_demo.add_argument("--out", default=".", help="folder for the plot")
    p_demo.add_argument("--quick", action="store_true", help="a small, fast run (CI)")
    p_demo.add_argument("--cnn", action="store_true",
                        help="prune a small CNN's convolutions instead (default sparsity 0.8)")
    p_demo.add_argument("--rigl", action="store_true",
                        help="train the MLP sparse from the first step with RigL (--sparsity, "
                             "--epochs-prune epochs) next to the same MLP trained dense")
    p_kernels = sub.add_parser("kernels", help="kernel speed demonstration")
    p_kernels.add_argument("--size", type=int, default=4096)
    p_kernels.add_argument("--batch", type=int, default=256)
    p_kernels.add_argument("--repeats", type=int, default=9)
    p_kernels.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95, 0.99])
    sub.add_parser("info", help="print build information")
    args = parser.parse_args(argv)
    if args.command == "info":
        info()
    elif args.command == "kernels":
        kernels(args)
    else:
        from sparsekeras import _demo

        if args.rigl and args.cnn:
            parser.error("demo: --rigl and --cnn are separate demos; pick one")
        if args.rigl:
            if args.quick:
                _demo.run_rigl(hidden=256, epochs=3, target=args.sparsity, update_every=10,
                               out_dir=args.out, verbose=2, block=args.block)
            else:
                _demo.run_rigl(hidden=args.hidden, epochs=args.epochs_prune, target=args.sparsity,
                               out_dir=args.out, block=args.block)
        elif args.cnn:
            target = 0.8 if args.sparsity == 0.9 and "--sparsity" not in (argv or sys.argv) else args.sparsity
            if args.quick:
                _demo.run_cnn(width=16, epochs_dense=2, epochs_prune=3, target=target, repeats=3,
                              verbose=2)
            else:
                _demo.run_cnn(target=target)
        elif args.quick:
            _demo.run(hidden=256, epochs_dense=3, epochs_prune=4, target=args.sparsity,
                      repeats=5, out_dir=args.out, verbose=2, block=args.block)
        else:
            _demo.run(hidden=args.hidden, epochs_dense=args.epochs_dense,
                      epochs_prune=args.epochs_prune, target=args.sparsity, out_dir=args.out,
                      block=args.block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
