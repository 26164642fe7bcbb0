"""How omniserve starts a local process (a stage worker, a grammar helper).

Never by forking the server, which runs an event loop and threads: multiprocessing's fork server, a clean
process that has imported only the worker's code, forks each one. A start then needs no new interpreter and
none of those imports again (spawning each took about a fifth more CPU at a server's start)."""

from __future__ import annotations

import multiprocessing as mp

CONTEXT = mp.get_context("forkserver")
CONTEXT.set_forkserver_preload(["omniserve.runtime.worker"])
