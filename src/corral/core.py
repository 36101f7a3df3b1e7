"""The composition root: builds the store, bus, metrics and services of one process.

`corral serve` and `create_app` own one Core; its `start` and `stop` bracket the background
loops (host monitor, event pruning).
"""

import asyncio
import contextlib
import os
import secrets
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

import structlog

from corral.brokers.amqp import AmqpLink
from corral.brokers.link import Link
from corral.brokers.mqtt import MqttLink
from corral.config import Settings
from corral.control.access import AccessService
from corral.control.arm import ArmDispatcher
from corral.control.deployments import DeploymentService
from corral.control.devices import DeviceService
from corral.control.engine_events import EngineEvents
from corral.control.farm import FarmService
from corral.control.hosts import HostService
from corral.control.images import ImageSupply
from corral.control.modules import ModuleService
from corral.control.replicas import Replicas
from corral.control.sessions import SessionService
from corral.control.stacks import StackService
from corral.control.tasks import TaskService
from corral.control.triggers import TriggerService
from corral.control.wasm_init import import_folder
from corral.devices.client import SupervisorClient
from corral.errors import Invalid, NotFound
from corral.events import EventBus
from corral.fleet.meter import FleetCollector
from corral.fleet.service import FleetService
from corral.fleet.vda5050.master import MasterControl
from corral.fleet.vda5050.messages import Topics
from corral.metrics import Metrics
from corral.model.farmfile import parse_farm_file
from corral.model.hostsfile import parse_hosts_file
from corral.store.database import Database
from corral.store.devices import DeviceStore
from corral.store.events import EventStore
from corral.store.farm import FarmStore
from corral.store.files import secure_state
from corral.store.fleet import FleetStore
from corral.store.hosts import HostStore
from corral.store.modules import DeploymentStore, ModuleStore
from corral.store.sessions import SessionStore, TemplateStore
from corral.store.stacks import StackStore
from corral.store.tables import utcnow
from corral.store.tasks import TaskStore
from corral.store.tokens import TokenStore
from corral.store.vda5050 import VdaStore

log = structlog.get_logger("corral.core")


