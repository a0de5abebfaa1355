/* _linkwire: optional C accelerator of the link codec (CPython only).
 *
 * It does what link_wire._encode_py and link_wire._decode_py do for the
 * schema table link_wire.SCHEMAS, which init() hands over. Those Python
 * functions stay the reference (and the only path on MicroPython).
 *
 * The contract is narrow on purpose: encode() and decode() return None for
 * anything they do not handle exactly as the reference would succeed on it
 * (a malformed or truncated message, a value out of range or of an unusual
 * type, an unknown message name). link_wire then runs the reference on the
 * same input, which raises its own error with its own message. So this code
 * never has to reproduce an error, only the successful results, and
 * tests/test_linkwire_c.py checks that whenever it returns something, that
 * is exactly what the reference returns.
 *
 * Why C: on a device wake the gateway (and every simulated device in the
 * benchmarks) spent more of its per-frame CPU in this codec than in the
 * frame HMACs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum kind { K_UINT, K_INT64, K_BOOL, K_BYTES, K_STRING, K_MSG };

typedef struct {
    uint64_t number;
    PyObject *name;     /* field name (str), a strong reference */
    PyObject *dflt;     /* the proto3 default compared against on encode (None for messages) */
    enum kind kind;
    int repeated;
    int u64;            /* a uint64 field (else uint32: range checked, truncated on decode) */
    int sub;            /* K_MSG: index of the nested message */
} field_t;

typedef struct {
    Py_ssize_t nfields;
    field_t *fields;    /* in field-number order, as SCHEMAS */
} msg_t;

static msg_t *Msgs;
static PyObject *Index; /* message name -> index (int) */

/* ---- a growable output buffer ------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t len, cap;
} buf_t;

static int
reserve(buf_t *b, size_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 128;
    while (cap < b->len + more)
        cap *= 2;
    uint8_t *p = PyMem_Realloc(b->p, cap);
    if (p == NULL)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int
put_varint(buf_t *b, uint64_t v)
{
    if (reserve(b, 10) < 0)
        return -1;
    while (v > 0x7F) {
        b->p[b->len++] = (uint8_t)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    b->p[b->len++] = (uint8_t)v;
    return 0;
}

static int
put_span(buf_t *b, uint64_t key, const void *data, size_t n)
{
    if (put_varint(b, key) < 0 || put_varint(b, n) < 0 || reserve(b, n) < 0)
        return -1;
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

/* ---- encode --------------------------------------------------------------
 * Each helper returns 0 (written), -1 (a Python error: memory) or 1 (not
 * handled here: the caller answers None and the reference runs). */

static int encode_msg(const msg_t *m, PyObject *msg, buf_t *out);

/* Whether v is of an exact built-in type this field takes. Only such values
 * are compared or tested for truth here, so no Python code of the caller's
 * objects (__ne__, __bool__, an int subclass's operators) runs inside this
 * module; anything else goes back to the reference. */
static int
plain(const field_t *f, PyObject *v)
{
    switch (f->kind) {
    case K_BYTES:
        return PyBytes_CheckExact(v) || PyByteArray_CheckExact(v);
    case K_STRING:
        return PyUnicode_CheckExact(v);
    case K_UINT:
    case K_INT64:
    case K_BOOL:
        return PyLong_CheckExact(v) || PyBool_Check(v);
    case K_MSG:
        return PyDict_CheckExact(v);
    }
    return 0;
}

