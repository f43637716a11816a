"""Post-call intake benchmark: ack latency at a fixed rate and maximum accepted/s, for the real
`POST /webhook/post-call` and for a bare FastAPI endpoint under the same uvicorn settings.

    .venv/bin/python -m bench.bench_intake [--rate 200] [--seconds 10] [--concurrency 32]
                                          [--repeats 3] [--write-docs]

Each run: a fresh data dir (migrated SQLite, WAL, synchronous=FULL), one API process and one
bare endpoint on loopback, measured in alternating rounds (``run_interleaved`` says why),
signed copies of fixtures/post_call_transcription.json (12.6 KB) each with a unique
conversation id. Latency is open-loop (requests are sent on schedule and timed from their
scheduled send, so a stall shows up as latency instead of being hidden by a slower send rate).
The paced client sends from one thread on a nanosleep timer and reads each keep-alive
connection on a thread of its own (``at_rate`` says why); the maximum-rate client is a minimal
asyncio HTTP/1.1 client. Both keep client overhead small next to the server's. No workers
run: this measures intake, not processing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from api.security.signatures import sign

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "elevenlabs" / "post_call_transcription.json"
CONV_ID = b"conv_6801kb3m9q2rv4tx8e0d7c5j1n3p"
PATH = "/webhook/post-call"
_CL = re.compile(rb"content-length:\s*(\d+)", re.I)

SERVER_SNIPPET = """
import sys, uvicorn
target, port = sys.argv[1], int(sys.argv[2])
kwargs = dict(host="127.0.0.1", port=port, log_level="warning", access_log=False,
              timeout_keep_alive=5)
if target == "voxmem":
    uvicorn.run("api.app:create_app", factory=True, **kwargs)
else:
    uvicorn.run("bench.bare_app:app", **kwargs)
