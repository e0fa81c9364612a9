"""Study storage: the journal file in the run folder or an RDB URL, run-folder locks, and dead-worker cleanup."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from filelock import FileLock
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from utils.errors import UserError

JOURNAL_NAME = "study.journal"
LOCK_NAME = "evolve.lock"
HEARTBEAT_INTERVAL_S = 60.0
# A RUNNING child on another host whose heartbeat is older than this is considered dead.
HEARTBEAT_GRACE_S = 600.0
WORKER_ATTR = "worker"
POSTGRES_SCHEMES = {"postgresql", "postgres"}  # without a driver name
POSTGRES_DRIVER = "postgresql+psycopg2"
DEFAULT_POSTGRES_PORT = 5432
HEARTBEAT_ATTR = "heartbeat"
EVALUATIONS_SUFFIX = "/evaluations"  # the extra evaluations' study: <name>/evaluations
METRIC_NAME = "fitness"  # what the objective is called in optuna-dashboard and trials_dataframe
FAILURE_ATTR = "failure"  # why a run FAILed, one of Failure's values: recorded, never read back from the message


class Failure:
    """Why a run failed, as recorded on its trial (plain strings, so that every storage keeps them)."""

    OBJECTIVE = "objective"  # the run itself raised: it may fail again, so repeated failures are given up
    INTERRUPTED = "interrupted"  # Ctrl-C: rerunning the command runs it again
    WORKER_STOPPED = "worker stopped"  # its worker died (SIGKILL, power): rerunning runs it again


def run_lock(run_dir: Path) -> FileLock:
    """The lock that serialises study setup, imports and view refreshes among the run folder's workers."""
    return FileLock(str(run_dir / LOCK_NAME))


def open_storage(run_dir: Path, storage: str | None) -> optuna.storages.BaseStorage:
    """``storage=None``: a journal file in the run folder (many local processes, NFS-safe); else an RDB URL.

    Opening reads the journal or connects to the database, so a damaged journal or an unreachable server is
    reported here, as one line."""
    if storage is None:
        journal = str(run_dir / JOURNAL_NAME)
        # O_CREAT|O_EXCL lock files are atomic on local disks and NFSv3+, unlike fcntl locks on NFS.
        backend = MendingJournalBackend(journal, lock_obj=JournalFileOpenLock(journal))
        backend.mend()
        try:
            return JournalStorage(backend)  # replays the whole journal
        # json.JSONDecodeError is a ValueError, as is Optuna's "Invalid log format."; a JSON line that is not a
        # journal entry ({"note": 1}) is a KeyError or TypeError inside the replay.
        except (ValueError, KeyError, TypeError) as error:
            raise damaged_journal_error(Path(journal), error) from None
    url = database_url(storage)
    try:
        return RDBStorage(url.render_as_string(hide_password=False), engine_kwargs={"pool_pre_ping": True})
    except Exception as error:  # SQLAlchemy raises many types; the message is what the user needs
        raise UserError(storage_error(storage, url, error)) from None


class MendingJournalBackend(JournalFileBackend):
    """Optuna's journal file, whose every writer first mends an unfinished last line (``mend_tail``) under the lock
    it holds for the write: Optuna skips such a line when reading but appends the next entry onto it, which damages
    the journal for good (a worker killed mid-write, or a full disk, while other workers go on)."""

    @contextmanager
    def mended(self) -> Iterator[None]:
        """Hold the journal's lock, with its tail mended."""
        self._lock.acquire()
        try:
            mend_tail(Path(self._file_path))
            yield
        finally:
            self._lock.release()

    def mend(self) -> None:
        with self.mended():
            pass

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with self.mended():
            text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
            with open(self._file_path, "ab") as file:  # as Optuna's own append_logs
                file.write(text.encode("utf-8"))
                file.flush()
                os.fsync(file.fileno())


def mend_tail(journal: Path) -> None:
    """Under the journal's lock: a last line without its newline gets one when it is a whole journal entry, and is
    otherwise (a write cut short) moved to ``study.journal.unfinished`` (appended: nothing is deleted) and cut off,
    with a console line. The child an unfinished entry belonged to was never recorded as finished."""
    try:
        with open(journal, "r+b") as file:
            file.seek(0, os.SEEK_END)
            if file.tell() == 0:
                return
            file.seek(-1, os.SEEK_END)
            if file.read(1) == b"\n":
                return
            file.seek(0)
            data = file.read()
            keep = data.rfind(b"\n") + 1
            if is_journal_entry(data[keep:]):
                file.write(b"\n")  # at the end: only the newline was missing
                what = "its last entry lacked a newline: added"
            else:
                with open(journal.with_name(journal.name + ".unfinished"), "ab") as aside:
                    aside.write(data[keep:] + b"\n")
                    aside.flush()
                    os.fsync(aside.fileno())
                file.truncate(keep)
                what = f"it ended in a write cut short ({len(data) - keep} bytes): moved to {journal.name}.unfinished"
            file.flush()
            os.fsync(file.fileno())
    except FileNotFoundError:
        return
    print(f"evolve: {journal}: {what}", flush=True)


