"""Ending a gRPC call with a typed error: the one way every node service (and test fake) does it.

The status code comes from the table in `cargohold.errors.grpc_status_name`, the error's
class and message travel in the details string (`to_grpc_details`) and its detail in the
trailing metadata (`to_grpc_trailer`); a client re-raises the same class with
`from_grpc_details`.
"""

from __future__ import annotations

from typing import NoReturn

import grpc
import grpc.aio

from cargohold.errors import RegistryError, grpc_status_name, to_grpc_details, to_grpc_trailer


def grpc_status(err: RegistryError) -> grpc.StatusCode:
    """The gRPC status code `err` travels as."""
    return grpc.StatusCode[grpc_status_name(err)]


async def abort_with(context: grpc.aio.ServicerContext, err: RegistryError) -> NoReturn:
    """End the call with the status and details the catalogue prescribes for `err`."""
    await context.abort(grpc_status(err), to_grpc_details(err), to_grpc_trailer(err))
    raise AssertionError("unreachable: context.abort raises")
