"""``hvsock doctor`` from Python: what stands between this machine and a working VM socket.

:func:`diagnose` checks the machine (and an address, when given) and returns a
:class:`Diagnosis` of :class:`Check` s, each with what to do when it failed. The checks
look at the machine through a :class:`Machine`, whose root can stand in for ``/``.
"""

from ._doctor import Check, Diagnosis, Machine, diagnose

__all__ = ["Check", "Diagnosis", "Machine", "diagnose"]
