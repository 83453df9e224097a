// Shared by the op kernels of sparsekeras (sparsekeras_ops.cc, conv_ops.cc): the process-wide
// thread budget, CSR structure validation with messages that name the argument and the value.
#ifndef SPARSEKERAS_OP_COMMON_H
#define SPARSEKERAS_OP_COMMON_H

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <cstdint>
#include <initializer_list>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "sparsekeras_kernels.h"
#include "tensorflow/core/framework/device_base.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/blocking_counter.h"
#include "tensorflow/core/platform/logging.h"
#include "tensorflow/core/platform/threadpool.h"
#include "tensorflow/core/util/overflow.h"

namespace sparsekeras {

using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;

// ---- threads ------------------------------------------------------------------------------

// Kernel threads in use by ops of this library right now, across all TensorFlow threads: an op
// takes what is left of the budget (at least one), so concurrent ops never oversubscribe.
inline std::atomic<int> g_active_threads{0};

// Work (multiply-adds, as ThreadLease is given) below which an op runs on its calling thread.
// The kernels' own threshold (sk_threads_for_work: 2e5, an OpenMP fork/join of ~10 us) holds
// for a team whose workers are spinning. An op called from TensorFlow mostly finds them asleep:
// after a Python gap (eager, a new step) or other ops, libgomp's throttled spin (more threads
// than CPUs once TensorFlow's pools exist) sends them to sleep within microseconds. Waking one
// costs a futex wake on an idle machine (~50 us) and a scheduler time slice on a busy one: the
// SparseLSTM input projection (512 x 64 @ 64 x 512 at 90%, 1.7e6 multiply-adds) made its
// layer's forward 36.7 ms against 8.7 ms with one thread, in tf.function, at load ~5 on the
// 2-core development machine (docs/performance.md, whole models). Below ~4e6 multiply-adds
// (~0.1 ms on one core) a second thread saves less than a wake-up can cost.
// SPARSEKERAS_OP_PARALLEL_MIN_WORK (an integer >= 0, read once) sets another bound.
inline constexpr int64_t kOpParallelMinWork = int64_t{1} << 22;

inline int64_t OpParallelMinWork() {
  static const int64_t value = [] {
    const char* env = std::getenv("SPARSEKERAS_OP_PARALLEL_MIN_WORK");
    if (env == nullptr || *env == '\0') return kOpParallelMinWork;
    char* end = nullptr;
    long long v = std::strtoll(env, &end, 10);
    if (end == env || *end != '\0' || v < 0) {
      LOG(WARNING) << "sparsekeras: ignoring SPARSEKERAS_OP_PARALLEL_MIN_WORK=" << env
                   << " (expected an integer >= 0); using " << kOpParallelMinWork;
      return kOpParallelMinWork;
    }
    return static_cast<int64_t>(v);
  }();
  return value;
}

class ThreadLease {
 public:
  ThreadLease(OpKernelContext* ctx, int64_t work) {
    int want = work < OpParallelMinWork() ? 1 : sk_threads_for_work(work);
    int budget = sk_get_num_threads();
    if (!sk_num_threads_is_set()) {
      // Default: the intra-op parallelism TensorFlow was configured with.
      const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
      if (workers != nullptr && workers->num_threads > 0) {
        budget = std::min(budget, workers->num_threads);
        want = std::min(want, budget);
      }
    }
    int before = g_active_threads.fetch_add(want);
    n_ = std::max(1, std::min(want, budget - before));
    if (n_ != want) g_active_threads.fetch_sub(want - n_);
  }
  ~ThreadLease() { g_active_threads.fetch_sub(n_); }
  int n() const { return n_; }

