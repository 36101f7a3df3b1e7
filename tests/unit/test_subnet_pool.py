"""The session networks' subnet pool: blocks handed out once, engine networks avoided,
freed at clean-up, a pool that is used up says so; the setting is checked at start."""

import ipaddress

import pytest

from corral.config import Settings
from corral.model.subnets import SubnetPool, containers_per_block, parse_pool


def test_more_sessions_than_dockers_default_pools_get_distinct_blocks() -> None:
    pool = SubnetPool("10.213.0.0/16", 27)
    pool.note_engine({"bridge": ["172.17.0.0/16"], "host": []})
    blocks = [pool.take(f"S{i}", f"ses-S{i}") for i in range(200)]
    assert None not in blocks
    nets = [ipaddress.ip_network(b) for b in blocks if b]
    assert len(set(nets)) == 200
    assert all(
        n.prefixlen == 27 and n.subnet_of(ipaddress.ip_network("10.213.0.0/16")) for n in nets
    )
    assert pool.take("S7", "ses-S7") == blocks[7]  # a session keeps its block


def test_blocks_overlapping_the_engines_networks_are_skipped() -> None:
    pool = SubnetPool("10.213.0.0/24", 27)  # 8 blocks
    pool.note_engine({"theirs": ["10.213.0.0/26"], "v6": ["fd00::/64"], "bad": ["nonsense"]})
    got = [pool.take(f"S{i}", f"ses-S{i}") for i in range(6)]
    assert got == [f"10.213.0.{n}/27" for n in (64, 96, 128, 160, 192, 224)]
    assert pool.take("S6", "ses-S6") is None
    assert pool.free() == 0


def test_a_released_block_is_free_again_and_a_refused_one_set_aside() -> None:
    pool = SubnetPool("10.213.0.0/26", 27)  # 2 blocks
    pool.note_engine({})
    a = pool.take("A", "ses-A")
    b = pool.take("B", "ses-B")
    assert a
    assert b
    assert a != b
    assert pool.take("C", "ses-C") is None
    pool.release("A", "ses-A")
    assert pool.take("C", "ses-C") == a
    pool.refuse("C", "ses-C")  # the engine said it overlaps a network made meanwhile
    assert pool.take("D", "ses-D") is None
    pool.note_engine({"ses-B": [b]})  # read again: the refused block was a passing conflict
    assert pool.take("D", "ses-D") == a


def test_a_sessions_own_network_on_the_engine_is_its_block_after_a_restart() -> None:
    pool = SubnetPool("10.213.0.0/16", 27)
    pool.note_engine({"ses-A": ["10.213.4.32/27"], "ses-B": ["10.213.0.0/27"]})
    assert pool.take("A", "ses-A") == "10.213.4.32/27"
    assert pool.take("C", "ses-C") not in ("10.213.4.32/27", "10.213.0.0/27")
    pool.release("B", "ses-B")  # cleaned: its network is gone
    assert pool.free() == 2048 - 2


def test_the_pool_setting_is_checked() -> None:
    assert containers_per_block(27) == 29
    assert containers_per_block(28) == 13
    assert parse_pool("10.213.0.0/16", 27).num_addresses == 65536
    for pool, prefix in (
        ("10.213.0.1/16", 27),
        ("fd00::/64", 27),
        ("10.213.0.0/28", 27),
        ("x", 27),
    ):
        with pytest.raises(ValueError, match=r"network|fit"):
            parse_pool(pool, prefix)
    with pytest.raises(ValueError, match="session_subnets"):
        Settings(session_subnets="10.213.0.0/30")
    assert Settings().session_subnets == "10.213.0.0/16"
