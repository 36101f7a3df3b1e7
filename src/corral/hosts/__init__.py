"""Host drivers: the only code that talks to container engines.

The control layer uses them through the `HostDriver` protocol and never sees an SDK.
"""