 private:
  int n_;
};

// Which threads an op's rows run on when it takes more than one (SPARSEKERAS_OP_POOL, read
// once): "tensorflow" (default) splits the batch rows of x @ W and dy @ W^T into one
// single-threaded kernel call per thread on TensorFlow's intra-op pool; "openmp" gives the
// whole op to the kernel's own OpenMP team. Why: in a model, TensorFlow's own ops (attention,
// LayerNorm, softmax) run on its intra-op pool, whose threads spin after each op and are awake
// when ours starts; a libgomp team beside them is a second set of threads on the same cores,
// its worker asleep after those ops (or spinning against theirs). Measured (bench_models, BERT-
// like encoder, same build, the two settings alternating): predict_on_batch b8 1.59x -> 1.73x
// dense unstructured, 1.91x -> 2.16x in (1, 8) blocks; compacted training 1.40x -> 1.62x.
// Convolutions keep their OpenMP team: split over images on the pool, the CNNs' inference did
// not move and their training steps ran 1.6-2.5x slower.
inline bool OpUsesTfPool() {
  static const bool value = [] {
    const char* env = std::getenv("SPARSEKERAS_OP_POOL");
    if (env == nullptr || *env == '\0') return true;
    const std::string v(env);
    if (v == "tensorflow") return true;
    if (v == "openmp") return false;
    LOG(WARNING) << "sparsekeras: ignoring SPARSEKERAS_OP_POOL=" << env
                 << " (expected \"tensorflow\" or \"openmp\"); using \"tensorflow\"";
    return true;
  }();
  return value;
}

// Runs fn(lo, hi, n_threads) -> int (0: success) over rows [0, rows). With one thread, the
// "openmp" pool, !split (the caller's judgment: splitting rows would not pay), or fewer than
// 2 * grain rows: one call fn(0, rows, threads). Otherwise
// min(threads, rows / grain) calls of at least `grain` rows each, one on the calling thread
// and the others on TensorFlow's intra-op pool, each with one kernel thread. The kernels give
// bitwise-identical rows for any split of the rows (each output row is computed alone), so
// the result does not depend on the path. Returns the first non-zero code, else 0.
template <typename F>
int RunRows(OpKernelContext* ctx, int threads, int64_t rows, int64_t grain, bool split, F fn) {
  const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  grain = std::max<int64_t>(grain, 1);
  if (!split || threads <= 1 || !OpUsesTfPool() || workers == nullptr || workers->workers == nullptr ||
      rows < 2 * grain) {
    return fn(int64_t{0}, rows, threads);
  }
  const int64_t units = rows / grain;
  const int parts = static_cast<int>(std::min<int64_t>(threads, units));
  VLOG(1) << "sparsekeras: " << rows << " rows in " << parts << " parts on the intra-op pool";
  std::atomic<int> rc{0};
  auto run = [&](int p) {
    const int64_t lo = units * p / parts * grain;
    const int64_t hi = p + 1 == parts ? rows : units * (p + 1) / parts * grain;
    const int r = fn(lo, hi, 1);
    if (r != 0) rc.store(r);
  };
  ::tensorflow::BlockingCounter done(parts - 1);
  for (int p = 1; p < parts; ++p) {
    workers->workers->Schedule([&run, &done, p] {
      run(p);
      done.DecrementCount();
    });
  }
  run(0);
  done.Wait();
  return rc.load();
}

// Structure checks read every index once: worth two threads only on large patterns.
inline int CheckThreads(int64_t nnz) { return sk_threads_for_work(nnz / 8); }
inline int CsrCheck(int64_t m, int64_t n, int64_t nnz, const int32_t* ip, const int32_t* ix,
                    int64_t* where) {
  return sk_csr_check_i32(m, n, nnz, ip, ix, where, CheckThreads(nnz));
}
inline int CsrCheck(int64_t m, int64_t n, int64_t nnz, const int64_t* ip, const int64_t* ix,
                    int64_t* where) {
  return sk_csr_check_i64(m, n, nnz, ip, ix, where, CheckThreads(nnz));
}
// ---- overflow-safe sizes ------------------------------------------------------------------

// "[a, b, ...]" for a message.
inline std::string Dims(std::initializer_list<int64_t> dims) {
  std::string s = "[";
  bool first = true;
  for (int64_t d : dims) {
    absl::StrAppend(&s, first ? "" : ", ", d);
    first = false;
  }
  return s + "]";
}

// The shape of an output computed from input values. TensorShape's constructor CHECK-fails (the
// process aborts) on a negative size or more than 2**63 - 1 elements; this returns an
// InvalidArgumentError that names the output and the arguments it comes from (`from`).
inline absl::Status OutputShape(std::initializer_list<int64_t> dims, const char* output,
                                const std::string& from, ::tensorflow::TensorShape* shape) {
  int64_t elements = 1;
  bool ok = true;
  for (int64_t d : dims) {
    if (d < 0) ok = false;
    // Sizes after a zero still have to be valid, but the product is 0 then.
    if (ok && elements != 0) {
      int64_t e = ::tensorflow::MultiplyWithoutOverflow(elements, d);
      if (e < 0) ok = false;
      elements = e;
    }
  }
  if (ok && ::tensorflow::TensorShape::BuildTensorShape(dims, shape).ok()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      output, " would have shape ", Dims(dims), " (from ", from,
      "): more than 2**63 - 1 elements or a negative size; check the sizes of the arguments"));
}

