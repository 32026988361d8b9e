"""A command-line todo list on p2pdb, with a live query that prints the list when it changes.

    python examples/todo_app.py --demo        # a scripted session that exits when done
    python examples/todo_app.py todos.db      # interactive; type "help" for the commands

Open the same file in two terminals: a change made in one is printed by the other too, within
about 50 ms (p2pdb notices commits made by other processes).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from typing import Any

import p2pdb

TODO_SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 32},
        "text": {"type": "string", "minLength": 1},
        "done": {"type": "boolean"},
        "created": {"type": "number"},
    },
    "required": ["id", "text", "done", "created"],
    "indexes": ["created"],
}

HELP = """commands:
  add TEXT       add a todo
  done N         mark todo N done
  undo N         mark todo N not done
  edit N TEXT    change the text of todo N
  rm N           remove todo N
  clear          remove every done todo
  quit           leave (or Ctrl-D)"""


class TodoApp:
    """The todo list: writes go to the collection, the screen follows a live query."""

    def __init__(self, todos: p2pdb.Collection) -> None:
        self.todos = todos
        # A query object can be awaited again and again, or observed live.
        self.query = todos.find(sort=[{"created": "asc"}])
        self.rendered = asyncio.Event()

    def render(self, docs: list[p2pdb.Document]) -> None:
        """Called by the live query with the new result each time it changes."""
        left = sum(1 for doc in docs if not doc["done"])
        print(f"-- todos: {len(docs)}, {left} left --")
        for number, doc in enumerate(docs, start=1):
            print(f"{number:3}. [{'x' if doc['done'] else ' '}] {doc['text']}")
        self.rendered.set()

    async def pick(self, number: str) -> p2pdb.Document:
        """The todo at position ``number`` (counting from 1) of the list as stored now."""
        docs = await self.query
        if not number.isdigit() or not 1 <= int(number) <= len(docs):
            raise ValueError(f"no todo number {number!r}")
        return docs[int(number) - 1]

    async def run(self, line: str) -> bool:
        """Run one command; False means quit."""
        command, _, rest = line.strip().partition(" ")
        number, _, text = rest.strip().partition(" ")
        if command == "add":
            new = {"id": uuid.uuid4().hex, "text": rest.strip(), "done": False}
            await self.todos.insert({**new, "created": time.time()})
        elif command in ("done", "undo"):
            await (await self.pick(number)).patch({"done": command == "done"})
        elif command == "edit":
            await (await self.pick(number)).patch({"text": text})
        elif command == "rm":
            await (await self.pick(number)).remove()
        elif command == "clear":
            await self.todos.remove({"done": True})
        elif command in ("quit", "exit"):
            return False
        elif command:
            print(HELP)
        return True


async def demo(app: TodoApp) -> None:
    """A scripted session: each command, then the list the live query printed for it."""
    script = [
        "add buy milk",
        "add write the docs",
        "add call Ada",
        "done 2",
        "edit 1 buy oat milk",
        "rm 3",
        "add water the plants",
        "clear",
    ]
    for line in script:
        print(f"\n> {line}")
        app.rendered.clear()
        await app.run(line)
        async with asyncio.timeout(5):  # wait for the live query to print the new list
            await app.rendered.wait()


async def interactive(app: TodoApp) -> None:
    print(HELP)
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:  # end of input
            return
        try:
            if not await app.run(line):
                return
        except (ValueError, p2pdb.P2PDBError) as error:
            print(f"error: {error}")


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="todos.db", help="the database file")
    parser.add_argument("--demo", action="store_true", help="run a scripted session and exit")
    args = parser.parse_args(argv)
    path = ":memory:" if args.demo else args.path
    async with p2pdb.create_database(path) as db:
        todos = await db.add_collection("todos", schema=TODO_SCHEMA)
        app = TodoApp(todos)
        live = app.query.observe().subscribe(app.render)
        try:
            async with asyncio.timeout(5):
                await app.rendered.wait()  # the first result: the list as stored
            await (demo(app) if args.demo else interactive(app))
        finally:
            live.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
