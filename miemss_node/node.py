"""Runs the parts of ``serve`` together: receiver, settler, workers and sender."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import ssl
import threading
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from miemss_node.config import Config
from miemss_node.doorbell import Bell, Doorbells
from miemss_node.encode.templates import load_templates
from miemss_node.errors import ConfigError
from miemss_node.images import job_model_settings, resolve_image_processes
from miemss_node.pipeline.models import NO_MODELS, load_models
from miemss_node.queue.db import create_database_engine, session_factory
from miemss_node.receive.handlers import InstanceStore
from miemss_node.receive.scp import start_receiver, stop_receiver
from miemss_node.retention import Janitor
from miemss_node.send import Sender, refuse_unconfigured_deliveries
from miemss_node.settle import Settler
from miemss_node.storage import disk_problem
from miemss_node.tls import server_context
from miemss_node.worker import Worker

if TYPE_CHECKING:
    from miemss_node.receive.transport import ReceiverServer
    from miemss_node.web.server import HttpServer

logger = logging.getLogger(__name__)

WORKER_RESTART_SECONDS = 5.0
"""How often ``serve`` checks its worker processes, and so the pause before restarting a dead one."""

UNCONFIGURED_CHECK_SECONDS = 60.0
"""How often ``serve`` fails deliveries to destinations that were removed from the config."""


class Node:
    """One MIEMSS node process. ``start()`` returns at once; ``stop()`` shuts every part down."""

    def __init__(
        self,
        config: Config,
        *,
        with_receiver: bool = True,
        worker_count: int | None = None,
        worker_processes: bool | None = None,
        machine_workers: int | None = None,
        doorbells: Doorbells | None = None,
    ) -> None:
        """``machine_workers`` is how many jobs run at once on this machine (default: this node's
        workers), so that each job's image pool takes its share of the cores. ``doorbells`` are those
        of the node that started this one's process (a worker process); by default its own."""
        self.config = config
        self.with_receiver = with_receiver
        self.worker_count = config.worker.count if worker_count is None else worker_count
        self.worker_processes = config.worker.processes if worker_processes is None else worker_processes
        self.machine_workers = machine_workers or max(1, self.worker_count)
        self._children: list[BaseProcess] = []
        self._workers: list[Worker] = []
        self.engine = create_database_engine(config.database_url)
        self.sessions = session_factory(self.engine)
        self.server: ReceiverServer | None = None
        self.http: HttpServer | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        if doorbells is None:
            spawns_workers = bool(self.worker_processes and self.worker_count)
            doorbells = Doorbells.between_processes() if spawns_workers else Doorbells.in_process()
        self.doorbells = doorbells

    @property
    def port(self) -> int:
        """The port the receiver listens on (useful when the config asked for port 0)."""
        if self.server is None:
            raise RuntimeError("the receiver is not running")
        return int(self.server.server_address[1])

    def start(self) -> None:
        """Create the storage folder, start the receiver and the background loops."""
        in_process = bool(self.worker_count) and not self.worker_processes
        image_processes = resolve_image_processes(
            self.config.worker.image_processes, self.machine_workers, self.config.models
        )
        # Once per process, before anything starts: building a ViT/BLIP takes seconds, and a model
        # that cannot be loaded stops the start here (a ModelError naming the fix). With an image
        # pool, its processes load the ViT and chest models; this one only BLIP.
        models = load_models(job_model_settings(self.config.models, image_processes)) if in_process else NO_MODELS
        load_templates()  # checked once, before anything runs: a broken template stops the start here
        storage = self.config.node.storage_dir
        try:
            # Received images are patient data: only the node's user may read them.
            storage.mkdir(parents=True, exist_ok=True)
            storage.chmod(0o700)
        except OSError as exc:
            raise ConfigError([f"[node] storage_dir {storage}: {exc.strerror or exc}"]) from exc
        if self.with_receiver:
            store = InstanceStore(
                self.config.node.storage_dir,
                self.sessions,
                min_free_bytes=self.config.node.min_free_disk_mb * 2**20,
                max_instance_bytes=self.config.node.max_instance_mb * 2**20,
            )
            self.server = self._start_receiver(store)
            settler = Settler(self.sessions, self.config.study, self.config.worker, jobs_bell=self.doorbells.jobs)
            self._spawn("settler", settler.run_once, settler.idle_seconds)
            self._start_senders()
            janitor = Janitor(self.sessions, self.config.node.storage_dir, self.config.study.retention_days)
            self._spawn("retention", janitor.run_once, 600.0)
            if self.config.http.port:
                self._start_http()
        if self.worker_processes and self.worker_count:
            # The pipeline is CPU-bound Python: in processes of their own, workers use every core and
            # never slow C-STORE handling.
            self._children = [self._start_child(index) for index in range(self.worker_count)]
            self._spawn("supervisor", self._restart_dead_children, WORKER_RESTART_SECONDS)
            return
        for index in range(self.worker_count):
            worker = Worker(
                self.sessions,
                self.config,
                models,
                image_processes=image_processes,
                worker_processes=self.machine_workers,
                results_bell=self.doorbells.results,
            )
            self._workers.append(worker)
            self._spawn(
                f"worker-{index}",
                self._warmed(worker),
                self.config.worker.poll_seconds,
                wakes=self.doorbells.jobs,
            )

    @staticmethod
    def _warmed(worker: Worker) -> Callable[[], int]:
        """The worker's step, starting its image pool before the first claim (in the worker's thread)."""
        warmed = threading.Event()

        def step() -> int:
            if not warmed.is_set():
                worker.warm()
                warmed.set()
            return worker.run_once()

        return step

    def _start_receiver(self, store: InstanceStore) -> ReceiverServer:
        node = self.config.node
        try:
            context = server_context(self.config.tls)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([f"[tls] certificate/private_key cannot be loaded: {exc}"]) from exc
        try:
            return start_receiver(node, store, context)
        except OSError as exc:
            raise ConfigError(
                [f"[node] cannot listen on {node.host}:{node.port} ({exc.strerror or exc}); is another node running there?"]
            ) from exc

    def _start_senders(self) -> None:
        """One sender thread per destination, so a destination that hangs delays only its own results."""
        for destination in self.config.destinations:
            sender = Sender(
                self.sessions,
                self.config.node.storage_dir,
                destination,
                self.config.delivery,
                self.config.node.ae_title,
                tls=self.config.tls,
            )
            self._spawn(
                f"sender-{destination.name}",
                sender.run_once,
                self.config.delivery.poll_seconds,
                wakes=self.doorbells.results,
            )
        destinations = self.config.destinations
        self._spawn(
            "sender-unconfigured",
            lambda: refuse_unconfigured_deliveries(self.sessions, destinations),
            UNCONFIGURED_CHECK_SECONDS,
        )

    def _start_child(self, index: int) -> BaseProcess:
        child = multiprocessing.get_context("spawn").Process(
            target=run_worker_process,
            args=(self.config, 1, os.getpid(), self.worker_count, self.doorbells),
            name=f"miemss-worker-{index}",
        )
        child.start()
        return child

    def _restart_dead_children(self) -> int:
        """Start a new worker process for each one that died (e.g. a model folder failed to load).

        Its job, if it held one, is re-run once the lease expires. Returns 0 so the loop waits
        ``WORKER_RESTART_SECONDS`` between checks, which also paces a worker that dies at once.
        """
        for index, child in enumerate(self._children):
            if not child.is_alive() and not self._stop.is_set():
                logger.error(
                    "worker process %s exited with %s; starting a new one",
                    child.name,
                    child.exitcode,
                    extra={"action": "node.worker_died", "exitcode": child.exitcode},
                )
                self._children[index] = self._start_child(index)
        return 0

    def _start_http(self) -> None:
        """Serve /metrics, /healthz and the dashboard (``[http] port``; only the receiving process)."""
        from miemss_node.web.server import HttpServer

        self.http = HttpServer(
            self.config.http,
            self.sessions,
            self.config.node.storage_dir,
            receiver_problem=self.receiver_problem,
            disk_problem=self.disk_problem,
            reviewers=self.config.reviewers,
            audit_log=self.config.audit_log_path,
            max_attempts=self.config.worker.max_attempts,
        )
        self.http.start()

    def receiver_problem(self) -> str | None:
        """None when the receiver answers the health probe (as ``healthcheck`` runs it), else why not."""
        from miemss_node.probe import receiver_problem

        if self.server is None:
            return "the receiver is not running"
        return receiver_problem(self.config, port=self.port)

    def disk_problem(self) -> str | None:
        """None when the storage disk has at least ``min_free_disk_mb`` free, else what is wrong."""
        return disk_problem(self.config.node.storage_dir, self.config.node.min_free_disk_mb * 2**20)

    def _spawn(
        self,
        name: str,
        step: Callable[[], int],
        idle_seconds: float | Callable[[], float],
        *,
        wakes: Bell | None = None,
    ) -> None:
        thread = threading.Thread(target=self._loop, args=(name, step, idle_seconds, wakes), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _loop(
        self,
        name: str,
        step: Callable[[], int],
        idle_seconds: float | Callable[[], float],
        wakes: Bell | None,
    ) -> None:
        """Call ``step`` until stopped, pausing when it found nothing to do or failed.

        ``idle_seconds`` is the pause, or a function that says it (the settler's: until the next
        study is due); when that function fails, the loop pauses a second. ``wakes`` ends a pause
        early (:mod:`~miemss_node.doorbell`).
        """
        while not self._stop.is_set():
            if wakes is not None:
                wakes.clear()  # before the pass: a ring during it makes the next pause end at once
            try:
                busy = step()
            except Exception:  # noqa: BLE001 - a loop must survive a database outage and retry
                logger.exception("%s pass failed; retrying", name, extra={"action": "node.loop_error", "loop": name})
                busy = 0
            if not busy:
                (wakes or self._stop).wait(_pause(idle_seconds))

    def request_stop(self) -> None:
        """Ask the node to stop; ``wait()`` then returns. Not from a signal handler: it rings the
        doorbells, which take locks."""
        self._stop.set()
        self.doorbells.ring_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``stop()`` is called (or the timeout passes); True when stopped."""
        return self._stop.wait(timeout)

    def stop(self) -> None:
        """Stop receiving, let the current job step finish, and release the database."""
        self._stop.set()
        self.doorbells.ring_all()
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.server is not None:
            stop_receiver(self.server)
            self.server = None
        for thread in self._threads:  # the supervisor first, so it restarts nothing from here on
            thread.join()
        self._threads.clear()
        for worker in self._workers:
            worker.close()
        self._workers.clear()
        for child in self._children:
            child.terminate()  # SIGTERM: the child finishes its current job step and exits
        for child in self._children:
            child.join(self.config.worker.lease_seconds)
            if child.is_alive():
                child.kill()  # its job's lease expires and another worker runs it again
                child.join()
        self._children.clear()
        self.engine.dispose()
        logger.info("node stopped", extra={"action": "node.stopped"})


def run_worker_process(
    config: Config, worker_count: int, parent_pid: int, siblings: int = 1, doorbells: Doorbells | None = None
) -> None:
    """Entry point of a worker child process: run ``worker_count`` workers until SIGTERM.

    The child also stops when its parent dies (even by SIGKILL), so no orphan keeps claiming jobs.
    ``siblings`` worker processes share the machine: each limits its BLAS/OpenMP threads to its
    share of the cores, since oversubscribed cores made two workers slower than one.
    """
    from threadpoolctl import threadpool_limits

    from miemss_node.logconfig import configure_logging

    configure_logging(config.logging.level, log_format=config.logging.format)
    threadpool_limits(limits=max(1, (os.cpu_count() or 1) // max(1, siblings)))
    node = Node(
        config,
        with_receiver=False,
        worker_count=worker_count,
        worker_processes=False,
        machine_workers=siblings,
        doorbells=doorbells,
    )
    received: list[int] = []
    # Only note the signal (no locks in a handler); the loop below stops the node.
    signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    node.start()
    while not received and not node.wait(1.0):
        if os.getppid() != parent_pid:
            logger.warning("parent process is gone; stopping", extra={"action": "node.orphaned"})
            node.request_stop()
    node.stop()


def _pause(idle_seconds: float | Callable[[], float]) -> float:
    """The pause a loop takes: ``idle_seconds``, or what it says when it is a function (1 s if it fails)."""
    if not callable(idle_seconds):
        return idle_seconds
    try:
        return idle_seconds()
    except Exception:  # noqa: BLE001 - e.g. the database is down: the next pass logs it
        return 1.0
