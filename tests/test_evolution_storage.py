"""Tests for utils/evolution/storage.py: which running children belong to dead workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from utils.evolution.storage import (
    HEARTBEAT_ATTR,
    HEARTBEAT_GRACE_S,
    WORKER_ATTR,
    Worker,
    fail_stale_children,
    pid_namespace,
    process_start_time,
)


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def running_child(owner: Worker, heartbeat_age_s: float | None) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.set_user_attr(WORKER_ATTR, owner.as_attr())
    if heartbeat_age_s is not None:
        trial.set_user_attr(HEARTBEAT_ATTR, time.time() - heartbeat_age_s)
    return study


@pytest.mark.skipif(pid_namespace() is None, reason="pid namespaces are a Linux notion")
def test_the_pid_namespace_is_recorded_with_the_worker() -> None:
    assert Worker.current().as_attr()["namespace"] == pid_namespace() and "pid:[" in pid_namespace()


def test_a_dead_worker_seen_by_pid_is_failed_at_once() -> None:
    me = Worker.current()
    owner = Worker(me.host, dead_pid(), None, me.namespace)
    study = running_child(owner, heartbeat_age_s=0.0)
    assert fail_stale_children(study, me) == [0]
    assert study.trials[0].state == TrialState.FAIL and study.trials[0].user_attrs["failure"] == "worker stopped"


@pytest.mark.parametrize("pid", [None, os.getppid()], ids=["gone here", "another process here"])
def test_a_worker_in_another_container_with_the_same_hostname_is_judged_by_its_heartbeat(pid) -> None:
    """Its pid means nothing here: absent here, it is alive there; taken here by another process, it may be dead."""
    me = Worker.current()
    owner = Worker(me.host, pid or dead_pid(), process_start_time(os.getppid()), "another-boot/pid:[1]")
    assert fail_stale_children(running_child(owner, heartbeat_age_s=5.0), me) == []
    assert fail_stale_children(running_child(owner, heartbeat_age_s=HEARTBEAT_GRACE_S + 60), me) == [0]


def test_a_worker_on_another_host_is_judged_by_its_heartbeat() -> None:
    me = Worker.current()
    owner = Worker(me.host + "-other", dead_pid(), None, me.namespace)
    assert fail_stale_children(running_child(owner, heartbeat_age_s=5.0), me) == []
    assert fail_stale_children(running_child(owner, heartbeat_age_s=HEARTBEAT_GRACE_S + 60), me) == [0]
