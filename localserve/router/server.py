"""Run an experiment's router in this process: uvicorn on 127.0.0.1, the app, the request log, the capture.

`experiment.launch` runs this in the background as `python -m localserve.router NAME`.
"""

from __future__ import annotations

import errno
import os
import socket

from ..errors import InputError
from .experiment import HOST, is_running, load, save


def bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} on {HOST} is in use", "pass another --port") from None
        raise InputError(f"cannot listen on {HOST}:{port} ({e.strerror})", "pass another --port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(name: str) -> None:
    """Serve experiment `name` until SIGTERM or Ctrl-C; in-flight requests finish first."""
    import uvicorn

    from .app import Router
    from .capture import CaptureWriter
    from .log import RequestLog

    experiment = load(name)
    if experiment.pid != os.getpid() and is_running(experiment):
        raise InputError(f"the router of {name} already runs (pid {experiment.pid})", f"localserve ab stop {name}")
    sock = bind(experiment.port)
    experiment.pid, experiment.stopped_at = os.getpid(), None
    save(experiment)
    capture = CaptureWriter(experiment.name, experiment.capture) if experiment.capture else None
    router = Router(experiment, RequestLog(), save, capture)
    config = uvicorn.Config(router.app(), log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=10, server_header=False)
    uvicorn.Server(config).run(sockets=[sock])
