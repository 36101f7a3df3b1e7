"""The arm's in-flight rule: what the arm's word, or its silence, means for the job it was
sent. Pure; applied by the arm dispatcher (control/arm.py) and unit-tested on its own.

The arm (DHR's) says `busy`, `available` or `error` only when its status changes, not
retained, on a clean MQTT session: a word said while corral's link is down is lost.
"""

from dataclasses import dataclass
from typing import Literal

# wait: nothing to do yet; running: the arm took it; done / failed: it ended;
# resend: the arm never took it, send it again; unconfirmed: it cannot be told whether the
# arm did it (fail it, never send it twice, never call it done).
Outcome = Literal["wait", "running", "done", "failed", "resend", "unconfirmed"]


@dataclass
class Flight:
    """The one job the arm has, as far as this dispatcher knows."""

    task: int
    quiet_since: float  # monotonic: the send, the arm's last word, or the link's return
    busy: bool = False  # the arm said busy since the send (or the task was stored running)
    gap: bool = False  # since the send, words may have been lost: link lost, corral restarted
    sent: bool = True  # False: claimed in the store, but the publish did not go out
    timeout: float = 600.0  # the task's: silence longer than this gets a verdict
    attempt: int = 0  # which send of the task this is (the task's `attempts` then)
    adopted: bool = False  # sent by another leadership term: its sender's witness counts


def after_word(flight: Flight, status: str) -> Outcome:
    """A live (not retained) status from the arm while `flight` is out."""
    if status == "busy":
        return "running"
    if status == "error":
        return "failed"
    if flight.busy:
        return "done"  # busy, then available: the job is done
    if flight.gap:
        # It changed to available, so it was busy: with our job, whose busy the gap lost.
        return "done"
    return "resend"  # available with no busy on a steady link: it did not take the job


def after_silence(flight: Flight) -> Outcome:
    """Nothing from the arm for the job's timeout since `quiet_since`."""
    if flight.busy:
        # Its `available` was lost in the gap; on a steady link it is stuck.
        return "done" if flight.gap else "failed"
    # A DHR arm says busy at once: on a steady link, it never got the job. After a gap it
    # may have done the whole job unseen, or never got it.
    return "unconfirmed" if flight.gap else "resend"


def numeric(value: str | None) -> str | int | None:
    """An id as the arm reads it: a JSON number when it is one ("14" -> 14, "007" stays)."""
    if value is not None and value.isascii() and value.isdigit() and str(int(value)) == value:
        return int(value)
    return value
