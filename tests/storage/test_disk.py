"""The crash model of one simulated disk (``moonpool.storage._disk``), held to its contract.

The contract is the module docstring of ``moonpool.storage._provider``: synced bytes
and synced namespace changes survive every crash; an unsynced write is kept, lost or
torn (a prefix kept, cut at a ``SECTOR`` boundary of the file), an unsynced truncate
kept or lost, each replayed in order on the synced bytes; unsynced creates, removes
and renames may be undone, the newest first.

What a crash may leave is computed here by a reference of this file's own -- plain
``bytes`` slicing and an enumeration of every fate of every pending op -- never by
the model's code, and each crash is held to it: its result must be one the contract
allows, with the counts its ``CrashOutcome`` reports.  Loops over fixed seeds show
the other half: that each allowed fate does happen.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moonpool.storage._disk import CrashOutcome, Disk, Inode
from moonpool.storage._provider import SECTOR

# Few examples each, so that the file runs in about a second; the strategies aim
# them at sector boundaries, and the exhaustive checks make each one count.
SETTINGS = settings(
    max_examples=70,
    deadline=None,  # wall time per example varies with the machine, not the code
    suppress_health_check=[HealthCheck.too_slow],
)
HISTORY_SETTINGS = settings(SETTINGS, max_examples=40)

#: Every fault family a crash may ask ``admit`` about.
FAMILIES = frozenset(
    {"lost_write", "torn_write", "undone_create", "undone_remove", "undone_rename"}
)

#: Enough seeds that every fate of a handful of ops shows up (each has odds >= 1/12).
SEEDS = range(240)


# -- the reference ------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """A write (``at`` is its offset) or a truncate (``at`` is the size)."""

    kind: str
    at: int
    data: bytes = b""


def ref_apply(image: bytes, op: Op) -> bytes:
    """``image`` after ``op``: a gap before a write past the end reads as zeros."""
    if op.kind == "truncate":
        return image[: op.at] + bytes(max(0, op.at - len(image)))
    padded = image + bytes(max(0, op.at - len(image)))
    return padded[: op.at] + op.data + padded[op.at + len(op.data) :]


def ref_replay(image: bytes, ops: Iterable[Op]) -> bytes:
    for op in ops:
        image = ref_apply(image, op)
    return image


def tear_cuts(offset: int, size: int) -> list[int]:
    """Every prefix a tear may keep: strictly inside the write, ending on a file sector."""
    return [cut for cut in range(1, size) if (offset + cut) % SECTOR == 0]


Fated = tuple[bytes, int, int, int]
"""A crash's result: (image, kept, lost, torn)."""


def possible(durable: bytes, ops: Sequence[Op]) -> set[Fated]:
    """Every (image, kept, lost, torn) the contract allows for ``ops`` replayed on ``durable``."""
    states: set[Fated] = {(durable, 0, 0, 0)}
    for op in ops:
        following: set[Fated] = set()
        for image, kept, lost, torn in states:
            following.add((ref_apply(image, op), kept + 1, lost, torn))
            following.add((image, kept, lost + 1, torn))
            if op.kind == "write":
                for cut in tear_cuts(op.at, len(op.data)):
                    torn_op = Op("write", op.at, op.data[:cut])
                    following.add((ref_apply(image, torn_op), kept, lost, torn + 1))
        states = following
    return states


def payload(seed: int, size: int) -> bytes:
    """``size`` bytes, none of them 0 (so a write's byte is never mistaken for a gap)."""
    return random.Random(seed).randbytes(size).replace(b"\0", b"\1")


def fill(byte: int, size: int) -> bytes:
    return bytes([byte]) * size


@dataclass
class Admit:
    """An ``admit`` that records every question and gives one answer to all of them."""

    answer: bool = True
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    def __call__(self, family: str, name: str, text: str) -> bool:
        self.calls.append((family, name, text))
        return self.answer

    def families(self) -> Counter[str]:
        return Counter(family for family, _, _ in self.calls)


def apply(inode: Inode, op: Op) -> None:
    if op.kind == "write":
        inode.write(op.at, op.data)
    else:
        inode.truncate(op.at)


def synced_file(content: bytes, name: str = "f") -> tuple[Disk, Inode]:
    """A disk holding one file whose bytes and name are both synced."""
    disk = Disk()
    inode = disk.open(name)
    if content:
        inode.write(0, content)
    inode.sync()
    disk.sync_names()
    return disk, inode


