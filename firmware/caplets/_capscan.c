/* _capscan: optional C accelerator of the CAPLets frame scan (CPython only).
 *
 * It does what cap_codec._split and cap_codec.scan_frame do, together with
 * the capability scanners of cap_caps, the constraint scanners of cap_cons and
 * the varint/string readers of cap_wire. Those Python functions stay the
 * reference (and the only path on MicroPython): every record built here must
 * be equal to theirs (same tuple shapes, same str/bytes/int types, lists where
 * they build lists) and every MalformedToken must carry the same message,
 * raised in the same situation, i.e. checks run in the same order as there.
 * tests/test_capscan_c.py compares both paths on valid and mutated tokens.
 *
 * Why C: a cold token verification was dominated by this per-entry scan, not
 * by its HMACs. Here the scan validates spans of the frame buffer first and
 * builds the Python objects (entry bytes, strings, ints, value tuples) once.
 *
 * Python-level things come in through init() (called by cap_codec at import):
 * the MalformedToken class, cap_h3.is_valid_cell (REGION), the constant root
 * frame and its record, the version and the limits. The module never imports
 * edgistry itself.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Entry codes (cap_caps): capabilities below 0x80, constraints from 0x80. */
enum {
    ROOT = 0x01, SERVICE = 0x02, RESOURCE = 0x03, REGION = 0x04,
    IDENTITY = 0x05, REQUEST = 0x06, ENCRYPTION = 0x07,
};
enum {
    CONSTRAINT_BIT = 0x80,
    EXPIRES_AT = 0x81, NOT_BEFORE = 0x82, ENDPOINT = 0x83, GATEWAY = 0x84,
    REQUIRE_IDENTITY = 0x85, BOUND_TO = 0x86, SEQUENCE_WINDOW = 0x87,
};
#define DIGEST_SIZE 32
#define NONCE_MIN 16
#define NONCE_MAX 32

/* Set by init(); NULL until then (the scanners refuse to run). */
static PyObject *Malformed;    /* cap_errors.MalformedToken */
static PyObject *IsValidCell;  /* cap_h3.is_valid_cell */
static PyObject *RootFrame;    /* cap_codec._ROOT_FRAME */
static PyObject *RootRec;      /* cap_codec._ROOT_REC (its record: tuples, not lists) */
static long Version;
static Py_ssize_t MaxFrames, MaxFrameSize, MaxEntries;

/* A span of the frame buffer: a field not yet turned into a Python object. */
typedef struct {
    const uint8_t *ptr;
    Py_ssize_t len;
} span;

/* ---- errors ------------------------------------------------------------- */

static void
vfail(const char *fmt, va_list ap)
{
    char msg[128];
    vsnprintf(msg, sizeof msg, fmt, ap);
    PyErr_SetString(Malformed, msg);
}

/* Raise MalformedToken(message) and return -1 (for int-returning helpers). */
static int
fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(fmt, ap);
    va_end(ap);
    return -1;
}

/* Raise MalformedToken(message) and return NULL (for object builders). */
static PyObject *
fail_null(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(fmt, ap);
    va_end(ap);
    return NULL;
}

/* cap_caps._trailing / the "p != stop" checks of cap_cons. */
static int
trailing(Py_ssize_t p, Py_ssize_t stop, const char *name)
{
    if (p != stop)
        return fail("trailing bytes in %s entry", name);
    return 0;
}

/* ---- cap_wire readers ---------------------------------------------------- */

/* cap_wire.get_varint: a minimal LEB128 of at most 64 bits at buf[*pos:end].
 * The same checks in the same order, so the same message for each failure. */
