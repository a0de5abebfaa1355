/* _capscan: optional C accelerator of the CAPLets frame scan (CPython only).
 *
 * It does what cap_codec._split and cap_codec.scan_frame do (with the entry
 * scanners of cap_caps and cap_cons and the readers of cap_wire) for
 * well-formed input. Those Python functions stay the reference, and the only
 * path on MicroPython.
 *
 * The contract is _linkwire's: split() and scan_frame() return None for
 * anything that is not well-formed, or not of the exact built-in types they
 * take, and cap_codec then runs the reference on the same input, which raises
 * MalformedToken with its own message. So this code never reproduces an
 * error, only successful results, and tests/test_capscan_c.py checks that it
 * answers None exactly where the reference raises and an equal record (same
 * tuple shapes and types) everywhere else.
 *
 * The format is not written here: init() takes it from cap_fast.c_format()
 * (the version, the limits, the constraint bit, the leaf codes, the payload
 * layout of every entry code as a short tuple of field kinds, the wildcard
 * method, cap_h3.is_valid_cell, the constant root frame and its record, and
 * the frame-record cache with its size). What is here is how each field kind
 * is read, and the frame structure of cap_codec's docstring. init() builds
 * the new tables aside and swaps them in only when all of it was accepted.
 *
 * Safety: the buffers read are exact bytes, every read is bounded by the
 * span it belongs to, and the only Python code run in here is the
 * reference's is_valid_cell (never anything of the caller's: hints and
 * arguments are used only when they are of exact built-in types).
 *
 * Why C: a cold token verification was dominated by this per-entry scan, not
 * by its HMACs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* The field kinds an entry layout is made of (cap_fast.c_format explains
 * them; each gives one value of the entry's value tuple, the window two). */
enum kind {
    K_UINT = 'u',     /* varint -> int */
    K_STR = 's',      /* length-prefixed UTF-8 -> str */
    K_TEXT = 't',     /* the same, non-empty */
    K_NAME = 'n',     /* the same, non-empty and not the wildcard */
    K_METHODS = 'm',  /* a method set -> tuple of str */
    K_CELL = 'h',     /* a varint is_valid_cell accepts -> int */
    K_WINDOW = 'w',   /* two varints, low < high -> int, int */
    K_FIXED = 'd',    /* exactly a bytes -> bytes */
    K_REST = 'r',     /* the rest of the payload, a..b bytes -> bytes */
};

#define MAX_FIELDS 6

typedef struct {
    int kind;
    Py_ssize_t a, b;
} field_t;

typedef struct {
    int known;     /* 0: an unknown capability code (not well-formed) */
    int nfields;
    int nvalues;   /* the value tuple holds code, raw and these */
    field_t fields[MAX_FIELDS];
} layout_t;

typedef struct {
    layout_t layouts[256];      /* by entry code */
    unsigned char leaf[256];    /* a leaf capability: stands alone, ends the chain */
    int constraint_bit, version;
    Py_ssize_t max_frames, max_frame_size, max_entries, cache_size;
    PyObject *wildcard;         /* the wildcard method, UTF-8 (bytes) */
    PyObject *is_valid_cell;    /* cap_h3.is_valid_cell */
    PyObject *root_frame;       /* bytes */
    PyObject *root_rec;         /* its record */
    PyObject *cache;            /* dict: frame bytes -> record */
} format_t;

static format_t Fmt;  /* all zero (root_frame NULL) until init() */
static int Busy;      /* scans running: init() must not swap the tables under them */

/* A span of a frame's bytes: a field not yet turned into a Python object. */
typedef struct {
    const uint8_t *ptr;
    Py_ssize_t len;
} span;

/* Every reader below returns 0 (done), -1 (a Python error, e.g. memory) or
 * 1 (not well-formed: the caller answers None and the reference raises). */

/* ---- fields ---------------------------------------------------------------- */

