r"""Traced programs kept on disk, so that a fresh process skips tracing as well as compiling.

JAX's persistent compilation cache (:mod:`invcal.compilation_cache`) stores compiled
programs keyed by the *lowered* program, so a fresh process must still trace and lower the
Python code before it can look one up. For a population fit that is most of the time left:
Theoph's Lindström–Bates loop traces for ~4 s (nested forward derivatives through diffrax
under ``vmap``), lowers for ~0.6 s and then loads from the cache in 0.3 s.

:func:`cached` wraps a function like ``equinox.filter_jit`` and, when the persistent cache
is on, also keeps its traced program, serialized by ``jax.export``, in
``<compilation cache folder>/invcal-programs/``. The file's key is a fingerprint of
everything the trace depends on:

- the avals (shape, dtype, weak type) of the array arguments and the *values* of every
  other argument, including the static fields of modules (the pytree structure);
- the code of every Python function reachable from the arguments: its bytecode, constants,
  default values, closure values and the globals it reads, recursively; a function from an
  installed package is named by its module, name and the package's version, a module by
  its name and version, or, for a user's own module file, by the file's content; invcal's
  own source files are hashed together;
- the versions of Python, jax, jaxlib, equinox, diffrax, lineax, optimistix and numpy, the
  JAX options that change tracing (``jax_enable_x64``, matmul precision, dtype promotion,
  …), equinox's error mode and the backend.

Anything the fingerprint cannot name with certainty (an object of a user's class with state,
a Jupyter-defined class, a device mesh) makes that call go through ``filter_jit`` as
before: the cache is an optimisation and never a source of a different program. A file
that cannot be read or written, or a function that cannot be exported, also falls back.
``INVCAL_PROGRAM_CACHE=0`` (or ``off``) turns it off. The folder keeps the
``KEEP_PER_FUNCTION`` most recently used programs of each function (a load marks a file
used); older ones, left by earlier versions of invcal or of a user's model, are deleted when
a new one is written. What the fingerprint does not see:
Python code that reads a file or an environment variable *while it is traced* (its value
becomes a constant of the program); set the variable to 0 for such code.

Measured (Theoph ``fit_population``, a fresh process whose caches are filled, one core):
fit 4.49–4.58 s with the compilation cache alone, about 1.0–1.2 s with the traced program
loaded (import ~1.8 s on top).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import os
import sys
import sysconfig
import types
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from .compilation_cache import cache_dir

__all__ = ["cached", "fingerprint"]

_OFF = ("0", "off", "false", "no")
_VERSIONS = ("jax", "jaxlib", "equinox", "diffrax", "lineax", "optimistix", "numpy")
_CONFIG = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_numpy_dtype_promotion",
    "jax_numpy_rank_promotion",
    "jax_default_prng_impl",
    "jax_enable_checks",
    "jax_debug_nans",
    "jax_debug_infs",
)
_LIBRARY_ROOTS = tuple(
    {
        os.path.realpath(p)
        for k in ("purelib", "platlib", "stdlib", "platstdlib")
        if (p := sysconfig.get_paths().get(k))
    }
)


class Unkeyable(Exception):
    """The fingerprint cannot name this value with certainty."""


#: Programs kept per function name in the folder (each ~200 KB for a population fit).
KEEP_PER_FUNCTION = 64


def _prune(folder: Path, name: str) -> None:
    """Delete all but the ``KEEP_PER_FUNCTION`` most recently used ``name-*.jax`` files.
    Every source change of invcal or of a user's model writes new programs; without this the
    folder grows with each one. A file another process is reading stays readable (POSIX),
    and a file gone before it is read is traced again."""
    try:
        files = [(f.stat().st_mtime, f) for f in folder.glob(f"{name}-*.jax")]
    except OSError:
        return
    for _, f in sorted(files, key=lambda t: t[0], reverse=True)[KEEP_PER_FUNCTION:]:
        try:
            f.unlink()
        except OSError:
            pass


def _folder() -> Path | None:
    if os.environ.get("INVCAL_PROGRAM_CACHE", "").strip().lower() in _OFF:
        return None
    if jax.config.jax_disable_jit:
        return None
    base = cache_dir()
    return None if base is None else Path(base) / "invcal-programs"


# --------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------
@functools.cache
def _invcal_source() -> str:
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@functools.cache
def _file_hash(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _is_library_file(path: str) -> bool:
    real = os.path.realpath(path)
    return any(real.startswith(root + os.sep) for root in _LIBRARY_ROOTS)


@functools.cache
def _distribution_version(top: str) -> str:
    try:
        return importlib.metadata.version(top)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _module_fp(name: str) -> str:
    """A module by what defines its code: invcal's sources, a package version, or the
    content of a user's own file."""
    top = name.split(".")[0]
    if top == "invcal":
        return f"invcal:{_invcal_source()}"
    if top in sys.stdlib_module_names or top == "builtins":
        return f"std:{name}:{sys.version}"
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if path is None:
        raise Unkeyable(f"module {name!r} has no file")
    if _is_library_file(path):
        return f"lib:{name}:{_distribution_version(top)}"
    st = os.stat(path)
    return f"file:{name}:{_file_hash(path, st.st_mtime_ns, st.st_size)}"


