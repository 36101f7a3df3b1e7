"""The REST API: `create_app(settings)`, one router per resource, auth and errors.

Routes call the control layer only; they never touch a driver.
"""

from corral.api.app import create_app

__all__ = ["create_app"]
