"""Where policies come from: the embedded policy file (etcd comes later)."""

from __future__ import annotations
