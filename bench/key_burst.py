#!/usr/bin/env python3
"""Key-burst latency of the console, through a pseudo-terminal at 160x48: the plan editor is
opened, then a burst of N keys is written at once (N-1 letters and a final marker, as a paste or
key repeat delivers them), and the time until the marker is drawn is measured. p50/p99 over
TRIALS bursts each of 100 and 1,000 keys; each binary in turn, in one run.

    python3 bench/key_burst.py TRIALS BIN [BIN ...]

A burst that has not shown after TIMEOUT seconds is reported as such (the console before the
fix took each key after a 250 ms wait).
"""

import fcntl
import os
import pty
import select
import struct
import sys
import tempfile
import termios
import time

TRIALS = int(sys.argv[1])
BINS = [os.path.abspath(b) for b in sys.argv[2:]]
TIMEOUT = 60.0


def spawn(binary, home):
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["SLAYER_HOME"] = home
        os.environ["NO_COLOR"] = "1"
        os.execv(binary, [binary, "--device", "cpu"])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 48, 160, 0, 0))
    return pid, fd


def read_until(fd, marker, timeout):
    """Reads the terminal until `marker` appears; returns the seconds it took, or None."""
    start = time.monotonic()
    seen = b""
    while time.monotonic() - start < timeout:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                seen += os.read(fd, 1 << 16)
            except OSError:
                return None
            if marker in seen:
                return time.monotonic() - start
            seen = seen[-4096:]
    return None


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def measure(binary):
    home = tempfile.mkdtemp()
    os.makedirs(os.path.join(home, "experiments"))
    with open(os.path.join(home, "experiments", "x.toml"), "w") as f:
        f.write('name = "x"\n[model]\nbase = "m"\n[plan]\npreset = "slayer"\n')
    pid, fd = spawn(binary, home)
    read_until(fd, b"lineage", 30)
    os.write(fd, b"\r")
    read_until(fd, b"x.toml", 30)
    time.sleep(0.5)
    results = {}
    for n in (100, 1000):
        times, missed = [], 0
        for trial in range(TRIALS):
            marker = f"Q{n}T{trial}Q".encode()
            burst = b"\r" + b"a" * (n - 1 - len(marker)) + marker
            start = time.monotonic()
            os.write(fd, burst)
            took = read_until(fd, marker, TIMEOUT)
            if took is None:
                missed += 1
                break
            times.append(time.monotonic() - start)
            time.sleep(0.2)
        results[n] = (times, missed)
    os.write(fd, b"\x1b")
    time.sleep(0.2)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return results


for binary in BINS:
    for n, (times, missed) in measure(binary).items():
        if times:
            line = (f"p50 {percentile(times, 50) * 1e3:.0f} ms, p99 {percentile(times, 99) * 1e3:.0f} ms"
                    f" over {len(times)} bursts")
        else:
            line = "no burst finished"
        if missed:
            line += f"; a burst had not shown after {TIMEOUT:.0f} s"
        print(f"{binary}: {n:>5} keys: {line}")
