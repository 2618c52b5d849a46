"""deploy/nginx.conf, run for real: rendered for a test's ports and a temp dir, started as the
current user in the foreground.

    proxy = NginxProcess(backend_ports=[p1, p2, p3]).start()   # listens on proxy.port
    proxy.stop()

render() changes only what a deployment would edit (the backends, the listen address, the static
directory) and what running unprivileged needs (no `user`, pid/log/temp files in the temp dir);
each substitution must match exactly once, so a change to deploy/nginx.conf that the renderer no
longer understands fails the test instead of testing another configuration.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.server import REPO, free_port

CONF = REPO / "deploy" / "nginx.conf"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def _sub(pattern: str, replacement: str, text: str) -> str:
    out, n = re.subn(pattern, lambda _m: replacement, text, flags=re.MULTILINE | re.DOTALL)
    if n != 1:
        raise AssertionError(f"deploy/nginx.conf: {pattern!r} matched {n} times, expected once")
    return out


def render(*, backend_ports: list[int], listen_port: int, prefix: Path, static_root: Path,
           tls: tuple[Path, Path] | None = None, text: str | None = None) -> str:
    """deploy/nginx.conf for these ports and directories (see the module docstring); with
    tls=(certificate, key), its TLS lines switched on as docs/deploy.md says."""
    conf = CONF.read_text() if text is None else text
    if tls is not None:
        certificate, key = tls
        conf = _sub(r"^ *listen 80;", "        listen 443 ssl;", conf)
        conf = _sub(r"^ *# ssl_certificate +\S+;", f"        ssl_certificate {certificate};", conf)
        conf = _sub(r"^ *# ssl_certificate_key +\S+;", f"        ssl_certificate_key {key};", conf)
        conf = _sub(r"^ *# ssl_protocols ", "        ssl_protocols ", conf)
        conf = _sub(r"^ *listen 443 ssl;", f"        listen 127.0.0.1:{listen_port} ssl;", conf)
    else:
        conf = _sub(r"^ *listen 80;", f"        listen 127.0.0.1:{listen_port};", conf)
    backends = "".join(f"        server 127.0.0.1:{port} max_fails=3 fail_timeout=10s;\n"
                       for port in backend_ports)
    conf = _sub(r"^ *# BEGIN backends.*?# END backends\n", backends, conf)
    conf = _sub(r"^user [^;]+;\n", "", conf)
    conf = _sub(r"^worker_processes [^;]+;", "worker_processes 2;", conf)
    conf = _sub(r"^pid [^;]+;", f"pid {prefix}/nginx.pid;", conf)
    conf = _sub(r"^error_log [^;]+;", f"error_log {prefix}/error.log info;", conf)
    conf = _sub(r"^    access_log [^;]+;", f"    access_log {prefix}/access.log;\n" + "".join(
        f"    {kind}_temp_path {prefix}/{kind}_temp;\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")), conf)
    conf = _sub(r"alias /srv/parley/static/;", f"alias {static_root}/;", conf)
    return conf


def self_signed(certificate: Path, key: Path) -> None:
    """A certificate for 127.0.0.1, valid for a day (openssl, as an operator would make one)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(certificate)], check=True, capture_output=True, timeout=60)


class NginxProcess:
    """nginx with the rendered deploy/nginx.conf, in the foreground, in a temp prefix."""

    def __init__(self, *, backend_ports: list[int], static_root: Path | None = None, tls: bool = False) -> None:
        self.port = free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="parley-nginx-"))
        self.static_root = static_root or (self.prefix / "static")
        self.static_root.mkdir(parents=True, exist_ok=True)
        self.certificate: Path | None = None
        if tls:
            self.certificate = self.prefix / "cert.pem"
            self_signed(self.certificate, self.prefix / "key.pem")
        self.conf_path = self.prefix / "nginx.conf"
        self.conf_path.write_text(render(
            backend_ports=backend_ports, listen_port=self.port, prefix=self.prefix, static_root=self.static_root,
            tls=(self.certificate, self.prefix / "key.pem") if self.certificate else None))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"{'https' if self.certificate else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.certificate else 'ws'}://127.0.0.1:{self.port}/ws/chat/"

    def command(self, *extra: str) -> list[str]:
        binary = nginx_binary()
        assert binary is not None, "no nginx"
        return [binary, "-p", str(self.prefix), "-c", str(self.conf_path), "-e", str(self.prefix / "error.log"),
                *extra]

    def check(self) -> str:
        """`nginx -t` on the rendered file: its output (raises if the file is invalid)."""
        out = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise AssertionError(f"nginx -t failed:\n{out.stderr}")
        return out.stderr

    def start(self, timeout: float = 10) -> NginxProcess:
        self.check()
        log = open(self.prefix / "stdout.log", "ab")
        self.proc = subprocess.Popen(self.command("-g", "daemon off;"), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nginx did not listen on {self.port}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = (self.prefix / "error.log").read_text(errors="replace")
        except OSError:
            return "(no error.log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.prefix, ignore_errors=True)