static int
get_varint(const uint8_t *buf, Py_ssize_t *pos, Py_ssize_t end, uint64_t *out)
{
    Py_ssize_t p = *pos;
    if (p >= end)
        return fail("truncated varint");
    uint8_t b = buf[p++];
    if (b < 0x80) {  /* the common one-byte case */
        *out = b;
        *pos = p;
        return 0;
    }
    uint64_t result = b & 0x7F;
    int shift = 7;
    while (p < end) {
        b = buf[p++];
        if (b & 0x80) {
            result |= (uint64_t)(b & 0x7F) << shift;
            shift += 7;
            if (shift > 63)
                return fail("varint too long");
            continue;
        }
        if (b == 0)
            return fail("non-minimal varint");
        /* only the byte at bit 63 can overflow: below it, 7 bits fit */
        if (shift == 63 && b > 1)
            return fail("varint exceeds 64 bits");
        *out = result | ((uint64_t)b << shift);
        *pos = p;
        return 0;
    }
    return fail("truncated varint");
}

/* True when n bytes fit between p and end (n is a wire value up to 2**64-1). */
static int
fits(uint64_t n, Py_ssize_t p, Py_ssize_t end)
{
    return n <= (uint64_t)(end - p);
}

/* cap_wire.get_bytes without the copy: the span of a length-prefixed field. */
static int
get_field(const uint8_t *buf, Py_ssize_t *pos, Py_ssize_t end, span *out)
{
    uint64_t n;
    if (get_varint(buf, pos, end, &n) < 0)
        return -1;
    if (!fits(n, *pos, end))
        return fail("truncated field");
    out->ptr = buf + *pos;
    out->len = (Py_ssize_t)n;
    *pos += (Py_ssize_t)n;
    return 0;
}

/* A str from UTF-8 bytes; MalformedToken (as cap_wire.get_str) when invalid.
 * CPython's own decoder, so "valid" means exactly what bytes.decode says. */
static PyObject *
utf8_str(span s)
{
    PyObject *text = PyUnicode_DecodeUTF8((const char *)s.ptr, s.len, NULL);
    if (text == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        fail("invalid UTF-8 in string field");
    }
    return text;
}

/* cap_wire.get_str: a length-prefixed UTF-8 string as a new str. */
static PyObject *
get_str(const uint8_t *buf, Py_ssize_t *pos, Py_ssize_t end)
{
    span s = {NULL, 0};
    if (get_field(buf, pos, end, &s) < 0)
        return NULL;
    return utf8_str(s);
}

static PyObject *
span_bytes(const uint8_t *ptr, Py_ssize_t len)
{
    return PyBytes_FromStringAndSize((const char *)ptr, len);
}

/* Python's str order on the same text: byte order of UTF-8 is code point
 * order, and a proper prefix sorts first. */
static int
span_cmp(span a, span b)
{
    Py_ssize_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.ptr, b.ptr, (size_t)n) : 0;
    if (c)
        return c;
    return (a.len > b.len) - (a.len < b.len);
}

static int
is_ascii(const uint8_t *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] & 0x80)
            return 0;
    return 1;
}

/* ---- capability scanners (cap_caps._s_*) ----------------------------------
 * Each gets the frame buffer, the payload span p:stop and the entry's bytes
 * `raw` (borrowed), and returns a new value tuple (code, raw, field, ...). */

static PyObject *
s_root(const uint8_t *buf, Py_ssize_t p, Py_ssize_t stop, PyObject *raw)
{
    (void)buf;
    if (trailing(p, stop, "root") < 0)
        return NULL;
    return Py_BuildValue("(iO)", ROOT, raw);
}

/* The service value tuple of an ASCII payload `pl` already validated by
 * s_service_ascii: `n` methods, each a length byte and its text, from pl[q]. */
static PyObject *
service_tuple(PyObject *raw, span stype, const uint8_t *pl, Py_ssize_t q, Py_ssize_t n)
{
    PyObject *methods = PyTuple_New(n);
    if (methods == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        span m = {pl + q + 1, pl[q]};
        PyObject *text = utf8_str(m);
        if (text == NULL) {
            Py_DECREF(methods);
            return NULL;
        }
        PyTuple_SET_ITEM(methods, i, text);
        q += 1 + m.len;
    }
    PyObject *type = utf8_str(stype);
    if (type == NULL) {
        Py_DECREF(methods);
        return NULL;
    }
    return Py_BuildValue("(iONN)", SERVICE, raw, type, methods);
}

