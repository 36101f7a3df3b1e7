"""Stored VDA 5050 identities of robots (manufacturer and serial number); the robots
themselves are in the fleet store."""

from sqlalchemy import delete, select

from corral.errors import Conflict
from corral.store.database import Database
from corral.store.tables import VdaVehicleRow


class VdaStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, row: VdaVehicleRow) -> None:
        async with self.db.fenced() as s:
            taken = await s.scalar(
                select(VdaVehicleRow).where(
                    VdaVehicleRow.manufacturer == row.manufacturer,
                    VdaVehicleRow.serial == row.serial,
                )
            )
            if taken is not None:
                raise Conflict(
                    f"vehicle {row.manufacturer}/{row.serial} is robot {taken.robot} already",
                    {"robot": taken.robot},
                )
            s.add(row)

    async def all(self) -> list[VdaVehicleRow]:
        async with self.db.session() as s:
            return list((await s.scalars(select(VdaVehicleRow))).all())

    async def find(self, manufacturer: str, serial: str) -> VdaVehicleRow | None:
        """The vehicle with this identity, if one is registered."""
        async with self.db.session() as s:
            found: VdaVehicleRow | None = await s.scalar(
                select(VdaVehicleRow).where(
                    VdaVehicleRow.manufacturer == manufacturer, VdaVehicleRow.serial == serial
                )
            )
            return found

    async def remove(self, robot: str) -> None:
        async with self.db.fenced() as s:
            await s.execute(delete(VdaVehicleRow).where(VdaVehicleRow.robot == robot))
