"""Directory sharing: a 9P2000.L server (``.server``) for the Linux kernel's v9fs client,
and the guest-side mount (``.mount``). Nothing is imported here (see files/__init__.py).
"""
