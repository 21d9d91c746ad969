"""``bertc run --ray``: the same job over Ray Data (``map_batches`` with an actor pool, one ONNX Runtime session
per actor), on an existing cluster or a local one, its results in input order, each row once."""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from bertc.engine import Engine, windows
from bertc.errors import BackendLoadError, BertcError, InputError, MissingLibrary, said
from bertc.run_io import Record



class RayPredictor:
    """The ``map_batches`` actor: one engine (one ONNX Runtime session with ``threads`` threads) per actor,
    built from the :class:`EngineParts` in Ray's object store. Each result leaves as bytes (an embedding's
    float32 row, else JSON), with the row's index so that the driver writes every row once, in order. A
    bertc error (an over-long text) leaves as data too (``error``): Ray Data would wrap a raised one into
    an exception that no longer says what it was."""

    def __init__(self, parts_ref, threads: int):
        import ray

        parts = parts_ref[0] if isinstance(parts_ref, list) else parts_ref
        self.engine = Engine(ray.get(parts) if isinstance(parts, ray.ObjectRef) else parts, threads)

    def __call__(self, batch: dict) -> dict:
        index = np.asarray(batch["index"], np.int64)
        options = batch["choices"] if "choices" in batch else [()] * len(index)
        records = [Record(str(t), str(p) if has else None, str(w), tuple(str(c) for c in choices) or None)
                   for t, p, has, w, choices in zip(batch["text"], batch["pair"], batch["has_pair"], batch["where"],
                                                    options)]
        errors = np.array([""] * len(index), dtype=object)
        kept = batch["kept"] if "kept" in batch else np.array([b""] * len(index), dtype=object)   # passed through
        try:
            results = self.engine.predict(records)
        except BertcError as exc:
            errors[0] = json.dumps([type(exc).__name__, str(exc)])
            return {"index": index, "result": np.array([b""] * len(index), dtype=object), "error": errors,
                    "kept": kept, "cut": np.zeros(len(index), dtype=bool)}
        if self.engine.parts.kind == "embedding":
            encoded = [np.asarray(r, "<f4").tobytes() for r in results]
        else:
            encoded = [json.dumps(r, ensure_ascii=False).encode() for r in results]
        cut = np.array([r.where in self.engine.cut for r in records], dtype=bool)
        return {"index": index, "result": np.array(encoded, dtype=object), "error": errors, "kept": kept, "cut": cut}


def _ray_blocks(records: Iterable[Record], size: int):
    """The input as pyarrow tables of ``size`` rows (index, text, pair, has_pair, where, choices, kept: the kept
    values pickled, which the actors pass back untouched), put in Ray's object store one at a time (Ray spills them
    to disk when its memory is full)."""
    import pickle

    import pyarrow as pa
    import ray

    refs, index = [], 0
    for window in windows(records, size):
        table = pa.table({"index": pa.array(range(index, index + len(window)), pa.int64()),
                          "text": [r.text for r in window], "pair": [r.pair or "" for r in window],
                          "has_pair": [r.pair is not None for r in window], "where": [r.where for r in window],
                          "choices": pa.array([list(r.choices or ()) for r in window], pa.list_(pa.string())),
                          "kept": pa.array([pickle.dumps(r.kept) if r.kept else b"" for r in window], pa.binary())})
        refs.append(ray.put(table))
        index += len(window)
    return refs, index


RAY_CONNECT_TIMEOUT = 10.0   # seconds for a Ray cluster's address to answer at all


def _check_reachable(address: str, named: str) -> None:
    """Refuse a ``HOST:PORT`` or ``ray://HOST[:PORT]`` address that no TCP connection reaches within
    ``RAY_CONNECT_TIMEOUT`` (a closed port, an unknown host, a host that does not answer): ``ray.init`` would
    retry it for good, printing "Failed to get cluster ID" lines; or one where something else than a Ray cluster
    answers (:func:`_not_grpc`: a web server's port), where ``ray.init`` would wait for good. ``named``: the address
    as the message says it (the option or RAY_ADDRESS). An address without a port (``auto``, a malformed one) is
    left to Ray."""
    import socket

    client = address.startswith("ray://")
    rest = address[len("ray://"):] if client else address
    if rest.startswith("["):   # [::1]:6379, ray://[::1]: a bracketed IPv6 host, its port after the bracket
        host, _, after = rest[1:].partition("]")
        colon, port = (":", after[1:]) if after.startswith(":") else ("", "")
    else:
        host, colon, port = rest.rpartition(":")
    if not colon:
        host, port = (host or rest, "10001") if client else ("", "")   # Ray Client's default port
    port_ok = port.isdigit() and 0 < int(port) < 65536
    bad_port = f"the port {port!r} is not a port number (1 to 65535)"
    if client and not (host and port_ok):   # ray://127.0.0.1:abc, ray:// : Ray waited 30 s, then "timeout"
        raise InputError(f"{named}: not a Ray Client address: {bad_port if host else 'no host'} (ray://HOST:PORT, "
                         f"the head's Ray Client port, 10001 by default)")
    if host and colon and not port_ok:
        raise InputError(f"{named}: not a Ray cluster address: {bad_port} (HOST:PORT, the head's GCS port, 6379 by "
                         f"default)")
    if not host or not port_ok:   # auto, a cluster's own name for itself: Ray's to read
        return
    try:
        connection = socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT)
    except socket.gaierror as exc:
        why = f"unknown host {host!r} ({exc.strerror})"
    except socket.timeout:
        why = f"no answer from {host}:{port} in {RAY_CONNECT_TIMEOUT:g} s"
    except OSError as exc:
        why = f"{host}:{port}: {exc.strerror or exc}"
    else:
        why = _not_grpc(connection, f"{host}:{port}")
        if why is None:
            return
    raise InputError(f"{named}: cannot connect to a Ray cluster: {why} (a cluster's address is its head's "
                     f"HOST:PORT, the GCS port, 6379 by default, or ray://HOST:10001 for Ray Client)")


