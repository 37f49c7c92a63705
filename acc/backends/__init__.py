"""Compile, time and benchmark: everything that runs TVM."""

from acc.backends.host_threads import configure_tvm_threads

# Before any TVM kernel runs here or in a child process (see host_threads).
configure_tvm_threads()