static int
put_value(const field_t *f, PyObject *v, buf_t *out)
{
    uint64_t key = f->number << 3;
    if (!plain(f, v))
        return 1;
    switch (f->kind) {
    case K_BYTES:
        if (PyBytes_CheckExact(v))
            return put_span(out, key | 2, PyBytes_AS_STRING(v), (size_t)PyBytes_GET_SIZE(v));
        return put_span(out, key | 2, PyByteArray_AS_STRING(v), (size_t)PyByteArray_GET_SIZE(v));
    case K_STRING: {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (s == NULL) {  /* e.g. a lone surrogate: the reference raises */
            if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
                return -1;
            PyErr_Clear();
            return 1;
        }
        return put_span(out, key | 2, s, (size_t)n);
    }
    case K_BOOL: {
        int t = PyObject_IsTrue(v);  /* an exact int or bool: no Python code runs */
        if (t < 0)
            return -1;
        return put_varint(out, key) < 0 || put_varint(out, (uint64_t)t) < 0 ? -1 : 0;
    }
    case K_INT64: {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred())
            return -1;
        if (overflow)
            return 1;
        return put_varint(out, key) < 0 || put_varint(out, (uint64_t)x) < 0 ? -1 : 0;
    }
    case K_UINT: {
        unsigned long long x = PyLong_AsUnsignedLongLong(v);
        if (x == (unsigned long long)-1 && PyErr_Occurred()) {  /* negative, or >= 2**64 */
            if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                return -1;
            PyErr_Clear();
            return 1;
        }
        if (!f->u64 && x > 0xFFFFFFFFULL)
            return 1;
        return put_varint(out, key) < 0 || put_varint(out, x) < 0 ? -1 : 0;
    }
    case K_MSG: {
        buf_t body = {NULL, 0, 0};
        int r = encode_msg(&Msgs[f->sub], v, &body);
        if (r == 0)
            r = put_span(out, key | 2, body.p, body.len);
        PyMem_Free(body.p);
        return r;
    }
    }
    return 1;
}

static int
encode_field(const field_t *f, PyObject *v, buf_t *out)
{
    if (f->repeated) {
        if (v == Py_None)
            return 0;
        if (!PyList_CheckExact(v) && !PyTuple_CheckExact(v))
            return 1;  /* another iterable: the reference iterates it */
        /* re-read the size each pass: a nested dict lookup may run a key's __eq__ */
        for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(v); j++) {
            PyObject *item = PySequence_Fast_GET_ITEM(v, j);
            Py_INCREF(item);
            int r = put_value(f, item, out);
            Py_DECREF(item);
            if (r)
                return r;
        }
        return 0;
    }
    if (v == Py_None)
        return 0;
    if (!plain(f, v))
        return 1;
    int ne = PyObject_RichCompareBool(v, f->dflt, Py_NE);  /* built-in types only */
    if (ne <= 0)
        return ne;
    return put_value(f, v, out);
}

static int
encode_msg(const msg_t *m, PyObject *msg, buf_t *out)
{
    for (Py_ssize_t i = 0; i < m->nfields; i++) {
        const field_t *f = &m->fields[i];
        PyObject *v = PyDict_GetItemWithError(msg, f->name);  /* msg.get(field) */
        if (v == NULL) {
            if (PyErr_Occurred())
                return -1;
            continue;
        }
        Py_INCREF(v);  /* held: nothing the lookups below run may free it */
        int r = encode_field(f, v, out);
        Py_DECREF(v);
        if (r)
            return r;
    }
    return 0;
}

/* ---- decode --------------------------------------------------------------
 * Helpers return 0, -1 (a Python error: memory) or 1 (malformed, or not
 * handled: the caller answers None and the reference raises). */

static int
get_varint(const uint8_t *p, Py_ssize_t *pos, Py_ssize_t end, uint64_t *out)
{
    /* link_wire.get_uvarint: up to 10 bytes (non-minimal allowed), < 2**64 */
    uint64_t result = 0;
    Py_ssize_t i = *pos;
    for (int shift = 0;; shift += 7) {
        if (i >= end)
            return 1;
        uint8_t b = p[i++];
        if (shift == 63) {  /* the tenth byte: one bit left */
            if (b > 1)
                return 1;
            result |= (uint64_t)b << 63;
            break;
        }
        result |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80)
            break;
    }
    *pos = i;
    *out = result;
    return 0;
}

static const field_t *
lookup(const msg_t *m, uint64_t number)
{
    for (Py_ssize_t i = 0; i < m->nfields; i++)
        if (m->fields[i].number == number)
            return &m->fields[i];
    return NULL;
}

static PyObject *
new_default(const field_t *f)
{
    if (f->repeated)
        return PyList_New(0);
    if (f->kind == K_MSG)
        Py_RETURN_NONE;
    Py_INCREF(f->dflt);
    return f->dflt;
}

