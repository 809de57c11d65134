"""The cluster shape the cluster tests share.

256 KiB chunks turn small blobs into many chunks (placement, repair and quorum paths get
exercised without pushing megabytes), and `QUIET_ROLES` pushes the periodic repair and
scrub passes out of a test's way, so passes run exactly when the test triggers them
(Admin.Trigger with wait), at rates that never slow a test down.
"""

from __future__ import annotations

MiB = 1024 * 1024
CHUNK = 256 * 1024
QUIET_ROLES = {
    "repair_interval": 3600.0,
    "scrub_interval": 3600.0,
    "repair_rate_bytes": 1024 * MiB,
    "scrub_rate_bytes": 1024 * MiB,
}