/* cap_caps._s_service's fast path, for a non-empty pure-ASCII payload (every
 * length is then a one-byte varint). Its checks differ in order and wording
 * from the general parser's, so they are mirrored as they are. First pass:
 * validate; second pass (service_tuple): build. */
static PyObject *
s_service_ascii(const uint8_t *pl, Py_ssize_t e, PyObject *raw)
{
    Py_ssize_t q = pl[0] + 1;
    if (q >= e)
        return fail_null("truncated field");
    span stype = {pl + 1, q - 1};
    Py_ssize_t n = pl[q];
    q += 1;
    Py_ssize_t first = q;
    if (n > e - q)
        return fail_null("method count exceeds entry");
    span prev = {pl, 0};
    int wildcard = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (q >= e)
            return fail_null("truncated field");
        Py_ssize_t a = q + 1;
        q = a + pl[q];
        /* Python slices text[a:q] clamp at the end of the payload */
        span m = {pl + a, (q < e ? q : e) - a};
        if (span_cmp(m, prev) <= 0)  /* empty, unsorted or repeated */
            return fail_null("methods must be non-empty, sorted and distinct");
        wildcard |= m.len == 1 && m.ptr[0] == '*';
        prev = m;
    }
    if (q != e)
        return fail_null(q > e ? "truncated field" : "trailing bytes in service entry");
    if (stype.len == 0 || n == 0)
        return fail_null("service needs a type and at least one method");
    if (n > 1 && wildcard)
        return fail_null("'*' stands alone in a method set");
    return service_tuple(raw, stype, pl, first, n);
}

/* cap_caps.check_methods(stype, methods, MalformedToken). */
static int
check_methods(PyObject *stype, PyObject *methods)
{
    Py_ssize_t n = PyList_GET_SIZE(methods);
    if (PyUnicode_GET_LENGTH(stype) == 0 || n == 0)
        return fail("service needs a type and at least one method");
    for (Py_ssize_t i = 0; i < n && n != 1; i++)
        if (PyUnicode_CompareWithASCIIString(PyList_GET_ITEM(methods, i), "*") == 0)
            return fail("'*' stands alone in a method set");
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *m = PyList_GET_ITEM(methods, i);
        int le = 0;
        if (i > 0) {
            le = PyObject_RichCompareBool(m, PyList_GET_ITEM(methods, i - 1), Py_LE);
            if (le < 0)
                return -1;
        }
        if (PyUnicode_GET_LENGTH(m) == 0 || le)
            return fail("methods must be non-empty, sorted and distinct");
    }
    return 0;
}

/* cap_caps._s_service_slow: any payload the ASCII path does not take
 * (non-ASCII text, multi-byte lengths, empty). Rare, so it works on Python
 * objects as the reference does. */
static PyObject *
s_service_general(const uint8_t *buf, Py_ssize_t p, Py_ssize_t stop, PyObject *raw)
{
    PyObject *stype = NULL, *methods = NULL, *out = NULL;
    uint64_t n;
    stype = get_str(buf, &p, stop);
    if (stype == NULL || get_varint(buf, &p, stop, &n) < 0)
        goto done;
    if (!fits(n, p, stop)) {
        fail("method count exceeds entry");
        goto done;
    }
    methods = PyList_New(0);
    if (methods == NULL)
        goto done;
    for (uint64_t i = 0; i < n; i++) {
        PyObject *m = get_str(buf, &p, stop);
        if (m == NULL || PyList_Append(methods, m) < 0) {
            Py_XDECREF(m);
            goto done;
        }
        Py_DECREF(m);
    }
    if (check_methods(stype, methods) < 0 || trailing(p, stop, "service") < 0)
        goto done;
    out = Py_BuildValue("(iOON)", SERVICE, raw, stype, PyList_AsTuple(methods));
done:
    Py_XDECREF(stype);
    Py_XDECREF(methods);
    return out;
}

