"""Bounding a checkpoint's pickle before either unpickler runs: its opcodes are walked, building nothing, and a pickle
that nests too deep, runs too long, holds huge integers or views tensors beyond their storage is refused."""

from __future__ import annotations

import _compat_pickle
import math
import pickletools
from dataclasses import dataclass
from typing import Any

MAX_PICKLE_BYTES = 64 << 20  # tensors live in their own records; the pickle holds only names, sizes and options
MAX_OPCODES = 2_000_000  # a yolov5x last.pt (model, EMA, training model and optimizer) has under 100,000
# Hashing a tuple recurses in C without a limit, and code that walks what a pickle built recurses in Python
MAX_NESTING = 200
MAX_INT_BITS = 64  # sizes, strides, offsets and counters; a longer integer only costs time (multiplying sizes)
MAX_TENSOR_DIMS = 16

TENSOR_REBUILDS = {f"torch._utils {name}" for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_qtensor")}
TENSOR_WRAPPERS = {f"torch._utils {name}" for name in ("_rebuild_parameter", "_rebuild_parameter_with_state")}
# What pickle calls with a list, dict or string; called with a tensor it would iterate it, with an int allocate it
CONTAINER_CALLS = {
    *(f"builtins {name}" for name in ("set", "frozenset", "bytearray", "list", "dict", "tuple")),
    "collections OrderedDict",
    "collections Counter",
}
ARGUMENT_WORDS = {"int": "an integer", "tensor": "a tensor", "storage": "a storage"}
MUTATORS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}  # they return the object they change
INT_OPCODES = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
TUPLE_OPCODES = {"EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"}
CONTAINER_OPCODES = {"EMPTY_LIST": "list", "LIST": "list", "EMPTY_DICT": "dict", "DICT": "dict"}
STRING_TYPES = {"str", "bytes", "bytes_or_str"}  # pickletools' names for what string opcodes push
MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
# protocol 0 and 1's way of calling a class: torch.save never writes them, and pickle's error for them is not one line
REFUSED_OPCODES = {"INST", "OBJ"}


class UnsafePickle(Exception):
    """Why a pickle must not be unpickled, in words that follow "refusing to load <file>: "."""


@dataclass(slots=True)
class Item:
    """What the walk knows of one stack entry. ``value``: an int or str, a global ("module name"), a tuple's Items,
    or a storage's element count (None when torch itself would refuse its id)."""

    depth: int
    kind: str = "other"  # int, bool, str, tuple, list, dict, global, storage, tensor, other
    value: Any = None


def tensor_extent_problem(storage_size: int, offset: Any, size: Any, stride: Any) -> str | None:
    """What is wrong with a tensor view of ``storage_size`` elements, or None. A view may not read past its
    storage nor hold more elements than it (a zero stride repeats one element without end)."""

    def dims(value: Any) -> bool:
        return isinstance(value, tuple) and all(type(item) is int and 0 <= item < 2**63 for item in value)

    if type(offset) is not int or not 0 <= offset < 2**63 or not dims(size) or not dims(stride):
        return "a tensor has a negative or non-integer offset, size or stride"
    if len(size) != len(stride) or len(size) > MAX_TENSOR_DIMS:
        return f"a tensor has {len(size)} sizes and {len(stride)} strides (at most {MAX_TENSOR_DIMS} of each)"
    numel = math.prod(size)
    end = offset + 1 + sum((length - 1) * step for length, step in zip(size, stride)) if numel else offset
    if end > storage_size:
        return f"a tensor reaches element {end - 1} of a storage of {storage_size}"
    if numel > storage_size:
        return f"a tensor of {numel} elements views a storage of {storage_size}: it repeats elements"
    return None


def _global_name(module: str, name: str) -> str:
    """ "module name" as find_class sees it (torch.save's protocol 2 spells builtins "__builtin__")."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)} {name}"


def _literal(item: Item) -> Any:
    """An int, or a tuple of ints (None for anything else): a tensor's offset, size or stride."""
    if item.kind == "tuple":
        return tuple(child.value if child.kind == "int" else None for child in item.value)
    return item.value if item.kind == "int" else None