/* cap_wire.get_varint's rule: a minimal LEB128 of at most 64 bits. */
static int
get_varint(const uint8_t *buf, Py_ssize_t *pos, Py_ssize_t end, uint64_t *out)
{
    uint64_t result = 0;
    Py_ssize_t p = *pos;
    for (int shift = 0; p < end; shift += 7) {
        uint8_t b = buf[p++];
        if (shift == 63 && b > 1)  /* the tenth byte has one bit left */
            return 1;
        result |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            if (b == 0 && shift)  /* a zero last byte: not minimal */
                return 1;
            *out = result;
            *pos = p;
            return 0;
        }
    }
    return 1;
}

/* A length-prefixed field inside buf[*pos:end]. */
static int
get_span(const uint8_t *buf, Py_ssize_t *pos, Py_ssize_t end, span *out)
{
    uint64_t n;
    if (get_varint(buf, pos, end, &n) || n > (uint64_t)(end - *pos))
        return 1;
    out->ptr = buf + *pos;
    out->len = (Py_ssize_t)n;
    *pos += (Py_ssize_t)n;
    return 0;
}

/* A str of UTF-8 bytes, by CPython's decoder: "valid" is what bytes.decode says. */
static int
utf8_str(span s, PyObject **out)
{
    *out = PyUnicode_DecodeUTF8((const char *)s.ptr, s.len, NULL);
    if (*out != NULL)
        return 0;
    if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        return -1;
    PyErr_Clear();
    return 1;
}

/* Python's str order on valid UTF-8: byte order is code point order, and a
 * proper prefix sorts first. */
static int
span_cmp(span a, span b)
{
    Py_ssize_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.ptr, b.ptr, (size_t)n) : 0;
    return c ? c : (a.len > b.len) - (a.len < b.len);
}

static int
is_wildcard(span s)
{
    return s.len == PyBytes_GET_SIZE(Fmt.wildcard)
           && memcmp(s.ptr, PyBytes_AS_STRING(Fmt.wildcard), (size_t)s.len) == 0;
}

/* A method set: a count, then that many non-empty strings in strictly
 * increasing order, the wildcard only standing alone. */
static int
get_methods(const uint8_t *buf, Py_ssize_t *pos, Py_ssize_t end, PyObject **out)
{
    uint64_t n;
    if (get_varint(buf, pos, end, &n) || n == 0 || n > (uint64_t)(end - *pos))
        return 1;  /* (each method takes a byte at least: the bound keeps the tuple small) */
    PyObject *methods = PyTuple_New((Py_ssize_t)n);
    if (methods == NULL)
        return -1;
    span prev = {NULL, 0};
    for (Py_ssize_t i = 0; i < (Py_ssize_t)n; i++) {
        span m;
        PyObject *text;
        int r = 1;
        if (get_span(buf, pos, end, &m) == 0 && m.len > 0
                && (i == 0 || span_cmp(m, prev) > 0) && !(n > 1 && is_wildcard(m)))
            r = utf8_str(m, &text);
        if (r) {
            Py_DECREF(methods);
            return r;
        }
        PyTuple_SET_ITEM(methods, i, text);
        prev = m;
    }
    *out = methods;
    return 0;
}

/* An H3 cell: valid by the reference's own definition (cap_h3). */
static int
get_cell(const uint8_t *buf, Py_ssize_t *pos, Py_ssize_t end, PyObject **out)
{
    uint64_t v;
    if (get_varint(buf, pos, end, &v))
        return 1;
    PyObject *cell = PyLong_FromUnsignedLongLong(v);
    if (cell == NULL)
        return -1;
    PyObject *ok = PyObject_CallOneArg(Fmt.is_valid_cell, cell);
    if (ok == NULL || ok != Py_True) {  /* False (or anything odd): the reference decides */
        int r = ok == NULL ? -1 : 1;
        Py_XDECREF(ok);
        Py_DECREF(cell);
        return r;
    }
    Py_DECREF(ok);
    *out = cell;
    return 0;
}

