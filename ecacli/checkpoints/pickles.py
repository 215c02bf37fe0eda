"""A restricted, bounded reader of the pickles inside PyTorch files (torch.save's `data.pkl`, TorchScript's `data.pkl` and `constants.pkl`, the legacy format's pickles).

Nothing in a pickle is imported or called: a class or function it names becomes a `Global`
(its name), an object built from one a `Built` (the name, its arguments and state), a tensor a
`TensorRef` (dtype, shape, strides, storage) and a storage a `StorageRef` (key, element type,
declared size); plain data (dicts, lists, tuples, text, numbers) is built as itself. The work is
bounded before it is done: at most `MAX_OPCODES` opcodes, nesting at most `MAX_DEPTH` deep,
`MAX_NODES` values counted as a tree (shared parts counted each time), and a dict key or set
member no larger than `MAX_KEY_NODES`, so hashing, comparing or printing what was read is cheap.
The reader runs as Python bytecode, so Ctrl-C and SIGTERM stop it at once. Every refusal is a
`PickleRefused` whose message says what was found and which limit it passed, never the value.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

MAX_OPCODES = 20_000_000
MAX_DEPTH = 100
MAX_NODES = 5_000_000
MAX_KEY_NODES = 256
MAX_DIMS = 64
MAX_ELEMENTS = 2**48
"""No tensor, storage or offset in a file may declare more elements than this (a 1 PiB tensor of bytes)."""

STORAGE_ITEM_BYTES = {
    "FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8, "IntStorage": 4,
    "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16,
    "QInt8Storage": 1, "QUInt8Storage": 1, "QInt32Storage": 4, "QUInt4x2Storage": 1, "QUInt2x4Storage": 1, "UntypedStorage": 1,
}  # fmt: skip
"""torch's storage classes as torch.save names them, and the bytes of one element (UntypedStorage counts bytes)."""

DTYPE_BYTES = {
    "float32": 4, "float": 4, "float64": 8, "double": 8, "float16": 2, "half": 2, "bfloat16": 2, "int64": 8, "long": 8,
    "int32": 4, "int": 4, "int16": 2, "short": 2, "int8": 1, "uint8": 1, "bool": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "complex64": 8, "complex128": 16, "complex32": 4,
}  # fmt: skip
"""Bytes of one element of the dtypes a v3 tensor names; others (float8, float4, ...) count as one byte or less."""

TENSOR_REBUILDERS = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3"}
PARAMETER_REBUILDERS = {"_rebuild_parameter", "_rebuild_parameter_with_state"}
REFUSED_OPCODES = (
    (pickle.EXT1, "EXT1"), (pickle.EXT2, "EXT2"), (pickle.EXT4, "EXT4"), (pickle.INST, "INST"), (pickle.OBJ, "OBJ"),
    (pickle.BYTEARRAY8, "BYTEARRAY8"), (pickle.NEXT_BUFFER, "NEXT_BUFFER"), (pickle.READONLY_BUFFER, "READONLY_BUFFER"),
)  # fmt: skip
"""Opcodes torch.save never writes: the copyreg registry, protocol 0/1 instances, protocol 5 buffers (whose declared size would be allocated)."""


class PickleRefused(ValueError):
    """A pickle that passes a bound or holds something this reader does not build; the message is one sentence without the file's name."""


class PickleMalformed(PickleRefused):
    """A pickle that is truncated or not a pickle at all."""


@dataclass(frozen=True, eq=False)
class Global:
    """A class or function a pickle names: never imported."""

    module: str
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class Built:
    """What a pickle builds from a `Global` (REDUCE, NEWOBJ, BUILD), kept as data: the callable's name, its arguments, its state and items."""

    kind: Global
    args: tuple = ()
    state: Any = None
    items: dict = field(default_factory=dict)
    members: list = field(default_factory=list)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.members.append(value)

    def extend(self, values: Any) -> None:
        self.members.extend(values)