static int
decode_msg(const msg_t *m, const uint8_t *p, Py_ssize_t start, Py_ssize_t end, PyObject **result)
{
    PyObject *d = PyDict_New();
    if (d == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < m->nfields; i++) {
        PyObject *v = new_default(&m->fields[i]);
        if (v == NULL || PyDict_SetItem(d, m->fields[i].name, v) < 0) {
            Py_XDECREF(v);
            goto error;
        }
        Py_DECREF(v);
    }
    Py_ssize_t pos = start;
    int r;
    while (pos < end) {
        uint64_t key, n;
        if ((r = get_varint(p, &pos, end, &key)))
            goto fail;
        uint64_t number = key >> 3;
        unsigned wire = (unsigned)(key & 7);
        const field_t *f = number ? lookup(m, number) : NULL;
        if (f == NULL) {  /* field 0 is an error; unknown fields are skipped */
            if (number == 0)
                goto malformed;
            if (wire == 0) {
                if ((r = get_varint(p, &pos, end, &n)))
                    goto fail;
            } else if (wire == 2) {
                if ((r = get_varint(p, &pos, end, &n)))
                    goto fail;
                if (n > (uint64_t)(end - pos))
                    goto malformed;
                pos += (Py_ssize_t)n;
            } else if (wire == 1 || wire == 5) {
                Py_ssize_t w = wire == 1 ? 8 : 4;
                if (end - pos < w)
                    goto malformed;
                pos += w;
            } else {
                goto malformed;
            }
            continue;
        }
        PyObject *v;
        if (f->kind == K_UINT || f->kind == K_BOOL || f->kind == K_INT64) {
            if (wire != 0 || (r = get_varint(p, &pos, end, &n)))
                goto malformed;
            if (f->kind == K_BOOL) {
                v = PyBool_FromLong(n != 0);
            } else if (f->kind == K_INT64) {
                v = PyLong_FromLongLong((long long)n);
            } else {
                v = PyLong_FromUnsignedLongLong(f->u64 ? n : (n & 0xFFFFFFFFULL));
            }
        } else {
            if (wire != 2 || (r = get_varint(p, &pos, end, &n)))
                goto malformed;
            if (n > (uint64_t)(end - pos))
                goto malformed;
            Py_ssize_t stop = pos + (Py_ssize_t)n;
            if (f->kind == K_BYTES) {
                v = PyBytes_FromStringAndSize((const char *)p + pos, stop - pos);
            } else if (f->kind == K_STRING) {
                v = PyUnicode_DecodeUTF8((const char *)p + pos, stop - pos, "strict");
                if (v == NULL) {
                    if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                        goto error;
                    PyErr_Clear();
                    goto malformed;
                }
            } else {
                if ((r = decode_msg(&Msgs[f->sub], p, pos, stop, &v)))
                    goto fail;
            }
            pos = stop;
        }
        if (v == NULL)
            goto error;
        if (f->repeated) {
            PyObject *list = PyDict_GetItemWithError(d, f->name);  /* borrowed */
            r = list == NULL ? -1 : PyList_Append(list, v);
        } else {
            r = PyDict_SetItem(d, f->name, v);
        }
        Py_DECREF(v);
        if (r < 0)
            goto error;
    }
    *result = d;
    return 0;
malformed:
    Py_DECREF(d);
    return 1;
fail:
    Py_DECREF(d);
    return r;
error:
    Py_DECREF(d);
    return -1;
}

/* ---- the module ------------------------------------------------------------ */

static const msg_t *
msg_named(PyObject *name)
{
    if (Index == NULL || !PyUnicode_CheckExact(name))
        return NULL;
    PyObject *i = PyDict_GetItemWithError(Index, name);
    if (i == NULL) {
        PyErr_Clear();
        return NULL;
    }
    return &Msgs[PyLong_AsSsize_t(i)];
}

PyDoc_STRVAR(encode_doc,
"encode(name, msg) -> bytes or None\n\n"
"link_wire._encode_py(name, msg) when that succeeds on plain values (dicts,\n"
"lists, ints, bytes, str); None for anything else (the reference then runs).");