static PyObject *
s_service(const uint8_t *buf, Py_ssize_t p, Py_ssize_t stop, PyObject *raw)
{
    if (stop > p && is_ascii(buf + p, stop - p))
        return s_service_ascii(buf + p, stop - p, raw);
    return s_service_general(buf, p, stop, raw);
}

static PyObject *
s_resource(const uint8_t *buf, Py_ssize_t p, Py_ssize_t stop, PyObject *raw)
{
    uint64_t rights;
    PyObject *prefix = get_str(buf, &p, stop);
    if (prefix == NULL)
        return NULL;
    if (get_varint(buf, &p, stop, &rights) < 0 || trailing(p, stop, "resource") < 0) {
        Py_DECREF(prefix);
        return NULL;
    }
    return Py_BuildValue("(iONK)", RESOURCE, raw, prefix, (unsigned long long)rights);
}

/* The cell's validity is cap_h3's (one definition of a valid H3 index). */
static PyObject *
s_region(const uint8_t *buf, Py_ssize_t p, Py_ssize_t stop, PyObject *raw)
{
    uint64_t value;
    if (get_varint(buf, &p, stop, &value) < 0)
        return NULL;
    PyObject *cell = PyLong_FromUnsignedLongLong(value);
    if (cell == NULL)
        return NULL;
    PyObject *ok = PyObject_CallOneArg(IsValidCell, cell);
    int valid = ok == NULL ? -1 : PyObject_IsTrue(ok);
    Py_XDECREF(ok);
    if (valid == 0)
        fail("invalid H3 cell");
    if (valid <= 0 || trailing(p, stop, "region") < 0) {
        Py_DECREF(cell);
        return NULL;
    }
    return Py_BuildValue("(iON)", REGION, raw, cell);
}

static PyObject *s_str(int code, const char *name, const uint8_t *buf, Py_ssize_t p,
                       Py_ssize_t stop, PyObject *raw);

/* cap_caps._s_identity: the same checks and messages as a string constraint. */
static PyObject *
s_identity(const uint8_t *buf, Py_ssize_t p, Py_ssize_t stop, PyObject *raw)
{
    return s_str(IDENTITY, "identity", buf, p, stop, raw);
}

static PyObject *
s_request(const uint8_t *buf, Py_ssize_t p, Py_ssize_t stop, PyObject *raw)
{
    PyObject *service = NULL, *method = NULL, *out = NULL;
    uint64_t seq;
    service = get_str(buf, &p, stop);
    if (service == NULL || (method = get_str(buf, &p, stop)) == NULL)
        goto done;
    if (PyUnicode_GET_LENGTH(service) == 0 || PyUnicode_GET_LENGTH(method) == 0
            || PyUnicode_CompareWithASCIIString(method, "*") == 0) {
        fail("request needs one service type and one method");
        goto done;
    }
    if (p + DIGEST_SIZE > stop) {
        fail("truncated request digest");
        goto done;
    }
    Py_ssize_t q = p + DIGEST_SIZE;
    if (get_varint(buf, &q, stop, &seq) < 0 || trailing(q, stop, "request") < 0)
        goto done;
    out = Py_BuildValue("(iOOOy#K)", REQUEST, raw, service, method,
                        (const char *)buf + p, (Py_ssize_t)DIGEST_SIZE,
                        (unsigned long long)seq);
done:
    Py_XDECREF(service);
    Py_XDECREF(method);
    return out;
}

static PyObject *
s_encryption(const uint8_t *buf, Py_ssize_t p, Py_ssize_t stop, PyObject *raw)
{
    if (stop - p < NONCE_MIN || stop - p > NONCE_MAX)
        return fail_null("bad encryption nonce length");
    return Py_BuildValue("(iOy#)", ENCRYPTION, raw, (const char *)buf + p, stop - p);
}

