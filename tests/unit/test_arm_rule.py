"""The arm's in-flight rule: every word (and silence) against every kind of flight, and ids
as the arm reads them."""

import pytest

from corral.model.arm import Flight, after_silence, after_word, numeric


def flight(busy: bool, gap: bool) -> Flight:
    return Flight(task=1, quiet_since=0.0, busy=busy, gap=gap)


@pytest.mark.parametrize(
    ("busy", "gap", "word", "outcome"),
    [
        (False, False, "busy", "running"),
        (True, True, "busy", "running"),
        (False, False, "error", "failed"),
        (True, False, "available", "done"),
        (True, True, "available", "done"),
        (False, True, "available", "done"),  # its busy was lost in the gap
        (False, False, "available", "resend"),  # it did not take the job
    ],
)
def test_a_word_from_the_arm(busy: bool, gap: bool, word: str, outcome: str) -> None:
    assert after_word(flight(busy, gap), word) == outcome


@pytest.mark.parametrize(
    ("busy", "gap", "outcome"),
    [
        (False, False, "resend"),  # it never got the job
        (True, False, "failed"),  # stuck after busy
        (True, True, "done"),  # its available was lost in the gap
        (False, True, "unconfirmed"),  # never sent twice, never called done
    ],
)
def test_silence_past_the_timeout(busy: bool, gap: bool, outcome: str) -> None:
    assert after_silence(flight(busy, gap)) == outcome


def test_ids_are_numbers_when_they_are_numbers() -> None:
    assert numeric("14") == 14
    assert numeric("801") == 801
    assert numeric("0") == 0
    assert numeric("007") == "007"  # a number would lose its zeros
    assert numeric("p3") == "p3"
    assert numeric("١٤") == "١٤"  # not ASCII digits
    assert numeric(None) is None
