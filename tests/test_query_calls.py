"""Wrong-typed selectors and sorts given to ``find`` / ``find_one`` / ``count`` raise a typed
:class:`~p2pdb.errors.QueryError` at the call, never a bare ``ValueError`` and never a
query that silently matches everything (issue #11)."""

from __future__ import annotations

from typing import Any

import pytest

import p2pdb
from p2pdb import queries
from p2pdb.errors import QueryError

BAD_SELECTORS: list[Any] = [[], [{"text": "a"}], "text", ("text", "a"), 5]
BAD_SORTS: list[Any] = ["text", {"text": -1}, {"text": "asc"}, [("text", "asc")], ["text"],
                        [{"text": "asc", "n": "desc"}], [{}], 5]  # fmt: skip


async def _seed(todos: p2pdb.Collection) -> None:
    await todos.bulk_insert([{"id": "a", "text": "a", "n": 1}, {"id": "b", "text": "b", "n": 2}])


@pytest.mark.parametrize("selector", BAD_SELECTORS, ids=repr)
async def test_a_selector_that_is_not_a_dict_is_a_query_error(
    todos: p2pdb.Collection, selector: Any
) -> None:
    await _seed(todos)
    for call in (todos.find, todos.count, todos.remove):
        with pytest.raises(QueryError) as caught:
            await call(selector)
        assert caught.value.code == "QUERY_INVALID_SELECTOR", caught.value
    if not isinstance(selector, str):  # a string is a primary key for find_one
        with pytest.raises(QueryError) as caught:
            todos.find_one(selector)
        assert caught.value.code in ("QUERY_INVALID_SELECTOR", "QUERY_NOT_OBJECT")
    assert await todos.count() == 2  # remove([]) removed nothing


async def test_errors_are_raised_at_the_call_before_awaiting(todos: p2pdb.Collection) -> None:
    with pytest.raises(QueryError):
        todos.find([])  # type: ignore[arg-type]
    with pytest.raises(QueryError):
        todos.count([])  # type: ignore[arg-type]
    with pytest.raises(QueryError):
        todos.find(sort="text")  # type: ignore[arg-type]


@pytest.mark.parametrize("sort", BAD_SORTS, ids=repr)
async def test_a_sort_that_is_not_a_list_of_one_key_dicts_is_a_query_error(
    todos: p2pdb.Collection, sort: Any
) -> None:
    for query in (lambda: todos.find(sort=sort), lambda: todos.find_one({}, sort=sort)):
        with pytest.raises(QueryError) as caught:
            query()
        assert caught.value.code == "QUERY_INVALID_SORT", caught.value


async def test_a_string_primary_key_and_good_queries_still_work(todos: p2pdb.Collection) -> None:
    await _seed(todos)
    found = await todos.find_one("b")
    assert found is not None and found.id == "b"
    assert await todos.find_one("zz") is None
    assert await todos.count({}) == 2 and await todos.count(None) == 2
    assert [d.id for d in await todos.find({}, sort=[{"n": "desc"}])] == ["b", "a"]
    assert [d.id for d in await todos.find(sort=({"n": "desc"},))] == ["b", "a"]  # a tuple


async def test_find_one_by_id_compiles_only_what_it_needs(
    todos: p2pdb.Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup by primary key reads the row without compiling a query (~2x faster); a
    live one compiles it on demand, and one with a sort still checks the sort at the call."""
    await _seed(todos)
    compiled: list[object] = []
    real = queries.compile_query

    def counting(*args: Any, **kwargs: Any) -> Any:
        compiled.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(queries, "compile_query", counting)
    found = await todos.find_one("a")
    assert found is not None and found.id == "a" and compiled == []
    seen: list[Any] = []
    todos.find_one("a").observe().subscribe(seen.append)
    assert compiled == [{"id": "a"}]
    with pytest.raises(QueryError):
        todos.find_one("a", sort=[{"nope": "sideways"}])