static PyObject *
scan_cap(int code, const uint8_t *buf, Py_ssize_t p, Py_ssize_t stop, PyObject *raw)
{
    switch (code) {
    case ROOT: return s_root(buf, p, stop, raw);
    case SERVICE: return s_service(buf, p, stop, raw);
    case RESOURCE: return s_resource(buf, p, stop, raw);
    case REGION: return s_region(buf, p, stop, raw);
    case IDENTITY: return s_identity(buf, p, stop, raw);
    case REQUEST: return s_request(buf, p, stop, raw);
    case ENCRYPTION: return s_encryption(buf, p, stop, raw);
    }
    return fail_null("unknown capability type 0x%02x", code);
}

/* ---- constraint scanners (cap_cons) --------------------------------------- */

/* cap_cons._s_int: EXPIRES_AT, NOT_BEFORE. */
static PyObject *
s_int(int code, const char *name, const uint8_t *buf, Py_ssize_t p, Py_ssize_t stop,
      PyObject *raw)
{
    uint64_t value;
    if (get_varint(buf, &p, stop, &value) < 0 || trailing(p, stop, name) < 0)
        return NULL;
    return Py_BuildValue("(iOK)", code, raw, (unsigned long long)value);
}

/* cap_cons._s_str: ENDPOINT, GATEWAY, REQUIRE_IDENTITY. */
static PyObject *
s_str(int code, const char *name, const uint8_t *buf, Py_ssize_t p, Py_ssize_t stop,
      PyObject *raw)
{
    PyObject *value = get_str(buf, &p, stop);
    if (value == NULL)
        return NULL;
    int bad = PyUnicode_GET_LENGTH(value) == 0 ? fail("empty %s", name)
                                               : trailing(p, stop, name);
    if (bad < 0) {
        Py_DECREF(value);
        return NULL;
    }
    return Py_BuildValue("(iON)", code, raw, value);
}

static PyObject *
s_window(const uint8_t *buf, Py_ssize_t p, Py_ssize_t stop, PyObject *raw)
{
    uint64_t low, high;
    if (get_varint(buf, &p, stop, &low) < 0 || get_varint(buf, &p, stop, &high) < 0)
        return NULL;
    if (high <= low)
        return fail_null("empty sequence window");
    if (trailing(p, stop, "sequence_window") < 0)
        return NULL;
    return Py_BuildValue("(iOKK)", SEQUENCE_WINDOW, raw, (unsigned long long)low,
                         (unsigned long long)high);
}

/* (code, raw, payload bytes): BOUND_TO's tag, and unknown codes, which are
 * kept with their payload (cap_cons.scan_unknown) and fail closed when
 * checked, not when scanned. */
static PyObject *
payload_tuple(int code, const uint8_t *buf, Py_ssize_t p, Py_ssize_t stop, PyObject *raw)
{
    return Py_BuildValue("(iOy#)", code, raw, (const char *)buf + p, stop - p);
}

static PyObject *
scan_con(int code, const uint8_t *buf, Py_ssize_t p, Py_ssize_t stop, PyObject *raw)
{
    switch (code) {
    case EXPIRES_AT: return s_int(code, "expires_at", buf, p, stop, raw);
    case NOT_BEFORE: return s_int(code, "not_before", buf, p, stop, raw);
    case ENDPOINT: return s_str(code, "endpoint", buf, p, stop, raw);
    case GATEWAY: return s_str(code, "gateway", buf, p, stop, raw);
    case REQUIRE_IDENTITY: return s_str(code, "require_identity", buf, p, stop, raw);
    case BOUND_TO:
        if (stop - p != DIGEST_SIZE)
            return fail_null("bound tag must be 32 bytes");
        return payload_tuple(code, buf, p, stop, raw);
    case SEQUENCE_WINDOW: return s_window(buf, p, stop, raw);
    }
    return payload_tuple(code, buf, p, stop, raw);
}

/* ---- frames (cap_codec.scan_frame) ---------------------------------------- */

/* What a previous frame's record offers for reuse; empty when there is no
 * usable hint (the hint only saves work, it never changes the result). */
