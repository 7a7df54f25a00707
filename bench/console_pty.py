#!/usr/bin/env python3
"""The console in a pseudo-terminal, measured in one run at 80x24 and 160x48:

- bytes written to the terminal per second while idle, on every screen (must be 0: the
  experiments, the runs table with a live and a stopped run, the monitor of the stopped run,
  chat, study), and while a run streams 10 step events per second (a synthetic run appended to
  by this script);
- drawing time per frame, p50/p99 (from the console's own frame log);
- key-to-screen latency, p50/p99 (a key that changes the screen, to the first byte back);
- CPU used while idle.

    python3 bench/console_pty.py target/release/slayer [SECONDS]
"""

import json
import os
import pty
import select
import signal
import struct
import sys
import tempfile
import termios
import fcntl
import threading
import time

BIN = os.path.abspath(sys.argv[1])
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
HZ = os.sysconf("SC_CLK_TCK")


def plan(layers=12, new=(2, 5, 8)):
    out = []
    orig = 0
    for i in range(layers):
        if i in new:
            out.append({"index": i, "origin": "new", "after": orig - 1, "init": {"copy": {"source": orig - 1}}, "zero": [], "scale": {}, "trainable": True})
        else:
            out.append({"index": i, "origin": "original", "source": orig, "trainable": False})
            orig += 1
    return {"base_layers": orig, "preset": None, "layers": out, "pruned": []}


def prepare(home):
    run = os.path.join(home, "runs", "20260101-000000-stream")
    os.makedirs(run)
    open(os.path.join(run, "experiment.toml"), "w").write('name = "stream"\n')
    with open(os.path.join(run, "events.jsonl"), "w") as f:
        f.write(json.dumps({"seq": 0, "time": time.time(), "type": "run_start", "run": "stream", "experiment": 'name = "stream"\n',
                            "plan": plan(), "config": None, "trainable_params": 1, "total_steps": 100000,
                            "resumed_from": None, "environment": None}) + "\n")
    # A live "worker": this process, so the run shows as running.
    ticks = open(f"/proc/{os.getpid()}/stat").read().rsplit(")", 1)[1].split()[19]
    open(os.path.join(run, "worker.pid"), "w").write(f"{os.getpid()} {ticks}\n")
    # A run stopped 20 s ago after 20 s of training: its age ticked every second in the table.
    stopped = os.path.join(home, "runs", "20260101-000001-stopped")
    os.makedirs(stopped)
    open(os.path.join(stopped, "experiment.toml"), "w").write('name = "stream"\n')
    now = time.time()
    with open(os.path.join(stopped, "events.jsonl"), "w") as f:
        f.write(json.dumps({"seq": 0, "time": now - 40, "type": "run_start", "run": "stopped", "experiment": 'name = "stream"\n',
                            "plan": plan(), "config": None, "trainable_params": 1, "total_steps": 100,
                            "resumed_from": None, "environment": None}) + "\n")
        f.write(json.dumps({"seq": 1, "time": now - 20, "type": "end", "status": "stopped", "step": 0,
                            "message": "stopped on request"}) + "\n")
    return run


