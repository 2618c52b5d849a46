"""Which public rooms this process knows a user has in their room list (docs/protocol.md §11).

A join of a public room puts it in the user's list: their RoomState, written after the join's
reply (parley.commands). Every join after the first would write nothing, so this process
remembers the pairs it made sure of and skips the write. The memory is only a hint that must
never outlive the truth: a user who leaves the room (on any process) has it taken out of the
list, and their next join must put it back.

So a pair is remembered only while the user has a socket on this process, and forgotten
- when the room leaves their list through this process (parley.rooms.room_state_unlisted);
- when a `room_removed` for it reaches one of their sockets here (another process's leave,
  a removal, a delete: parley.delivery, from the user's event channel);
- when their last socket here closes (parley.consumers): another process's leave meanwhile
  reaches no socket of theirs here, so nothing here may remember the pair past that.
Forgetting costs one INSERT that changes nothing on the next join.
"""

from __future__ import annotations

# user id → the public room ids whose RoomState this process made sure of.
_opened: dict[int, set[int]] = {}
MAX_PAIRS = 100_000  # cleared when reached: a bound, not a working set (each is one INSERT)
_count = 0


def remember(user_id: int, room_id: int) -> bool:
    """Remember the pair; False if it was remembered already (the join has nothing to write)."""
    global _count
    rooms = _opened.get(user_id)
    if rooms is not None and room_id in rooms:
        return False
    if _count >= MAX_PAIRS:
        clear()
    _opened.setdefault(user_id, set()).add(room_id)
    _count += 1
    return True


def forget(user_id: int, room_id: int) -> None:
    global _count
    rooms = _opened.get(user_id)
    if rooms is not None and room_id in rooms:
        rooms.discard(room_id)
        _count -= 1
        if not rooms:
            del _opened[user_id]


def forget_user(user_id: int) -> None:
    """The user's last socket on this process closed."""
    global _count
    _count -= len(_opened.pop(user_id, ()))


def clear() -> None:
    global _count
    _opened.clear()
    _count = 0
