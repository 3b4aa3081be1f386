"""The decode memory budget: large decodes that do not fit together take turns, across threads and
processes; small ones never wait; a process that dies holding units lets go of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from service import decode_budget as budget_module
from service.decode_budget import UNITS, Abandoned, DecodeBudget

UNIT = 1000
TOTAL = UNITS * UNIT
HALF_AND_MORE = (UNITS // 2 + 1) * UNIT  # two of these never fit at once


@pytest.fixture
def budget():
    budget = DecodeBudget(TOTAL)
    yield budget
    budget.close()


class Holder(threading.Thread):
    """Holds ``nbytes`` of ``budget`` from a thread of its own (so with its own locks) until released;
    gives up waiting when ``abandoned`` is set (``gave_up``)."""

    def __init__(self, budget: DecodeBudget, nbytes: int, abandoned: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.budget, self.nbytes, self.abandoned = budget, nbytes, abandoned
        self.inside, self.release, self.gave_up = threading.Event(), threading.Event(), threading.Event()
        self.waited: list[float] = []

    def run(self) -> None:
        try:
            with self.budget.hold(self.nbytes, self.waited.append, self.abandoned):
                self.inside.set()
                self.release.wait(30)
        except Abandoned:
            self.gave_up.set()


def test_units_by_estimate(budget):
    assert budget.unit_bytes == UNIT
    assert budget.units_for(UNIT - 1) == 0  # small images take nothing
    assert budget.units_for(UNIT) == 1
    assert budget.units_for(5 * UNIT + 999) == 5
    assert budget.units_for(100 * TOTAL) == UNITS  # too large for the whole budget: all of it, alone


def test_large_decodes_that_do_not_fit_together_take_turns(budget):
    first = Holder(budget, HALF_AND_MORE)
    first.start()
    assert first.inside.wait(10)
    second = Holder(budget, HALF_AND_MORE)
    second.start()
    assert not second.inside.wait(0.5), "two decodes over the budget ran at once"
    first.release.set()
    assert second.inside.wait(10), "the second decode did not start once the first was done"
    assert second.waited and second.waited[0] > 0
    second.release.set()
    first.join(10), second.join(10)


def test_decodes_that_fit_together_run_together(budget):
    holders = [Holder(budget, (UNITS // 4) * UNIT) for _ in range(4)]
    for holder in holders:
        holder.start()
    assert all(holder.inside.wait(10) for holder in holders)
    for holder in holders:
        holder.release.set()
        holder.join(10)


def test_small_images_never_wait_even_with_the_budget_spent(budget):
    whole = Holder(budget, TOTAL)
    whole.start()
    assert whole.inside.wait(10)
    small = Holder(budget, UNIT - 1)
    small.start()
    assert small.inside.wait(10)
    assert small.waited == []  # it did not even ask
    for holder in (whole, small):
        holder.release.set()
        holder.join(10)


def test_an_image_larger_than_the_whole_budget_decodes_alone(budget):
    huge = Holder(budget, 10 * TOTAL)
    huge.start()
    assert huge.inside.wait(10)
    other = Holder(budget, UNIT)
    other.start()
    assert not other.inside.wait(0.3)
    huge.release.set()
    assert other.inside.wait(10)
    other.release.set()
    huge.join(10), other.join(10)


CHILD = """
import os, sys, time
from service.decode_budget import DecodeBudget
budget = DecodeBudget(int(sys.argv[2]), int(sys.argv[1]))
with budget.hold(int(sys.argv[3])):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_the_budget_is_shared_across_processes_and_freed_by_a_process_that_dies():
    """What the supervisor does: one budget file, its descriptor passed to each front end."""
    budget = DecodeBudget(TOTAL)
    fd = budget._fd
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(fd), str(TOTAL), str(TOTAL)],
        pass_fds=(fd,),
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    try:
        assert child.stdout.readline().strip() == "holding"
        here = Holder(budget, UNIT)
        here.start()
        assert not here.inside.wait(0.5), "another process's units were taken here"
        child.send_signal(signal.SIGKILL)  # dies holding every unit, no clean-up of its own
        child.wait(10)
        assert here.inside.wait(10), "the units of a killed process were not freed"
        here.release.set()
        here.join(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        budget.close()


def test_an_error_while_decoding_gives_the_units_back(budget):
    with pytest.raises(RuntimeError), budget.hold(TOTAL):
        raise RuntimeError("corrupt image")
    whole = Holder(budget, TOTAL)
    whole.start()
    assert whole.inside.wait(10)
    whole.release.set()
    whole.join(10)


def test_a_budget_smaller_than_its_units_is_refused():
    with pytest.raises(ValueError, match="at least"):
        DecodeBudget(UNITS - 1)


def test_waiting_is_reported_only_for_budgeted_images(budget):
    waited: list[float] = []
    with budget.hold(UNIT, waited.append):
        pass
    with budget.hold(UNIT - 1, waited.append):
        pass
    assert len(waited) == 1 and 0 <= waited[0] < 5


def test_a_wait_given_up_ends_at_once_and_holds_nothing(budget):
    whole = Holder(budget, TOTAL)
    whole.start()
    assert whole.inside.wait(10)
    abandoned = threading.Event()
    waiting = Holder(budget, HALF_AND_MORE, abandoned)  # gathers the free units, then waits
    waiting.start()
    assert not waiting.inside.wait(0.3)
    abandoned.set()  # its request ended
    assert waiting.gave_up.wait(5) and not waiting.inside.is_set()
    whole.release.set()
    whole.join(10)
    again = Holder(budget, TOTAL)  # nothing was left held, the turnstile included
    again.start()
    assert again.inside.wait(10)
    again.release.set()
    again.join(10)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_thread_that_ends_closes_its_own_description_of_the_file(budget):
    before = open_fds()
    for _ in range(5):
        holder = Holder(budget, UNIT)
        holder.start()
        assert holder.inside.wait(10)
        holder.release.set()
        holder.join(10)
    assert open_fds() == before


def test_without_proc_decoding_goes_on_unbudgeted_with_one_warning(budget, monkeypatch, caplog):
    def no_proc(path, *args):
        raise FileNotFoundError(path)

    monkeypatch.setattr(budget_module.os, "open", no_proc)
    for _ in range(2):
        with budget.hold(TOTAL):  # would otherwise wait for nobody: nothing else holds it either
            pass
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "decode memory budget unavailable" in caplog.records[0].message
