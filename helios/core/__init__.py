"""The decision core: plain synchronous Python, no I/O.

Algorithms, windows, policies and their resolution, bucket keys, input
validation and decision values. Nothing here imports trio, Redis, etcd or HTTP;
every adapter and backend builds on these pieces.
"""

from __future__ import annotations