/* Store a new value (or fail on NULL) in the next slot of an entry's tuple. */
static int
put(PyObject *t, Py_ssize_t *slot, PyObject *v)
{
    if (v == NULL)
        return -1;
    PyTuple_SET_ITEM(t, (*slot)++, v);
    return 0;
}

static PyObject *
span_bytes(const uint8_t *ptr, Py_ssize_t len)
{
    return PyBytes_FromStringAndSize((const char *)ptr, len);
}

/* One field of an entry's payload buf[*p:stop] into the tuple's next slots. */
static int
get_field(const field_t *f, const uint8_t *buf, Py_ssize_t *p, Py_ssize_t stop,
          PyObject *t, Py_ssize_t *slot)
{
    uint64_t low, high;
    span s;
    PyObject *v;
    int r;
    switch (f->kind) {
    case K_UINT:
        if (get_varint(buf, p, stop, &low))
            return 1;
        return put(t, slot, PyLong_FromUnsignedLongLong(low));
    case K_WINDOW:
        if (get_varint(buf, p, stop, &low) || get_varint(buf, p, stop, &high) || high <= low)
            return 1;
        if (put(t, slot, PyLong_FromUnsignedLongLong(low)) < 0)
            return -1;
        return put(t, slot, PyLong_FromUnsignedLongLong(high));
    case K_STR:
    case K_TEXT:
    case K_NAME:
        if (get_span(buf, p, stop, &s) || (f->kind != K_STR && s.len == 0)
                || (f->kind == K_NAME && is_wildcard(s)))
            return 1;
        if ((r = utf8_str(s, &v)))
            return r;
        return put(t, slot, v);
    case K_METHODS:
        if ((r = get_methods(buf, p, stop, &v)))
            return r;
        return put(t, slot, v);
    case K_CELL:
        if ((r = get_cell(buf, p, stop, &v)))
            return r;
        return put(t, slot, v);
    case K_FIXED:
        if (stop - *p < f->a)
            return 1;
        v = span_bytes(buf + *p, f->a);
        *p += f->a;
        return put(t, slot, v);
    case K_REST:
        if (stop - *p < f->a || stop - *p > f->b)
            return 1;
        v = span_bytes(buf + *p, stop - *p);
        *p = stop;
        return put(t, slot, v);
    }
    return 1;
}

/* ---- entries and frames ---------------------------------------------------- */

/* The value tuple (code, raw, values...) of the entry at buf[pos:stop] whose
 * payload starts at p, by its code's layout; the payload must be used up. */
static int
scan_entry(const uint8_t *buf, Py_ssize_t pos, Py_ssize_t p, Py_ssize_t stop, PyObject **out)
{
    const layout_t *l = &Fmt.layouts[buf[pos]];
    if (!l->known)
        return 1;
    PyObject *t = PyTuple_New(2 + l->nvalues);
    if (t == NULL)
        return -1;
    Py_ssize_t slot = 0;
    int r = -1;
    if (put(t, &slot, PyLong_FromLong(buf[pos])) < 0
            || put(t, &slot, span_bytes(buf + pos, stop - pos)) < 0)
        goto fail;
    for (int i = 0; i < l->nfields; i++)
        if ((r = get_field(&l->fields[i], buf, &p, stop, t, &slot)))
            goto fail;
    if (p != stop) {
        r = 1;
        goto fail;
    }
    *out = t;
    return 0;
fail:
    Py_DECREF(t);  /* (a tuple dealloc skips the slots not yet set) */
    return r;
}

/* What a previous frame's record offers for reuse; empty when there is no
 * usable hint (the hint only saves work, it never changes the result). Only
 * exact built-in containers are looked into. */
typedef struct {
    PyObject *caps;  /* list or tuple of value tuples, or NULL */
    PyObject *cons;  /* list or tuple of value tuples, or NULL */
    PyObject *run;   /* non-empty bytes, or NULL */
} hint_t;