static PyObject *
linkwire_encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "encode(name, msg)");
        return NULL;
    }
    const msg_t *m = msg_named(args[0]);
    if (m == NULL || !PyDict_CheckExact(args[1]))
        Py_RETURN_NONE;
    buf_t out = {NULL, 0, 0};
    int r = encode_msg(m, args[1], &out);
    PyObject *res;
    if (r < 0)
        res = NULL;
    else if (r > 0)
        res = Py_NewRef(Py_None);
    else
        res = PyBytes_FromStringAndSize((const char *)out.p, (Py_ssize_t)out.len);
    PyMem_Free(out.p);
    return res;
}

PyDoc_STRVAR(decode_doc,
"decode(name, data, start, end) -> dict or None\n\n"
"link_wire._decode_py(name, data, start, end) for a well-formed message in a\n"
"bytes-like data; None for anything else (the reference then raises).");

static PyObject *
linkwire_decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "decode(name, data, start, end)");
        return NULL;
    }
    const msg_t *m = msg_named(args[0]);
    if (m == NULL || !PyLong_CheckExact(args[2]) || !(args[3] == Py_None || PyLong_CheckExact(args[3])))
        Py_RETURN_NONE;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_BufferError))
            return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    /* unsigned bytes only: the reference indexes items, which for another
     * format ('H', 'b', 'c') are not these bytes */
    if (view.ndim != 1 || view.itemsize != 1 || (view.format != NULL && strcmp(view.format, "B"))) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[2]);
    Py_ssize_t end = args[3] == Py_None ? view.len : PyLong_AsSsize_t(args[3]);
    PyObject *res = NULL;
    if (PyErr_Occurred()) {  /* start or end beyond Py_ssize_t */
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyBuffer_Release(&view);
            return NULL;
        }
        PyErr_Clear();
        res = Py_NewRef(Py_None);
    } else if (start < 0 || end < start || end > view.len) {
        res = Py_NewRef(Py_None);  /* the reference decides what that means */
    } else {
        int r = decode_msg(m, (const uint8_t *)view.buf, start, end, &res);
        if (r > 0)
            res = Py_NewRef(Py_None);
        else if (r < 0)
            res = NULL;
    }
    PyBuffer_Release(&view);
    return res;
}

static enum kind
kind_of(PyObject *k, PyObject *names, int *sub)
{
    const char *s = PyUnicode_AsUTF8(k);
    if (s == NULL)
        return K_MSG;
    if (!strcmp(s, "u")) return K_UINT;
    if (!strcmp(s, "i")) return K_INT64;
    if (!strcmp(s, "?")) return K_BOOL;
    if (!strcmp(s, "b")) return K_BYTES;
    if (!strcmp(s, "s")) return K_STRING;
    PyObject *i = PyDict_GetItemWithError(names, k);
    *sub = i ? (int)PyLong_AsLong(i) : -1;
    return K_MSG;
}

/* Free a table build() left unfinished: a field holds its references only
 * once it is complete (the arrays are zeroed, so the others are NULL). */
static void
free_msgs(msg_t *msgs, Py_ssize_t n)
{
    if (msgs == NULL)
        return;
    for (Py_ssize_t mi = 0; mi < n; mi++) {
        for (Py_ssize_t fi = 0; msgs[mi].fields != NULL && fi < msgs[mi].nfields; fi++) {
            Py_XDECREF(msgs[mi].fields[fi].name);
            Py_XDECREF(msgs[mi].fields[fi].dflt);
        }
        PyMem_Free(msgs[mi].fields);
    }
    PyMem_Free(msgs);
}