class _Fingerprint:
    def __init__(self):
        self.memo: dict[int, str] = {}
        self.keep: list = []  # keeps memoised objects alive, so that ids are not reused

    def value(self, v) -> str:
        if v is None or isinstance(v, (bool, int, float, complex, str, bytes)):
            return f"{type(v).__name__}:{v!r}"
        if isinstance(v, np.dtype):
            return f"dtype:{v.str}"
        if isinstance(v, (np.ndarray, np.generic)):
            a = np.asarray(v)
            if a.dtype == object:
                raise Unkeyable("object array")
            digest = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
            return f"nd:{a.dtype.str}:{a.shape}:{digest}"
        if isinstance(v, jax.Array):
            return self.value(np.asarray(v))
        key = id(v)
        if key in self.memo:
            return self.memo[key]
        self.memo[key] = f"cycle:{len(self.memo)}"
        self.keep.append(v)
        out = self._compound(v)
        self.memo[key] = out
        return out

    def _compound(self, v) -> str:
        if isinstance(v, (tuple, list)):
            return f"{type(v).__name__}[{','.join(self.value(x) for x in v)}]"
        if isinstance(v, dict):
            items = sorted((self.value(k), self.value(x)) for k, x in v.items())
            return f"{type(v).__name__}{{{','.join(f'{k}={x}' for k, x in items)}}}"
        if isinstance(v, (set, frozenset)):
            return f"{type(v).__name__}{{{','.join(sorted(self.value(x) for x in v))}}}"
        if isinstance(v, type):
            return self.type(v)
        if isinstance(v, jax.sharding.Mesh):  # devices, not values: leave it to jit
            raise Unkeyable("a device mesh")
        if isinstance(v, types.ModuleType):
            return f"module:{_module_fp(v.__name__)}"
        if isinstance(v, types.FunctionType):
            return self.function(v)
        if isinstance(v, types.MethodType):
            return f"method:{self.value(v.__func__)}:{self.value(v.__self__)}"
        if isinstance(v, functools.partial):
            return f"partial:{self.value(v.func)}:{self.value(v.args)}:{self.value(v.keywords)}"
        if isinstance(v, types.CodeType):
            return self.code(v, {})
        if isinstance(v, enum.Enum):
            return f"enum:{self.type(type(v))}:{v.name}"
        if dataclasses.is_dataclass(v):  # equinox modules too
            fields = [(f.name, self.value(getattr(v, f.name, None))) for f in dataclasses.fields(v)]
            return f"dc:{self.type(type(v))}:{fields}"
        wrapped = getattr(v, "__wrapped__", None)
        if wrapped is not None:  # jax.jit(f), functools.wraps
            return f"wrapped:{self.type(type(v))}:{self.value(wrapped)}"
        module = getattr(type(v), "__module__", "") or ""
        if module.split(".")[0] != "__main__" and "0x" not in repr(v):
            # an object of a library's type with a stable repr (a sentinel, a jnp function)
            name = getattr(v, "__qualname__", None) or getattr(v, "__name__", None)
            if name is not None and getattr(v, "__module__", None):
                return f"named:{_module_fp(v.__module__)}:{name}"
            if _module_fp(module).startswith(("lib:", "std:", "invcal:")):
                return f"obj:{self.type(type(v))}:{v!r}"
        raise Unkeyable(f"{type(v).__module__}.{type(v).__qualname__} object")

    def type(self, t: type) -> str:
        if t.__module__ == "__main__":
            raise Unkeyable(f"class {t.__qualname__} defined in __main__")
        return f"type:{_module_fp(t.__module__)}:{t.__qualname__}"

    def function(self, f: types.FunctionType) -> str:
        module = f.__module__ or "__main__"
        local = "<locals>" in f.__qualname__ or "<lambda>" in f.__qualname__
        if not local and not f.__closure__ and module != "__main__":
            try:
                named = _module_fp(module)
            except Unkeyable:
                named = None
            if named is not None and not named.startswith("file:"):
                return f"fn:{named}:{f.__qualname__}"  # a library's own function
        globals_ = f.__globals__
        parts = [
            f.__qualname__,
            self.code(f.__code__, globals_),
            self.value(f.__defaults__),
            self.value(f.__kwdefaults__),
        ]
        for cell in f.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:
                parts.append("empty-cell")
            else:
                parts.append(self.value(contents))
        return f"fn:{module}:" + "|".join(parts)

    def code(self, c: types.CodeType, globals_: dict) -> str:
        consts = [
            self.code(x, globals_) if isinstance(x, types.CodeType) else self.value(x)
            for x in c.co_consts
        ]
        used = []
        for name in c.co_names:
            if name in globals_:
                used.append(f"{name}={self.value(globals_[name])}")
        digest = hashlib.sha256(c.co_code).hexdigest()
        return (
            f"code:{c.co_name}:{c.co_argcount}:{c.co_kwonlyargcount}:{c.co_flags}:{digest}:"
            f"{c.co_names}:{c.co_freevars}:{consts}:{used}"
        )

    def treedef(self, t) -> str:
        node = t.node_data()
        if node is None:
            return "*"
        kind, aux = node
        children = ",".join(self.treedef(c) for c in t.children())
        return f"{self.type(kind)}<{self.value(aux)}>({children})"


