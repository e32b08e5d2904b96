"""Network servers Helios owns: the lean HTTP/1.1 server of the data plane."""

from __future__ import annotations