typedef struct {
    PyObject *caps;  /* list or tuple of value tuples, or NULL */
    PyObject *cons;  /* list or tuple of value tuples, or NULL */
    PyObject *run;   /* non-empty bytes, or NULL */
} hint_t;

static hint_t
read_hint(PyObject *hint)
{
    hint_t h = {NULL, NULL, NULL};
    if (hint == NULL || !PyTuple_Check(hint) || PyTuple_GET_SIZE(hint) != 4)
        return h;
    PyObject *caps = PyTuple_GET_ITEM(hint, 0), *cons = PyTuple_GET_ITEM(hint, 1);
    PyObject *run = PyTuple_GET_ITEM(hint, 2);
    if (PyList_Check(caps) || PyTuple_Check(caps))
        h.caps = caps;
    if ((PyList_Check(cons) || PyTuple_Check(cons)) && PyBytes_Check(run)
            && PyBytes_GET_SIZE(run) > 0) {
        h.cons = cons;
        h.run = run;
    }
    return h;
}

/* The hint's value tuple for a capability of exactly these entry bytes
 * (borrowed), or NULL. The hint validated those very bytes, and an entry
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
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 2)
            continue;
        PyObject *b = PyTuple_GET_ITEM(t, 1);
        if (PyBytes_Check(b) && PyBytes_GET_SIZE(b) == len
                && memcmp(PyBytes_AS_STRING(b), entry, (size_t)len) == 0)
            return t;
    }
    return NULL;
}

/* Scan one entry at buf[pos:stop] (payload from p) and append its value
 * tuple to `list`. */
static int
scan_entry(PyObject *list, int code, const uint8_t *buf, Py_ssize_t pos, Py_ssize_t p,
           Py_ssize_t stop)
{
    PyObject *raw = span_bytes(buf + pos, stop - pos);
    if (raw == NULL)
        return -1;
    PyObject *value = code < CONSTRAINT_BIT ? scan_cap(code, buf, p, stop, raw)
                                            : scan_con(code, buf, p, stop, raw);
    Py_DECREF(raw);
    if (value == NULL)
        return -1;
    int rc = PyList_Append(list, value);
    Py_DECREF(value);
    return rc;
}

/* The frame's checks after its entries, in cap_codec.scan_frame's order. */
static int
check_frame(Py_ssize_t ncaps, Py_ssize_t ncons, int first_leaf)
{
    if (ncaps + ncons > MaxEntries)
        return fail("more than %zd entries in a frame", MaxEntries);
    if (ncaps == 0)
        return fail("a frame needs at least one capability");
    if (ncaps > 1 && first_leaf)
        return fail("a %s capability stands alone in its frame",
                    first_leaf == REQUEST ? "request" : "encryption");
    return 0;
}

/* cap_codec.scan_frame: validate a frame's bytes and return its record
 * (caps, cons, run, leaf); `hint` is the previous frame's record or NULL. */
