"""One command, several evolution workers: start them as subprocesses that share one study, show their progress on
one console, and stop them together (Ctrl-C or SIGTERM to the command; a worker whose command died stops itself)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from utils.errors import UserError, one_line
from utils.evolution.console import eta_line, planned_evaluation_runs, plural
from utils.evolution.evaluations import SURPLUS_ATTR, Task, TrustPlan
from utils.evolution.options import EvolveOptions
from utils.evolution.seeded import IMPORTED_ATTR
from utils.evolution.storage import EVALUATIONS_SUFFIX, JOURNAL_NAME, WORKER_ATTR, open_storage
from utils.run_dir import make_folder

POLL_S = 1.0  # how often the command looks at its workers and the study
STOP_GRACE_S = 60.0  # after Ctrl-C, how long a worker may take to record its interrupted run before it is killed
START_MARK = "evolve: worker started"  # written to a worker's log before it starts, so a rerun's log says which run
FINAL_BLOCK = "evolve: views in "  # a worker's closing lines (views, trust report, verdict) start with this line


@dataclass(frozen=True)
class WorkerSpec:
    """One worker of the command: its name, its command line, what it adds to the environment, and its log."""

    label: str  # "cpu_0", "1_0": device, then the worker's number on that device
    command: list[str]
    env: dict[str, str]
    log: Path


def available_cores() -> int:
    """The cores this process may run on (its affinity where the system has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def cpu_threads(workers: int, cores: int | None = None) -> int:
    """Torch's intra-op threads for each of ``workers`` CPU workers: the cores shared out, at least one."""
    return max(1, (cores or available_cores()) // max(workers, 1))


def watch_parent(parent_pid: int, interval: float = POLL_S) -> threading.Thread:
    """In a worker: once the command that started it is gone (killed, even with SIGKILL), interrupt this process as
    Ctrl-C would (its run in flight is recorded as interrupted), and end it if that takes over ``STOP_GRACE_S``."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        signal.raise_signal(signal.SIGINT)  # as Ctrl-C: it also wakes a blocking call, which interrupt_main does not
        time.sleep(STOP_GRACE_S)
        os._exit(130)

    thread = threading.Thread(target=watch, name="watch-parent", daemon=True)
    thread.start()
    return thread


@dataclass
class Progress:
    """Reads the shared study and says what finished since the last look: a line per child and per evaluation, with
    its worker, and an ETA over all workers."""

    run_dir: Path
    storage: str | None
    study_name: str
    n: int
    labels: dict[int, str]  # worker pid -> label
    plan: TrustPlan = field(default_factory=TrustPlan)
    seen: set[tuple[str, int]] = field(default_factory=set)
    child_seconds: list[float] = field(default_factory=list)
    _storage: optuna.storages.BaseStorage | None = None

    @classmethod
    def of(cls, evolution: EvolveOptions) -> Progress:
        return cls(evolution.run_dir, evolution.storage, evolution.study_name, evolution.n, {}, evolution.trust)

    def studies(self) -> tuple[optuna.Study | None, optuna.Study | None]:
        """The children's and the evaluations' studies, once a worker has made them."""
        if self._storage is None:
            if self.storage is None and not (self.run_dir / JOURNAL_NAME).is_file():
                return None, None
            self._storage = open_storage(self.run_dir, self.storage)
        names = {summary.study_name for summary in self._storage.get_all_studies()}
        loaded = [
            optuna.load_study(study_name=name, storage=self._storage) if name in names else None
            for name in (self.study_name, f"{self.study_name}{EVALUATIONS_SUFFIX}")
        ]
        return loaded[0], loaded[1]

    def poll(self, live_workers: int) -> list[str]:
        """Lines for every run that finished since the last call, then the ETA when a child finished."""
        children, evaluations = self.studies()
        if children is None:
            return []
        own = [trial for trial in children.get_trials(deepcopy=False) if is_own(trial)]
        lines = []
        for trial in own:
            if trial.state.is_finished() and ("child", trial.number) not in self.seen:
                self.seen.add(("child", trial.number))
                lines.append(self.child_line(trial, own))
                if trial.state == TrialState.COMPLETE and trial.datetime_start and trial.datetime_complete:
                    self.child_seconds.append((trial.datetime_complete - trial.datetime_start).total_seconds())
        done_evaluations = 0
        for trial in evaluations.get_trials(deepcopy=False) if evaluations is not None else []:
            task = Task.of(trial)
            if task is None or SURPLUS_ATTR in trial.user_attrs or not trial.state.is_finished():
                continue
            done_evaluations += trial.state == TrialState.COMPLETE
            if ("evaluation", trial.number) not in self.seen:
                self.seen.add(("evaluation", trial.number))
                lines.append(f"evolve: {task.kind} of child {task.child} (seed {task.seed}) {outcome(trial)}"
                             f" ({self.worker(trial)})")  # fmt: skip
        if any(line.startswith("evolve: child ") for line in lines) and self.child_seconds:
            lines.append(self.eta(own, done_evaluations, live_workers))
        return lines

    def worker(self, trial: FrozenTrial) -> str:
        owner = trial.user_attrs.get(WORKER_ATTR) or {}
        return f"worker {self.labels.get(owner.get('pid'), owner.get('pid', '?'))}"

    def child_line(self, trial: FrozenTrial, own: Sequence[FrozenTrial]) -> str:
        """``evolve: child 7 fitness 0.123 (worker cpu_1; 8/16 finished, best 0.15)``."""
        shown = [child for child in own if ("child", child.number) in self.seen]  # in the order they were shown
        finished = sum(child.state in (TrialState.COMPLETE, TrialState.PRUNED) for child in shown)
        values = [child.value for child in shown if child.state == TrialState.COMPLETE and child.value is not None]
        best = f", best {max(values):.5g}" if values else ""
        where = f"{self.worker(trial)}; {finished}/{self.n} finished{best}"
        return f"evolve: child {trial.number} {outcome(trial)} ({where})"

    def eta(self, own: Sequence[FrozenTrial], done_evaluations: int, workers: int) -> str:
        """The time left over all workers, from the median child so far."""
        finished = sum(child.state in (TrialState.COMPLETE, TrialState.PRUNED) for child in own)
        evaluations_left = max(planned_evaluation_runs(self.plan, self.n, None) - done_evaluations, 0)
        return eta_line(self.child_seconds, max(self.n - finished, 0), evaluations_left, workers, False, "all")


def is_own(trial: FrozenTrial) -> bool:
    """A child a worker ran: not an imported row, nor a surplus claim."""
    return not trial.user_attrs.get(IMPORTED_ATTR) and SURPLUS_ATTR not in trial.user_attrs


def outcome(trial: FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        return f"fitness {trial.value:.5g}"
    if trial.state == TrialState.FAIL:
        return f"failed ({trial.user_attrs.get('error', 'unknown error')})"
    return trial.state.name.lower()


def last_line(log: Path) -> str:
    """The last non-empty line of a worker's log since it was started (what it said before it stopped)."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return "" if not lines or lines[-1].startswith(START_MARK) else lines[-1].strip()


def final_block(log: Path) -> list[str]:
    """A worker's closing lines: where the views are, the trust report and the verdict (the same in every worker)."""
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    starts = [index for index, line in enumerate(lines) if line.startswith(FINAL_BLOCK)]
    return lines[starts[-1] :] if starts else []


def say_now(line: str) -> None:
    print(line, flush=True)  # under nohup, stdout is a file: each line as it happens


def launch(specs: Sequence[WorkerSpec], progress: Progress, say: Callable[[str], None] = say_now) -> None:
    """Start every worker, relay their progress until all have exited, then print the verdict once.

    Ctrl-C or SIGTERM stops every worker the way Ctrl-C stops one (its run in flight is recorded as interrupted;
    rerunning the command resumes), then raises KeyboardInterrupt. A worker that fails is named with its log's last
    line while the others go on; UserError at the end if any failed."""
    for spec in specs:
        make_folder(spec.log.parent)
    say(f"evolve: {plural(len(specs), 'worker', 'workers')} share the study; their logs: "
        + ", ".join(str(spec.log) for spec in specs))  # fmt: skip
    stop = threading.Event()
    handlers = {number: signal.signal(number, lambda *_: stop.set()) for number in (signal.SIGINT, signal.SIGTERM)}
    processes = {}
    try:
        for spec in specs:
            with open(spec.log, "ab") as log:  # the child keeps its own descriptor
                log.write(f"{START_MARK} {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(spec.command)}\n".encode())
                log.flush()
                # A session of its own: a terminal's Ctrl-C reaches this command only, which stops each worker once.
                environment = {**os.environ, **spec.env}
                processes[spec.label] = subprocess.Popen(
                    spec.command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
                )
        progress.labels.update({process.pid: label for label, process in processes.items()})
        failed = supervise(specs, processes, progress, stop, say)
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
        stop_all(processes.values())  # after an error in this command too: no worker outlives it
    if stop.is_set():
        say("evolve: interrupted; every worker stopped, finished children are kept: rerun the same command to continue")
        raise KeyboardInterrupt
    finished = [spec.log for spec in specs if spec.label not in failed]
    for line in final_block(finished[0]) if finished else []:
        say(line)
    if failed:
        raise UserError(f"{plural(len(failed), 'worker', 'workers')} of {len(specs)} failed ({', '.join(failed)}); "
                        f"see {specs[0].log.parent}/worker_*.log")  # fmt: skip


def stop_all(processes: Iterable[subprocess.Popen], grace: float = STOP_GRACE_S) -> None:
    """Interrupt the workers still running (each records its run in flight as interrupted), wait up to ``grace``,
    then kill what is left with its process group (its data-loader processes)."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace
    for process in running:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            kill_group(process)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a worker and the processes it started (it leads its own session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (AttributeError, ProcessLookupError, PermissionError):  # no process groups (Windows), or gone
        process.kill()
    process.wait()


def supervise(
    specs: Sequence[WorkerSpec],
    processes: dict[str, subprocess.Popen],
    progress: Progress,
    stop: threading.Event,
    say: Callable[[str], None],
) -> list[str]:
    """Relay progress until every worker has exited; on ``stop``, interrupt them all, then kill any that lingers.
    Returns the labels of the workers that failed."""
    logs = {spec.label: spec.log for spec in specs}
    exited: dict[str, int] = {}
    deadline = None
    while len(exited) < len(processes):
        if stop.is_set() and deadline is None:
            for label, process in processes.items():
                if label not in exited:
                    process.send_signal(signal.SIGINT)
            deadline = time.monotonic() + STOP_GRACE_S
        if deadline is not None and time.monotonic() > deadline:
            for label, process in processes.items():
                if label not in exited and process.poll() is None:
                    kill_group(process)
        for label, process in processes.items():
            if label not in exited and (code := process.poll()) is not None:
                exited[label] = code
                if code != 0 and not stop.is_set():
                    say(f"evolve: worker {label} exited with code {code}: {last_line(logs[label])}")
        try:
            for line in progress.poll(len(processes) - len(exited)):
                say(line)
        except Exception as error:  # the display only (a database hiccup): the workers go on, and so does this
            say(f"evolve: cannot read the study's progress now ({type(error).__name__}: {one_line(error, 200)})")
        if len(exited) < len(processes):
            time.sleep(POLL_S) if stop.is_set() else stop.wait(POLL_S)
    return [label for label, code in exited.items() if code != 0]