def crash_file(content: bytes, ops: Sequence[Op], seed: int, admit: Admit | None = None) -> Fated:
    """Crash a disk whose file holds ``content`` synced and ``ops`` unsynced."""
    disk, inode = synced_file(content)
    for op in ops:
        apply(inode, op)
    outcome = disk.crash(random.Random(seed), admit or Admit())
    assert disk.names == {"f": inode}, "no namespace change was pending"
    assert outcome.undone == []
    assert inode.pending == []
    assert inode.durable == inode.current, "what a crash leaves is durable"
    return bytes(inode.current), outcome.kept, outcome.lost, outcome.torn


# -- strategies ---------------------------------------------------------------------

offsets = st.integers(0, 3 * SECTOR) | st.sampled_from(
    [SECTOR - 1, SECTOR, SECTOR + 1, 2 * SECTOR - 1, 2 * SECTOR]
)
sizes = st.integers(1, 2 * SECTOR + 64) | st.sampled_from([1, SECTOR - 1, SECTOR, SECTOR + 1])
write_ops = st.builds(
    lambda at, size, seed: Op("write", at, payload(seed, size)),
    offsets,
    sizes,
    st.integers(0, 2**16),
)
truncate_ops = st.builds(lambda size: Op("truncate", size), st.integers(0, 4 * SECTOR))
any_ops = write_ops | truncate_ops
durable_contents = st.builds(payload, st.integers(0, 2**16), st.integers(0, 3 * SECTOR))
seeds = st.integers(0, 2**32 - 1)


# -- 1. synced bytes ----------------------------------------------------------------


@SETTINGS
@given(ops=st.lists(any_ops, max_size=6), seed=seeds)
def test_synced_bytes_survive_every_crash(ops: list[Op], seed: int) -> None:
    disk = Disk()
    inode = disk.open("f")
    for op in ops:
        apply(inode, op)
    expected = ref_replay(b"", ops)
    assert bytes(inode.current) == expected
    assert inode.sync() == len(ops)
    disk.sync_names()
    admit = Admit()
    outcome = disk.crash(random.Random(seed), admit)
    assert disk.names == {"f": inode}
    assert bytes(inode.current) == bytes(inode.durable) == expected
    assert outcome == CrashOutcome(), "nothing was unsynced: there was nothing to fate"
    assert admit.calls == []


@SETTINGS
@given(
    durable=durable_contents,
    ops=st.lists(any_ops, min_size=1, max_size=3),
    seed=seeds,
)
def test_a_crash_leaves_one_of_the_results_the_contract_allows(
    durable: bytes, ops: list[Op], seed: int
) -> None:
    """Each pending op kept, lost or torn at a file sector, replayed in order on synced bytes."""
    admit = Admit()
    result = crash_file(durable, ops, seed, admit)
    assert result in possible(durable, ops)
    _, _, lost, torn = result
    # One question to admit per fault, and none for a kept op ("- Counter()" drops zeros).
    assert admit.families() == Counter({"lost_write": lost, "torn_write": torn}) - Counter()


@SETTINGS
@given(
    durable=durable_contents,
    ops=st.lists(any_ops, min_size=1, max_size=8),
    seed=seeds,
)
def test_synced_bytes_untouched_by_unsynced_ops_are_unchanged(
    durable: bytes, ops: list[Op], seed: int
) -> None:
    """Whatever the unsynced ops (past the end, overlapping, truncates), other synced bytes stay."""
    image, _, _, _ = crash_file(durable, ops, seed)
    limit = min([len(durable)] + [op.at for op in ops if op.kind == "truncate"])
    covered = {p for op in ops if op.kind == "write" for p in range(op.at, op.at + len(op.data))}
    untouched = [p for p in range(limit) if p not in covered]
    assert len(image) >= limit
    assert [image[p] for p in untouched] == [durable[p] for p in untouched]