class PickleScan:
    """Walks a pickle's opcodes with a stack of Items, as an unpickler would, but builds nothing.

    ``record_sizes``: the archive's record names and sizes (``data/0`` -> bytes), which bound each storage.
    """

    def __init__(self, record_sizes: dict[str, int]) -> None:
        self.record_sizes = record_sizes
        self.stack: list[Item] = []
        self.marks: list[int] = []  # stack heights at each open MARK
        self.memo: dict[Any, Item] = {}

    def run(self, data: bytes) -> None:
        """Raise UnsafePickle for a pickle the limits refuse, ValueError for a damaged one."""
        if len(data) > MAX_PICKLE_BYTES:
            raise UnsafePickle(f"its pickle is {len(data)} bytes (at most {MAX_PICKLE_BYTES} are read)")
        for count, (opcode, arg, _) in enumerate(pickletools.genops(data)):
            if count >= MAX_OPCODES:
                raise UnsafePickle(f"its pickle has more than {MAX_OPCODES} opcodes")
            self.step(opcode, arg)

    def step(self, opcode: pickletools.OpcodeInfo, arg: Any) -> None:
        name = opcode.name
        if name in REFUSED_OPCODES:
            raise UnsafePickle(f"its pickle uses opcode {name}, which torch.save never writes")
        if name == "MARK":
            if len(self.marks) >= MAX_NESTING:
                raise UnsafePickle(f"its values are nested more than {MAX_NESTING} deep")
            self.marks.append(len(self.stack))
        elif name in MEMO_PUTS:
            top = self._pop(1)[0]
            self.stack.append(top)
            self.memo[len(self.memo) if name == "MEMOIZE" else arg] = top
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            self.stack.append(self.memo.get(arg, Item(0)))  # the same Item: what changes it later shows here too
        elif name not in ("PROTO", "FRAME"):
            popped = self._pop_for(opcode)
            result = self._result(opcode, arg, popped)
            self.stack.extend(result for _ in opcode.stack_after)

    def _pop(self, count: int) -> list[Item]:
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) - count < floor:
            raise ValueError("its pickle pops more values than it pushed")
        popped = self.stack[len(self.stack) - count :]
        del self.stack[len(self.stack) - count :]
        return popped

    def _pop_for(self, opcode: pickletools.OpcodeInfo) -> list[Item]:
        """The Items ``opcode`` takes: those above the last MARK, after any below it (APPENDS' list)."""
        before = opcode.stack_before
        if pickletools.markobject not in before:
            return self._pop(len(before))
        if not self.marks:
            raise ValueError(f"its pickle has {opcode.name} without a MARK")
        start = self.marks.pop()
        sliced = self.stack[start:]
        del self.stack[start:]
        return self._pop(before.index(pickletools.markobject)) + sliced

    def _result(self, opcode: pickletools.OpcodeInfo, arg: Any, popped: list[Item]) -> Item:
        """The Item ``opcode`` pushes; a container is one deeper than the deepest value it holds."""
        name = opcode.name
        if name in MUTATORS:
            target = popped[0]
            if name == "BUILD" and target.kind in ("tensor", "storage"):  # Tensor.set_ would make any view of it
                raise UnsafePickle(f"it sets the state of a {target.kind}, which torch.save never does")
            target.depth = max([target.depth, *(item.depth + 1 for item in popped[1:])])
            self._check_depth(target.depth)
            return target
        if name in ("DUP", "READONLY_BUFFER"):
            return popped[0]
        depth = 1 + max(item.depth for item in popped) if popped else 0
        self._check_depth(depth)
        if name in INT_OPCODES:
            return self._integer(arg)
        if name in TUPLE_OPCODES:
            return Item(depth, "tuple", tuple(popped))
        if name in ("NEWTRUE", "NEWFALSE"):
            return Item(0, "bool", name == "NEWTRUE")
        if name == "GLOBAL":
            return Item(0, "global", _global_name(*arg.split(" ", 1)))
        if name == "STACK_GLOBAL":  # a name computed by an earlier call could hide any global from these checks
            if not all(item.kind == "str" and isinstance(item.value, str) for item in popped):
                raise UnsafePickle("it names a global by strings it computes")
            return Item(0, "global", _global_name(popped[0].value, popped[1].value))
        if name == "BINPERSID":
            return self._storage(popped[0], depth)
        if name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX"):
            return self._call(popped[0], popped[1], depth)
        if name in CONTAINER_OPCODES:
            return Item(depth, CONTAINER_OPCODES[name])
        if opcode.stack_after and opcode.stack_after[0].name in STRING_TYPES:
            return Item(0, "str", arg)
        return Item(depth)

    @staticmethod
    def _check_depth(depth: int) -> None:
        if depth > MAX_NESTING:
            raise UnsafePickle(f"its values are nested more than {MAX_NESTING} deep")

    @staticmethod
    def _integer(value: int | bool) -> Item:
        if isinstance(value, bool):  # INT spells True and False as 01 and 00
            return Item(0, "bool", value)
        if value.bit_length() > MAX_INT_BITS:
            raise UnsafePickle(f"its pickle holds an integer of {value.bit_length()} bits (at most {MAX_INT_BITS})")
        return Item(0, "int", value)

    def _storage(self, pid: Item, depth: int) -> Item:
        """A storage from torch's persistent id ("storage", type, key, location, numel), bounded by its record."""
        fields = pid.value if pid.kind == "tuple" and len(pid.value) == 5 else ()
        if not fields or fields[0].value not in ("storage", b"storage"):
            raise UnsafePickle("it has a persistent id that is not a storage")
        if fields[4].kind not in ("int", "bool") or fields[2].kind not in ("str", "int"):
            raise UnsafePickle("a storage's key or element count is not a literal")
        key, numel = fields[2].value, int(fields[4].value)
        key = key.decode("ascii", "replace") if isinstance(key, bytes) else key
        record_size = self.record_sizes.get(f"data/{key}")  # torch.load names the record so
        if numel < 0 or record_size is None:  # torch refuses these itself, before any tensor is built on them
            return Item(depth, "storage")
        if numel > record_size:  # every element takes at least one byte
            raise UnsafePickle(f"storage {ascii(key)} claims {numel} elements but its record holds {record_size} bytes")
        return Item(depth, "storage", numel)

    def _call(self, function: Item, arguments: Item, depth: int) -> Item:
        """REDUCE and NEWOBJ: tensor views are checked against their storage, containers against what they take."""
        name = function.value if function.kind == "global" else ""
        module, _, attribute = name.partition(" ")
        given = arguments.value if arguments.kind == "tuple" else ()
        if name in TENSOR_REBUILDS:
            self._check_tensor(given)
            return Item(depth, "tensor")
        if name in TENSOR_WRAPPERS:
            return Item(depth, "tensor")
        if module == "torch._utils" or (module == "torch" and attribute.endswith(("Storage", "Tensor"))):
            raise UnsafePickle(f"it calls {module}.{attribute}, whose size this reader cannot bound")
        refused = [ARGUMENT_WORDS[item.kind] for item in given if item.kind in ARGUMENT_WORDS]
        if name in CONTAINER_CALLS and refused:
            raise UnsafePickle(f"it calls {module}.{attribute} with {refused[0]}, which pickle never does")
        return Item(depth, "dict" if name == "collections OrderedDict" else "other")

    @staticmethod
    def _check_tensor(given: tuple[Item, ...]) -> None:
        if len(given) < 4 or given[0].kind != "storage":
            raise UnsafePickle("a tensor is built on something other than a storage record")
        if given[0].value is None:
            return  # a storage id torch refuses before the tensor is built
        problem = tensor_extent_problem(given[0].value, *map(_literal, given[1:4]))
        if problem:
            raise UnsafePickle(problem)


def scan_pickle(data: bytes, record_sizes: dict[str, int]) -> None:
    """Refuse (UnsafePickle) a pickle that would nest, count, allocate or iterate beyond the limits above, before any
    unpickler sees it; a damaged one raises ValueError. Opcode by opcode, in bounded time and memory."""
    PickleScan(record_sizes).run(data)