def is_journal_entry(line: bytes) -> bool:
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and "op_code" in entry


def check_storage(run_dir: Path, storage: str | None) -> None:
    """Open the study's storage once, early: a damaged journal or an unreachable database fails before any data is
    scanned. Creates nothing: a journal that does not exist yet is left to the first worker."""
    if storage is not None or (run_dir / JOURNAL_NAME).is_file():
        open_storage(run_dir, storage)


def database_url(storage: str) -> sqlalchemy.engine.URL:
    """Parse ``--storage``; a plain ``postgresql://`` (or ``postgres://``) URL uses psycopg2, which requirements.txt
    installs (SQLAlchemy 2 would otherwise pick psycopg 3)."""
    try:
        url = sqlalchemy.engine.make_url(storage)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        message = f"--storage must be a database URL such as postgresql://user@host/db (got {storage!r})"
        raise UserError(message) from None
    if url.drivername in POSTGRES_SCHEMES:
        url = url.set(drivername=POSTGRES_DRIVER)
    return url


def storage_error(storage: str, url: sqlalchemy.engine.URL, error: Exception) -> str:
    """One line saying what stops the database from opening: no driver, no server, a bad password or no database."""
    shown = sqlalchemy.engine.make_url(storage).render_as_string(hide_password=True)
    where = f"{url.host or 'localhost'}:{url.port or DEFAULT_POSTGRES_PORT}"
    text = " ".join(str(error).split())
    if isinstance(error, ImportError) or "Failed to import DB access module" in text:
        return (
            f"--storage {shown}: no Python driver for {url.drivername} is installed (requirements.txt brings psycopg2)"
        )
    problems = (
        ("password authentication failed", f"password authentication failed for user '{url.username}' at {where}"),
        ("no password supplied", f"the server at {where} asks for a password for user '{url.username}'"),
        ("does not exist", f"database '{url.database}' does not exist at {where} (create it first: createdb)"),
        ("could not translate host name", f"unknown host '{url.host}'"),
        ("connection refused", f"cannot reach a PostgreSQL server at {where} (connection refused)"),
        ("timeout expired", f"cannot reach a PostgreSQL server at {where} (timed out)"),
        ("could not connect", f"cannot reach a PostgreSQL server at {where}"),
    )
    for needle, message in problems:
        if needle in text.lower():
            return f"--storage {shown}: {message}"
    return f"--storage {shown}: cannot open the database at {where}: {str(error).strip().splitlines()[0]}"


def open_study(
    run_dir: Path,
    storage: str | None,
    study_name: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Create the study, or join it when another worker (or an earlier run) already made it.

    The run folder's journal holds one evolution (and its ``/evaluations`` study): a journal that holds another one
    and not ``study_name`` is a copied or renamed run folder, whose finished children a new study would hide from
    the views, so it is refused. A shared database (``storage``) holds many studies by design."""
    opened = open_storage(run_dir, storage)
    names = {study.study_name for study in opened.get_all_studies()}
    if storage is None:
        others = sorted(name for name in names if not name.endswith(EVALUATIONS_SUFFIX))
        if others and study_name not in names:
            raise UserError(
                f"{run_dir / JOURNAL_NAME} holds the evolution '{others[0]}', not '{study_name}' (a copied or "
                f"renamed run folder?): continue it as --name {others[0]} (study_name from Python) in its own "
                f"folder, or start a new --name with --evolve-from {run_dir / 'evolve.csv'}"
            )
    try:
        if study_name in names:  # joined without a write, so that a worker refused by the setup check changes nothing
            study = optuna.load_study(storage=opened, study_name=study_name, sampler=sampler, pruner=pruner)
        else:
            study = optuna.create_study(
                storage=opened,
                study_name=study_name,
                sampler=sampler,
                pruner=pruner,
                direction="maximize",
                load_if_exists=True,
            )
    except (ValueError, KeyError, TypeError, AssertionError) as error:
        if storage is not None:
            raise
        raise damaged_journal_error(run_dir / JOURNAL_NAME, error) from None
    return name_metric(study)


def name_metric(study: optuna.Study) -> optuna.Study:
    """Name the objective ``fitness`` (optuna-dashboard shows "Objective Value" otherwise), once: a study that a
    worker or an earlier run already named is not written again."""
    if study.metric_names != [METRIC_NAME]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC_NAME])
    return study


def damaged_journal_error(journal: Path, error: Exception) -> UserError:
    """A one-line error naming the journal's first line that is not a JSON journal entry (an object with an
    ``op_code``), and how to go on without losing rows.

    Optuna tolerates an unfinished last line (a write cut short); any other bad line stops it reading the study.
    The views are not touched, so evolve.csv still holds every child finished before the damage.
    """
    lines = journal.read_bytes().split(b"\n")
    complete = lines[:-1]  # the part after the last newline is an unfinished write, which Optuna skips
    bad = next((number for number, line in enumerate(complete, start=1) if not is_journal_entry(line)), None)
    where = "a line" if bad is None else f"line {bad}"
    evolve_csv = journal.parent / "evolve.csv"
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return UserError(
        f"{journal}: {where} is not a valid journal entry, so the study cannot be read ({reason}); "
        f"delete or repair that line to continue, or start a new --name with --evolve-from {evolve_csv}, "
        "which still holds the finished children"
    )


def process_start_time(pid: int) -> str | None:
    """The kernel's start tick of a process (Linux), so a reused pid is not mistaken for the old worker."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, start_time: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    current = process_start_time(pid)
    return start_time is None or current is None or current == start_time