@SETTINGS
@given(
    durable=durable_contents,
    ops=st.lists(write_ops, min_size=1, max_size=8),
    seed=seeds,
)
def test_after_writes_only_each_byte_is_durable_or_from_a_write_covering_it(
    durable: bytes, ops: list[Op], seed: int
) -> None:
    image, _, _, _ = crash_file(durable, ops, seed)
    assert len(image) >= len(durable), "writes never shorten a file"
    for p, byte in enumerate(image):
        allowed = {durable[p] if p < len(durable) else 0}
        allowed |= {op.data[p - op.at] for op in ops if op.at <= p < op.at + len(op.data)}
        assert byte in allowed, f"byte {p} is {byte}, neither durable nor written there"
    # And the file ends where the synced image or some (possibly torn) write ended.
    ends = {len(durable)} | {op.at + len(op.data) for op in ops}
    ends |= {op.at + cut for op in ops for cut in tear_cuts(op.at, len(op.data))}
    assert len(image) in ends


# -- 2. unsynced writes: kept, lost, torn -------------------------------------------


@pytest.mark.parametrize("durable", [b"", payload(1, 2 * SECTOR)], ids=["empty file", "synced"])
def test_a_write_across_a_sector_boundary_is_kept_lost_or_torn(durable: bytes) -> None:
    data = payload(2, 500)  # bytes 300..799: the boundary at 512 is inside it
    kept = ref_apply(durable, Op("write", 300, data))
    torn = ref_apply(durable, Op("write", 300, data[: SECTOR - 300]))
    fates = {kept: "kept", durable: "lost", torn: "torn"}
    expected = {
        "kept": (kept, 1, 0, 0),
        "lost": (durable, 0, 1, 0),
        "torn": (torn, 0, 0, 1),
    }
    seen = set()
    for seed in SEEDS:
        result = crash_file(durable, [Op("write", 300, data)], seed)
        fate = fates.get(result[0])
        assert fate is not None, f"seed {seed}: neither kept, lost nor torn at {SECTOR}"
        assert result == expected[fate], f"seed {seed}: counts do not say {fate}"
        seen.add(fate)
    assert seen == {"kept", "lost", "torn"}


@pytest.mark.parametrize(
    ("offset", "size"),
    [(0, 1), (0, SECTOR), (SECTOR, SECTOR), (600, 300), (2 * SECTOR - 1, 1), (100, 412)],
)
def test_a_write_inside_one_sector_is_never_torn(offset: int, size: int) -> None:
    durable = payload(3, 3 * SECTOR)
    data = payload(4, size)
    kept = ref_apply(durable, Op("write", offset, data))
    seen = set()
    for seed in SEEDS:
        admit = Admit()
        result = crash_file(durable, [Op("write", offset, data)], seed, admit)
        assert result in {(kept, 1, 0, 0), (durable, 0, 1, 0)}, f"seed {seed}: torn"
        assert "torn_write" not in admit.families()
        seen.add(result[0])
    assert seen == {kept, durable}, "both kept and lost happen"


def test_a_tear_may_fall_on_every_sector_boundary_inside_the_write() -> None:
    data = payload(5, 1000)  # bytes 100..1099: boundaries at 512 and 1024 inside
    cuts = set()
    for seed in SEEDS:
        image, _, _, torn = crash_file(b"", [Op("write", 100, data)], seed)
        if torn:
            cuts.add(len(image) - 100)
            assert image == bytes(100) + data[: len(image) - 100]
    assert cuts == {SECTOR - 100, 2 * SECTOR - 100}


@settings(max_examples=40, deadline=None)
@given(
    durable_size=st.integers(0, 3 * SECTOR),
    offset=offsets,
    size=st.integers(2, 3 * SECTOR),
    data_seed=st.integers(0, 2**16),
)
def test_a_torn_write_keeps_a_prefix_ending_on_a_sector_of_the_file(
    durable_size: int, offset: int, size: int, data_seed: int
) -> None:
    """Synced zeros under a write of non-zero bytes: where the write's bytes stop is the cut."""
    durable = bytes(durable_size)
    data = payload(data_seed, size)
    for seed in range(40):
        image, _, _, torn = crash_file(durable, [Op("write", offset, data)], seed)
        if not torn:
            continue
        window = image[offset : offset + size]
        cut = next((i for i, byte in enumerate(window) if byte == 0), len(window))
        assert 0 < cut < size, "a tear keeps a part of the write, neither none nor all"
        assert (offset + cut) % SECTOR == 0, f"cut at {offset + cut}: not a sector boundary"
        assert image == ref_apply(durable, Op("write", offset, data[:cut]))


# -- 3. lost writes -----------------------------------------------------------------


