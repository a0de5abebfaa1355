/* _lthash: optional C accelerator of the LtHash16 lane arithmetic (CPython only).
 *
 * abci_app/lthash.py keeps a sum of 1024 16-bit lanes. Its pure-Python form
 * (PyLtHash) packs the lanes into big integers, and turning each record's 2048
 * bytes into an integer (int.from_bytes, byte by byte in CPython 3.11) plus the
 * big-integer additions cost as much as the BLAKE3 output itself: about an
 * eighth of a registry tx beside its signature. Here the sum is a bytearray of
 * little-endian lanes, the very bytes PyLtHash.to_bytes() gives, and adding or
 * removing an element is one pass of wrapping 16-bit additions.
 *
 * PyLtHash stays the reference: tests/test_lthash.py holds the two to the same
 * bytes on random sequences, and the node's start-up self-test compares them
 * on a fixed one before it serves, so a build that computed otherwise could not
 * join a chain. Lanes are little-endian whatever the host's byte order (on a
 * big-endian host each lane is put together from its two bytes).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define NBYTES 2048 /* 1024 lanes of 16 bits */

static PyObject *
fold(PyObject *self, PyObject *args)
{
    Py_buffer acc, el;
    int subtract;
    (void)self;
    if (!PyArg_ParseTuple(args, "w*y*p:fold", &acc, &el, &subtract))
        return NULL;
    if (acc.len != NBYTES || el.len != NBYTES) {
        PyBuffer_Release(&acc);
        PyBuffer_Release(&el);
        PyErr_Format(PyExc_ValueError, "an LtHash16 sum and element are %d bytes", NBYTES);
        return NULL;
    }
    uint8_t *a = acc.buf;
    const uint8_t *e = el.buf;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    /* lanes as the host's uint16_t (little-endian here): the loops become vector adds */
    if (subtract) {
        for (Py_ssize_t i = 0; i < NBYTES; i += 2) {
            uint16_t x, y;
            memcpy(&x, a + i, 2);
            memcpy(&y, e + i, 2);
            x = (uint16_t)(x - y);
            memcpy(a + i, &x, 2);
        }
    } else {
        for (Py_ssize_t i = 0; i < NBYTES; i += 2) {
            uint16_t x, y;
            memcpy(&x, a + i, 2);
            memcpy(&y, e + i, 2);
            x = (uint16_t)(x + y);
            memcpy(a + i, &x, 2);
        }
    }
#else
    /* any other byte order: each lane assembled from its two bytes */
    for (Py_ssize_t i = 0; i < NBYTES; i += 2) {
        unsigned x = a[i] | a[i + 1] << 8, y = e[i] | e[i + 1] << 8;
        uint16_t z = (uint16_t)(subtract ? x - y : x + y);
        a[i] = (uint8_t)z;
        a[i + 1] = (uint8_t)(z >> 8);
    }
#endif
    PyBuffer_Release(&acc);
    PyBuffer_Release(&el);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"fold", fold, METH_VARARGS,
     "fold(acc: bytearray, element: bytes, subtract: bool): acc's lanes += (or -=) element's, mod 2**16"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lthash", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__lthash(void)
{
    return PyModule_Create(&module);
}
