"""Where policies, tenants and keys are kept.

``kv`` defines the key-value store the control plane writes and the gateways
follow, with three implementations: in memory (``kv.MemoryStore``), one file
written atomically (``file.FileStore``, the embedded store used without
etcd), and etcd (``etcd.EtcdStore``); ``factory.open_store`` picks one from
the configuration. ``policy_file`` reads the TOML policy file a gateway may
start from.
"""

from __future__ import annotations
