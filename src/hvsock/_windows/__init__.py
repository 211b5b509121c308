"""The Windows host side: service registration, VM discovery, exported scripts.

Only two spots touch Windows itself: :class:`registry.WinregBackend` (``winreg``)
and :func:`vms.run_process` running ``powershell.exe`` / ``wsl.exe``. Everything
else is pure or takes those as parameters, so it runs and is tested on Linux.
"""