// a * b for non-negative sizes, or -1 if it does not fit in int64.
inline int64_t MulSize(int64_t a, int64_t b) { return ::tensorflow::MultiplyWithoutOverflow(a, b); }

// a * b + c * d for thread-count heuristics: saturates instead of overflowing.
inline int64_t WorkOf(int64_t a, int64_t b, int64_t c = 0, int64_t d = 0) {
  const int64_t kMax = std::numeric_limits<int64_t>::max();
  int64_t x = MulSize(a, b), y = MulSize(c, d);
  if (x < 0 || y < 0 || x > kMax - y) return kMax;
  return x + y;
}

// ---- validation ---------------------------------------------------------------------------

struct CsrDims {
  int64_t rows = 0;  // rows of the CSR structure (columns of W for a CSC operand)
  int64_t cols = 0;
  int64_t nnz = 0;
};

// Checks dense_shape, lengths and the CSR structure. `name` names the operand in messages;
// `csc` means the structure is the CSC form of a dense_shape = [K, N] matrix; `block` > 1 (with
// csc) the block-CSC form: one structure row per group of `block` columns, `block` values per
// stored index (dims->rows is then the number of groups, dims->nnz the number of blocks).
template <typename I>
absl::Status ValidateCsr(const Tensor& indptr, const Tensor& indices, const Tensor* values,
                         const Tensor& dense_shape, const char* name, bool csc, CsrDims* dims,
                         int64_t block = 1) {
  if (dense_shape.dims() != 1 || dense_shape.NumElements() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ".dense_shape must be a vector of 2 sizes; received shape ",
        dense_shape.shape().DebugString()));
  }
  auto ds = dense_shape.flat<int64_t>();
  if (ds(0) < 0 || ds(1) < 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ".dense_shape must be non-negative; received [",
                                                   ds(0), ", ", ds(1), "]"));
  }
  dims->rows = csc ? ds(1) : ds(0);
  dims->cols = csc ? ds(0) : ds(1);
  if (block < 1) {
    return absl::InvalidArgumentError(absl::StrCat("block must be >= 1; received block=", block));
  }
  if (block > 1) {
    if (ds(1) % block != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ".dense_shape[1] must be a multiple of block=", block, "; received [", ds(0),
          ", ", ds(1), "]"));
    }
    dims->rows = ds(1) / block;
  }
  // NumElements() - 1 >= -1: no overflow, where rows + 1 overflows for rows = 2**63 - 1.
  if (indptr.dims() != 1 || indptr.NumElements() - 1 != dims->rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ".indptr must be a vector of ", static_cast<uint64_t>(dims->rows) + 1,
        " entries for dense_shape [", ds(0),
        ", ", ds(1), "]",
        block > 1 ? absl::StrCat(" (block-CSC: one per group of ", block, " columns, plus one)")
                  : std::string(csc ? " (CSC: one per column, plus one)" : ""),
        "; received shape ", indptr.shape().DebugString()));
  }
  if (indices.dims() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(name, ".indices must be a vector; received shape ",
                                                   indices.shape().DebugString()));
  }
  dims->nnz = indices.NumElements();
  const int64_t n_values = MulSize(dims->nnz, block);
  if (n_values < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ".indices has ", dims->nnz, " blocks of block=", block,
        " values each: more than 2**63 - 1 values"));
  }
  if (values != nullptr && (values->dims() != 1 || values->NumElements() != n_values)) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ".values must be a vector with ",
        block > 1 ? absl::StrCat(block, " entries per index (", n_values, ")")
                  : absl::StrCat("one entry per index (", dims->nnz, ")"),
        "; received shape ", values->shape().DebugString()));
  }
  const I* ip = indptr.flat<I>().data();
  const I* ix = indices.flat<I>().data();
  int64_t where = 0;
  int rc = CsrCheck(dims->rows, dims->cols, dims->nnz, ip, ix, &where);
  switch (rc) {
    case 0:
      return absl::OkStatus();
    case 1:
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": malformed CSR: indptr[0] must be 0; received indptr[0]=", ip[0]));
    case 2:
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": malformed CSR: indptr[-1] must equal the number of stored entries (", dims->nnz,
          "); received indptr[-1]=", ip[where]));
    case 3:
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": malformed CSR: indptr must be non-decreasing; received indptr[", where, "]=",
          ip[where], " < indptr[", where - 1, "]=", ip[where - 1]));
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": malformed CSR: indices must lie in [0, ", dims->cols, "); received indices[",
          where, "]=", ix[where]));
  }
}