static PyObject *
scan_frame(PyObject *frame, PyObject *hint)
{
    Py_ssize_t end = PyBytes_GET_SIZE(frame);
    const uint8_t *buf = (const uint8_t *)PyBytes_AS_STRING(frame);
    if (end == PyBytes_GET_SIZE(RootFrame)
            && memcmp(buf, PyBytes_AS_STRING(RootFrame), (size_t)end) == 0)
        return Py_NewRef(RootRec);  /* the first frame of most tokens */
    if (end == 0 || end > MaxFrameSize)
        return fail_null("frame size %zd outside 1..%zd", end, MaxFrameSize);

    hint_t h = read_hint(hint);
    PyObject *caps = PyList_New(0), *cons = PyList_New(0), *run = NULL;
    Py_ssize_t pos = 0, cstart = -1;
    int mixed = 0, first_cap = 0, first_leaf = 0;
    if (caps == NULL || cons == NULL)
        goto error;
    while (pos < end) {
        int code = buf[pos];
        Py_ssize_t p = pos + 1;
        uint64_t n;
        if (get_varint(buf, &p, end, &n) < 0)
            goto error;
        if (!fits(n, p, end)) {
            fail("truncated entry");
            goto error;
        }
        Py_ssize_t stop = p + (Py_ssize_t)n;
        if (code < CONSTRAINT_BIT) {
            if (cstart >= 0)
                mixed = 1;  /* a capability after a constraint: no run */
            if (PyList_GET_SIZE(caps) == 0)
                first_cap = code;
            if (!first_leaf && (code == REQUEST || code == ENCRYPTION))
                first_leaf = code;
            PyObject *same = hint_cap(h.caps, buf + pos, stop - pos);
            if (same ? PyList_Append(caps, same) < 0
                     : scan_entry(caps, code, buf, pos, p, stop) < 0)
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
            if (scan_entry(cons, code, buf, pos, p, stop) < 0)
                goto error;
        }
        pos = stop;
    }
    if (check_frame(PyList_GET_SIZE(caps), PyList_GET_SIZE(cons), first_leaf) < 0)
        goto error;
    if (cstart < 0)
        run = PyBytes_FromStringAndSize(NULL, 0);
    else if (mixed)
        run = Py_NewRef(Py_None);
    else
        run = span_bytes(buf + cstart, end - cstart);
    if (run == NULL)
        goto error;
    int leaf = first_cap == REQUEST || first_cap == ENCRYPTION;
    return Py_BuildValue("(NNNO)", caps, cons, run, leaf ? Py_True : Py_False);
error:
    Py_XDECREF(caps);
    Py_XDECREF(cons);
    return NULL;
}

/* ---- tokens (cap_codec._split) ------------------------------------------ */

/* The record of one frame: from the cache, else scanned (and cached, with
 * the reference's crude bound: clear when full). Returns a new reference. */
static PyObject *
frame_record(PyObject *raw, PyObject *prev, PyObject *cache, Py_ssize_t cache_size)
{
    PyObject *rec = PyDict_GetItemWithError(cache, raw);
    if (rec != NULL)
        return Py_NewRef(rec);
    if (PyErr_Occurred())
        return NULL;
    rec = scan_frame(raw, prev);
    if (rec == NULL || cache_size <= 0)
        return rec;
    if (PyDict_GET_SIZE(cache) >= cache_size)
        PyDict_Clear(cache);
    if (PyDict_SetItem(cache, raw, rec) < 0)
        Py_CLEAR(rec);
    return rec;
}

/* Version, count and frames of data[:end] into the lists slices and recs. */
static int
split_frames(const uint8_t *buf, Py_ssize_t end, PyObject *cache, Py_ssize_t cache_size,
             PyObject **slices_out, PyObject **recs_out)
{
    if (end < 3 || buf[0] != Version)
        return fail("not a version-%ld token", Version);
    Py_ssize_t pos = 1;
    uint64_t count;
    if (get_varint(buf, &pos, end, &count) < 0)
        return -1;
    if (count == 0 || count > (uint64_t)MaxFrames)
        return fail("frame count %llu outside 1..%zd", (unsigned long long)count, MaxFrames);
    PyObject *slices = PyList_New((Py_ssize_t)count);
    PyObject *recs = PyList_New((Py_ssize_t)count);
    PyObject *prev = NULL;  /* borrowed from recs */
    if (slices == NULL || recs == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < (Py_ssize_t)count; i++) {
        uint64_t n;
        if (get_varint(buf, &pos, end, &n) < 0)
            goto error;
        if (!fits(n, pos, end)) {
            fail("truncated frame");
            goto error;
        }
        PyObject *raw = span_bytes(buf + pos, (Py_ssize_t)n);
        if (raw == NULL)
            goto error;
        PyList_SET_ITEM(slices, i, raw);  /* a list dealloc skips unset (NULL) slots */
        PyObject *rec = frame_record(raw, prev, cache, cache_size);
        if (rec == NULL)
            goto error;
        PyList_SET_ITEM(recs, i, rec);
        prev = rec;
        pos += (Py_ssize_t)n;
    }
    if (pos != end) {
        fail("trailing bytes after the last frame");
        goto error;
    }
    *slices_out = slices;
    *recs_out = recs;
    return 0;
error:
    Py_XDECREF(slices);
    Py_XDECREF(recs);
    return -1;
}