class Streamer(threading.Thread):
    def __init__(self, run):
        super().__init__(daemon=True)
        self.path = os.path.join(run, "events.jsonl")
        self.seq = 1
        self.on = threading.Event()
        self.quit = False

    def run(self):
        while not self.quit:
            if self.on.is_set():
                step = self.seq
                ev = {"seq": self.seq, "time": time.time(), "type": "step", "step": step, "loss": 3.0 / (1 + step / 50),
                      "lr": 1e-4, "tokens": step * 512, "tokens_per_sec": 5000.0, "grad_norm": 0.5, "clipped": False,
                      "blocks": [{"block": b, "grad_norm": 0.1 * (b + 1) * (1 + 0.5 * ((step // 7) % 3)), "weight_norm": 10.0, "update_ratio": 1e-3} for b in (2, 5, 8)]}
                with open(self.path, "a") as f:
                    f.write(json.dumps(ev) + "\n")
                self.seq += 1
            time.sleep(0.1)


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def drain(fd, seconds):
    """Reads for `seconds`; returns the byte count."""
    end = time.time() + seconds
    n = 0
    while True:
        left = end - time.time()
        if left <= 0:
            return n
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                n += len(os.read(fd, 65536))
            except OSError:
                return n


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


def measure(width, height):
    home = tempfile.mkdtemp()
    run = prepare(home)
    os.makedirs(os.path.join(home, "experiments"))
    open(os.path.join(home, "experiments", "stream.toml"), "w").write('name = "stream"\n[model]\nbase = "none"\n[plan]\npreset = "slayer"\n')
    streamer = Streamer(run)
    streamer.start()
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update({"SLAYER_HOME": home, "TERM": "xterm-256color", "SLAYER_LOG": "slayer::frame=debug"})
        os.execv(BIN, [BIN])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
    os.kill(pid, signal.SIGWINCH)
    drain(fd, 3.0)
    os.write(fd, b"2")
    drain(fd, 0.5)
    os.write(fd, b"\r")  # the run monitor
    drain(fd, 2.0)
    # Idle on every screen: nothing moves on any of them (the monitor shows the stopped run).
    idle = {}
    for name, keys in [("runs", b"2"), ("monitor", b"j\r"), ("chat", b"4"), ("study", b"5"), ("experiments", b"1")]:
        for k in keys:
            os.write(fd, bytes([k]))
            drain(fd, 0.3)
        drain(fd, 2.0)
        t0 = cpu_ticks(pid)
        idle[name] = drain(fd, SECONDS / 2) / (SECONDS / 2)
        idle_cpu = (cpu_ticks(pid) - t0) / HZ / (SECONDS / 2) * 100
    idle_bytes = max(idle.values()) * SECONDS
    # The monitor follows the live run again.
    os.write(fd, b"2")
    drain(fd, 0.3)
    os.write(fd, b"k\r")
    drain(fd, 1.0)
    # Streaming into the monitor.
    streamer.on.set()
    drain(fd, 2.0)
    stream_bytes = drain(fd, SECONDS)
    streamer.on.clear()
    drain(fd, 1.0)
    # Key to screen: toggle the log scale and wait for the first byte back.
    latencies = []
    for _ in range(30):
        drain(fd, 0.15)
        start = time.perf_counter()
        os.write(fd, b"l")
        select.select([fd], [], [], 2.0)
        latencies.append((time.perf_counter() - start) * 1e3)
        drain(fd, 0.1)
    os.write(fd, b"q")
    time.sleep(0.3)
    os.write(fd, b"\r")
    drain(fd, 1.0)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    streamer.quit = True
    frames = []
    for line in open(os.path.join(home, "logs", "slayer.log"), errors="replace"):
        if "slayer::frame" in line and "micros=" in line:
            frames.append(int(line.split("micros=")[1].split()[0]) / 1e3)
    return {
        "size": f"{width}x{height}",
        "idle_bytes_per_s": idle_bytes / SECONDS,
        "idle_by_screen": idle,
        "idle_cpu_pct": idle_cpu,
        "stream_bytes_per_s": stream_bytes / SECONDS,
        "frame_ms_p50": pct(frames, 50),
        "frame_ms_p99": pct(frames, 99),
        "frames": len(frames),
        "key_ms_p50": pct(latencies, 50),
        "key_ms_p99": pct(latencies, 99),
    }


if __name__ == "__main__":
    print(f"binary {BIN}; {SECONDS:.0f} s per phase; {time.strftime('%Y-%m-%d')}")
    print("| size | idle bytes/s: experiments / runs / monitor (stopped run) / chat / study | idle CPU % | streaming bytes/s (10 steps/s) | frame ms p50 / p99 | key→screen ms p50 / p99 |")
    print("|---|---|---|---|---|---|")
    for w, h in [(80, 24), (160, 48)]:
        r = measure(w, h)
        by = r["idle_by_screen"]
        idle = " / ".join(f"{by[n]:.0f}" for n in ["experiments", "runs", "monitor", "chat", "study"])
        print(f"| {r['size']} | {idle} | {r['idle_cpu_pct']:.2f} | {r['stream_bytes_per_s']:.0f} | "
              f"{r['frame_ms_p50']:.2f} / {r['frame_ms_p99']:.2f} ({r['frames']} frames) | {r['key_ms_p50']:.1f} / {r['key_ms_p99']:.1f} |")