def _environment() -> str:
    versions = [f"{name}={_distribution_version(name)}" for name in _VERSIONS]
    config = [f"{name}={getattr(jax.config, name, None)!r}" for name in _CONFIG]
    try:
        from equinox import _errors

        on_error = getattr(_errors, "EQX_ON_ERROR", None)
    except ImportError:
        on_error = None
    device = jax.devices()[0]
    return "|".join(
        [
            sys.version,
            *versions,
            *config,
            f"eqx_on_error={on_error}",
            device.platform,
            getattr(device, "device_kind", ""),
        ]
    )


def fingerprint(fn, args) -> str:
    """The key of ``fn(*args)``'s traced program (a hex digest); raises :class:`Unkeyable`
    when some argument or reachable code cannot be named with certainty."""
    fp = _Fingerprint()
    leaves, treedef = jax.tree_util.tree_flatten(args)
    parts = [_environment(), fp.value(fn), fp.treedef(treedef)]
    for leaf in leaves:
        if eqx.is_array(leaf):
            weak = bool(getattr(leaf, "weak_type", False))
            parts.append(f"A:{np.shape(leaf)}:{np.dtype(leaf.dtype).str}:{weak}")
        else:
            parts.append(fp.value(leaf))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


# --------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------
class _Cached:
    def __init__(self, fn):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.jitted = eqx.filter_jit(fn)
        self.programs: dict[str, object] = {}

    def __call__(self, *args):
        folder = _folder()
        if folder is None:
            return self.jitted(*args)
        try:
            key = fingerprint(self.fn, args)
        except Unkeyable:
            return self.jitted(*args)
        dynamic, static = eqx.partition(args, eqx.is_array)
        leaves, structure = jax.tree_util.tree_flatten(dynamic)
        if key not in self.programs:
            run = self._load(folder, key)
            if run is None:
                run = self._export(folder, key, leaves, structure, static)
            self.programs[key] = run  # None: not exportable, jit from now on (tried once)
        run = self.programs[key]
        if run is None:
            return self.jitted(*args)
        return run(leaves)

    def _callable(self, exported):
        def run(leaves):
            return exported.call(leaves)

        run.__name__ = self.fn.__name__  # the compilation cache's entries keep the name
        return jax.jit(run)

    def _load(self, folder, key):
        path = folder / f"{self.fn.__name__}-{key}.jax"
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        try:
            os.utime(path)  # used now: the pruning keeps the most recently used
        except OSError:
            pass
        try:
            return self._callable(jax.export.deserialize(bytearray(blob)))
        except Exception:  # a damaged or foreign file: trace again
            return None

    def _export(self, folder, key, leaves, structure, static):
        fn = self.fn

        def program(leaves):
            dynamic = jax.tree_util.tree_unflatten(structure, leaves)
            return fn(*eqx.combine(dynamic, static))

        program.__name__ = fn.__name__
        try:
            exported = jax.export.export(jax.jit(program))(leaves)
            blob = exported.serialize()
        except Exception:  # not exportable (a callback, a sharding, an unserializable output)
            return None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{fn.__name__}-{key}.{os.getpid()}.tmp"
            tmp.write_bytes(blob)
            os.replace(tmp, folder / f"{fn.__name__}-{key}.jax")
        except OSError:
            pass  # still run the traced program in this process
        else:
            _prune(folder, fn.__name__)
        return self._callable(exported)


def cached(fn):
    """``equinox.filter_jit(fn)`` whose traced program is also kept on disk (see the module
    docstring)."""
    return _Cached(fn)