def pid_namespace() -> str | None:
    """Which pids this process can see: the machine's boot and the pid namespace (Linux), or None elsewhere.

    Containers that share a hostname (and two boots of one machine) number their processes independently, so a pid
    means the same process only where this matches."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


@dataclass(frozen=True)
class Worker:
    """Who runs a child: recorded on the trial so that a dead worker's child can be failed later."""

    host: str
    pid: int
    start_time: str | None
    namespace: str | None = None  # pid_namespace(): where ``pid`` means this process

    @classmethod
    def current(cls) -> Worker:
        return cls(socket.gethostname(), os.getpid(), process_start_time(os.getpid()), pid_namespace())

    def as_attr(self) -> dict[str, object]:
        return {"host": self.host, "pid": self.pid, "start_time": self.start_time, "namespace": self.namespace}

    def sees_pid_of(self, owner: dict) -> bool:
        """Whether ``owner``'s pid names a process this worker can look up: same host and same pid namespace."""
        return owner.get("host") == self.host and owner.get("namespace") == self.namespace


def is_stale(trial: optuna.trial.FrozenTrial, worker: Worker, now: float) -> bool:
    """A RUNNING child is stale when its worker process is gone (where this worker sees its pids) or its heartbeat
    stopped (another host, or another container under the same hostname)."""
    owner = trial.user_attrs.get(WORKER_ATTR)
    if not owner:
        # Claimed but never started (the worker died between ask and its first write).
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return now - started > HEARTBEAT_GRACE_S
    if worker.sees_pid_of(owner):
        if owner["pid"] == worker.pid and owner["start_time"] == worker.start_time:
            return False
        return not process_alive(owner["pid"], owner["start_time"])
    # No heartbeat yet: the worker has just claimed it; its claim time stands in until the first beat.
    started = trial.datetime_start.timestamp() if trial.datetime_start else now
    return now - float(trial.user_attrs.get(HEARTBEAT_ATTR, started)) > HEARTBEAT_GRACE_S


def fail_stale_children(study: optuna.Study, worker: Worker) -> list[int]:
    """Mark RUNNING children of dead workers FAIL (Optuna's heartbeat covers RDB only); returns their numbers."""
    failed = []
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(trial, worker, now):
            continue
        owner = trial.user_attrs.get(WORKER_ATTR) or {}
        message = f"worker {owner.get('host', '?')}:{owner.get('pid', '?')} stopped without finishing this run"
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "error", message)
            study._storage.set_trial_user_attr(trial._trial_id, FAILURE_ATTR, Failure.WORKER_STOPPED)
            study.tell(trial.number, state=TrialState.FAIL)
            failed.append(trial.number)
        except (RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
            pass  # another worker failed it first
    return failed


class Heartbeat:
    """Writes the time on a running child every interval, for workers on other hosts to judge it alive."""

    def __init__(self, trial: optuna.Trial, interval: float = HEARTBEAT_INTERVAL_S) -> None:
        self.trial = trial
        self.interval = interval
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.beat, daemon=True)

    def beat(self) -> None:
        while True:
            try:
                self.trial.set_user_attr(HEARTBEAT_ATTR, time.time())
            except Exception:  # the child finished meanwhile, or storage hiccup: the next beat retries
                pass
            if self.stop_event.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_event.set()
        self.thread.join()