# HTTP/2's client connection preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, Ray Client's server)
# answers with its own SETTINGS frame (type 4, the fourth byte of the 9-byte frame header)
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _not_grpc(connection, where: str) -> Optional[str]:
    """None when the server at the other end of ``connection`` speaks gRPC (HTTP/2), as a Ray cluster's GCS and Ray
    Client's server do; else why not (a web server, a database, a port that accepts and stays silent): ``ray.init``
    would wait on such a port for good. Closes ``connection``."""
    import socket

    data = b""
    try:
        with connection:
            connection.sendall(_HTTP2_PREFACE)
            while len(data) < 9:
                chunk = connection.recv(9 - len(data))
                if not chunk:
                    break
                data += chunk
    except socket.timeout:
        if not data:
            return f"{where} accepts connections but does not answer as a Ray cluster (a gRPC server) does, in " \
                   f"{RAY_CONNECT_TIMEOUT:g} s"
    except OSError as exc:
        return f"{where}: {exc.strerror or exc}"
    if len(data) == 9 and data[3] == 4:
        return None
    reply = f"it replied {data!r}" if data else "it closed the connection"
    return f"{where} answers, but not as a Ray cluster (a gRPC server) does: {reply}"


def ray_init(address: Optional[str]):
    try:
        import ray
    except ImportError:
        from bertc.run_io import RAY_MISSING

        raise MissingLibrary(RAY_MISSING) from None
    if not ray.is_initialized():
        import os

        asked = said(f"--ray {address or '(local)'}", f"ray_address={address!r}")
        if address and address != "auto":
            _check_reachable(address, asked)
        elif os.environ.get("RAY_ADDRESS") and os.environ["RAY_ADDRESS"] != "auto":   # what ray.init connects to
            _check_reachable(os.environ["RAY_ADDRESS"], f"{asked}: RAY_ADDRESS={os.environ['RAY_ADDRESS']}")
        kwargs = {"address": address} if address else {}
        import signal

        # ray.init puts its own SIGTERM handlers over the caller's (Python's: exit; its core worker's: a stack dump,
        # then abort, exit 134, which skips every cleanup); a Python handler of the caller's (bertc run's: unwind,
        # remove the temporary result, shut the local Ray down at exit, exit 143) is put back afterwards
        main = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main else None
        try:
            ray.init(**kwargs, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                     ignore_reinit_error=True)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise InputError(f"{asked}: cannot connect to a Ray cluster: "
                             f"{' '.join(str(exc).split())[:300]}") from None
        finally:
            if callable(sigterm):
                signal.signal(signal.SIGTERM, sigterm)
    return ray


def run_ray(runtime, records: Iterable[Record], address: Optional[str] = None,
            actors: Optional[int] = None, progress: Optional[Callable[[int], None]] = None,
            predictor=RayPredictor, kept: bool = False) -> Iterator[list]:
    """A :class:`bertc.runtime.Runtime`'s job over Ray Data: ``map_batches`` with a pool of ``actors`` (default: the cluster's
    CPUs divided by the threads per actor) :class:`RayPredictor` actors of ``runtime.threads`` threads each
    (default 1). Yields results in input order, each row exactly once: a worker that dies is restarted by
    Ray and its batch retried; a row seen twice is dropped, a row missing is an error. ``kept``: yields
    (results, their records' kept values) instead."""
    if runtime.choice.provider != "CPUExecutionProvider":   # Ray gives the actors CPUs (num_cpus), no GPU
        raise InputError(f"over Ray the model runs on the actors' CPUs: this Runtime runs {runtime.choice.path} on "
                         f"{runtime.choice.provider}; make it with device='cpu'")
    ray = ray_init(address)
    with _ray_quiet(ray):
        yield from _run_ray(ray, runtime, records, actors, progress, predictor, kept)


def _ray_version(ray) -> tuple:
    """Ray's (major, minor), (99, 0) where its version does not read as numbers."""
    try:
        return tuple(int(part) for part in ray.__version__.split(".")[:2])
    except (AttributeError, ValueError):
        return (99, 0)


