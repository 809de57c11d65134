"""The SBOM scanner: a background role of every gateway with `scanner.enabled`.

`worker.Scanner` takes image manifests from the replicated scan queue
(node/metadata/scans.py) and runs `scan.scan_image` on each: the layers are read through
the cluster client like a pull, unpacked in a worker thread (cargohold/sbom/), and the SBOM
is stored back as an OCI referrer of the image. Why in the gateway: it already has what a
scan needs (the cluster client with its hedged chunk reads and quorum chunk writes, the
gateway's cluster credential), holds no state, and scales out with the gateways; the
queue's leases make any number of them safe. docs/supply-chain.md has the whole story.
"""

from gateway.scanner.worker import SCANNER, Scanner, scanner_ctx

__all__ = ["SCANNER", "Scanner", "scanner_ctx"]
