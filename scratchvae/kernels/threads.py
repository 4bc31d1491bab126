"""How many threads a training step uses: measured while training, not guessed.

A step that splits its work evenly over T threads is as slow as its slowest
thread. On a quiet machine every core helps; with a busy neighbour on one
core, the thread that shares it runs at half speed and the whole step waits
for it: on 2 cores, 2 threads then trained at 0.56-0.62x the speed of 1
thread (batch 128 and 1024). A machine's load changes while a run trains,
so the count is chosen by timing steps, not once.

:class:`ThreadTuner` does it from the training loop: before each step it
sets the thread count, after it records the step's time per example. It
times a few steps at the current count and at its neighbours (half and
twice, within 1..``max_threads``), keeps the fastest, and measures again
when steps grow slower by ``slowdown`` or after ``period`` seconds spent
in steps (time between them, an evaluation or another system's turn in a
benchmark, says nothing about how fast steps run, so it does not count).
The loop only tunes a backend whose results do not depend on the thread
count (``RESULTS_INDEPENDENT_OF_THREADS`` in its module, see
:func:`scratchvae.kernels.thread_tuner`): switching then changes how fast
a step runs, never a number it computes.
"""
from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager
from statistics import median
from typing import Callable, Dict, List


class ThreadTuner:
    """Chooses, step by step, the thread count that trains fastest now.

    ``set_threads(n)``: applies a count (e.g. ``numba.set_num_threads``).
    ``max_threads``: the most it may use. ``probe_steps``: steps timed per
    candidate in one measurement; ``warmup``: first steps not timed (they
    compile); ``period`` (seconds spent in steps) and ``slowdown`` (a
    ratio): when to measure again. ``clock`` is for tests. Use::

        with tuner.step(len(x)):
            ...one training step on x...

    :attr:`threads` is the count chosen (the steps of a measurement try
    its neighbours too); :attr:`log` holds one
    ``(threads, {count: median seconds per example})`` per measurement.
    """

    def __init__(self, max_threads: int, set_threads: Callable[[int], None], *, probe_steps: int = 3,
                 warmup: int = 2, period: float = 10.0, slowdown: float = 1.25,
                 clock: Callable[[], float] = time.perf_counter):
        if int(max_threads) < 1:
            raise ValueError(f"max_threads must be >= 1, got {max_threads!r}")
        self.max_threads, self.set_threads, self.clock = int(max_threads), set_threads, clock
        self.probe_steps, self.warmup, self.period, self.slowdown = probe_steps, warmup, period, slowdown
        self.threads = self.max_threads
        self.log: List[tuple] = []
        self._plan: List[int] = []                  # the counts of the probe steps still to run
        self._times: Dict[int, List[float]] = {}
        self._recent: deque = deque(maxlen=probe_steps)
        self._best = None                           # seconds per example of self.threads when measured
        self._stepped = 0.0                         # seconds spent in steps so far
        self._measured_at = None                    # ... when the last measurement ended
        self._t0 = None
        set_threads(self.threads)

    def candidates(self) -> List[int]:
        """The counts one measurement compares: the current one, half and twice it."""
        return sorted({self.threads, max(1, self.threads // 2), min(self.max_threads, 2 * self.threads)},
                      reverse=True)

    def describe(self) -> str:
        """One line for a user: the count chosen, of how many, and from how many measurements."""
        n = len(self.log)
        how = f"chosen by timing steps ({n} measurement{'s' if n != 1 else ''})" if n else "not measured"
        return f"{self.threads} of {self.max_threads}, {how}"

    @contextmanager
    def step(self, examples: int):
        """Around one training step of ``examples`` examples (a step that raises is not timed)."""
        self._begin()
        yield
        self._end(examples)

    def _begin(self) -> None:
        if self.max_threads > 1 and not self.warmup and not self._plan and self._due():
            # the candidates take turns, so a change of load mid-measurement hits each alike
            self._plan = self.candidates() * self.probe_steps
            self._times = {}
        if self._plan:
            self.set_threads(self._plan[0])
        self._t0 = self.clock()

    def _end(self, examples: int) -> None:
        elapsed = self.clock() - self._t0
        self._stepped += elapsed
        seconds = elapsed / max(examples, 1)
        if self.warmup:
            self.warmup -= 1
        elif self._plan:
            self._times.setdefault(self._plan.pop(0), []).append(seconds)
            if not self._plan:
                self._choose()
        else:
            self._recent.append(seconds)

    def _due(self) -> bool:
        if self._best is None or self._stepped - self._measured_at >= self.period:
            return True
        full = len(self._recent) == self._recent.maxlen
        return full and median(self._recent) > self.slowdown * self._best

    def _choose(self) -> None:
        medians = {n: median(t) for n, t in self._times.items()}
        self.threads = min(medians, key=lambda n: (medians[n], n))
        self.set_threads(self.threads)
        self._best, self._measured_at = medians[self.threads], self._stepped
        self._recent.clear()
        self.log.append((self.threads, medians))

