"""physforecast.memory: a chunk loop's collections see only what the chunks made, and
its reference cycles are freed after each chunk."""

import gc
import weakref

from physforecast.memory import chunked_work, release_memory


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: freed by the collector only


def test_chunked_work_freezes_what_is_alive_and_frees_each_chunks_cycles():
    before = gc.get_freeze_count()
    kept = _Node()
    with chunked_work() as release:
        assert release is release_memory
        assert gc.get_freeze_count() > before  # ``kept`` and everything else alive
        for _ in range(3):
            node = _Node()
            gone = weakref.ref(node)
            del node
            assert gone() is not None  # a cycle outlives its last name
            release()
            assert gone() is None
        with chunked_work():  # nested: the outer block keeps its freeze
            pass
        assert gc.get_freeze_count() > before
    assert gc.get_freeze_count() == before
    assert kept.me is kept


def test_chunked_work_unfreezes_when_the_loop_fails():
    before = gc.get_freeze_count()
    try:
        with chunked_work():
            raise KeyError("a chunk failed")
    except KeyError:
        pass
    assert gc.get_freeze_count() == before

