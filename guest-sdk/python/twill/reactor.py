"""The reactor: time, Twisted's ``reactor.seconds()`` and ``reactor.callLater``
(:func:`seconds`, :func:`call_later`, :class:`DelayedCall`),
``task.LoopingCall`` (:class:`LoopingCall`) and ``policies.TimeoutMixin``
(:class:`TimeoutMixin`); and outgoing connections, Twisted's
``reactor.connectTCP`` (:func:`connect_tcp`).

A delayed call runs on the instance that scheduled it, never while another
of its callbacks runs, under the same CPU budget as any callback. On an
instance of its own (one per connection, the default) calls die with the
connection; on a shared instance they live as long as the instance.

Example::

    from twill import Protocol
    from twill.reactor import TimeoutMixin, call_later

    class Greeter(Protocol, TimeoutMixin):
        def connection_made(self):
            call_later(0.1, self.transport.write, b"hello\\n")
            self.set_timeout(30)        # drop the client after 30 s of silence

        def data_received(self, data):
            self.reset_timeout()
"""

__all__ = [
    "AlreadyCalled",
    "AlreadyCancelled",
    "Connector",
    "DelayedCall",
    "LoopingCall",
    "TimeoutMixin",
    "call_later",
    "connect_tcp",
    "seconds",
]

import math

_host = None


def _reactor():
    """The imported ``twill:protocol/reactor`` (componentize-py's bindings;
    the unit tests put a fake in its place)."""
    global _host
    if _host is None:
        from wit_world.imports import reactor

        _host = reactor
    return _host


class AlreadyCalled(Exception):
    """The delayed call already ran: Twisted's ``AlreadyCalled``."""


class AlreadyCancelled(Exception):
    """The delayed call was cancelled: Twisted's ``AlreadyCancelled``."""


# The calls not yet run, by token: (function, args, kwargs, DelayedCall).
_calls = {}
_next_token = [1]


def seconds():
    """The reactor's time, in seconds: Twisted's ``reactor.seconds()``.

    Monotonic and only meaningful in differences; under the host's test
    transport a deterministic clock that moves only when the test advances
    it.
    """
    return _reactor().seconds()


def call_later(delay, f, *args, **kwargs):
    """Call ``f(*args, **kwargs)`` once, ``delay`` seconds from now:
    Twisted's ``reactor.callLater``. Returns the :class:`DelayedCall`.

    Dropping the returned object does not cancel the call. A negative
    delay is an error, as in Twisted; the instance may have at most its
    plugin's ``max-timers`` active calls.
    """
    if not delay >= 0:
        raise ValueError("call_later: delay must be >= 0, got %r" % (delay,))
    token = _next_token[0]
    _next_token[0] += 1
    call = DelayedCall(token)
    _calls[token] = (f, args, kwargs, call)
    call._raw = _reactor().call_later(float(delay), token)
    return call


def _fire(token):
    """Runs the call ``token`` stands for (the host's ``timer-fired``)."""
    entry = _calls.pop(token, None)
    if entry is not None:
        f, args, kwargs, call = entry
        call.called = True
        call._release()
        f(*args, **kwargs)


# The factories of connect_tcp's attempts, by token, until their outcome
# ends them (client_connection_failed or client_connection_lost).
_connectors = {}
_next_connect_token = [1]


class Connector:
    """What :func:`connect_tcp` returns: the attempt's ``host`` and
    ``port``, as asked (Twisted's ``IConnector``, without its methods)."""

    __slots__ = ("host", "port")

    def __init__(self, host, port):
        self.host = host
        self.port = port

    def __repr__(self):
        return "Connector(%r, %r)" % (self.host, self.port)


def connect_tcp(host, port, factory, timeout=30.0):
    """Open a TCP connection to ``host``:``port``: Twisted's
    ``reactor.connectTCP(host, port, factory, timeout)``. Returns a
    :class:`Connector`.

    The outcome comes later, to ``factory`` (a :class:`~twill.ClientFactory`
    or any object with ``build_protocol(addr)``): ``build_protocol(addr)``
    once connected (``addr`` is the remote :class:`~twill.Address`; the
    protocol lives on this same instance, so it can hold the transport of
    the connection that asked, and relay), followed by the protocol's own
    callbacks and then ``client_connection_lost(reason)``; or
    ``client_connection_failed(reason)`` (refused, no such name, timed out
    after ``timeout`` seconds, or not allowed by the plugin's ``connect``
    grants). Both hooks are optional. Unlike Twisted, neither
    ``started_connecting`` nor ``start_factory`` is called on ``factory``.

    Raises :class:`~twill.ConnectError` (and nothing follows) if the host
    cannot make the attempt at all: the plugin has no ``connect`` grants in
    plugins.toml, the host is empty or the port 0, or the instance has its
    plugin's ``max-outbound`` connections open or opening already.
    """
    from . import ConnectError, _host_error

    token = _next_connect_token[0]
    _next_connect_token[0] += 1
    _connectors[token] = factory
    try:
        _reactor().connect_tcp(host, port, float(timeout), token)
    except Exception as e:
        del _connectors[token]
        message = _host_error(e)
        if message is None:
            raise
        raise ConnectError(message) from None
    return Connector(host, port)