static int
exact_seq(PyObject *o)
{
    return PyList_CheckExact(o) || PyTuple_CheckExact(o);
}

static hint_t
read_hint(PyObject *hint)
{
    hint_t h = {NULL, NULL, NULL};
    if (hint == NULL || !PyTuple_CheckExact(hint) || PyTuple_GET_SIZE(hint) != 4)
        return h;
    PyObject *caps = PyTuple_GET_ITEM(hint, 0), *cons = PyTuple_GET_ITEM(hint, 1);
    PyObject *run = PyTuple_GET_ITEM(hint, 2);
    if (exact_seq(caps))
        h.caps = caps;
    if (exact_seq(cons) && PyBytes_CheckExact(run) && PyBytes_GET_SIZE(run) > 0) {
        h.cons = cons;
        h.run = run;
    }
    return h;
}

/* The hint's value tuple for a capability of exactly these entry bytes
 * (borrowed), or NULL: the hint validated those very bytes, and an entry
 * parses the same wherever it starts. */
static PyObject *
hint_cap(PyObject *caps, const uint8_t *entry, Py_ssize_t len)
{
    if (caps == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(caps);
    PyObject **items = PySequence_Fast_ITEMS(caps);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = items[i];
        if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) < 2)
            continue;
        PyObject *b = PyTuple_GET_ITEM(t, 1);
        if (PyBytes_CheckExact(b) && PyBytes_GET_SIZE(b) == len
                && memcmp(PyBytes_AS_STRING(b), entry, (size_t)len) == 0)
            return t;
    }
    return NULL;
}

/* Append a new reference (or fail on NULL) to a list. */
static int
append_new(PyObject *list, PyObject *v)
{
    if (v == NULL)
        return -1;
    int rc = PyList_Append(list, v);
    Py_DECREF(v);
    return rc;
}

/* cap_codec.scan_frame: the record (caps, cons, run, leaf) of a frame's
 * bytes; `hint` is the previous frame's record or NULL. */
static int
scan_frame(PyObject *frame, PyObject *hint, PyObject **out)
{
    Py_ssize_t end = PyBytes_GET_SIZE(frame);
    const uint8_t *buf = (const uint8_t *)PyBytes_AS_STRING(frame);
    if (end == PyBytes_GET_SIZE(Fmt.root_frame)
            && memcmp(buf, PyBytes_AS_STRING(Fmt.root_frame), (size_t)end) == 0) {
        *out = Py_NewRef(Fmt.root_rec);  /* the first frame of most tokens */
        return 0;
    }
    if (end == 0 || end > Fmt.max_frame_size)
        return 1;
    hint_t h = read_hint(hint);
    PyObject *caps = PyList_New(0), *cons = PyList_New(0), *run = NULL, *v;
    Py_ssize_t pos = 0, cstart = -1;
    int first = -1, leaves = 0, mixed = 0, r = -1;
    if (caps == NULL || cons == NULL)
        goto fail;
    while (pos < end) {
        /* stop as soon as the entry limit is passed (the reference counts at the end) */
        if (PyList_GET_SIZE(caps) + PyList_GET_SIZE(cons) >= Fmt.max_entries)
            goto malformed;
        int code = buf[pos];
        Py_ssize_t p = pos + 1;
        uint64_t n;
        if (get_varint(buf, &p, end, &n) || n > (uint64_t)(end - p))
            goto malformed;
        Py_ssize_t stop = p + (Py_ssize_t)n;
        if (code < Fmt.constraint_bit) {
            mixed |= cstart >= 0;  /* a capability after a constraint: no run */
            if (first < 0)
                first = code;
            leaves += Fmt.leaf[code];
            v = hint_cap(h.caps, buf + pos, stop - pos);
            if (v != NULL)
                Py_INCREF(v);
            else if ((r = scan_entry(buf, pos, p, stop, &v)))
                goto fail;
            if (append_new(caps, v) < 0)
                goto error;
        }
        else {
            if (cstart < 0) {
                cstart = pos;
                /* the previous frame's constraint run carried over verbatim:
                 * take its (validated) values and skip its bytes */
                Py_ssize_t hlen = h.run ? PyBytes_GET_SIZE(h.run) : 0;
                if (hlen && hlen <= end - pos
                        && memcmp(buf + pos, PyBytes_AS_STRING(h.run), (size_t)hlen) == 0) {
                    if (PyList_SetSlice(cons, 0, 0, h.cons) < 0)
                        goto error;
                    pos += hlen;
                    continue;
                }
            }
            if ((r = scan_entry(buf, pos, p, stop, &v)))
                goto fail;
            if (append_new(cons, v) < 0)
                goto error;
        }
        pos = stop;
    }
    if (PyList_GET_SIZE(caps) + PyList_GET_SIZE(cons) > Fmt.max_entries
            || first < 0 || (leaves && PyList_GET_SIZE(caps) > 1))
        goto malformed;
    if (cstart < 0)
        run = PyBytes_FromStringAndSize(NULL, 0);
    else if (mixed)
        run = Py_NewRef(Py_None);
    else
        run = span_bytes(buf + cstart, end - cstart);
    if (run == NULL)
        goto error;
    *out = Py_BuildValue("(NNNO)", caps, cons, run, Fmt.leaf[first] ? Py_True : Py_False);
    return *out == NULL ? -1 : 0;
malformed:
    r = 1;
    goto fail;
error:
    r = -1;
fail:
    Py_XDECREF(caps);
    Py_XDECREF(cons);
    return r;
}

