"""Runnable experiment scripts: ``python -m experiments.cifar``, ``python -m experiments.mnist``
and the tools beside them.

Run as a command (``python -m experiments.X``), Ctrl-C outside the training steps (imports,
loading data, building and compiling, the final report) stops the process at once with one
line and exit status 130: the default handler raises ``KeyboardInterrupt`` wherever Python is,
and JAX runs Python callbacks (garbage collection of XLA objects) whose exceptions are printed
and dropped, so a Ctrl-C there was swallowed and the run trained on. While training, the loop's
:class:`~symog_jax.training.interrupt.DeferredInterrupt` takes over (stop after the step) and
puts this handler back afterwards. Only the standard library is imported here: the handler is
in place before JAX is imported.
"""

import os
import signal
import sys
import threading


def _exit_on_interrupt(signum, frame):
    print("\ninterrupted (Ctrl-C) outside the training steps: stopped at once; files already "
          "written, checkpoints included, are kept", file=sys.stderr, flush=True)
    os._exit(130)


# "-m" is sys.argv[0] while ``python -m`` imports the module's package (not under pytest).
if sys.argv[:1] == ["-m"] and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, _exit_on_interrupt)
