# cython: language_level=3, boundscheck=False, wraparound=False
"""A binary call decoded in C, in one pass over its bytes: the compiled half of codec.py's fast decode.

cybin through a transport costs a void sendMessage about 1.7 us of Python around 0.8 us of C; this is
0.5 us in all. It takes only what it fully understands, and says None for everything else, leaving it to
the pure-Python path (codec.py), which is the reference and works without this module:
- every length and count is checked against the bytes there are before anything is read or allocated;
- a field the method's struct does not have, a value whose type is not the field's, a list, set or map,
  a string that is not UTF-8, or structs nested past MAX_DEPTH: None;
- nothing is read past the end of `data`; a call that ends before its STOP is None (not all here yet).
Its results are checked against thriftpy2's own decoding in tests/test_binary_call.py.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memcpy

cdef enum:
    MAX_DEPTH = 8
    T_STOP = 0
    T_BOOL = 2
    T_BYTE = 3
    T_DOUBLE = 4
    T_I16 = 6
    T_I32 = 8
    T_I64 = 10
    T_STRING = 11
    T_STRUCT = 12


cdef inline unsigned int _u32(const unsigned char* p) noexcept nogil:
    return (<unsigned int>p[0] << 24) | (<unsigned int>p[1] << 16) | (<unsigned int>p[2] << 8) | p[3]


cdef inline unsigned long long _u64(const unsigned char* p) noexcept nogil:
    return (<unsigned long long>_u32(p) << 32) | _u32(p + 4)


cdef inline object _text(const unsigned char* p, Py_ssize_t size):
    """The UTF-8 text at p, or None when it is not UTF-8."""
    try:
        return PyUnicode_DecodeUTF8(<const char*>p, size, NULL)
    except UnicodeDecodeError:
        return None


def decode_call(bytes data, dict args):
    """(method, seqid, its `_args` struct, bytes used) for the binary call `data` begins with, strict or
    not; None when the pure-Python path must read it (see the module's docstring)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos, name_at, name_size
    cdef unsigned int head
    if n < 4:
        return None
    head = _u32(p)
    if head & 0x80000000:  # strict: version and type, name length, name, seqid
        if head & 0xFFFF0000 != 0x80010000 or n < 8:
            return None
        name_at, name_size = 8, <Py_ssize_t>_u32(p + 4)  # a negative length reads as over 2 GiB
        pos = name_at + name_size
    else:  # non-strict: name length, name, type, seqid
        name_at, name_size = 4, <Py_ssize_t>head
        pos = name_at + name_size + 1
    if name_size > n or pos + 4 > n:
        return None
    api = _text(p + name_at, name_size)
    if api is None:
        return None
    seqid = <int>_u32(p + pos)
    pos += 4
    args_type = args.get(api)
    if args_type is None:
        return None
    value = args_type()
    pos = _struct(p, n, pos, value, 1)
    if pos < 0:
        return None
    return api, seqid, value, pos


cdef Py_ssize_t _struct(const unsigned char* p, Py_ssize_t n, Py_ssize_t pos, object value, int depth) except -2:
    """Fill `value` from the struct at p[pos:]; where it ends, or -1 (see the module's docstring)."""
    cdef dict spec = value.thrift_spec
    cdef int kind
    cdef Py_ssize_t size
    cdef tuple field
    cdef double real
    cdef unsigned long long bits
    while True:
        if pos >= n:
            return -1
        kind = p[pos]
        if kind == T_STOP:
            return pos + 1
        if pos + 3 > n:
            return -1
        found = spec.get(<short>((p[pos + 1] << 8) | p[pos + 2]))
        pos += 3
        if found is None:
            return -1
        field = <tuple>found
        if field[0] != kind:
            return -1
        if kind == T_STRING:
            if len(field) != 3 or pos + 4 > n:  # (type, name, required): text, not binary
                return -1
            size = <Py_ssize_t>_u32(p + pos)
            pos += 4
            if size > n - pos:  # also a negative one, read as unsigned
                return -1
            item = _text(p + pos, size)
            if item is None:
                return -1
            pos += size
        elif kind == T_I32:
            if pos + 4 > n:
                return -1
            item = <int>_u32(p + pos)
            pos += 4
        elif kind == T_I64:
            if pos + 8 > n:
                return -1
            item = <long long>_u64(p + pos)
            pos += 8
        elif kind == T_STRUCT:
            if depth >= MAX_DEPTH:
                return -1
            item = field[2]()
            pos = _struct(p, n, pos, item, depth + 1)
            if pos < 0:
                return -1
        elif kind == T_BOOL or kind == T_BYTE:
            if pos + 1 > n:
                return -1
            item = p[pos] != 0 if kind == T_BOOL else <signed char>p[pos]
            pos += 1
        elif kind == T_I16:
            if pos + 2 > n:
                return -1
            item = <short>((p[pos] << 8) | p[pos + 1])
            pos += 2
        elif kind == T_DOUBLE:
            if pos + 8 > n:
                return -1
            bits = _u64(p + pos)
            memcpy(&real, &bits, 8)
            item = real
            pos += 8
        else:
            return -1
        setattr(value, field[1], item)