def test_a_lost_write_past_the_end_leaves_the_file_short() -> None:
    durable = fill(0xA1, 100)
    data = fill(0xB2, 50)  # bytes 300..349: one sector, so kept or lost
    results = {crash_file(durable, [Op("write", 300, data)], seed) for seed in SEEDS}
    assert results == {
        (durable, 0, 1, 0),
        (durable + bytes(200) + data, 1, 0, 0),
    }


def test_a_lost_write_leaves_what_the_ops_before_it_left() -> None:
    """Not the bytes of the file before the crash: those of the synced file and the kept ops."""
    durable = fill(0xA1, 2 * SECTOR)
    ops = [
        Op("write", 0, fill(0xB2, 2 * SECTOR)),  # kept, lost or torn at 512
        Op("write", 256, fill(0xC3, 256)),  # kept or lost
        Op("truncate", 300),  # kept or lost
        Op("write", 400, fill(0xD4, 100)),  # kept or lost; past the end if the truncate was kept
    ]
    allowed = possible(durable, ops)
    seen = {crash_file(durable, ops, seed) for seed in range(600)}
    assert seen <= allowed
    assert {image for image, *_ in seen} == {image for image, *_ in allowed}, "every fate happens"
    # For instance: the truncate and the write after it kept, the rest lost.
    assert durable[:300] + bytes(100) + fill(0xD4, 100) in {image for image, *_ in seen}


# -- a disk's history: files and names together --------------------------------------

NAMES = ("a", "b", "c")
Change = tuple[str, str, str | None, Inode]


@dataclass(frozen=True)
class Step:
    kind: str
    name: str = "a"
    new: str = "b"
    at: int = 0
    size: int = 0
    seed: int = 0


names = st.sampled_from(NAMES)
steps = st.lists(
    st.one_of(
        st.builds(Step, kind=st.just("write"), name=names, at=offsets, size=sizes, seed=seeds),
        st.builds(Step, kind=st.just("truncate"), name=names, size=st.integers(0, 4 * SECTOR)),
        st.builds(Step, kind=st.just("sync"), name=names),
        st.builds(Step, kind=st.just("open"), name=names),
        st.builds(Step, kind=st.just("remove"), name=names),
        st.builds(Step, kind=st.just("rename"), name=names, new=names),
        st.builds(Step, kind=st.just("sync_names")),
        st.builds(Step, kind=st.just("crash"), seed=seeds),
    ),
    max_size=14,
)


def replay_names(base: dict[str, Inode], changes: Iterable[Change]) -> dict[str, Inode]:
    names = dict(base)
    for kind, name, new, inode in changes:
        if kind == "create":
            assert name not in names
            names[name] = inode
        elif kind == "remove":
            assert names.pop(name) is inode
        else:
            assert new is not None
            assert names.pop(name) is inode
            names[new] = inode
    return names