class Core:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.effective_database_url)
        self.metrics = Metrics()
        self.replica_id = secrets.token_hex(6)
        self.events = EventStore(self.db, self.replica_id)
        self.bus = EventBus(self.events, self.metrics)
        self.hosts = HostService(HostStore(self.db), self.bus, self.metrics, settings)
        self.access = AccessService(TokenStore(self.db), self.bus)
        self.images = ImageSupply(self.hosts, self.bus)
        self.engine_events = EngineEvents(self.hosts, self.bus)
        self.stacks = StackService(StackStore(self.db), self.hosts, self.bus, settings, self.images)
        self.sessions = SessionService(
            TemplateStore(self.db),
            SessionStore(self.db),
            self.hosts,
            self.bus,
            settings,
            self.images,
        )
        self.links: dict[str, Link] = {
            name: (AmqpLink if url.startswith("amqp") else MqttLink)(
                name, url, self.bus, self.metrics
            )
            for name, url in settings.brokers.items()
        }
        self.tasks = TaskService(TaskStore(self.db, self.events), self.bus)
        self.farm = FarmService(
            ArmDispatcher(
                FarmStore(self.db, self.events), self.tasks, self.bus, self.metrics, settings
            )
        )
        self.triggers = TriggerService(settings, self.bus, self.links, self.tasks)
        self.device_client = SupervisorClient(settings.device_timeout_seconds)
        self.devices = DeviceService(DeviceStore(self.db), self.bus, settings, self.device_client)
        self.modules = ModuleService(ModuleStore(self.db), self.bus)
        self.deployments = DeploymentService(
            DeploymentStore(self.db),
            self.modules.store,
            self.devices,
            self.device_client,
            self.bus,
            settings,
        )
        self.fleet = FleetService(FleetStore(self.db), self.access, self.tasks, self.bus, settings)
        self.vda5050: MasterControl | None = None
        self.vda5050_share: MqttLink | None = None  # this replica's share of visualizations
        self.replicas = Replicas(
            self.db,
            self.events,
            self.bus,
            self.replica_id,
            settings.base_url,
            settings.replica_poll_seconds,
        )
        if self.replicas.shared:
            self.fleet.spread(self.replica_id, self.replicas.leading.is_set)
        self.metrics.registry.register(
            FleetCollector(
                self.fleet.meter,
                self.replica_id,
                self.fleet.links.connected,
                self.fleet.dispatch.held,
                self.replicas.leading.is_set,
            )
        )
        self.started_at = utcnow()
        self.stopping = asyncio.Event()
        self.first_admin_token: str | None = None
        self.admin_from_env = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, background: bool = True) -> None:
        """Migrate, bootstrap the admin token, register hosts, start the loops."""
        fixed = secure_state(self.settings.home, self.db.file)
        await self.db.migrate()
        for line in fixed:
            await self.bus.emit("corral.state_fixed", "corral", f"made private: {line}")
        made = await self.access.bootstrap(self.settings.bootstrap_token)
        # A token given in the environment is the user's already: never printed or logged.
        self.admin_from_env = made is not None and self.settings.bootstrap_token is not None
        self.first_admin_token = None if self.admin_from_env else made
        if self.settings.hosts_file is not None:
            text = self.settings.hosts_file.read_text()
            specs = parse_hosts_file(text, str(self.settings.hosts_file))
            outcomes = await self.hosts.apply(specs, prune=False)
            log.info("hosts file applied", file=str(self.settings.hosts_file), outcomes=outcomes)
        if self.settings.farm_file is not None:
            farm = parse_farm_file(
                self.settings.farm_file.read_text(), str(self.settings.farm_file)
            )
            outcomes = await self.farm.apply(farm, prune=False)
            changed = sum(o != "unchanged" for o in outcomes.values())
            log.info("farm file applied", file=str(self.settings.farm_file), changed=changed)
        with contextlib.suppress(NotFound):
            await self.hosts.register_local(self.settings.local_docker_url)
        await self.hosts.warn_insecure()
        if self.settings.templates_dir is not None:
            added = await self.sessions.load_folder(self.settings.templates_dir)
            log.info("templates added", folder=str(self.settings.templates_dir), names=added)
        await self.fleet.load()
        if self.settings.vda5050_broker is not None:
            await self._wire_vda5050(self.settings.vda5050_broker)
        to_deploy: list[str] = []
        if self.settings.init_dir is not None:
            counts, to_deploy = await import_folder(
                self.devices, self.modules, self.deployments, self.settings.init_dir
            )
            log.info("init folder imported", folder=str(self.settings.init_dir), **counts)
        if self.settings.farm_enabled:
            self._wire_farm()
        self.triggers.wire()
        await self.bus.emit("corral.started", "corral", "corral started", {"pid": os.getpid()})
        if background:
            await self.replicas.begin()  # SQLite: this process leads before it serves
            self._spawn(self._prune_events())
            self._spawn(self.fleet.run_peers(self.stopping))
            if self.vda5050_share is not None:
                self._spawn(self.vda5050_share.run(self.stopping))
            self._spawn(
                self.replicas.run(
                    self.stopping, lambda stop: self._lead(stop, to_deploy), self._take_over
                )
            )
        else:
            self.replicas.act_alone()  # no loops: this process acts alone

    async def _take_over(self) -> None:
        """What a replica reads when it takes the lead: the fleet as the last leader left
        it, then the VDA 5050 vehicles (registered meanwhile, with no order state of an
        earlier term: each vehicle's next state says where its order stands)."""
        await self.fleet.load()
        if self.vda5050 is not None:
            await self.vda5050.load()

    async def _lead(self, stop: asyncio.Event, to_deploy: list[str]) -> None:
        """What only the leader runs: recovery, reconcilers, schedules, broker consumers,
        device health and discovery, the fleet's traffic. Returns once `stop` is set (the
        arm's MQTT link once its dispatcher heard out a job still with the arm)."""
        await self.sessions.recover()
        heard_out = asyncio.Event()
        arm_link = self.farm.dispatch.mqtt if self.settings.farm_enabled else None
        loops: list[Coroutine[Any, Any, None]] = [
            self.hosts.run_monitor(stop),
            self.stacks.run_resync(stop),
            self.engine_events.run(stop),
            self.stacks.run_engine_events(stop),
            self.sessions.run_monitor(stop),
            *(link.run(heard_out if link is arm_link else stop) for link in self.links.values()),
            self.triggers.run_schedules(stop),
            self.devices.run_health(stop),
            self.fleet.run_monitor(stop),
        ]
        if self.vda5050 is not None and self.settings.vda5050_broker_log is not None:
            loops.append(self.vda5050.follow_broker_log(self.settings.vda5050_broker_log, stop))
        if to_deploy:
            loops.append(self._deploy_imported(to_deploy))
        if self.settings.mdns_enabled:
            loops.append(self.devices.run_discovery(stop))
        if self.settings.farm_enabled:
            loops.append(self.farm.dispatch.run(stop, heard_out))
        await asyncio.gather(*(_logged(loop) for loop in loops))

    async def _wire_vda5050(self, broker: str) -> None:
        """VDA 5050 master control on its MQTT broker (docs/vda5050.md)."""
        mqtt = self.links.get(broker)
        if not isinstance(mqtt, MqttLink):
            raise Invalid(f"VDA 5050 needs an mqtt:// broker named {broker!r} in `brokers`")
        topics = Topics(self.settings.vda5050_interface, self.settings.vda5050_major)
        self.vda5050 = MasterControl(
            self.fleet, VdaStore(self.db), mqtt, topics, self.bus, self.metrics, self.replica_id
        )
        self.vda5050.admit_map = self.settings.vda5050_admit_map
        # With replicas each takes a share of the visualizations (a connection of its own,
        # run whether it leads or not); the leader's link takes the rest of the topics.
        shared = self.fleet.peers is not None and self.settings.vda5050_visualization
        self.vda5050.wire(self.settings.vda5050_visualization and not shared)
        if shared:
            self.vda5050_share = MqttLink(
                f"{broker}-visualization", mqtt.url, self.bus, self.metrics
            )
            self.vda5050.share(self.vda5050_share, self.settings.vda5050_share_group)
        await self.vda5050.load()

    def _wire_farm(self) -> None:
        """The farm's arm executor, status subscription and trigger actions."""
        mqtt = self.links.get(self.settings.farm_mqtt)
        if not isinstance(mqtt, MqttLink):
            raise Invalid(
                f"the farm needs an mqtt:// broker named {self.settings.farm_mqtt!r} in `brokers`"
            )
        self.farm.dispatch.mqtt = mqtt
        mqtt.subscribe(self.settings.farm_status_topic, self.farm.dispatch.on_status)
        mqtt.on_up.append(self.farm.dispatch.link_up)
        self.tasks.register(self.settings.farm_arm, self.farm.executor())
        self.triggers.actions["farm.ready"] = self.farm.ready
        self.triggers.actions["farm.homing"] = self.farm.homing

    async def _deploy_imported(self, ids: list[str]) -> None:
        """Deploy what the init folder marked deployed, once the API answers (devices
        download their modules from it)."""
        await asyncio.sleep(0)
        for deployment_id in ids:
            row = await self.deployments.deploy(deployment_id)
            log.info("imported deployment deployed", name=row.name, state=row.state)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(_logged(work)))

    async def _prune_events(self) -> None:
        keep = timedelta(days=self.settings.event_retention_days)
        while not self.stopping.is_set():
            removed = await self.events.prune(utcnow() - keep)
            if removed:
                log.info("old events pruned", count=removed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=3600)

    async def stop(self) -> None:
        self.stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.sessions.shutdown()
        await self.deployments.shutdown()
        await self.device_client.close()
        self.hosts.close()
        await self.db.close()


async def _logged(work: Coroutine[Any, Any, None]) -> None:
    """Run a background loop; a crash is logged with its traceback, never silent."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background loop crashed", loop=repr(work))
