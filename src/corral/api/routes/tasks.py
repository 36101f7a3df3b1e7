"""Task routes: list, create, read, cancel and retry tasks (the farm's arm jobs, and the
robot fleet's later)."""

import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, field_validator

from corral.api.deps import CoreDep, Reader, Writer
from corral.api.links import answer_links
from corral.model.fields import Integer
from corral.model.views import TaskState, TaskView

router = APIRouter(prefix="/tasks", tags=["tasks"])
TaskId = Annotated[int, Path(ge=1, le=2**62, description="Task id.")]


class NewTask(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"kind": "goto", "target": "fleet", "params": {"marker": "B"}},
                {"kind": "homing", "target": "robot_arm"},
            ]
        },
    )

    kind: str = Field(min_length=1, max_length=32, examples=["take", "replace", "homing"])
    target: str = Field(min_length=1, max_length=63, examples=["robot_arm"])
    params: dict[str, Any] = Field(default_factory=dict, max_length=50)
    priority: Integer = Field(default=0, ge=-1000, le=1000, description="Higher runs first.")
    timeout: StrictFloat = Field(default=600.0, gt=0, le=86400, description="Seconds of silence.")

    @field_validator("params")
    @classmethod
    def _plain_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        text = json.dumps(value, allow_nan=False) if _finite(value) else None
        if text is None or "\\u0000" in text:
            raise ValueError("params must be plain JSON: finite numbers and no NUL characters")
        return value


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


@router.get("", summary="List tasks, newest first")
async def list_tasks(
    core: CoreDep,
    _: Reader,
    state: TaskState | None = None,
    target: Annotated[str | None, Query(max_length=63)] = None,
    kind: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> list[TaskView]:
    return await core.tasks.find(state, target, kind, limit)


@router.post(
    "",
    status_code=201,
    summary="Create a task",
    responses=answer_links(
        (201,),
        "id",
        ("get", "/tasks/{id}", "id"),
        ("post", "/tasks/{id}/cancel", "id"),
        ("post", "/tasks/{id}/retry", "id"),
    ),
)
async def create(body: NewTask, core: CoreDep, _: Writer) -> TaskView:
    return await core.tasks.create(
        body.kind, body.target, body.params, body.priority, body.timeout, "rest"
    )


@router.get("/{id}", summary="A task")
async def get_task(id: TaskId, core: CoreDep, _: Reader) -> TaskView:
    return await core.tasks.get(id)


@router.post("/{id}/cancel", summary="Cancel an open task")
async def cancel(id: TaskId, core: CoreDep, _: Writer) -> TaskView:
    return await core.tasks.cancel(id)


@router.post("/{id}/retry", status_code=201, summary="Queue a copy of a failed or cancelled task")
async def retry(id: TaskId, core: CoreDep, _: Writer) -> TaskView:
    return await core.tasks.retry(id)