/* ---- tokens (cap_codec._split) ------------------------------------------- */

/* The record of one frame: from the cache, else scanned (and cached, with
 * the reference's crude bound: clear when full). */
static int
frame_record(PyObject *raw, PyObject *prev, PyObject *cache, Py_ssize_t cache_size,
             PyObject **out)
{
    PyObject *rec = PyDict_GetItemWithError(cache, raw);  /* exact bytes keys only */
    if (rec != NULL) {
        *out = Py_NewRef(rec);
        return 0;
    }
    if (PyErr_Occurred())
        return -1;
    int r = scan_frame(raw, prev, &rec);
    if (r)
        return r;
    if (cache_size > 0) {
        if (PyDict_GET_SIZE(cache) >= cache_size)
            PyDict_Clear(cache);
        if (PyDict_SetItem(cache, raw, rec) < 0) {
            Py_DECREF(rec);
            return -1;
        }
    }
    *out = rec;
    return 0;
}

/* Version, count and frames of buf[:end]: (slices, recs), two lists. */
static int
split_frames(const uint8_t *buf, Py_ssize_t end, PyObject **out)
{
    uint64_t count;
    Py_ssize_t pos = 1;
    if (end < 3 || buf[0] != Fmt.version || get_varint(buf, &pos, end, &count)
            || count == 0 || count > (uint64_t)Fmt.max_frames)
        return 1;
    PyObject *cache = Py_NewRef(Fmt.cache);
    PyObject *slices = PyList_New((Py_ssize_t)count), *recs = PyList_New((Py_ssize_t)count);
    PyObject *prev = NULL;  /* borrowed from recs */
    int r = -1;
    if (slices == NULL || recs == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < (Py_ssize_t)count; i++) {
        span f;
        PyObject *raw, *rec;
        if (get_span(buf, &pos, end, &f)) {
            r = 1;
            goto done;
        }
        if ((raw = span_bytes(f.ptr, f.len)) == NULL)
            goto done;
        PyList_SET_ITEM(slices, i, raw);  /* a list dealloc skips unset (NULL) slots */
        int fr = frame_record(raw, prev, cache, Fmt.cache_size, &rec);
        if (fr) {
            r = fr;
            goto done;
        }
        PyList_SET_ITEM(recs, i, rec);
        prev = rec;
    }
    if (pos != end)
        r = 1;
    else
        r = (*out = PyTuple_Pack(2, slices, recs)) == NULL ? -1 : 0;
done:
    Py_DECREF(cache);
    Py_XDECREF(slices);
    Py_XDECREF(recs);
    return r;
}

