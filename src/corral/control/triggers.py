"""Triggers: rules from a source (AMQP queue, MQTT topic, schedule, REST) to an action
(the farm's ready or homing, or a task). The farm's defaults are added when it is on.

Sources are wired to the broker links at start; schedules run in one loop here.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from corral.brokers.amqp import AmqpLink
from corral.brokers.link import Link
from corral.brokers.mqtt import MqttLink
from corral.config import Settings, TriggerSpec
from corral.control.tasks import TaskService
from corral.errors import CorralError, Invalid, NotFound
from corral.events import EventBus
from corral.model.schedule import Schedule, parse_schedule
from corral.model.views import TriggerView
from corral.store.tables import utcnow

log = structlog.get_logger("corral.triggers")
# (body, source, redelivered) -> why it was rejected, or None
Action = Callable[[bytes, str, bool], Awaitable[str | None]]


@dataclass
class _Stats:
    fired: int = 0
    last_fired: datetime | None = None
    last_error: str = ""
    next_fire: datetime | None = None


@dataclass
class _Trigger:
    spec: TriggerSpec
    stats: _Stats = field(default_factory=_Stats)


def farm_defaults(settings: Settings) -> list[TriggerSpec]:
    defaults = [
        TriggerSpec(name="farm-ready", amqp_queue=settings.farm_ready_queue, action="farm.ready"),
        TriggerSpec(
            name="farm-homing-queue", amqp_queue=settings.farm_homing_queue, action="farm.homing"
        ),
    ]
    if settings.farm_homing_schedule:
        defaults.append(
            TriggerSpec(
                name="farm-homing-schedule",
                schedule=settings.farm_homing_schedule,
                action="farm.homing",
            )
        )
    return defaults


class TriggerService:
    def __init__(
        self, settings: Settings, bus: EventBus, links: dict[str, Link], tasks: TaskService
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.links = links
        self.tasks = tasks
        self.actions: dict[str, Action] = {}
        specs = list(settings.triggers)
        if settings.farm_enabled:
            named = {s.name for s in specs}
            specs += [d for d in farm_defaults(settings) if d.name not in named]
        self.triggers = {s.name: _Trigger(s) for s in specs}

    def wire(self) -> None:
        """Attach queue and topic triggers to their links; Invalid if one is missing, if two
        use one queue or topic, if one listens on the arm's own topics, or if its action is
        off."""
        sources: dict[tuple[str, str], str] = {}
        reserved = {self.settings.farm_job_topic, self.settings.farm_status_topic}
        for trigger in self.triggers.values():
            spec = trigger.spec
            if spec.task is None and spec.action not in self.actions:
                raise Invalid(f"trigger {spec.name}: action {spec.action} needs farm_enabled")
            key = None
            if spec.amqp_queue:
                key = (spec.broker or self.settings.farm_amqp, spec.amqp_queue)
            elif spec.mqtt_topic:
                key = (spec.broker or self.settings.farm_mqtt, spec.mqtt_topic)
                if self.settings.farm_enabled and spec.mqtt_topic in reserved:
                    raise Invalid(f"trigger {spec.name}: {spec.mqtt_topic} is the arm's topic")
            if key is not None:
                if key in sources:
                    raise Invalid(
                        f"triggers {sources[key]} and {spec.name} both use {key[1]} on {key[0]}"
                    )
                sources[key] = spec.name
        for trigger in self.triggers.values():
            spec = trigger.spec
            if spec.amqp_queue:
                link = self._link(spec, self.settings.farm_amqp, AmqpLink)
                assert isinstance(link, AmqpLink)
                link.consume(spec.amqp_queue, self._runner(trigger, f"amqp {spec.amqp_queue}"))
            elif spec.mqtt_topic:
                link = self._link(spec, self.settings.farm_mqtt, MqttLink)
                assert isinstance(link, MqttLink)
                link.subscribe(spec.mqtt_topic, self._topic_runner(trigger, spec.mqtt_topic))

    def _link(self, spec: TriggerSpec, default: str, kind: type[Link]) -> Link:
        name = spec.broker or default
        link = self.links.get(name)
        if link is None or not isinstance(link, kind):
            wanted = "amqp://" if kind is AmqpLink else "mqtt://"
            raise Invalid(
                f"trigger {spec.name}: no {wanted} broker named {name!r} in `brokers` "
                f"(have: {', '.join(sorted(self.links)) or 'none'})"
            )
        return link

    def _runner(self, trigger: _Trigger, source: str) -> Callable[[bytes, bool], Awaitable[None]]:
        async def run(body: bytes, redelivered: bool) -> None:
            await self._fire(trigger, body, f"trigger {trigger.spec.name} ({source})", redelivered)

        return run

    def _topic_runner(
        self, trigger: _Trigger, topic: str
    ) -> Callable[[str, bytes, bool], Awaitable[None]]:
        run = self._runner(trigger, f"mqtt {topic}")

        async def on_message(_: str, body: bytes, retained: bool) -> None:
            await run(body, False)

        return on_message

    async def _fire(
        self, trigger: _Trigger, body: bytes, source: str, redelivered: bool = False
    ) -> str | None:
        """Run the action; the reason it was rejected (an event too), or None."""
        spec = trigger.spec
        action = self.actions.get(spec.action)
        trigger.stats.fired += 1
        trigger.stats.last_fired = utcnow()
        try:
            if spec.task is not None:
                await self.tasks.create(
                    spec.task.kind,
                    spec.task.target,
                    dict(spec.task.params),
                    spec.task.priority,
                    spec.task.timeout_s,
                    source,
                )
                rejected = None
            elif action is not None:
                rejected = await action(body, source, redelivered)
            trigger.stats.last_error = rejected or ""
            return rejected
        except CorralError as exc:  # bad input: an event, and the message is done with
            trigger.stats.last_error = exc.message
            await self.bus.emit(
                "trigger.rejected",
                f"trigger/{trigger.spec.name}",
                f"trigger {trigger.spec.name}: {exc.message}",
            )
            return exc.message

    async def fire(self, name: str, body: bytes) -> TriggerView:
        """REST: fire a trigger by name with a body."""
        trigger = self.triggers.get(name)
        if trigger is None:
            raise NotFound(f"trigger {name!r} not found", {"trigger": name})
        rejected = await self._fire(trigger, body, f"trigger {name} (rest)")
        if rejected is not None:
            raise Invalid(f"trigger {name} rejected the body: {rejected}", {"trigger": name})
        return self._view(trigger)

    def views(self) -> list[TriggerView]:
        return [self._view(t) for t in sorted(self.triggers.values(), key=lambda t: t.spec.name)]

    def _view(self, trigger: _Trigger) -> TriggerView:
        spec = trigger.spec
        if spec.amqp_queue:
            source = f"amqp {spec.amqp_queue}"
        elif spec.mqtt_topic:
            source = f"mqtt {spec.mqtt_topic}"
        elif spec.schedule:
            source = f"schedule {spec.schedule}"
        else:
            source = "rest"
        return TriggerView(
            name=spec.name,
            source=source,
            action=spec.action,
            fired=trigger.stats.fired,
            last_fired=trigger.stats.last_fired,
            last_error=trigger.stats.last_error,
            next_fire=trigger.stats.next_fire,
        )

    async def run_schedules(self, stop: asyncio.Event) -> None:
        timed: list[tuple[_Trigger, Schedule]] = [
            (t, parse_schedule(t.spec.schedule)) for t in self.triggers.values() if t.spec.schedule
        ]
        if not timed:
            return
        now = utcnow()
        for trigger, schedule in timed:
            trigger.stats.next_fire = schedule.next_after(now)
        while not stop.is_set():
            now = utcnow()
            for trigger, schedule in timed:
                due = trigger.stats.next_fire
                if due is not None and due <= now:
                    try:
                        trigger.stats.next_fire = schedule.next_after(max(due, now))
                        await self._fire(trigger, b"", f"trigger {trigger.spec.name} (schedule)")
                    except Exception:  # one rule's trouble never stops the others
                        log.exception("scheduled trigger failed", trigger=trigger.spec.name)
            upcoming = min(t.stats.next_fire or now for t, _ in timed)
            pause = max(0.05, min((upcoming - utcnow()).total_seconds(), 30.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause)
