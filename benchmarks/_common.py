"""Helpers shared by the benchmark scripts: thread setup, machine info, idle detection.

Imported as a sibling module (the scripts run as files, so their folder is on sys.path).
"""
import os
import platform
import sys
import time

TF_THREADS = 2


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def setup_tf():
    """Import TensorFlow and pin its thread pools before any op runs."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(TF_THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def busy_cpu_s():
    """(CPU seconds used by the whole machine, by this process) so far."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        busy = (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    except (OSError, ValueError):
        busy = float("nan")
    t = os.times()
    return busy, t.user + t.system


def wait_idle(max_wait_s):
    """Wait (up to max_wait_s) until other processes use < 0.1 CPU over a 1 s sample."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        b0, o0 = busy_cpu_s()
        time.sleep(1.0)
        b1, o1 = busy_cpu_s()
        other = (b1 - b0) - (o1 - o0)
        if other < 0.1 or time.perf_counter() > deadline:
            return other
        log(f"  machine busy (other processes use {other:.2f} CPUs); waiting...")