@dataclass(frozen=True, eq=False)
class StorageRef:
    """A storage a pickle refers to by key: its element type, its declared number of elements and bytes."""

    key: str
    type_name: str
    elements: int
    location: str

    @property
    def nbytes(self) -> int:
        return self.elements * STORAGE_ITEM_BYTES[self.type_name]


@dataclass(frozen=True, eq=False)
class TensorRef:
    """A tensor a pickle describes: a view (offset, shape, strides) of a storage, and its dtype's name when the pickle gives it (v3)."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _describe(value: Any) -> str:
    """What a value is, in a few words, without printing it."""
    if isinstance(value, Global):
        return f"the global {value.qualified[:80]}"
    if isinstance(value, Built):
        return f"an object of {value.kind.qualified[:80]}"
    if isinstance(value, (tuple, list, dict, set, frozenset)):
        return f"a {type(value).__name__} of {len(value):,} items"
    if isinstance(value, (str, bytes)):
        return f"{'text' if isinstance(value, str) else 'bytes'} of {len(value):,} characters"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**18:
        return f"an integer of {value.bit_length():,} bits"
    return type(value).__name__


def _count(value: Any, budget: int, depth_limit: int, what: str) -> int:
    """How many values `value` holds counted as a tree (shared parts counted each time); refuses past `budget` values or `depth_limit` levels."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while pending:
        item, depth = pending.pop()
        seen += 1
        if seen > budget:
            raise PickleRefused(f"{what} holds more than {budget:,} values counted as a tree (shared parts counted each time)")
        if depth > depth_limit:
            raise PickleRefused(f"{what} is nested more than {depth_limit} levels deep")
        if isinstance(item, (tuple, list, set, frozenset)):
            pending.extend((child, depth + 1) for child in item)
        elif isinstance(item, dict):
            pending.extend((child, depth + 1) for pair in item.items() for child in pair)
        elif isinstance(item, Built):
            pending.extend((child, depth + 1) for child in (item.args, item.state, item.items, item.members))
    return seen


def _check_key(key: Any) -> None:
    """A dict key or set member: plain data or small tuples of it, so hashing and comparing it is cheap."""
    if isinstance(key, (list, dict, set, bytearray)):
        raise PickleRefused(f"a dict key or set member is {_describe(key)}, which cannot be a key")
    if isinstance(key, (tuple, frozenset)):
        _count(key, MAX_KEY_NODES, 16, "a dict key or set member")