/* One field spec (number, name, kind, repeated) of message `msg` into f. */
static int
build_field(PyObject *msg, PyObject *spec, PyObject *names, PyObject *u64, PyObject *defaults,
            field_t *f)
{
    PyObject *name, *k;
    long long number;
    int repeated, sub = -1;
    if (!PyTuple_Check(spec)) {
        PyErr_SetString(PyExc_TypeError, "a field is (number, name, kind, repeated)");
        return -1;
    }
    if (!PyArg_ParseTuple(spec, "LOOp", &number, &name, &k, &repeated))
        return -1;
    enum kind kind = kind_of(k, names, &sub);
    if (kind == K_MSG && sub < 0) {
        PyErr_Format(PyExc_ValueError, "unknown message kind %R", k);
        return -1;
    }
    PyObject *key = PyTuple_Pack(2, msg, name);
    if (key == NULL)
        return -1;
    int is_u64 = PySequence_Contains(u64, key);
    Py_DECREF(key);
    if (is_u64 < 0)
        return -1;
    PyObject *dflt = kind == K_MSG ? Py_None : PyDict_GetItemWithError(defaults, k);
    if (dflt == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "no default for kind %R", k);
        return -1;
    }
    /* complete: only now does the field hold references (see free_msgs) */
    f->number = (uint64_t)number;
    f->kind = kind;
    f->repeated = repeated;
    f->u64 = is_u64;
    f->sub = sub;
    f->name = Py_NewRef(name);
    f->dflt = Py_NewRef(dflt);
    return 0;
}

/* Compile the schema table into Msgs and Index, or leave both as they were
 * (and nothing allocated) when any part of it is refused. */
static int
build(PyObject *schemas, PyObject *u64, PyObject *defaults)
{
    PyObject *names = PyDict_New(), *name, *fields;
    msg_t *msgs = NULL;
    Py_ssize_t pos = 0, n = 0;
    if (names == NULL)
        return -1;
    while (PyDict_Next(schemas, &pos, &name, &fields)) {
        PyObject *i = PyLong_FromSsize_t(n++);
        if (i == NULL || PyDict_SetItem(names, name, i) < 0) {
            Py_XDECREF(i);
            goto error;
        }
        Py_DECREF(i);
    }
    msgs = PyMem_Calloc((size_t)(n ? n : 1), sizeof(msg_t));
    if (msgs == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    pos = 0;
    for (Py_ssize_t mi = 0; mi < n && PyDict_Next(schemas, &pos, &name, &fields); mi++) {
        if (!PyTuple_Check(fields)) {
            PyErr_SetString(PyExc_TypeError, "a schema is a tuple of fields");
            goto error;
        }
        Py_ssize_t nf = PyTuple_GET_SIZE(fields);
        msgs[mi].fields = PyMem_Calloc((size_t)(nf ? nf : 1), sizeof(field_t));
        if (msgs[mi].fields == NULL) {
            PyErr_NoMemory();
            goto error;
        }
        msgs[mi].nfields = nf;
        for (Py_ssize_t fi = 0; fi < nf; fi++)
            if (build_field(name, PyTuple_GET_ITEM(fields, fi), names, u64, defaults,
                            &msgs[mi].fields[fi]) < 0)
                goto error;
    }
    Msgs = msgs;
    Index = names;
    return 0;
error:
    free_msgs(msgs, n);
    Py_DECREF(names);
    return -1;
}

PyDoc_STRVAR(init_doc,
"init(SCHEMAS, UINT64_FIELDS, DEFAULTS)\n\n"
"Compile link_wire's schema table; once, at link_wire's import.");

static PyObject *
linkwire_init(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyDict_Check(args[0]) || !PyDict_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "init(SCHEMAS, UINT64_FIELDS, DEFAULTS)");
        return NULL;
    }
    if (Index != NULL)  /* already compiled (a reload): the table is the same */
        Py_RETURN_NONE;
    if (build(args[0], args[1], args[2]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef linkwire_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))linkwire_encode, METH_FASTCALL, encode_doc},
    {"decode", (PyCFunction)(void (*)(void))linkwire_decode, METH_FASTCALL, decode_doc},
    {"init", (PyCFunction)(void (*)(void))linkwire_init, METH_FASTCALL, init_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef linkwire_module = {
    PyModuleDef_HEAD_INIT,
    "_linkwire",
    "C accelerator of the link codec (link_wire); the Python code is the reference.",
    -1,
    linkwire_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__linkwire(void)
{
    return PyModule_Create(&linkwire_module);
}
