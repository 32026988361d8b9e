"""Transport-agnostic replication: RxDB's fork/master protocol with checkpoints.

    from p2pdb.replication import replicate, collection_handler
    state = replicate(fork_collection, collection_handler(master_collection), "todos-main")
    await state.wait_for_in_sync()
"""

from .master import CollectionHandler, collection_handler
from .options import ReplicationOptions
from .protocol import RESYNC, ChangesBatch, ReplicationHandler, Resync, WriteRow
from .state import ReplicationState, ResolvedConflict, replicate

__all__ = [
    "RESYNC",
    "ChangesBatch",
    "CollectionHandler",
    "ReplicationHandler",
    "ReplicationOptions",
    "ReplicationState",
    "ResolvedConflict",
    "Resync",
    "WriteRow",
    "collection_handler",
    "replicate",
]