"""


@dataclass
class Round:
    """One paced run and one closed-loop burst against one server."""

    p50_ms: float
    p99_ms: float
    max_ms: float
    sent: int
    ok_at_rate: int
    steal_pct_at_rate: float
    send_late_p99_ms: float
    max_per_sec: float
    ok_at_max: int
    cpu_ms_per_request: float
    waited_for_quiet_secs: float = 0.0


@dataclass
class Result(Round):
    """A server's rounds summarised: medians, except sums of counts and the largest max
    (each round is kept in ``rounds``)."""

    name: str = ""
    rounds: list[Round] = field(default_factory=list)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_requests(secret: str, n: int, prefix: str) -> list[bytes]:
    template = FIXTURE.read_bytes()
    now = int(time.time())
    out = []
    for i in range(n):
        body = template.replace(CONV_ID, f"conv_{prefix}_{i:08d}".encode())
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"ElevenLabs-Signature: {sign(secret, body, now)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        match = _CL.search(head)
        body = await self.reader.readexactly(int(match.group(1))) if match else b""
        return int(head[9:12]), body


async def connect(port: int) -> Conn:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return Conn(reader, writer)


class _PacedConn:
    """A keep-alive connection whose responses a thread of its own reads and times."""

    def __init__(self, port: int, on_response: Callable[[_PacedConn, int, bytes, float], None]):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.due = 0.0
        self.sent = 0.0
        self.in_flight = False
        self.alive = True
        self._on_response = on_response
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    buf += self._recv()
                head, _, rest = buf.partition(b"\r\n\r\n")
                match = _CL.search(head)
                length = int(match.group(1)) if match else 0
                while len(rest) < length:
                    rest += self._recv()
                done = time.perf_counter()
                body, buf = rest[:length], rest[length:]
                self.in_flight = False
                self._on_response(self, int(head[9:12]), body, done)
        except OSError:
            self.alive = False
            if self.in_flight:  # closed under a request: counted as not accepted
                self.in_flight = False
                self._on_response(self, 0, b"", time.perf_counter())

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("server closed the connection")
        return chunk

    def send(self, raw: bytes, due: float) -> None:
        self.due, self.in_flight = due, True
        self.sent = time.perf_counter()
        self.sock.sendall(raw)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Paced:
    latencies: list[float]  # seconds from each request's scheduled send to its full response
    ok: int
    late_p99_ms: float  # how late the client itself sent (its own scheduling, not the server)


def at_rate(port: int, requests: list[bytes], rate: float) -> Paced:
    """Open loop: request i is due at start + i/rate; latency counts from when it was due.

    Why threads and not asyncio: an asyncio timer wakes in whole milliseconds (epoll's timeout
    is rounded up), so an asyncio client sent each request 0.75 ms late at the median, 1.3 ms
    at p99, and that lateness was counted as server latency (bench/notes.md). Here one thread
    sends on time with ``time.sleep`` (nanosleep) and a thread per connection reads and
    timestamps its responses, so a slow server still shows as latency (coordinated omission
    stays out) while the client's timer does not. The send lateness is reported beside it.
    """
    idle: queue.SimpleQueue[_PacedConn] = queue.SimpleQueue()
    lock = threading.Lock()
    answered = threading.Semaphore(0)
    latencies: list[float] = []
    late: list[float] = []
    ok = 0

    def on_response(conn: _PacedConn, status: int, body: bytes, done: float) -> None:
        nonlocal ok
        with lock:
            late.append(conn.sent - conn.due)
            if status:
                latencies.append(done - conn.due)
            if status == 200 and b"accepted" in body:
                ok += 1
        if conn.alive:
            idle.put(conn)
        answered.release()

    conns = [_PacedConn(port, on_response) for _ in range(8)]
    for conn in conns:
        idle.put(conn)
    start = time.perf_counter() + 0.05
    for i, raw in enumerate(requests):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        while True:
            try:
                conn = idle.get_nowait()
            except queue.Empty:
                conn = _PacedConn(port, on_response)
                conns.append(conn)
            if conn.alive:
                break
        conn.send(raw, due)
    for _ in requests:
        if not answered.acquire(timeout=60):
            break
    for conn in conns:
        conn.close()
    late_p99 = p99(sorted(late)) * 1000 if late else 0.0
    return Paced(latencies=latencies, ok=ok, late_p99_ms=late_p99)


def p99(ordered: list[float]) -> float:
    """The 99th percentile of an ascending, non-empty list (the sample at index n * 0.99)."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def flat_out(port: int, requests: list[bytes], concurrency: int) -> tuple[float, int]:
    """Closed loop with `concurrency` keep-alive connections until the requests run out."""
    it = iter(requests)
    ok = 0

    async def worker() -> None:
        nonlocal ok
        conn = await connect(port)
        for raw in it:
            status, body = await conn.send(raw)
            if status == 200 and b"accepted" in body:
                ok += 1
        conn.writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, ok


def start_server(target: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_SNIPPET, target, str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1.0)
            return proc, port
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{target} server did not start")


def process_cpu_secs(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user).
    return fields[7], sum(fields[:8])


def steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of the machine's CPU time the hypervisor gave to other guests meanwhile: on
    this shared VM it is what turns a 5 ms p99 into 30 ms, so each run reports it."""
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total > 0 else 0.0


def wait_for_quiet(
    max_steal_pct: float = 2.0, window_secs: float = 5.0, give_up_secs: float = 120.0
) -> float:
    """Wait until a ``window_secs`` window shows at most ``max_steal_pct`` CPU steal; give up
    after ``give_up_secs`` and measure anyway (each round reports its own steal). Returns
    the seconds waited.

    Why: a round that starts inside a spell of 25–47 % steal (seen on this VM) measures the
    neighbours, not the code; waiting for a quiet window before each round costs nothing on a
    dedicated machine.
    """
    started = time.monotonic()
    while time.monotonic() - started < give_up_secs:
        before = cpu_ticks()
        time.sleep(window_secs)
        if steal_pct(before, cpu_ticks()) <= max_steal_pct:
            break
    return time.monotonic() - started


def fsync_ms(directory: Path, n: int = 200) -> tuple[float, float]:
    """p50/p99 of a 4 KiB write + fsync on the data dir's disk: the floor under a durable ack."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    samples = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 4096)
            started = time.perf_counter()
            os.fsync(fd)
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    samples.sort()
    return samples[n // 2], p99(samples)


def run_round(
    target: str, proc: subprocess.Popen[bytes], port: int, secret: str, rate: float,
    seconds: float, concurrency: int, tag: str,
) -> Round:
    paced = build_requests(secret, int(rate * seconds), f"{target}rate{tag}")
    ticks_before = cpu_ticks()
    result = at_rate(port, paced, rate)
    steal = steal_pct(ticks_before, cpu_ticks())
    burst = build_requests(secret, int(max(2000, rate * seconds)), f"{target}max{tag}")
    cpu_before = process_cpu_secs(proc.pid)
    elapsed, ok_max = asyncio.run(flat_out(port, burst, concurrency))
    cpu_used = process_cpu_secs(proc.pid) - cpu_before
    ms = sorted(x * 1000 for x in result.latencies)
    return Round(
        p50_ms=statistics.median(ms),
        p99_ms=p99(ms),
        max_ms=ms[-1],
        sent=len(paced),
        ok_at_rate=result.ok,
        steal_pct_at_rate=steal,
        send_late_p99_ms=result.late_p99_ms,
        # The bare endpoint answers 200 without "accepted": every answer counts for it.
        max_per_sec=(ok_max if target == "voxmem" else len(burst)) / elapsed,
        ok_at_max=ok_max if target == "voxmem" else len(burst),
        cpu_ms_per_request=cpu_used / len(burst) * 1000,
    )


def summarise(target: str, rounds: list[Round]) -> Result:
    def median(field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in rounds))

    return Result(
        name=target,
        p50_ms=median("p50_ms"),
        p99_ms=median("p99_ms"),
        max_ms=max(r.max_ms for r in rounds),
        sent=sum(r.sent for r in rounds),
        ok_at_rate=sum(r.ok_at_rate for r in rounds),
        max_per_sec=median("max_per_sec"),
        ok_at_max=sum(r.ok_at_max for r in rounds),
        cpu_ms_per_request=median("cpu_ms_per_request"),
        steal_pct_at_rate=median("steal_pct_at_rate"),
        send_late_p99_ms=median("send_late_p99_ms"),
        waited_for_quiet_secs=median("waited_for_quiet_secs"),
        rounds=rounds,
    )


def run_interleaved(
    env: dict[str, str], secret: str, rate: float, seconds: float, concurrency: int,
    settle: float, repeats: int,
) -> tuple[Result, Result]:
    """Both servers up at once, measured in turns (bare, voxmem, bare, voxmem, …).

    Why rounds: on this shared VM the CPU stolen by other guests moves from 0 to 40 % within
    minutes, and one 10 s run's p99 is decided by whether a noisy spell fell inside it. Each
    round starts in a quiet window when there is one (``wait_for_quiet``), turns put both
    servers under the same spells, the figure is the median round, and every round is
    reported with its steal.
    """
    servers = {target: start_server(target, env) for target in ("bare", "voxmem")}
    rounds: dict[str, list[Round]] = {target: [] for target in servers}
    try:
        # The API warms the memory engine's model on a thread at start-up; measure after it.
        time.sleep(settle)
        for target, (_, port) in servers.items():
            asyncio.run(flat_out(port, build_requests(secret, 300, f"{target}warm"), 8))
        for index in range(repeats):
            waited = wait_for_quiet()
            for target, (proc, port) in servers.items():
                measured = run_round(
                    target, proc, port, secret, rate, seconds, concurrency, str(index)
                )
                measured.waited_for_quiet_secs = waited
                rounds[target].append(measured)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(timeout=15)
    return summarise("bare", rounds["bare"]), summarise("voxmem", rounds["voxmem"])