class Harness:
    """A :class:`Disk` driven step by step, beside a reference of what a crash may leave."""

    def __init__(self) -> None:
        self.disk = Disk()
        self.durable_names: dict[str, Inode] = {}
        self.changes: list[Change] = []  # since the last sync_names (or crash)
        self.durable: dict[Inode, bytes] = {}
        self.current: dict[Inode, bytes] = {}
        self.pending: dict[Inode, list[Op]] = {}
        self.outcomes: list[CrashOutcome] = []

    def names(self) -> dict[str, Inode]:
        return replay_names(self.durable_names, self.changes)

    def file(self, name: str) -> Inode:
        new = name not in self.disk.names
        inode = self.disk.open(name)
        if new:
            self.changes.append(("create", name, None, inode))
            self.durable[inode] = self.current[inode] = b""
            self.pending[inode] = []
        return inode

    def op(self, name: str, op: Op) -> None:
        inode = self.file(name)
        apply(inode, op)
        self.pending[inode].append(op)
        self.current[inode] = ref_apply(self.current[inode], op)
        assert bytes(inode.current) == self.current[inode]

    def run(self, history: Iterable[Step], admit: Admit) -> None:
        for step in history:
            self.step(step, admit)
            assert self.disk.names == self.names()

    def step(self, step: Step, admit: Admit) -> None:
        disk, inode = self.disk, self.disk.names.get(step.name)
        if step.kind == "write":
            self.op(step.name, Op("write", step.at, payload(step.seed, step.size)))
        elif step.kind == "truncate":
            self.op(step.name, Op("truncate", step.size))
        elif step.kind == "open":
            self.file(step.name)
        elif step.kind == "sync" and inode is not None:
            assert inode.sync() == len(self.pending[inode])
            self.durable[inode] = self.current[inode]
            self.pending[inode] = []
        elif step.kind == "remove" and inode is None:
            with pytest.raises(FileNotFoundError):
                disk.remove(step.name)
        elif step.kind == "rename" and inode is None:
            with pytest.raises(FileNotFoundError):
                disk.rename(step.name, step.new)
        elif step.kind == "remove":
            assert inode is not None
            disk.remove(step.name)
            self.changes.append(("remove", step.name, None, inode))
        elif step.kind == "rename":
            assert inode is not None
            disk.rename(step.name, step.new)
            if step.new != step.name:
                self.changes.append(("rename", step.name, step.new, inode))
        elif step.kind == "sync_names":
            assert disk.sync_names() == len(self.changes)
            self.durable_names, self.changes = self.names(), []
        elif step.kind == "crash":
            self.crash(step.seed, admit)

    def sync_everything(self) -> None:
        for name in self.disk.names:
            self.step(Step("sync", name), Admit())
        self.step(Step("sync_names"), Admit())

    def crash(self, seed: int, admit: Admit) -> CrashOutcome:
        """Crash the disk and hold the result to the contract."""
        before = len(admit.calls)
        outcome = self.disk.crash(random.Random(seed), admit)
        self.outcomes.append(outcome)
        calls = Counter(family for family, _, _ in admit.calls[before:])
        assert set(calls) <= FAMILIES

        # The namespace: the synced names and a prefix of the changes since.
        names = self.disk.names
        keep = len(self.changes) - len(outcome.undone)
        assert keep >= 0
        assert names == replay_names(self.durable_names, self.changes[:keep])
        for text, (kind, name, new, _) in zip(
            outcome.undone, reversed(self.changes[keep:]), strict=True
        ):
            assert kind in text and name in text and (new is None or new in text)
        assert len({id(inode) for inode in names.values()}) == len(names), "one name per file"
        assert self.disk.durable_names == names and self.disk.journal == []

        # The bytes of every file still reachable: each of its unsynced ops fated once.
        fated = sum(len(self.pending[inode]) for inode in names.values())
        assert outcome.kept + outcome.lost + outcome.torn == fated
        for name, inode in names.items():
            ops, durable = self.pending[inode], self.durable[inode]
            assert inode.pending == [] and inode.durable == inode.current, name
            image = bytes(inode.current)
            if len(ops) <= 4:
                assert image in {fated[0] for fated in possible(durable, ops)}, name
            self.durable[inode] = self.current[inode] = image
            self.pending[inode] = []
        self.durable_names, self.changes = dict(names), []
        return outcome


def snapshot(disk: Disk) -> dict[str, tuple[Inode, bytes]]:
    return {name: (inode, bytes(inode.current)) for name, inode in disk.names.items()}


def unsynced_ops(harness: Harness) -> int:
    return sum(len(harness.pending[inode]) for inode in harness.disk.names.values())


@HISTORY_SETTINGS
@given(history=steps, seed=seeds)
def test_a_crash_of_a_disk_keeps_synced_names_and_a_prefix_of_the_rest(
    history: list[Step], seed: int
) -> None:
    harness = Harness()
    admit = Admit()
    harness.run(history, admit)
    before = len(admit.calls)
    outcome = harness.crash(seed, admit)
    calls = Counter(family for family, _, _ in admit.calls[before:])
    assert calls["lost_write"] == outcome.lost
    assert calls["torn_write"] == outcome.torn
    undone = sum(calls[f"undone_{kind}"] for kind in ("create", "remove", "rename"))
    assert undone == len(outcome.undone)
    # What a crash leaves is durable: the next crash, with nothing new, changes nothing.
    after = snapshot(harness.disk)
    assert harness.crash(seed + 1, admit) == CrashOutcome()
    assert snapshot(harness.disk) == after


@HISTORY_SETTINGS
@given(history=steps, seed=seeds)
def test_a_crash_with_everything_synced_changes_nothing(history: list[Step], seed: int) -> None:
    harness = Harness()
    harness.run(history, Admit())
    harness.sync_everything()
    before = snapshot(harness.disk)
    admit = Admit()
    assert harness.crash(seed, admit) == CrashOutcome()
    assert admit.calls == []
    assert snapshot(harness.disk) == before