class DelayedCall:
    """A call scheduled by :func:`call_later`: Twisted's ``IDelayedCall``."""

    def __init__(self, token):
        self._token = token
        self._raw = None
        self._time = 0.0
        #: True once it ran.
        self.called = False
        #: True once it was cancelled.
        self.cancelled = False

    def get_time(self):
        """When it is (or was) due, in :func:`seconds`: ``getTime``."""
        return self._time if self._raw is None else self._raw.get_time()

    def active(self):
        """Whether it neither ran nor was cancelled: ``active``."""
        return not (self.called or self.cancelled)

    def _check(self):
        if self.called:
            raise AlreadyCalled()
        if self.cancelled:
            raise AlreadyCancelled()

    def cancel(self):
        """Cancel it: ``cancel``. Raises :class:`AlreadyCalled` or
        :class:`AlreadyCancelled` if it is no longer active."""
        self._check()
        self._raw.cancel()
        self.cancelled = True
        _calls.pop(self._token, None)
        self._release()

    def _release(self):
        # It ran or was cancelled: keep its time and drop the host's handle
        # now, not when the object is collected (a shared instance's
        # resource table is bounded by max-resources).
        raw, self._raw = self._raw, None
        if raw is not None:
            self._time = raw.get_time()
            raw.__exit__(None, None, None)

    def reset(self, seconds_from_now):
        """Make it due ``seconds_from_now`` from now instead: ``reset``."""
        self._check()
        self._raw.reset(float(seconds_from_now))

    def delay(self, seconds_later):
        """Make it due ``seconds_later`` later than it was: ``delay``."""
        self._check()
        self._raw.delay(float(seconds_later))


class LoopingCall:
    """Call ``f(*args, **kwargs)`` every ``interval`` seconds: Twisted's
    ``task.LoopingCall``.

    A tick that comes late (the instance was busy) runs once, and the next
    is scheduled on the original grid: missed ticks are skipped, as Twisted
    does.
    """

    def __init__(self, f, *args, **kwargs):
        self.f, self.args, self.kwargs = f, args, kwargs
        self.running = False
        self.interval = None
        self.call = None
        self._start_time = None

    def start(self, interval, now=True):
        """Start calling every ``interval`` seconds, first at once if
        ``now`` (else after one interval)."""
        if not interval > 0:
            raise ValueError("LoopingCall: interval must be > 0")
        if self.running:
            raise RuntimeError("LoopingCall: already running")
        self.running = True
        self.interval = interval
        self._start_time = seconds()
        if now:
            self()
        else:
            self._schedule(seconds())

    def stop(self):
        """Stop it: Twisted's ``stop``."""
        if not self.running:
            raise RuntimeError("LoopingCall: not running")
        self.running = False
        if self.call is not None:
            call, self.call = self.call, None
            call.cancel()

    def __call__(self):
        self.call = None
        self.f(*self.args, **self.kwargs)
        if self.running:
            self._schedule(seconds())

    def _schedule(self, now):
        # Twisted's _scheduleFrom: the next point of the grid after now.
        ticks = math.floor((now - self._start_time) / self.interval) + 1
        due = self._start_time + ticks * self.interval
        self.call = call_later(max(0.0, due - now), self)


class TimeoutMixin:
    """Close a connection after a period without activity: Twisted's
    ``policies.TimeoutMixin``. Mix it into a :class:`~twill.Protocol`;
    call :meth:`reset_timeout` on activity."""

    timeOut = None
    _timeout_call = None

    def set_timeout(self, period):
        """Set (or with None, cancel) the timeout, counting from now.
        Returns the previous period."""
        prev, self.timeOut = self.timeOut, period
        if self._timeout_call is not None:
            if self._timeout_call.active():
                self._timeout_call.cancel()
            self._timeout_call = None
        if period is not None:
            self._timeout_call = call_later(period, self.__timed_out)
        return prev

    def reset_timeout(self):
        """Activity: the period starts over (``resetTimeout``)."""
        if self.timeOut is not None and self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.reset(self.timeOut)

    def timeout_connection(self):
        """The period passed: by default, lose the connection
        (``timeoutConnection``)."""
        self.transport.lose_connection()

    def __timed_out(self):
        self._timeout_call = None
        self.timeout_connection()