def prepare_deployment(root: Path) -> tuple[dict[str, str], str, Path]:
    data = root / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXMEM_")}
    env.update(
        VOXMEM_DATABASE_URL=f"sqlite:///{data / 'voxmem.db'}",
        VOXMEM_DATA_DIR=str(data),
        VOXMEM_ENVIRONMENT="test",
        VOXMEM_LOG_LEVEL="WARNING",
        VOXMEM_WEBHOOK_SECRETS="wsec_bench_secret_0123456789abcdef",
        PYTHONUNBUFFERED="1",
    )
    subprocess.run(
        [sys.executable, "-m", "api.cli", "migrate"],
        cwd=REPO,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return env, env["VOXMEM_WEBHOOK_SECRETS"], data / "voxmem.db"


def write_docs(text: str) -> None:
    path = REPO / "docs" / "benchmarks.md"
    heading = "## Post-call intake"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if heading in current:
        before, rest = current.split(heading, 1)
        nxt = rest.find("\n## ")
        after = rest[nxt + 1 :] if nxt != -1 else ""
        current = before + text + ("\n" + after if after else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--settle", type=float, default=8.0, help="seconds after start-up")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per server (median)")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="voxmem-bench-") as tmp:
        env, secret, db_path = prepare_deployment(Path(tmp))
        disk = fsync_ms(db_path.parent)
        bare, real = run_interleaved(
            env, secret, args.rate, args.seconds, args.concurrency, args.settle, args.repeats
        )
        disk_after = fsync_ms(db_path.parent)
        with sqlite3.connect(db_path) as conn:
            stored = conn.execute("SELECT count(*) FROM webhook_events").fetchone()[0]
    expected = real.ok_at_rate + real.ok_at_max + 300
    rows = [
        (f"ack latency p50 at {args.rate:.0f} req/s (ms)", real.p50_ms, bare.p50_ms),
        (f"ack latency p99 at {args.rate:.0f} req/s (ms)", real.p99_ms, bare.p99_ms),
        (f"max latency at {args.rate:.0f} req/s (ms)", real.max_ms, bare.max_ms),
        (f"max accepted/s, {args.concurrency} connections", real.max_per_sec, bare.max_per_sec),
        (
            "server CPU per request at max rate (ms)",
            real.cpu_ms_per_request,
            bare.cpu_ms_per_request,
        ),
    ]
    lines = [
        "## Post-call intake",
        "",
        f"Command: `.venv/bin/python -m bench.bench_intake --rate {args.rate:.0f} "
        f"--seconds {args.seconds:.0f} --concurrency {args.concurrency} --write-docs`",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared), Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}; one uvicorn process (uvloop, httptools), WAL, "
        "synchronous=FULL, 12.6 KB signed bodies with unique conversation ids, no workers. "
        "The baseline is a bare FastAPI endpoint that reads the body and returns 200 under the "
        "same uvicorn settings in the same run.",
        "",
        f"Each figure is the median of {args.repeats} rounds per server, taken in turns "
        "(bare, voxmem, bare, …); every round is listed below the table.",
        "",
        "| figure | /webhook/post-call | bare endpoint | ratio |",
        "|---|---:|---:|---:|",
    ]
    for label, mine, base in rows:
        ratio = mine / base if base else float("nan")
        lines.append(f"| {label} | {mine:.2f} | {base:.2f} | {ratio:.2f}× |")
    lines += [
        "",
        f"Accepted at rate: {real.ok_at_rate}/{real.sent}; rows stored: {stored} of {expected} "
        "acknowledged (every 200 `accepted` is a committed row). "
        f"fsync of 4 KiB on the data disk in this run: p50 {disk[0]:.2f} / p99 {disk[1]:.2f} ms "
        f"before, {disk_after[0]:.2f} / {disk_after[1]:.2f} ms after (each acknowledgement waits "
        "for one WAL fsync, shared by the batch). "
        f"CPU steal during the paced phase: {real.steal_pct_at_rate:.1f} % (voxmem), "
        f"{bare.steal_pct_at_rate:.1f} % (bare). "
        f"1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after "
        "(the machine is shared; figures from a busy box understate an idle one).",
        "",
        *(
            f"- round {i + 1}: p99 {mine.p99_ms:.2f} ms at {mine.steal_pct_at_rate:.1f} % steal "
            f"(bare {base.p99_ms:.2f} ms at {base.steal_pct_at_rate:.1f} %), "
            f"{mine.max_per_sec:,.0f} accepted/s"
            for i, (mine, base) in enumerate(zip(real.rounds, bare.rounds, strict=True))
        ),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    fsync = {
        "before": {"p50": disk[0], "p99": disk[1]},
        "after": {"p50": disk_after[0], "p99": disk_after[1]},
    }
    print(json.dumps({"voxmem": asdict(real), "bare": asdict(bare), "fsync_ms": fsync}))
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
