"""The host driver names two engine refusals by type: a subnet that overlaps a network the
engine has (SubnetTaken) and an image the engine lacks at create (ImageMissing).

Runs against the real local dockerd; everything made here is removed at the end.
"""

import uuid

import pytest

from corral.hosts.docker_engine import DockerEngine
from corral.hosts.driver import ImageMissing, SubnetTaken
from corral.model.containers import plan_session_container
from corral.model.hosts import HostSpec
from corral.model.stack_spec import ServiceSpec


def test_overlapping_subnet_and_missing_image_are_typed(local_engine: str) -> None:
    engine = DockerEngine(HostSpec(name="local", url=local_engine), timeout=30)
    tag = uuid.uuid4().hex[:8]
    first, second = f"corral-test-{tag}-a", f"corral-test-{tag}-b"
    labels = {"corral.test": tag}
    try:
        engine.ensure_network(first, "bridge", False, "10.213.7.0/27", labels)
        with pytest.raises(SubnetTaken):
            engine.ensure_network(second, "bridge", False, "10.213.7.0/28", labels)
        assert second not in engine.networks(labels)

        session = f"t{tag}"
        missing = ServiceSpec(name="gone", image=f"local/not-here-{tag}:1", line=1)
        with pytest.raises(ImageMissing):
            engine.create(plan_session_container(session, missing), False)
    finally:
        engine.remove_network(second)
        engine.remove_network(first)
        engine.close()