@HISTORY_SETTINGS
@given(history=steps, seed=seeds)
def test_admit_refusing_every_fault_means_no_fault(history: list[Step], seed: int) -> None:
    harness = Harness()
    harness.run(history, Admit())
    before = snapshot(harness.disk)
    ops = unsynced_ops(harness)
    admit = Admit(answer=False)
    outcome = harness.crash(seed, admit)
    assert snapshot(harness.disk) == before, "the crash lost nothing"
    assert outcome == CrashOutcome(kept=ops)
    assert set(admit.families()) <= FAMILIES
    # A refused undo refuses the older ones with it: at most one question about names.
    assert sum(1 for family, _, _ in admit.calls if family.startswith("undone_")) <= 1
    assert all(name in NAMES for _, name, _ in admit.calls)


# -- 5. the namespace ---------------------------------------------------------------


def disk_with_a() -> tuple[Disk, Inode]:
    """A disk whose file ``a`` is synced, bytes and name."""
    return synced_file(fill(0xA1, 700), "a")


@pytest.mark.parametrize("kind", ["create", "remove", "rename"])
def test_an_unsynced_namespace_change_is_sometimes_undone_and_sometimes_kept(kind: str) -> None:
    seen = set()
    for seed in SEEDS:
        disk, a = disk_with_a()
        before = dict(disk.names)
        if kind == "create":
            b = disk.open("b")
            after = {"a": a, "b": b}
        elif kind == "remove":
            disk.remove("a")
            after = {}
        else:
            disk.rename("a", "b")
            after = {"b": a}
        admit = Admit()
        outcome = disk.crash(random.Random(seed), admit)
        if outcome.undone:
            assert disk.names == before, f"seed {seed}: undone, yet not as before"
            assert admit.families()[f"undone_{kind}"] == 1
            seen.add("undone")
        else:
            assert disk.names == after, f"seed {seed}: kept, yet not as after"
            seen.add("kept")
    assert seen == {"undone", "kept"}


def test_undone_namespace_changes_are_the_newest() -> None:
    seen = set()
    for seed in SEEDS:
        disk = Disk()
        x, y, z = disk.open("x"), disk.open("y"), disk.open("z")
        outcome = disk.crash(random.Random(seed), Admit())
        created = tuple(sorted(disk.names))
        assert created in {(), ("x",), ("x", "y"), ("x", "y", "z")}, f"seed {seed}: {created}"
        assert len(outcome.undone) == 3 - len(created)
        assert disk.names == dict([("x", x), ("y", y), ("z", z)][: len(created)])
        seen.add(created)
    assert len(seen) == 4, "every prefix happens"


def test_a_rename_is_atomic() -> None:
    seen = set()
    for seed in SEEDS:
        disk, a = disk_with_a()
        disk.rename("a", "b")
        disk.crash(random.Random(seed), Admit())
        where = tuple(name for name, inode in disk.names.items() if inode is a)
        assert where in {("a",), ("b",)}, f"seed {seed}: reachable as {where}"
        assert bytes(a.current) == fill(0xA1, 700)
        seen.add(where)
    assert seen == {("a",), ("b",)}


def test_a_new_file_renamed_is_under_one_name_or_none() -> None:
    seen = set()
    for seed in SEEDS:
        disk = Disk()
        c = disk.open("c")
        disk.rename("c", "d")
        outcome = disk.crash(random.Random(seed), Admit())
        where = tuple(name for name, inode in disk.names.items() if inode is c)
        assert where in {(), ("c",), ("d",)}, f"seed {seed}: reachable as {where}"
        assert (where == ()) == (len(outcome.undone) == 2), "gone only if its creation was undone"
        seen.add(where)
    assert seen == {(), ("c",), ("d",)}


def test_synced_namespace_changes_are_never_undone() -> None:
    for seed in SEEDS:
        disk, a = disk_with_a()
        b = disk.open("b")
        disk.open("c")
        disk.rename("a", "d")
        disk.remove("c")
        assert disk.sync_names() == 4
        admit = Admit()
        assert disk.crash(random.Random(seed), admit).undone == []
        assert disk.names == {"b": b, "d": a}
        assert not any(family.startswith("undone_") for family in admit.families())


