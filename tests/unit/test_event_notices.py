"""The `corral_events` NOTIFY payloads: stored events' ids and kinds, split to fit
PostgreSQL's limit, and read back by the other replicas, who skip what they do not watch."""

from corral.store.events import NOTICE_BYTES, concern, heard, notices


def test_one_payload_names_ids_and_distinct_kinds_in_order() -> None:
    [payload] = notices("a1b2", [7, 8, 9], ["mission.started", "robot.waiting", "mission.started"])
    assert payload == "a1b2:7,8,9:mission.started,robot.waiting"
    assert heard(payload) == ("a1b2", [7, 8, 9], ("mission.started", "robot.waiting"))


def test_a_long_batch_is_split_under_the_limit_and_loses_no_id() -> None:
    ids = list(range(10_000_000, 10_003_000))
    kinds = [f"kind{i % 7}.x" for i in range(len(ids))]
    payloads = notices("r", ids, kinds)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= NOTICE_BYTES for p in payloads)
    back = [heard(p) for p in payloads]
    assert [i for _, got, _ in back for i in got] == ids
    for origin, got, named in back:
        assert origin == "r"
        assert named is not None
        assert set(named) == {f"kind{i % 7}.x" for i in range(got[0], got[-1] + 1)}


def test_an_earlier_payload_without_kinds_still_reads() -> None:
    assert heard("r:1,2") == ("r", [1, 2], None)
    assert heard("r:") == ("r", [], None)


def test_a_replica_skips_kinds_it_does_not_watch() -> None:
    fleet = ("mission.done", "robot.waiting")
    assert not concern(fleet, ("deployment.", "token."))
    assert not concern(fleet, ())  # nothing watched, no live stream
    assert concern(fleet, ("robot.",))
    assert concern(fleet, None)  # a live stream wants everything
    assert concern(None, ("deployment.",))  # kinds not said: read them