// Registers the CPU kernel class (a template-id; commas allowed) of op "SparseKeras>" name for
// value type T (attr "T") and index type I (attr "Tindex").
#define SK_REGISTER_CPU_TI(name, T, I, ...)                                               \
  REGISTER_KERNEL_BUILDER(Name("SparseKeras>" name)                                       \
                              .Device(::tensorflow::DEVICE_CPU)                           \
                              .TypeConstraint<T>("T")                                     \
                              .TypeConstraint<I>("Tindex"),                               \
                          __VA_ARGS__)

inline absl::Status Allocation(const char* op) {
  return absl::ResourceExhaustedError(absl::StrCat(op, ": could not allocate kernel scratch memory"));
}

// ---- the fused epilogue ------------------------------------------------------------------

// The fused epilogue of the *BiasAct ops and CsrConv2DBiasAct: attr "activation" and the bias
// input (N values or none), checked against the product's N columns (a convolution's output
// channels).
class Epilogue {
 public:
  explicit Epilogue(OpKernelConstruction* ctx) {
    std::string activation;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("activation", &activation));
    act_ = activation == "relu"    ? SK_ACT_RELU
           : activation == "gelu"  ? SK_ACT_GELU
           : activation == "relu6" ? SK_ACT_RELU6
                                   : SK_ACT_LINEAR;
  }
  // The bias pointer (nullptr: none), or an error naming the bias and the columns expected.
  template <typename T>
  absl::Status Bias(const Tensor& bias, int64_t n, const T** out) const {
    if (bias.dims() != 1 || (bias.dim_size(0) != 0 && bias.dim_size(0) != n)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bias must be a vector of ", n, " entries (one per output column or channel) or "
          "empty (no bias); received shape ", bias.shape().DebugString()));
    }
    *out = bias.dim_size(0) == 0 ? nullptr : bias.flat<T>().data();
    return absl::OkStatus();
  }
  int act() const { return act_; }

 private:
  int act_ = SK_ACT_LINEAR;
};

}  // namespace sparsekeras

#endif  // SPARSEKERAS_OP_COMMON_H