@contextmanager
def _ray_quiet(ray):
    """Ray Data's settings for a bertc job (input order kept, no progress bars or start-up lines: bertc draws its
    own; Ray's INFO lines off the console) for the job, then the caller's put back: ``Runtime.run_file`` in a
    process that uses Ray Data for more leaves its settings as they were."""
    import logging

    import ray.data

    levels = {"ray.data": logging.WARNING, "ray": logging.WARNING,   # the plan, "execution finished"
              "ray.data._internal.progress": logging.ERROR}   # "Progress bars disabled. To enable, set ..."
    if _ray_version(ray) < (2, 57):   # Ray 2.51-2.55: "object store is configured to use only 42.9% of available
        # memory" on every local Ray; up to 2.56: "Cluster resources are not enough to run any task ... may hang
        # forever" as the pool starts (2.57 says it only after a wait: kept there)
        levels["ray.data._internal.execution.resource_manager"] = logging.ERROR
    loggers = {name: logging.getLogger(name) for name in levels}
    before_levels = {name: logger.level for name, logger in loggers.items()}
    context = ray.data.DataContext.get_current()
    settings = {"enable_progress_bars": False, "print_on_execution_start": False}
    if hasattr(context, "enable_operator_progress_bars"):
        settings["enable_operator_progress_bars"] = False
    before = {name: getattr(context, name) for name in settings}
    preserve_order = context.execution_options.preserve_order
    for name, level in levels.items():
        loggers[name].setLevel(level)
    for name, value in settings.items():
        setattr(context, name, value)
    context.execution_options.preserve_order = True
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(context, name, value)
        context.execution_options.preserve_order = preserve_order
        for name, level in before_levels.items():
            loggers[name].setLevel(level)


def _run_ray(ray, runtime, records, actors, progress, predictor, kept) -> Iterator[list]:
    import ray.data

    threads = runtime.threads or 1
    nodes = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    if nodes and threads > max(nodes):   # an actor asks for num_cpus=threads: one that fits no node is never placed,
        # and Ray Data waits for good ("The job may hang forever")
        raise InputError(f"{said('--threads', 'threads')} {threads}: each Ray actor takes that many CPUs, and no "
                         f"node of this cluster has more than {max(nodes):g}; pass "
                         f"{said('--threads ', 'threads=')}{int(max(nodes))} or fewer")
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
    # one block per window, one window per map_batches call: the same windows, sorted and batched as in one
    # process, so the same results (dynamic int8 quantizes each batch's activations with its own scale)
    refs, total = _ray_blocks(records, runtime.window)
    if not total:
        return
    parts_ref = ray.put(runtime.portable_parts())
    # no more actors than windows (the rest would idle, and Ray Data warns of them); restarts and retries are Ray
    # Data's defaults for an actor pool (max_restarts=-1, max_task_retries=-1), which passing them as remote args
    # (deprecated: Ray 2.64 drops them) only repeated
    size = min(actors, len(refs))
    # the pool's size as each Ray asks for it: 2.9-2.50 deprecate compute= (a warning line on every job), 2.51 on
    # deprecate concurrency= for compute=
    pool = {"concurrency": size} if _ray_version(ray) < (2, 51) else {"compute": ray.data.ActorPoolStrategy(size=size)}
    ds = ray.data.from_arrow_refs(refs).map_batches(
        predictor, fn_constructor_args=([parts_ref], threads), batch_size=runtime.window, batch_format="numpy",
        num_cpus=threads, **pool)
    batches = _ordered_once(runtime, ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2),
                            total, progress)
    yield from (batches if kept else (results for results, _ in batches))


def _actor_error(message: str) -> BertcError:
    from bertc import errors

    name, text = json.loads(message)
    cls = getattr(errors, name, BertcError)
    return cls(text) if cls in (InputError, BackendLoadError, errors.OutputError) else BertcError(text)


def _ordered_once(runtime, batches, total: int, progress) -> Iterator[tuple[list, list]]:
    """The results of ``batches`` (each with its rows' ``index``), checked to come in input order with every
    row exactly once: a row seen again (a retried batch) is dropped, a row missing is an error. Yields
    (results, their rows' kept values)."""
    import pickle

    expected = 0
    for batch in batches:
        failed = [e for e in batch["error"] if e]
        if failed:
            raise _actor_error(failed[0])
        index = batch["index"]
        keep = index >= expected
        if not keep.any():
            continue
        index = index[keep]
        if index[0] != expected or np.any(np.diff(index) != 1):
            raise BertcError(f"the Ray job lost rows: expected row {expected}, got {int(index[0])}")
        expected = int(index[-1]) + 1
        if runtime.kind == "embedding":
            results = runtime.at_precision([np.frombuffer(r, "<f4") for r in batch["result"][keep]])
        else:
            results = [json.loads(r) for r in batch["result"][keep]]
        runtime._count_cut(int(np.count_nonzero(batch["cut"][keep])))
        if progress:
            progress(len(results))
        yield results, [pickle.loads(k) if len(k) else () for k in batch["kept"][keep]]
    if expected != total:
        raise BertcError(f"the Ray job returned {expected} of {total} rows")
