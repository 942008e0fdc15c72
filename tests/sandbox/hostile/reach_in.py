"""Everything a plugin could try against the sidecar running it (and its neighbours), reported back.

Each attempt records what it got; the isolation tests assert that every attempt failed. A safety
interlock: it attacks only once it is no longer root, so that running it unconfined on a shared
machine cannot kill everything in sight.
"""

import ctypes
import json
import os
import signal
import socket
import struct


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"!{type(exc).__name__}"


def _visible_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _secrets(runner_pid, worker_pids, token_file):
    texts = {}
    for pid in set(_visible_pids()) | {runner_pid, *worker_pids}:
        for name in ("cmdline", "environ"):
            texts[f"/proc/{pid}/{name}"] = _read(f"/proc/{pid}/{name}")
    texts[token_file] = _read(token_file)
    return texts


def _unix_paths():
    paths = []
    for line in _read("/proc/net/unix").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7].startswith("/"):
            paths.append(fields[7])
    return paths


def _socket_attempts(targets):
    frame = json.dumps({"op": "run", "args": {"name": "echo", "params": {"forged": True}}}).encode()
    out = {}
    for path in dict.fromkeys([*targets, *_unix_paths()]):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(path)
                s.sendall(struct.pack(">Q", len(frame)) + frame)
                out[path] = "answered" if s.recv(4096) else "closed"
        except OSError as exc:
            out[path] = f"!{type(exc).__name__}"
    return out


def _history_attempts(data_dir):
    out = {}
    try:
        out["listdir"] = os.listdir(data_dir)
    except OSError as exc:
        out["listdir"] = f"!{type(exc).__name__}"
    history = os.path.join(data_dir, "history.sqlite3")
    for mode, flags in (("read", os.O_RDONLY), ("write", os.O_WRONLY | os.O_APPEND)):
        try:
            os.close(os.open(history, flags))
            out[mode] = "opened"
        except OSError as exc:
            out[mode] = f"!{type(exc).__name__}"
    try:
        import sqlite3

        db = sqlite3.connect(history, timeout=1)
        db.execute("UPDATE totals SET count = count + 1000")
        db.commit()
        out["forged"] = "yes"
    except Exception as exc:  # noqa: BLE001
        out["forged"] = f"!{type(exc).__name__}"
    links = []  # the history reached through another process's open descriptors
    for pid in _visible_pids():
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if "history" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                    links.append(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
    out["fd_links"] = links
    return out


def _status(path):
    try:
        with open(path) as f:
            return {k: v.split() for k, _, v in (line.partition(":") for line in f)}
    except OSError:
        return {}


def _uid_of(pid):
    """The uid of `pid` in our PID namespace, also when /proc is the host's (reach_in_host)."""
    if os.readlink("/proc/self") == str(os.getpid()):
        return int(_status(f"/proc/{pid}/status").get("Uid", ["-1"])[0])
    for entry in os.listdir("/proc"):
        st = _status(f"/proc/{entry}/status") if entry.isdigit() else {}
        if st.get("NSpid", [""])[-1] == str(pid) and int(st.get("Uid", ["-1"])[0]) == os.getuid():
            return os.getuid()
    return None


def _signal_attempts(targets):
    out = {}
    for pid in dict.fromkeys([*targets, os.getppid(), *_visible_pids()]):
        if pid in (os.getpid(), 0) or _uid_of(pid) == os.getuid():
            continue  # itself, and its own plugin's template (which it may harm: the next run rebuilds it)
        try:
            os.kill(pid, signal.SIGKILL)
            out[str(pid)] = "killed"
        except OSError as exc:
            out[str(pid)] = f"!{type(exc).__name__}"
    return out


def _daemon(nonce):
    """Classic daemonisation, named `nonce` so that the test can look for it on the whole host."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            ctypes.CDLL(None).prctl(15, nonce.encode()[:15], 0, 0, 0)  # PR_SET_NAME
            os.write(w, b"up")
            os.close(w)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                signal.pause()
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(w)
    return os.read(r, 8).decode()


def _network(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return "connected"
    except OSError as exc:
        return f"!{type(exc).__name__}"


def _tmp():
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "scratch")
    with open(path, "w") as f:
        f.write("mine")
    return _read(path)


def run(runner_pid, worker_pids, launcher_pids, socket_paths, data_dir, token_file, nonce, tcp_port):
    if os.getuid() == 0:
        return {"refused": "still root: not confined, so no attack"}
    return {
        "uid": os.getuid(),
        "secrets": _secrets(runner_pid, worker_pids, token_file),
        "socket": _socket_attempts(socket_paths),
        "history": _history_attempts(data_dir),
        "signals": _signal_attempts([runner_pid, *worker_pids, *launcher_pids, 1]),
        "daemon": _daemon(nonce),
        "network": _network(tcp_port),
        "tmp": _tmp(),
        "readonly_root": bool(os.statvfs("/").f_flag & os.ST_RDONLY),
        "import": __import__("sidecar.plugins.builtin.echo", fromlist=["run"]).run(ok=1),
    }