class BoundedUnpickler(pickle._Unpickler):  # the Python implementation: interruptible, and its opcodes can be counted
    """Read one pickle from `data` as described in this module's docstring."""

    def __init__(self, file: io.BufferedIOBase, max_opcodes: int = MAX_OPCODES) -> None:
        super().__init__(file, encoding="utf-8")
        self.max_opcodes = max_opcodes
        self.opcodes = 0
        self.storages: dict[str, StorageRef] = {}
        self.tensors: list[TensorRef] = []
        self.dispatch = {**pickle._Unpickler.dispatch, **self._overrides()}

    def _overrides(self) -> dict[int, Any]:
        refused = {op[0]: self._refuse_opcode(name) for op, name in REFUSED_OPCODES}
        return {
            **refused,
            pickle.REDUCE[0]: BoundedUnpickler._reduce,
            pickle.NEWOBJ[0]: BoundedUnpickler._newobj,
            pickle.NEWOBJ_EX[0]: BoundedUnpickler._newobj_ex,
            pickle.BUILD[0]: BoundedUnpickler._build,
            pickle.SETITEM[0]: BoundedUnpickler._setitem,
            pickle.SETITEMS[0]: BoundedUnpickler._setitems,
            pickle.ADDITEMS[0]: BoundedUnpickler._additems,
            pickle.FROZENSET[0]: BoundedUnpickler._frozenset,
            pickle.LONG4[0]: BoundedUnpickler._long4,
        }

    @staticmethod
    def _refuse_opcode(name: str):
        def refuse(self: BoundedUnpickler) -> None:
            raise PickleRefused(f"the pickle uses the opcode {name}, which torch.save never writes")

        return refuse

    def load(self) -> Any:
        """The pickle's value, read under the bounds; a PickleRefused for anything past them or malformed."""
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)
        self.read, self.readinto, self.readline = self._unframer.read, self._unframer.readinto, self._unframer.readline
        self.metastack, self.stack, self.proto = [], [], 0
        self.append = self.stack.append
        read, dispatch = self.read, self.dispatch
        try:
            while True:
                key = read(1)
                if not key:
                    raise PickleMalformed("the pickle ends before its STOP opcode (truncated)")
                self.opcodes += 1
                if self.opcodes > self.max_opcodes:
                    raise PickleRefused(f"the pickle has more than {self.max_opcodes:,} opcodes")
                handler = dispatch.get(key[0])
                if handler is None:
                    raise PickleMalformed(f"the pickle holds the unknown opcode {key!r}")
                handler(self)
        except pickle._Stop as stop:
            value = stop.value
        except PickleRefused:
            raise
        except RecursionError:
            raise PickleRefused(f"the pickle is nested more than {MAX_DEPTH} levels deep") from None
        except (pickle.UnpicklingError, EOFError, IndexError, KeyError, TypeError, ValueError, AttributeError, OverflowError, UnicodeDecodeError, struct.error) as exc:
            raise PickleMalformed(f"the pickle is malformed ({type(exc).__name__}: {str(exc)[:100]})") from None
        except MemoryError:
            raise PickleRefused("the pickle asks for more memory than there is") from None
        _count(value, MAX_NODES, MAX_DEPTH, "the pickle")
        return value

    def find_class(self, module: str, name: str) -> Global:
        return Global(module, name)

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise PickleRefused(f"the pickle refers to {_describe(pid)} outside it, not to a storage")
        _, storage_type, key, location, elements = pid[:5]
        if not (isinstance(storage_type, Global) and storage_type.module in ("torch", "torch.storage") and storage_type.name in STORAGE_ITEM_BYTES):
            raise PickleRefused(f"a storage has the element type {_describe(storage_type)}, which is no storage class of torch")
        if not (isinstance(key, str) and 0 < len(key) <= 64 and key.isascii() and key.isprintable()):
            raise PickleRefused(f"a storage's key is {_describe(key)}, not a short name")
        if not (isinstance(elements, int) and not isinstance(elements, bool) and 0 <= elements <= MAX_ELEMENTS):
            raise PickleRefused(f"a storage declares {_describe(elements)} elements (at most {MAX_ELEMENTS:,})")
        if not isinstance(location, str) or len(location) > 64:
            raise PickleRefused(f"a storage's location is {_describe(location)}, not a device name")
        known = self.storages.get(key)
        if known is not None and (known.type_name, known.elements) != (storage_type.name, elements):
            raise PickleRefused(f"the storage {key!r} is declared twice with different sizes or types")
        return self.storages.setdefault(key, StorageRef(key, storage_type.name, elements, location))

    def _long4(self) -> None:
        """LONG4 holds an integer of 256 bytes or more (pickle writes smaller ones as LONG1): refused unread, as torch's weights-only loader refuses it."""
        declared = self.read(4)
        length = int.from_bytes(declared, "little", signed=True)
        if len(declared) < 4 or length < 0:
            raise PickleMalformed("the pickle is malformed (an integer of a negative or truncated length)")
        raise PickleRefused(f"the pickle holds an integer of {length * 8:,} bits, too large for a checkpoint field (a count, an epoch, a seed)")

    def _reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        self.stack[-1] = self._call(func, args)

    def _newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args))

    def _newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args, kwargs))

    def _call(self, func: Any, args: Any, kwargs: Any = None) -> Any:
        if not isinstance(func, Global):
            raise PickleRefused(f"the pickle calls {_describe(func)}, which is not a named class or function")
        if not isinstance(args, tuple):
            raise PickleRefused(f"the pickle calls {func.qualified[:80]} with {_describe(args)} as arguments")
        if func.module == "torch._utils" and func.name in TENSOR_REBUILDERS and args and isinstance(args[0], StorageRef):
            return self._tensor(args)
        if func.module == "torch._utils" and func.name in PARAMETER_REBUILDERS and args and isinstance(args[0], TensorRef):
            return args[0]
        if func.qualified == "collections.OrderedDict" and not args and not kwargs:
            return OrderedDict()
        return Built(func, args, kwargs)

    def _tensor(self, args: tuple) -> TensorRef:
        if len(args) < 4:
            raise PickleRefused("a tensor is described with too few values (storage, offset, shape, strides)")
        storage, offset, shape, stride = args[:4]
        dtype = args[6] if len(args) >= 7 and isinstance(args[6], Global) and args[6].module == "torch" else None
        def sizes(value: Any, what: str) -> tuple[int, ...]:
            if not (isinstance(value, tuple) and len(value) <= MAX_DIMS and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_ELEMENTS for v in value)):
                raise PickleRefused(f"a tensor's {what} is {_describe(value)}, not at most {MAX_DIMS} whole numbers from 0 to {MAX_ELEMENTS:,}")
            return value

        shape, stride = sizes(shape, "shape"), sizes(stride, "strides")
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_ELEMENTS or len(stride) != len(shape):
            raise PickleRefused("a tensor's offset or strides do not fit its shape")
        item_bytes = STORAGE_ITEM_BYTES[storage.type_name]
        element_bytes = DTYPE_BYTES.get(dtype.name, 1) if dtype is not None else item_bytes
        capacity = storage.nbytes // element_bytes
        numel = math.prod(shape)
        if numel > MAX_ELEMENTS:
            raise PickleRefused(f"a tensor declares {numel:,} elements (at most {MAX_ELEMENTS:,})")
        last = offset + sum((size - 1) * step for size, step in zip(shape, stride)) if numel else offset
        if numel and (last >= capacity or numel > capacity):
            raise PickleRefused(f"a tensor of shape {list(shape)} reaches past its storage of {capacity:,} elements")
        tensor = TensorRef(storage, offset, shape, stride, dtype.name if dtype is not None else None)
        self.tensors.append(tensor)
        return tensor

    def _build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if isinstance(target, Built):
            target.state = state
        elif isinstance(target, (dict, TensorRef)):
            pass  # an OrderedDict's `_metadata`, a tensor's Python attributes: not needed to read the weights
        else:
            raise PickleRefused(f"the pickle sets the state of {_describe(target)}")

    def _setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        _check_key(key)
        self._target(self.stack[-1])[key] = value

    def _setitems(self) -> None:
        items = self.pop_mark()
        target = self._target(self.stack[-1])
        for i in range(0, len(items), 2):
            _check_key(items[i])
            target[items[i]] = items[i + 1]

    @staticmethod
    def _target(target: Any) -> Any:
        if not isinstance(target, (dict, Built)):
            raise PickleRefused(f"the pickle sets items of {_describe(target)}")
        return target

    def _additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, set):
            raise PickleRefused(f"the pickle adds set members to {_describe(target)}")
        for item in items:
            _check_key(item)
            target.add(item)

    def _frozenset(self) -> None:
        items = self.pop_mark()
        for item in items:
            _check_key(item)
        self.append(frozenset(items))


def read_pickle(data: bytes, max_opcodes: int = MAX_OPCODES) -> BoundedUnpickler:
    """Read the pickle in `data`; the reader keeps the value (`.value`), the storages and tensors it met."""
    reader = BoundedUnpickler(io.BytesIO(data), max_opcodes)
    reader.value = reader.load()
    return reader