/* ---- module functions ----------------------------------------------------- */

/* The argument count check of a METH_FASTCALL function. */
static int
arg_count(const char *name, Py_ssize_t nargs, Py_ssize_t min, Py_ssize_t max)
{
    if (nargs >= min && nargs <= max)
        return 1;
    PyErr_Format(PyExc_TypeError, "%s() takes %zd to %zd arguments (%zd given)",
                 name, min, max, nargs);
    return 0;
}

static int
ready(void)
{
    if (Malformed == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_capscan.init() was not called");
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(split_doc,
"split(data, end, cache, cache_size) -> (slices, recs)\n\n"
"cap_codec._split(data, end) with the frame cache dict and its size limit\n"
"passed in (cache_size 0: no caching).");

static PyObject *
capscan_split(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (!arg_count("split", nargs, 4, 4) || !ready())
        return NULL;
    PyObject *data = args[0], *cache = args[2];
    if (!PyBytes_Check(data) || !PyDict_Check(cache)) {
        PyErr_SetString(PyExc_TypeError, "split(bytes, int, dict, int)");
        return NULL;
    }
    Py_ssize_t end = PyLong_AsSsize_t(args[1]);
    Py_ssize_t cache_size = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if (end > PyBytes_GET_SIZE(data)) {
        PyErr_SetString(PyExc_ValueError, "end beyond the data");
        return NULL;
    }
    PyObject *slices = NULL, *recs = NULL;
    if (split_frames((const uint8_t *)PyBytes_AS_STRING(data), end, cache, cache_size,
                     &slices, &recs) < 0)
        return NULL;
    return Py_BuildValue("(NN)", slices, recs);
}

PyDoc_STRVAR(scan_frame_doc,
"scan_frame(raw, hint=None) -> record\n\n"
"cap_codec.scan_frame: validate a frame's bytes and return its record.");

static PyObject *
capscan_scan_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (!arg_count("scan_frame", nargs, 1, 2) || !ready())
        return NULL;
    if (!PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan_frame() needs bytes");
        return NULL;
    }
    PyObject *hint = nargs > 1 && args[1] != Py_None ? args[1] : NULL;
    return scan_frame(args[0], hint);
}

PyDoc_STRVAR(init_doc,
"init(MalformedToken, is_valid_cell, root_frame, root_rec, version, max_frames,\n"
"     max_frame_size, max_entries)\n\n"
"Hand over the Python-level parts of the format (called by cap_codec).");

static PyObject *
capscan_init(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (!arg_count("init", nargs, 8, 8))
        return NULL;
    if (!PyExceptionClass_Check(args[0]) || !PyCallable_Check(args[1])
            || !PyBytes_Check(args[2]) || !PyTuple_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "init(exception class, callable, bytes, tuple, int, int, int, int)");
        return NULL;
    }
    long version = PyLong_AsLong(args[4]);
    Py_ssize_t frames = PyLong_AsSsize_t(args[5]);
    Py_ssize_t size = PyLong_AsSsize_t(args[6]);
    Py_ssize_t entries = PyLong_AsSsize_t(args[7]);
    if (PyErr_Occurred())
        return NULL;
    Py_XSETREF(Malformed, Py_NewRef(args[0]));
    Py_XSETREF(IsValidCell, Py_NewRef(args[1]));
    Py_XSETREF(RootFrame, Py_NewRef(args[2]));
    Py_XSETREF(RootRec, Py_NewRef(args[3]));
    Version = version;
    MaxFrames = frames;
    MaxFrameSize = size;
    MaxEntries = entries;
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