/* ---- module functions ------------------------------------------------------ */

static int
ready(void)
{
    if (Fmt.root_frame != NULL)
        return 1;
    PyErr_SetString(PyExc_RuntimeError, "_capscan.init() was not called");
    return 0;
}

/* The answer of a reader's result: the object, None (not well-formed) or NULL. */
static PyObject *
answer(int r, PyObject *result)
{
    Busy--;
    if (r > 0)
        Py_RETURN_NONE;
    return r < 0 ? NULL : result;
}

PyDoc_STRVAR(split_doc,
"split(data, end) -> (slices, recs) or None\n\n"
"cap_codec._split(data, end) for a well-formed token (frames cached in the\n"
"cache init() was given); None for anything else (the reference then raises).");

static PyObject *
capscan_split(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "split(data, end)");
        return NULL;
    }
    if (!ready())
        return NULL;
    PyObject *data = args[0];
    if (!PyBytes_CheckExact(data) || !PyLong_CheckExact(args[1]))
        Py_RETURN_NONE;
    int overflow;
    long long end = PyLong_AsLongLongAndOverflow(args[1], &overflow);
    if (overflow || end < 0 || end > PyBytes_GET_SIZE(data))
        Py_RETURN_NONE;  /* the reference decides what that means */
    PyObject *result = NULL;
    Busy++;
    int r = split_frames((const uint8_t *)PyBytes_AS_STRING(data), (Py_ssize_t)end, &result);
    return answer(r, result);
}

PyDoc_STRVAR(scan_frame_doc,
"scan_frame(raw, hint=None) -> record or None\n\n"
"cap_codec.scan_frame(raw, hint) for a well-formed frame; None for anything\n"
"else (the reference then raises).");

static PyObject *
capscan_scan_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "scan_frame(raw, hint=None)");
        return NULL;
    }
    if (!ready())
        return NULL;
    if (!PyBytes_CheckExact(args[0]))
        Py_RETURN_NONE;
    PyObject *result = NULL;
    Busy++;
    int r = scan_frame(args[0], nargs > 1 ? args[1] : NULL, &result);
    return answer(r, result);
}

/* ---- init: the format from cap_codec -------------------------------------- */

/* spec[key] (borrowed), which must be of the exact type given. */
static PyObject *
spec_get(PyObject *spec, const char *key, PyTypeObject *type)
{
    PyObject *v = PyDict_GetItemString(spec, key);
    if (v == NULL || (type != NULL && !Py_IS_TYPE(v, type))) {
        PyErr_Format(PyExc_TypeError, "init: %s missing or not a %s", key,
                     type ? type->tp_name : "value");
        return NULL;
    }
    return v;
}

