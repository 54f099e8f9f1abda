"""Sans-I/O model of what a Linux host does with TCP around close, TIME_WAIT and ephemeral ports.

Nothing here reads a clock, opens a socket or draws unseeded randomness: every entry point takes
`now` (integer nanoseconds, see timewait.units) and randomness comes from a `random.Random`
passed in. Timers are exposed as deadlines (`next_deadline()`), handled by `on_timer(now)`.

Sockets (`connection.Connection`, `minisock.MiniSocket`) return an `outcome.Outcome` from every
call and never touch a table; `host.Host` is the namespace that applies outcomes. `states` holds
the state vocabulary and the kernel's fixed sizes and lengths, `tcp` the rules both kinds of
socket share (PAWS, the out-of-window ACK rate limit).
"""
