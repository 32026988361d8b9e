"""The commands of the ``p2pdb`` command line, one module each.

Each module exposes ``COMMAND``, a :class:`~p2pdb.commands.base.Command`: its name, its help,
how it adds its options to a parser, and the coroutine that runs it. ``p2pdb/cli.py`` builds
the parser from them and turns every :class:`~p2pdb.errors.P2PDBError` into one line on
stderr and exit status 2. Nothing here imports a plugin until a command runs, so ``p2pdb
--help`` stays fast and ``import p2pdb`` never loads this package.
"""

#: The modules of the commands, in the order of ``p2pdb --help``.
COMMAND_MODULES = (
    "signaling",
    "peer",
    "demo",
    "inspecting",
    "exporting",
    "importing",
    "migrating",
    "demo_peer",
)