def test_a_removed_file_may_come_back_with_its_bytes_fated_like_any() -> None:
    durable = fill(0xA1, 600)
    data = fill(0xB2, 300)  # bytes 400..699: the boundary at 512 is inside it
    allowed = possible(durable, [Op("write", 400, data)])
    seen = set()
    for seed in SEEDS:
        disk, a = synced_file(durable, "a")
        a.write(400, data)
        disk.remove("a")
        outcome = disk.crash(random.Random(seed), Admit())
        if "a" not in disk.names:
            seen.add("gone")
            continue
        assert disk.names == {"a": a}
        assert a.pending == [] and a.durable == a.current
        result = (bytes(a.current), outcome.kept, outcome.lost, outcome.torn)
        assert result in allowed, f"seed {seed}: came back with bytes no fate explains"
        seen.add({(1, 0, 0): "kept", (0, 1, 0): "lost", (0, 0, 1): "torn"}[result[1:]])
    assert seen == {"gone", "kept", "lost", "torn"}


def test_a_file_sync_does_not_make_its_creation_durable() -> None:
    seen = set()
    for seed in SEEDS:
        disk = Disk()
        disk.open("a").write(0, b"data")
        disk.names["a"].sync()
        disk.crash(random.Random(seed), Admit())
        seen.add(tuple((name, bytes(inode.current)) for name, inode in disk.names.items()))
    assert seen == {(), (("a", b"data"),)}


def test_a_synced_rename_may_keep_a_file_whose_writes_are_lost() -> None:
    """The classic: write a temporary file, rename it over the real one, no file sync."""
    seen = set()
    for seed in SEEDS:
        disk, _ = synced_file(b"old", "real")
        tmp = disk.open("tmp")
        tmp.write(0, b"new")
        disk.rename("tmp", "real")
        disk.sync_names()
        disk.crash(random.Random(seed), Admit())
        assert disk.names == {"real": tmp}
        seen.add(bytes(tmp.current))
    assert seen == {b"new", b""}


# -- 6. wipe ------------------------------------------------------------------------


def test_wipe_loses_everything_synced_or_not() -> None:
    disk, a = disk_with_a()
    disk.open("b").write(0, b"unsynced")
    disk.rename("a", "c")
    disk.wipe()
    assert (disk.names, disk.durable_names, disk.journal) == ({}, {}, [])
    assert disk.wipes == 1
    assert disk.crash(random.Random(0), Admit()) == CrashOutcome()
    assert disk.names == {}
    fresh = disk.open("c")
    assert fresh is not a and bytes(fresh.current) == b""


# -- 7. determinism -----------------------------------------------------------------


@HISTORY_SETTINGS
@given(history=steps, seed=seeds)
def test_the_same_seed_gives_the_same_crash(history: list[Step], seed: int) -> None:
    results = []
    for _ in range(2):
        harness = Harness()
        harness.run(history, Admit())
        outcome = harness.crash(seed, Admit())
        state = {name: bytes(inode.current) for name, inode in harness.disk.names.items()}
        results.append((state, harness.outcomes, outcome, harness.disk.crashes))
    assert results[0] == results[1]


def test_different_seeds_give_different_crashes() -> None:
    """Not a promise of the contract, but a model that ignored its rng would pass the above."""
    results = set()
    for seed in range(20):
        image, *_ = crash_file(b"", [Op("write", 100, payload(6, 1000))], seed)
        results.add(image)
    assert len(results) > 1


# -- 8. describe --------------------------------------------------------------------


def test_describe_mentions_the_counts() -> None:
    text = CrashOutcome(kept=3, lost=2, torn=1, undone=["create a", "rename b -> c"]).describe()
    assert "3 unsynced op(s) kept" in text and "2 lost" in text and "1 torn" in text
    assert "create a" in text and "rename b -> c" in text
    assert "undone" not in CrashOutcome(kept=5).describe()


def test_describe_of_a_crash_tells_what_it_did() -> None:
    for seed in SEEDS:
        disk, a = disk_with_a()
        a.write(0, payload(7, 1500))
        disk.open("new")
        outcome = disk.crash(random.Random(seed), Admit())
        if outcome.undone and outcome.torn:
            break
    else:
        pytest.fail("no seed both tore the write and undid the create")
    text = outcome.describe()
    assert f"{outcome.kept} unsynced op(s) kept" in text
    assert f"{outcome.lost} lost" in text and f"{outcome.torn} torn" in text
    assert "create new" in text