/* An exact int in lo..hi. */
static int
int_in(PyObject *v, const char *what, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t *out)
{
    if (!PyLong_CheckExact(v)) {
        PyErr_Format(PyExc_TypeError, "init: %s is not an int", what);
        return -1;
    }
    Py_ssize_t x = PyLong_AsSsize_t(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (x < lo || x > hi) {
        PyErr_Format(PyExc_ValueError, "init: %s outside %zd..%zd", what, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

static int
spec_int(PyObject *spec, const char *key, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t *out)
{
    PyObject *v = spec_get(spec, key, &PyLong_Type);
    return v == NULL ? -1 : int_in(v, key, lo, hi, out);
}

/* One field of a layout: a kind letter, or (kind, a) / (kind, a, b) for the
 * kinds with sizes. */
static int
compile_field(PyObject *spec, Py_ssize_t max_size, field_t *f)
{
    PyObject *kind = spec;
    Py_ssize_t nparams = 0;
    if (PyTuple_CheckExact(spec) && PyTuple_GET_SIZE(spec) > 0) {
        kind = PyTuple_GET_ITEM(spec, 0);
        nparams = PyTuple_GET_SIZE(spec) - 1;
    }
    if (!PyUnicode_CheckExact(kind) || PyUnicode_GET_LENGTH(kind) != 1) {
        PyErr_Format(PyExc_TypeError, "init: bad field %R", spec);
        return -1;
    }
    f->kind = (int)PyUnicode_READ_CHAR(kind, 0);
    int want = f->kind == K_FIXED ? 1 : f->kind == K_REST ? 2 : 0;
    if (f->kind <= 0 || f->kind >= 128 || !strchr("ustnmhwdr", f->kind) || nparams != want) {
        PyErr_Format(PyExc_ValueError, "init: bad field %R", spec);
        return -1;
    }
    if (want >= 1 && int_in(PyTuple_GET_ITEM(spec, 1), "a field size", 0, max_size, &f->a) < 0)
        return -1;
    if (want == 2 && int_in(PyTuple_GET_ITEM(spec, 2), "a field size", f->a, max_size, &f->b) < 0)
        return -1;
    return 0;
}

static int
compile_layout(PyObject *spec, Py_ssize_t max_size, layout_t *l)
{
    if (!PyTuple_CheckExact(spec) || PyTuple_GET_SIZE(spec) > MAX_FIELDS) {
        PyErr_Format(PyExc_TypeError, "init: a layout is a tuple of at most %d fields, not %R",
                     MAX_FIELDS, spec);
        return -1;
    }
    l->nfields = (int)PyTuple_GET_SIZE(spec);
    l->nvalues = 0;
    for (int i = 0; i < l->nfields; i++) {
        field_t *f = &l->fields[i];
        if (compile_field(PyTuple_GET_ITEM(spec, i), max_size, f) < 0)
            return -1;
        if (f->kind == K_REST && i != l->nfields - 1) {
            PyErr_SetString(PyExc_ValueError, "init: the rest of a payload is its last field");
            return -1;
        }
        l->nvalues += f->kind == K_WINDOW ? 2 : 1;
    }
    l->known = 1;
    return 0;
}

/* The entry layouts and leaf codes of the spec into f. */
static int
compile_entries(PyObject *spec, format_t *f)
{
    PyObject *entries = spec_get(spec, "entries", &PyDict_Type);
    PyObject *unknown = spec_get(spec, "unknown_constraint", &PyTuple_Type);
    PyObject *leaves = spec_get(spec, "leaves", &PyTuple_Type);
    if (entries == NULL || unknown == NULL || leaves == NULL)
        return -1;
    for (int code = f->constraint_bit; code < 256; code++)
        if (compile_layout(unknown, f->max_frame_size, &f->layouts[code]) < 0)
            return -1;
    Py_ssize_t pos = 0, code;
    PyObject *key, *layout;
    while (PyDict_Next(entries, &pos, &key, &layout))
        if (int_in(key, "an entry code", 0, 255, &code) < 0
                || compile_layout(layout, f->max_frame_size, &f->layouts[code]) < 0)
            return -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(leaves); i++) {
        if (int_in(PyTuple_GET_ITEM(leaves, i), "a leaf code", 0, f->constraint_bit - 1,
                   &code) < 0)
            return -1;
        f->leaf[code] = 1;
    }
    return 0;
}

/* The whole spec into f, which holds a new reference to each object it keeps
 * (so format_clear can undo a partial compile). */
static int
compile(PyObject *spec, format_t *f)
{
    Py_ssize_t version, bit;
    if (spec_int(spec, "version", 0, 255, &version) < 0
            || spec_int(spec, "constraint_bit", 1, 255, &bit) < 0
            || spec_int(spec, "max_frames", 1, PY_SSIZE_T_MAX, &f->max_frames) < 0
            || spec_int(spec, "max_frame_size", 1, PY_SSIZE_T_MAX, &f->max_frame_size) < 0
            || spec_int(spec, "max_entries", 1, PY_SSIZE_T_MAX, &f->max_entries) < 0
            || spec_int(spec, "cache_size", 0, PY_SSIZE_T_MAX, &f->cache_size) < 0)
        return -1;
    f->version = (int)version;
    f->constraint_bit = (int)bit;
    if (compile_entries(spec, f) < 0)
        return -1;
    PyObject *wildcard = spec_get(spec, "wildcard", &PyUnicode_Type);
    PyObject *check = spec_get(spec, "is_valid_cell", NULL);
    PyObject *root = spec_get(spec, "root_frame", &PyBytes_Type);
    PyObject *rec = spec_get(spec, "root_record", &PyTuple_Type);
    PyObject *cache = spec_get(spec, "cache", &PyDict_Type);
    if (wildcard == NULL || check == NULL || root == NULL || rec == NULL || cache == NULL)
        return -1;
    if (!PyCallable_Check(check)) {
        PyErr_SetString(PyExc_TypeError, "init: is_valid_cell is not callable");
        return -1;
    }
    f->wildcard = PyUnicode_AsUTF8String(wildcard);
    if (f->wildcard == NULL)
        return -1;
    f->is_valid_cell = Py_NewRef(check);
    f->root_frame = Py_NewRef(root);
    f->root_rec = Py_NewRef(rec);
    f->cache = Py_NewRef(cache);
    return 0;
}

static void
format_clear(format_t *f)
{
    Py_CLEAR(f->wildcard);
    Py_CLEAR(f->is_valid_cell);
    Py_CLEAR(f->root_frame);
    Py_CLEAR(f->root_rec);
    Py_CLEAR(f->cache);
}

PyDoc_STRVAR(init_doc,
"init(spec)\n\n"
"Take the token format from cap_fast.c_format() (at cap_codec's import).\n"
"All or nothing: a spec refused in any part leaves the previous format.");

static PyObject *
capscan_init(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 1 || !PyDict_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "init(spec: dict)");
        return NULL;
    }
    if (Busy) {  /* only is_valid_cell could get here, from inside a scan */
        PyErr_SetString(PyExc_RuntimeError, "_capscan.init() during a scan");
        return NULL;
    }
    format_t *f = PyMem_Calloc(1, sizeof *f);
    if (f == NULL)
        return PyErr_NoMemory();
    if (compile(args[0], f) < 0) {
        format_clear(f);
        PyMem_Free(f);
        return NULL;
    }
    PyObject *old[] = {Fmt.wildcard, Fmt.is_valid_cell, Fmt.root_frame, Fmt.root_rec,
                       Fmt.cache};
    Fmt = *f;  /* the new format takes over f's references */
    PyMem_Free(f);
    for (size_t i = 0; i < sizeof old / sizeof old[0]; i++)
        Py_XDECREF(old[i]);
    Py_RETURN_NONE;
}

static PyMethodDef capscan_methods[] = {
    {"split", (PyCFunction)(void (*)(void))capscan_split, METH_FASTCALL, split_doc},
    {"scan_frame", (PyCFunction)(void (*)(void))capscan_scan_frame, METH_FASTCALL,
     scan_frame_doc},
    {"init", (PyCFunction)(void (*)(void))capscan_init, METH_FASTCALL, init_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef capscan_module = {
    PyModuleDef_HEAD_INIT,
    "_capscan",
    "C accelerator of the CAPLets frame scan (cap_codec); the Python code is the reference.",
    -1,
    capscan_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__capscan(void)
{
    return PyModule_Create(&capscan_module);
}
