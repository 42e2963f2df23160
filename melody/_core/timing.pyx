# cython: language_level=3
"""Handler timing in C: a histogram whose counts are C fields, and a wrapper that times a
synchronous handler into one.

One of the engine's C kernels (with ``mask``, ``utf8`` and ``deflate``); ``timing.py`` is its
short Python version, ``timing.pyi`` documents both. What ``melody.metrics`` records per handler
call (``melody_handler_seconds``): the call through the wrapper (one argument tuple, the one
the caller built), two reads of the monotonic clock (a vDSO call on Linux, no Python call), a
bucket search over a few doubles and three C increments. No lock: a hub's handlers run on its
one loop. Read at scrape time with ``Histogram.snapshot``.
"""

cdef extern from *:
    """
    #ifdef _WIN32
    #include <windows.h>
    static double melody_monotonic(void) {
        LARGE_INTEGER frequency, counter;
        QueryPerformanceFrequency(&frequency);
        QueryPerformanceCounter(&counter);
        return (double)counter.QuadPart / (double)frequency.QuadPart;
    }
    #else
    #include <time.h>
    static double melody_monotonic(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }
    #endif
    """
    double melody_monotonic() noexcept nogil

# Room for the buckets' bounds (melody.metrics uses 19).
cdef enum:
    MAX_BOUNDS = 32


def monotonic() -> float:
    """The clock the wrapper reads, in seconds (only differences mean anything)."""
    return melody_monotonic()


cdef class Histogram:
    """Counts of durations per bucket (``bounds``: upper bounds in seconds, increasing, at most
    32; one bucket more for what is past the last), their sum, and the calls that raised."""

    cdef double _bounds[MAX_BOUNDS]
    cdef unsigned long long _counts[MAX_BOUNDS + 1]
    cdef Py_ssize_t _size
    cdef double _total
    cdef unsigned long long _errors
    cdef readonly tuple bounds

    def __init__(self, bounds):
        cdef list values = [float(b) for b in bounds]
        cdef Py_ssize_t i
        if not values or values != sorted(values) or len(values) > MAX_BOUNDS:
            raise ValueError("bounds must be a non-empty increasing sequence of at most 32")
        self._size = len(values)
        for i in range(self._size):
            self._bounds[i] = values[i]
        for i in range(self._size + 1):
            self._counts[i] = 0
        self._total = 0.0
        self._errors = 0
        self.bounds = tuple(values)

    cdef inline void add(self, double seconds) noexcept:
        cdef Py_ssize_t i = 0
        # Linear: a handful of compares, most calls end in the first buckets.
        while i < self._size and seconds > self._bounds[i]:
            i += 1
        self._counts[i] += 1
        self._total += seconds

    def observe(self, double seconds) -> None:
        """Count one duration of ``seconds``."""
        self.add(seconds)

    def failed(self) -> None:
        """Count one call that raised."""
        self._errors += 1

    def snapshot(self):
        """(counts per bucket, not cumulative; sum of the durations; errors), copied."""
        cdef Py_ssize_t i
        return [self._counts[i] for i in range(self._size + 1)], self._total, self._errors


cdef class Timed:
    """``fn`` (a synchronous handler) timed into ``histogram``: its result is ``fn``'s; an
    exception from ``fn`` is counted in ``histogram.errors`` (unless it is an instance of
    ``ignored``: a refusal, not a failure) and re-raised."""

    cdef readonly object fn
    cdef readonly Histogram histogram
    cdef readonly tuple ignored

    def __init__(self, fn, Histogram histogram, tuple ignored=()):
        self.fn = fn
        self.histogram = histogram
        self.ignored = ignored

    def __call__(self, *args):
        cdef double start = melody_monotonic()
        try:
            result = self.fn(*args)  # compiled as one PyObject_Call with the caller's tuple
        except BaseException as exc:
            self.histogram.add(melody_monotonic() - start)
            if not isinstance(exc, self.ignored):
                self.histogram._errors += 1
            raise
        self.histogram.add(melody_monotonic() - start)
        return result
